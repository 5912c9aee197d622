//! Crash at any point, and storms: `ferry` ADDs and DELs killed with SIGKILL at random moments,
//! followed by what a runtime does (DEL again, GC with the valid list), never hand out an IP
//! twice and never leave an IP, a host veth or a host route behind; 200 concurrent mixed ADDs and
//! DELs on one node end with the IPAM state matching the live veths exactly.
//!
//! Bounded by default (a few seconds each); `FERRY_SOAK=1` (`tests/run.sh --soak`) runs ten
//! times as many trials. Each test prints its counts.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testlab::Netns;

fn soak() -> usize {
    if std::env::var_os("FERRY_SOAK").is_some_and(|v| v != "0" && !v.is_empty()) {
        10
    } else {
        1
    }
}

/// The generator, seeded from the pid and printed, so a failure can be replayed with FERRY_SEED.
fn seeded() -> testlab::Rng {
    let seed = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or((std::process::id() as u64) ^ 0x9e37_79b9_7f4a_7c15);
    eprintln!("seed: FERRY_SEED={seed}");
    testlab::Rng::new(seed)
}

/// Start one plugin call inside the node namespace without waiting for it.
fn spawn(node: &Node, cmd: &str, cid: &str, pod: &Netns, conf: &str) -> Child {
    let path = format!("{}:/usr/lib/cni", testlab::bin_dir().display());
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", node.ns.path()))
        .arg(testlab::bin("ferry"))
        .env_clear()
        .envs([
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", &pod.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &path),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ch = c.spawn().expect("spawn ferry");
    // A call killed before it read its config gets EPIPE here: that is fine.
    let _ = ch.stdin.take().unwrap().write_all(conf.as_bytes());
    ch
}

/// The node holds exactly the attachments in `live`: their IPs allocated, one host end and one
/// host route each, nothing else.
fn assert_exactly(node: &Node, live: &BTreeMap<usize, (String, String)>, when: &str) {
    let mut want: Vec<String> = live.values().map(|(_, ip)| ip.clone()).collect();
    want.sort();
    assert_eq!(node.allocated(), want, "{when}: IPAM holds exactly the live IPs");
    assert_eq!(host_ends(node), live.len(), "{when}: one host veth per live pod, no more");
    assert_eq!(pod_routes(node), live.len(), "{when}: one host route per live pod, no more");
}

#[derive(Default, Debug)]
struct Counts {
    adds: usize,
    dels: usize,
    killed_adds: usize,
    killed_dels: usize,
    finished_before_kill: usize,
    recovery_dels: usize,
    duplicates: usize,
}

#[test]
fn sigkill_at_random_moments_never_duplicates_or_leaks() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.83.0.0/24", "");
    let slots = 25;
    let pods: Vec<Netns> = (0..slots).map(|_| Netns::new("ck")).collect();
    let mut rng = seeded();
    let mut live: BTreeMap<usize, (String, String)> = BTreeMap::new(); // slot -> (cid, ip)
    let mut c = Counts::default();
    let mut next_cid = 0usize;
    let rounds = 40 * soak();
    let t0 = Instant::now();
    for round in 0..rounds {
        // One call per slot, all at once: DEL where a pod lives, ADD of a new container where
        // none does; about two in three are killed after 0-4 ms.
        let mut calls = Vec::new();
        for (slot, pod) in pods.iter().enumerate() {
            let (verb, cid) = match live.get(&slot) {
                Some((cid, _)) => ("DEL", cid.clone()),
                None => {
                    next_cid += 1;
                    ("ADD", format!("crash-{next_cid}"))
                }
            };
            let kill_after = (rng.below(3) != 0).then(|| Duration::from_micros(rng.below(4000)));
            calls.push((slot, verb, cid.clone(), spawn(&node, verb, &cid, pod, &conf), kill_after));
        }
        let start = Instant::now();
        let mut order: Vec<usize> = (0..calls.len()).filter(|i| calls[*i].4.is_some()).collect();
        order.sort_by_key(|i| calls[*i].4);
        for i in order {
            let at = calls[i].4.unwrap();
            if let Some(left) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(left);
            }
            let _ = calls[i].3.kill();
        }
        for (slot, verb, cid, ch, kill_after) in calls {
            let out = ch.wait_with_output().unwrap();
            let done = out.status.success();
            match (verb, kill_after.is_some()) {
                ("ADD", true) => c.killed_adds += 1,
                ("ADD", false) => c.adds += 1,
                (_, true) => c.killed_dels += 1,
                _ => c.dels += 1,
            }
            if kill_after.is_some() && done {
                c.finished_before_kill += 1;
            }
            if !done && kill_after.is_none() {
                panic!(
                    "round {round}: {verb} {cid} failed unkilled: {} {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if verb == "ADD" && done {
                let r: Value = serde_json::from_slice(&out.stdout).expect("ADD result");
                let ip = pod_ip(&r);
                if live.values().any(|(_, other)| *other == ip) {
                    c.duplicates += 1;
                }
                live.insert(slot, (cid, ip));
            } else if verb == "DEL" && done {
                live.remove(&slot);
            } else {
                // The runtime's recovery for a call that died: DEL, which must succeed.
                c.recovery_dels += 1;
                node.call("DEL", &cid, Some(&pods[slot]), "eth0", &conf).assert_ok();
                live.remove(&slot);
            }
        }
        assert_exactly(&node, &live, &format!("after round {round}"));
    }
    // GC with the valid list changes nothing when everything was recovered by DEL.
    let valid: Vec<String> = live
        .values()
        .map(|(cid, _)| format!(r#"{{"containerID":"{cid}","ifname":"eth0"}}"#))
        .collect();
    let gc = node.conf(
        "1.1.0",
        "10.83.0.0/24",
        &format!(r#","cni.dev/valid-attachments":[{}]"#, valid.join(",")),
    );
    node.call("GC", "", None, "", &gc).assert_ok();
    assert_exactly(&node, &live, "after GC");
    for (slot, (cid, _)) in std::mem::take(&mut live) {
        node.call("DEL", &cid, Some(&pods[slot]), "eth0", &conf).assert_ok();
    }
    assert_exactly(&node, &live, "after the last DELs");
    let kills = c.killed_adds + c.killed_dels;
    println!(
        "crash trials: {kills} SIGKILLs ({} during ADD, {} during DEL; {} had already finished), \
         {} ADDs and {} DELs unkilled, {} recovery DELs, {} duplicate IPs, 0 leftovers, {:.1} s",
        c.killed_adds,
        c.killed_dels,
        c.finished_before_kill,
        c.adds,
        c.dels,
        c.recovery_dels,
        c.duplicates,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(c.duplicates, 0, "an IP was handed out twice");
    assert!(kills >= 500 * soak(), "enough kill trials ran ({kills})");
}

#[test]
fn storm_of_200_concurrent_adds_and_dels_stays_consistent() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.84.0.0/23", "");
    let n = 200;
    let pods: Vec<Netns> = (0..n).map(|_| Netns::new("st")).collect();
    let mut live: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut rng = seeded();
    let t0 = Instant::now();
    let (mut calls_total, mut rounds) = (0usize, 0usize);
    let deadline = Duration::from_secs(20 * soak() as u64);
    // Round 0: 200 ADDs at once. Then rounds of 200 mixed calls at once (DEL of a random half of
    // the live pods, ADD for every empty slot), until 4 rounds (or the time bound) are done.
    while rounds < 4 * soak() && t0.elapsed() < deadline {
        let calls: Vec<(usize, &str, String, Child)> = pods
            .iter()
            .enumerate()
            .filter_map(|(slot, pod)| match live.get(&slot) {
                Some((cid, _)) if rng.below(2) == 0 => {
                    Some((slot, "DEL", cid.clone(), spawn(&node, "DEL", cid, pod, &conf)))
                }
                Some(_) => None,
                None => {
                    let cid = format!("storm-{rounds}-{slot}");
                    Some((slot, "ADD", cid.clone(), spawn(&node, "ADD", &cid, pod, &conf)))
                }
            })
            .collect();
        calls_total += calls.len();
        for (slot, verb, cid, ch) in calls {
            let out = ch.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{verb} {cid}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if verb == "ADD" {
                let ip = pod_ip(&serde_json::from_slice(&out.stdout).unwrap());
                live.insert(slot, (cid, ip));
            } else {
                live.remove(&slot);
            }
        }
        let ips: BTreeSet<&String> = live.values().map(|(_, ip)| ip).collect();
        assert_eq!(ips.len(), live.len(), "round {rounds}: no IP held by two pods");
        assert_exactly(&node, &live, &format!("after storm round {rounds}"));
        rounds += 1;
    }
    println!(
        "storm: {calls_total} concurrent calls in {rounds} rounds of up to {n}, 0 failures, \
         0 duplicate IPs, state == live veths; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for (slot, (cid, _)) in std::mem::take(&mut live) {
        node.call("DEL", &cid, Some(&pods[slot]), "eth0", &conf).assert_ok();
    }
    assert_exactly(&node, &live, "after the storm");
}
