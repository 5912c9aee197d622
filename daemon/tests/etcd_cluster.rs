//! ferryd on a 3-member etcd cluster in the lab (each member in its own namespace on the underlay,
//! 198.18.0.2-4), three ferryd nodes given all three endpoints, pods pinging across: the leader
//! killed, a follower killed, a member partitioned from the nodes, a member hung (SIGSTOP), a
//! rolling restart (with TLS client certificates), every member stopped for 30 s, and idle nodes
//! (which must send etcd nothing). In each case: no ping lost on established paths, no
//! established route removed, no subnet claimed twice, and the convergence time of a lease
//! change made during or right after the fault is printed.
//!
//! `FERRY_OUTAGE_SECS` shortens the 30 s full outage for a quick local run. The `bench_` tests are
//! `#[ignore]`d: `bench/etcd_failover.sh` runs them (realistic etcd timings, repeated trials).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testlab::{wait_for, Netns, Proc};

const T: Duration = Duration::from_secs(15);

/// The lab, the cluster, three running nodes with a pod each, pings and route monitors running.
struct World {
    lab: Lab,
    etcd: EtcdCluster,
    subnets: Vec<String>,
    /// When the pings started.
    started: Instant,
    _pods: Vec<Netns>,
    pingers: Vec<Pinger>,
    monitors: Vec<(Proc, PathBuf)>,
    /// Fake leases written by `lease_change` (subnet → gateway), routed by every node.
    extra: BTreeMap<String, String>,
}

fn world(tls: bool, election_ms: u32, heartbeat_ms: u32, extra_flags: &[&str]) -> World {
    let mut lab = Lab::with_store(Store::Etcd, 3, false);
    let etcd = EtcdCluster::start(&lab, 3, tls, election_ms, heartbeat_ms);
    lab.common.extend(etcd.store_flags());
    lab.common.extend(extra_flags.iter().map(|s| s.to_string()));
    for i in 0..3 {
        lab.start(i, &[]);
    }
    let subnets = lab.wait_subnets(&[0, 1, 2]);
    for i in 0..3 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1, 2]), T);
    }
    let pods: Vec<(Netns, String)> = (0..3).map(|i| add_pod(&lab, i, &format!("pod{i}"))).collect();
    for i in 0..3 {
        let dst = &pods[(i + 1) % 3].1;
        let up = wait_for(Duration::from_secs(5), || pods[i].0.ping(dst));
        assert!(up, "path pod{i} -> {dst} works before the fault");
    }
    let started = Instant::now();
    let pingers = (0..3).map(|i| Pinger::start(&pods[i].0, &pods[(i + 1) % 3].1)).collect();
    let monitors = (0..3).map(|i| lab.monitor(i, &format!("routes-n{i}.log"))).collect();
    let extra = BTreeMap::new();
    World {
        lab,
        etcd,
        subnets,
        started,
        _pods: pods.into_iter().map(|p| p.0).collect(),
        pingers,
        monitors,
        extra,
    }
}

impl World {
    /// Node `i` routes `subnet` via `gw`.
    fn routes_it(&self, i: usize, subnet: &str, gw: &str) -> bool {
        self.lab.routes(i).get(subnet).is_some_and(|g| g == gw)
    }

    /// Write a new lease (a fake peer) and wait until every node routes it; returns the time
    /// from just before the write.
    fn lease_change(&mut self, what: &str) -> Duration {
        // Through the running members only: etcdctl trying a dead one first would count too.
        let live: Vec<usize> = (0..3).filter(|&k| self.etcd.members[k].proc.is_some()).collect();
        self.lease_change_via(what, &live)
    }

    /// [`World::lease_change`], written through the given members.
    fn lease_change_via(&mut self, what: &str, live: &[usize]) -> Duration {
        let n = self.extra.len();
        let (subnet, gw) = (format!("10.244.{}.0/24", 240 + n), format!("198.18.0.{}", 60 + n));
        let t0 = Instant::now();
        let value = format!(r#"{{"PublicIP":"{gw}","BackendType":"host-gw","BackendData":null}}"#);
        let put = ["put", &format!("{PREFIX}/subnets/{}", key(&subnet)), &value];
        // A put that meets an election (a hung or killed leader) is refused: write it again.
        let mut o = self.etcd.etcdctl_on(&self.lab, live, &put);
        for _ in 0..3 {
            if o.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            o = self.etcd.etcdctl_on(&self.lab, live, &put);
        }
        assert!(o.status.success(), "etcdctl put: {}", String::from_utf8_lossy(&o.stderr));
        let n = self.lab.nodes.len();
        let ok = wait_for(T, || (0..n).all(|i| self.routes_it(i, &subnet, &gw)));
        let took = t0.elapsed();
        assert!(ok, "{what}: lease {subnet} not routed everywhere: {}", self.logs());
        self.extra.insert(subnet, gw);
        took
    }

    /// Start a new node; returns (lease claimed, routed on every other node), both from its start.
    fn join(&mut self) -> (usize, Duration, Duration) {
        self.join_since(Instant::now())
    }

    /// [`World::join`], times counted from `t0` (e.g. the fault).
    fn join_since(&mut self, t0: Instant) -> (usize, Duration, Duration) {
        let n = self.lab.add_node();
        self.lab.start(n, &[]);
        let claimed = wait_for(T, || self.lab.subnet(n).is_some());
        let t_claim = t0.elapsed();
        assert!(claimed, "node {n} claimed no lease: {}", self.lab.log(n));
        let s = self.lab.subnet(n).unwrap();
        let ip = self.lab.nodes[n].ip.clone();
        let routed = wait_for(T, || (0..n).all(|i| self.routes_it(i, &s, &ip)));
        let t_routed = t0.elapsed();
        assert!(routed, "node {n} ({s}) not routed by every peer: {}", self.logs());
        // Its route events from now on, for `route_events` (started after the timing: the
        // monitor takes 100 ms to subscribe).
        self.monitors.push(self.lab.monitor(n, &format!("routes-n{n}.log")));
        (n, t_claim, t_routed)
    }

    fn logs(&self) -> String {
        (0..self.lab.nodes.len()).map(|i| format!("\n--- n{i}\n{}", self.lab.log(i))).collect()
    }

    /// The member most of the three nodes talk to (from their logs).
    fn busiest_member(&self) -> usize {
        let mut count = vec![0; self.etcd.members.len()];
        for i in 0..3 {
            let log = self.lab.log(i);
            let last = log.lines().rev().find_map(|l| l.split("talking to ").nth(1));
            let url = last.and_then(|r| r.split_whitespace().next()).unwrap_or("");
            if let Some(k) = (0..count.len()).find(|&k| self.etcd.client_url(k) == url) {
                count[k] += 1;
            }
        }
        (0..count.len()).max_by_key(|&k| count[k]).unwrap()
    }

    /// Check the invariants and print the case's line.
    fn finish(mut self, case: &str, times: &str) {
        // At least 3 s of pings (15 per path) however quick the case was.
        std::thread::sleep(Duration::from_secs(3).saturating_sub(self.started.elapsed()));
        let mut lost = Vec::new();
        for p in self.pingers.drain(..) {
            let dst = p.dst.clone();
            let (sent, got) = p.finish();
            assert!(sent >= 10, "{case}: pinger to {dst} ran ({sent} sent)");
            lost.push((dst, sent, sent - got));
        }
        assert!(lost.iter().all(|l| l.2 == 0), "{case}: pings lost {lost:?}");
        for (i, (mut p, path)) in self.monitors.drain(..).enumerate() {
            p.stop(Duration::from_secs(2));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for s in self.subnets.iter().chain(self.extra.keys()) {
                let gone = text.lines().find(|l| l.contains("Deleted") && l.contains(s.as_str()));
                assert!(gone.is_none(), "{case}: node {i} removed the route to {s}: {gone:?}");
            }
        }
        self.check_unique(case);
        let sent: u64 = lost.iter().map(|l| l.1).sum();
        println!("{case}: {times}; 0 of {sent} pings lost, no established route removed, no subnet claimed twice");
    }

    /// Every node's subnet is its own, and the store says so.
    fn check_unique(&self, case: &str) {
        let n = self.lab.nodes.len();
        let subnets: Vec<String> = (0..n).map(|i| self.lab.subnet(i).unwrap()).collect();
        let mut seen = subnets.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "{case}: a subnet was claimed twice: {subnets:?}");
        let ok = wait_for(T, || {
            let leases = self.etcd.leases(&self.lab);
            (0..n).all(|i| leases.get(&key(&subnets[i])) == Some(&self.lab.nodes[i].ip))
        });
        assert!(ok, "{case}: leases {:?} vs nodes {subnets:?}", self.etcd.leases(&self.lab));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Kill a member (the leader or a follower) and start a fourth node right away.
fn member_killed(leader: bool) {
    let mut w = world(false, 100, 10, &[]);
    let l = w.etcd.leader(&w.lab).expect("a leader");
    let victim = if leader { l } else { (l + 1) % 3 };
    w.etcd.kill9(victim);
    let (n, claim, routed) = w.join();
    std::thread::sleep(Duration::from_secs(1));
    let later = w.lease_change("1 s after the kill");
    for i in 0..3 {
        assert!(w.routes_it(n, &w.subnets[i], &w.lab.nodes[i].ip), "new node routes node {i}");
    }
    let times = format!(
        "new node claimed its lease {} after start, routed on every peer {}; a lease written 1 s \
         later routed everywhere in {}",
        ms(claim),
        ms(routed),
        ms(later)
    );
    w.finish(if leader { "leader SIGKILLed" } else { "follower SIGKILLed" }, &times);
}

#[test]
fn leader_killed() {
    member_killed(true)
}

#[test]
fn follower_killed() {
    member_killed(false)
}

#[test]
fn member_partitioned_from_the_nodes() {
    let mut w = world(false, 100, 10, &[]);
    let k = w.busiest_member();
    w.etcd.partition(k);
    let during = w.lease_change("partitioned");
    let (_, claim, routed) = w.join();
    std::thread::sleep(Duration::from_secs(2));
    let later = w.lease_change("2 s into the partition");
    w.etcd.heal(k);
    std::thread::sleep(Duration::from_secs(1));
    let healed = w.lease_change("healed");
    let times = format!(
        "member {k} partitioned: a lease written at once routed everywhere in {}, new node \
         claimed {} / routed {}, 2 s later {}, after healing {}",
        ms(during),
        ms(claim),
        ms(routed),
        ms(later),
        ms(healed)
    );
    w.finish("partition", &times);
}

/// Every node watches on two members (its `etcd_watch_streams` gauge).
fn wait_two_streams(w: &World) {
    for i in 0..w.lab.nodes.len() {
        let two = wait_for(T, || {
            let m = http_get(&w.lab, i, "/metrics").1;
            m.lines().any(|l| l == "ferryd_etcd_watch_streams 2")
        });
        assert!(two, "node {i} does not watch on two members: {}", w.lab.log(i));
    }
}

/// A member whose process hangs (SIGSTOP: its kernel still keeps the connections up, so no
/// keepalive or reset tells anybody) while the nodes watch through it: lease changes still reach
/// every node (on the watch's other stream), a node joins, and all is well after SIGCONT.
#[test]
fn member_hung_while_nodes_watch_through_it() {
    let mut w = world(false, 100, 10, &[]);
    wait_two_streams(&w);
    let k = w.busiest_member();
    let pid = w.etcd.members[k].proc.as_ref().expect("member running").pid();
    w.etcd.members[k].proc.as_ref().unwrap().signal(libc::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|&m| m != k).collect();
    let during = w.lease_change_via("member hung", &others);
    let (_, claim, routed) = w.join();
    let later = w.lease_change_via("later in the hang", &others);
    w.etcd.members[k].proc.as_ref().unwrap().signal(libc::SIGCONT);
    assert!(w.etcd.wait_healthy(&w.lab, k, T), "member {k} (pid {pid}) back");
    let resumed = w.lease_change("resumed");
    let times = format!(
        "member {k} hung: a lease written at once routed everywhere in {}, new node claimed {} / \
         routed {}, then {}, after SIGCONT {}",
        ms(during),
        ms(claim),
        ms(routed),
        ms(later),
        ms(resumed)
    );
    w.finish("member hung", &times);
}

/// Idle nodes (watches open on two members each, nothing changing) send etcd nothing at all:
/// no progress request, no ping; a lease change afterwards still arrives everywhere.
#[test]
fn idle_nodes_send_etcd_nothing() {
    let mut w = world(false, 100, 10, &[]);
    wait_two_streams(&w);
    std::thread::sleep(Duration::from_secs(1));
    let name = "grpc_server_msg_received_total";
    let before = etcd_counter(&w, name);
    std::thread::sleep(Duration::from_secs(5));
    let after = etcd_counter(&w, name);
    assert_eq!(after, before, "etcd received gRPC messages from idle nodes");
    let took = w.lease_change("after the idle time");
    w.finish(
        "idle",
        &format!("0 gRPC messages to etcd in 5 s; then a lease routed everywhere in {}", ms(took)),
    );
}

#[test]
fn rolling_restart_with_tls_client_certificates() {
    let mut w = world(true, 100, 10, &[]);
    let mut times = Vec::new();
    for k in 0..3 {
        w.etcd.stop(k);
        let down = w.lease_change(&format!("member {k} down"));
        w.etcd.launch(k);
        assert!(w.etcd.wait_healthy(&w.lab, k, T), "member {k} back: {}", w.etcd.log(k));
        let up = w.lease_change(&format!("member {k} back"));
        times.push(format!("m{k} down {} / back {}", ms(down), ms(up)));
    }
    let (_, claim, routed) = w.join();
    let times = format!(
        "lease writes routed everywhere: {}; then a new node claimed {} / routed {}",
        times.join(", "),
        ms(claim),
        ms(routed)
    );
    w.finish("rolling restart (TLS)", &times);
}

fn outage() -> Duration {
    let s = std::env::var("FERRY_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    Duration::from_secs(s)
}

#[test]
fn all_members_stopped_then_started() {
    let mut w = world(false, 100, 10, &[]);
    let before: Vec<_> = (0..3).map(|i| w.lab.routes(i)).collect();
    for k in 0..3 {
        w.etcd.stop(k);
    }
    std::thread::sleep(outage());
    for (i, b) in before.iter().enumerate() {
        assert!(w.lab.running(i), "ferryd {i} survived the outage");
        assert_eq!(&w.lab.routes(i), b, "node {i} kept its routes through the outage");
    }
    for k in 0..3 {
        w.etcd.launch(k);
    }
    let t0 = Instant::now();
    assert!((0..3).all(|k| w.etcd.wait_healthy(&w.lab, k, T)), "cluster back");
    let healthy = t0.elapsed();
    let after = w.lease_change("right after the restart");
    let (_, claim, routed) = w.join();
    let times = format!(
        "all members down {} s; cluster healthy {} after start, a lease written then routed \
         everywhere in {}, a new node claimed {} / routed {}",
        outage().as_secs(),
        ms(healthy),
        ms(after),
        ms(claim),
        ms(routed)
    );
    w.finish("all members stopped", &times);
}

// ---- The failover bench (bench/etcd_failover.sh): realistic etcd timings, repeated trials ----

fn trials() -> usize {
    std::env::var("FERRY_BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

fn stats(name: &str, v: &mut [Duration], target: Duration) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let verdict = if v.iter().all(|d| *d <= target) { "met" } else { "MISSED" };
    println!(
        "BENCH {name:<58} n={:<2} min {:>7} p50 {:>7} max {:>7}  target {} {verdict}",
        v.len(),
        ms(v[0]),
        ms(q(0.5)),
        ms(v[v.len() - 1]),
        ms(target)
    );
}

/// One kind of fault, `trials()` times on one world: fault, a node joins at once (claim and
/// routed on every peer, counted from the fault), the fault is undone. Then the fault once more
/// and a lease written 30 s later (no watch left silently dead).
fn bench_fault(
    name: &str,
    partition: bool,
    target: Duration,
    fault: impl Fn(&mut World) -> usize,
    undo: impl Fn(&mut World, usize),
) {
    // ferryd's own default timeouts (the lab's are shorter).
    let failover = std::env::var("FERRY_BENCH_FAILOVER").unwrap_or_else(|_| "500ms".into());
    let defaults = [
        "--etcd-dial-timeout",
        "2s",
        "--etcd-request-timeout",
        "5s",
        "--etcd-failover-timeout",
        &failover,
    ];
    let mut w = world(false, 1000, 100, &defaults);
    let (mut claims, mut routed, mut elected) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials() {
        let t0 = Instant::now();
        let k = fault(&mut w);
        // A partitioned member may stay leader: no election to time.
        let election = (!partition).then(|| leader_among_others(&w, k, t0));
        let (n, c, r) = w.join_since(t0);
        elected.extend(election.map(|e| e.join().unwrap()));
        if std::env::var_os("FERRY_SHOW_LOGS").is_some() {
            eprintln!("fault at {:?} before; new node log:\n{}", t0.elapsed(), w.lab.log(n));
            let live: Vec<usize> = (0..3).filter(|&j| j != k).collect();
            let o = w.etcd.etcdctl_on(&w.lab, &live, &["endpoint", "status", "-w", "table"]);
            eprintln!("{}", String::from_utf8_lossy(&o.stdout));
        }
        claims.push(c);
        routed.push(r);
        undo(&mut w, k);
    }
    let k = fault(&mut w);
    std::thread::sleep(Duration::from_secs(30));
    let subnet = format!("10.244.{}.0/24", 240 + w.extra.len()); // the one lease_change writes
    let since = std::time::SystemTime::now();
    let mut late = vec![w.lease_change("30 s after the fault")];
    let mut events: Vec<Duration> = route_events(&w, &subnet, since).into_iter().collect();
    undo(&mut w, k);
    if !partition {
        // ferryd's share: from the moment a live member leads (as etcdctl saw it) to the new
        // node routed everywhere, per trial.
        let mut share: Vec<Duration> =
            routed.iter().zip(&elected).map(|(r, e)| r.saturating_sub(*e)).collect();
        stats(&format!("{name}: (etcd: a live member leads again)"), &mut elected, target);
        stats(
            &format!("{name}: routed everywhere after the election"),
            &mut share,
            Duration::from_secs(1),
        );
    }
    stats(&format!("{name}: new node's lease claimed"), &mut claims, target);
    stats(&format!("{name}: new node routed on every peer"), &mut routed, target);
    stats(
        &format!("{name}: lease written 30 s later, routed everywhere"),
        &mut late,
        Duration::from_millis(100),
    );
    if events.is_empty() {
        println!("BENCH {name}: lease written 30 s later: no route event seen by ip monitor");
    } else {
        stats(
            &format!("{name}: lease written 30 s later, route event on all"),
            &mut events,
            Duration::from_millis(100),
        );
    }
    w.finish(name, "bench");
}

/// When the route to `subnet` appeared on every node (the three original ones and those that
/// joined) after `since`, from their `ip -ts monitor route` logs, which stamp each event as the
/// kernel reports it (no polling delay, no `ip route` runs in the measurement): the latest of
/// them, or `None` if a node's log lacks it. Counted from just before `etcdctl put` was started,
/// so it includes etcdctl's own start-up and etcd's commit.
fn route_events(w: &World, subnet: &str, since: std::time::SystemTime) -> Option<Duration> {
    let since = since.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() % 86400.0;
    let mut latest = 0.0f64;
    for (_, path) in &w.monitors {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // `[2026-12-02T09:30:01.123456] 10.244.240.0/24 ...` (UTC in the sandbox)
        let at = text.lines().filter(|l| !l.contains("Deleted")).find_map(|l| {
            let (ts, rest) = l.strip_prefix('[')?.split_once("] ")?;
            if !rest.starts_with(&format!("{subnet} ")) {
                return None;
            }
            let hms = ts.split_once('T')?.1;
            let mut f = hms.split(':').map(|x| x.parse::<f64>().ok());
            let secs = f.next()?? * 3600.0 + f.next()?? * 60.0 + f.next()??;
            let d = (secs - since).rem_euclid(86400.0);
            (d < 3600.0).then_some(d)
        })?;
        latest = latest.max(at);
    }
    Some(Duration::from_secs_f64(latest))
}

/// From another thread: how long after `t0` one of the members other than `k` is leader (as
/// that member itself reports), polled with etcdctl from the underlay.
fn leader_among_others(w: &World, k: usize, t0: Instant) -> std::thread::JoinHandle<Duration> {
    let live: Vec<String> = (0..3).filter(|&j| j != k).map(|j| w.etcd.client_url(j)).collect();
    let ns = w.lab.underlay.path();
    std::thread::spawn(move || loop {
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["etcdctl", "--endpoints", &live.join(","), "--command-timeout=300ms"])
            .args(["endpoint", "status", "-w", "json"])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let leads = v.as_array().into_iter().flatten().any(|e| {
            let st = &e["Status"];
            st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"]
        });
        if leads || t0.elapsed() > T {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    })
}

fn restart_member(w: &mut World, k: usize) {
    w.etcd.launch(k);
    assert!(w.etcd.wait_healthy(&w.lab, k, T), "member {k} back");
    std::thread::sleep(Duration::from_secs(2)); // let it catch up and the cluster settle
}

#[test]
#[ignore]
fn bench_leader_killed() {
    let kill = |w: &mut World| {
        let k = w.etcd.leader(&w.lab).expect("a leader");
        w.etcd.kill9(k);
        k
    };
    bench_fault("leader SIGKILLed", false, Duration::from_secs(2), kill, restart_member);
}

#[test]
#[ignore]
fn bench_follower_killed() {
    let kill = |w: &mut World| {
        let k = (w.etcd.leader(&w.lab).expect("a leader") + 1) % 3;
        w.etcd.kill9(k);
        k
    };
    bench_fault("follower SIGKILLed", false, Duration::from_secs(1), kill, restart_member);
}

#[test]
#[ignore]
fn bench_member_partitioned() {
    let cut = |w: &mut World| {
        let k = w.busiest_member();
        w.etcd.partition(k);
        k
    };
    let heal = |w: &mut World, k: usize| {
        w.etcd.heal(k);
        std::thread::sleep(Duration::from_secs(1));
    };
    bench_fault("member partitioned from the nodes", true, Duration::from_secs(1), cut, heal);
}

/// Sum of the named counter over every member's /metrics (members that do not answer count 0).
fn etcd_counter(w: &World, name: &str) -> f64 {
    let mut sum = 0.0;
    for k in 0..w.etcd.members.len() {
        let url = format!("{}/metrics", w.etcd.client_url(k));
        let o = w.lab.underlay.cmd("curl").args(["-s", "-m", "2", &url]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let values =
            text.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'));
        sum += values.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>();
    }
    sum
}

/// etcd's request rate with three idle ferryd nodes (watches open, nothing changing): gRPC
/// messages received (unary requests and watch-stream messages such as progress requests) per
/// node per second, over 10 s.
#[test]
#[ignore]
fn bench_idle_request_rate() {
    let failover = std::env::var("FERRY_BENCH_FAILOVER").unwrap_or_else(|_| "500ms".into());
    let w = world(false, 1000, 100, &["--etcd-failover-timeout", &failover]);
    std::thread::sleep(Duration::from_secs(3));
    let name = "grpc_server_msg_received_total";
    let (m0, t0) = (etcd_counter(&w, name), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let rate = (etcd_counter(&w, name) - m0) / t0.elapsed().as_secs_f64() / 3.0;
    println!("BENCH idle: etcd gRPC messages received per ferryd node per second: {rate:.2}");
    w.finish("idle", "bench");
}
