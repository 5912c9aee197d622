//! Crash at each step, deterministically: `FERRY_FAILPOINT=<step>` aborts `ferry` right after that
//! step of ADD or DEL (as a SIGKILL or power loss there would). Whatever the step, what the
//! runtime does next leaves nothing behind: the runtime's DEL after an aborted ADD, GC with an
//! empty valid list after an aborted ADD, and DEL again after an aborted DEL. (Random-moment
//! SIGKILLs are in plugin_crash.rs.)

mod common;
use common::*;
use testlab::Netns;

/// What exists on the node: (IPs allocated, host ends, host routes, pod end present).
type Leftovers = (usize, usize, usize, bool);

/// The ADD steps, each with what must exist right after it.
const ADD_STEPS: &[(&str, Leftovers)] = &[
    ("add-ipam", (1, 0, 0, false)),
    ("add-veth", (1, 1, 0, true)),
    ("add-host", (1, 1, 1, true)),
    ("add-pod", (1, 1, 1, true)),
];

fn state(node: &Node, pod: &Netns) -> Leftovers {
    let pod_end = pod.sh("ip link show eth0").status.success();
    (node.allocated().len(), host_ends(node), pod_routes(node), pod_end)
}

/// Abort an ADD at `step` and check it stopped exactly there.
fn aborted_add(node: &Node, cid: &str, pod: &Netns, conf: &str, step: &str) {
    let want = ADD_STEPS.iter().find(|(s, _)| *s == step).unwrap().1;
    let out = node.call_env("ADD", (cid, Some(pod), "eth0"), conf, &[("FERRY_FAILPOINT", step)]);
    assert_ne!(out.rc, 0, "{step}: ADD was not aborted: {}", out.stdout);
    assert!(out.stdout.is_empty(), "{step}: an aborted ADD prints nothing: {}", out.stdout);
    assert_eq!(state(node, pod), want, "{step}: what exists right after the step");
}

#[test]
fn add_aborted_at_each_step_then_del_leaves_nothing() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.86.0.0/24", "");
    for (i, (step, _)) in ADD_STEPS.iter().enumerate() {
        let pod = Netns::new("fp");
        let cid = format!("fpd{i}");
        aborted_add(&node, &cid, &pod, &conf, step);
        node.call("DEL", &cid, Some(&pod), "eth0", &conf).assert_ok();
        assert_clean(&node, &format!("DEL after ADD aborted at {step}"));
        assert!(!pod.sh("ip link show eth0").status.success(), "{step}: pod end gone");
        // The attachment works again afterwards.
        let r = node.add(&cid, &pod, &conf);
        assert!(node.ns.ping(&pod_ip(&r)), "{step}: re-added pod reachable");
        node.call("DEL", &cid, Some(&pod), "eth0", &conf).assert_ok();
    }
    println!("failpoints: {} ADD steps aborted, each recovered by DEL", ADD_STEPS.len());
}

#[test]
fn add_aborted_at_each_step_then_gc_leaves_nothing() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.87.0.0/24", "");
    for (i, (step, _)) in ADD_STEPS.iter().enumerate() {
        let pod = Netns::new("fp");
        aborted_add(&node, &format!("fpg{i}"), &pod, &conf, step);
        // No valid-attachments list: nothing is valid.
        node.call("GC", "", None, "", &conf).assert_ok();
        assert_clean(&node, &format!("GC after ADD aborted at {step}"));
        assert!(!pod.sh("ip link show eth0").status.success(), "{step}: pod end gone");
    }
    println!("failpoints: {} ADD steps aborted, each recovered by GC", ADD_STEPS.len());
}

#[test]
fn del_aborted_at_each_step_then_del_again_leaves_nothing() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.88.0.0/24", "");
    // What is left right after each DEL step: (IPs allocated, host ends).
    for (i, (step, left)) in [("del-host-end", (1, 0)), ("del-release", (0, 0))].iter().enumerate()
    {
        let pod = Netns::new("fp");
        let cid = format!("fpx{i}");
        node.add(&cid, &pod, &conf);
        let out =
            node.call_env("DEL", (&cid, Some(&pod), "eth0"), &conf, &[("FERRY_FAILPOINT", step)]);
        assert_ne!(out.rc, 0, "{step}: DEL was not aborted");
        assert_eq!((node.allocated().len(), host_ends(&node)), *left, "{step}: right after it");
        node.call("DEL", &cid, Some(&pod), "eth0", &conf).assert_ok();
        assert_clean(&node, &format!("DEL again after DEL aborted at {step}"));
    }
}

#[test]
fn an_unknown_or_empty_failpoint_changes_nothing() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.89.0.0/24", "");
    let pod = Netns::new("fp");
    for fp in ["", "no-such-step"] {
        let out =
            node.call_env("ADD", ("fpn", Some(&pod), "eth0"), &conf, &[("FERRY_FAILPOINT", fp)]);
        out.assert_ok();
        node.call_env("DEL", ("fpn", Some(&pod), "eth0"), &conf, &[("FERRY_FAILPOINT", fp)])
            .assert_ok();
    }
    assert_clean(&node, "after ADD/DEL with inert failpoints");
}
