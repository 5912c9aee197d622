//! The operator-facing files in conf-examples/: the systemd unit passes `systemd-analyze verify`
//! and says what an operator expects of it; the Kubernetes manifest parses and is checked field
//! by field; the daemon config examples name only flags ferryd knows.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use testlab::{bin, workspace};

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `key=value` lines of one section of a unit file, in order.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut cur = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            cur = s.to_string();
        } else if cur == section {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    kv.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn systemd_unit_verifies_and_restarts_sensibly() {
    let text = read("conf-examples/ferryd.service");
    // systemd-analyze verify insists that ExecStart's binary exists: point it at the build.
    let ferryd = bin("ferryd");
    let dir = testlab::TempDir::new("unit");
    let unit = dir.join("ferryd.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/ferryd", &ferryd.to_string_lossy()))
        .unwrap();
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "verify: {stderr}");

    let unit_sec = unit_section(&text, "Unit");
    let after = get(&unit_sec, "After").join(" ");
    assert!(after.contains("network-online.target") && after.contains("etcd.service"), "{after}");
    assert!(get(&unit_sec, "Wants").join(" ").contains("network-online.target"));
    let svc = unit_section(&text, "Service");
    assert_eq!(get(&svc, "Restart"), ["always"]);
    assert_eq!(get(&svc, "RestartPreventExitStatus"), ["2"], "no restart loop on a bad config");
    assert_eq!(get(&svc, "CapabilityBoundingSet"), ["CAP_NET_ADMIN"]);
    assert_eq!(get(&svc, "NoNewPrivileges"), ["true"]);
    let exec = get(&svc, "ExecStart")[0];
    assert!(exec.starts_with("/usr/local/bin/ferryd "), "{exec}");
    assert_eq!(get(&unit_section(&text, "Install"), "WantedBy"), ["multi-user.target"]);
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("YAML document");
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k} in the manifest"))
}

#[test]
fn kubernetes_manifest_is_complete_and_least_privileged() {
    let docs = yaml_docs("conf-examples/kubernetes/ferry.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    for d in &docs {
        assert!(d["apiVersion"].is_string() && d["metadata"]["name"].is_string(), "{d}");
    }
    let sa = kind(&docs, "ServiceAccount");
    let binding = kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["name"], kind(&docs, "ClusterRole")["metadata"]["name"]);
    for rule in kind(&docs, "ClusterRole")["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                "read-only: {rule}"
            );
        }
    }

    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "selector matches the pod labels");
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(pod["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists"));

    let init = &pod["initContainers"][0];
    let cmd: Vec<&str> =
        init["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cmd[..2], ["/usr/local/bin/ferryd", "install"], "init copies the plugins");
    let root = cmd.iter().position(|c| *c == "--root").map(|i| cmd[i + 1]).expect("--root");
    let mounts = |c: &Value| -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().into(), m["mountPath"].as_str().unwrap().into()))
            .collect()
    };
    let cni_bin = mounts(init).into_iter().find(|(n, _)| n == "cni-bin").expect("cni-bin mount");
    assert_eq!(cni_bin.1, format!("{root}/opt/cni/bin"));

    let c = &pod["containers"][0];
    assert_eq!(c["command"][0], "/usr/local/bin/ferryd");
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "not privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_ADMIN"]));
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_null(), "no tight memory limit");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"], path);
        assert_eq!(g["host"], "127.0.0.1", "ferryd serves on loopback by default");
        assert_eq!(g["port"], 9473);
    }
    let volumes = pod["volumes"].as_array().unwrap();
    for (name, path) in mounts(c).iter().chain(&mounts(init)) {
        let v = volumes
            .iter()
            .find(|v| v["name"] == name.as_str())
            .unwrap_or_else(|| panic!("volume {name}"));
        if let Some(host) = v["hostPath"]["path"].as_str() {
            if name != "cni-bin" {
                assert_eq!(host, path, "{name} is mounted where ferryd expects it");
            }
        }
    }
    // The config ferryd reads holds only flags it knows (see ferryd_config_examples...).
    let conf = kind(&docs, "ConfigMap")["data"]["ferryd.conf"].as_str().unwrap();
    check_config_flags(conf, "ConfigMap ferryd.conf");
    assert!(conf.contains("metrics-address = 127.0.0.1:9473"), "probes and metrics agree");
}

/// Every `name = value` line names a flag `ferryd --help` documents.
fn check_config_flags(text: &str, what: &str) {
    let help = Command::new(bin("ferryd")).arg("--help").output().expect("ferryd --help");
    let help =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name = line.split('=').next().unwrap().trim();
        assert!(help.contains(&format!("--{name}")), "{what}: ferryd has no flag --{name}");
    }
}

#[test]
fn daemon_config_examples_name_only_known_flags() {
    check_config_flags(&read("conf-examples/ferryd-etcd-tls.conf"), "ferryd-etcd-tls.conf");
    check_config_flags(&read("conf-examples/ferryd-dual-stack.conf"), "ferryd-dual-stack.conf");
    assert!(Path::new(&workspace().join("conf-examples/Containerfile")).exists());
}
