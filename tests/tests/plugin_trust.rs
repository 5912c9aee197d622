//! Issue 8 ("Trust"): hostile and odd input never breaks a node. Each test pins one defect that
//! existed before it was fixed: a second interface in one pod, GC with the longest accepted names,
//! a route mixing address families, requested IPs no pool can serve, a state file with a key
//! written twice, an ifname the kernel would expand, a FIFO as the subnet file. Plus the operator
//! items: `logFile` / `logLevel`, `--help` / `--version`.

mod common;
use common::*;
use std::time::{Duration, Instant};
use testlab::Netns;

fn host_end(r: &serde_json::Value) -> String {
    r["interfaces"][0]["name"].as_str().unwrap().to_string()
}

/// A ferry config for another network `name` on `node` (its own subnet and store).
fn net_conf(node: &Node, name: &str, subnet: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"{name}","type":"ferry","subnet":"{subnet}","dataDir":"{}"{extra}}}"#,
        node.dir.path_str("ipam")
    )
}

/// Defect 6. A second attachment whose gateway or routes overlap the first's is rejected with a
/// clear error and leaves nothing behind (the first keeps working); one whose routes do not
/// overlap (another network) is supported: both pass CHECK, and DEL of one leaves the other
/// reachable.
#[test]
fn second_interface_in_one_pod_is_rejected_or_routed_on_its_own() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.90.0.0/24", "");
    let pod = Netns::new("fp");
    let r0 = node.add("two", &pod, &conf);
    let out = node.call("ADD", "two", Some(&pod), "eth1", &conf);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("already routed via another link (eth0)"), "{msg}");
    assert!(!pod.sh("ip link show eth1").status.success(), "no eth1 left in the pod");
    assert_eq!(node.allocated(), vec![pod_ip(&r0)], "eth1's IP released");
    assert_eq!((host_ends(&node), pod_routes(&node)), (1, 1), "only eth0's host end and route");
    node.call("CHECK", "two", Some(&pod), "eth0", &with_prev(&conf, &r0)).assert_ok();
    assert!(node.ns.ping(&pod_ip(&r0)), "eth0 still reachable");

    // Another network whose routes do not overlap: eth1 gets its own routes.
    let other = net_conf(&node, "t2", "10.91.0.0/24", r#","routes":[{"dst":"10.99.0.0/16"}]"#);
    let r1 = node.call("ADD", "two", Some(&pod), "eth1", &other).assert_ok().json();
    node.wait_up(&pod);
    node.call("CHECK", "two", Some(&pod), "eth0", &with_prev(&conf, &r0)).assert_ok();
    node.call("CHECK", "two", Some(&pod), "eth1", &with_prev(&other, &r1)).assert_ok();
    let routes = pod.ip(&["-4", "route"]);
    assert!(routes.contains("10.99.0.0/16 via 10.91.0.1 dev eth1"), "{routes}");
    node.call("DEL", "two", Some(&pod), "eth0", &conf).assert_ok();
    assert!(node.ns.ping(&pod_ip(&r1)), "eth1 reachable after DEL of eth0");
    node.call("CHECK", "two", Some(&pod), "eth1", &with_prev(&other, &r1)).assert_ok();
    node.call("DEL", "two", Some(&pod), "eth1", &other).assert_ok();
    assert_clean(&node, "after both DELs");
}

/// Defect 7. With a 128-byte network name and container ids up to 255 bytes (all accepted), GC
/// keeps a valid pod's veth, deletes an invalid one's together with its IP, and a new pod given
/// that IP is routed to its own veth. An existing /32 to another link is never taken as success.
#[test]
fn gc_with_the_longest_names_matches_the_full_key() {
    let node = Node::new();
    let net = "n".repeat(128);
    let conf = net_conf(&node, &net, "10.92.0.0/24", "");
    // The old alias ("ferry <net> <id> <ifname>", cut at 250 bytes) cut A's ifname to "et", and
    // B's (and C's) id before its end.
    let (a, b) = ("a".repeat(112), "b".repeat(255));
    let (pa, pb, pc) = (Netns::new("fp"), Netns::new("fp"), Netns::new("fp"));
    let ra = node.add(&a, &pa, &conf);
    let rb = node.add(&b, &pb, &conf);
    let valid =
        format!(r#","cni.dev/valid-attachments":[{{"containerID":"{a}","ifname":"eth0"}}]"#);
    node.call("GC", "", None, "", &net_conf(&node, &net, "10.92.0.0/24", &valid)).assert_ok();
    assert!(node.links().contains(&host_end(&ra)), "the valid pod's veth stays");
    node.call("CHECK", &a, Some(&pa), "eth0", &with_prev(&conf, &ra)).assert_ok();
    assert!(!node.links().contains(&host_end(&rb)), "the invalid pod's veth goes with its IP");
    assert_eq!(node.allocated(), vec![pod_ip(&ra)]);
    // A new pod asking for B's old address gets it, routed to its own veth.
    let ip_b = pod_ip(&rb);
    let c = "c".repeat(255);
    let cni_args = format!("IP={ip_b}");
    let out = node.call_env("ADD", (&c, Some(&pc), "eth0"), &conf, &[("CNI_ARGS", &cni_args)]);
    let rc = out.assert_ok().json();
    node.wait_up(&pc);
    assert_eq!(pod_ip(&rc), ip_b);
    assert!(node.ns.ping(&ip_b), "the new pod is reachable at the reused IP");
    for (cid, p) in [(&a, &pa), (&c, &pc)] {
        node.call("DEL", cid, Some(p), "eth0", &conf).assert_ok();
    }
    assert_clean(&node, "after the DELs");

    // A /32 for the address already routed out of another link: ADD fails, nothing left.
    node.ns.ip(&["link", "add", "squat0", "type", "veth", "peer", "name", "squat1"]);
    node.ns.ip(&["link", "set", "squat0", "up"]);
    node.ns.ip(&["route", "add", "10.92.0.77/32", "dev", "squat0", "proto", "114"]);
    let out =
        node.call_env("ADD", ("d", Some(&pc), "eth0"), &conf, &[("CNI_ARGS", "IP=10.92.0.77")]);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("squat0"), "{}", out.stdout);
    assert_eq!((node.allocated().len(), host_ends(&node)), (0, 0), "rolled back");
    assert!(node.ns.ip(&["route", "show", "10.92.0.77/32"]).contains("squat0"), "untouched");
}

/// Defect 8. A route whose gateway is of the other family than its destination is a config
/// error (code 7), not a route installed via a mapped address; nothing is created.
#[test]
fn route_mixing_families_is_code_7() {
    let node = Node::new();
    let pod = Netns::new("fp");
    for routes in [
        r#"[{"dst":"0.0.0.0/0","gw":"fd00::1"}]"#,
        r#"[{"dst":"10.0.0.0/8","gw":"10.93.0.1"},{"dst":"::/0","gw":"10.93.0.1"}]"#,
    ] {
        let conf = node.conf("1.1.0", "10.93.0.0/24", &format!(r#","routes":{routes}"#));
        let out = node.call("ADD", "mix", Some(&pod), "eth0", &conf);
        assert_eq!(out.code(), 7, "{routes}: {}", out.stdout);
        assert!(out.json()["msg"].as_str().unwrap().contains("mixes address families"));
        assert_clean(&node, routes);
        assert!(!pod.sh("ip link show eth0").status.success());
    }
}

/// Defect 10. Requested IPs no pool can serve (two of one family, or IPv6 on an IPv4 pool) get
/// the same answer from `ferry` (in-process) and `ferry-ipam` (delegated): code 7.
#[test]
fn requested_ips_get_one_answer_from_both_plugins() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let in_process = node.conf("1.1.0", "10.94.0.0/24", "");
    let delegated = format!(
        r#"{{"cniVersion":"1.1.0","name":"t","type":"ferry","ipam":{{"type":"ferry-ipam","subnet":"10.94.0.0/24","dataDir":"{}"}}}}"#,
        node.dir.path_str("ipam")
    );
    for args in ["IP=10.94.0.5,10.94.0.6", "IP=fd00::5", "IP=10.94.0.5,fd00::5"] {
        for conf in [&in_process, &delegated] {
            let out =
                node.call_env("ADD", ("req", Some(&pod), "eth0"), conf, &[("CNI_ARGS", args)]);
            assert_eq!(out.code(), 7, "{args} {conf}: {}", out.stdout);
            assert_clean(&node, args);
        }
    }
    let out = node.call_env(
        "ADD",
        ("req", Some(&pod), "eth0"),
        &in_process,
        &[("CNI_ARGS", "IP=10.94.0.5")],
    );
    assert_eq!(pod_ip(&out.assert_ok().json()), "10.94.0.5");
    node.call("DEL", "req", Some(&pod), "eth0", &in_process).assert_ok();
}

/// Defect 11. A state file listing one address twice is corrupt (101), left untouched.
#[test]
fn state_with_a_key_written_twice_is_corrupt() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.95.0.0/24", "");
    let dir = node.dir.join("ipam/t");
    std::fs::create_dir_all(&dir).unwrap();
    let twice = r#"{"version":1,"allocations":{"10.95.0.2":{"id":"x","ifname":"eth0"},"10.95.0.2":{"id":"y","ifname":"eth0"}}}"#;
    std::fs::write(dir.join("state.json"), twice).unwrap();
    let pod = Netns::new("fp");
    let out = node.call("ADD", "dup", Some(&pod), "eth0", &conf);
    assert_eq!(out.code(), 101, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("twice"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(dir.join("state.json")).unwrap(), twice);
    assert_eq!(host_ends(&node), 0);
}

/// Defect 13. `%` in CNI_IFNAME is code 4 up front (the kernel would name the link `e0`); a FIFO
/// as the subnet file fails fast with a clear error instead of blocking ADD.
#[test]
fn ifname_with_percent_and_fifo_subnet_file_fail_fast() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let conf = node.conf("1.1.0", "10.96.0.0/24", "");
    for ifname in ["e%d", "%d", "eth%"] {
        let out = node.call("ADD", "pct", Some(&pod), ifname, &conf);
        assert_eq!(out.code(), 4, "{ifname}: {}", out.stdout);
        assert_eq!(pod.ip(&["-o", "link"]).lines().count(), 1, "only lo in the pod");
        assert_clean(&node, ifname);
    }
    let fifo = node.dir.join("subnet.env");
    testlab::ok("mkfifo", [&fifo]);
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"t","type":"ferry","subnetFile":"{}","dataDir":"{}"}}"#,
        fifo.display(),
        node.dir.path_str("ipam")
    );
    let t0 = Instant::now();
    let out = node
        .call_bounded("ADD", ("fifo", Some(&pod), "eth0"), &conf, Duration::from_secs(5))
        .expect("ADD with a FIFO as subnet file must not block");
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("FIFO"), "{}", out.stdout);
    assert!(t0.elapsed() < Duration::from_secs(2), "fast: {:?}", t0.elapsed());
    assert_clean(&node, "after the FIFO");
}

/// Operator item (a): `logFile` / `logLevel`. One timestamped line per event with the verb,
/// container id, ifname and outcome; failures also on stderr; the file is never followed through
/// a symlink and logging never fails a verb.
#[test]
fn log_file_records_each_verb_and_never_follows_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    let pod = Netns::new("fp");
    let log = node.dir.join("ferry.log");
    let extra = format!(r#","logFile":"{}","logLevel":"debug""#, log.display());
    let conf = node.conf("1.1.0", "10.97.0.0/24", &extra);
    let r = node.add("logged", &pod, &conf);
    let bad =
        node.call_env("ADD", ("bad", Some(&pod), "eth1"), &conf, &[("CNI_ARGS", "IP=fd00::1")]);
    assert_eq!(bad.code(), 7);
    assert!(bad.stderr.contains("code 7") && bad.stderr.contains("fd00::1"), "{}", bad.stderr);
    node.call("DEL", "logged", Some(&pod), "eth0", &conf).assert_ok();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let ok_add = format!(
        "info ADD container=logged ifname=eth0 outcome=ok ip={}",
        r["ips"][0]["address"].as_str().unwrap()
    );
    assert!(lines.iter().any(|l| l.ends_with(&ok_add)), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("error ADD container=bad ifname=eth1 outcome=error code=7")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.contains("debug DEL container=logged ifname=eth0 step=del-release")),
        "{text}"
    );
    assert!(
        lines.iter().all(|l| l.len() > 24 && l.as_bytes()[10] == b'T' && l[..24].ends_with('Z')),
        "{text}"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    quiet_levels_symlinks_and_bad_levels(&node, &pod, &log, &text);
}

/// Level error: successes are not logged. A symlink at logFile is refused, the verb succeeds. A
/// bad level is a config error.
fn quiet_levels_symlinks_and_bad_levels(
    node: &Node,
    pod: &Netns,
    log: &std::path::Path,
    text: &str,
) {
    let quiet = node.conf(
        "1.1.0",
        "10.97.0.0/24",
        &format!(r#","logFile":"{}","logLevel":"error""#, log.display()),
    );
    node.add("quiet", pod, &quiet);
    assert_eq!(std::fs::read_to_string(log).unwrap(), text, "nothing logged at level error");
    let victim = node.dir.join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let link = node.dir.join("link.log");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let via_link =
        node.conf("1.1.0", "10.97.0.0/24", &format!(r#","logFile":"{}""#, link.display()));
    let out = node.call("DEL", "quiet", Some(pod), "eth0", &via_link);
    out.assert_ok();
    assert!(out.stderr.contains("not logging"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    let bad_level = node.conf("1.1.0", "10.97.0.0/24", r#","logFile":"/x","logLevel":"loud""#);
    assert_eq!(node.call("ADD", "lv", Some(pod), "eth0", &bad_level).code(), 7);
    assert_clean(node, "end");
}

/// Operator item (b): `--help` and `--version` on both binaries: exit 0, the version and the
/// supported CNI versions on stdout.
#[test]
fn help_and_version_flags() {
    for bin in ["ferry", "ferry-ipam"] {
        for flag in ["--help", "--version"] {
            let out = testlab::run(testlab::bin(bin).to_str().unwrap(), [flag]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{bin} {flag}");
            assert!(text.contains(bin) && text.contains(env!("CARGO_PKG_VERSION")), "{text}");
            assert!(text.contains("0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{text}");
        }
    }
}
