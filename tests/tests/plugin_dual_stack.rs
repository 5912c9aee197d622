//! IPv6 and dual stack: the `ferry` binary driven like a runtime against real namespaces, with the
//! node subnet file ferryd writes (flannel's `FLANNEL_SUBNET` / `FLANNEL_IPV6_SUBNET`): one address
//! per family, per-family routes in the pod and on the host, CHECK / DEL / GC per family, the
//! legacy-version refusal, and no DAD wait (a ping6 right after ADD succeeds every time).

mod common;
use common::*;
use serde_json::Value;
use testlab::Netns;

/// A dual-stack node subnet file, as ferryd writes it.
fn dual(n: u8) -> String {
    format!(
        "FLANNEL_NETWORK=10.{n}.0.0/16\nFLANNEL_SUBNET=10.{n}.1.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:{n}::/48\nFLANNEL_IPV6_SUBNET=fd00:{n}:0:1::/64\n\
         FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
}

/// An IPv6-only node subnet file: no IPv4 key at all.
fn v6_only(n: u8) -> String {
    format!(
        "FLANNEL_IPV6_NETWORK=fd00:{n}::/48\nFLANNEL_IPV6_SUBNET=fd00:{n}:0:1::/64\nFLANNEL_MTU=1450\n"
    )
}

/// `ip -j addr show dev <dev>` addresses of `family` ("inet" / "inet6") and global scope, as
/// `addr/prefix`.
fn addrs(ns: &Netns, dev: &str, family: &str) -> Vec<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    let mut out = vec![];
    for a in v[0]["addr_info"].as_array().unwrap() {
        if a["family"] == family && a["scope"] == "global" {
            out.push(format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]));
        }
    }
    out
}

/// Every route of `family` ("-4" / "-6") in `ns`'s main table, as `ip -j` objects.
fn routes(ns: &Netns, family: &str) -> Vec<Value> {
    ns.ip_json(&[family, "route", "show"]).as_array().unwrap().clone()
}

fn has_route(rs: &[Value], dst: &str, gw: Option<&str>, dev: &str) -> bool {
    rs.iter().any(|r| r["dst"] == dst && r["dev"] == dev && gw.is_none_or(|g| r["gateway"] == g))
}

/// What ADD must have made for a dual-stack (or single-family) attachment: the result's addresses
/// on the pod's eth0, per family the on-link gateway route and the default route in the pod, and
/// on the node the gateway address on the host end and the proto-114 route to the pod.
fn assert_wired(node: &Node, pod: &Netns, r: &Value, families: &[(&str, &str, &str, &str)]) {
    let host_if = r["interfaces"][0]["name"].as_str().unwrap();
    let ips = r["ips"].as_array().unwrap();
    assert_eq!(ips.len(), families.len(), "{r}");
    for (ip, (fam, inet, gw, plen)) in ips.iter().zip(families) {
        let addr = ip["address"].as_str().unwrap();
        let bare = addr.split('/').next().unwrap();
        assert!(addr.ends_with(&format!("/{plen}")), "{addr}");
        assert_eq!(ip["gateway"], *gw, "{r}");
        assert_eq!(ip["interface"], 1, "{r}");
        assert_eq!(addrs(pod, "eth0", inet), vec![addr.to_string()], "pod {inet} addresses");
        let pod_rs = routes(pod, fam);
        assert!(has_route(&pod_rs, gw, None, "eth0"), "pod route to {gw}: {pod_rs:?}");
        assert!(has_route(&pod_rs, "default", Some(gw), "eth0"), "pod default: {pod_rs:?}");
        let host_bits = if *inet == "inet" { 32 } else { 128 };
        assert!(
            addrs(&node.ns, host_if, inet).contains(&format!("{gw}/{host_bits}")),
            "gateway {gw} on {host_if}"
        );
        let host_rs = node.ns.ip_json(&[fam, "route", "show", "proto", "114"]);
        let host_rs = host_rs.as_array().unwrap();
        assert!(has_route(host_rs, bare, None, host_if), "host route to {bare}: {host_rs:?}");
    }
}

#[test]
fn dual_stack_add_check_del_in_every_spec_version() {
    let node = Node::new();
    for (i, ver) in VERSIONS.iter().enumerate() {
        let pod = Netns::new("fp");
        let conf = node.conf_file(ver, &dual(71), "");
        let cid = format!("ds{i}");
        if *ver <= "0.2.0" {
            // A result of 0.1.0 / 0.2.0 cannot carry the attachment: refused up front.
            let out = node.call("ADD", &cid, Some(&pod), "eth0", &conf);
            assert_eq!(out.code(), 1, "{ver}: {}", out.stdout);
            let e = out.json();
            assert!(e["msg"].as_str().unwrap().contains("0.3.0"), "{e}");
            assert!(e["details"].as_str().unwrap().contains("cniVersion"), "{e}");
            assert!(!pod.sh("ip link show eth0").status.success(), "no pod interface");
            assert_clean(&node, &format!("refused ADD in {ver}"));
            continue;
        }
        let r = node.add(&cid, &pod, &conf);
        assert_eq!(r["cniVersion"], *ver);
        if *ver <= "0.4.0" {
            assert_eq!(
                (&r["ips"][0]["version"], &r["ips"][1]["version"]),
                (&"4".into(), &"6".into())
            );
        }
        let dsts: Vec<&str> =
            r["routes"].as_array().unwrap().iter().map(|x| x["dst"].as_str().unwrap()).collect();
        assert_eq!(dsts, ["0.0.0.0/0", "::/0"], "{r}");
        assert_wired(
            &node,
            &pod,
            &r,
            &[("-4", "inet", "10.71.1.1", "24"), ("-6", "inet6", "fd00:71:0:1::1", "64")],
        );
        assert_eq!(pod.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1450, "FLANNEL_MTU");
        // The host end's only link-local address is Ferry's fe80::1 (no kernel-made one); the
        // pod end keeps the kernel's, without DAD.
        let host_if = r["interfaces"][0]["name"].as_str().unwrap();
        let h = &node.ns.ip_json(&["-d", "link", "show", host_if])[0];
        assert_eq!(h["inet6_addr_gen_mode"], "none", "{h}");
        let ll = node.ns.ip(&["-6", "-o", "addr", "show", "dev", host_if, "scope", "link"]);
        assert!(ll.contains("fe80::1/64") && ll.lines().count() == 1, "{ll}");
        assert_eq!(pod.sysctl("net.ipv6.conf.eth0.accept_dad"), "0");
        for ip in pod_ips(&r) {
            assert!(node.ns.ping(&ip), "node -> pod {ip} in {ver}");
        }
        assert_eq!(node.ns.sysctl("net.ipv4.ip_forward"), "1");
        assert_eq!(node.ns.sysctl("net.ipv6.conf.all.forwarding"), "1");
        // A repeated ADD re-applies both families (every "already exists" proven ours).
        let again = node.call("ADD", &cid, Some(&pod), "eth0", &conf).assert_ok().json();
        assert_eq!(pod_ips(&again), pod_ips(&r), "{ver}");
        if *ver >= "0.4.0" {
            node.call("CHECK", &cid, Some(&pod), "eth0", &with_prev(&conf, &r)).assert_ok();
        }
        node.call("DEL", &cid, Some(&pod), "eth0", &with_prev(&conf, &r)).assert_ok();
        assert!(!pod.sh("ip link show eth0").status.success(), "pod eth0 gone in {ver}");
        assert_clean(&node, &format!("DEL in {ver}"));
    }
}

#[test]
fn ipv6_only_node() {
    let node = Node::new();
    for ver in ["0.2.0", "1.0.0", "1.1.0"] {
        let (a, b) = (Netns::new("fp"), Netns::new("fp"));
        let conf = node.conf_file(ver, &v6_only(72), "");
        let ra = node.add("a6", &a, &conf);
        let rb = node.add("b6", &b, &conf);
        let (ipa, ipb) = if ver == "0.2.0" {
            // One family fits the legacy shape: `ip6` only.
            assert!(ra.get("ip4").is_none(), "{ra}");
            assert_eq!(ra["ip6"]["gateway"], "fd00:72:0:1::1", "{ra}");
            let bare =
                |r: &Value| r["ip6"]["ip"].as_str().unwrap().split('/').next().unwrap().to_string();
            (bare(&ra), bare(&rb))
        } else {
            assert_eq!(ra["ips"].as_array().unwrap().len(), 1, "{ra}");
            assert_eq!(ra["routes"], serde_json::json!([{"dst":"::/0"}]), "{ra}");
            assert_wired(&node, &a, &ra, &[("-6", "inet6", "fd00:72:0:1::1", "64")]);
            (pod_ips(&ra)[0].clone(), pod_ips(&rb)[0].clone())
        };
        assert!(addrs(&a, "eth0", "inet").is_empty(), "no IPv4 address in an IPv6-only pod");
        assert!(routes(&a, "-4").is_empty(), "no IPv4 route: {:?}", routes(&a, "-4"));
        // Forwarded by the node right after ADD (needs the host end's link-local: see add.rs).
        assert!(a.ping(&ipb) && b.ping(&ipa), "pod <-> pod over IPv6 ({ver})");
        assert!(a.ping("fd00:72:0:1::1") && node.ns.ping(&ipa), "pod <-> node ({ver})");
        if ver >= "0.4.0" {
            node.call("CHECK", "a6", Some(&a), "eth0", &with_prev(&conf, &ra)).assert_ok();
        }
        node.call("DEL", "a6", Some(&a), "eth0", &conf).assert_ok();
        node.call("DEL", "b6", Some(&b), "eth0", &conf).assert_ok();
        assert_clean(&node, ver);
    }
}

/// The pod can send from each of its addresses the moment ADD returns: no sleep, no wait for the
/// links between ADD and the first packet, 20 times in a row (each a fresh pod): ping6 and ping
/// to the node's end of the pair, and to the pod added before it.
#[test]
fn ping6_right_after_add_succeeds_every_time() {
    let node = Node::new();
    let conf = node.conf_file("1.0.0", &dual(73), "");
    let mut pods: Vec<(Netns, Value)> = vec![];
    for i in 0..20 {
        let pod = Netns::new("fp");
        let cid = format!("now{i}");
        // `call`, not `add`: nothing waits for the kernel between ADD and the pings. The first
        // ping is to the new pod from another one (forwarded by the node: the path that needs the
        // host end's link-local address at once).
        let r = node.call("ADD", &cid, Some(&pod), "eth0", &conf).assert_ok().json();
        if let Some((prev_pod, _)) = pods.last() {
            let new = pod_ips(&r);
            assert!(prev_pod.ping(&new[1]), "#{i}: ping6 previous pod -> new pod {}", new[1]);
        }
        assert!(pod.ping("fd00:73:0:1::1"), "#{i}: ping6 pod -> node right after ADD");
        assert!(pod.ping("10.73.1.1"), "#{i}: ping pod -> node right after ADD");
        if let Some((prev_pod, prev)) = pods.last() {
            // Forwarded by the node, both ways: the new pod's first packets and the node's first
            // neighbour solicitation towards the new pod.
            let ips = pod_ips(prev);
            assert!(pod.ping(&ips[1]), "#{i}: ping6 pod -> previous pod {}", ips[1]);
            assert!(pod.ping(&ips[0]), "#{i}: ping pod -> previous pod {}", ips[0]);
            assert!(prev_pod.ping(&pod_ips(&r)[0]), "#{i}: ping previous pod -> new pod");
        }
        pods.push((pod, r));
    }
    for (i, (pod, _)) in pods.iter().enumerate() {
        node.call("DEL", &format!("now{i}"), Some(pod), "eth0", &conf).assert_ok();
    }
    assert_clean(&node, "after 20 DELs");
}

#[test]
fn configured_routes_go_via_their_family_gateway() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let extra =
        r#","routes":[{"dst":"10.0.0.0/8"},{"dst":"fd00:99::/48"},{"dst":"192.168.0.0/16"}]"#;
    let conf = node.conf_file("1.0.0", &dual(74), extra);
    let r = node.add("rt", &pod, &conf);
    let v4 = routes(&pod, "-4");
    let v6 = routes(&pod, "-6");
    assert!(has_route(&v4, "10.0.0.0/8", Some("10.74.1.1"), "eth0"), "{v4:?}");
    assert!(has_route(&v4, "192.168.0.0/16", Some("10.74.1.1"), "eth0"), "{v4:?}");
    assert!(has_route(&v6, "fd00:99::/48", Some("fd00:74:0:1::1"), "eth0"), "{v6:?}");
    // No default route configured: each family still reaches its node subnet via its gateway.
    assert!(has_route(&v4, "10.74.1.0/24", Some("10.74.1.1"), "eth0"), "{v4:?}");
    assert!(has_route(&v6, "fd00:74:0:1::/64", Some("fd00:74:0:1::1"), "eth0"), "{v6:?}");
    assert!(!v4.iter().chain(&v6).any(|x| x["dst"] == "default"), "{v4:?} {v6:?}");
    node.call("CHECK", "rt", Some(&pod), "eth0", &with_prev(&conf, &r)).assert_ok();
    node.call("DEL", "rt", Some(&pod), "eth0", &conf).assert_ok();
}

#[test]
fn check_verifies_each_family() {
    let node = Node::new();
    let conf = node.conf_file("1.0.0", &dual(75), "");
    let cases: &[(&str, Breaker)] = &[
        ("IPv6 address", &|pod, _n, ips, _h| {
            pod.ip(&["addr", "del", &format!("{}/64", ips[1]), "dev", "eth0"]);
        }),
        ("IPv6 default route", &|pod, _n, _ips, _h| {
            pod.ip(&["-6", "route", "del", "default"]);
        }),
        ("IPv6 gateway route", &|pod, _n, _ips, _h| {
            pod.ip(&["-6", "route", "del", "fd00:75:0:1::1", "dev", "eth0"]);
        }),
        ("IPv6 host route", &|_pod, n, ips, _h| {
            n.ns.ip(&["-6", "route", "del", &format!("{}/128", ips[1])]);
        }),
        ("IPv6 gateway address", &|_pod, n, _ips, h| {
            n.ns.ip(&["addr", "del", "fd00:75:0:1::1/128", "dev", h]);
        }),
        ("IPv4 default route", &|pod, _n, _ips, _h| {
            pod.ip(&["-4", "route", "del", "default"]);
        }),
        ("IPv4 host route", &|_pod, n, ips, _h| {
            n.ns.ip(&["-4", "route", "del", &format!("{}/32", ips[0])]);
        }),
    ];
    check_catches_each(&node, &conf, cases);
    // A prevResult that lists only the IPv4 address: IPAM holds an IPv6 one it does not list.
    let pod = Netns::new("fp");
    let r = node.add("chkv4", &pod, &conf);
    let mut only_v4 = r.clone();
    only_v4["ips"].as_array_mut().unwrap().truncate(1);
    let out = node.call("CHECK", "chkv4", Some(&pod), "eth0", &with_prev(&conf, &only_v4));
    assert_eq!(out.code(), 103, "{}", out.stdout);
    assert!(out.stdout.contains("fd00:75:0:1::"), "{}", out.stdout);
    node.call("DEL", "chkv4", Some(&pod), "eth0", &conf).assert_ok();
    assert_clean(&node, "after CHECK cases");
}

#[test]
fn gc_releases_both_families() {
    let node = Node::new();
    let conf = node.conf_file("1.1.0", &dual(76), "");
    let (a, b) = (Netns::new("fp"), Netns::new("fp"));
    let ra = node.add("keep", &a, &conf);
    let rb = node.add("drop", &b, &conf);
    assert_eq!(node.allocated().len(), 4, "{}", node.ipam_state());
    let gc = node.conf_file(
        "1.1.0",
        &dual(76),
        r#","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]"#,
    );
    node.call("GC", "", None, "", &gc).assert_ok();
    let mut kept = pod_ips(&ra);
    kept.sort();
    assert_eq!(node.allocated(), kept, "both of the dropped pod's IPs released");
    assert!(!b.sh("ip link show eth0").status.success(), "dropped pod's veth removed");
    for ip in pod_ips(&rb) {
        let rs = node.ns.ip(&["route", "show", "proto", "114", "match", &ip]);
        let fam = if ip.contains(':') { "-6" } else { "-4" };
        let rs6 = node.ns.ip(&[fam, "route", "show", &ip]);
        assert!(rs.trim().is_empty() && rs6.trim().is_empty(), "host route to {ip} left");
    }
    node.call("CHECK", "keep", Some(&a), "eth0", &with_prev(&conf, &ra)).assert_ok();
    for ip in pod_ips(&ra) {
        assert!(node.ns.ping(&ip), "kept pod {ip} still reachable");
    }
    // No list: nothing is valid, both families of the last pod go too.
    node.call("GC", "", None, "", &conf).assert_ok();
    assert_eq!(node.allocated(), Vec::<String>::new());
    assert_clean(&node, "after GC of everything");
}

/// One family that cannot be configured (IPv6 disabled in the pod) fails the whole ADD and rolls
/// back both: no link, neither address held, no host route of either family.
#[test]
fn a_family_that_cannot_be_configured_rolls_back_both() {
    let node = Node::new();
    let conf = node.conf_file("1.0.0", &dual(77), "");
    let pod = Netns::new("fp");
    let off =
        pod.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    assert!(off.status.success(), "{}", String::from_utf8_lossy(&off.stderr));
    let out = node.call("ADD", "noip6", Some(&pod), "eth0", &conf);
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(out.stdout.contains("fd00:77:0:1::"), "names the IPv6 step: {}", out.stdout);
    assert!(!pod.sh("ip link show eth0").status.success(), "pod interface rolled back");
    assert_clean(&node, "failed dual-stack ADD");
    // The same pod with IPv6 back on: both families, nothing left over from the failure.
    pod.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0");
    let r = node.add("noip6", &pod, &conf);
    assert_eq!(pod_ips(&r).len(), 2, "{r}");
    node.call("DEL", "noip6", Some(&pod), "eth0", &conf).assert_ok();
    assert_clean(&node, "after DEL");
}
