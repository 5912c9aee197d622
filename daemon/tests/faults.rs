//! Daemon faults in the multi-node lab: a long etcd outage while pods ping, etcd restarted with
//! its data wiped, and a node whose lease expired while it was down. Each prints what it saw.
//!
//! The outage lasts 60 s (`FERRY_OUTAGE_SECS` overrides it, e.g. for a quick local run).

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use testlab::{wait_for, Netns};

const T: Duration = Duration::from_secs(15);

fn outage() -> Duration {
    let s = std::env::var("FERRY_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    Duration::from_secs(s)
}

/// `ping` from `pod` to `dst` every 200 ms for `secs` seconds, in the background.
fn pinger(pod: &Netns, dst: &str, secs: u64) -> Child {
    pod.cmd("ping")
        .args(["-i", "0.2", "-W", "1", "-w", &secs.to_string(), "-q", dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping")
}

/// (sent, received) from a finished pinger.
fn ping_counts(ch: Child) -> (u64, u64) {
    let out = ch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| {
        panic!("no ping summary: {text} {}", String::from_utf8_lossy(&out.stderr))
    });
    let num = |word: &str| -> u64 {
        let before = line.split(word).next().unwrap_or("");
        before
            .split(|c: char| c == ',' || c.is_whitespace())
            .rfind(|s| !s.is_empty())
            .map_or(0, |n| n.parse().unwrap_or(0))
    };
    (num(" packets transmitted"), num(" received"))
}

/// The PublicIP a stored lease names.
fn lease_ip(lab: &Lab, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&lab.get_lease(key)?).ok()?;
    v["PublicIP"].as_str().map(String::from)
}

#[test]
fn etcd_outage_loses_no_ping_on_established_paths_and_the_lease_is_renewed_after() {
    let mut lab = Lab::new(Store::Etcd, 3);
    // A short lease, so renewals fall inside the outage and fail there.
    lab.common.extend(["--lease-ttl", "20s", "--renew-margin", "10s"].map(String::from));
    for i in 0..3 {
        lab.start(i, &[]);
    }
    let subnets = lab.wait_subnets(&[0, 1, 2]);
    for i in 0..3 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1, 2]), T);
    }
    let (p0, _ip0) = add_pod(&lab, 0, "pod0");
    let (_p1, ip1) = add_pod(&lab, 1, "pod1");
    let (_p2, ip2) = add_pod(&lab, 2, "pod2");
    assert!(p0.ping(&ip1) && p0.ping(&ip2), "paths established before the outage");

    let down = outage();
    let secs = down.as_secs() + 8;
    let pings = [pinger(&p0, &ip1, secs), pinger(&p0, &ip2, secs)];
    let routes_before: Vec<_> = (0..3).map(|i| lab.routes(i)).collect();
    std::thread::sleep(Duration::from_secs(2));
    lab.etcd_down();
    let t0 = Instant::now();
    std::thread::sleep(down);
    for (i, before) in routes_before.iter().enumerate() {
        assert!(lab.running(i), "ferryd on node {i} stayed up through the outage");
        assert_eq!(&lab.routes(i), before, "node {i} kept every route in the outage");
    }
    lab.store_up();
    let back = Instant::now();
    let renewed = wait_for(T, || {
        (0..3).all(|i| lease_ip(&lab, &key(&subnets[i])).as_deref() == Some(&lab.nodes[i].ip))
    });
    assert!(renewed, "every node holds its lease again: {:?}", lab.lease_keys());
    let renewed_after = back.elapsed();
    let mut lost = 0;
    for (ch, dst) in pings.into_iter().zip([&ip1, &ip2]) {
        let (sent, got) = ping_counts(ch);
        assert!(sent > 5 * down.as_secs(), "pinger to {dst} ran through the outage ({sent} sent)");
        assert_eq!(sent, got, "pings to {dst} lost during the etcd outage");
        lost += sent - got;
    }
    for (i, before) in routes_before.iter().enumerate() {
        assert_eq!(&lab.routes(i), before, "node {i}: routes unchanged after the outage");
    }
    // The leases carry an etcd lease again: they expire if no one renews them.
    let o = lab.etcdctl(&[
        "get",
        "--write-out=json",
        &format!("{PREFIX}/subnets/{}", key(&subnets[0])),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["kvs"][0]["lease"].as_i64().is_some_and(|l| l != 0), "lease has an etcd lease: {v}");
    println!(
        "etcd down {:.0} s: {lost} pings lost on established paths, routes unchanged, every \
         lease held again {:.0} ms after etcd returned",
        (back - t0).as_secs_f64(),
        renewed_after.as_secs_f64() * 1e3
    );
}

#[test]
fn etcd_restarted_with_its_data_wiped_nodes_reclaim_their_own_subnets() {
    let (mut lab, subnets) = Lab::three(Store::Etcd, T);
    lab.etcd_down();
    std::fs::remove_dir_all(lab.dir.join("etcd-data")).unwrap();
    let back = Instant::now();
    lab.store_up();
    let reclaimed = wait_for(T, || {
        (0..3).all(|i| lease_ip(&lab, &key(&subnets[i])).as_deref() == Some(&lab.nodes[i].ip))
    });
    assert!(reclaimed, "each node re-claims its own subnet: {:?}", lab.lease_keys());
    let took = back.elapsed();
    for (i, subnet) in subnets.iter().enumerate() {
        assert_eq!(lab.subnet(i).as_deref(), Some(subnet.as_str()), "node {i} kept its subnet");
    }
    // A node joining now gets a subnet of its own, and everyone routes it.
    let n = lab.add_node();
    lab.start(n, &[]);
    let all = lab.wait_subnets(&[0, 1, 2, n]);
    assert!(!subnets.contains(&all[3]), "the new node's {} is not one of {subnets:?}", all[3]);
    for i in [0, 1, 2, n] {
        lab.wait_routes(i, &lab.expected(i, &[0, 1, 2, n]), T);
    }
    println!("etcd wiped: all 3 nodes re-claimed their own subnets {:.0} ms after it returned; a 4th node got {} and is routed", took.as_secs_f64() * 1e3, all[3]);
}

fn lease_expired_while_down_is_reclaimed(kind: Store) {
    let (mut lab, subnets) = Lab::three(kind, T);
    assert!(lab.stop(2).is_some());
    // The lease runs out while the node is down; the peers drop its route.
    lab.del_lease(&key(&subnets[2]));
    for i in 0..2 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1]), T);
    }
    lab.start(2, &[]);
    let back = lab.wait_subnets(&[2]);
    assert_eq!(back[0], subnets[2], "the node re-claims the subnet its pods use");
    let ok = wait_for(T, || lease_ip(&lab, &key(&subnets[2])).as_deref() == Some(&lab.nodes[2].ip));
    assert!(ok, "lease re-created: {:?}", lab.lease_keys());
    for i in 0..3 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1, 2]), T);
    }
}

#[test]
fn file_lease_expired_while_down_is_reclaimed() {
    lease_expired_while_down_is_reclaimed(Store::File)
}

#[test]
fn etcd_lease_expired_while_down_is_reclaimed() {
    lease_expired_while_down_is_reclaimed(Store::Etcd)
}
