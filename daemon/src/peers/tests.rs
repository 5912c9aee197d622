use super::*;
use crate::config::Mode;
use crate::store::{parse_lease, subnet_key, BadLease, Lease, LeaseAttrs};
use ipnetwork::Ipv6Network;
use std::time::Duration;

pub(super) fn me4() -> Me4 {
    Me4 {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet_len: 24,
        subnet: "10.244.1.0/24".parse().unwrap(),
        public_ip: "198.18.0.11".parse().unwrap(),
    }
}

pub(super) fn me6() -> Me6 {
    Me6 {
        network: "fd00:10:244::/56".parse().unwrap(),
        subnet_len: 64,
        subnet: "fd00:10:244:1::/64".parse().unwrap(),
        public_ip: "fd00:198:18::11".parse().unwrap(),
    }
}

pub(super) fn me() -> Me {
    Me { v4: Some(me4()), v6: None, mode: Mode::HostGw }
}

pub(super) fn lease(subnet: &str, ip: &str) -> LeaseEntry {
    Ok(Lease {
        key: subnet_key(subnet.parse().unwrap()),
        subnet: subnet.parse().unwrap(),
        subnet6: None,
        attrs: LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: serde_json::Value::Null,
            backend_v6_data: None,
        },
        expires: None,
    })
}

fn map(entries: Vec<LeaseEntry>) -> Leases {
    let mut m = Leases::new();
    apply_event(&mut m, WatchEvent::Resync(entries));
    m
}

fn want(v: &Verdict) -> Vec<String> {
    v.want.iter().map(|(s, g)| format!("{s} via {g}")).collect()
}

#[test]
fn peers_are_routed_and_own_lease_is_recognised() {
    let v = evaluate(
        &map(vec![
            lease("10.244.1.0/24", "198.18.0.11"),
            lease("10.244.2.0/24", "198.18.0.12"),
            lease("10.244.3.0/24", "198.18.0.13"),
        ]),
        &me(),
        SystemTime::now(),
    );
    assert_eq!(want(&v), ["10.244.2.0/24 via 198.18.0.12", "10.244.3.0/24 via 198.18.0.13"]);
    assert!(v.own_present);
    assert!(v.bad.is_empty());
}

#[test]
fn bad_leases_are_never_routed() {
    let mut other_backend = lease("10.244.9.0/24", "198.18.0.19");
    other_backend.as_mut().unwrap().attrs.backend_type = "vxlan".into();
    let mut expired = lease("10.244.10.0/24", "198.18.0.20");
    expired.as_mut().unwrap().expires = Some(SystemTime::now() - Duration::from_secs(1));
    let entries = vec![
        lease("10.244.2.0/24", "198.18.0.12"),
        Err(BadLease { key: "10.244.4.0-24".into(), reason: "value is not lease JSON".into() }),
        lease("10.99.0.0/24", "198.18.0.14"), // outside the network
        lease("10.244.1.0/25", "198.18.0.15"), // inside own subnet, wrong length
        lease("10.244.5.0/24", "198.18.0.11"), // own public IP, other subnet
        lease("10.244.6.0/24", "10.244.7.1"), // gateway inside the pod network
        lease("10.244.2.0/23", "198.18.0.16"), // overlaps 10.244.2.0/24 and is odd-sized
        lease("10.244.8.0/25", "198.18.0.17"), // odd-sized, alone: still the wrong length
        lease("10.244.128.0/17", "198.18.0.23"), // a /17 in a /24-per-node network
        lease("10.244.0.0/16", "198.18.0.18"), // the whole network: overlaps everything
        other_backend,
        expired,
    ];
    let v = evaluate(&map(entries), &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.2.0/24 via 198.18.0.12"]);
    let bad: Vec<&str> = v.bad.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        bad,
        [
            "10.244.0.0-16",
            "10.244.1.0-25",
            "10.244.128.0-17",
            "10.244.2.0-23",
            "10.244.4.0-24",
            "10.244.5.0-24",
            "10.244.6.0-24",
            "10.244.8.0-25",
            "10.244.9.0-24",
            "10.99.0.0-24"
        ]
    );
    for k in ["10.244.1.0-25", "10.244.2.0-23", "10.244.8.0-25", "10.244.128.0-17"] {
        assert!(v.bad[k].contains("is not a /24"), "{k}: {}", v.bad[k]);
    }
    assert!(v.bad["10.244.5.0-24"].contains("own public IP"));
    assert!(!v.own_present);
}

#[test]
fn someone_else_on_my_subnet_is_reported() {
    let v = evaluate(&map(vec![lease("10.244.1.0/24", "198.18.0.99")]), &me(), SystemTime::now());
    assert!(v.want.is_empty());
    assert!(!v.own_present);
    assert!(v.bad["10.244.1.0-24"].contains("claims this node's subnet"));
}

#[test]
fn odd_sized_leases_clashing_with_each_other_are_both_bad() {
    let v = evaluate(
        &map(vec![lease("10.244.20.0/25", "198.18.0.21"), lease("10.244.20.0/26", "198.18.0.22")]),
        &me(),
        SystemTime::now(),
    );
    assert!(v.want.is_empty(), "{v:?}");
    assert_eq!(v.bad.len(), 2);
}

#[test]
fn events_update_the_map() {
    let mut m = map(vec![lease("10.244.2.0/24", "198.18.0.12")]);
    apply_event(&mut m, WatchEvent::Put(lease("10.244.3.0/24", "198.18.0.13")));
    apply_event(&mut m, WatchEvent::Removed { key: "10.244.2.0-24".into(), subnet: None });
    assert_eq!(m.keys().map(|k| &**k).collect::<Vec<_>>(), ["10.244.3.0-24"]);
    // A lease overwritten with garbage stops being routed.
    apply_event(
        &mut m,
        WatchEvent::Put(Err(BadLease { key: "10.244.3.0-24".into(), reason: "x".into() })),
    );
    let v = evaluate(&m, &me(), SystemTime::now());
    assert!(v.want.is_empty() && v.bad.contains_key("10.244.3.0-24"));
}

#[test]
fn scales_to_5000_peers() {
    let entries: Vec<LeaseEntry> = (0..5000u32)
        .map(|i| {
            let s = Ipv4Network::new(
                (u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i + 2) * 256).into(),
                24,
            )
            .unwrap();
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i + 2);
            Ok(Lease {
                key: subnet_key(s),
                subnet: s,
                subnet6: None,
                attrs: LeaseAttrs {
                    public_ip: ip,
                    public_ipv6: None,
                    backend_type: "host-gw".into(),
                    backend_data: serde_json::Value::Null,
                    backend_v6_data: None,
                },
                expires: None,
            })
        })
        .collect();
    let me = Me {
        v4: Some(Me4 {
            network: "10.0.0.0/8".parse().unwrap(),
            subnet_len: 24,
            subnet: "10.0.1.0/24".parse().unwrap(),
            public_ip: "172.16.0.1".parse().unwrap(),
        }),
        v6: None,
        mode: Mode::HostGw,
    };
    let m = map(entries);
    let t = std::time::Instant::now();
    let v = evaluate(&m, &me, SystemTime::now());
    assert_eq!(v.want.len(), 5000);
    // Timings belong in benchmarks: printed here, not asserted.
    println!("evaluate 5,000 leases: {:?}", t.elapsed());
}

#[test]
fn taken_includes_garbage_keys() {
    let t = taken(
        &[
            lease("10.244.2.0/24", "198.18.0.12"),
            Err(BadLease { key: "10.244.4.0-24".into(), reason: "x".into() }),
            Err(BadLease { key: "junk".into(), reason: "x".into() }),
        ],
        SystemTime::now(),
    );
    assert_eq!(
        t.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["10.244.2.0/24", "10.244.4.0/24"]
    );
}

fn stored(key: &str, ip: &str) -> LeaseEntry {
    parse_lease(key, format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#).as_bytes(), None)
}

#[test]
fn look_alike_keys_are_never_merged_with_the_real_lease() {
    let mut m = map(vec![stored("10.244.50.0-24", "198.18.0.12")]);
    for k in ["10.244.50.0-024", "10.244.50.0-+24", "010.244.50.0-24"] {
        apply_event(&mut m, WatchEvent::Put(stored(k, "198.18.0.66")));
    }
    let v = evaluate(&m, &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.50.0/24 via 198.18.0.12"], "{v:?}");
    assert_eq!(v.bad.len(), 3, "{v:?}");
    assert!(v.bad.values().all(|r| r.starts_with(crate::store::NON_CANONICAL)), "{v:?}");
    // Deleting a look-alike leaves the real peer's lease alone.
    apply_event(&mut m, WatchEvent::Removed { key: "10.244.50.0-024".into(), subnet: None });
    let v = evaluate(&m, &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.50.0/24 via 198.18.0.12"]);
    // A look-alike blocks its subnet for a node picking a free one.
    let t = taken(&[stored("10.244.51.0-+24", "198.18.0.66")], SystemTime::now());
    assert_eq!(t, ["10.244.51.0/24".parse::<Ipv4Network>().unwrap()]);
}

#[test]
fn flannel_dual_stack_leases_route_their_ipv4_part_and_are_taken() {
    let ds = "10.244.7.0-24&fd00:10:244:2e::-64";
    let mut m = map(vec![stored(ds, "198.18.0.17")]);
    let v = evaluate(&m, &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.7.0/24 via 198.18.0.17"]);
    let t = taken(&[stored(ds, "198.18.0.17")], SystemTime::now());
    assert_eq!(t, ["10.244.7.0/24".parse::<Ipv4Network>().unwrap()]);
    // A plain lease of the same subnet is a second claim: one is routed, the other is bad.
    apply_event(&mut m, WatchEvent::Put(stored("10.244.7.0-24", "198.18.0.27")));
    let v = evaluate(&m, &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.7.0/24 via 198.18.0.27"]);
    assert!(v.bad[ds].contains("also leased as 10.244.7.0-24"), "{v:?}");
    // Removing the dual-stack key removes only it.
    apply_event(&mut m, WatchEvent::Removed { key: ds.into(), subnet: None });
    let v = evaluate(&m, &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.7.0/24 via 198.18.0.27"]);
    assert!(v.bad.is_empty());
}

#[test]
fn only_exactly_host_gw_leases_are_routed_as_flannel_does() {
    let with = |key: &str, ip: &str, bt: Option<&str>| {
        let bt = bt.map(|t| format!(r#","BackendType":"{t}""#)).unwrap_or_default();
        parse_lease(key, format!(r#"{{"PublicIP":"{ip}"{bt}}}"#).as_bytes(), None)
    };
    let entries = vec![
        with("10.244.2.0-24", "198.18.0.12", Some("host-gw")),
        with("10.244.3.0-24", "198.18.0.13", None),
        with("10.244.4.0-24", "198.18.0.14", Some("")),
        with("10.244.5.0-24", "198.18.0.15", Some("HOST-GW")),
        with("10.244.6.0-24", "198.18.0.16", Some("host-gw ")),
        with("10.244.8.0-24", "198.18.0.18", Some("vxlan")),
    ];
    let v = evaluate(&map(entries.clone()), &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.2.0/24 via 198.18.0.12"]);
    assert!(v.bad["10.244.3.0-24"].contains("no BackendType"), "{v:?}");
    assert!(v.bad["10.244.4.0-24"].contains("no BackendType"), "{v:?}");
    for k in ["10.244.5.0-24", "10.244.6.0-24", "10.244.8.0-24"] {
        assert!(v.bad[k].contains("compared exactly"), "{k}: {v:?}");
    }
    // Never routed, but never free either: a node picking a subnet avoids all six.
    assert_eq!(taken(&entries, SystemTime::now()).len(), 6);
}

/// A lease as stored under `key` (any family), with its `PublicIP` and `PublicIPv6`.
fn stored6(key: &str, ip: &str, ip6: Option<&str>) -> LeaseEntry {
    let v6 = ip6.map(|a| format!(r#","PublicIPv6":"{a}""#)).unwrap_or_default();
    let json = format!(r#"{{"PublicIP":"{ip}"{v6},"BackendType":"host-gw","BackendData":null}}"#);
    parse_lease(key, json.as_bytes(), None)
}

fn dual() -> Me {
    Me { v4: Some(me4()), v6: Some(me6()), mode: Mode::HostGw }
}

#[test]
fn dual_stack_peers_are_routed_per_family() {
    let m = map(vec![
        stored6("10.244.1.0-24&fd00:10:244:1::-64", "198.18.0.11", Some("fd00:198:18::11")),
        stored6("10.244.2.0-24&fd00:10:244:2::-64", "198.18.0.12", Some("fd00:198:18::12")),
    ]);
    let v = evaluate(&m, &dual(), SystemTime::now());
    assert_eq!(
        want(&v),
        ["10.244.2.0/24 via 198.18.0.12", "fd00:10:244:2::/64 via fd00:198:18::12"]
    );
    assert!(v.own_present, "{v:?}");
    assert!(v.bad.is_empty(), "{v:?}");
    // IPv6-only: flannel's 0.0.0.0-0 key, told apart by PublicIPv6 (PublicIP 0.0.0.0 on both).
    let only6 = Me { v4: None, v6: Some(me6()), mode: Mode::HostGw };
    let m = map(vec![
        stored6("0.0.0.0-0&fd00:10:244:1::-64", "0.0.0.0", Some("fd00:198:18::11")),
        stored6("0.0.0.0-0&fd00:10:244:2::-64", "0.0.0.0", Some("fd00:198:18::12")),
    ]);
    let v = evaluate(&m, &only6, SystemTime::now());
    assert_eq!(want(&v), ["fd00:10:244:2::/64 via fd00:198:18::12"]);
    assert!(v.own_present && v.bad.is_empty(), "{v:?}");
    // An IPv4-only node ignores IPv6-only leases (nothing to route), and routes none of them.
    let v = evaluate(&m, &me(), SystemTime::now());
    assert!(v.want.is_empty(), "{v:?}");
}

#[test]
fn a_bad_part_of_one_family_never_stops_the_other() {
    let m = map(vec![
        // Valid IPv4, link-local PublicIPv6: IPv4 only.
        stored6("10.244.2.0-24&fd00:10:244:2::-64", "198.18.0.12", Some("fe80::12")),
        // Valid IPv6, this node's own PublicIP: IPv6 only.
        stored6("10.244.3.0-24&fd00:10:244:3::-64", "198.18.0.11", Some("fd00:198:18::13")),
        // A plain IPv4 lease in a dual-stack cluster (a node before IPv6 came on): IPv4 only.
        stored6("10.244.4.0-24", "198.18.0.14", None),
        // An IPv6 subnet without PublicIPv6: IPv4 only.
        stored6("10.244.5.0-24&fd00:10:244:5::-64", "198.18.0.15", None),
    ]);
    let v = evaluate(&m, &dual(), SystemTime::now());
    assert_eq!(
        want(&v),
        [
            "10.244.2.0/24 via 198.18.0.12",
            "10.244.4.0/24 via 198.18.0.14",
            "10.244.5.0/24 via 198.18.0.15",
            "fd00:10:244:3::/64 via fd00:198:18::13",
        ]
    );
    let bad = |k: &str| v.bad[k].clone();
    assert!(
        bad("10.244.2.0-24&fd00:10:244:2::-64").starts_with("IPv6: public IPv6 fe80::12 is not"),
        "{v:?}"
    );
    assert!(
        bad("10.244.3.0-24&fd00:10:244:3::-64").starts_with("IPv4: points at this node's own"),
        "{v:?}"
    );
    assert!(bad("10.244.4.0-24").contains("IPv6: no IPv6 subnet"), "{v:?}");
    assert!(bad("10.244.5.0-24&fd00:10:244:5::-64").contains("without a PublicIPv6"), "{v:?}");
}

#[test]
fn hostile_ipv6_leases_are_never_routed() {
    let cases = [
        // Outside the IPv6 network.
        ("0.0.0.0-0&fd00:99::-64", "fd00:198:18::21", "outside the IPv6 cluster network"),
        // The wrong length (and so overlapping peers of the right one).
        ("0.0.0.0-0&fd00:10:244:20::-60", "fd00:198:18::22", "is not a /64"),
        // This node's own IPv6 subnet, claimed for another address.
        ("0.0.0.0-0&fd00:10:244:1::-64", "fd00:198:18::23", "claims this node's IPv6 subnet"),
        // This node's own address as gateway.
        ("0.0.0.0-0&fd00:10:244:24::-64", "fd00:198:18::11", "this node's own public IPv6"),
        // Link-local, multicast, loopback, unspecified, IPv4-mapped gateways.
        ("0.0.0.0-0&fd00:10:244:25::-64", "fe80::25", "not a usable node address"),
        ("0.0.0.0-0&fd00:10:244:26::-64", "ff02::1", "not a usable node address"),
        ("0.0.0.0-0&fd00:10:244:27::-64", "::1", "not a usable node address"),
        ("0.0.0.0-0&fd00:10:244:28::-64", "::", "not a usable node address"),
        ("0.0.0.0-0&fd00:10:244:29::-64", "::ffff:198.18.0.29", "not a usable node address"),
        // A gateway inside the pod network.
        ("0.0.0.0-0&fd00:10:244:2a::-64", "fd00:10:244:2b::1", "not a usable node address"),
    ];
    let only6 = Me { v4: None, v6: Some(me6()), mode: Mode::HostGw };
    let entries: Vec<LeaseEntry> =
        cases.iter().map(|(k, ip, _)| stored6(k, "0.0.0.0", Some(ip))).collect();
    let v = evaluate(&map(entries), &only6, SystemTime::now());
    assert!(v.want.is_empty(), "{v:?}");
    for (k, _, why) in cases {
        assert!(v.bad[k].contains(why), "{k}: {:?}", v.bad.get(k));
    }
    // Two leases of one IPv6 subnet: one is routed, the other reported.
    let m = map(vec![
        stored6("0.0.0.0-0&fd00:10:244:30::-64", "0.0.0.0", Some("fd00:198:18::30")),
        stored6("10.244.30.0-24&fd00:10:244:30::-64", "198.18.0.31", Some("fd00:198:18::31")),
    ]);
    let v = evaluate(&m, &only6, SystemTime::now());
    assert_eq!(v.want.len(), 1, "{v:?}");
    assert!(v.bad.values().any(|r| r.contains("also leased as")), "{v:?}");
    // Non-canonical IPv6 spellings are bad entries and block their IPv6 subnet.
    let e = stored6("0.0.0.0-0&FD00:10:244:31::-64", "0.0.0.0", Some("fd00:198:18::31"));
    assert!(e.is_err());
    assert_eq!(
        taken6(&[e], SystemTime::now()),
        ["fd00:10:244:31::/64".parse::<Ipv6Network>().unwrap()]
    );
}

#[test]
fn ipv6_only_leases_block_no_ipv4_subnet_and_a_plain_slash_0_blocks_all() {
    let now = SystemTime::now();
    let only6 = stored6("0.0.0.0-0&fd00:10:244:7::-64", "0.0.0.0", Some("fd00:198:18::17"));
    assert_eq!(taken(std::slice::from_ref(&only6), now), Vec::<Ipv4Network>::new());
    assert_eq!(taken6(&[only6], now), ["fd00:10:244:7::/64".parse::<Ipv6Network>().unwrap()]);
    // A plain 0.0.0.0-0 names no subnet of either family: a bad entry blocking all of IPv4.
    let all = stored6("0.0.0.0-0", "198.18.0.9", None);
    assert!(all.is_err(), "{all:?}");
    assert_eq!(
        taken(std::slice::from_ref(&all), now),
        ["0.0.0.0/0".parse::<Ipv4Network>().unwrap()]
    );
    assert!(taken6(&[all], now).is_empty());
}

#[test]
fn vxlan_mode_routes_vxlan_and_host_gw_leases_and_encapsulates_only_valid_vteps() {
    let with = |key: &str, ip: &str, bt: &str, data: &str| {
        let j = format!(r#"{{"PublicIP":"{ip}","BackendType":"{bt}","BackendData":{data}}}"#);
        parse_lease(key, j.as_bytes(), None)
    };
    let entries = vec![
        with("10.244.2.0-24", "198.18.0.12", "vxlan", r#"{"VNI":1,"VtepMAC":"0e:66:c6:12:00:0c"}"#),
        with("10.244.3.0-24", "198.18.0.13", "host-gw", "null"),
        with("10.244.4.0-24", "198.18.0.14", "vxlan", r#"{"VNI":2,"VtepMAC":"0e:66:c6:12:00:0e"}"#),
        with("10.244.5.0-24", "198.18.0.15", "vxlan", r#"{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}"#),
        with("10.244.6.0-24", "198.18.0.16", "vxlan", r#"{"VNI":1}"#),
        with("10.244.7.0-24", "198.18.0.17", "udp", "null"),
        with("10.244.8.0-24", "198.18.0.18", "VXLAN", r#"{"VNI":1,"VtepMAC":"0e:66:c6:12:00:12"}"#),
    ];
    let conf = crate::config::VxlanConf { vni: 1, port: 8472, direct_routing: true };
    let vx = Me { mode: Mode::Vxlan(conf), ..me() };
    let v = evaluate(&map(entries.clone()), &vx, SystemTime::now());
    assert_eq!(
        want(&v),
        [
            "10.244.2.0/24 via 198.18.0.12",
            "10.244.3.0/24 via 198.18.0.13",
            "10.244.4.0/24 via 198.18.0.14",
            "10.244.5.0/24 via 198.18.0.15",
            "10.244.6.0/24 via 198.18.0.16",
        ]
    );
    let vtep: Vec<String> = v.vteps.iter().map(|(s, m)| format!("{s} {m:02x?}")).collect();
    assert_eq!(vtep, ["10.244.2.0/24 [0e, 66, c6, 12, 00, 0c]"]);
    assert!(v.unencapsulated["10.244.4.0-24"].contains("VNI 2"), "{v:?}");
    assert!(v.unencapsulated["10.244.5.0-24"].contains("unicast"), "{v:?}");
    assert!(v.unencapsulated["10.244.6.0-24"].contains("no VtepMAC"), "{v:?}");
    assert!(v.bad["10.244.7.0-24"].contains(r#""vxlan" or "host-gw""#), "{v:?}");
    assert!(v.bad["10.244.8.0-24"].contains("compared exactly"), "{v:?}");
    // host-gw mode routes none of the vxlan leases, as flannel's host-gw backend.
    let v = evaluate(&map(entries), &me(), SystemTime::now());
    assert_eq!(want(&v), ["10.244.3.0/24 via 198.18.0.13"]);
    assert!(v.vteps.is_empty());
}
