//! ferry-netlink against the real kernel. Run inside the sandbox only:
//!   tests/sandbox.sh cargo test -p ferry-netlink --offline
//! Every test works in fresh `ip netns` namespaces (tests run in parallel threads).

use ferry_netlink::{
    netns, nftgen, sysctl, Event, EventSocket, Netlink, Nexthop, Route, Scope, RTPROT_FERRY,
    RTPROT_FERRY_POD,
};
use ipnetwork::IpNetwork;
use std::fs::File;
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use testlab::{require_sandbox, Netns};

fn open(ns: &Netns) -> File {
    File::open(ns.path()).expect("open netns")
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// A namespace with a handle inside it and an up veth `v0` whose peer `v1` (up) is in `other`.
struct Lab {
    host: Netns,
    other: Netns,
    nl: Netlink,
    v0: u32,
}

fn lab() -> Lab {
    require_sandbox();
    let host = Netns::new("nlh");
    let other = Netns::new("nlo");
    let mut nl = Netlink::in_netns(&open(&host)).unwrap();
    nl.create_veth("v0", "v1", &open(&other), None, None).unwrap();
    let v0 = nl.link_by_name("v0").unwrap().unwrap().index;
    let mut peer = Netlink::in_netns(&open(&other)).unwrap();
    let v1 = peer.link_by_name("v1").unwrap().unwrap().index;
    peer.set_up(v1).unwrap();
    Lab { host, other, nl, v0 }
}

#[test]
fn veth_peer_lands_in_other_netns_with_name_mtu_and_alias() {
    require_sandbox();
    let host = Netns::new("nlh");
    let ctr = Netns::new("nlc");
    let home = File::open(netns::THREAD_NETNS).unwrap();
    let mut nl = Netlink::in_netns(&open(&host)).unwrap();
    assert!(netns::is_current(&home).unwrap(), "thread left in another namespace");
    nl.create_veth("vethT", "eth0", &open(&ctr), Some(1400), Some("default/pod-a")).unwrap();

    let h = nl.link_by_name("vethT").unwrap().expect("host end");
    assert!(h.up, "host end should be up: {h:?}");
    assert_eq!(h.mtu, 1400);
    assert_eq!(h.kind.as_deref(), Some("veth"));
    assert_eq!(h.alias.as_deref(), Some("default/pod-a"));
    assert!(h.mac.is_some());
    let peer_index = h.peer_index.expect("peer index");

    let mut c = Netlink::in_netns(&open(&ctr)).unwrap();
    let p = c.link_by_name("eth0").unwrap().expect("peer in container netns");
    assert_eq!((p.index, p.mtu, p.up), (peer_index, 1400, false));
    assert_eq!(p.peer_index, Some(h.index));
    let shown = ctr.ip_json(&["link", "show", "eth0"]);
    assert_eq!(shown[0]["mtu"], 1400);
    assert!(host.ip_json(&["link", "show", "vethT"])[0]["ifalias"] == "default/pod-a");
    assert!(nl.link_by_name("eth0").unwrap().is_none(), "peer must not be in the host netns");

    let again = nl.create_veth("vethT", "eth1", &open(&ctr), None, None).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AlreadyExists, "{again}");
}

#[test]
fn link_lookup_up_and_delete() {
    let mut l = lab();
    assert!(l.nl.link_by_name("nope0").unwrap().is_none());
    assert!(l.nl.link_by_index(999_999).unwrap().is_none());
    let lo = l.nl.link_by_name("lo").unwrap().unwrap();
    assert_eq!((lo.index, lo.up), (1, true));
    let names: Vec<String> = l.nl.links().unwrap().into_iter().map(|k| k.name).collect();
    assert!(names.contains(&"lo".to_string()) && names.contains(&"v0".to_string()), "{names:?}");
    assert!(!names.contains(&"v1".to_string()));

    // a second pair, both ends here, left down by the peer rule
    l.nl.create_veth("va", "vb", &open(&l.host), Some(1300), None).unwrap();
    let vb = l.nl.link_by_name("vb").unwrap().unwrap();
    assert!(!vb.up);
    l.nl.set_up(vb.index).unwrap();
    assert!(l.nl.link_by_index(vb.index).unwrap().unwrap().up);
    l.nl.set_alias(vb.index, "x").unwrap();
    assert_eq!(l.nl.link_by_name("vb").unwrap().unwrap().alias.as_deref(), Some("x"));

    assert!(!l.nl.del_link_by_name("nope0").unwrap());
    assert!(l.nl.del_link_by_name("va").unwrap());
    assert!(l.nl.link_by_name("vb").unwrap().is_none(), "peer goes with it");
    assert!(!l.nl.del_link(vb.index).unwrap());
    assert!(l.nl.del_link(l.v0).unwrap());
    let left = l.other.ip_json(&["link", "show"]);
    assert!(left.as_array().unwrap().iter().all(|k| k["ifname"] != "v1"), "v1 gone too: {left}");
}

#[test]
fn addresses_add_list_delete_with_noprefixroute() {
    let mut l = lab();
    let a = net("10.9.0.1/24");
    let b = net("10.9.1.1/24");
    let c = net("fd00:9::1/64");
    l.nl.add_address(l.v0, a, true).unwrap();
    l.nl.add_address(l.v0, b, false).unwrap();
    l.nl.add_address(l.v0, c, true).unwrap();
    assert_eq!(l.nl.add_address(l.v0, a, true).unwrap_err().kind(), ErrorKind::AlreadyExists);

    let mine = l.nl.addresses(Some(l.v0)).unwrap();
    for x in [a, b, c] {
        assert!(mine.contains(&(l.v0, x)), "{x} missing from {mine:?}");
    }
    assert!(mine.iter().all(|(i, _)| *i == l.v0));
    assert!(l.nl.addresses(None).unwrap().contains(&(1, net("127.0.0.1/8"))));

    let v4: Vec<IpNetwork> =
        l.nl.routes(false, 254, None).unwrap().into_iter().map(|r| r.dst).collect();
    assert!(v4.contains(&net("10.9.1.0/24")), "connected route for {b}: {v4:?}");
    assert!(!v4.contains(&net("10.9.0.0/24")), "noprefixroute still made a route: {v4:?}");
    let v6: Vec<IpNetwork> =
        l.nl.routes(true, 254, None).unwrap().into_iter().map(|r| r.dst).collect();
    assert!(!v6.contains(&net("fd00:9::/64")), "noprefixroute still made a v6 route: {v6:?}");

    assert!(l.nl.del_address(l.v0, a).unwrap());
    assert!(!l.nl.del_address(l.v0, a).unwrap());
    assert!(l.nl.del_address(l.v0, c).unwrap());
    assert!(!l.nl.del_address(l.v0, c).unwrap());
    assert_eq!(l.nl.addresses(Some(l.v0)).unwrap().iter().filter(|(_, n)| n.is_ipv4()).count(), 1);
}

#[test]
fn routes_add_replace_dump_delete_round_trip() {
    let mut l = lab();
    l.nl.add_address(l.v0, net("10.9.1.1/24"), false).unwrap();
    let via = |dst: &str, gw: &str| Route {
        gateway: Some(gw.parse().unwrap()),
        oif: Some(l.v0),
        protocol: RTPROT_FERRY,
        ..Route::new(net(dst))
    };
    let r1 = via("10.244.3.0/24", "10.9.1.3");
    let r2 = Route { onlink: true, ..via("10.244.4.0/24", "192.168.99.4") };
    let r3 = Route {
        oif: Some(l.v0),
        scope: Scope::Link,
        protocol: RTPROT_FERRY_POD,
        ..Route::new(net("10.244.1.5/32"))
    };
    let r4 = Route {
        metric: Some(50),
        src: Some("10.9.1.1".parse().unwrap()),
        ..via("10.244.5.0/24", "10.9.1.5")
    };
    let r6 = via("fd00:10:244:3::/64", "fe80::3");
    for r in [&r1, &r2, &r3, &r4, &r6] {
        l.nl.add_route(r).unwrap_or_else(|e| panic!("add {r:?}: {e}"));
    }
    let mut ferry = l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap();
    ferry.sort();
    let mut want = vec![r1.clone(), r2.clone(), r4.clone()];
    want.sort();
    assert_eq!(ferry, want);
    assert_eq!(l.nl.routes(false, 254, Some(RTPROT_FERRY_POD)).unwrap(), vec![r3.clone()]);
    assert_eq!(l.nl.routes(true, 254, Some(RTPROT_FERRY)).unwrap(), vec![r6.clone()]);
    let all = l.nl.routes(false, 254, None).unwrap();
    assert!(all
        .iter()
        .any(|r| r.dst == net("10.9.1.0/24") && r.protocol == 2 && r.scope == Scope::Link));
    let shown = l.host.ip(&["route", "show", "proto", "113"]);
    assert!(shown.contains("10.244.4.0/24 via 192.168.99.4 dev v0 onlink"), "{shown}");

    assert_eq!(l.nl.add_route(&r1).unwrap_err().kind(), ErrorKind::AlreadyExists);
    let r1b = via("10.244.3.0/24", "10.9.1.4");
    l.nl.replace_route(&r1b).unwrap();
    let now = l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap();
    assert!(now.contains(&r1b) && !now.contains(&r1) && now.len() == 3, "{now:?}");

    assert!(!l.nl.del_route(&r1).unwrap(), "wrong gateway must not match");
    assert!(
        !l.nl.del_route(&Route { protocol: RTPROT_FERRY_POD, ..r1b.clone() }).unwrap(),
        "wrong protocol"
    );
    assert!(l.nl.del_route(&r1b).unwrap());
    assert!(!l.nl.del_route(&r1b).unwrap());
    assert!(l.nl.del_route(&r6).unwrap());
    assert!(!l.nl.del_route(&r6).unwrap());
    assert!(!l.nl.del_route(&Route::new(net("10.77.0.0/16"))).unwrap());
    assert_eq!(l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap().len(), 2);
}

#[test]
fn routes_in_big_table_and_missing_table() {
    let mut l = lab();
    let r = Route {
        table: 1000,
        oif: Some(l.v0),
        scope: Scope::Link,
        ..Route::new(net("10.60.0.0/16"))
    };
    l.nl.add_route(&r).unwrap();
    assert_eq!(l.nl.routes(false, 1000, None).unwrap(), vec![r.clone()]);
    assert!(!l.nl.routes(false, 254, None).unwrap().contains(&r));
    assert!(l.nl.routes(false, 0, None).unwrap().contains(&r), "table 0 = all tables");
    assert!(l.nl.routes(false, 555, None).unwrap().is_empty());
    assert!(l.nl.routes(true, 555, None).unwrap().is_empty());
    assert!(l.nl.del_route(&r).unwrap());
}

#[test]
fn route_get_reports_oif_and_gateway() {
    let mut l = lab();
    l.nl.add_address(l.v0, net("10.9.1.1/24"), false).unwrap();
    let gw = "10.9.1.3".parse().unwrap();
    l.nl.add_route(&Route { gateway: Some(gw), ..Route::new(net("10.244.3.0/24")) }).unwrap();
    assert_eq!(l.nl.route_get("10.244.3.9".parse().unwrap()).unwrap(), Some((l.v0, Some(gw))));
    assert_eq!(l.nl.route_get("10.9.1.7".parse().unwrap()).unwrap(), Some((l.v0, None)));
    assert_eq!(l.nl.route_get("10.200.0.1".parse().unwrap()).unwrap(), None);
    assert_eq!(l.nl.route_get("fd00:77::1".parse().unwrap()).unwrap(), None);
}

#[test]
fn in_netns_acts_there_and_thread_comes_back() {
    require_sandbox();
    let ns = Netns::new("nli");
    let home = File::open(netns::THREAD_NETNS).unwrap();
    let there = open(&ns);
    assert!(!netns::is_current(&there).unwrap());
    let mut nl = Netlink::in_netns(&there).unwrap();
    assert!(netns::is_current(&home).unwrap());
    nl.create_veth("vin0", "vin1", &there, None, None).unwrap();
    let json = ns.ip_json(&["link", "show", "vin0"]);
    assert_eq!(json[0]["ifname"], "vin0");
    let mut here = Netlink::new().unwrap();
    assert!(here.link_by_name("vin0").unwrap().is_none());
    assert!(netns::with_netns(&there, || netns::is_current(&there).unwrap()).unwrap());
    assert!(netns::is_current(&home).unwrap());
    // a failing open leaves the thread home too
    assert!(Netlink::in_netns(&File::open("/dev/null").unwrap()).is_err());
    assert!(netns::is_current(&home).unwrap());
}

#[test]
fn nftables_generation_is_per_namespace_and_bumped_by_each_commit_only() {
    require_sandbox();
    let ns = Netns::new("nlg");
    let there = open(&ns);
    let generation = || netns::with_netns(&there, nftgen::generation).unwrap().unwrap();
    let nft = |ns: &Netns, script: &str| {
        let o = ns.sh(script);
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let g0 = generation();
    nft(&ns, "nft add table ip t1");
    assert_eq!(generation(), g0.wrapping_add(1), "one commit, one bump");
    nft(&ns, "nft list ruleset");
    assert_eq!(generation(), g0.wrapping_add(1), "reading changes nothing");
    nft(&ns, "printf 'table ip t2 {}\\ndelete table ip t2\\ntable ip t3 {}\\n' | nft -f -");
    assert_eq!(generation(), g0.wrapping_add(2), "a script is one transaction");
    let other = Netns::new("nlg");
    nft(&other, "nft add table ip t1 && nft delete table ip t1");
    assert_eq!(generation(), g0.wrapping_add(2), "another namespace's commits are its own");
}

#[test]
fn event_socket_sees_route_deletion_by_ip() {
    require_sandbox();
    let ns = Netns::new("nle");
    ns.ip(&["link", "add", "ve0", "type", "veth", "peer", "name", "ve1"]);
    ns.ip(&["link", "set", "ve0", "up"]);
    ns.ip(&["route", "add", "10.50.0.0/24", "dev", "ve0", "proto", "113"]);
    let mut ev = EventSocket::in_netns(&open(&ns)).unwrap();
    let t0 = Instant::now();
    ns.ip(&["route", "del", "10.50.0.0/24", "dev", "ve0"]);
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(1) {
        seen.extend(ev.recv_timeout(Duration::from_millis(100)).unwrap());
        if seen.iter().any(|e| matches!(e, Event::RouteDeleted(r) if r.dst == net("10.50.0.0/24")))
        {
            break;
        }
    }
    let deleted = seen.iter().find_map(|e| match e {
        Event::RouteDeleted(r) if r.dst == net("10.50.0.0/24") => Some(r.clone()),
        _ => None,
    });
    let r = deleted.unwrap_or_else(|| panic!("no RouteDeleted within 1s: {seen:?}"));
    assert_eq!((r.protocol, r.scope), (RTPROT_FERRY, Scope::Link));

    ns.ip(&["link", "del", "ve0"]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        let got = ev.recv_timeout(Duration::from_millis(100)).unwrap();
        if got.iter().any(|e| matches!(e, Event::LinkDeleted { name, .. } if name == "ve0")) {
            return;
        }
    }
    panic!("no LinkDeleted for ve0 within 1s");
}

#[test]
fn sysctl_set_get_inside_netns() {
    require_sandbox();
    let ns = Netns::new("nls");
    let f = open(&ns);
    let own = sysctl::get("net.ipv4.ip_forward").unwrap();
    netns::with_netns(&f, || sysctl::set("net.ipv4.ip_forward", "1")).unwrap().unwrap();
    assert_eq!(ns.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(netns::with_netns(&f, || sysctl::get("net.ipv4.ip_forward")).unwrap().unwrap(), "1");
    netns::with_netns(&f, || sysctl::set("net.ipv4.ip_forward", "1")).unwrap().unwrap(); // no-op path
    netns::with_netns(&f, || sysctl::set("net/ipv4/conf/lo/rp_filter", "2")).unwrap().unwrap();
    assert_eq!(ns.sysctl("net.ipv4.conf.lo.rp_filter"), "2");
    assert_eq!(sysctl::get("net.ipv4.ip_forward").unwrap(), own, "own namespace untouched");
    let missing = sysctl::get("net.ipv4.no_such_key").unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn event_socket_reports_overrun_when_not_read() {
    require_sandbox();
    let ns = Netns::new("nlv");
    ns.ip(&["link", "add", "vo0", "type", "veth", "peer", "name", "vo1"]);
    ns.ip(&["link", "set", "vo0", "up"]);
    let mut ev = EventSocket::in_netns(&open(&ns)).unwrap();
    ev.set_recv_buffer(4096).unwrap();
    let batch: String = (0..2000)
        .map(|i| format!("route add 10.{}.{}.0/24 dev vo0\n", 100 + i / 256, i % 256))
        .collect();
    let dir = testlab::TempDir::new("nlv");
    std::fs::write(dir.join("batch"), batch).unwrap();
    ns.ip(&["-batch", &dir.path_str("batch")]);
    let mut overrun = false;
    for _ in 0..10_000 {
        let got = ev.recv_timeout(Duration::from_millis(200)).unwrap();
        if got.is_empty() {
            break;
        }
        if got.contains(&Event::Overrun) {
            overrun = true;
            break;
        }
    }
    assert!(overrun, "2000 unread route events into a 4 KiB buffer should overrun");
    // a dump spanning many datagrams comes back whole
    let routes = Netlink::in_netns(&open(&ns)).unwrap().routes(false, 254, Some(3)).unwrap();
    assert_eq!(routes.len(), 2000);
}

#[test]
fn batch_runs_every_op_in_order_and_reports_each() {
    use ferry_netlink::batch::Op;
    let mut l = lab();
    let mut to_gw = Route::new(net("10.77.0.1/32"));
    to_gw.oif = Some(l.v0);
    to_gw.scope = Scope::Link;
    let mut dflt = Route::new(net("0.0.0.0/0"));
    dflt.gateway = Some("10.77.0.1".parse().unwrap());
    dflt.oif = Some(l.v0);
    let ops = [
        Op::SetUp(l.v0),
        Op::AddAddress(l.v0, net("10.77.0.2/24"), true),
        Op::AddAddress(l.v0, net("10.77.0.2/24"), true), // duplicate: EEXIST, later ops still run
        Op::AddRoute(&to_gw),
        Op::AddRoute(&dflt),
    ];
    let res = l.nl.batch(&ops).unwrap();
    assert_eq!(res.len(), 5);
    assert!(res[0].is_ok() && res[1].is_ok() && res[3].is_ok() && res[4].is_ok(), "{res:?}");
    assert_eq!(res[2].as_ref().unwrap_err().kind(), ErrorKind::AlreadyExists);
    let routes = l.nl.routes(false, ferry_netlink::RT_TABLE_MAIN, None).unwrap();
    assert!(routes.iter().any(|r| r.dst == net("0.0.0.0/0") && r.gateway == dflt.gateway));
    assert!(l.nl.addresses(Some(l.v0)).unwrap().iter().any(|(_, a)| *a == net("10.77.0.2/24")));
    assert!(l.nl.batch(&[]).unwrap().is_empty());
    let _ = &l.host;
}

#[test]
fn a_batch_of_thousands_of_routes_is_not_refused_for_buffer_space() {
    use ferry_netlink::batch::Op;
    let mut l = lab();
    // 4,000 routes: far more than one datagram's ACKs fit in the receive buffer (ENOBUFS before
    // batches were cut into chunks), with one duplicate in the middle reported on its own.
    let routes: Vec<Route> = (0..4000u32)
        .map(|i| {
            let mut r = Route::new(net(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)));
            r.oif = Some(l.v0);
            r.scope = Scope::Link;
            r
        })
        .collect();
    let mut ops: Vec<Op> = routes.iter().map(Op::AddRoute).collect();
    ops.insert(2000, Op::AddRoute(&routes[0]));
    let res = l.nl.batch(&ops).unwrap();
    assert_eq!(res.len(), 4001);
    assert_eq!(res[2000].as_ref().unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 4000);
    let have = l.nl.routes(false, ferry_netlink::RT_TABLE_MAIN, None).unwrap();
    assert_eq!(have.iter().filter(|r| r.oif == Some(l.v0) && r.dst.prefix() == 24).count(), 4000);
    let _ = &l.host;
}

fn nh_route(dst: &str, id: u32) -> Route {
    Route { nh_id: Some(id), protocol: RTPROT_FERRY, ..Route::new(net(dst)) }
}

#[test]
fn nexthops_add_replace_dump_delete_and_routes_on_them() {
    let mut l = lab();
    l.nl.add_address(l.v0, net("10.9.1.1/24"), false).unwrap();
    let nh = Nexthop::via(100, "10.9.1.3".parse().unwrap(), l.v0, RTPROT_FERRY);
    l.nl.add_nexthop(&nh).unwrap();
    assert_eq!(l.nl.add_nexthop(&nh).unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(l.nl.nexthops().unwrap(), vec![nh.clone()]);
    let r = nh_route("10.244.3.0/24", 100);
    l.nl.add_route(&r).unwrap();
    let shown = l.host.ip(&["route", "show", "proto", "113"]);
    assert!(shown.contains("10.244.3.0/24 nhid 100 "), "{shown}");
    let got = l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].nh_id, Some(100));
    // Replacing the nexthop moves the route with it, atomically.
    let moved = Nexthop { gateway: Some("10.9.1.4".parse().unwrap()), ..nh.clone() };
    l.nl.replace_nexthop(&moved).unwrap();
    assert_eq!(l.nl.nexthops().unwrap(), vec![moved.clone()]);
    let json = l.host.ip_json(&["nexthop", "show", "id", "100"]);
    assert_eq!(json[0]["gateway"], "10.9.1.4", "{json}");
    // The kernel checks the gateway: not on a connected subnet of the device is refused.
    let bad = Nexthop::via(101, "203.0.113.5".parse().unwrap(), l.v0, RTPROT_FERRY);
    let e = l.nl.add_nexthop(&bad).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENETUNREACH | libc::EINVAL | libc::EHOSTUNREACH)),
        "{e}"
    );
    // A route to a missing nexthop is refused.
    assert!(l.nl.add_route(&nh_route("10.244.4.0/24", 555)).is_err());
    // Deleting by the dumped route (gateway shown in compat mode) matches on the id.
    let dumped = l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap().remove(0);
    assert!(l.nl.del_route(&dumped).unwrap());
    assert!(l.nl.del_nexthop(100).unwrap());
    assert!(!l.nl.del_nexthop(100).unwrap());
    assert!(l.nl.nexthops().unwrap().is_empty());
}

#[test]
fn a_plain_route_is_replaced_by_a_nexthop_route_in_place_and_nexthop_deletion_takes_routes() {
    let mut l = lab();
    l.nl.add_address(l.v0, net("10.9.1.1/24"), false).unwrap();
    let mut ev = EventSocket::in_netns(&open(&l.host)).unwrap();
    let plain = Route {
        gateway: Some("10.9.1.5".parse().unwrap()),
        oif: Some(l.v0),
        protocol: RTPROT_FERRY,
        ..Route::new(net("10.244.5.0/24"))
    };
    l.nl.add_route(&plain).unwrap();
    let nh = Nexthop::via(105, "10.9.1.5".parse().unwrap(), l.v0, RTPROT_FERRY);
    l.nl.add_nexthop(&nh).unwrap();
    l.nl.replace_route(&nh_route("10.244.5.0/24", 105)).unwrap();
    let got = l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].nh_id, Some(105));
    assert!(l.nl.del_nexthop(105).unwrap());
    assert!(l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap().is_empty(), "route went too");
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end && !seen.iter().any(|e| matches!(e, Event::NexthopDeleted(_))) {
        seen.extend(ev.recv_timeout(Duration::from_millis(100)).unwrap());
    }
    assert!(seen.contains(&Event::NexthopChanged(nh.clone())), "{seen:?}");
    assert!(seen.contains(&Event::NexthopDeleted(nh)), "{seen:?}");
    assert!(
        !seen.iter().any(|e| matches!(e, Event::RouteDeleted(_))),
        "the kernel says nothing about the routes: {seen:?}"
    );
}

#[test]
fn a_batch_of_thousands_of_nexthops_and_routes_reports_each_failure() {
    use ferry_netlink::batch::Op;
    let mut l = lab();
    l.nl.add_address(l.v0, net("10.8.0.1/16"), false).unwrap();
    let n = 3000u32;
    let gw = |i: u32| std::net::IpAddr::from([10, 8, (i / 250) as u8 + 1, (i % 250) as u8 + 2]);
    let nhs: Vec<Nexthop> =
        (0..n).map(|i| Nexthop::via(1000 + i, gw(i), l.v0, RTPROT_FERRY)).collect();
    let routes: Vec<Route> = (0..n)
        .map(|i| nh_route(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256), 1000 + i))
        .collect();
    let bad = Nexthop::via(99, "203.0.113.5".parse().unwrap(), l.v0, RTPROT_FERRY);
    let mut ops: Vec<Op> = nhs.iter().map(Op::AddNexthop).collect();
    ops.insert(1500, Op::AddNexthop(&bad));
    ops.extend(routes.iter().map(Op::AddRoute));
    ops.push(Op::AddRoute(&routes[7])); // duplicate: EEXIST, the last of its datagram
    let res = l.nl.batch(&ops).unwrap();
    assert_eq!(res.len(), 2 * n as usize + 2);
    assert!(res[1500].is_err(), "bad gateway reported on its own op");
    assert_eq!(res.last().unwrap().as_ref().unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 2 * n as usize);
    assert_eq!(l.nl.nexthops().unwrap().len(), n as usize);
    assert_eq!(l.nl.routes(false, 254, Some(RTPROT_FERRY)).unwrap().len(), n as usize);
    // Deleting in a batch: absent ones fail with their own errno.
    let mut del: Vec<Op> = routes.iter().map(Op::DelRoute).collect();
    del.extend(nhs.iter().map(|h| Op::DelNexthop(h.id)));
    del.push(Op::DelNexthop(99));
    let res = l.nl.batch(&del).unwrap();
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 2 * n as usize);
    assert_eq!(res.last().unwrap().as_ref().unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert!(l.nl.nexthops().unwrap().is_empty());
    let _ = &l.host;
}

/// `ready`: a link without carrier cannot send and a bounded wait gives up (no error); once the
/// peer is up (from another thread, later: the wait wakes on the link notification) both ends
/// can send; IPv6 addresses are added without DAD (never tentative) and become local.
#[test]
fn wait_ready_follows_carrier_and_ipv6_local_routes() {
    use ferry_netlink::ready::{wait_ready, End};
    require_sandbox();
    let (host, pod) = (Netns::new("nlh"), Netns::new("nlp"));
    let (hf, pf) = (open(&host), open(&pod));
    let mut h = Netlink::in_netns(&hf).unwrap();
    let mut p = Netlink::in_netns(&pf).unwrap();
    h.create_veth("rv0", "eth0", &pf, None, None).unwrap();
    let hl = h.link_by_name("rv0").unwrap().unwrap();
    let pl = p.link_by_name("eth0").unwrap().unwrap();
    assert!(hl.up && !hl.can_send(), "no carrier while the peer is down: {hl:?}");
    let mut ends = [End { nl: &mut h, ns: Some(&hf), link: hl.index, local: vec![] }];
    assert!(!wait_ready(&mut ends, Duration::from_millis(200)).unwrap(), "bounded, not ready");

    h.add_address(hl.index, net("fd00:5::1/128"), true).unwrap();
    p.add_address(pl.index, net("fd00:5::2/64"), true).unwrap();
    let shown = pod.ip(&["-6", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains("nodad") && !shown.contains("tentative"), "{shown}");
    let pod_path = pod.path();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut p = Netlink::in_netns(&File::open(pod_path).unwrap()).unwrap();
        p.set_up(pl.index).unwrap();
    });
    let (a, b) = ("fd00:5::1".parse().unwrap(), "fd00:5::2".parse().unwrap());
    let mut ends = [
        End { nl: &mut h, ns: Some(&hf), link: hl.index, local: vec![a] },
        End { nl: &mut p, ns: Some(&pf), link: pl.index, local: vec![b] },
    ];
    assert!(wait_ready(&mut ends, Duration::from_secs(10)).unwrap(), "ready once the peer is up");
    later.join().unwrap();
    assert!(h.link_by_index(hl.index).unwrap().unwrap().can_send());
    assert!(p.link_by_index(pl.index).unwrap().unwrap().can_send());
    let (pod_local, host_local) =
        (p.local_routes(true, pl.index).unwrap(), h.local_routes(true, hl.index).unwrap());
    assert!(pod_local.contains(&b) && !pod_local.contains(&a), "{pod_local:?}");
    assert!(host_local.contains(&a) && !host_local.contains(&b), "{host_local:?}");
    assert!(h.local_routes(false, hl.index).unwrap().is_empty(), "no IPv4 address");
    // A vanished link is an error, not a wait.
    h.del_link(hl.index).unwrap();
    let mut ends = [End { nl: &mut h, ns: Some(&hf), link: hl.index, local: vec![] }];
    assert!(wait_ready(&mut ends, Duration::from_secs(1)).is_err());
}
