//! DEL tries every step (remove the host end, release the IP) and then reports what failed: a
//! corrupt IPAM state file must neither leak the pod's link nor be touched, and DEL of an
//! attachment the corrupt state cannot concern (its container id is nowhere in the file) succeeds.

mod common;
use common::*;
use testlab::Netns;

#[test]
fn del_with_a_corrupt_state_file_still_removes_the_link_and_reports_it() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.76.0.0/24", "");
    let (pod, other) = (Netns::new("fp"), Netns::new("fp"));
    let r = node.add("cor", &pod, &conf);
    let kept = node.add("kept", &other, &conf);
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let state = node.dir.join("ipam/t/state.json");
    let good = std::fs::read(&state).unwrap();
    // Cut short, as a torn write would leave it (it still names "cor").
    let junk = b"{\"version\":1,\"allocations\":{\"10.76.0.2\":{\"id\":\"cor\",\"ifn";
    std::fs::write(&state, junk).unwrap();

    let out = node.call("DEL", "cor", Some(&pod), "eth0", &conf);
    assert_eq!(out.code(), 101, "{}", out.stdout);
    let e = out.json();
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("corrupt") && msg.contains(&state.display().to_string()), "{msg}");
    assert!(e["details"].as_str().unwrap().contains("move it aside"), "{e}");
    assert!(!node.links().contains(&host_if), "host end removed despite the IPAM failure");
    assert!(!pod.sh("ip link show eth0").status.success(), "pod end went with it");
    assert_eq!(std::fs::read(&state).unwrap(), junk, "state file left untouched");

    // A container the unreadable state cannot concern (its id occurs nowhere in the raw bytes):
    // DEL succeeds, touches no other attachment's link and leaves the file alone.
    let out = node.call("DEL", "never-added", None, "eth0", &conf);
    out.assert_ok();
    let kept_if = kept["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(node.links().contains(&kept_if), "another attachment's link stays");
    assert_eq!(std::fs::read(&state).unwrap(), junk);
    // One whose id does occur in the bytes may be concerned: the corruption is the answer.
    let named = b"{\"version\":1,\"allocations\":{\"10.76.0.9\":{\"id\":\"kept\",\"ifname\":";
    std::fs::write(&state, named).unwrap();
    let out = node.call("DEL", "kept", Some(&other), "eth0", &conf);
    assert_eq!(out.code(), 101, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("corrupt"));
    assert!(!node.links().contains(&kept_if), "its host end still went first");
    assert_eq!(std::fs::read(&state).unwrap(), named);

    // Repaired: DEL now succeeds and releases the address (the link is already gone).
    std::fs::write(&state, &good).unwrap();
    assert!(node.allocated().contains(&pod_ip(&r)));
    node.call("DEL", "cor", Some(&pod), "eth0", &conf).assert_ok();
    assert!(!node.allocated().contains(&pod_ip(&r)), "IP released after the repair");
    node.call("DEL", "never-added", None, "eth0", &conf).assert_ok();
    node.call("DEL", "kept", Some(&other), "eth0", &conf).assert_ok();
    assert_clean(&node, "after the repaired DELs");
}

#[test]
fn del_with_a_state_file_that_is_not_a_regular_file_does_not_hang() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.77.0.0/24", "");
    let pod = Netns::new("fp");
    let r = node.add("fifo", &pod, &conf);
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let state = node.dir.join("ipam/t/state.json");
    let good = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    testlab::ok("mkfifo", [&state]);
    let out = node.call("DEL", "fifo", Some(&pod), "eth0", &conf);
    assert_eq!(out.code(), 101, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("FIFO"), "{}", out.stdout);
    assert!(!node.links().contains(&host_if), "host end removed");
    std::fs::remove_file(&state).unwrap();
    std::fs::write(&state, &good).unwrap();
    node.call("DEL", "fifo", Some(&pod), "eth0", &conf).assert_ok();
    assert!(node.allocated().is_empty());
}
