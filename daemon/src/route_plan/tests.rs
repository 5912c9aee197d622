use super::*;
use ferry_netlink::Nexthop;

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn have(dst: &str, gw: Option<&str>, metric: Option<u32>) -> Route {
    let mut r = peer_route(n(dst), ip(gw.unwrap_or("0.0.0.0")), 2);
    r.gateway = gw.map(ip);
    r.metric = metric;
    r
}

fn want(pairs: &[(&str, &str)]) -> Want {
    pairs.iter().map(|(d, g)| (n(d), ip(g))).collect()
}

struct Case {
    name: &'static str,
    want: Want,
    have: Vec<Route>,
    add: Vec<&'static str>,
    replace: Vec<&'static str>,
    del: Vec<&'static str>,
}

#[test]
fn plan_table() {
    let cases = vec![
        Case {
            name: "empty",
            want: want(&[]),
            have: vec![],
            add: vec![],
            replace: vec![],
            del: vec![],
        },
        Case {
            name: "fresh node adds everything",
            want: want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]),
            have: vec![],
            add: vec!["10.244.2.0/24", "10.244.3.0/24"],
            replace: vec![],
            del: vec![],
        },
        Case {
            name: "in sync does nothing",
            want: want(&[("10.244.2.0/24", "198.18.0.12")]),
            have: vec![have("10.244.2.0/24", Some("198.18.0.12"), None)],
            add: vec![],
            replace: vec![],
            del: vec![],
        },
        Case {
            name: "metric 0 counts as unset",
            want: want(&[("10.244.2.0/24", "198.18.0.12")]),
            have: vec![have("10.244.2.0/24", Some("198.18.0.12"), Some(0))],
            add: vec![],
            replace: vec![],
            del: vec![],
        },
        Case {
            name: "wrong gateway is replaced, not deleted",
            want: want(&[("10.244.2.0/24", "198.18.0.22")]),
            have: vec![have("10.244.2.0/24", Some("198.18.0.12"), None)],
            add: vec![],
            replace: vec!["10.244.2.0/24"],
            del: vec![],
        },
        Case {
            name: "route without gateway is replaced",
            want: want(&[("10.244.2.0/24", "198.18.0.12")]),
            have: vec![have("10.244.2.0/24", None, None)],
            add: vec![],
            replace: vec!["10.244.2.0/24"],
            del: vec![],
        },
        Case {
            name: "stale peer is deleted",
            want: want(&[("10.244.2.0/24", "198.18.0.12")]),
            have: vec![
                have("10.244.2.0/24", Some("198.18.0.12"), None),
                have("10.244.9.0/24", Some("198.18.0.19"), None),
            ],
            add: vec![],
            replace: vec![],
            del: vec!["10.244.9.0/24"],
        },
        Case {
            name: "nothing wanted: delete all of ours",
            want: want(&[]),
            have: vec![
                have("10.244.2.0/24", Some("198.18.0.12"), None),
                have("10.244.3.0/24", Some("198.18.0.13"), None),
            ],
            add: vec![],
            replace: vec![],
            del: vec!["10.244.2.0/24", "10.244.3.0/24"],
        },
        Case {
            name: "a metric we never set is deleted and the route re-added",
            want: want(&[("10.244.2.0/24", "198.18.0.12")]),
            have: vec![have("10.244.2.0/24", Some("198.18.0.12"), Some(100))],
            add: vec!["10.244.2.0/24"],
            replace: vec![],
            del: vec!["10.244.2.0/24"],
        },
        Case {
            name: "duplicates: keep one, delete the rest",
            want: want(&[("10.244.2.0/24", "198.18.0.12")]),
            have: vec![
                have("10.244.2.0/24", Some("198.18.0.12"), None),
                have("10.244.2.0/24", Some("198.18.0.12"), Some(5)),
            ],
            add: vec![],
            replace: vec![],
            del: vec!["10.244.2.0/24"],
        },
        Case {
            name: "mixed",
            want: want(&[
                ("10.244.2.0/24", "198.18.0.12"),
                ("10.244.3.0/24", "198.18.0.33"),
                ("10.244.4.0/24", "198.18.0.14"),
            ]),
            have: vec![
                have("10.244.3.0/24", Some("198.18.0.13"), None),
                have("10.244.5.0/24", Some("198.18.0.15"), None),
            ],
            add: vec!["10.244.2.0/24", "10.244.4.0/24"],
            replace: vec!["10.244.3.0/24"],
            del: vec!["10.244.5.0/24"],
        },
    ];
    for c in cases {
        let p = plan(&c.want, &c.have);
        let add: Vec<String> = p.add.iter().map(|(d, _)| d.to_string()).collect();
        let rep: Vec<String> = p.replace.iter().map(|(d, _)| d.to_string()).collect();
        let del: Vec<String> = p.del.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(add, c.add, "{}: add", c.name);
        assert_eq!(rep, c.replace, "{}: replace", c.name);
        assert_eq!(del, c.del, "{}: del", c.name);
        // Replacements carry the wanted gateway.
        for (d, g) in &p.replace {
            assert_eq!(c.want.get(d), Some(g), "{}", c.name);
        }
    }
}

#[test]
fn plan_is_fast_for_5000_peers() {
    let mut w = Want::new();
    let mut h = Vec::new();
    for i in 0..5000u32 {
        let d = Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + (i + 2) * 256), 24).unwrap().into();
        let g = IpAddr::V4(Ipv4Addr::from(0xac10_0000 + i + 2));
        w.insert(d, g);
        if i % 2 == 0 {
            let other = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
            h.push(peer_route(d, if i % 4 == 0 { g } else { other }, 2));
        }
    }
    let t = std::time::Instant::now();
    let p = plan(&w, &h);
    // Timings belong in benchmarks: printed here, not asserted.
    println!("plan 5,000 routes: {:?}", t.elapsed());
    assert_eq!((p.add.len(), p.replace.len(), p.del.len()), (2500, 1250, 0));
}

#[test]
fn peer_routes_are_tagged() {
    let r = peer_route(n("10.244.2.0/24"), ip("198.18.0.12"), 3);
    assert_eq!(r.protocol, 113);
    assert_eq!(r.table, 254);
    assert_eq!(r.oif, Some(3));
    assert_eq!(r.gateway, Some(ip("198.18.0.12")));
}

#[test]
fn diff_finds_added_removed_and_moved_peers() {
    let old = want(&[
        ("10.244.1.0/24", "198.18.0.11"),
        ("10.244.2.0/24", "198.18.0.12"),
        ("10.244.3.0/24", "198.18.0.13"),
    ]);
    let new = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("10.244.3.0/24", "198.18.0.33"),
        ("10.244.4.0/24", "198.18.0.14"),
    ]);
    let d: Vec<String> =
        diff(&old, &new).iter().map(|(d, a, b)| format!("{d} {a:?} {b:?}")).collect();
    assert_eq!(
        d,
        [
            "10.244.1.0/24 Some(198.18.0.11) None",
            "10.244.3.0/24 Some(198.18.0.13) Some(198.18.0.33)",
            "10.244.4.0/24 None Some(198.18.0.14)",
        ]
    );
    assert!(diff(&new, &new).is_empty());
    assert_eq!(diff(&Want::new(), &new).len(), 3);
}

#[test]
fn nexthop_ids_are_distinct_tagged_and_read_back() {
    assert_eq!(nh_id(n("10.244.2.0/24")), Some(0xFAF4_027F));
    assert_eq!(nh_id(n("10.244.2.0/25")), Some(0xFAF4_023F));
    assert_eq!(nh_id(n("10.244.2.128/25")), Some(0xFAF4_02BF));
    assert_eq!(nh_id(n("10.0.0.0/8")), Some(0xFA7F_FFFF));
    assert_eq!(nh_id(n("10.244.2.4/31")), Some(0xFAF4_0204));
    assert_eq!((nh_id(n("10.244.2.4/32")), nh_id(n("0.0.0.0/3"))), (None, None));
    // Every /24, /26 and /30 of a /16 (and one /31) gets its own id, and reads back.
    let mut w = Want::new();
    for len in [24u8, 26, 30, 31] {
        for i in 0..(1u32 << (len - 16)).min(4096) {
            let net = Ipv4Network::new(Ipv4Addr::from(0xc0a8_0000 + (i << (32 - len))), len);
            w.insert(net.unwrap().into(), ip("198.18.0.1"));
        }
    }
    let ids: HashSet<u32> = w.keys().map(|d| nh_id(*d).unwrap()).collect();
    assert_eq!(ids.len(), w.len());
    for d in w.keys() {
        let id = nh_id(*d).unwrap();
        assert_eq!(id & 0xF000_0000, NH_ID_TAG);
        assert_eq!(nh_peer(id, &w), Some(*d), "{d}");
    }
    assert_eq!(nh_peer(nh_id(n("10.9.9.0/24")).unwrap(), &w), None, "not wanted");
    assert_eq!(nh_peer(77, &w), None, "not Ferry's range");
    assert_eq!(nh_peer(0xFFFF_FFFF, &w), None, "no prefix encoded");
}

fn nexthop(dst: &str, gw: &str, protocol: u8) -> Nexthop {
    let mut h = peer_nexthop(nh_id(n(dst)).unwrap(), ip(gw), 2);
    h.protocol = protocol;
    h
}

fn on_nh(dst: &str) -> Route {
    nexthop_route(n(dst), nh_id(n(dst)).unwrap())
}

/// `dst: nexthop-step/route-step` for each peer step (`-`: plain route).
fn show(s: &Steps) -> Vec<String> {
    s.peers
        .iter()
        .map(|p| {
            let nh = p.nexthop.map_or("-".to_string(), |(_, st)| format!("{st:?}"));
            format!("{}: {nh}/{:?}", p.dst, p.route)
        })
        .collect()
}

#[test]
fn steps_cover_nexthops_and_routes() {
    let w = want(&[
        ("10.244.1.0/24", "198.18.0.11"), // in sync
        ("10.244.2.0/24", "198.18.0.12"), // nexthop has another gateway
        ("10.244.3.0/24", "198.18.0.13"), // plain route from before
        ("10.244.4.0/24", "198.18.0.14"), // nexthop deleted, route with it
        ("10.244.5.0/24", "198.18.0.15"), // its id is another program's
        ("10.244.6.0/24", "198.18.0.16"), // route on a wrong nexthop
    ]);
    let kernel = vec![
        on_nh("10.244.1.0/24"),
        on_nh("10.244.2.0/24"),
        have("10.244.3.0/24", Some("198.18.0.13"), None),
        Route { nh_id: nh_id(n("10.244.9.0/24")), ..on_nh("10.244.6.0/24") },
        on_nh("10.244.8.0/24"), // stale
    ];
    let nhs = vec![
        nexthop("10.244.1.0/24", "198.18.0.11", 113),
        nexthop("10.244.2.0/24", "198.18.0.99", 113),
        nexthop("10.244.5.0/24", "198.18.0.50", 42),
        nexthop("10.244.6.0/24", "198.18.0.16", 113),
        nexthop("10.244.8.0/24", "198.18.0.18", 113),
        nexthop("10.244.9.0/24", "198.18.0.19", 113),
    ];
    let s = steps(&w, &kernel, Some(&nhs));
    assert_eq!(
        show(&s),
        [
            "10.244.2.0/24: Replace/Keep",
            "10.244.3.0/24: Add/Replace",
            "10.244.4.0/24: Add/Add",
            "10.244.5.0/24: -/Add",
            "10.244.6.0/24: Keep/Replace",
        ]
    );
    let del: Vec<String> = s.del_routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(del, ["10.244.8.0/24"]);
    let stale = [nh_id(n("10.244.8.0/24")).unwrap(), nh_id(n("10.244.9.0/24")).unwrap()];
    assert_eq!(s.del_nexthops, stale);
    assert_eq!(s.peers[1].old, Some(kernel[2].clone()));
    assert_eq!(s.peers[1].old_nexthop(), None);
    assert_eq!(s.peers[0].old_nexthop(), nh_id(n("10.244.2.0/24")));
    // The same kernel without nexthop objects: plain routes, nothing of nexthops.
    let s = steps(&w, &kernel, None);
    assert!(s.peers.iter().all(|p| p.nexthop.is_none()));
    assert!(s.del_nexthops.is_empty());
    let names: Vec<String> = s.peers.iter().map(|p| p.dst.to_string()).collect();
    assert!(!names.contains(&"10.244.3.0/24".to_string()), "the plain route is in sync");
    assert_eq!(s.peers.len(), 5, "the others are plain routes now: {names:?}");
    // A plain route in sync stays a plain route without nexthops.
    let plain = vec![have("10.244.3.0/24", Some("198.18.0.13"), None)];
    assert!(steps(&want(&[("10.244.3.0/24", "198.18.0.13")]), &plain, None).peers.is_empty());
}

#[test]
fn ipv6_peers_get_their_own_nexthop_range_and_plain_routes_on_a_clash() {
    let d = n("fd00:10:244:2e::/64");
    let id = nh_id(d).unwrap();
    assert_eq!(id & 0xF000_0000, NH_ID_TAG6);
    assert_eq!(id, NH_ID_TAG6 | 0x0244_002e);
    let w = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("fd00:10:244:2e::/64", "fd00:198:18::12"),
        ("fd00:10:244:2f::/64", "fd00:198:18::13"),
    ]);
    assert_eq!(nh_peer(id, &w), Some(d));
    assert_eq!(nh_peer(nh_id(n("fd00:10:244:30::/64")).unwrap(), &w), None, "not wanted");
    // Two subnets 2^28 apart share an id: the first (in order) keeps the nexthop, the other
    // gets a plain gateway route, in steps and in deltas alike.
    let a = n("fd00:0:0:1::/64");
    let b = n("fd00:0:1000:1::/64");
    assert_eq!(nh_id(a), nh_id(b));
    let w =
        want(&[("fd00:0:0:1::/64", "fd00:198:18::12"), ("fd00:0:1000:1::/64", "fd00:198:18::13")]);
    assert_eq!(nh_id_in(a, &w), nh_id(a));
    assert_eq!(nh_id_in(b, &w), None);
    let s = steps(&w, &[], Some(&[]));
    let by_dst: Vec<(String, bool)> =
        s.peers.iter().map(|p| (p.dst.to_string(), p.nexthop.is_some())).collect();
    assert_eq!(by_dst, [("fd00:0:0:1::/64".into(), true), ("fd00:0:1000:1::/64".into(), false)]);
    // An IPv6 nexthop is a hop via an IPv6 gateway.
    let h = peer_nexthop(id, ip("fd00:198:18::12"), 2);
    assert!(h.v6);
    assert!(is_hop_via(&h, ip("fd00:198:18::12")));
    assert!(!is_hop_via(&h, ip("198.18.0.12")));
}

#[test]
fn ipv6_routes_are_planned_like_ipv4_ones() {
    let w = want(&[
        ("fd00:10:244:2::/64", "fd00:198:18::12"),
        ("fd00:10:244:3::/64", "fd00:198:18::13"),
    ]);
    let have = vec![
        have("fd00:10:244:3::/64", Some("fd00:198:18::99"), None),
        have("fd00:10:244:9::/64", Some("fd00:198:18::19"), None),
    ];
    let p = plan(&w, &have);
    assert_eq!(p.add, [(n("fd00:10:244:2::/64"), ip("fd00:198:18::12"))]);
    assert_eq!(p.replace, [(n("fd00:10:244:3::/64"), ip("fd00:198:18::13"))]);
    assert_eq!(p.del.iter().map(|r| r.dst.to_string()).collect::<Vec<_>>(), ["fd00:10:244:9::/64"]);
    let r = peer_route(n("fd00:10:244:2::/64"), ip("fd00:198:18::12"), 3);
    assert_eq!((r.protocol, r.table), (113, 254));
    assert_eq!(nexthop_route(n("fd00:10:244:2::/64"), 9).gateway, None);
}

/// [`steps`] as first written (a hash map per route and per nexthop id): the reference the
/// merge-based one is checked against.
fn steps_by_lookup(want: &Want, have: &[Route], nexthops: Option<&[Nexthop]>) -> Steps {
    use std::collections::hash_map::Entry;
    let mut out = Steps::default();
    let mut ours: HashMap<IpNetwork, &Route> = HashMap::with_capacity(have.len());
    for r in have {
        match r.dst {
            d if want.contains_key(&d) && r.metric.unwrap_or(0) == 0 => match ours.entry(d) {
                Entry::Vacant(v) => {
                    v.insert(r);
                }
                Entry::Occupied(_) => out.del_routes.push(r.clone()),
            },
            _ => out.del_routes.push(r.clone()),
        }
    }
    let use_nh = nexthops.is_some();
    let nexthops = nexthops.unwrap_or_default();
    let mine: HashMap<u32, &Nexthop, Ids> =
        nexthops.iter().filter(|n| n.protocol == RTPROT_FERRY).map(|n| (n.id, n)).collect();
    let taken: HashSet<u32> =
        nexthops.iter().filter(|n| n.protocol != RTPROT_FERRY).map(|n| n.id).collect();
    let mut used = HashSet::new();
    for (&dst, &gw) in want {
        let id = nh_id_in(dst, want).filter(|id| use_nh && !taken.contains(id) && used.insert(*id));
        out.peers.extend(peer_step(dst, gw, id, ours.get(&dst).copied(), &mine));
    }
    out.del_nexthops = mine.keys().filter(|id| !used.contains(id)).copied().collect();
    out.del_nexthops.sort_unstable();
    out
}

#[test]
fn merged_steps_agree_with_lookups_on_generated_tables() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let dsts: Vec<IpNetwork> = (0..12)
        .map(|i| n(&format!("10.244.{i}.0/24")))
        .chain((0..4).map(|i| n(&format!("fd00:10:244:{i}::/64"))))
        // Same nexthop ids as fd00:10:244:0-1::/64 (2^28 subnets apart), and other lengths.
        .chain((0..2).map(|i| n(&format!("fd00:10:1244:{i}::/64"))))
        .chain([n("fd00:10:244:8000::/65"), n("fd00:10:2244::/63")])
        .collect();
    assert_eq!(nh_id(n("fd00:10:244::/64")), nh_id(n("fd00:10:1244::/64")), "the clash is real");
    for case in 0..3000 {
        let pick = |next: &mut dyn FnMut(u64) -> u64| dsts[next(dsts.len() as u64) as usize];
        let gw = |d: IpNetwork, k: u64| -> IpAddr {
            if d.is_ipv4() {
                ip(&format!("198.18.0.{}", 10 + k))
            } else {
                ip(&format!("fd00:198:18::{}", 10 + k))
            }
        };
        let mut w = Want::new();
        for _ in 0..next(10) {
            let d = pick(&mut next);
            w.insert(d, gw(d, next(3)));
        }
        let mut h = Vec::new();
        for _ in 0..next(12) {
            let d = pick(&mut next);
            let mut r = match next(3) {
                0 => nexthop_route(d, nh_id(d).unwrap()),
                _ => peer_route(d, gw(d, next(3)), 2),
            };
            r.metric = [None, Some(0), Some(5)][next(3) as usize];
            h.push(r);
        }
        let nhs: Vec<Nexthop> = (0..next(6))
            .map(|_| {
                let d = pick(&mut next);
                let mut x = peer_nexthop(nh_id(d).unwrap(), gw(d, next(3)), 2);
                x.protocol = if next(4) == 0 { 4 } else { RTPROT_FERRY };
                x
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        let nhs: Vec<Nexthop> = nhs.into_iter().filter(|x| ids.insert(x.id)).collect();
        for with in [None, Some(&nhs[..])] {
            assert_eq!(steps(&w, &h, with), steps_by_lookup(&w, &h, with), "case {case}");
        }
        for d in &dsts {
            let id = nh_id(*d).unwrap();
            let by_scan = w.keys().find(|k| k.is_ipv6() && nh_id_in(**k, &w) == Some(id)).copied();
            let want_peer = if d.is_ipv6() { by_scan } else { w.contains_key(d).then_some(*d) };
            assert_eq!(nh_peer(id, &w), want_peer, "case {case}: nh_peer of {d}");
        }
    }
}
