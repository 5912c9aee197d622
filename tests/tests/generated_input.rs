//! Generated input for every parser that reads what others write: the network config (ferry's
//! and ferry-ipam's), the CNI_* environment, CNI_ARGS and requested IPs, the subnet file and the
//! IPAM state file. Each gets at least 10,000 inputs, structured (the right keys with odd values)
//! and arbitrary (bytes, strings); each must yield a value or a clean error, never a panic
//! (proptest turns a panic into a failure with the shrunk input). Where a format is both written
//! and read, it round-trips: IPAM state encode/decode, CNI results to_json/from_json in every
//! spec version, the subnet file render/parse.
//!
//! Pure code, no sandbox needed. Bounded: a few seconds by default, `FERRY_SOAK=1` runs ten
//! times as many cases. Each parser prints its case count and time.

use ferry_cni::result::{Dns, Interface, IpConfig, Route};
use ferry_cni::subnet_env::SubnetEnv;
use ferry_cni::{CniResult, NetConf, Version};
use ferry_ipam::state::{Owner, State};
use ipnetwork::IpNetwork;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

fn soak() -> u32 {
    match std::env::var("FERRY_SOAK") {
        Ok(v) if !v.is_empty() && v != "0" => 10,
        _ => 1,
    }
}

/// Run `cases` generated inputs through `check`; print the figures.
fn run<S: Strategy>(
    name: &str,
    cases: u32,
    s: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = cases * soak();
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let t0 = Instant::now();
    TestRunner::new(config).run(&s, check).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}: {cases} generated inputs, no panic, {:.2} s", t0.elapsed().as_secs_f64());
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Strings that mean something to some parser, and some that almost do.
const WORDS: &[&str] = &[
    "",
    " ",
    "1.0.0",
    "1.1.0",
    "0.3.1",
    "0.1.0",
    "9.9.9",
    "ferry",
    "t",
    "ferry-ipam",
    "eth0",
    "e%d",
    "a/b",
    "..",
    "10.0.0.0/24",
    "10.0.0.1",
    "10.0.0.0/33",
    "10.0.0.300",
    "fd00::/64",
    "fd00::1",
    "::/0",
    "0.0.0.0/0",
    "10.0.0.5-10.0.0.9",
    "/run/ferry/ipam",
    "relative",
    "/x",
    "debug",
    "loud",
    "true",
    "IP=10.0.0.3",
    "\u{0}",
    "\u{202e}",
    "10.0.0.1,fd00::1",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![prop::sample::select(WORDS).prop_map(String::from), text(24)]
}

/// A JSON value: scalars from [`WORDS`], numbers at the edges, nested lists and objects.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![any::<i64>(), Just(0i64), Just(68), Just(65536), Just(-1)]
            .prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "subnet",
    "subnetFile",
    "dataDir",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "exclude",
    "routes",
    "dns",
    "mtu",
    "ipam",
    "logFile",
    "logLevel",
    "prevResult",
    "runtimeConfig",
    "args",
    "ips",
    "cni",
    "dst",
    "gw",
    "interfaces",
    "address",
    "interface",
    "nameservers",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
    "version",
    "ip4",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(KEYS).prop_map(String::from), 1 => word()]
}

/// A config object: mostly-valid required keys plus random known keys with random values.
fn config_object() -> impl Strategy<Value = Value> {
    let base = (prop::sample::select(&["1.0.0", "1.1.0", "0.4.0", "0.3.1"][..]), any::<bool>());
    (base, prop::collection::vec((key(), value()), 0..8)).prop_map(|((ver, subnet), extra)| {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(ver));
        m.insert("name".into(), json!("t"));
        m.insert("type".into(), json!("ferry"));
        if subnet {
            m.insert("subnet".into(), json!("10.9.0.0/24"));
        }
        for (k, v) in extra {
            m.insert(k, v);
        }
        Value::Object(m)
    })
}

/// Everything the plugins do with a parsed config, short of touching files or the network.
fn use_config(c: &NetConf) {
    let _ = c.prev_result();
    let _ = c.valid_attachments();
    if let Ok(f) = ferry::conf::FerryConf::parse(c) {
        let _ = f.pool("10.9.0.0/24".parse().unwrap());
        let _ = f.pool("fd00:9::/64".parse().unwrap());
        if f.range.subnet.is_some() {
            let _ = f.node_subnets();
        }
    }
    if let Some(m) = c.ipam() {
        if let Ok(i) = ferry_ipam::config::IpamConf::parse(m) {
            let _ = (i.routes(), i.dns());
            let _ = i.range.pools_for(&["10.9.0.0/24".parse().unwrap()]);
        }
    }
}

#[test]
fn config_parsers_never_panic() {
    run("config (structured)", 6_000, config_object(), |v| {
        if let Ok(c) = NetConf::parse(v.to_string().as_bytes()) {
            use_config(&c);
        }
        Ok(())
    });
    run("config (arbitrary bytes)", 4_000, bytes(300), |b| {
        if let Ok(c) = NetConf::parse(&b) {
            use_config(&c);
        }
        Ok(())
    });
}

const ENV_KEYS: &[&str] =
    &["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];

fn env_map() -> impl Strategy<Value = HashMap<String, String>> {
    let cmd = prop_oneof![
        prop::sample::select(&["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", ""][..])
            .prop_map(String::from),
        text(8),
    ];
    (cmd, prop::collection::vec((prop::sample::select(ENV_KEYS), word()), 0..8)).prop_map(
        |(c, kv)| {
            let mut m: HashMap<String, String> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            m.insert("CNI_COMMAND".into(), c);
            m
        },
    )
}

#[test]
fn env_parser_never_panics_and_accepts_only_valid_names() {
    run("env", 10_000, env_map(), |m| {
        if let Ok(Some(a)) = ferry_cni::env::from_env(&|k: &str| m.get(k).cloned()) {
            if !a.ifname.is_empty() {
                prop_assert!(ferry_cni::env::validate_ifname(&a.ifname).is_ok());
                prop_assert!(!a.ifname.contains('%'));
            }
        }
        Ok(())
    });
}

fn cni_args() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        (prop::sample::select(&["IP", "K8S_POD_NAME", "IgnoreUnknown"][..]), word())
            .prop_map(|(k, v)| format!("{k}={v}")),
        word(),
    ];
    prop_oneof![prop::collection::vec(pair, 0..5).prop_map(|p| p.join(";")), text(80),]
}

#[test]
fn cni_args_and_requested_ips_never_panic_and_agree() {
    let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"t","type":"ferry"}"#).unwrap();
    run("CNI_ARGS + requested IPs", 10_000, cni_args(), |raw| {
        let Ok(pairs) = ferry_cni::env::parse_cni_args(&raw) else { return Ok(()) };
        let args = ferry_cni::CniArgs {
            command: ferry_cni::Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            args: pairs,
            path: vec![],
        };
        if let Ok(ips) = ferry_cni::requested::requested_ips(&conf, &args) {
            // One rule: more than one per family, or a family no pool serves, is code 7.
            match ferry_cni::requested::by_family(&ips, &[true]) {
                Ok(m) => prop_assert!(ips.len() <= 1 && m.len() == 1),
                Err(e) => prop_assert_eq!(e.code.as_u32(), 7),
            }
        }
        Ok(())
    });
}

fn subnet_line() -> impl Strategy<Value = String> {
    let k = prop::sample::select(
        &[
            "FLANNEL_SUBNET",
            "FERRY_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ",
            "FLANNEL_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "export FLANNEL_SUBNET",
            "# x",
            "OTHER",
        ][..],
    );
    prop_oneof![(k, word()).prop_map(|(k, v)| format!("{k}={v}")), text(40)]
}

fn v4net() -> impl Strategy<Value = IpNetwork> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, p)| IpNetwork::new(IpAddr::from(a.to_be_bytes()), p).unwrap())
}

fn v6net() -> impl Strategy<Value = IpNetwork> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, p)| IpNetwork::new(IpAddr::from(a.to_be_bytes()), p).unwrap())
}

#[test]
fn subnet_file_parser_never_panics_and_round_trips() {
    run("subnet file (structured lines)", 4_000, prop::collection::vec(subnet_line(), 0..8), |l| {
        let _ = SubnetEnv::parse(&l.join("\n"));
        Ok(())
    });
    run("subnet file (arbitrary text)", 3_000, text(200), |t| {
        let _ = SubnetEnv::parse(&t);
        Ok(())
    });
    let env = (
        prop::option::of(v4net()),
        v4net(),
        prop::option::of(v6net()),
        prop::option::of(v6net()),
        prop::option::of(68u32..=65535),
        prop::option::of(any::<bool>()),
    );
    run("subnet file (render -> parse)", 3_000, env, |(network, subnet, n6, s6, mtu, ipmasq)| {
        let e = SubnetEnv {
            network,
            subnet: Some(subnet),
            ipv6_network: n6,
            ipv6_subnet: s6,
            mtu,
            ipmasq,
        };
        prop_assert_eq!(SubnetEnv::parse(&e.render()).unwrap(), e);
        Ok(())
    });
}

fn owner() -> impl Strategy<Value = Owner> {
    let id = "[A-Za-z0-9][A-Za-z0-9_.-]{0,40}";
    (id, "[a-z][a-z0-9]{0,14}").prop_map(|(c, i)| Owner::new(c, i))
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::from(a.to_be_bytes())),
        any::<u128>().prop_map(|a| IpAddr::from(a.to_be_bytes())),
    ]
}

fn state() -> impl Strategy<Value = State> {
    let last = prop::collection::btree_map(v4net(), any::<u32>(), 0..3);
    (prop::collection::btree_map(ip(), owner(), 0..20), last).prop_map(|(allocations, last)| {
        let last =
            last.into_iter().map(|(n, a)| (n.to_string(), IpAddr::from(a.to_be_bytes()))).collect();
        State { allocations, last }
    })
}

#[test]
fn state_loader_never_panics_and_round_trips() {
    run("IPAM state (encode -> decode)", 4_000, state(), |st| {
        prop_assert_eq!(State::decode(&st.encode()).unwrap(), st);
        Ok(())
    });
    run("IPAM state (arbitrary bytes)", 3_000, bytes(300), |b| {
        let _ = State::decode(&b);
        Ok(())
    });
    let structured = prop::collection::vec((key(), value()), 0..6).prop_map(|kv| {
        let mut m: Map<String, Value> = kv.into_iter().collect();
        m.insert("version".into(), json!(1));
        Value::Object(m)
    });
    run("IPAM state (structured JSON)", 3_000, structured, |v| {
        let _ = State::decode(v.to_string().as_bytes());
        Ok(())
    });
}

fn cni_result() -> impl Strategy<Value = CniResult> {
    let iface =
        ("[a-z0-9]{1,15}", prop::option::of(1u32..9000), prop::option::of("/run/netns/[a-z]{1,8}"))
            .prop_map(|(name, mtu, sandbox)| Interface {
                name,
                mtu,
                sandbox,
                ..Default::default()
            });
    let route = (v4net(), prop::option::of(any::<u32>()), prop::option::of(any::<u32>())).prop_map(
        |(dst, gw, priority)| Route {
            priority,
            ..Route::new(dst, gw.map(|g| IpAddr::from(g.to_be_bytes())))
        },
    );
    let ipc = (prop_oneof![v4net(), v6net()], prop::option::of(ip()), prop::option::of(0usize..3))
        .prop_map(|(address, gateway, interface)| IpConfig { address, gateway, interface });
    (
        prop::collection::vec(iface, 0..3),
        prop::collection::vec(ipc, 1..3),
        prop::collection::vec(route, 0..3),
        prop::collection::vec("[0-9.]{1,15}", 0..2),
    )
        .prop_map(|(interfaces, mut ips, routes, nameservers)| {
            for i in &mut ips {
                i.interface = i.interface.filter(|n| *n < interfaces.len());
            }
            CniResult { interfaces, ips, routes, dns: Dns { nameservers, ..Default::default() } }
        })
}

#[test]
fn cni_results_round_trip_in_every_version() {
    run("CNI result (to_json -> from_json, 7 versions)", 10_000, cni_result(), |r| {
        for s in ferry_cni::version::SUPPORTED {
            let v = Version::parse(s).unwrap();
            let Ok(j) = r.to_json(v) else { continue };
            let back = CniResult::from_json(&j, v)
                .map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
            prop_assert_eq!(back.to_json(v).unwrap(), j, "re-render in {}", s);
            if v == Version::V110 {
                prop_assert_eq!(&back, &r);
            }
        }
        Ok(())
    });
    run("CNI result (arbitrary JSON)", 3_000, value(), |v| {
        for s in ferry_cni::version::SUPPORTED {
            let _ = CniResult::from_json(&v, Version::parse(s).unwrap());
        }
        Ok(())
    });
}
