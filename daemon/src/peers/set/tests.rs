//! `PeerSet` against `evaluate`: random event sequences over a small universe of subnets, keys,
//! addresses, backends and expiries (so duplicates, own leases, bad entries, dual-stack keys and
//! leases running out all happen), compared after every event.

use super::*;
use crate::config::{Mode, VxlanConf};
use crate::peers::tests::{lease, me4, me6};
use crate::peers::{apply_event, Me4};
use crate::store::{until_deleted, BadLease, Lease, LeaseAttrs, LeaseEntry};
use ipnetwork::Ipv4Network;
use std::time::Duration;
use testlab::Rng;

fn me(r: &mut Rng) -> Me {
    let v4 = Me4 {
        public_ip: *r.pick(&["198.18.0.11".parse().unwrap(), "198.18.0.12".parse().unwrap()]),
        ..me4()
    };
    let v6 = me6();
    let mode = match r.below(3) {
        0 => Mode::Vxlan(VxlanConf { vni: 1, port: 8472, direct_routing: true }),
        _ => Mode::HostGw,
    };
    match r.below(4) {
        0 => Me { v4: None, v6: Some(v6), mode },
        1 => Me { v4: Some(v4), v6: Some(v6), mode },
        _ => Me { v4: Some(v4), v6: None, mode },
    }
}

const V4: &[&str] =
    &["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.245.1.0/24"];
const V6: &[&str] =
    &["fd00:10:244::/64", "fd00:10:244:1::/64", "fd00:10:244:2::/64", "fd00:10:245::/64"];

fn entry(r: &mut Rng, t0: SystemTime) -> LeaseEntry {
    let subnet: Ipv4Network = match r.below(5) {
        0 => "0.0.0.0/0".parse().unwrap(),
        _ => r.pick(V4).parse().unwrap(),
    };
    let subnet6: Option<Ipv6Network> = match r.below(3) {
        0 if subnet.prefix() > 0 => None,
        _ => Some(r.pick(V6).parse().unwrap()),
    };
    let s = crate::store::Subnets { v4: (subnet.prefix() > 0).then_some(subnet), v6: subnet6 };
    let key = s.key();
    if r.below(8) == 0 {
        let key = if r.below(2) == 0 { key } else { format!("{key}x") };
        return Err(BadLease { key, reason: format!("bad {}", r.below(3)) });
    }
    let backend_type = r.pick(&["host-gw", "host-gw", "vxlan", "", "HOST-GW"]).to_string();
    let backend_data = match r.below(3) {
        0 => serde_json::json!({"VNI": 1, "VtepMAC": "0e:66:c6:12:00:0c"}),
        1 => serde_json::json!({"VNI": 2, "VtepMAC": "0e:66:c6:12:00:0c"}),
        _ => serde_json::Value::Null,
    };
    let expires = match r.below(6) {
        0 => Some(t0 + Duration::from_secs(r.below(40))),
        1 => Some(until_deleted()),
        2 => Some(t0 - Duration::from_secs(1)),
        _ => None,
    };
    Ok(Lease {
        key,
        subnet,
        subnet6,
        attrs: LeaseAttrs {
            public_ip: r
                .pick(&["198.18.0.11", "198.18.0.12", "198.18.0.13", "10.244.9.9"])
                .parse()
                .unwrap(),
            public_ipv6: match r.below(4) {
                0 => None,
                _ => Some(
                    r.pick(&["fd00:198:18::11", "fd00:198:18::13", "fe80::1"]).parse().unwrap(),
                ),
            },
            backend_type,
            backend_data,
            backend_v6_data: None,
        },
        expires,
    })
}

/// This node moved (a new public IP) or changed backend.
fn vary(mut me: Me, r: &mut Rng) -> Me {
    if let Some(m) = me.v4.as_mut() {
        m.public_ip = *r.pick(&["198.18.0.11".parse().unwrap(), "198.18.0.13".parse().unwrap()]);
    }
    if r.below(2) == 0 {
        me.mode = Mode::HostGw;
    }
    me
}

#[test]
fn agrees_with_evaluate_after_every_event() {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut events = 0;
    for seed in 1..=400u64 {
        let mut r = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut me = me(&mut r);
        let mut now = base;
        let mut set = PeerSet::new();
        let mut reference = Leases::new();
        let mut routes = Want::new(); // the wanted routes as the changes build them
        let mut prev = Verdict::default();
        for step in 0..120 {
            if r.below(25) == 0 {
                me = vary(me, &mut r);
            }
            now += Duration::from_secs(r.below(3));
            let ev = match r.below(20) {
                0 => WatchEvent::Resync((0..r.below(6)).map(|_| entry(&mut r, now)).collect()),
                1..=6 if !reference.is_empty() => {
                    let keys: Vec<String> = reference.keys().map(|k| k.to_string()).collect();
                    let key = r.pick(&keys).clone();
                    WatchEvent::Removed { key, subnet: None }
                }
                _ => WatchEvent::Put(entry(&mut r, now)),
            };
            apply_event(&mut reference, ev.clone());
            set.apply(ev, &me, now);
            let want = evaluate(&reference, &me, now);
            assert_eq!(set.verdict(), &want, "seed {seed} step {step}");
            // Every key whose report changed is named (or everything is).
            let named = set.take_reported();
            let keys = want.bad.keys().chain(want.unencapsulated.keys());
            for k in keys.chain(prev.bad.keys()).chain(prev.unencapsulated.keys()) {
                let bad = want.bad.get(k) != prev.bad.get(k);
                let unencap = want.unencapsulated.get(k) != prev.unencapsulated.get(k);
                assert!(!bad || named.bad.contains(k), "seed {seed} step {step}: {k} not reported");
                assert!(
                    !unencap || named.unencapsulated.contains(k),
                    "seed {seed} step {step}: {k} not reported"
                );
            }
            prev = want.clone_parts();
            for (d, was, now) in set.take_changes() {
                assert_eq!(routes.get(&d).copied(), was, "seed {seed} step {step}: {d} was");
                match now {
                    Some(g) => routes.insert(d, g),
                    None => routes.remove(&d),
                };
            }
            assert_eq!(routes, prev.want, "seed {seed} step {step}: changes add up");
            events += 1;
        }
    }
    assert_eq!(events, 400 * 120);
}

#[test]
fn a_lease_running_out_is_dropped_at_the_next_event() {
    let me = crate::peers::tests::me();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let Ok(mut l) = lease("10.244.2.0/24", "198.18.0.12") else { unreachable!() };
    l.expires = Some(t0 + Duration::from_secs(10));
    let mut set = PeerSet::new();
    set.apply(WatchEvent::Put(Ok(l)), &me, t0);
    assert_eq!(set.want().len(), 1);
    let other = WatchEvent::Removed { key: "10.244.9.0-24".into(), subnet: None };
    set.apply(other, &me, t0 + Duration::from_secs(11));
    assert!(set.want().is_empty());
    let ch = set.take_changes();
    assert_eq!(ch, vec![]); // added and gone again between two takes: no net change
}

impl Verdict {
    fn clone_parts(&self) -> Verdict {
        Verdict {
            want: self.want.clone(),
            vteps: self.vteps.clone(),
            bad: self.bad.clone(),
            own_present: self.own_present,
            unencapsulated: self.unencapsulated.clone(),
        }
    }
}
