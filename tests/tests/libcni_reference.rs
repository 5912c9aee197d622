//! Proves the reference-libcni driver (`tests/go/libcni-driver`) against Debian's reference plugins
//! (`/usr/lib/cni`: ptp + host-local, tuning, portmap), so Ferry's own conflist tests can rely on it.
//!
//! Run inside the sandbox: `tests/go/build.sh && tests/sandbox.sh cargo test -p ferry-tests --test libcni_reference`.

use serde_json::Value;
use testlab::*;

const REF_BINDIR: &str = "/usr/lib/cni";

/// A node namespace, a pod namespace and the temp dirs one libcni network needs.
struct Lab {
    node: Netns,
    pod: Netns,
    tmp: TempDir,
    id: String,
}

impl Lab {
    fn new(conflist: impl Fn(&str) -> String) -> Lab {
        require_sandbox();
        let node = Netns::new("lnode");
        let pod = Netns::new("lpod");
        let tmp = TempDir::new("libcni");
        std::fs::create_dir_all(tmp.join("conf")).unwrap();
        let data = tmp.path_str("data");
        std::fs::write(tmp.join("conf/10-refnet.conflist"), conflist(&data)).unwrap();
        Lab { node, pod, tmp, id: unique("ctr") }
    }

    fn args<'a>(&'a self, cmd: &'a str, extra: &[&'a str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            cmd.into(),
            "--confdir".into(),
            self.tmp.path_str("conf"),
            "--name".into(),
            "refnet".into(),
            "--netns".into(),
            self.pod.path(),
            "--id".into(),
            self.id.clone(),
            "--ifname".into(),
            "eth0".into(),
            "--bindir".into(),
            REF_BINDIR.into(),
            "--cachedir".into(),
            self.tmp.path_str("cache"),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn run(&self, cmd: &str, extra: &[&str]) -> CniOut {
        let a = self.args(cmd, extra);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        libcni(&self.node, &a)
    }

    /// libcni's result cache file: `<cachedir>/results/<net>-<id>-<ifname>`.
    fn cache_file(&self) -> std::path::PathBuf {
        self.tmp.join(&format!("cache/results/refnet-{}-eth0", self.id))
    }

    /// The addresses on the pod's eth0 that a plugin put there. The IPv6 link-local (`fe80::`,
    /// scope link) address is the kernel's own, added asynchronously once the link's carrier is
    /// seen (so sometimes present when this runs, sometimes not): it is left out.
    fn pod_addrs(&self) -> Vec<String> {
        let v = self.pod.ip_json(&["addr", "show"]);
        let mut out = vec![];
        for link in v.as_array().unwrap() {
            if link["ifname"] == "eth0" {
                for a in link["addr_info"].as_array().unwrap() {
                    if a["family"] == "inet6" && a["scope"] == "link" {
                        continue;
                    }
                    out.push(format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]));
                }
            }
        }
        out
    }
}

/// The conflist from the brief: ptp + host-local, tuning, portmap.
fn refnet(data_dir: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"refnet","plugins":[
  {{"type":"ptp","ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.250.0.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{data_dir}"}}}},
  {{"type":"tuning","sysctl":{{"net.ipv4.conf.eth0.rp_filter":"0"}}}},
  {{"type":"portmap","capabilities":{{"portMappings":true}}}}
]}}"#
    )
}

fn result_ip(res: &Value) -> String {
    let ips = res["ips"].as_array().unwrap_or_else(|| panic!("result without ips: {res}"));
    assert_eq!(ips.len(), 1, "one IP expected: {res}");
    ips[0]["address"].as_str().unwrap().to_string()
}

fn node_nat(node: &Netns) -> String {
    let out = node.cmd("iptables-save").args(["-t", "nat"]).output().expect("iptables-save");
    assert!(out.status.success(), "iptables-save: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn driver_version_reports_each_plugin_type() {
    let lab = Lab::new(refnet);
    let out = lab.run("version", &[]);
    out.assert_ok();
    let v = out.json();
    for t in ["ptp", "tuning", "portmap"] {
        let sv = v[t]["supportedVersions"].as_array().unwrap_or_else(|| panic!("no {t} in {v}"));
        assert!(sv.iter().any(|s| s == "1.0.0"), "{t} lacks 1.0.0: {v}");
    }
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
}

#[test]
fn add_check_del_through_libcni() {
    let lab = Lab::new(refnet);
    let cache = lab.cache_file();

    // ADD: ptp (+host-local), tuning, portmap (no port mappings requested).
    let add = lab.run("add", &[]);
    add.assert_ok();
    let res = add.json();
    assert_eq!(res["cniVersion"], "1.0.0", "{res}");
    let ip = result_ip(&res);
    assert!(ip.starts_with("10.250.0.") && ip.ends_with("/24"), "{res}");
    assert_eq!(res["ips"][0]["gateway"], "10.250.0.1", "{res}");
    let ifs = res["interfaces"].as_array().unwrap();
    assert!(
        ifs.iter().any(|i| i["name"] == "eth0" && i["sandbox"] == lab.pod.path().as_str()),
        "{res}"
    );

    // libcni cached the result, and it is the one printed.
    assert!(cache.exists(), "libcni cache file {} missing", cache.display());
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1", "{cached}");
    assert_eq!(cached["containerId"], lab.id.as_str(), "{cached}");
    assert_eq!(cached["result"]["ips"][0]["address"], ip.as_str(), "{cached}");

    // The pod got the address and the default route; tuning set its sysctl in the pod.
    assert_eq!(lab.pod_addrs(), vec![ip.clone()]);
    let routes = lab.pod.ip(&["route", "show", "default"]);
    assert!(routes.contains("via 10.250.0.1 dev eth0"), "{routes}");
    assert_eq!(lab.pod.sysctl("net.ipv4.conf.eth0.rp_filter"), "0");
    // host-local's reservation.
    let bare = ip.split('/').next().unwrap();
    let lease = lab.tmp.join(&format!("data/refnet/{bare}"));
    assert!(lease.exists(), "host-local lease {} missing", lease.display());
    // ptp's host side: a veth in the node with the gateway address and a /32 route to the pod.
    let node_routes = lab.node.ip(&["route", "show", bare]);
    assert!(node_routes.contains("dev veth"), "node route to pod: {node_routes}");

    // CHECK passes (every plugin, with the cached prevResult).
    let check = lab.run("check", &[]);
    check.assert_ok();
    assert!(check.stdout.trim().is_empty(), "CHECK printed {:?}", check.stdout);

    // DEL: everything goes, including the cache file and the lease.
    lab.run("del", &[]).assert_ok();
    assert!(!cache.exists(), "libcni cache file {} survived DEL", cache.display());
    assert!(!lease.exists(), "host-local lease survived DEL");
    assert!(lab.pod_addrs().is_empty(), "pod eth0 survived DEL");
    let links = lab.node.ip(&["-o", "link", "show", "type", "veth"]);
    assert!(links.trim().is_empty(), "node veth survived DEL: {links}");

    // DEL again is a no-op success (no cache, nothing left).
    lab.run("del", &[]).assert_ok();

    // CHECK after DEL fails, with the plugin's CNI error object on stdout.
    let check = lab.run("check", &[]);
    assert_ne!(check.rc, 0);
    assert!(check.code() > 0, "{check:?}");
}

#[test]
fn portmap_capability_args_reach_the_plugin() {
    let lab = Lab::new(refnet);
    let caps = r#"{"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]}"#;

    let add = lab.run("add", &["--capargs", caps]);
    add.assert_ok();
    let ip = result_ip(&add.json());
    let bare = ip.split('/').next().unwrap();
    let nat = node_nat(&lab.node);
    assert!(
        nat.contains(&format!("--dport 18080 -j DNAT --to-destination {bare}:80")),
        "portmap DNAT rule missing in the node:\n{nat}"
    );
    assert!(nat.contains(&format!("id: \\\"{}\\\"", lab.id)), "{nat}");

    // CHECK with the same capability args. Debian's portmap 1.1.1 has upstream bug
    // containernetworking/plugins#819 (CHECK looks for an IPv6 DNAT chain on an IPv4-only pod and
    // fails); tolerate exactly that error, and require CHECK to pass once portmap is not involved.
    let check = lab.run("check", &["--capargs", caps]);
    if check.rc != 0 {
        assert!(
            check.stderr.contains("could not check ipv6 dnat"),
            "CHECK failed for an unexpected reason: {check:?}"
        );
        eprintln!(
            "note: portmap CHECK hit upstream bug containernetworking/plugins#819 (tolerated)"
        );
    }
    lab.run("check", &[]).assert_ok();

    lab.run("del", &["--capargs", caps]).assert_ok();
    let nat = node_nat(&lab.node);
    assert!(!nat.contains("18080"), "portmap DNAT rule survived DEL:\n{nat}");
    assert!(!lab.cache_file().exists());
}

#[test]
fn plugin_error_object_is_reported_and_nothing_is_cached() {
    let lab = Lab::new(refnet);
    let mut args = lab.args("add", &[]);
    let i = args.iter().position(|a| a == "--netns").unwrap();
    args[i + 1] = "/run/netns/does-not-exist".into();
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = libcni(&lab.node, &a);
    assert_eq!(out.rc, 1, "{out:?}");
    let code = out.code();
    assert!(code >= 1, "{out:?}");
    assert!(out.json()["msg"].as_str().unwrap().contains("does-not-exist"), "{out:?}");
    assert!(out.stderr.contains("does-not-exist"), "error text on stderr: {out:?}");
    assert!(!lab.cache_file().exists(), "failed ADD must not be cached");
}

#[test]
fn missing_network_name_fails_cleanly() {
    let lab = Lab::new(refnet);
    let out = libcni(
        &lab.node,
        &[
            "version",
            "--confdir",
            &lab.tmp.path_str("conf"),
            "--name",
            "nosuchnet",
            "--bindir",
            REF_BINDIR,
        ],
    );
    assert_eq!(out.rc, 1, "{out:?}");
    assert!(out.stderr.contains("nosuchnet"), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "not a CNI error, stdout must be empty: {out:?}");
}
