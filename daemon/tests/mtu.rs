//! MTU: ferryd takes it from the uplink it uses for peers (or `--mtu`), writes it to the subnet
//! file, and the plugin gives both veth ends that MTU. With the underlay at 1400, the largest
//! ping with DF set crosses nodes, and the next size up fails loudly ("message too long") at
//! the sender instead of vanishing on the wire.

mod common;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn subnet_env(lab: &Lab, i: usize) -> String {
    std::fs::read_to_string(lab.nodes[i].dir.join("subnet.env")).unwrap()
}

fn link_mtu(ns: &testlab::Netns, dev: &str) -> u64 {
    ns.ip_json(&["link", "show", dev])[0]["mtu"].as_u64().unwrap()
}

/// `ping -M do -s SIZE` once: (success, combined output).
fn ping_df(pod: &testlab::Netns, dst: &str, size: usize) -> (bool, String) {
    let o = pod
        .cmd("ping")
        .args(["-c", "1", "-W", "1", "-M", "do", "-s", &size.to_string(), dst])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text)
}

#[test]
fn lowered_underlay_mtu_reaches_pods_and_oversize_fails_loudly() {
    let mut lab = Lab::new(Store::File, 2);
    for (i, node) in lab.nodes.iter().enumerate() {
        lab.underlay.ip(&["link", "set", &format!("v{i}"), "mtu", "1400"]);
        node.ns.ip(&["link", "set", "eth0", "mtu", "1400"]);
    }
    lab.start(0, &[]);
    lab.start(1, &[]);
    lab.wait_subnets(&[0, 1]);
    for i in 0..2 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1]), T);
        assert!(subnet_env(&lab, i).contains("FLANNEL_MTU=1400\n"), "{}", subnet_env(&lab, i));
    }
    let (p0, _) = add_pod(&lab, 0, "mtu0");
    let (_p1, ip1) = add_pod(&lab, 1, "mtu1");
    assert_eq!(link_mtu(&p0, "eth0"), 1400, "pod end");
    let host_end = lab.nodes[0]
        .ns
        .ip_json(&["link", "show", "type", "veth"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"].as_str().unwrap().starts_with("fry"))
        .map(|l| l["mtu"].as_u64().unwrap());
    assert_eq!(host_end, Some(1400), "host end");

    // 1400 - 20 (IPv4) - 8 (ICMP) = 1372 bytes of payload fit exactly.
    let (ok, out) = ping_df(&p0, &ip1, 1372);
    assert!(ok, "largest DF ping across nodes: {out}");
    let (ok, out) = ping_df(&p0, &ip1, 1373);
    assert!(!ok && out.to_lowercase().contains("message too long"), "one byte more: {out}");
    let why = out.lines().find(|l| l.contains("message too long")).unwrap_or_default();
    println!("mtu 1400: DF ping of 1372 bytes crosses nodes; 1373 fails with: {why}");
}

#[test]
fn explicit_mtu_overrides_the_uplink() {
    let mut lab = Lab::new(Store::File, 1);
    lab.start(0, &["--mtu", "1300"]);
    lab.wait_subnets(&[0]);
    assert!(subnet_env(&lab, 0).contains("FLANNEL_MTU=1300\n"), "{}", subnet_env(&lab, 0));
    let (pod, _) = add_pod(&lab, 0, "mtu-explicit");
    assert_eq!(link_mtu(&pod, "eth0"), 1300);
}
