use super::*;
use crate::config::validate;
use crate::config::Mode;
use crate::store::{subnet_key, BadLease, NetworkConfig, Result as StoreResult, WatchEvent};
use ipnetwork::Ipv4Network;
use ipnetwork::Ipv6Network;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// An in-memory store; `fail` makes every call return Unavailable.
#[derive(Default)]
struct Mem {
    leases: BTreeMap<Subnets, Lease>,
    garbage: Vec<String>,
    fail: bool,
    creates: usize,
}

impl LeaseStore for Mem {
    async fn get_config(&mut self) -> StoreResult<Option<NetworkConfig>> {
        Ok(None)
    }
    async fn put_config_if_absent(&mut self, cfg: &NetworkConfig) -> StoreResult<NetworkConfig> {
        Ok(cfg.clone())
    }
    async fn list(&mut self) -> StoreResult<(Vec<LeaseEntry>, i64)> {
        if self.fail {
            return Err(StoreError::Unavailable("down".into()));
        }
        let mut v: Vec<LeaseEntry> = self.leases.values().cloned().map(Ok).collect();
        v.extend(
            self.garbage.iter().map(|k| Err(BadLease { key: k.clone(), reason: "garbage".into() })),
        );
        Ok((v, 1))
    }
    async fn create(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let subnet: Subnets = subnet.into();
        self.creates += 1;
        if self.leases.contains_key(&subnet) || self.garbage.contains(&subnet.key()) {
            return Ok(false);
        }
        self.leases.insert(
            subnet,
            Lease {
                key: subnet.key(),
                subnet: subnet.v4_or_empty(),
                subnet6: subnet.v6,
                attrs: attrs.clone(),
                expires: Some(SystemTime::now() + ttl),
            },
        );
        Ok(true)
    }
    async fn renew(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> StoreResult<bool> {
        match self.leases.get_mut(&subnet.into()) {
            Some(l) if l.attrs.same_node(attrs) => {
                l.expires = Some(SystemTime::now() + ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn delete(&mut self, subnet: impl Into<Subnets>) -> StoreResult<()> {
        let subnet: Subnets = subnet.into();
        self.leases.remove(&subnet);
        self.garbage.retain(|k| *k != subnet.key());
        Ok(())
    }
    async fn watch(&mut self, _revision: i64) -> StoreResult<(Vec<WatchEvent>, i64)> {
        std::future::pending().await
    }
}

/// An IPv4-only claim for `ip`, remembering `remembered`.
async fn claim4(
    s: &mut Mem,
    net: &Net,
    ip: Ipv4Addr,
    remembered: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<Lease, ClaimError> {
    let r = Subnets { v4: remembered, v6: None };
    claim(s, net, &my_attrs(Some(ip), None, Mode::HostGw), r, ttl).await
}

/// A host-gw network (the fixtures leave `Backend` out).
fn net(json: &str) -> Net {
    let mut c = serde_json::from_str::<NetworkConfig>(json).unwrap();
    c.backend = crate::store::Backend::host_gw();
    validate(&c).unwrap()
}

fn n(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

const TTL: Duration = Duration::from_secs(60);

#[test]
fn claims_distinct_random_subnets_and_skips_the_first() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    block(async {
        for i in 0..50u8 {
            claim4(&mut s, &net, Ipv4Addr::new(198, 18, 0, 10 + i), None, TTL).await.unwrap();
        }
    });
    assert_eq!(s.leases.len(), 50);
    assert!(!s.leases.contains_key(&n("10.244.0.0/24").into()));
    // Random, not sequential: 50 picks among 100 candidates are very unlikely to be the first 50.
    assert!(s.leases.keys().any(|k| k.v4.unwrap().network().octets()[2] > 50));
}

#[test]
fn reuses_own_lease_then_remembered_subnet() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    block(async {
        let a = claim4(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        let b = claim4(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        assert_eq!(a.subnet, b.subnet, "existing lease by public IP is reused");
        s.leases.clear();
        let c =
            claim4(&mut s, &net, ip("198.18.0.11"), Some(n("10.244.77.0/24")), TTL).await.unwrap();
        assert_eq!(c.subnet, n("10.244.77.0/24"), "remembered subnet is re-claimed when free");
        // Remembered subnet (the pods' subnet) validly leased to someone else: refuse, never
        // renumber the node under its pods.
        s.leases.clear();
        claim4(&mut s, &net, ip("198.18.0.12"), Some(n("10.244.77.0/24")), TTL).await.unwrap();
        let d = claim4(&mut s, &net, ip("198.18.0.11"), Some(n("10.244.77.0/24")), TTL).await;
        assert!(
            matches!(&d, Err(ClaimError::Taken { subnet, by }) if subnet == "10.244.77.0/24" && *by == IpAddr::V4(ip("198.18.0.12"))),
            "{d:?}"
        );
    });
}

#[test]
fn own_lease_overwritten_with_garbage_is_rewritten_in_place() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    block(async {
        let a = claim4(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        s.leases.clear();
        s.garbage.push(subnet_key(a.subnet));
        // Look-alikes of the subnet do not count either way.
        s.garbage.push(format!("{}-024", a.subnet.network()));
        let b = claim4(&mut s, &net, ip("198.18.0.11"), Some(a.subnet), TTL).await.unwrap();
        assert_eq!(b.subnet, a.subnet, "the node keeps its pods' subnet");
        assert_eq!(s.leases[&a.subnet.into()].attrs.public_ip, ip("198.18.0.11"));
        assert!(!s.garbage.contains(&subnet_key(a.subnet)));
    });
}

#[test]
fn a_look_alike_key_blocks_its_subnet_for_a_new_node() {
    let net =
        net(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0"}"#);
    let mut s = Mem::default();
    s.garbage.extend(["10.244.1.0-024".into(), "10.244.2.0-24&fd00::-64x".into()]);
    let l = block(claim4(&mut s, &net, ip("198.18.0.11"), None, TTL)).unwrap();
    assert_eq!(l.subnet, n("10.244.3.0/24"));
}

#[test]
fn permanent_reservation_stays_permanent() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    s.leases.insert(
        n("10.244.5.0/24").into(),
        Lease {
            key: "10.244.5.0-24".into(),
            subnet: n("10.244.5.0/24"),
            subnet6: None,
            attrs: my_attrs(Some(ip("198.18.0.11")), None, Mode::HostGw),
            expires: None,
        },
    );
    let l = block(claim4(&mut s, &net, ip("198.18.0.11"), None, TTL)).unwrap();
    assert_eq!((l.subnet, l.expires), (n("10.244.5.0/24"), None));
}

#[test]
fn exhaustion_and_outage_are_errors() {
    let net =
        net(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#);
    let mut s = Mem::default();
    s.garbage.push("10.244.2.0-24".into());
    block(async {
        let a = claim4(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        assert_eq!(a.subnet, n("10.244.1.0/24"), "a garbage entry still occupies its key");
        assert!(matches!(
            claim4(&mut s, &net, ip("198.18.0.12"), None, TTL).await,
            Err(ClaimError::Exhausted(_))
        ));
        s.fail = true;
        assert!(matches!(
            claim4(&mut s, &net, ip("198.18.0.13"), None, TTL).await,
            Err(ClaimError::Store(StoreError::Unavailable(_)))
        ));
    });
}

#[test]
fn free_subnets_skips_overlapping_taken_ranges() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let taken = [n("10.244.0.0/20"), n("10.244.17.0/24"), n("10.244.16.128/25")];
    let free = free_subnets(&net.v4.unwrap(), &taken, 3);
    assert_eq!(
        free.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ["10.244.18.0/24", "10.244.19.0/24", "10.244.20.0/24"]
    );
}

#[test]
fn renew_timing() {
    let h = Duration::from_secs(3600);
    assert_eq!(renew_after(24 * h, h), 23 * h);
    assert_eq!(renew_after(Duration::from_secs(4), h), Duration::from_secs(2));
    assert_eq!(renew_after(Duration::from_secs(4), Duration::from_secs(1)), Duration::from_secs(3));
}

fn n6(s: &str) -> Ipv6Network {
    s.parse().unwrap()
}

const DUAL: &str =
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#;
const ONLY6: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#;

fn attrs6(v4: Option<&str>, v6: &str) -> LeaseAttrs {
    my_attrs(v4.map(ip), Some(v6.parse().unwrap()), Mode::HostGw)
}

#[test]
fn dual_stack_claims_both_families_under_one_flannel_key() {
    let net = net(DUAL);
    let mut s = Mem::default();
    block(async {
        for i in 0..20u8 {
            let a =
                attrs6(Some(&format!("198.18.0.{}", 10 + i)), &format!("fd00:198:18::{}", 10 + i));
            let l = claim(&mut s, &net, &a, Subnets { v4: None, v6: None }, TTL).await.unwrap();
            let (v4, v6) = (l.subnets().v4.unwrap(), l.subnet6.unwrap());
            assert_eq!(l.key, format!("{}-24&{}-64", v4.network(), v6.network()), "flannel's key");
            assert_eq!(crate::store::parse_lease_key(&l.key), Some((v4, Some(v6))));
        }
    });
    assert_eq!(s.creates, 20, "one create per node: both families in one key");
    let v4: std::collections::HashSet<_> = s.leases.keys().map(|k| k.v4.unwrap()).collect();
    let v6: std::collections::HashSet<_> = s.leases.keys().map(|k| k.v6.unwrap()).collect();
    assert_eq!((v4.len(), v6.len()), (20, 20), "distinct subnets in each family");
    assert!(!v6.contains(&n6("fd00:10:244::/64")), "the first IPv6 subnet is skipped");
}

#[test]
fn ipv6_only_key_is_flannels_empty_ipv4_form() {
    let net = net(ONLY6);
    let mut s = Mem::default();
    let a = attrs6(None, "fd00:198:18::11");
    let l = block(claim(&mut s, &net, &a, Subnets { v4: None, v6: None }, TTL)).unwrap();
    let v6 = l.subnet6.unwrap();
    assert_eq!(l.key, format!("0.0.0.0-0&{}-64", v6.network()));
    assert_eq!(l.subnets().v4, None);
    assert_eq!(l.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
    // Another node (told apart by its PublicIPv6, both PublicIPs being 0.0.0.0) gets another.
    let b = attrs6(None, "fd00:198:18::12");
    let m = block(claim(&mut s, &net, &b, Subnets { v4: None, v6: None }, TTL)).unwrap();
    assert_ne!(m.subnet6, l.subnet6);
    // The first node restarting adopts its own lease.
    let again = block(claim(&mut s, &net, &a, Subnets { v4: None, v6: None }, TTL)).unwrap();
    assert_eq!(again.key, l.key);
}

#[test]
fn remembered_subnets_are_kept_and_a_new_family_gets_a_free_subnet() {
    let net = net(DUAL);
    let mut s = Mem::default();
    let a = attrs6(Some("198.18.0.11"), "fd00:198:18::11");
    block(async {
        // The subnet file names both: both are re-claimed as they were.
        let r = Subnets { v4: Some(n("10.244.77.0/24")), v6: Some(n6("fd00:10:244:2e::/64")) };
        let l = claim(&mut s, &net, &a, r, TTL).await.unwrap();
        assert_eq!(l.subnets(), r);
        assert_eq!(l.key, "10.244.77.0-24&fd00:10:244:2e::-64");
        // IPv6 just turned on: the pods' IPv4 subnet is kept, an IPv6 one is picked, and the
        // node's plain IPv4 key from before is replaced by the dual-stack one.
        s.leases.clear();
        let old4 = my_attrs(Some(ip("198.18.0.11")), None, Mode::HostGw);
        claim(&mut s, &net_v4(), &old4, n("10.244.77.0/24").into(), TTL).await.unwrap();
        assert!(s.leases.contains_key(&n("10.244.77.0/24").into()));
        let r = Subnets { v4: Some(n("10.244.77.0/24")), v6: None };
        let l = claim(&mut s, &net, &a, r, TTL).await.unwrap();
        assert_eq!(l.subnets().v4, Some(n("10.244.77.0/24")));
        assert!(l.subnet6.is_some());
        assert_eq!(s.leases.len(), 1, "the plain key is gone: {:?}", s.leases.keys());
    });
}

fn net_v4() -> Net {
    net(r#"{"Network":"10.244.0.0/16"}"#)
}

#[test]
fn a_remembered_ipv6_subnet_leased_to_another_node_is_refused() {
    let net = net(DUAL);
    let mut s = Mem::default();
    block(async {
        let other = attrs6(Some("198.18.0.12"), "fd00:198:18::12");
        let theirs = Subnets { v4: Some(n("10.244.5.0/24")), v6: Some(n6("fd00:10:244:2e::/64")) };
        claim(&mut s, &net, &other, theirs, TTL).await.unwrap();
        let me = attrs6(Some("198.18.0.11"), "fd00:198:18::11");
        let mine = Subnets { v4: Some(n("10.244.6.0/24")), v6: Some(n6("fd00:10:244:2e::/64")) };
        let e = claim(&mut s, &net, &me, mine, TTL).await;
        assert!(
            matches!(&e, Err(ClaimError::Taken { subnet, .. }) if subnet == "fd00:10:244:2e::/64"),
            "{e:?}"
        );
        assert_eq!(s.leases.len(), 1, "nothing claimed for one family alone");
    });
}

#[test]
fn flannel_keys_and_unparseable_ipv6_parts_block_their_subnets() {
    let net = net(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetMin":"fd00:10:244:1::","IPv6SubnetMax":"fd00:10:244:3::"}"#,
    );
    let mut s = Mem::default();
    // A look-alike key (upper case, leading zeros) blocks both its subnets, never free.
    s.garbage.push("10.244.1.0-24&FD00:10:244:0001::-64".into());
    // flannel's own dual-stack lease.
    let theirs = Subnets { v4: Some(n("10.244.2.0/24")), v6: Some(n6("fd00:10:244:2::/64")) };
    s.leases.insert(
        theirs,
        Lease {
            key: theirs.key(),
            subnet: n("10.244.2.0/24"),
            subnet6: theirs.v6,
            attrs: attrs6(Some("198.18.0.12"), "fd00:198:18::12"),
            expires: None,
        },
    );
    let me = attrs6(Some("198.18.0.11"), "fd00:198:18::11");
    let l = block(claim(&mut s, &net, &me, Subnets { v4: None, v6: None }, TTL)).unwrap();
    assert_eq!(l.subnets().v4, Some(n("10.244.3.0/24")));
    assert_eq!(l.subnet6, Some(n6("fd00:10:244:3::/64")));
    // Nothing left in either family.
    let e = block(claim(
        &mut s,
        &net,
        &attrs6(Some("198.18.0.13"), "fd00:198:18::13"),
        Subnets { v4: None, v6: None },
        TTL,
    ));
    assert!(matches!(e, Err(ClaimError::Exhausted(_))), "{e:?}");
}

#[test]
fn free_ipv6_subnets_jump_over_taken_ranges() {
    let n6net = net(ONLY6).v6.unwrap();
    let taken = [n6("fd00:10:244::/60"), n6("fd00:10:244:11::/64"), n6("fd00:10:244:10:8000::/65")];
    let free = free_subnets6(&n6net, &taken, 3);
    assert_eq!(
        free.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ["fd00:10:244:12::/64", "fd00:10:244:13::/64", "fd00:10:244:14::/64"]
    );
    // A /16 of /64s (2^48 of them) with a few taken: still instant.
    let big =
        net(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/16"}"#).v6.unwrap();
    let free = free_subnets6(&big, &[n6("fd00::/20")], 100);
    assert_eq!(free.len(), 100);
    assert_eq!(free[0], n6("fd00:1000::/64"));
}
