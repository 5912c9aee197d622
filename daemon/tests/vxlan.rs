//! Peers beyond the L2 segment (the vxlan backend with DirectRouting), for both stores: two
//! underlay segments joined by a router namespace, nodes on each, pods pinging every other pod;
//! traffic inside a segment goes direct (the VXLAN device's counters do not move), across
//! segments through `ferry.1`; DF-set pings at the pods' MTU cross; a peer that becomes
//! on-link switches to a direct route and back without a restart; the device, a route and a
//! neighbour entry deleted by hand come back; uninstall leaves nothing.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;
use testlab::{wait_for, Netns};

const T: Duration = Duration::from_secs(15);
const DEV: &str = "ferry.1";

/// Nodes 0 and 1 on segment A (198.18.0.0/24), 2 and 3 on segment B (198.19.0.0/24).
fn two_segments(kind: Store) -> (Lab, Vec<String>) {
    let mut lab = Lab::on_segments(kind, &[0, 0, 1, 1]);
    for i in 0..4 {
        lab.start(i, &["--backend", "vxlan"]);
    }
    let subnets = lab.wait_subnets(&[0, 1, 2, 3]);
    (lab, subnets)
}

/// A node's segment, by its address (198.18.0.x: A, 198.19.0.x: B).
fn segment(lab: &Lab, i: usize) -> &str {
    &lab.nodes[i].ip[..7]
}

/// What node `i` routes: same-segment peers via their address, the others via their VTEP
/// address (the subnet's network address) on the VXLAN device.
fn expected(lab: &Lab, i: usize) -> BTreeMap<String, String> {
    (0..lab.nodes.len())
        .filter(|&j| j != i)
        .map(|j| {
            let s = lab.subnet(j).unwrap();
            let gw = if segment(lab, j) == segment(lab, i) {
                lab.nodes[j].ip.clone()
            } else {
                s.split('/').next().unwrap().to_string()
            };
            (s, gw)
        })
        .collect()
}

/// Packets node `i`'s VXLAN device has sent.
fn vxlan_tx(lab: &Lab, i: usize) -> u64 {
    let v = lab.nodes[i].ns.ip_json(&["-s", "link", "show", DEV]);
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or_else(|| panic!("no {DEV} on node {i}: {v}"))
}

/// Routes, neighbours and fdb entries of every node, for a failure message.
fn diag(lab: &Lab) -> String {
    let mut out = String::new();
    let r = lab.underlay.sh("ip -s link; nstat -az | grep -iE 'Forw|Redirect|NoRoutes|Discards'");
    out += &format!("--- underlay\n{}", String::from_utf8_lossy(&r.stdout));
    for (i, n) in lab.nodes.iter().enumerate() {
        let cmds = "ip route; ip neigh; bridge fdb show dev ferry.1; ip -s link show ferry.1; nstat -az | grep -iE 'udp|IpInAddrErrors|IpExtInNoRoutes|IpInDiscards|RPFilter|IpForwDatagrams|IcmpOutRedirects|IcmpInRedirects'";
        let r = n.ns.sh(cmds);
        out += &format!(
            "--- node {i}\n{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    out
}

fn ping_df(pod: &Netns, dst: &str, size: u32) -> bool {
    let s = size.to_string();
    pod.cmd("ping")
        .args(["-c", "1", "-W", "2", "-q", "-M", "do", "-s", &s, dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn across_segments(kind: Store) {
    let (mut lab, subnets) = two_segments(kind);
    for i in 0..4 {
        lab.wait_routes(i, &expected(&lab, i), T);
    }
    // The lease carries flannel's vxlan BackendData.
    let l0: serde_json::Value =
        serde_json::from_str(&lab.get_lease(&key(&subnets[0])).unwrap()).unwrap();
    assert_eq!(l0["BackendType"], "vxlan", "{l0}");
    assert_eq!(l0["BackendData"]["VNI"], 1, "{l0}");
    assert_eq!(l0["BackendData"]["VtepMAC"], "0e:66:c6:12:00:0b", "{l0}");
    // The subnet file gives pods the uplink MTU minus VXLAN's 50 bytes.
    let env = std::fs::read_to_string(lab.nodes[0].dir.join("subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_MTU=1450"), "{env}");

    let pods: Vec<(Netns, String)> = (0..4).map(|i| add_pod(&lab, i, &format!("pod{i}"))).collect();
    let all_ping = |lab: &Lab, when: &str| {
        for (a, (pa, _)) in pods.iter().enumerate() {
            for (b, (_, ipb)) in pods.iter().enumerate() {
                if a != b {
                    // Answered within a few tries: right after a path change the first packet
                    // can wait for ARP on a link the kernel is still bringing up.
                    let ok = wait_for(Duration::from_secs(5), || pa.ping(ipb));
                    assert!(
                        ok,
                        "{when}: pod{a} -> pod{b} ({ipb})\n{}\n{}\n{}",
                        diag(lab),
                        lab.log(a),
                        lab.log(b)
                    );
                }
            }
        }
    };
    all_ping(&lab, "two segments");

    // ferryctl agrees, and says which peers go through VXLAN.
    let mut c = lab.nodes[0].ns.cmd(testlab::bin("ferryctl"));
    c.args(lab.args(0)).arg("routes");
    let o = c.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "ferryctl routes: {text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("ok: VXLAN to 198.19.0.13") && text.contains("in sync"), "{text}");

    // Same segment: direct (the device sends nothing); across: encapsulated.
    let before = vxlan_tx(&lab, 0);
    for _ in 0..5 {
        assert!(wait_for(T, || pods[0].0.ping(&pods[1].1)));
    }
    assert_eq!(vxlan_tx(&lab, 0), before, "pod0 -> pod1 (same segment) went through {DEV}");
    for _ in 0..5 {
        assert!(wait_for(T, || pods[0].0.ping(&pods[2].1)));
    }
    assert!(vxlan_tx(&lab, 0) >= before + 5, "pod0 -> pod2 (other segment) did not use {DEV}");

    // DF set at the advertised MTU (1450: 1422 bytes of ICMP payload) crosses; one byte more
    // does not leave the pod.
    assert!(ping_df(&pods[0].0, &pods[3].1, 1422), "DF ping at MTU 1450 across segments");
    assert!(ping_df(&pods[3].0, &pods[1].1, 1422), "DF ping at MTU 1450 back");
    assert!(!ping_df(&pods[0].0, &pods[3].1, 1423), "DF ping above the pods' MTU");

    // Node 0 gets a leg on segment B (a second interface): its segment-B peers are now
    // on-link, so they get direct routes, without a restart; taken away, VXLAN again.
    let n0 = &lab.nodes[0].ns;
    lab.underlay
        .ip(&["link", "add", "v0b", "type", "veth", "peer", "name", "eth1", "netns", &n0.name]);
    lab.underlay.ip(&["link", "set", "v0b", "master", "br1", "up"]);
    n0.ip(&["addr", "add", "198.19.0.50/24", "dev", "eth1"]);
    n0.ip(&["link", "set", "eth1", "up"]);
    let mut direct = expected(&lab, 0);
    for j in [2, 3] {
        direct.insert(lab.subnet(j).unwrap(), lab.nodes[j].ip.clone());
    }
    lab.wait_routes(0, &direct, T);
    let ok = wait_for(T, || pods[0].0.ping(&pods[2].1));
    assert!(ok, "pod0 -> pod2 with a direct route\n{}\n{}", diag(&lab), lab.log(0));
    let before = vxlan_tx(&lab, 0);
    let ok = wait_for(T, || pods[0].0.ping(&pods[2].1));
    assert!(ok, "pod0 -> pod2 with a direct route\n{}\n{}", diag(&lab), lab.log(0));
    assert_eq!(vxlan_tx(&lab, 0), before, "pod0 -> pod2 still encapsulated while on-link");
    n0.ip(&["link", "del", "eth1"]);
    lab.wait_routes(0, &expected(&lab, 0), T);
    let ok = wait_for(T, || pods[0].0.ping(&pods[2].1));
    assert!(ok, "pod0 -> pod2 encapsulated again\n{}", lab.log(0));
    let log = lab.log(0);
    assert!(
        log.contains("VXLAN to 198.19.0.13") && log.contains("direct route via 198.19.0.13"),
        "{log}"
    );

    // Node 3 moves from segment B to A (re-cabled and re-addressed), ferryd still running: it
    // re-publishes its lease with the new address; its peers on A now route it directly.
    lab.underlay.ip(&["link", "set", "v3", "master", "br0"]);
    let n3 = &lab.nodes[3].ns;
    n3.ip(&["addr", "add", "198.18.0.24/24", "dev", "eth0"]);
    n3.ip(&["addr", "del", "198.19.0.14/24", "dev", "eth0"]);
    n3.ip(&["route", "replace", "198.19.0.0/24", "via", "198.18.0.1"]);
    lab.nodes[3].ip = "198.18.0.24".into();
    let moved =
        wait_for(T, || lab.get_lease(&key(&subnets[3])).is_some_and(|l| l.contains("198.18.0.24")));
    assert!(
        moved,
        "node 3's lease not re-published: {:?}\n{}",
        lab.get_lease(&key(&subnets[3])),
        lab.log(3)
    );
    for i in 0..4 {
        lab.wait_routes(i, &expected(&lab, i), T);
    }
    let l3 = lab.get_lease(&key(&subnets[3])).unwrap();
    assert!(l3.contains("198.18.0.24") && l3.contains("0e:66:c6:12:00:18"), "{l3}");
    all_ping(&lab, "after node 3 moved to segment A");
    assert!(wait_for(T, || pods[0].0.ping(&pods[3].1)));
    let before = vxlan_tx(&lab, 0);
    assert!(wait_for(T, || pods[0].0.ping(&pods[3].1)));
    assert_eq!(vxlan_tx(&lab, 0), before, "pod0 -> pod3 (now same segment) went through {DEV}");
    let n0 = &lab.nodes[0].ns;

    // Drift: a neighbour entry, a route, and the device itself, each removed by hand.
    let vtep2 = subnets[2].split('/').next().unwrap().to_string();
    n0.ip(&["neigh", "del", &vtep2, "dev", DEV]);
    let back = wait_for(T, || n0.ip(&["neigh", "show", "dev", DEV]).contains(&vtep2));
    assert!(back, "ARP entry for {vtep2} not restored\n{}", lab.log(0));
    n0.ip(&["route", "del", &subnets[3]]);
    lab.wait_routes(0, &expected(&lab, 0), T);
    n0.ip(&["link", "del", DEV]);
    lab.wait_routes(0, &expected(&lab, 0), T);
    let ok = wait_for(T, || pods[0].0.ping(&pods[2].1));
    assert!(ok, "pod0 -> pod2 after {DEV} was re-created\n{}", lab.log(0));
    all_ping(&lab, "after drift repairs");

    // Uninstall: no route, nexthop or device of Ferry's left.
    lab.stop(0);
    let (st, out) = lab.run_once(0, &["--uninstall"], T);
    assert!(st.is_some_and(|s| s.success()), "uninstall: {st:?} {out}");
    assert!(lab.routes(0).is_empty(), "{:?}", lab.routes(0));
    let n0 = &lab.nodes[0].ns;
    assert!(!n0.ip(&["link", "show"]).contains(DEV), "{}", n0.ip(&["link", "show"]));
    assert_eq!(n0.ip(&["nexthop", "show", "proto", "113"]).trim(), "");
}

#[test]
fn file_vxlan_across_segments() {
    across_segments(Store::File);
}

#[test]
fn etcd_vxlan_across_segments() {
    across_segments(Store::Etcd);
}

/// A host-gw node (an older ferryd, or flanneld host-gw) on the other segment is never sent
/// VXLAN: it cannot decapsulate. It is routed directly when on-link, else reported unreachable.
#[test]
fn host_gw_peer_is_never_encapsulated() {
    let mut lab = Lab::on_segments(Store::File, &[0, 0, 1]);
    lab.start(0, &["--backend", "vxlan"]);
    let s0 = lab.wait_subnets(&[0]);
    // Leases as a host-gw node writes them, one per segment, on two subnets that are not node 0's.
    let free: Vec<u32> = (77..80).filter(|k| s0[0] != format!("10.244.{k}.0/24")).collect();
    let (on, off) = (format!("10.244.{}.0/24", free[0]), format!("10.244.{}.0/24", free[1]));
    lab.put_lease(&key(&on), r#"{"PublicIP":"198.18.0.12","BackendType":"host-gw"}"#);
    lab.put_lease(&key(&off), r#"{"PublicIP":"198.19.0.13","BackendType":"host-gw"}"#);
    let want: BTreeMap<String, String> = [(on, "198.18.0.12".to_string())].into_iter().collect();
    lab.wait_routes(0, &want, T);
    let ok = wait_for(T, || lab.log(0).contains(&format!("{off} via 198.19.0.13 not routed")));
    assert!(ok, "{}", lab.log(0));
    assert_eq!(lab.routes(0), want, "subnet {s0:?}");
}
