//! Multi-node lab tests for ferryd, each run against the file store and against etcd.
//! Run inside the sandbox: `tests/sandbox.sh cargo test -p ferryd --offline --test lab`.

mod common;

use common::{key, Family, Lab, Store};
use std::collections::BTreeMap;
use std::time::Duration;
use testlab::wait_for;

const T: Duration = Duration::from_secs(5);

fn lab3(kind: Store) -> (Lab, Vec<String>) {
    Lab::three(kind, T)
}

/// Take node 0's ferryd down with `down`, start it again, and assert that no route was deleted
/// meanwhile (watched with `ip monitor`) and that the lease was reused.
fn down_and_up_without_flap(lab: &mut Lab, subnets: &[String], down: impl FnOnce(&mut Lab)) {
    let (mut mon, mon_path) = lab.monitor(0, "mon0");
    down(lab);
    lab.start(0, &[]);
    assert!(wait_for(T, || lab.log(0).matches("INFO lease ").count() >= 2), "{}", lab.log(0));
    std::thread::sleep(Duration::from_millis(500));
    mon.stop(Duration::from_secs(2));
    let seen = std::fs::read_to_string(&mon_path).unwrap();
    assert!(
        !seen.contains("Deleted"),
        "routes flapped while ferryd went down and came back:\n{seen}"
    );
    assert_eq!(lab.subnet(0).unwrap(), subnets[0], "lease reused");
}

fn leases_are_distinct_and_routed(kind: Store) {
    let (lab, subnets) = lab3(kind);
    let mut uniq = subnets.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "{subnets:?}");
    for (i, s) in subnets.iter().enumerate() {
        assert!(s.starts_with("10.244.") && s.ends_with("/24") && s != "10.244.0.0/24", "{s}");
        let v = lab.get_lease(&key(s)).unwrap_or_else(|| panic!("no lease {s} in the store"));
        assert!(v.contains(&format!(r#""PublicIP":"{}""#, lab.nodes[i].ip)), "{v}");
        let conf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(lab.conflist(i)).unwrap()).unwrap();
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["plugins"][0]["type"], "ferry");
        assert_eq!(
            conf["plugins"][0]["subnetFile"],
            lab.nodes[i].dir.join("subnet.env").display().to_string()
        );
        assert_eq!(lab.nodes[i].ns.sysctl("net.ipv4.ip_forward"), "1");
        let env = std::fs::read_to_string(lab.nodes[i].dir.join("subnet.env")).unwrap();
        assert!(
            env.contains("FLANNEL_NETWORK=10.244.0.0/16\n")
                && env.contains("FLANNEL_MTU=1500\n")
                && env.contains("FLANNEL_IPMASQ=true\n"),
            "{env}"
        );
        // Routes go out of eth0 and are tagged proto 113.
        let r = lab.nodes[i].ns.ip(&["route", "get", &subnets[(i + 1) % 3].replace(".0/24", ".5")]);
        assert!(
            r.contains(&format!("via {}", lab.nodes[(i + 1) % 3].ip)) && r.contains("dev eth0"),
            "{r}"
        );
    }
}

fn nodes_join_and_leave(kind: Store) {
    let mut lab = Lab::new(kind, 2);
    lab.start(0, &[]);
    lab.start(1, &[]);
    lab.wait_subnets(&[0, 1]);
    lab.wait_routes(0, &lab.expected(0, &[0, 1]), T);
    let j = lab.add_node();
    lab.start(j, &[]);
    let s = lab.wait_subnets(&[j])[0].clone();
    for i in 0..3 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1, 2]), T);
    }
    // Node 2 leaves: its daemon stops (exit 0, datapath left) and its lease is deleted.
    let st = lab.stop(j).expect("ferryd exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert_eq!(lab.routes(j).len(), 2, "a stopped daemon leaves its routes in place");
    assert!(lab.conflist(j).exists());
    lab.del_lease(&key(&s));
    for i in 0..2 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1]), T);
    }
}

fn hand_made_drift_is_repaired(kind: Store) {
    let (lab, subnets) = lab3(kind);
    let ns = &lab.nodes[0].ns;
    let want = lab.expected(0, &[0, 1, 2]);
    // A route deleted by hand comes back.
    ns.ip(&["route", "del", &subnets[1]]);
    lab.wait_routes(0, &want, Duration::from_secs(1));
    // A wrong gateway is replaced.
    ns.ip(&["route", "replace", &subnets[2], "via", "198.18.0.99", "proto", "113"]);
    lab.wait_routes(0, &want, Duration::from_secs(1));
    // A stray proto-113 route is removed; a foreign route is never touched.
    ns.ip(&["route", "add", "10.244.250.0/24", "via", "198.18.0.13", "proto", "113"]);
    ns.ip(&["route", "add", "10.77.0.0/24", "via", "198.18.0.13"]);
    lab.wait_routes(0, &want, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(700)); // a couple of sweeps
    assert!(ns.ip(&["route"]).contains("10.77.0.0/24 via 198.18.0.13"), "foreign route kept");
    // Link flap: the kernel flushes routes via eth0, ferryd restores them once it is up.
    ns.ip(&["link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(lab.routes(0).is_empty(), "the kernel flushed the routes");
    ns.ip(&["link", "set", "eth0", "up"]);
    lab.wait_routes(0, &want, Duration::from_secs(2));
}

fn restart_reuses_lease_without_flap(kind: Store) {
    let (mut lab, subnets) = lab3(kind);
    down_and_up_without_flap(&mut lab, &subnets, |lab| assert!(lab.stop(0).unwrap().success()));
    assert_eq!(lab.lease_keys().len(), 3, "{:?}", lab.lease_keys());
    lab.wait_routes(0, &lab.expected(0, &[0, 1, 2]), T);

    // A peer vanishes while node 0's daemon is down: the stale route goes at start.
    assert!(lab.stop(0).unwrap().success());
    assert!(lab.stop(2).unwrap().success());
    lab.del_lease(&key(&subnets[2]));
    lab.wait_routes(1, &lab.expected(1, &[0, 1]), T);
    assert_eq!(lab.routes(0).len(), 2, "node 0 is down: nothing changed yet");
    lab.start(0, &[]);
    lab.wait_routes(0, &lab.expected(0, &[0, 1]), T);
    assert_eq!(lab.subnet(0).unwrap(), subnets[0]);
}

fn kill9_keeps_datapath_and_restart_does_not_flap(kind: Store) {
    let (mut lab, subnets) = lab3(kind);
    let want = lab.expected(0, &[0, 1, 2]);
    down_and_up_without_flap(&mut lab, &subnets, |lab| {
        lab.kill9(0);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(lab.routes(0), want, "routes survive a SIGKILLed daemon");
        assert!(
            lab.subnet(0).is_some() && lab.conflist(0).exists(),
            "subnet file and conflist stay"
        );
    });
    lab.wait_routes(0, &want, T);
}

fn bad_leases_are_ignored(kind: Store) {
    let (mut lab, subnets) = lab3(kind);
    let own: ipnetwork::Ipv4Network = subnets[0].parse().unwrap();
    let n1: ipnetwork::Ipv4Network = subnets[1].parse().unwrap();
    let n1_wide = ipnetwork::Ipv4Network::new(n1.network(), 23).unwrap();
    let n1_wide = format!("{}-23", n1_wide.network());
    let lease =
        |ip: &str| format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw","BackendData":null}}"#);
    let bad = [
        ("10.244.200.0-24".to_string(), "{garbage".to_string()),
        ("10.99.0.0-24".to_string(), lease("198.18.0.50")),
        (format!("{}-25", own.network()), lease("198.18.0.51")),
        ("10.244.201.0-24".to_string(), lease("198.18.0.11")),
        (n1_wide.clone(), lease("198.18.0.52")),
    ];
    for (k, v) in &bad {
        lab.put_lease(k, v);
    }
    // A hand-written flannel lease (no expiry) is routed; an unreachable peer is not.
    lab.put_lease("10.244.202.0-24", &lease("198.18.0.42"));
    lab.put_lease("10.244.203.0-24", &lease("203.0.113.5"));
    let mut want = lab.expected(0, &[0, 1, 2]);
    want.insert("10.244.202.0/24".into(), "198.18.0.42".into());
    lab.wait_routes(0, &want, T);
    std::thread::sleep(Duration::from_millis(800)); // several sweeps
    assert_eq!(lab.routes(0), want);
    assert!(lab.running(0) && lab.running(1) && lab.running(2));
    let log = lab.log(0);
    for (k, _) in &bad {
        assert!(log.contains(&format!("ignoring lease {k}")), "no warning for {k}:\n{log}");
    }
    assert_eq!(
        log.matches("10.244.203.0/24 via 203.0.113.5 not routed").count(),
        1,
        "unreachable peer reported once:\n{log}"
    );
    // Bad leases are never routed anywhere (10.244.201.0/24 is bad only for the node it points
    // at: to the others it is a second lease of node 0).
    for i in 0..3 {
        let r = lab.routes(i);
        assert!(!r.contains_key("10.244.200.0/24") && !r.contains_key("10.99.0.0/24"), "{r:?}");
        assert!(!r.keys().any(|d| d.ends_with("/23") || d.ends_with("/25")), "{r:?}");
    }
    // The lease moves to another node address: the route's gateway is replaced in place.
    let (mut mon, mon_path) = lab.monitor(0, "mon-move");
    lab.put_lease("10.244.202.0-24", &lease("198.18.0.43"));
    want.insert("10.244.202.0/24".into(), "198.18.0.43".into());
    lab.wait_routes(0, &want, T);
    std::thread::sleep(Duration::from_millis(100));
    mon.stop(Duration::from_secs(2));
    let seen = std::fs::read_to_string(&mon_path).unwrap();
    assert!(!seen.contains("Deleted"), "gateway change must be an atomic replace:\n{seen}");
    // A lease overwritten with garbage stops being routed.
    lab.put_lease("10.244.202.0-24", "not json");
    lab.wait_routes(0, &lab.expected(0, &[0, 1, 2]), T);
}

fn conflist_appears_only_after_lease(kind: Store) {
    let mut lab = Lab::with_store(kind, 1, false);
    lab.start(0, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lab.running(0), "ferryd waits for the store:\n{}", lab.log(0));
    assert!(!lab.conflist(0).exists(), "conflist before any lease");
    assert!(lab.subnet(0).is_none());
    lab.store_up();
    lab.wait_subnets(&[0]);
    assert!(lab.conflist(0).exists());
}

fn store_outage_keeps_routes(kind: Store) {
    let mut lab = Lab::new(kind, 3);
    lab.common.extend(["--lease-ttl".to_string(), "3s".to_string()]);
    for i in 0..3 {
        lab.start(i, &[]);
    }
    let subnets = lab.wait_subnets(&[0, 1, 2]);
    let want: Vec<BTreeMap<String, String>> = (0..3).map(|i| lab.expected(i, &[0, 1, 2])).collect();
    for (i, w) in want.iter().enumerate() {
        lab.wait_routes(i, w, T);
    }
    let away = lab.dir.join("store-away");
    match kind {
        Store::File => std::fs::rename(lab.store_dir(), &away).unwrap(),
        Store::Etcd => lab.etcd_down(),
    }
    std::thread::sleep(Duration::from_secs(4)); // longer than the lease TTL
    for (i, w) in want.iter().enumerate() {
        assert!(lab.running(i));
        assert_eq!(&lab.routes(i), w, "node {i} lost routes during the outage");
    }
    match kind {
        Store::File => std::fs::rename(&away, lab.store_dir()).unwrap(),
        Store::Etcd => lab.store_up(),
    }
    // Every node gets its own subnet back and routes stay.
    let back = wait_for(Duration::from_secs(10), || {
        (0..3)
            .all(|i| lab.get_lease(&key(&subnets[i])).is_some_and(|v| v.contains(&lab.nodes[i].ip)))
    });
    assert!(back, "leases not renewed/re-claimed: {:?}\n{}", lab.lease_keys(), lab.log(0));
    for i in 0..3 {
        assert_eq!(lab.subnet(i).unwrap(), subnets[i]);
        lab.wait_routes(i, &want[i], T);
    }
}

fn masquerade_table(kind: Store) {
    let mut lab = Lab::new(kind, 2);
    lab.start(0, &[]);
    lab.start(1, &["--ip-masq=false"]);
    let s = lab.wait_subnets(&[0, 1]);
    let t = lab.nft_table(0).expect("table ip ferry on node 0");
    assert!(
        t.contains(&format!("ip saddr {} ip daddr 10.244.0.0/16 return", s[0]))
            && t.contains("masquerade"),
        "{t}"
    );
    assert!(lab.nft_table(1).is_none(), "--ip-masq=false: no table");
    assert!(std::fs::read_to_string(lab.nodes[1].dir.join("subnet.env"))
        .unwrap()
        .contains("FLANNEL_IPMASQ=false"));
    // Uninstall removes routes, table and our conflist, and nothing else.
    lab.wait_routes(0, &lab.expected(0, &[0, 1]), T);
    let other = lab.nodes[0].dir.join("net.d/20-other.conflist");
    std::fs::write(&other, r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#)
        .unwrap();
    lab.nodes[0].ns.ip(&["route", "add", "10.77.0.0/24", "via", "198.18.0.13"]);
    assert!(lab.stop(0).unwrap().success());
    // --root: the installed files it would remove are under the lab, never the host's.
    let root = lab.dir.path_str("root");
    let (st, out) = lab.run_once(0, &["--uninstall", "--root", &root], T);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(lab.routes(0).is_empty());
    assert!(lab.nft_table(0).is_none());
    assert!(!lab.conflist(0).exists() && other.exists());
    assert!(!lab.nodes[0].dir.join("subnet.env").exists());
    assert!(lab.nodes[0].ns.ip(&["route"]).contains("10.77.0.0/24"));
}

fn unusable_config_exits_2_and_changes_nothing(kind: Store) {
    let lab = Lab::new(kind, 1);
    for (flags, needle) in [
        (&["--subnet-len", "16"][..], "longer than"),
        (&["--subnet-len", "31"], "at most /30"),
        (&["--subnet-min", "10.245.0.0"], "outside"),
        (&["--subnet-max", "10.244.3.7"], "not aligned"),
        (&["--network", "198.18.0.0/16"], "inside the cluster network"),
        (&["--iface", "nope0"], "no such interface"),
        (&["--bogus-flag"], "unknown flag"),
    ] {
        let (st, out) = lab.run_once(0, flags, T);
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{flags:?}: {out}");
        assert!(out.contains(needle), "{flags:?}: {out}");
    }
    // A stored config that differs is used, unless --strict-network refuses it.
    let (st, out) = lab.run_once(
        0,
        &["--network", "10.9.0.0/16", "--strict-network", "--lease-ttl", "1s"],
        Duration::from_millis(1500),
    );
    assert!(st.is_none(), "first start stores its config and keeps running: {out}");
    let (st, out) = lab.run_once(0, &["--network", "10.8.0.0/16", "--strict-network"], T);
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{out}");
    assert!(out.contains("--strict-network"), "{out}");
    let n = &lab.nodes[0];
    // Only the first (accepted) start may have left files; the refused ones changed nothing more.
    let conf = std::fs::read_to_string(lab.conflist(0)).unwrap_or_default();
    assert!(conf.is_empty() || conf.contains("ferry"));
    assert!(n.ns.ip(&["route"]).lines().all(|l| !l.contains("10.8.")));
}

fn nothing_changes_on_refusal(kind: Store) {
    let lab = Lab::new(kind, 1);
    let (st, out) = lab.run_once(0, &["--subnet-len", "8"], T);
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{out}");
    assert!(out.contains("refusing to start"), "{out}");
    assert!(!lab.conflist(0).exists());
    assert!(lab.subnet(0).is_none());
    assert!(lab.nft_table(0).is_none());
    assert_eq!(lab.nodes[0].ns.sysctl("net.ipv4.ip_forward"), "0");
    assert!(lab.lease_keys().is_empty());
    if kind == Store::File {
        assert!(!lab.store_dir().join("config").exists());
    } else {
        assert!(lab.etcdctl(&["get", "--prefix", "/coreos.com/network"]).stdout.is_empty());
    }
}

/// IPv6 on without a global IPv6 address on the uplink, or no family at all: exit 2 before
/// anything is touched.
fn ipv6_config_the_node_cannot_honour_exits_2(kind: Store) {
    let lab = Lab::new(kind, 1); // IPv4 underlay only: eth0 has no global IPv6 address
    for (flags, needle) in [
        (&["--ipv6-network", "fd00:10:244::/56"][..], "no global IPv6 address"),
        (&["--enable-ipv4=false"], "neither IPv4 nor IPv6"),
        (&["--enable-ipv6"], "no \"IPv6Network\""),
        (&["--ipv6-network", "fd00:10:244::/56", "--ipv6-subnet-len", "56"], "longer than"),
        (&["--ipv6-network", "fd00:10:244::1/56"], "host bits"),
        (&["--public-ipv6", "fe80::1"], "global unicast"),
    ] {
        let (st, out) = lab.run_once(0, flags, T);
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{flags:?}: {out}");
        assert!(out.contains(needle), "{flags:?}: {out}");
    }
    assert!(!lab.conflist(0).exists());
    assert!(lab.subnet(0).is_none() && lab.subnet6(0).is_none());
    assert!(lab.nft_table(0).is_none() && lab.nft_table6(0).is_none());
    assert_eq!(lab.nodes[0].ns.sysctl("net.ipv6.conf.all.forwarding"), "0");
    assert!(lab.lease_keys().is_empty());
}

/// An idle node runs `nft` once: each sweep (200 ms here) skips the apply while nftables'
/// generation id is what it was right after it. `nft delete table ip ferry` is a commit, so a
/// sweep soon after restores the table (with one more `nft`), and the node is quiet again.
#[test]
fn masquerade_is_reapplied_only_when_nftables_changed() {
    let mut lab = Lab::new(Store::File, 1);
    let runs = lab.dir.join("nft-runs");
    let wrapper = lab.dir.join("nft-counted");
    let script = format!("#!/bin/sh\necho \"$*\" >> {}\nexec nft \"$@\"\n", runs.display());
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    lab.start(0, &["--resync", "200ms", "--nft", &wrapper.display().to_string()]);
    lab.wait_subnets(&[0]);
    assert!(wait_for(T, || lab.nft_table(0).is_some()), "no table:\n{}", lab.log(0));
    let ran = || std::fs::read_to_string(&runs).unwrap_or_default();
    let nft_runs = || ran().lines().count();
    let sweeps = || {
        let m = common::http_get(&lab, 0, "/metrics").1;
        let n = m.lines().find_map(|l| l.strip_prefix("ferryd_reconcile_duration_seconds_count "));
        n.and_then(|n| n.trim().parse::<u64>().ok()).expect("reconcile count")
    };
    let s0 = sweeps();
    std::thread::sleep(Duration::from_secs(2));
    let swept = sweeps() - s0;
    assert!(swept >= 5, "only {swept} sweeps in 2 s:\n{}", lab.log(0));
    assert_eq!(nft_runs(), 1, "nft run again by {swept} idle sweeps: {:?}", ran());
    let o = lab.nodes[0].ns.sh("nft delete table ip ferry");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = std::time::Instant::now();
    assert!(wait_for(T, || lab.nft_table(0).is_some()), "not restored:\n{}", lab.log(0));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "restored only after {took:?}");
    assert_eq!(nft_runs(), 2, "{:?}", ran());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(nft_runs(), 2, "quiet again after the repair: {:?}", ran());
    eprintln!("{swept} idle sweeps, 1 nft run; table restored {took:?} after its deletion");
}

/// SIGUSR2 sweeps now: with `--resync 1h` a deleted ferry table (nothing but a sweep re-applies
/// it: no netlink event reports nftables) stays deleted, and is back within 2 s of the signal.
#[test]
fn sigusr2_sweeps_now() {
    let mut lab = Lab::new(Store::File, 1);
    lab.start(0, &["--resync", "1h"]);
    lab.wait_subnets(&[0]);
    // Ready: the event loop runs (and listens for SIGUSR2).
    let ready = wait_for(T, || common::http_get(&lab, 0, "/readyz").0 == 200);
    assert!(ready, "{}", lab.log(0));
    assert!(lab.nft_table(0).is_some(), "no table:\n{}", lab.log(0));
    let o = lab.nodes[0].ns.sh("nft delete table ip ferry");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.nft_table(0).is_none(), "restored without a sweep:\n{}", lab.log(0));
    let t0 = std::time::Instant::now();
    lab.signal(0, libc::SIGUSR2);
    let back = wait_for(Duration::from_secs(2), || lab.nft_table(0).is_some());
    let took = t0.elapsed();
    assert!(back, "not restored within 2 s of SIGUSR2:\n{}", lab.log(0));
    assert!(lab.log(0).contains("INFO sweep requested (SIGUSR2)"), "{}", lab.log(0));
    assert!(lab.running(0), "SIGUSR2 ended ferryd:\n{}", lab.log(0));
    eprintln!("table restored {took:?} after SIGUSR2");
}

/// etcd holding many more leases than one listing page (`--etcd-page-size 4`: 30 fake peers
/// are 8 pages): ferryd starts and routes every one of them, reading them once (the claim's
/// listing seeds the watcher, whose watch continues it from its revision + 1) and asking etcd
/// for no lease's expiry, without taking its own new lease for gone; and the watch delivers
/// later changes: a node joining, a lease added, one moved, one deleted.
#[test]
fn etcd_listing_in_pages() {
    let mut lab = Lab::new(Store::Etcd, 2);
    let wait = Duration::from_secs(30);
    let lease =
        |ip: &str| format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw","BackendData":null}}"#);
    let mut want = BTreeMap::new();
    for k in 0..30 {
        let (subnet, gw) = (format!("10.244.{}.0/24", 100 + k), format!("198.18.0.{}", 100 + k));
        lab.put_lease(&key(&subnet), &lease(&gw));
        want.insert(subnet, gw);
    }
    let (ranges, lookups) = (lab.etcd_requests("Range"), lab.etcd_requests("LeaseTimeToLive"));
    lab.start(0, &["--etcd-page-size", "4"]);
    lab.wait_subnets(&[0]);
    lab.wait_routes(0, &want, wait);
    // One listing is 8 pages (30 keys, 4 a page); two would be 16. Besides: the config read.
    let read = lab.etcd_requests("Range") - ranges;
    assert!((8..=10).contains(&read), "{read} reads at start-up: more than one listing");
    assert_eq!(lab.etcd_requests("LeaseTimeToLive"), lookups, "lease expiries looked up");
    let log = lab.log(0);
    assert!(!log.contains("re-claiming"), "own fresh lease taken for gone:\n{log}");
    lab.start(1, &["--etcd-page-size", "4"]);
    let s1 = lab.wait_subnets(&[1])[0].clone();
    want.insert(s1, lab.nodes[1].ip.clone());
    lab.wait_routes(0, &want, wait);
    lab.put_lease(&key("10.244.200.0/24"), &lease("198.18.0.200"));
    lab.put_lease(&key("10.244.100.0/24"), &lease("198.18.0.201"));
    lab.del_lease(&key("10.244.101.0/24"));
    want.insert("10.244.200.0/24".into(), "198.18.0.200".into());
    want.insert("10.244.100.0/24".into(), "198.18.0.201".into());
    want.remove("10.244.101.0/24");
    lab.wait_routes(0, &want, wait);
    let mut want1 = want.clone();
    want1.remove(&lab.subnet(1).unwrap());
    want1.insert(lab.subnet(0).unwrap(), lab.nodes[0].ip.clone());
    lab.wait_routes(1, &want1, wait);
}

/// A start-up whose own route echoes overflow ferryd's kernel event queue (3,000 peers: a
/// nexthop and a route event each, against a queue of 4,096 batches): every peer is routed, and
/// drift afterwards is still seen and repaired by events (the periodic sweep is off: 1 h).
#[test]
fn start_up_flood_of_kernel_events() {
    let mut lab = Lab::new(Store::File, 1);
    lab.common = vec!["--resync".into(), "1h".into(), "--network".into(), "10.0.0.0/8".into()];
    let mut want = BTreeMap::new();
    for j in 1..=3000u32 {
        let subnet = format!("10.{}.{}.0/24", j >> 8, j & 255);
        let gw = format!("198.18.0.{}", 100 + j % 150);
        let v = format!(r#"{{"PublicIP":"{gw}","BackendType":"host-gw","BackendData":null}}"#);
        lab.put_lease(&key(&subnet), &v);
        want.insert(subnet, gw);
    }
    lab.start(0, &[]);
    lab.wait_subnets(&[0]);
    let wait = Duration::from_secs(60);
    lab.wait_routes(0, &want, wait);
    let ns = &lab.nodes[0].ns;
    ns.ip(&["route", "del", "10.0.7.0/24"]);
    ns.ip(&["route", "replace", "10.0.9.0/24", "via", "198.18.0.99", "proto", "113"]);
    lab.wait_routes(0, &want, wait);
}

macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(#[test] fn $name() { super::$name(super::Store::File) })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name(super::Store::Etcd) })*
        }
    };
}

per_store!(
    leases_are_distinct_and_routed,
    nodes_join_and_leave,
    hand_made_drift_is_repaired,
    restart_reuses_lease_without_flap,
    kill9_keeps_datapath_and_restart_does_not_flap,
    bad_leases_are_ignored,
    conflist_appears_only_after_lease,
    store_outage_keeps_routes,
    masquerade_table,
    unusable_config_exits_2_and_changes_nothing,
    nothing_changes_on_refusal,
    ipv6_config_the_node_cannot_honour_exits_2,
    dual_stack_nodes_racing_for_few_subnets_never_share_one,
    masquerade_per_family,
);

// ---- IPv6-only and dual-stack pod networks (both stores) ----

/// Three nodes of a `family` pod network, each with its lease and every peer route of every
/// family in place. Returns the lab and the nodes' lease keys.
fn lab3f(kind: Store, family: Family) -> (Lab, Vec<String>) {
    let mut lab = Lab::with_family(kind, family, 3, true);
    for i in 0..3 {
        lab.start(i, &[]);
    }
    let keys = lab.wait_leases(&[0, 1, 2]);
    for i in 0..3 {
        lab.wait_all_routes(i, &[0, 1, 2], T);
    }
    (lab, keys)
}

fn ipv6_pods_ping_across_nodes(kind: Store, family: Family) {
    let (lab, keys) = lab3f(kind, family);
    let mut uniq = keys.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "{keys:?}");
    for (i, k) in keys.iter().enumerate() {
        let node = &lab.nodes[i];
        // flannel's layout: one key for both families, PublicIPv6 beside PublicIP.
        let v = lab.get_lease(k).unwrap_or_else(|| panic!("no lease {k}: {:?}", lab.lease_keys()));
        assert!(v.contains(&format!(r#""PublicIPv6":"{}""#, node.ip6)), "{v}");
        let ip4 = if family == Family::V6 { "0.0.0.0" } else { node.ip.as_str() };
        if family == Family::V6 {
            let v4 = node.ns.ip(&["-4", "addr", "show", "dev", "eth0"]);
            assert!(!v4.contains("inet "), "an IPv6-only node has no IPv4 address: {v4}");
        }
        assert!(v.contains(&format!(r#""PublicIP":"{ip4}""#)), "{v}");
        let s6 = lab.subnet6(i).unwrap();
        assert!(s6.starts_with("fd00:10:244:") && s6.ends_with("/64"), "{s6}");
        let env = std::fs::read_to_string(node.dir.join("subnet.env")).unwrap();
        assert!(env.contains(&format!("FLANNEL_IPV6_NETWORK={}\n", common::NET6)), "{env}");
        assert_eq!(env.contains("FLANNEL_SUBNET="), family == Family::Dual, "{env}");
        assert_eq!(node.ns.sysctl("net.ipv6.conf.all.forwarding"), "1");
        assert_eq!(node.ns.sysctl("net/ipv6/conf/eth0/accept_ra"), "2", "RAs still accepted");
        let t6 = lab.nft_table6(i).expect("table ip6 ferry");
        assert!(t6.contains(&format!("ip6 saddr {s6} ip6 daddr {} return", common::NET6)), "{t6}");
        assert_eq!(lab.nft_table(i).is_some(), family == Family::Dual);
        // The peer's IPv6 subnet goes via its IPv6 address out of eth0.
        let peer = (i + 1) % 3;
        let dst = lab.subnet6(peer).unwrap().replace("::/64", "::5");
        let r = node.ns.ip(&["-6", "route", "get", &dst]);
        assert!(
            r.contains(&format!("via {}", lab.nodes[peer].ip6)) && r.contains("dev eth0"),
            "{r}"
        );
    }
    // One pod per node; every pod pings every other pod on every family, across nodes.
    // The plugin gives each pod one address per family, and no IPv6 address it sets up (the
    // pod's, its host end's) waits for DAD: usable the moment ADD returns.
    let pods: Vec<_> = (0..3).map(|i| common::add_pod_ips(&lab, i, &format!("v6pod{i}"))).collect();
    let tentative =
        |ns: &testlab::Netns| ns.ip(&["-6", "addr", "show", "scope", "global", "tentative"]);
    let left: String = pods
        .iter()
        .map(|(p, _)| tentative(p))
        .chain(lab.nodes.iter().map(|n| tentative(&n.ns)))
        .collect();
    assert!(left.trim().is_empty(), "tentative IPv6 addresses right after ADD:\n{left}");
    let per_pod = if family == Family::Dual { 2 } else { 1 };
    let v6 = |ip: &str| ip.contains(':');
    for (i, (_, ips)) in pods.iter().enumerate() {
        assert_eq!(ips.len(), per_pod, "pod {i}: {ips:?}");
        assert_eq!(ips.iter().filter(|ip| v6(ip)).count(), 1, "pod {i}: {ips:?}");
        assert!(ips.iter().all(|ip| !v6(ip) || ip.starts_with("fd00:10:244:")), "pod {i}: {ips:?}");
    }
    let on_node = |p: usize| p;
    let mut pings = 0;
    for (a, (pa, mine)) in pods.iter().enumerate() {
        for (b, (_, ips)) in pods.iter().enumerate().filter(|(b, _)| on_node(*b) != on_node(a)) {
            for ip in ips.iter().filter(|ip| mine.iter().any(|m| v6(m) == v6(ip))) {
                // Up to 5 s per pair: the first packet of an IPv6 pair waits for neighbour
                // discovery on three links, which a loaded 2-core machine can push past ping's
                // 1 s timeout.
                let ok = testlab::wait_for(Duration::from_secs(5), || pa.ping(ip));
                assert!(ok, "pod{a} -> pod{b} ({ip})\n{}", lab.log(on_node(a)));
                pings += 1;
            }
        }
    }
    let families = if family == Family::Dual { 2 } else { 1 };
    assert_eq!(pings, 6 * families, "every pod to every pod of every family, across nodes");

    // IPv6 pod-to-pod across nodes keeps the pod's address (no SNAT), and IPv6 leaving the
    // cluster network is masqueraded to the node's IPv6 address (the underlay has no route
    // back to the pods). nf_conntrack prints IPv6 addresses in full.
    let full = |ip: &str| {
        let a: std::net::Ipv6Addr = ip.parse().unwrap();
        a.segments().iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":")
    };
    let six = |node: usize| {
        pods.iter().enumerate().find_map(|(p, (ns, ips))| {
            let ip = ips.iter().find(|ip| v6(ip))?;
            (on_node(p) == node).then_some((ns, ip.clone()))
        })
    };
    let ((pod0, a), (_, b)) = (six(0).unwrap(), six(1).unwrap());
    let conntrack = || {
        let out = lab.nodes[0].ns.sh("cat /proc/net/nf_conntrack");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let flow = |dst: &str| {
        let (s, d) = (format!("src={} ", full(&a)), format!("dst={} ", full(dst)));
        conntrack()
            .lines()
            .find(|l| l.contains("icmpv6") && l.contains(&s) && l.contains(&d))
            .map(String::from)
    };
    assert!(pod0.ping(&b));
    let f = flow(&b).unwrap_or_else(|| panic!("no conntrack entry {a} -> {b}:\n{}", conntrack()));
    assert!(
        f.contains(&format!("src={} dst={} ", full(&b), full(&a))),
        "pod-to-pod IPv6 was NATed: {f}"
    );
    let out = testlab::wait_for(Duration::from_secs(5), || pod0.ping("fd00:198:18::1"));
    assert!(out, "pod -> underlay fd00:198:18::1 (needs IPv6 masquerade)");
    let f = flow("fd00:198:18::1").expect("conntrack entry for pod -> fd00:198:18::1");
    let node6 = full(&lab.nodes[0].ip6);
    assert!(f.contains(&format!("dst={node6} ")), "not masqueraded to the node's IPv6: {f}");
}

fn ipv6_drift_stale_route_and_lease_removal(kind: Store, family: Family) {
    let (mut lab, keys) = lab3f(kind, family);
    let want6 = lab.expected6(0, &[0, 1, 2]);
    let s6: Vec<String> = (0..3).map(|i| lab.subnet6(i).unwrap()).collect();
    {
        let ns = &lab.nodes[0].ns;
        // A route deleted by hand comes back.
        ns.ip(&["-6", "route", "del", &s6[1]]);
        lab.wait_routes6(0, &want6, Duration::from_secs(1));
        // A wrong gateway is replaced.
        ns.ip(&["-6", "route", "replace", &s6[2], "via", "fd00:198:18::99", "proto", "113"]);
        lab.wait_routes6(0, &want6, Duration::from_secs(1));
        // A stray proto-113 route is removed; a foreign route is never touched.
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd00:10:244:fa::/64",
            "via",
            "fd00:198:18::13",
            "proto",
            "113",
        ]);
        ns.ip(&["-6", "route", "add", "fd00:77::/64", "via", "fd00:198:18::13"]);
        lab.wait_routes6(0, &want6, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(700)); // a couple of sweeps
        assert!(ns.ip(&["-6", "route"]).contains("fd00:77::/64 via fd00:198:18::13"));
    }
    // A peer's lease vanishes while node 0's daemon is down: the stale routes (every family)
    // go when it starts; node 1, running, drops them at once.
    assert!(lab.stop(0).unwrap().success());
    assert!(lab.stop(2).unwrap().success());
    lab.del_lease(&keys[2]);
    lab.wait_all_routes(1, &[0, 1], T);
    assert_eq!(lab.routes6(0).len(), 2, "node 0 is down: nothing changed yet");
    lab.start(0, &[]);
    lab.wait_all_routes(0, &[0, 1], T);
    assert_eq!(lab.lease_key(0).as_ref(), Some(&keys[0]), "node 0 kept both subnets");
    assert!(lab.get_lease(&keys[0]).is_some(), "{:?}", lab.lease_keys());
    // Uninstall removes Ferry's routes and nexthops of both families and both nft tables.
    assert!(lab.nft_table6(0).is_some());
    assert!(lab.stop(0).unwrap().success());
    let root = lab.dir.path_str("root");
    let (st, out) = lab.run_once(0, &["--uninstall", "--root", &root], T);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(lab.routes(0).is_empty() && lab.routes6(0).is_empty(), "{out}");
    assert!(lab.nodes[0].ns.ip(&["nexthop", "show", "proto", "113"]).trim().is_empty());
    assert!(lab.nft_table(0).is_none() && lab.nft_table6(0).is_none());
}

/// Dual-stack nodes started at once in an IPv4 range of as many subnets as nodes (the IPv6
/// range is wide): their keys all differ (each has its own IPv6 subnet), yet no two may end up
/// with one IPv4 subnet. A store that created by key alone let racing nodes share one.
fn dual_stack_nodes_racing_for_few_subnets_never_share_one(kind: Store) {
    let mut lab = Lab::with_family(kind, Family::Dual, 4, true);
    lab.common
        .extend(["--subnet-min", "10.244.1.0", "--subnet-max", "10.244.4.0"].map(String::from));
    for i in 0..4 {
        lab.start(i, &[]);
    }
    lab.wait_leases(&[0, 1, 2, 3]);
    let mut v4: Vec<String> = (0..4).map(|i| lab.subnet(i).unwrap()).collect();
    let mut v6: Vec<String> = (0..4).map(|i| lab.subnet6(i).unwrap()).collect();
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    assert_eq!((v4.len(), v6.len()), (4, 4), "{v4:?} {v6:?}: {:?}", lab.lease_keys());
    assert_eq!(lab.lease_keys().len(), 4, "{:?}", lab.lease_keys());
    for i in 0..4 {
        lab.wait_all_routes(i, &[0, 1, 2, 3], T);
    }
}

/// Masquerade per family in a dual-stack cluster: `--ipv6-masq=false` keeps `ip ferry` only,
/// `--ip-masq=false --ipv6-masq` keeps `ip6 ferry` only; uninstall removes whatever is there.
fn masquerade_per_family(kind: Store) {
    let mut lab = Lab::with_family(kind, Family::Dual, 2, true);
    lab.start(0, &["--ipv6-masq=false"]);
    lab.start(1, &["--ip-masq=false", "--ipv6-masq"]);
    lab.wait_leases(&[0, 1]);
    let s6 = lab.subnet6(1).unwrap();
    let t4 = lab.nft_table(0).expect("table ip ferry on node 0");
    assert!(
        t4.contains(&format!("ip saddr {} ip daddr 10.244.0.0/16 return", lab.subnet(0).unwrap())),
        "{t4}"
    );
    assert!(lab.nft_table6(0).is_none(), "--ipv6-masq=false: no ip6 table");
    assert!(lab.nft_table(1).is_none(), "--ip-masq=false: no ip table");
    let t6 = lab.nft_table6(1).expect("table ip6 ferry on node 1");
    assert!(t6.contains(&format!("ip6 saddr {s6} ip6 daddr {} return", common::NET6)), "{t6}");
    assert!(t6.contains(&format!("ip6 saddr {s6} masquerade")), "{t6}");
    lab.wait_all_routes(1, &[0, 1], T);
    assert!(lab.stop(1).unwrap().success());
    let root = lab.dir.path_str("root");
    let (st, out) = lab.run_once(1, &["--uninstall", "--root", &root], T);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(lab.nft_table6(1).is_none() && lab.nft_table(1).is_none());
}

macro_rules! per_store_and_family {
    ($($name:ident),* $(,)?) => {
        mod ipv6_only {
            mod file {
                $(#[test] fn $name() { super::super::$name(super::super::Store::File, super::super::Family::V6) })*
            }
            mod etcd {
                $(#[test] fn $name() { super::super::$name(super::super::Store::Etcd, super::super::Family::V6) })*
            }
        }
        mod dual_stack {
            mod file {
                $(#[test] fn $name() { super::super::$name(super::super::Store::File, super::super::Family::Dual) })*
            }
            mod etcd {
                $(#[test] fn $name() { super::super::$name(super::super::Store::Etcd, super::super::Family::Dual) })*
            }
        }
    };
}

per_store_and_family!(ipv6_pods_ping_across_nodes, ipv6_drift_stale_route_and_lease_removal);
