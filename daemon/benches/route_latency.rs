//! Route convergence and footprint of ferryd in the 3-node lab, for the file store and etcd.
//! Run inside the sandbox (bench/route_latency.sh does this):
//!   tests/sandbox.sh cargo bench -p ferryd --offline --bench route_latency [-- TRIALS [file|etcd|both] [ipv6]]
//!
//! `ipv6`: the same in a dual-stack lab, timing the IPv6 route of a dual-stack lease
//! (`10.244.200.0-24&fd00:10:244:c8::-64`, `PublicIPv6` fd00:198:18::50) and the repair of an
//! IPv6 peer route.
//!
//! * lease written → route added on a peer, lease deleted → route removed on a peer: t0 is the
//!   instant the write becomes visible (file store: the rename; etcd: just before the put/delete
//!   RPC, so etcd's own commit is included); t1 is when a netlink event socket in the peer's
//!   namespace sees the route change.
//! * route deleted by hand → restored: t0 just before RTM_DELROUTE, t1 the re-add event.
//! * idle RSS (VmRSS) and CPU (utime+stime, children separately) of each ferryd over 10 s, with
//!   the default sweep (`--resync` 60 s: the window may hold none).

#[path = "../tests/common/mod.rs"]
mod common;

use common::events::{ms, wait_route_event, watch_routes, Stats};
use common::{Family, Lab, Store};
use ferry_netlink::{netns, Netlink, RTPROT_FERRY};
use ferryd::store::etcd::{EtcdConfig, EtcdStore};
use ferryd::store::{LeaseAttrs, LeaseStore, Subnets};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::fs::File;
use std::time::{Duration, Instant};

const PEER_SUBNET: &str = "10.244.200.0/24";
const PEER_IP: &str = "198.18.0.50";
const PEER_SUBNET6: &str = "fd00:10:244:c8::/64";
const PEER_IP6: &str = "fd00:198:18::50";

fn main() {
    testlab::require_sandbox();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let trials: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100);
    let kinds: Vec<Store> = match args.get(1).map(String::as_str) {
        Some("file") => vec![Store::File],
        Some("etcd") => vec![Store::Etcd],
        _ => vec![Store::File, Store::Etcd],
    };
    let v6 = args.get(2).is_some_and(|a| a == "ipv6");
    let mut rows = Vec::new();
    for kind in kinds {
        rows.extend(bench(kind, trials, v6));
    }
    let what = if v6 { "IPv6 routes, dual-stack 3-node lab" } else { "3-node lab" };
    println!("\nferryd route convergence, {what}, {trials} trials each (ms; flannel anchors from anchors.md)");
    println!("{:<44} {:>9} {:>9} {:>9}   flannel", "measurement", "p50", "p99", "max");
    for (name, s, anchor) in rows {
        println!("{name:<44} {s}   {anchor}");
    }
}

fn bench(kind: Store, trials: usize, v6: bool) -> Vec<(String, Stats, &'static str)> {
    let name = match (kind, v6) {
        (Store::File, false) => "file",
        (Store::Etcd, false) => "etcd",
        (Store::File, true) => "file, IPv6",
        (Store::Etcd, true) => "etcd, IPv6",
    };
    eprintln!("== {name} store: building the lab");
    let family = if v6 { Family::Dual } else { Family::V4 };
    let mut lab = Lab::with_family(kind, family, 3, true);
    // Default --resync (60 s): the idle numbers are for the shipped defaults.
    lab.common.retain(|a| a != "--resync" && a != "300ms");
    for i in 0..3 {
        lab.start(i, &[]);
    }
    lab.wait_leases(&[0, 1, 2]);
    for i in 0..3 {
        lab.wait_all_routes(i, &[0, 1, 2], Duration::from_secs(5));
    }
    let peer = &lab.nodes[1];
    let rx = watch_routes(&peer.ns.path());
    let subnet: Ipv4Network = PEER_SUBNET.parse().unwrap();
    let subnet6: Ipv6Network = PEER_SUBNET6.parse().unwrap();
    let (dst, lease_subnets, key, value): (IpNetwork, Subnets, String, String) = if v6 {
        (
            IpNetwork::V6(subnet6),
            Subnets { v4: Some(subnet), v6: Some(subnet6) },
            format!("{}&{}", common::key(PEER_SUBNET), common::key(PEER_SUBNET6)),
            format!(
                r#"{{"PublicIP":"{PEER_IP}","PublicIPv6":"{PEER_IP6}","BackendType":"host-gw","BackendData":null}}"#
            ),
        )
    } else {
        (
            IpNetwork::V4(subnet),
            subnet.into(),
            common::key(PEER_SUBNET),
            format!(r#"{{"PublicIP":"{PEER_IP}","BackendType":"host-gw","BackendData":null}}"#),
        )
    };
    let (mut join, mut leave, mut repair) = (Vec::new(), Vec::new(), Vec::new());
    let drain = || while rx.try_recv().is_ok() {};

    // Store writes: the file store by hand (write temp, t0, rename), etcd through a client that
    // lives in the underlay namespace.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let underlay = File::open(lab.underlay.path()).unwrap();
    let _in_underlay = (kind == Store::Etcd).then(|| netns::enter(&underlay).unwrap());
    let mut etcd = (kind == Store::Etcd).then(|| {
        let cfg = EtcdConfig { endpoints: vec![common::ETCD_URL.into()], ..EtcdConfig::default() };
        rt.block_on(EtcdStore::connect(cfg)).unwrap()
    });
    let attrs = LeaseAttrs {
        public_ip: PEER_IP.parse().unwrap(),
        backend_type: "host-gw".into(),
        backend_data: serde_json::Value::Null,
        public_ipv6: v6.then(|| PEER_IP6.parse().unwrap()),
        backend_v6_data: None,
    };
    let mut put = |on: bool| -> Instant {
        match etcd.as_mut() {
            None => {
                let path = lab.store_dir().join(&key);
                if on {
                    let tmp = lab.store_dir().join(format!(".{key}.bench.tmp"));
                    std::fs::write(&tmp, &value).unwrap();
                    let t0 = Instant::now();
                    std::fs::rename(&tmp, &path).unwrap();
                    t0
                } else {
                    let t0 = Instant::now();
                    std::fs::remove_file(&path).unwrap();
                    t0
                }
            }
            Some(s) => {
                let t0 = Instant::now();
                if on {
                    assert!(rt
                        .block_on(s.create(lease_subnets, &attrs, Duration::from_secs(600)))
                        .unwrap());
                } else {
                    rt.block_on(s.delete(lease_subnets)).unwrap();
                }
                t0
            }
        }
    };
    let mut missed = 0;
    for _ in 0..trials {
        drain();
        let t0 = put(true);
        match wait_route_event(&rx, dst, true) {
            Some(t1) => join.push(ms(t1 - t0)),
            None => missed += 1,
        }
        drain();
        let t0 = put(false);
        match wait_route_event(&rx, dst, false) {
            Some(t1) => leave.push(ms(t1 - t0)),
            None => missed += 1,
        }
    }
    // Repair: delete a real peer route by hand on node 1.
    let mut nl = Netlink::in_netns(&File::open(peer.ns.path()).unwrap()).unwrap();
    let victim =
        nl.routes(v6, 254, Some(RTPROT_FERRY)).unwrap().into_iter().next().expect("a peer route");
    for _ in 0..trials {
        drain();
        let t0 = Instant::now();
        nl.del_route(&victim).unwrap();
        match wait_route_event(&rx, victim.dst, true) {
            Some(t1) => repair.push(ms(t1 - t0)),
            None => missed += 1,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if missed > 0 {
        eprintln!("!! {missed} trials saw no route event within 3 s");
    }
    if v6 {
        drop(_in_underlay);
        return vec![
            (format!("[{name}] lease written -> route on peer"), Stats(join), "-"),
            (format!("[{name}] lease deleted -> route gone on peer"), Stats(leave), "-"),
            (format!("[{name}] route deleted by hand -> restored"), Stats(repair), "-"),
        ];
    }

    // Idle footprint: 10 s with nothing happening.
    let pids: Vec<u32> = lab.nodes.iter().map(|n| n.proc.as_ref().unwrap().pid()).collect();
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let secs = t.elapsed().as_secs_f64();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut cpu = Vec::new();
    let mut cpu_children = Vec::new();
    let mut rss = Vec::new();
    for (i, &p) in pids.iter().enumerate() {
        let (own, kids) = cpu_ticks(p);
        cpu.push((own - before[i].0) as f64 / hz / secs * 100.0);
        cpu_children.push((kids - before[i].1) as f64 / hz / secs * 100.0);
        rss.push(vm_rss_kb(p) as f64 / 1024.0);
    }
    eprintln!("== {name}: idle ferryd RSS {rss:.2?} MB, CPU {cpu:.3?} % (+ nft children {cpu_children:.3?} %)");
    drop(_in_underlay);
    vec![
        (format!("[{name}] lease written -> route on peer"), Stats(join), "35-39 ms"),
        (format!("[{name}] lease deleted -> route gone on peer"), Stats(leave), "27 ms"),
        (format!("[{name}] route deleted by hand -> restored"), Stats(repair), "~5 s (10 s check)"),
        (format!("[{name}] idle RSS per ferryd (MB)"), Stats(rss), "15.8 MB"),
        (format!("[{name}] idle CPU per ferryd over 10 s (%)"), Stats(cpu), "-"),
        (format!("[{name}] idle CPU of nft children (%)"), Stats(cpu_children), "-"),
    ]
}

/// (utime+stime, cutime+cstime) in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // After ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    (f[11] + f[12], f[13] + f[14])
}

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
