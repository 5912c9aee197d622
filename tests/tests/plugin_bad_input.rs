//! Bad input of every kind: the right CNI error code, a message that says what to fix, nothing
//! changed on the host or in the IPAM store, no panic.

mod common;
use common::*;
use testlab::{cni, Netns};

/// Run one bad call and assert the code, a helpful message, and that nothing changed.
fn assert_rejected(
    node: &Node,
    pod: Option<&Netns>,
    env: &[(&str, &str)],
    stdin: &str,
    code: u64,
    needle: &str,
) {
    let links_before = node.links();
    let state_before = node.ipam_state();
    let pod_before = pod.map(|p| p.ip(&["-o", "link"]));
    let out = cni(Some(&node.ns), &testlab::bin("ferry"), env, stdin);
    assert_eq!(out.code(), code, "stdin={stdin} env={env:?} out={}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string()
        + out.json()["details"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "message {msg:?} should mention {needle:?}");
    assert!(!out.stderr.contains("panicked"), "panic: {}", out.stderr);
    assert_eq!(node.links(), links_before, "host links changed");
    assert_eq!(node.ipam_state(), state_before, "IPAM state changed");
    if let (Some(p), Some(before)) = (pod, pod_before) {
        assert_eq!(p.ip(&["-o", "link"]), before, "pod links changed");
    }
}

fn env<'a>(cmd: &'a str, cid: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

#[test]
fn malformed_config_json_and_fields() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let p = pod.path();
    let e = env("ADD", "c1", &p, "eth0");
    assert_rejected(&node, Some(&pod), &e, "{", 6, "decoding");
    assert_rejected(&node, Some(&pod), &e, "not json at all", 6, "decoding");
    assert_rejected(&node, Some(&pod), &e, "[]", 6, "object");
    assert_rejected(&node, Some(&pod), &e, r#"{"cniVersion":"1.0.0","type":"ferry"}"#, 7, "name");
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        r#"{"cniVersion":"1.0.0","name":["x"],"type":"ferry"}"#,
        7,
        "name",
    );
    assert_rejected(&node, Some(&pod), &e, r#"{"cniVersion":"1.0.0","name":"n"}"#, 7, "type");
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        r#"{"cniVersion":"9.9.9","name":"n","type":"ferry"}"#,
        1,
        "9.9.9",
    );
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        r#"{"cniVersion":"1.0","name":"n","type":"ferry"}"#,
        1,
        "1.0",
    );
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        &node.conf("1.0.0", "10.70.0.0/33", ""),
        7,
        "not a CIDR",
    );
    assert_rejected(&node, Some(&pod), &e, &node.conf("1.0.0", "banana", ""), 7, "not a CIDR");
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        &node.conf("1.0.0", "10.70.0.0/24", r#","mtu":"big""#),
        7,
        "mtu",
    );
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        &node.conf("1.0.0", "10.70.0.0/24", r#","routes":[{"dst":"x"}]"#),
        7,
        "routes",
    );
    assert_rejected(
        &node,
        Some(&pod),
        &e,
        &node.conf(
            "1.0.0",
            "10.70.0.0/24",
            r#","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"junk"}]}"#,
        ),
        6,
        "prevResult",
    );
}

#[test]
fn missing_and_invalid_environment() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let p = pod.path();
    let conf = node.conf("1.0.0", "10.71.0.0/24", "");
    assert_rejected(
        &node,
        Some(&pod),
        &[("CNI_COMMAND", "ADD")],
        &conf,
        4,
        "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME",
    );
    assert_rejected(
        &node,
        Some(&pod),
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")],
        &conf,
        4,
        "CNI_NETNS",
    );
    assert_rejected(&node, Some(&pod), &[("CNI_COMMAND", "FOO")], &conf, 4, "FOO");
    let long_id = "a".repeat(300);
    for bad_id in ["", "-abc", "a/b", "a b", "..", "a\u{1}b", long_id.as_str()] {
        assert_rejected(
            &node,
            Some(&pod),
            &env("ADD", bad_id, &p, "eth0"),
            &conf,
            4,
            "CNI_CONTAINERID",
        );
    }
    for bad_if in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b", "e\u{7}"] {
        assert_rejected(&node, Some(&pod), &env("ADD", "c1", &p, bad_if), &conf, 4, "CNI_IFNAME");
    }
    assert_rejected(
        &node,
        Some(&pod),
        &env("ADD", "c1", "relative/path", "eth0"),
        &conf,
        4,
        "CNI_NETNS",
    );
    assert_rejected(
        &node,
        Some(&pod),
        &env("ADD", "c1", "/run/netns/../x", "eth0"),
        &conf,
        4,
        "CNI_NETNS",
    );
    // A netns path that does not exist: code 3 (container unknown), nothing allocated.
    assert_rejected(
        &node,
        None,
        &env("ADD", "c1", "/run/netns/does-not-exist", "eth0"),
        &conf,
        3,
        "does-not-exist",
    );
}

#[test]
fn ifname_already_in_the_pod() {
    let node = Node::new();
    let pod = Netns::new("fp");
    pod.ip(&["link", "add", "name", "eth0", "type", "veth", "peer", "name", "other"]);
    let p = pod.path();
    assert_rejected(
        &node,
        Some(&pod),
        &env("ADD", "c1", &p, "eth0"),
        &node.conf("1.0.0", "10.72.0.0/24", ""),
        4,
        "already exists",
    );
}

#[test]
fn subnet_file_missing_or_garbled() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let p = pod.path();
    let f = node.dir.join("subnet.env");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"t","type":"ferry","subnetFile":"{}","dataDir":"{}"}}"#,
        f.display(),
        node.dir.path_str("ipam")
    );
    assert_rejected(
        &node,
        Some(&pod),
        &env("ADD", "c1", &p, "eth0"),
        &conf,
        11,
        "does not exist yet",
    );
    for garbage in [
        "garbage",
        "FLANNEL_SUBNET=10.0.0.0/33\n",
        "FLANNEL_SUBNET=10.73.0.1/24\nFLANNEL_MTU=abc\n",
        "FLANNEL_NETWORK=10.73.0.0/16\n",
    ] {
        std::fs::write(&f, garbage).unwrap();
        assert_rejected(&node, Some(&pod), &env("ADD", "c1", &p, "eth0"), &conf, 7, "subnet file");
    }
}

#[test]
fn full_subnet() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.74.0.0/30", "");
    let first = Netns::new("fp");
    node.add("first", &first, &conf);
    let pod = Netns::new("fp");
    let p = pod.path();
    assert_rejected(&node, Some(&pod), &env("ADD", "second", &p, "eth0"), &conf, 102, "10.74.0.");
    // DEL of the failed ADD is fine; after the first pod leaves, the next one fits.
    node.call("DEL", "second", Some(&pod), "eth0", &conf).assert_ok();
    node.call("DEL", "first", Some(&first), "eth0", &conf).assert_ok();
    node.add("second", &pod, &conf);
    node.call("DEL", "second", Some(&pod), "eth0", &conf).assert_ok();
}

#[test]
fn delegated_ipam_not_in_cni_path() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let p = pod.path();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"t","type":"ferry","ipam":{{"type":"nosuchipam"}},"dataDir":"{}"}}"#,
        node.dir.path_str("ipam")
    );
    assert_rejected(&node, Some(&pod), &env("ADD", "c1", &p, "eth0"), &conf, 7, "nosuchipam");
}
