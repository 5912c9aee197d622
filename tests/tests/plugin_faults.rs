//! Fault injection: `ferry` ADDs killed with SIGKILL at random points leave nothing GC cannot
//! clean: after GC with the survivors as the valid list, the IPAM state holds exactly the
//! survivors' distinct IPs, only their host veths remain, and every survivor still passes CHECK.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testlab::Netns;

#[test]
fn sigkill_during_add_leaves_nothing_gc_cannot_clean() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.82.0.0/24", "");
    let pods: Vec<Netns> = (0..30).map(|_| Netns::new("fk")).collect();
    let path = format!("{}:/usr/lib/cni", testlab::bin_dir().display());
    // Start every ADD, then SIGKILL every other one after a pseudo-random 0-3 ms.
    let mut seed = (std::process::id() as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let mut children = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", node.ns.path()))
            .arg(testlab::bin("ferry"))
            .env_clear()
            .envs([
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &format!("k{i}")),
                ("CNI_NETNS", &p.path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &path),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut ch = c.spawn().unwrap();
        ch.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        children.push((ch, (seed >> 33) % 3000));
    }
    let start = Instant::now();
    for (i, (ch, delay_us)) in children.iter_mut().enumerate() {
        if i % 2 == 1 {
            let at = Duration::from_micros(*delay_us);
            if let Some(left) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(left);
            }
            let _ = ch.kill();
        }
    }
    let mut survivors = Vec::new();
    for (i, (ch, _)) in children.into_iter().enumerate() {
        let out = ch.wait_with_output().unwrap();
        if out.status.success() {
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            survivors.push((i, r));
        }
    }
    assert!(survivors.len() >= 15, "the unkilled half succeeds ({} did)", survivors.len());

    // The runtime's view: only the survivors exist. GC must clean up after the killed ADDs.
    let valid: Vec<String> = survivors
        .iter()
        .map(|(i, _)| format!(r#"{{"containerID":"k{i}","ifname":"eth0"}}"#))
        .collect();
    let gc = node.conf(
        "1.1.0",
        "10.82.0.0/24",
        &format!(r#","cni.dev/valid-attachments":[{}]"#, valid.join(",")),
    );
    node.call("GC", "", None, "", &gc).assert_ok();

    let mut want: Vec<String> = survivors.iter().map(|(_, r)| pod_ip(r)).collect();
    want.sort();
    let before = want.len();
    want.dedup();
    assert_eq!(want.len(), before, "no IP handed out twice");
    assert_eq!(node.allocated(), want, "IPAM holds exactly the survivors' IPs");
    let host_ends = node.links().into_iter().filter(|l| l.starts_with("fry")).count();
    assert_eq!(host_ends, survivors.len(), "only the survivors' host veths remain");
    for (i, r) in &survivors {
        node.call("CHECK", &format!("k{i}"), Some(&pods[*i]), "eth0", &with_prev(&conf, r))
            .assert_ok();
    }
    // Killed attachments can still be DELeted (what a runtime does after a failed ADD).
    for i in (0..30).filter(|i| !survivors.iter().any(|(s, _)| s == i)) {
        node.call("DEL", &format!("k{i}"), Some(&pods[i]), "eth0", &conf).assert_ok();
    }
}
