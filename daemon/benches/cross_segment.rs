//! The vxlan backend (issue 12) in the two-segment lab: throughput pod to pod on the same
//! segment (direct route) and across segments (VXLAN) against the underlay itself in the same
//! run, and lease change -> route (+ ARP/fdb) on a peer for a cross-segment peer next to a
//! same-segment peer. Run inside the sandbox (bench/cross_segment.sh does this):
//!   tests/sandbox.sh cargo bench -p ferryd --offline --bench cross_segment [-- TRIALS [SECS]]
//!
//! Latency: t0 is the rename that makes a lease visible in the file store (the delete for
//! removals); t1 the route event in node 0's namespace. For an encapsulated peer ferryd sends
//! the ARP and fdb entries before the route in the same reconcile, so the route event comes
//! after them.

#[path = "../tests/common/mod.rs"]
mod common;

use common::events::{ms, wait_route_event, watch_routes, Stats};
use common::{add_pod, Lab, Store};
use ipnetwork::IpNetwork;
use std::process::Stdio;
use std::time::{Duration, Instant};
use testlab::Netns;

fn main() {
    testlab::require_sandbox();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let trials: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let secs: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);

    // Nodes 0, 1 on segment A; 2, 3 on segment B; the underlay namespace routes between them.
    let mut lab = Lab::on_segments(Store::File, &[0, 0, 1, 1]);
    for i in 0..4 {
        lab.start(i, &["--backend", "vxlan"]);
    }
    lab.wait_subnets(&[0, 1, 2, 3]);
    let up =
        testlab::wait_for(Duration::from_secs(15), || (0..4).all(|i| lab.routes(i).len() == 3));
    assert!(up, "routes did not converge: {}", lab.log(0));
    let pods: Vec<(Netns, String)> = (0..4).map(|i| add_pod(&lab, i, &format!("p{i}"))).collect();
    for (k, (_, ip)) in pods.iter().enumerate().skip(1) {
        assert!(pods[0].0.ping(ip), "pod0 -> pod{k}");
    }

    // Throughput, rounds in rotating order; the server is on node 0 / pod 0.
    let s0 = lab.subnet(0).unwrap();
    let vtep0 = s0.split('/').next().unwrap().to_string();
    let n = |i: usize| &lab.nodes[i].ns;
    let paths: Vec<(&str, &Netns, &Netns, String)> = vec![
        ("underlay, same segment (node1 -> node0)", n(1), n(0), lab.nodes[0].ip.clone()),
        ("pod, same segment: direct (pod1 -> pod0)", &pods[1].0, &pods[0].0, pods[0].1.clone()),
        ("underlay, across segments (node2 -> node0)", n(2), n(0), lab.nodes[0].ip.clone()),
        ("pod, across segments: VXLAN (pod2 -> pod0)", &pods[2].0, &pods[0].0, pods[0].1.clone()),
        ("node over VXLAN, no pod hop (node2 -> node0 VTEP)", n(2), n(0), vtep0),
    ];
    let rounds = 3;
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for r in 0..rounds {
        for k in 0..paths.len() {
            let k = (k + r) % paths.len();
            let (_, cli, srv, addr) = &paths[k];
            if let Some(g) = iperf(srv, cli, addr, secs) {
                gbps[k].push(g);
            }
        }
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "\niperf3 TCP, {rounds} rounds x {secs} s, median Gbit/s (MTU: underlay 1500, pods 1450)"
    );
    for (k, (name, ..)) in paths.iter().enumerate() {
        println!("  {name:<50} {:>7.2}   {:.2?}", med(&gbps[k]), gbps[k]);
    }
    println!(
        "  ratio direct / underlay (same segment)        {:>7.3}",
        med(&gbps[1]) / med(&gbps[0])
    );
    println!(
        "  ratio VXLAN / underlay (across segments)      {:>7.3}",
        med(&gbps[3]) / med(&gbps[2])
    );

    // Lease change -> route on node 0, for a peer on segment B (VXLAN) and on segment A.
    let rx = watch_routes(&lab.nodes[0].ns.path());
    let drain = || while rx.try_recv().is_ok() {};
    let mut rows = Vec::new();
    for (what, subnet, public_ip) in [
        ("peer across segments (VXLAN)", "10.244.201.0/24", "198.19.0.50"),
        ("peer on the same segment (direct)", "10.244.202.0/24", "198.18.0.50"),
    ] {
        let key = common::key(subnet);
        let value = format!(
            r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:66:00:00:00:32"}}}}"#
        );
        let dst: IpNetwork = subnet.parse().unwrap();
        let (mut join, mut leave, mut missed) = (Vec::new(), Vec::new(), 0);
        for _ in 0..trials {
            drain();
            let tmp = lab.store_dir().join(format!(".{key}.bench.tmp"));
            std::fs::write(&tmp, &value).unwrap();
            let t0 = Instant::now();
            std::fs::rename(&tmp, lab.store_dir().join(&key)).unwrap();
            match wait_route_event(&rx, dst, true) {
                Some(t1) => join.push(ms(t1 - t0)),
                None => missed += 1,
            }
            drain();
            let t0 = Instant::now();
            std::fs::remove_file(lab.store_dir().join(&key)).unwrap();
            match wait_route_event(&rx, dst, false) {
                Some(t1) => leave.push(ms(t1 - t0)),
                None => missed += 1,
            }
        }
        if missed > 0 {
            eprintln!("!! {what}: {missed} trials saw no route event within 3 s");
        }
        rows.push((format!("[file] {what}: lease written -> route"), Stats(join)));
        rows.push((format!("[file] {what}: lease deleted -> route gone"), Stats(leave)));
    }
    println!("\nferryd lease change -> route on node 0, {trials} trials each (ms)");
    println!("{:<66} {:>9} {:>9} {:>9}", "measurement", "p50", "p99", "max");
    for (name, s) in rows {
        println!("{name:<66} {s}");
    }
}

/// One iperf3 TCP run from `cli` to the server in `srv` at `addr`: Gbit/s received.
fn iperf(srv: &Netns, cli: &Netns, addr: &str, secs: u32) -> Option<f64> {
    let mut server = srv
        .cmd("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = cli
        .cmd("iperf3")
        .args(["-c", addr, "-p", "5201", "-t", &secs.to_string(), "-J"])
        .output()
        .ok();
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out?.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9)
}
