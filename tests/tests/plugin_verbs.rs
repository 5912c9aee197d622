//! The `ferry` binary driven exactly like a runtime (CNI_* env + config on stdin) against real
//! network namespaces: every verb in every spec version.

mod common;
use common::*;
use testlab::Netns;

#[test]
fn version_answers_with_dummy_env() {
    let node = Node::new();
    let env = [
        ("CNI_COMMAND", "VERSION"),
        ("CNI_NETNS", "dummy"),
        ("CNI_IFNAME", "dummy"),
        ("CNI_PATH", "dummy"),
        ("CNI_CONTAINERID", ""),
    ];
    let out =
        testlab::cni(Some(&node.ns), &testlab::bin("ferry"), &env, r#"{"cniVersion":"1.1.0"}"#);
    out.assert_ok();
    let v = out.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    let sv: Vec<&str> =
        v["supportedVersions"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert_eq!(sv, VERSIONS);
    let out = testlab::cni(Some(&node.ns), &testlab::bin("ferry"), &env, "");
    out.assert_ok();
}

#[test]
fn about_text_without_command() {
    let out = testlab::cni(None, &testlab::bin("ferry"), &[], "");
    assert_eq!(out.rc, 0);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("ferry"));
}

#[test]
fn add_check_del_in_every_spec_version() {
    let node = Node::new();
    for (i, ver) in VERSIONS.iter().enumerate() {
        let pod = Netns::new("fp");
        let conf = node.conf(ver, "10.60.0.0/24", "");
        let cid = format!("ctr{i}");
        let r = node.add(&cid, &pod, &conf);
        assert_eq!(r["cniVersion"], *ver, "reply carries the request's version");
        if *ver <= "0.2.0" {
            assert!(r["ip4"]["ip"].as_str().unwrap().ends_with("/24"), "{r}");
            assert_eq!(r["ip4"]["gateway"], "10.60.0.1");
            assert!(r.get("ips").is_none() && r.get("interfaces").is_none());
        } else {
            assert_eq!(r["interfaces"][1]["name"], "eth0");
            assert_eq!(r["interfaces"][1]["sandbox"], pod.path());
            assert!(r["interfaces"][0].get("sandbox").is_none());
            assert_eq!(r["ips"][0]["interface"], 1);
            assert_eq!(r["ips"][0]["gateway"], "10.60.0.1");
            let has_version = r["ips"][0].get("version").is_some();
            assert_eq!(
                has_version,
                *ver >= "0.3.0" && *ver <= "0.4.0",
                "ips[].version in {ver}: {r}"
            );
            if *ver == "1.1.0" {
                assert!(r["interfaces"][1]["mtu"].is_u64());
            } else {
                assert!(r["interfaces"][1].get("mtu").is_none());
            }
        }
        let ip = pod_ip(&r);
        assert!(node.ns.ping(&ip), "host -> pod {ip} in {ver}");
        if *ver >= "0.4.0" {
            node.call("CHECK", &cid, Some(&pod), "eth0", &with_prev(&conf, &r)).assert_ok();
        } else {
            let out = node.call("CHECK", &cid, Some(&pod), "eth0", &with_prev(&conf, &r));
            assert_eq!(out.code(), 1, "CHECK before 0.4.0 is a version error");
        }
        let del_conf = if *ver >= "0.4.0" { with_prev(&conf, &r) } else { conf.clone() };
        let out = node.call("DEL", &cid, Some(&pod), "eth0", &del_conf);
        out.assert_ok();
        assert!(out.stdout.is_empty(), "DEL prints nothing");
        assert!(!pod.sh("ip link show eth0").status.success(), "pod eth0 gone after DEL in {ver}");
        assert!(node.links().iter().all(|l| !l.starts_with("fry")), "host veth gone in {ver}");
    }
}

#[test]
fn add_wires_pod_and_host_as_documented() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let conf = node.conf("1.0.0", "10.61.0.0/24", r#","mtu":1400"#);
    let r = node.add("wire", &pod, &conf);
    let ip = pod_ip(&r);
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(host_if.len(), 15);
    // Pod side: veth, up, MTU, address with the subnet prefix, gateway /32 and default route.
    let l = &pod.ip_json(&["-d", "link", "show", "eth0"])[0];
    assert_eq!(l["linkinfo"]["info_kind"], "veth");
    assert_eq!(l["mtu"], 1400);
    assert!(l["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(l["address"], r["interfaces"][1]["mac"]);
    let addrs = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    let routes = pod.ip(&["-4", "route"]);
    assert!(routes.contains("default via 10.61.0.1 dev eth0"), "{routes}");
    assert!(routes.contains("10.61.0.1 dev eth0 scope link"), "{routes}");
    // Host side: same MTU, gateway /32 on the host end, /32 route to the pod tagged with ferry's proto.
    let h = &node.ns.ip_json(&["link", "show", &host_if])[0];
    assert_eq!(h["mtu"], 1400);
    let haddr = node.ns.ip(&["-4", "-o", "addr", "show", "dev", &host_if]);
    assert!(haddr.contains("10.61.0.1/32"), "{haddr}");
    let hroutes = node.ns.ip(&["-4", "route", "show", &format!("{ip}/32")]);
    assert!(
        hroutes.contains(&format!("dev {host_if}")) && hroutes.contains("proto 114"),
        "{hroutes}"
    );
    // Forwarding on in the namespace the plugin ran in. An IPv4-only attachment leaves the
    // kernel no IPv6 address to make on either end (addrgenmode none, set before carrier; ADD
    // returned with both ends up, so linkwatch has run): no link-local address, no fe80::/64.
    assert_eq!(node.ns.sysctl("net.ipv4.ip_forward"), "1");
    for (ns, dev) in [(&node.ns, host_if.as_str()), (&pod, "eth0")] {
        let l = &ns.ip_json(&["-d", "link", "show", dev])[0];
        assert_eq!(l["inet6_addr_gen_mode"], "none", "{dev}: {l}");
        assert_eq!(ns.ip(&["-6", "-o", "addr", "show", "dev", dev]).trim(), "", "{dev}");
        assert_eq!(ns.ip(&["-6", "route", "show", "dev", dev]).trim(), "", "{dev}");
    }
    node.call("DEL", "wire", Some(&pod), "eth0", &conf).assert_ok();
}

#[test]
fn pods_on_one_node_reach_each_other_and_the_host() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.62.0.0/24", "");
    let (a, b) = (Netns::new("fp"), Netns::new("fp"));
    let ra = node.add("pa", &a, &conf);
    let rb = node.add("pb", &b, &conf);
    let (ipa, ipb) = (pod_ip(&ra), pod_ip(&rb));
    assert_ne!(ipa, ipb);
    assert!(a.ping(&ipb), "pod a -> pod b");
    assert!(b.ping(&ipa), "pod b -> pod a");
    assert!(node.ns.ping(&ipa) && node.ns.ping(&ipb), "host -> pods");
    assert!(a.ping("10.62.0.1"), "pod -> gateway");
    for (c, p) in [("pa", &a), ("pb", &b)] {
        node.call("DEL", c, Some(p), "eth0", &conf).assert_ok();
    }
}

#[test]
fn repeated_add_is_idempotent() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let conf = node.conf("1.0.0", "10.63.0.0/24", "");
    let r1 = node.add("same", &pod, &conf);
    let r2 = node.add("same", &pod, &conf);
    assert_eq!(pod_ip(&r1), pod_ip(&r2));
    assert_eq!(r1["interfaces"], r2["interfaces"]);
    node.call("CHECK", "same", Some(&pod), "eth0", &with_prev(&conf, &r2)).assert_ok();
    // A second interface of the same container on the same network would share eth0's gateway
    // and routes: rejected (see plugin_trust); DEL of it leaves eth0's allocation alone.
    assert_eq!(node.call("ADD", "same", Some(&pod), "eth1", &conf).code(), 100);
    node.call("DEL", "same", Some(&pod), "eth1", &conf).assert_ok();
    node.call("CHECK", "same", Some(&pod), "eth0", &with_prev(&conf, &r1)).assert_ok();
    node.call("DEL", "same", Some(&pod), "eth0", &conf).assert_ok();
}

#[test]
fn del_succeeds_for_whatever_is_already_gone() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.64.0.0/29", "");
    // netns deleted before DEL: still succeeds and releases the IP.
    let pod = Netns::new("fp");
    let r = node.add("gone", &pod, &conf);
    let ip = pod_ip(&r);
    let path = pod.path();
    drop(pod);
    let env_del = |netns: &str| {
        let p = format!("{}:/usr/lib/cni", testlab::bin_dir().display());
        testlab::cni(
            Some(&node.ns),
            &testlab::bin("ferry"),
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "gone"),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &p),
            ],
            &conf,
        )
    };
    env_del(&path).assert_ok();
    assert!(!node.allocated().contains(&ip), "IP released: {}", node.ipam_state());
    // twice, with an empty CNI_NETNS, and for a container never added
    env_del(&path).assert_ok();
    env_del("").assert_ok();
    node.call("DEL", "never-added", None, "eth0", &conf).assert_ok();
    // An IP released by a netns-less DEL is allocatable again (the /29 has 5 addresses).
    let pod = Netns::new("fp");
    node.add("again", &pod, &conf);
    let out = node.call("DEL", "again", None, "eth0", &conf);
    out.assert_ok();
    assert!(
        node.links().iter().all(|l| !l.starts_with("fry")),
        "DEL without netns still removes the host veth"
    );
}

#[test]
fn check_reports_what_was_removed() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.65.0.0/24", "");
    let cases: &[(&str, Breaker)] = &[
        ("address", &|pod, _n, ips, _h| {
            pod.ip(&["addr", "del", &format!("{}/24", ips[0]), "dev", "eth0"]);
        }),
        ("default route", &|pod, _n, _ip, _h| {
            pod.ip(&["route", "del", "default"]);
        }),
        ("host route", &|_pod, n, ips, _h| {
            n.ns.ip(&["route", "del", &format!("{}/32", ips[0])]);
        }),
        ("interface down", &|pod, _n, _ip, _h| {
            pod.ip(&["link", "set", "eth0", "down"]);
        }),
        ("host interface", &|_pod, n, _ip, h| {
            n.ns.ip(&["link", "del", h]);
        }),
    ];
    check_catches_each(&node, &conf, cases);
    // No prevResult: a config error. A prevResult from another netns: mismatch.
    let pod = Netns::new("fp");
    let r = node.add("chkx", &pod, &conf);
    assert_eq!(node.call("CHECK", "chkx", Some(&pod), "eth0", &conf).code(), 7);
    let other = Netns::new("fp");
    assert_eq!(node.call("CHECK", "chkx", Some(&other), "eth0", &with_prev(&conf, &r)).code(), 103);
    // IPAM record removed (GC with an empty valid list keeps nothing) → CHECK fails.
    let gc_conf = node.conf("1.1.0", "10.65.0.0/24", "");
    node.call("GC", "", None, "", &gc_conf).assert_ok();
    assert_eq!(node.call("CHECK", "chkx", Some(&pod), "eth0", &with_prev(&conf, &r)).code(), 103);
}

#[test]
fn gc_keeps_only_valid_attachments_under_either_key() {
    let node = Node::new();
    let conf = node.conf("1.1.0", "10.66.0.0/24", "");
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments", "both", "neither"] {
        let (a, b) = (Netns::new("fp"), Netns::new("fp"));
        let ra = node.add("keep", &a, &conf);
        let rb = node.add("drop", &b, &conf);
        let list = r#"[{"containerID":"keep","ifname":"eth0"}]"#;
        let extra = match key {
            "both" => {
                format!(r#","cni.dev/valid-attachments":{list},"cni.dev/attachments":{list}"#)
            }
            "neither" => String::new(),
            k => format!(r#","{k}":{list}"#),
        };
        let gc_conf = node.conf("1.1.0", "10.66.0.0/24", &extra);
        let out = node.call("GC", "", None, "", &gc_conf);
        out.assert_ok();
        assert!(out.stdout.is_empty());
        let state = node.allocated();
        assert!(!state.contains(&pod_ip(&rb)), "{key}: dropped IP released: {state:?}");
        assert!(!b.sh("ip link show eth0").status.success(), "{key}: dropped veth removed");
        if key == "neither" {
            assert!(!state.contains(&pod_ip(&ra)), "no list = empty valid set: {state:?}");
        } else {
            assert!(state.contains(&pod_ip(&ra)), "{key}: kept IP stays: {state:?}");
            node.call("CHECK", "keep", Some(&a), "eth0", &with_prev(&conf, &ra)).assert_ok();
        }
        node.call("DEL", "keep", Some(&a), "eth0", &conf).assert_ok();
        node.call("DEL", "drop", Some(&b), "eth0", &conf).assert_ok();
    }
}

#[test]
fn status_reports_readiness() {
    let node = Node::new();
    let ok = node.conf("1.1.0", "10.67.0.0/24", "");
    node.call("STATUS", "", None, "", &ok).assert_ok();
    let missing = format!(
        r#"{{"cniVersion":"1.1.0","name":"t","type":"ferry","subnetFile":"{}","dataDir":"{}"}}"#,
        node.dir.path_str("nope.env"),
        node.dir.path_str("ipam")
    );
    assert_eq!(node.call("STATUS", "", None, "", &missing).code(), 50);
    // A /30 has one usable address: after one ADD the pool is full.
    let tiny = node.conf("1.1.0", "10.67.1.0/30", "");
    node.call("STATUS", "", None, "", &tiny).assert_ok();
    let pod = Netns::new("fp");
    node.add("only", &pod, &tiny);
    assert_eq!(node.call("STATUS", "", None, "", &tiny).code(), 50);
    // STATUS / GC before 1.1.0 are version errors.
    assert_eq!(
        node.call("STATUS", "", None, "", &node.conf("1.0.0", "10.67.0.0/24", "")).code(),
        1
    );
    assert_eq!(node.call("GC", "", None, "", &node.conf("1.0.0", "10.67.0.0/24", "")).code(), 1);
    node.call("DEL", "only", Some(&pod), "eth0", &tiny).assert_ok();
}

#[test]
fn node_subnet_from_flannel_subnet_file() {
    let node = Node::new();
    let f = node.dir.join("subnet.env");
    std::fs::write(&f, "FLANNEL_NETWORK=10.68.0.0/16\nFLANNEL_SUBNET=10.68.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"t","type":"ferry","subnetFile":"{}","dataDir":"{}"}}"#,
        f.display(),
        node.dir.path_str("ipam")
    );
    let pod = Netns::new("fp");
    let r = node.add("sf", &pod, &conf);
    assert!(pod_ip(&r).starts_with("10.68.5."), "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.68.5.1");
    assert_eq!(pod.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1450, "FLANNEL_MTU applied");
    // FERRY_ keys are accepted too.
    std::fs::write(&f, "FERRY_SUBNET=10.68.6.1/24\n").unwrap();
    let pod2 = Netns::new("fp");
    assert!(pod_ip(&node.add("sf2", &pod2, &conf)).starts_with("10.68.6."));
    node.call("DEL", "sf", Some(&pod), "eth0", &conf).assert_ok();
    node.call("DEL", "sf2", Some(&pod2), "eth0", &conf).assert_ok();
}

#[test]
fn parallel_adds_get_distinct_ips() {
    let node = Node::new();
    let conf = node.conf("1.0.0", "10.69.0.0/24", "");
    let pods: Vec<Netns> = (0..20).map(|_| Netns::new("fp")).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.add(&format!("par{i}"), p, conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<String> = results.iter().map(pod_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "20 distinct IPs");
    for (i, p) in pods.iter().enumerate() {
        node.call("DEL", &format!("par{i}"), Some(p), "eth0", &conf).assert_ok();
    }
}
