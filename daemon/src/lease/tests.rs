use super::*;
use crate::config::validate;
use crate::store::{subnet_key, BadLease, NetworkConfig, Result as StoreResult, WatchEvent};
use std::collections::BTreeMap;

/// An in-memory store; `fail` makes every call return Unavailable.
#[derive(Default)]
struct Mem {
    leases: BTreeMap<Ipv4Network, Lease>,
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
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.creates += 1;
        if self.leases.contains_key(&subnet) || self.garbage.contains(&subnet_key(subnet)) {
            return Ok(false);
        }
        self.leases.insert(
            subnet,
            Lease {
                key: subnet_key(subnet),
                subnet,
                attrs: attrs.clone(),
                expires: Some(SystemTime::now() + ttl),
            },
        );
        Ok(true)
    }
    async fn renew(
        &mut self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> StoreResult<bool> {
        match self.leases.get_mut(&subnet) {
            Some(l) if l.attrs.public_ip == attrs.public_ip => {
                l.expires = Some(SystemTime::now() + ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn delete(&mut self, subnet: Ipv4Network) -> StoreResult<()> {
        self.leases.remove(&subnet);
        self.garbage.retain(|k| *k != subnet_key(subnet));
        Ok(())
    }
    async fn watch(&mut self, _revision: i64) -> StoreResult<(Vec<WatchEvent>, i64)> {
        std::future::pending().await
    }
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
            claim(&mut s, &net, Ipv4Addr::new(198, 18, 0, 10 + i), None, TTL).await.unwrap();
        }
    });
    assert_eq!(s.leases.len(), 50);
    assert!(!s.leases.contains_key(&n("10.244.0.0/24")));
    // Random, not sequential: 50 picks among 100 candidates are very unlikely to be the first 50.
    assert!(s.leases.keys().any(|k| k.network().octets()[2] > 50));
}

#[test]
fn reuses_own_lease_then_remembered_subnet() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    block(async {
        let a = claim(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        let b = claim(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        assert_eq!(a.subnet, b.subnet, "existing lease by public IP is reused");
        s.leases.clear();
        let c =
            claim(&mut s, &net, ip("198.18.0.11"), Some(n("10.244.77.0/24")), TTL).await.unwrap();
        assert_eq!(c.subnet, n("10.244.77.0/24"), "remembered subnet is re-claimed when free");
        // Remembered subnet (the pods' subnet) validly leased to someone else: refuse, never
        // renumber the node under its pods.
        s.leases.clear();
        claim(&mut s, &net, ip("198.18.0.12"), Some(n("10.244.77.0/24")), TTL).await.unwrap();
        let d = claim(&mut s, &net, ip("198.18.0.11"), Some(n("10.244.77.0/24")), TTL).await;
        assert!(
            matches!(d, Err(ClaimError::Taken { subnet, by }) if subnet == n("10.244.77.0/24") && by == ip("198.18.0.12")),
            "{d:?}"
        );
    });
}

#[test]
fn own_lease_overwritten_with_garbage_is_rewritten_in_place() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    block(async {
        let a = claim(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        s.leases.clear();
        s.garbage.push(subnet_key(a.subnet));
        // Look-alikes of the subnet do not count either way.
        s.garbage.push(format!("{}-024", a.subnet.network()));
        let b = claim(&mut s, &net, ip("198.18.0.11"), Some(a.subnet), TTL).await.unwrap();
        assert_eq!(b.subnet, a.subnet, "the node keeps its pods' subnet");
        assert_eq!(s.leases[&a.subnet].attrs.public_ip, ip("198.18.0.11"));
        assert!(!s.garbage.contains(&subnet_key(a.subnet)));
    });
}

#[test]
fn a_look_alike_key_blocks_its_subnet_for_a_new_node() {
    let net =
        net(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0"}"#);
    let mut s = Mem::default();
    s.garbage.extend(["10.244.1.0-024".into(), "10.244.2.0-24&fd00::-64x".into()]);
    let l = block(claim(&mut s, &net, ip("198.18.0.11"), None, TTL)).unwrap();
    assert_eq!(l.subnet, n("10.244.3.0/24"));
}

#[test]
fn permanent_reservation_stays_permanent() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let mut s = Mem::default();
    s.leases.insert(
        n("10.244.5.0/24"),
        Lease {
            key: "10.244.5.0-24".into(),
            subnet: n("10.244.5.0/24"),
            attrs: my_attrs(ip("198.18.0.11"), crate::config::Mode::HostGw),
            expires: None,
        },
    );
    let l = block(claim(&mut s, &net, ip("198.18.0.11"), None, TTL)).unwrap();
    assert_eq!((l.subnet, l.expires), (n("10.244.5.0/24"), None));
}

#[test]
fn exhaustion_and_outage_are_errors() {
    let net =
        net(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#);
    let mut s = Mem::default();
    s.garbage.push("10.244.2.0-24".into());
    block(async {
        let a = claim(&mut s, &net, ip("198.18.0.11"), None, TTL).await.unwrap();
        assert_eq!(a.subnet, n("10.244.1.0/24"), "a garbage entry still occupies its key");
        assert!(matches!(
            claim(&mut s, &net, ip("198.18.0.12"), None, TTL).await,
            Err(ClaimError::Exhausted(_))
        ));
        s.fail = true;
        assert!(matches!(
            claim(&mut s, &net, ip("198.18.0.13"), None, TTL).await,
            Err(ClaimError::Store(StoreError::Unavailable(_)))
        ));
    });
}

#[test]
fn free_subnets_skips_overlapping_taken_ranges() {
    let net = net(r#"{"Network":"10.244.0.0/16"}"#);
    let taken = [n("10.244.0.0/20"), n("10.244.17.0/24"), n("10.244.16.128/25")];
    let free = free_subnets(&net, &taken, 3);
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
