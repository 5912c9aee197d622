//! `ferry-ipam` as a standalone IPAM plugin: env + stdin in, JSON out, like a runtime or an
//! interface plugin runs it. No networking, so these run anywhere (inside or outside the sandbox).
//! Build first: `cargo build --release -p ferry-ipam`.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use testlab::{bin, cni, CniOut, TempDir};

fn conf(dir: &TempDir, ver: &str, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("ferry-ipam");
    ipam["dataDir"] = json!(dir.path_str("data"));
    json!({"cniVersion": ver, "name": "ipamnet", "type": "ptp", "ipam": ipam})
}

fn run(cmd: &str, id: &str, conf: &Value) -> CniOut {
    run_args(cmd, id, "", conf)
}

fn run_args(cmd: &str, id: &str, args: &str, conf: &Value) -> CniOut {
    let mut env = vec![("CNI_COMMAND", cmd), ("CNI_PATH", "/usr/lib/cni")];
    if !id.is_empty() {
        env.extend([
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/none"),
        ]);
    }
    if !args.is_empty() {
        env.push(("CNI_ARGS", args));
    }
    cni(None, &bin("ferry-ipam"), &env, &conf.to_string())
}

fn state(dir: &TempDir) -> Value {
    let text = std::fs::read_to_string(dir.join("data/ipamnet/state.json"))
        .unwrap_or_else(|_| "{}".into());
    serde_json::from_str(&text).expect("state.json is valid JSON")
}

fn held(dir: &TempDir) -> usize {
    state(dir)["allocations"].as_object().map(|m| m.len()).unwrap_or(0)
}

#[test]
fn version_and_about() {
    let out =
        cni(None, &bin("ferry-ipam"), &[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    out.assert_ok();
    assert!(out.json()["supportedVersions"].as_array().unwrap().iter().any(|v| v == "1.1.0"));
    let out = cni(None, &bin("ferry-ipam"), &[], "");
    assert_eq!((out.rc, out.stdout.as_str()), (0, ""));
    assert!(out.stderr.contains("ferry-ipam"));
}

#[test]
fn add_check_del_lifecycle() {
    let d = TempDir::new("ipam-life");
    let c = conf(&d, "1.0.0", json!({"subnet":"10.77.0.0/24","routes":[{"dst":"0.0.0.0/0"}]}));
    let r = run("ADD", "c1", &c);
    r.assert_ok();
    let res = r.json();
    assert_eq!(
        res,
        json!({"cniVersion":"1.0.0","ips":[{"address":"10.77.0.2/24","gateway":"10.77.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}})
    );
    assert_eq!(run("ADD", "c1", &c).json(), res, "repeated ADD returns the same IP");
    assert_eq!(held(&d), 1);
    assert_eq!(state(&d)["allocations"]["10.77.0.2"], json!({"id":"c1","ifname":"eth0"}));
    let mut with_prev = c.clone();
    with_prev["prevResult"] = res.clone();
    let ok = run("CHECK", "c1", &with_prev);
    assert_eq!((ok.rc, ok.stdout.as_str()), (0, ""));
    assert_eq!(run("CHECK", "other", &with_prev).code(), 103);
    let del = run("DEL", "c1", &c);
    assert_eq!((del.rc, del.stdout.as_str()), (0, ""));
    assert_eq!(held(&d), 0);
    run("DEL", "c1", &c).assert_ok();
    run("DEL", "never-added", &c).assert_ok();
    assert_eq!(run("CHECK", "c1", &with_prev).code(), 103);
    // round robin: the freed .2 is not handed out again at once
    assert_eq!(run("ADD", "c2", &c).json()["ips"][0]["address"], "10.77.0.3/24");
}

#[test]
fn every_version_echoed() {
    let d = TempDir::new("ipam-ver");
    for (i, v) in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate()
    {
        let out = run("ADD", &format!("v{i}"), &conf(&d, v, json!({"subnet":"10.77.0.0/24"})));
        let r = out.assert_ok().json();
        assert_eq!(r["cniVersion"], *v);
        if v.starts_with("0.1") || v.starts_with("0.2") {
            assert!(r["ip4"]["ip"].is_string() && r.get("ips").is_none(), "{r}");
        } else {
            assert!(r["ips"][0].get("interface").is_none(), "{r}");
        }
    }
}

#[test]
fn requested_ip_from_cni_args() {
    let d = TempDir::new("ipam-req");
    let c = conf(&d, "1.0.0", json!({"subnet":"10.77.0.0/24"}));
    let r = run_args("ADD", "a", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.77.0.99", &c);
    assert_eq!(r.assert_ok().json()["ips"][0]["address"], "10.77.0.99/24");
    assert_eq!(run_args("ADD", "b", "IP=10.77.0.99", &c).code(), 101);
    assert_eq!(run_args("ADD", "b", "IP=10.77.0.1", &c).code(), 7);
    assert_eq!(run_args("ADD", "b", "IP=10.78.0.5", &c).code(), 7);
    assert_eq!(held(&d), 1);
}

#[test]
fn exhaustion_and_status() {
    let d = TempDir::new("ipam-exh");
    let c = conf(&d, "1.1.0", json!({"subnet":"10.77.0.0/29"}));
    let st = run("STATUS", "", &c);
    assert_eq!((st.rc, st.stdout.as_str()), (0, ""));
    for i in 0..5 {
        run("ADD", &format!("c{i}"), &c).assert_ok();
    }
    let e = run("ADD", "c5", &c);
    assert_eq!(e.code(), 102);
    assert!(e.json()["msg"].as_str().unwrap().contains("10.77.0.1-10.77.0.6"), "{}", e.stdout);
    assert_eq!(run("STATUS", "", &c).code(), 50);
    run("DEL", "c0", &c).assert_ok();
    run("STATUS", "", &c).assert_ok();
}

#[test]
fn subnet_file_not_written_yet_is_try_again() {
    let d = TempDir::new("ipam-sf");
    let f = d.path_str("subnet.env");
    let c = conf(&d, "1.1.0", json!({"subnetFile": f}));
    let e = run("ADD", "a", &c);
    assert_eq!(e.code(), 11);
    assert!(e.stdout.contains("node daemon"), "{}", e.stdout);
    assert_eq!(run("STATUS", "", &c).code(), 50);
    std::fs::write(&f, "garbage\n").unwrap();
    assert_eq!(run("ADD", "a", &c).code(), 7);
    assert_eq!(run("STATUS", "", &c).code(), 50);
    std::fs::write(
        &f,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\n",
    )
    .unwrap();
    assert_eq!(run("ADD", "a", &c).assert_ok().json()["ips"][0]["address"], "10.244.5.2/24");
    run("STATUS", "", &c).assert_ok();
}

#[test]
fn gc_with_either_key_and_with_no_list() {
    let d = TempDir::new("ipam-gc");
    let c = conf(&d, "1.1.0", json!({"subnet":"10.77.0.0/24"}));
    for id in ["a", "b", "c"] {
        run("ADD", id, &c).assert_ok();
    }
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}]);
    let out = run("GC", "", &gc);
    assert_eq!((out.rc, out.stdout.as_str()), (0, ""), "{}", out.stderr);
    assert_eq!(held(&d), 2);
    let mut gc = c.clone();
    gc["cni.dev/attachments"] = json!([{"containerID":"a","ifname":"eth0"}]);
    run("GC", "", &gc).assert_ok();
    assert_eq!(held(&d), 1);
    assert_eq!(state(&d)["allocations"]["10.77.0.2"]["id"], "a");
    // cnitool gc sends no list: nothing is valid.
    run("GC", "", &c).assert_ok();
    assert_eq!(held(&d), 0);
    assert_eq!(run("GC", "", &conf(&d, "1.0.0", json!({"subnet":"10.77.0.0/24"}))).code(), 1);
}

#[test]
fn garbled_state_file_is_reported_not_overwritten() {
    let d = TempDir::new("ipam-garbled");
    let c = conf(&d, "1.1.0", json!({"subnet":"10.77.0.0/24"}));
    run("ADD", "a", &c).assert_ok();
    let path = d.join("data/ipamnet/state.json");
    std::fs::write(&path, "{\"version\":1,\"allocations\":{\"10.77.0.2\":").unwrap();
    // ADD of anyone, and DEL of an id the bytes mention ("a" occurs in them), report it.
    for (cmd, id) in [("ADD", "b"), ("DEL", "a")] {
        let e = run(cmd, id, &c);
        assert_eq!(e.code(), 101, "{cmd}");
        assert!(e.stdout.contains("corrupt"), "{}", e.stdout);
    }
    // DEL of an id the bytes never mention cannot concern this state: success, file untouched.
    run("DEL", "b", &c).assert_ok();
    assert_eq!(run("STATUS", "", &c).code(), 50);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"version\":1,\"allocations\":{\"10.77.0.2\":"
    );
}

fn spawn_add(c: &Value, id: &str) -> Child {
    let mut child = Command::new(bin("ferry-ipam"))
        .env_clear()
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry-ipam");
    child.stdin.take().unwrap().write_all(c.to_string().as_bytes()).unwrap();
    child
}

#[test]
fn two_hundred_parallel_adds_get_distinct_ips() {
    let d = TempDir::new("ipam-par");
    let c = conf(&d, "1.0.0", json!({"subnet":"10.78.0.0/24"}));
    let children: Vec<Child> = (0..200).map(|i| spawn_add(&c, &format!("p{i}"))).collect();
    let mut ips = HashSet::new();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert!(ips.insert(v["ips"][0]["address"].as_str().unwrap().to_string()), "duplicate {v}");
    }
    assert_eq!(ips.len(), 200);
    assert_eq!(held(&d), 200);
}

#[test]
fn killed_adds_leave_a_consistent_store_that_gc_cleans() {
    let d = TempDir::new("ipam-kill");
    let c = conf(&d, "1.1.0", json!({"subnet":"10.79.0.0/24"}));
    let mut children: Vec<Child> = (0..60).map(|i| spawn_add(&c, &format!("k{i}"))).collect();
    for ch in children.iter_mut().step_by(2) {
        let _ = ch.kill(); // SIGKILL by PID, whatever point it reached
    }
    for ch in children {
        let _ = ch.wait_with_output();
    }
    let st = state(&d);
    let allocs = st["allocations"].as_object().cloned().unwrap_or_default();
    assert!(allocs.len() >= 30 && allocs.len() <= 60, "{}", allocs.len());
    let owners: HashSet<String> =
        allocs.values().map(|o| o["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(owners.len(), allocs.len(), "one address per owner");
    run("ADD", "after", &c).assert_ok();
    run("GC", "", &c).assert_ok();
    assert_eq!(held(&d), 0);
}
