//! `ferry-ipam` under the reference `ptp` and `bridge` plugins (Debian containernetworking-plugins in
//! /usr/lib/cni, cniVersion <= 1.0.0). Each test makes a "host" and a "pod" namespace inside the
//! sandbox and runs the reference plugin in the host one. Run through `tests/sandbox.sh`.

use ferry_ipam::{Owner, Store};
use serde_json::{json, Value};
use std::path::Path;
use testlab::{bin, bin_dir, cni, require_sandbox, CniOut, Netns, TempDir};

const REF_DIR: &str = "/usr/lib/cni";

fn cni_path() -> String {
    bin("ferry-ipam");
    format!("{}:{REF_DIR}", bin_dir().display())
}

fn call(host: &Netns, plugin: &str, cmd: &str, id: &str, pod: &Netns, conf: &Value) -> CniOut {
    let path = cni_path();
    let netns = pod.path();
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
    ];
    cni(Some(host), &Path::new(REF_DIR).join(plugin), &env, &conf.to_string())
}

fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&["-4", "addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

fn has_link(ns: &Netns, dev: &str) -> bool {
    ns.ip_json(&["link", "show"])
        .as_array()
        .map(|a| a.iter().any(|l| l["ifname"] == dev))
        .unwrap_or(false)
}

/// ADD, check the pod's address and ping it from the host, CHECK, DEL, check the release.
fn lifecycle(plugin: &str, extra: Value, subnet: &str, want_ip: &str) {
    require_sandbox();
    let data = TempDir::new(&format!("ref-{plugin}"));
    let (host, pod) = (Netns::new("fih"), Netns::new("fip"));
    let mut conf = json!({
        "cniVersion": "1.0.0", "name": format!("ref{plugin}"), "type": plugin,
        "ipam": {"type": "ferry-ipam", "subnet": subnet, "dataDir": data.path_str("ipam"),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    let id = testlab::unique("ctr");
    let owner = Owner::new(id.clone(), "eth0");
    let mut store = Store::open(&data.join("ipam"), &format!("ref{plugin}")).unwrap();

    let add = call(&host, plugin, "ADD", &id, &pod, &conf);
    add.assert_ok();
    let res = add.json();
    let cidr = format!("{want_ip}/24");
    assert_eq!(res["cniVersion"], "1.0.0");
    assert!(res["ips"].as_array().unwrap().iter().any(|i| i["address"] == cidr.as_str()), "{res}");
    assert_eq!(store.lookup(&owner).unwrap(), vec![want_ip.parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(addrs(&pod, "eth0"), vec![cidr.clone()], "pod eth0 holds the allocated address");
    assert!(host.ping(want_ip), "host namespace cannot ping the pod at {want_ip}");

    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    let out = call(&host, plugin, "CHECK", &id, &pod, &check);
    assert_eq!((out.rc, out.stdout.as_str()), (0, ""), "{}", out.stderr);

    let del = call(&host, plugin, "DEL", &id, &pod, &check);
    assert_eq!((del.rc, del.stdout.as_str()), (0, ""), "{}", del.stderr);
    assert!(store.lookup(&owner).unwrap().is_empty(), "DEL released the record");
    assert!(store.list().unwrap().is_empty());
    assert!(!has_link(&pod, "eth0"));
    call(&host, plugin, "DEL", &id, &pod, &check).assert_ok();

    // CHECK through the interface plugin propagates ferry-ipam's "holds no IP" error.
    let add2 = call(&host, plugin, "ADD", &id, &pod, &conf);
    add2.assert_ok();
    let mut check2 = conf.clone();
    check2["prevResult"] = add2.json();
    store.release(&owner).unwrap();
    let out = call(&host, plugin, "CHECK", &id, &pod, &check2);
    assert_ne!(out.rc, 0, "CHECK should fail once the record is gone: {}", out.stdout);
    call(&host, plugin, "DEL", &id, &pod, &check2).assert_ok();
}

#[test]
fn ptp_with_ferry_ipam_add_ping_del() {
    lifecycle("ptp", json!({}), "10.99.1.0/24", "10.99.1.2");
}

#[test]
fn bridge_with_ferry_ipam_add_ping_del() {
    lifecycle("bridge", json!({"bridge": "fbr0", "isGateway": true}), "10.99.2.0/24", "10.99.2.2");
}

#[test]
fn ptp_two_pods_get_distinct_addresses_and_talk() {
    require_sandbox();
    let data = TempDir::new("ref-two");
    let host = Netns::new("fih");
    let (a, b) = (Netns::new("fia"), Netns::new("fib"));
    let conf = json!({
        "cniVersion": "0.4.0", "name": "reftwo", "type": "ptp",
        "ipam": {"type": "ferry-ipam", "subnet": "10.99.3.0/24", "dataDir": data.path_str("ipam"),
                 "exclude": ["10.99.3.2-10.99.3.9"], "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let ra = call(&host, "ptp", "ADD", "pod-a", &a, &conf);
    let rb = call(&host, "ptp", "ADD", "pod-b", &b, &conf);
    let ip = |r: &CniOut| r.assert_ok().json()["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!((ip(&ra), ip(&rb)), ("10.99.3.10/24".to_string(), "10.99.3.11/24".to_string()));
    assert_eq!(ra.json()["ips"][0]["version"], "4");
    assert!(a.ping("10.99.3.11"), "pod a reaches pod b through the host");
    call(&host, "ptp", "DEL", "pod-a", &a, &conf).assert_ok();
    call(&host, "ptp", "DEL", "pod-b", &b, &conf).assert_ok();
    assert!(Store::open(&data.join("ipam"), "reftwo").unwrap().list().unwrap().is_empty());
}
