//! The plugin driven through `skel::run` from a map (no processes, no root).

use crate::plugin::IpamPlugin;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tmp(tag: &str) -> Tmp {
    let p = std::env::temp_dir().join(format!("ferry-ipam-plugin-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    Tmp(p)
}

fn call(cmd: &str, id: &str, extra: &[(&str, &str)], stdin: &Value) -> (i32, Value) {
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("CNI_COMMAND".into(), cmd.into());
    if !id.is_empty() {
        m.insert("CNI_CONTAINERID".into(), id.into());
        m.insert("CNI_IFNAME".into(), "eth0".into());
        m.insert("CNI_NETNS".into(), "/run/netns/x".into());
    }
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let bytes = stdin.to_string();
    let rc = ferry_cni::skel::run(
        &mut IpamPlugin,
        "test",
        &move |k: &str| m.get(k).cloned(),
        bytes.as_bytes(),
        &mut out,
        &mut err,
    );
    let text = String::from_utf8(out).unwrap();
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text.trim()).unwrap()
    };
    (rc, v)
}

fn conf(dir: &Tmp, ver: &str, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = json!("ferry-ipam");
    ipam["dataDir"] = json!(dir.0.to_str().unwrap());
    json!({"cniVersion": ver, "name": "net", "type": "ptp", "ipam": ipam})
}

#[test]
fn add_result_shape_and_idempotency() {
    let t = tmp("shape");
    let c = conf(
        &t,
        "1.0.0",
        json!({"subnet":"10.5.0.0/24","routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.96.0.10"]}}),
    );
    let (rc, r) = call("ADD", "c1", &[], &c);
    assert_eq!(rc, 0, "{r}");
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["ips"], json!([{"address":"10.5.0.2/24","gateway":"10.5.0.1"}]));
    assert_eq!(r["routes"], json!([{"dst":"0.0.0.0/0"}]));
    assert_eq!(r["dns"]["nameservers"], json!(["10.96.0.10"]));
    assert!(r.get("interfaces").is_none());
    assert_eq!(call("ADD", "c1", &[], &c).1, r);
    let (_, legacy) = call("ADD", "c1", &[], &conf(&t, "0.2.0", json!({"subnet":"10.5.0.0/24"})));
    assert_eq!(legacy["ip4"]["ip"], "10.5.0.2/24");
}

#[test]
fn requested_ip_sources_in_order() {
    let t = tmp("req");
    let base = json!({"subnet":"10.5.0.0/24"});
    let (_, r) = call(
        "ADD",
        "a",
        &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.5.0.40")],
        &conf(&t, "1.0.0", base.clone()),
    );
    assert_eq!(r["ips"][0]["address"], "10.5.0.40/24");
    let mut c = conf(&t, "1.0.0", base.clone());
    c["args"] = json!({"cni":{"ips":["10.5.0.41/24"]}});
    let (_, r) = call("ADD", "b", &[("CNI_ARGS", "IP=10.5.0.42")], &c);
    assert_eq!(r["ips"][0]["address"], "10.5.0.41/24");
    c["runtimeConfig"] = json!({"ips":["10.5.0.43"]});
    let (_, r) = call("ADD", "c", &[], &c);
    assert_eq!(r["ips"][0]["address"], "10.5.0.43/24");
    let cases = [
        ("IP=10.5.0.40", 101),
        ("IP=10.5.0.1", 7),
        ("IP=10.6.0.9", 7),
        ("IP=fd00::1", 7),
        ("IP=junk", 7),
    ];
    for (args, code) in cases {
        let (rc, e) = call("ADD", "d", &[("CNI_ARGS", args)], &conf(&t, "1.0.0", base.clone()));
        assert_eq!((rc, e["code"].as_u64()), (1, Some(code)), "{args}: {e}");
    }
}

#[test]
fn del_check_gc_status() {
    let t = tmp("verbs");
    let c = conf(&t, "1.1.0", json!({"subnet":"10.5.0.0/30"}));
    let (_, added) = call("ADD", "a", &[], &c);
    let mut with_prev = c.clone();
    with_prev["prevResult"] = added.clone();
    assert_eq!(call("CHECK", "a", &[], &with_prev).0, 0);
    assert_eq!(call("CHECK", "a", &[], &c).0, 0);
    let (rc, e) = call("CHECK", "b", &[], &with_prev);
    assert_eq!((rc, e["code"].as_u64()), (1, Some(103)));
    let mut wrong = c.clone();
    wrong["prevResult"] = json!({"cniVersion":"1.1.0","ips":[{"address":"10.5.0.3/30"}]});
    assert_eq!(call("CHECK", "a", &[], &wrong).1["code"], 103);
    // /30: one usable address, now taken.
    let (rc, e) = call("STATUS", "", &[], &c);
    assert_eq!((rc, e["code"].as_u64()), (1, Some(50)));
    assert!(e["msg"].as_str().unwrap().contains("exhausted"));
    assert_eq!(call("ADD", "b", &[], &c).1["code"], 102);
    assert_eq!(call("DEL", "a", &[], &c), (0, Value::Null));
    assert_eq!(call("DEL", "a", &[], &c), (0, Value::Null));
    assert_eq!(call("STATUS", "", &[], &c), (0, Value::Null));
    assert_eq!(call("CHECK", "a", &[], &c).1["code"], 103);
    // DEL only needs dataDir: a config whose subnet went bad still releases.
    call("ADD", "a", &[], &c);
    let broken = conf(&t, "1.1.0", json!({"subnetFile":"/nonexistent/subnet.env"}));
    assert_eq!(call("DEL", "a", &[], &broken), (0, Value::Null));
    // GC
    call("ADD", "a", &[], &conf(&t, "1.1.0", json!({"subnet":"10.5.0.0/24"})));
    call("ADD", "b", &[], &conf(&t, "1.1.0", json!({"subnet":"10.5.0.0/24"})));
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID":"a","ifname":"eth0"}]);
    assert_eq!(call("GC", "", &[], &gc), (0, Value::Null));
    assert_eq!(call("CHECK", "a", &[], &c).0, 0);
    assert_eq!(call("CHECK", "b", &[], &c).0, 1);
    assert_eq!(call("GC", "", &[], &c), (0, Value::Null));
    assert_eq!(call("CHECK", "a", &[], &c).0, 1);
}

#[test]
fn subnet_file_errors() {
    let t = tmp("sf");
    let f = t.0.join("subnet.env");
    let c = conf(&t, "1.1.0", json!({"subnetFile": f.to_str().unwrap()}));
    let (_, e) = call("ADD", "a", &[], &c);
    assert_eq!(e["code"], 11);
    assert!(e["msg"].as_str().unwrap().contains("node daemon"), "{e}");
    assert_eq!(call("STATUS", "", &[], &c).1["code"], 50);
    std::fs::write(&f, "FLANNEL_SUBNET=what\n").unwrap();
    assert_eq!(call("ADD", "a", &[], &c).1["code"], 7);
    assert_eq!(call("STATUS", "", &[], &c).1["code"], 50);
    std::fs::write(&f, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_SUBNET=fd00:7::/64\n").unwrap();
    let (rc, r) = call("ADD", "a", &[], &c);
    assert_eq!(rc, 0, "{r}");
    assert_eq!(
        r["ips"],
        json!([{"address":"10.244.7.2/24","gateway":"10.244.7.1"},{"address":"fd00:7::2/64","gateway":"fd00:7::1"}])
    );
    assert_eq!(call("STATUS", "", &[], &c), (0, Value::Null));
}

#[test]
fn dual_stack_in_a_legacy_version_is_refused_before_allocating() {
    let t = tmp("legacy-dual");
    let f = t.0.join("subnet.env");
    std::fs::write(&f, "FLANNEL_SUBNET=10.244.8.1/24\nFLANNEL_IPV6_SUBNET=fd00:8::/64\n").unwrap();
    for ver in ["0.1.0", "0.2.0"] {
        let c = conf(&t, ver, json!({"subnetFile": f.to_str().unwrap()}));
        let (rc, e) = call("ADD", "a", &[], &c);
        assert_eq!((rc, e["code"].as_u64()), (1, Some(1)), "{ver}: {e}");
        assert!(e["msg"].as_str().unwrap().contains("0.3.0"), "{e}");
        assert!(!t.0.join("net/state.json").exists(), "{ver}: nothing allocated");
    }
    // One family is fine in a legacy version; both are fine from 0.3.0 on.
    std::fs::write(&f, "FLANNEL_IPV6_SUBNET=fd00:8::/64\n").unwrap();
    let (rc, r) =
        call("ADD", "a", &[], &conf(&t, "0.2.0", json!({"subnetFile": f.to_str().unwrap()})));
    assert_eq!((rc, &r["ip6"]["ip"]), (0, &json!("fd00:8::2/64")), "{r}");
    std::fs::write(&f, "FLANNEL_SUBNET=10.244.8.1/24\nFLANNEL_IPV6_SUBNET=fd00:8::/64\n").unwrap();
    let (rc, r) =
        call("ADD", "b", &[], &conf(&t, "0.3.0", json!({"subnetFile": f.to_str().unwrap()})));
    assert_eq!(rc, 0, "{r}");
    assert_eq!((&r["ips"][0]["version"], &r["ips"][1]["version"]), (&json!("4"), &json!("6")));
}

#[test]
fn config_errors_are_code_7() {
    let t = tmp("cfg");
    for ipam in [
        json!({"subnet":"10.0.0.0/31"}),
        json!({"subnet":"10.0.0.0/24","gateway":"10.1.0.1"}),
        json!({}),
    ] {
        let (rc, e) = call("ADD", "a", &[], &conf(&t, "1.0.0", ipam.clone()));
        assert_eq!((rc, e["code"].as_u64()), (1, Some(7)), "{ipam}");
    }
    let no_ipam = json!({"cniVersion":"1.0.0","name":"net","type":"ptp"});
    assert_eq!(call("ADD", "a", &[], &no_ipam).1["code"], 7);
    assert!(!t.0.join("net/state.json").exists(), "failed ADDs wrote nothing");
}
