//! `"ipam"` in the config: ferry delegates allocation to that plugin through CNI_PATH, for every
//! verb (ADD, CHECK, DEL, GC, STATUS), with the reference host-local and with ferry-ipam.

mod common;
use common::*;
use testlab::Netns;

fn conf(node: &Node, ver: &str, ipam: &str) -> String {
    format!(r#"{{"cniVersion":"{ver}","name":"d","type":"ferry","ipam":{ipam}}}"#)
        .replace("DATADIR", &node.dir.path_str("ipam"))
}

#[test]
fn host_local_delegation_add_check_del() {
    let node = Node::new();
    let c = conf(
        &node,
        "1.0.0",
        r#"{"type":"host-local","ranges":[[{"subnet":"10.80.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"DATADIR"}"#,
    );
    let (a, b) = (Netns::new("fp"), Netns::new("fp"));
    let ra = node.add("hla", &a, &c);
    let rb = node.add("hlb", &b, &c);
    assert_eq!(ra["ips"][0]["gateway"], "10.80.0.1");
    let (ipa, ipb) = (pod_ip(&ra), pod_ip(&rb));
    assert!(ipa.starts_with("10.80.0.") && ipa != ipb);
    // host-local writes one file per IP under dataDir/<network>.
    assert!(node.dir.join("ipam/d").join(&ipa).exists());
    assert!(a.ping(&ipb) && node.ns.ping(&ipa));
    node.call("CHECK", "hla", Some(&a), "eth0", &with_prev(&c, &ra)).assert_ok();
    node.call("DEL", "hla", Some(&a), "eth0", &with_prev(&c, &ra)).assert_ok();
    assert!(!node.dir.join("ipam/d").join(&ipa).exists(), "host-local released the IP");
    assert!(!a.sh("ip link show eth0").status.success());
    node.call("DEL", "hla", Some(&a), "eth0", &c).assert_ok();
    node.call("DEL", "hlb", Some(&b), "eth0", &c).assert_ok();
}

#[test]
fn ferry_ipam_delegation_all_verbs() {
    let node = Node::new();
    let ipam = r#"{"type":"ferry-ipam","subnet":"10.81.0.0/24","dataDir":"DATADIR"}"#;
    let c = conf(&node, "1.1.0", ipam);
    let (a, b) = (Netns::new("fp"), Netns::new("fp"));
    let ra = node.add("fia", &a, &c);
    let rb = node.add("fib", &b, &c);
    assert!(a.ping(&pod_ip(&rb)));
    node.call("STATUS", "", None, "", &c).assert_ok();
    node.call("CHECK", "fia", Some(&a), "eth0", &with_prev(&c, &ra)).assert_ok();
    // GC forwards to ferry-ipam: fib's allocation is released and its host veth removed.
    let gc = conf(&node, "1.1.0", ipam).replacen(
        '{',
        r#"{"cni.dev/valid-attachments":[{"containerID":"fia","ifname":"eth0"}],"#,
        1,
    );
    node.call("GC", "", None, "", &gc).assert_ok();
    assert!(!b.sh("ip link show eth0").status.success(), "stale veth removed by GC");
    node.call("CHECK", "fia", Some(&a), "eth0", &with_prev(&c, &ra)).assert_ok();
    assert_ne!(node.call("CHECK", "fib", Some(&b), "eth0", &with_prev(&c, &rb)).rc, 0);
    node.call("DEL", "fia", Some(&a), "eth0", &c).assert_ok();
    node.call("DEL", "fib", Some(&b), "eth0", &c).assert_ok();
    // STATUS forwards too: a missing subnet file makes ferry-ipam (and so ferry) not ready.
    let nf = conf(
        &node,
        "1.1.0",
        r#"{"type":"ferry-ipam","subnetFile":"/nonexistent/subnet.env","dataDir":"DATADIR"}"#,
    );
    assert_eq!(node.call("STATUS", "", None, "", &nf).code(), 50);
}

/// Dual stack through a delegate: host-local with two ranges and ferry-ipam on a dual-stack
/// subnet file each give one address per family, and ferry wires both. With cniVersion 0.2.0 the
/// attachment is refused with code 1 and the delegate's allocation released (ferry-ipam refuses
/// before allocating; host-local answers with `ip4` + `ip6` and ferry DELs it).
#[test]
fn dual_stack_delegation() {
    let node = Node::new();
    let env = node.dir.join("subnet.env");
    std::fs::write(&env, "FLANNEL_SUBNET=10.82.1.1/24\nFLANNEL_IPV6_SUBNET=fd00:82:0:1::/64\n")
        .unwrap();
    let host_local = r#"{"type":"host-local","ranges":[[{"subnet":"10.83.0.0/24"}],[{"subnet":"fd00:83::/64"}]],"dataDir":"DATADIR"}"#;
    let ferry_ipam =
        format!(r#"{{"type":"ferry-ipam","subnetFile":"{}","dataDir":"DATADIR"}}"#, env.display());
    for (ipam, gw4, gw6) in [
        (host_local.to_string(), "10.83.0.1", "fd00:83::1"),
        (ferry_ipam, "10.82.1.1", "fd00:82:0:1::1"),
    ] {
        let c = conf(&node, "1.0.0", &ipam);
        let (a, b) = (Netns::new("fp"), Netns::new("fp"));
        let ra = node.add("dsa", &a, &c);
        let rb = node.add("dsb", &b, &c);
        assert_eq!(
            (&ra["ips"][0]["gateway"], &ra["ips"][1]["gateway"]),
            (&gw4.into(), &gw6.into())
        );
        let dsts: Vec<&str> =
            ra["routes"].as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap()).collect();
        assert_eq!(dsts, ["0.0.0.0/0", "::/0"], "a default route per family: {ra}");
        for ip in pod_ips(&rb) {
            assert!(a.ping(&ip), "pod a -> pod b {ip} ({ipam})");
        }
        node.call("CHECK", "dsa", Some(&a), "eth0", &with_prev(&c, &ra)).assert_ok();
        node.call("DEL", "dsa", Some(&a), "eth0", &with_prev(&c, &ra)).assert_ok();
        node.call("DEL", "dsb", Some(&b), "eth0", &with_prev(&c, &rb)).assert_ok();
        let legacy = conf(&node, "0.2.0", &ipam);
        let out = node.call("ADD", "old", Some(&a), "eth0", &legacy);
        assert_eq!(out.code(), 1, "{ipam}: {}", out.stdout);
        assert!(!a.sh("ip link show eth0").status.success(), "nothing created");
        assert_eq!(host_ends(&node), 0);
        let left: Vec<_> = std::fs::read_dir(node.dir.join("ipam/d"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let leases: Vec<_> = left
            .iter()
            .filter(|n| n.to_string_lossy().parse::<std::net::IpAddr>().is_ok())
            .collect();
        assert!(leases.is_empty(), "host-local leases left: {leases:?}");
        assert!(node.allocated().is_empty(), "ferry-ipam state: {}", node.ipam_state());
    }
}
