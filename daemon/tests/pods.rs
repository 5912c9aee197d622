//! The whole datapath in the multi-node lab, for both stores: ferryd on three nodes, pods added
//! with the real `ferry` plugin through the conflist ferryd installed, pods pinging across
//! nodes, masquerade only for traffic leaving the cluster network, pings kept through a store
//! outage.

mod common;
use common::*;
use std::time::Duration;
use testlab::{wait_for, Netns};

const T: Duration = Duration::from_secs(10);

/// Conntrack entries of node `i` (what its NAT did), one per line.
fn conntrack(lab: &Lab, i: usize) -> Vec<String> {
    let out = lab.nodes[i].ns.sh("cat /proc/net/nf_conntrack");
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// The conntrack entry of an ICMP flow from `src` to `dst`, if any.
fn flow(lab: &Lab, i: usize, src: &str, dst: &str) -> Option<String> {
    let (s, d) = (format!("src={src} "), format!("dst={dst} "));
    conntrack(lab, i).into_iter().find(|l| {
        l.contains("icmp") && l.find(&s).is_some_and(|a| l.find(&d).is_some_and(|b| a < b))
    })
}

fn pods_across_nodes(kind: Store) {
    let (mut lab, subnets) = Lab::three(kind, T);
    let pods: Vec<(Netns, String)> = (0..3).map(|i| add_pod(&lab, i, &format!("pod{i}"))).collect();
    for (i, (_, ip)) in pods.iter().enumerate() {
        let net: ipnetwork::Ipv4Network = subnets[i].parse().unwrap();
        assert!(
            net.contains(ip.parse().unwrap()),
            "pod {ip} is in node {i}'s subnet {}",
            subnets[i]
        );
    }
    let all_ping = |lab: &Lab, when: &str| {
        for (a, (pa, _)) in pods.iter().enumerate() {
            for (b, (_, ipb)) in pods.iter().enumerate() {
                if a != b {
                    assert!(pa.ping(ipb), "{when}: pod{a} -> pod{b} ({ipb})\n{}", lab.log(a));
                }
            }
        }
    };
    all_ping(&lab, "cross-node");

    // Pod-to-pod across nodes keeps the pod's address (no SNAT): the reply goes to the pod.
    let (ip0, ip1) = (&pods[0].1, &pods[1].1);
    let f = flow(&lab, 0, ip0, ip1).expect("conntrack entry for pod0 -> pod1");
    assert!(f.contains(&format!("src={ip1} dst={ip0} ")), "pod-to-pod traffic was NATed: {f}");
    // Pod to outside the cluster network is masqueraded to the node's address: the underlay has
    // no route back to pod subnets, so this ping only works through the NAT.
    assert!(pods[0].0.ping("198.18.0.1"), "pod0 -> underlay 198.18.0.1 (needs masquerade)");
    let f = flow(&lab, 0, ip0, "198.18.0.1").expect("conntrack entry for pod0 -> 198.18.0.1");
    assert!(
        f.contains(&format!("src=198.18.0.1 dst={} ", lab.nodes[0].ip)),
        "not masqueraded to the node IP: {f}"
    );

    // The store goes away: routes and pings stay.
    let away = lab.dir.join("store-away");
    match kind {
        Store::File => std::fs::rename(lab.store_dir(), &away).unwrap(),
        Store::Etcd => lab.etcd_down(),
    }
    std::thread::sleep(Duration::from_millis(1500));
    all_ping(&lab, "store down");
    match kind {
        Store::File => std::fs::rename(&away, lab.store_dir()).unwrap(),
        Store::Etcd => lab.store_up(),
    }
    let renewed = wait_for(T, || (0..3).all(|i| lab.get_lease(&key(&subnets[i])).is_some()));
    assert!(renewed, "leases present after the store returned: {:?}", lab.lease_keys());
    all_ping(&lab, "store back");
}

#[test]
fn file_pods_across_nodes() {
    pods_across_nodes(Store::File)
}

#[test]
fn etcd_pods_across_nodes() {
    pods_across_nodes(Store::Etcd)
}
