//! Generated input for ferryd's parsers (proptest): the lease-key parser, the lease JSON parser
//! (flannel's JSON plus the file store's expiry field), the network-config JSON parser and the
//! flag parser each get 10,000 cases (near-valid structured input and arbitrary input; x10 with
//! FERRY_SOAK=1) and must return a value or a clean error, never panic. Round trips: canonical
//! key format/parse, lease JSON written/read, the subnet file ferryd writes read back by
//! ferry-cni's SubnetEnv parser.

use ferry_cni::subnet_env::SubnetEnv;
use ferryd::args;
use ferryd::config::validate;
use ferryd::node::subnet_env;
use ferryd::peers::{Me, Me4};
use ferryd::store::file::{lease_json, parse_file};
use ferryd::store::{
    claimed_subnet, claimed_subnet6, parse_lease_key, parse_subnet_key, subnet_key, LeaseAttrs,
    NetworkConfig, Subnets,
};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, UNIX_EPOCH};

fn cases() -> u32 {
    let soak = std::env::var("FERRY_SOAK").is_ok_and(|v| v == "1");
    if soak {
        100_000
    } else {
        10_000
    }
}

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// A number as someone might spell it: plain, zero-padded, signed, spaced, or out of range.
fn number(max: u32) -> impl Strategy<Value = String> {
    (0..=max + 3, 0..6u8).prop_map(|(n, how)| match how {
        0 | 1 => n.to_string(),
        2 => format!("0{n}"),
        3 => format!("+{n}"),
        4 => format!(" {n}"),
        _ => format!("{}", n as u64 * 1000),
    })
}

/// Lease keys near the canonical form (and sometimes exactly it), with dual-stack suffixes.
fn near_key() -> impl Strategy<Value = String> {
    let v4 = (number(255), number(255), number(255), number(255), number(32))
        .prop_map(|(a, b, c, d, l)| format!("{a}.{b}.{c}.{d}-{l}"));
    let v6 = prop_oneof![
        Just(String::new()),
        Just("&fd00:10:244:2e::-64".to_string()),
        (any::<u128>(), 0..130u8)
            .prop_map(|(a, l)| format!("&{}-{l}", std::net::Ipv6Addr::from(a))),
        "&[0-9a-fA-F:]{0,20}-[0-9]{0,3}",
    ];
    (v4, v6).prop_map(|(a, b)| a + &b)
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn lease_keys_parse_only_canonically(k in prop_oneof![near_key(), ".*", "[0-9.+&:/ -]{0,30}"]) {
        if let Some(n) = parse_subnet_key(&k) {
            let v4 = k.rsplit('/').next().unwrap().split('&').next().unwrap();
            prop_assert_eq!(subnet_key(n), v4, "only the canonical spelling parses");
            prop_assert_eq!(claimed_subnet(&k), Some(n), "a parsed key blocks its own subnet");
        }
    }

    #[test]
    fn canonical_keys_round_trip(ip in any::<u32>(), len in 0..=32u8) {
        let n = Ipv4Network::new(Ipv4Addr::from(ip), len).unwrap();
        let n = Ipv4Network::new(n.network(), len).unwrap();
        // A plain /0 key names no subnet of either family (a bad entry, blocking everything);
        // with an IPv6 part it is flannel's IPv6-only key.
        let plain = (len > 0).then_some(n);
        prop_assert_eq!(parse_subnet_key(&subnet_key(n)), plain);
        let ds = format!("{}&fd00:10:244:2e::-64", subnet_key(n));
        prop_assert_eq!(parse_subnet_key(&ds), Some(n));
    }

    #[test]
    fn lease_json_never_panics(
        v in prop_oneof![
            (number(300), prop_oneof![
                Just("null".to_string()), "-?[0-9]{1,25}(\\.[0-9]{1,3})?(e[0-9]{1,3})?",
                "\"[0-9a-z]{0,5}\"",
            ], "[a-z-]{0,8}").prop_map(|(o, exp, bt)| format!(
                r#"{{"PublicIP":"198.18.0.{o}","BackendType":"{bt}","ExpiresUnixMs":{exp}}}"#)),
            ".*",
            "\\{[\"A-Za-z:,0-9.{}\\[\\] ]{0,40}\\}",
        ],
        key in prop_oneof![near_key(), ".{0,20}"],
    ) {
        let _ = parse_file(&key, v.as_bytes());
    }

    #[test]
    fn lease_json_round_trips(ip in any::<u32>(), ms in 0..=(1u64 << 45), bt in "[a-z-]{0,10}") {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::from(ip),
            backend_type: bt,
            backend_data: serde_json::Value::Null,
            public_ipv6: None,
            backend_v6_data: None,
        };
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        let bytes = lease_json(&attrs, at).unwrap();
        let (entry, exp) = parse_file("10.244.1.0-24", &bytes);
        let l = entry.unwrap();
        prop_assert_eq!(l.attrs, attrs);
        prop_assert_eq!(exp, Some(at));
        prop_assert_eq!(l.expires, Some(at));
    }

    #[test]
    fn network_config_json_never_panics(
        v in prop_oneof![
            ((number(255), number(255), number(40)), number(300), number(255), number(255), "[a-zA-Z-]{0,9}")
                .prop_map(|((a, b, p), len, mn, mx, t)| format!(
                    r#"{{"Network":"{a}.{b}.0.0/{p}","SubnetLen":{len},"SubnetMin":"{a}.{b}.{mn}.0","SubnetMax":"{a}.{b}.{mx}.0","Backend":{{"Type":"{t}"}}}}"#)),
            (any::<u32>(), 0..=32u8, 0..=40u8, any::<u32>(), any::<u32>()).prop_map(|(n, p, len, mn, mx)| format!(
                r#"{{"Network":"{}/{p}","SubnetLen":{len},"SubnetMin":"{}","SubnetMax":"{}"}}"#,
                Ipv4Addr::from(n), Ipv4Addr::from(mn), Ipv4Addr::from(mx))),
            ".*",
        ],
    ) {
        if let Ok(c) = serde_json::from_str::<NetworkConfig>(&v) {
            if let Ok(net) = validate(&c) {
                let net = net.v4.expect("an IPv4 config");
                prop_assert!(net.subnet_len > net.network.prefix() && net.subnet_len <= 30);
                prop_assert!(u32::from(net.min) <= u32::from(net.max));
                let min = Ipv4Network::new(net.min, net.subnet_len).unwrap();
                let max = Ipv4Network::new(net.max, net.subnet_len).unwrap();
                prop_assert!(net.in_range(min) && net.in_range(max), "{:?}", net);
            }
        }
    }

    #[test]
    fn dual_stack_keys_round_trip_and_look_alikes_block(
        v4 in any::<u32>(), p4 in 1..=30u8, v6 in any::<u128>(), p6 in 1..=126u8, junk in ".{0,12}",
    ) {
        let a = Ipv4Network::new(Ipv4Addr::from(v4), p4).unwrap();
        let a = Ipv4Network::new(a.network(), p4).unwrap();
        let b = Ipv6Network::new(Ipv6Addr::from(v6), p6).unwrap();
        let b = Ipv6Network::new(b.network(), p6).unwrap();
        for s in [Subnets { v4: Some(a), v6: Some(b) }, Subnets { v4: None, v6: Some(b) }] {
            let key = s.key();
            let (got4, got6) = parse_lease_key(&key).unwrap();
            prop_assert_eq!((got4.prefix() > 0).then_some(got4), s.v4);
            prop_assert_eq!(got6, s.v6);
            // Spelled in upper case (not canonical): parsed as nothing, still blocks its IPv6 subnet.
            let upper = key.to_ascii_uppercase();
            if upper != key {
                prop_assert_eq!(parse_lease_key(&upper), None);
                prop_assert_eq!(claimed_subnet6(&upper), Some(b));
            }
        }
        let _ = parse_lease_key(&format!("{}&{junk}", subnet_key(a)));
        let _ = claimed_subnet6(&format!("{}&{junk}", subnet_key(a)));
    }

    #[test]
    fn flags_never_panic(argv in prop::collection::vec(prop_oneof![
        (prop::sample::select(args::flag_names()), prop_oneof![
            "-?[0-9]{0,25}(\\.[0-9]{0,3})?(e[0-9]{1,3})?(ms|s|m|h|d|x)?",
            "[0-9./a-z:,]{0,20}",
            ".{0,12}",
        ], any::<bool>()).prop_map(|(f, v, inline)| if inline { vec![format!("{f}={v}")] } else { vec![f.to_string(), v] }),
        ".{0,16}".prop_map(|s| vec![s]),
    ], 0..6)) {
        let argv: Vec<String> = argv.into_iter().flatten().collect();
        let _ = args::parse(argv);
    }

    #[test]
    fn subnet_file_round_trips_through_ferry_cni(
        net in any::<u32>(), plen in 8..=26u8, extra in 1..=4u8, idx in any::<u32>(),
        mtu in 576..=65535u32, masq in any::<bool>(),
    ) {
        let network = Ipv4Network::new(Ipv4Addr::from(net), plen).unwrap();
        let network = Ipv4Network::new(network.network(), plen).unwrap();
        let slen = plen + extra; // at most /30, the longest subnet ferryd hands out
        let count = 1u32 << extra;
        let start = u32::from(network.network()) + (idx % count) * (1u32 << (32 - slen));
        let subnet = Ipv4Network::new(Ipv4Addr::from(start), slen).unwrap();
        let me = Me {
            v4: Some(Me4 { network, subnet_len: slen, subnet, public_ip: Ipv4Addr::new(192, 0, 2, 1) }),
            v6: None,
            mode: ferryd::config::Mode::HostGw,
        };
        let text = subnet_env(&me, mtu, masq);
        let env = SubnetEnv::parse(&text).unwrap();
        prop_assert_eq!(env.network, Some(IpNetwork::V4(network)));
        let Some(IpNetwork::V4(s)) = env.subnet else { panic!("{text}") };
        prop_assert_eq!((s.network(), s.prefix()), (subnet.network(), slen));
        prop_assert_eq!((env.mtu, env.ipmasq), (Some(mtu), Some(masq)));
    }
}
