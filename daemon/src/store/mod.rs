//! Lease stores: where the cluster network config and the per-node subnet leases live.
//!
//! Two backends implement [`LeaseStore`]: [`file::FileStore`] (the embedded default, a directory
//! shared by the nodes that use it) and [`etcd::EtcdStore`] (etcd v3, flannel-compatible layout).
//! Both speak flannel's JSON for the config and for lease attributes.
//!
//! Wire formats (both stores):
//! * config: `{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.255.0","Backend":{"Type":"host-gw"}}`
//! * lease key `<prefix>/subnets/10.244.1.0-24`, value `{"PublicIP":"198.18.0.11","BackendType":"host-gw","BackendData":null}`
//!   (flannel's dual-stack leases: `10.244.1.0-24&fd00:10:244:2e::-64`; the IPv4 part is routed)
//!
//! Lease keys parse only in their one canonical spelling ([`parse_subnet_key`]): a key that spells
//! a subnet differently (`10.244.1.0-024`) is a bad entry under its own key, never merged with
//! the real lease. Such a key still blocks the subnet it might claim ([`claimed_subnet`]).

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

pub mod any;
pub mod etcd;
pub mod file;

/// The cluster network config, flannel's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    #[serde(rename = "Network")]
    pub network: Ipv4Network,
    #[serde(rename = "SubnetLen", default)]
    pub subnet_len: u8,
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<Ipv4Addr>,
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<Ipv4Addr>,
    /// As flannel reads it: absent means `udp`, `null` or `{}` an empty type.
    #[serde(rename = "Backend", default = "Backend::absent", deserialize_with = "backend_or_null")]
    pub backend: Backend,
}

/// The network config's `Backend`: flannel's keys for the two backends Ferry speaks (host-gw;
/// vxlan with `VNI`, `Port`, `DirectRouting`). Other keys are ignored, as flannel does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "VNI", default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(rename = "DirectRouting", default, skip_serializing_if = "Option::is_none")]
    pub direct_routing: Option<bool>,
}

impl Backend {
    /// Ferry's default backend, as ferryd writes it into a config it stores.
    pub fn host_gw() -> Backend {
        Backend { kind: "host-gw".into(), ..Backend::default() }
    }

    /// flannel's vxlan backend with direct routes to the peers on this node's own segment:
    /// what `--backend vxlan` stores.
    pub fn vxlan_direct() -> Backend {
        Backend { kind: "vxlan".into(), direct_routing: Some(true), ..Backend::default() }
    }

    /// What flannel takes a config without `Backend` to mean: `udp`.
    pub fn absent() -> Backend {
        Backend { kind: "udp".into(), ..Backend::default() }
    }
}

/// `"Backend": null` is flannel's empty type, not a parse error.
fn backend_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Backend, D::Error> {
    Ok(Option::<Backend>::deserialize(d)?.unwrap_or_default())
}

/// What a lease says about its node, flannel's `LeaseAttrs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The entry's key as the store gave it (the daemon sees keys relative to the subnets
    /// prefix: `10.244.1.0-24`, or a dual-stack `10.244.1.0-24&fd00::-64`).
    pub key: String,
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// When the lease runs out; `None` for a permanent reservation.
    pub expires: Option<SystemTime>,
}

/// A store entry that could not be read as a lease: kept so the daemon can warn and count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLease {
    pub key: String,
    pub reason: String,
}

/// One entry of a listing or a watch.
pub type LeaseEntry = std::result::Result<Lease, BadLease>;

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created or updated.
    Put(LeaseEntry),
    /// A lease key disappeared (deleted or expired).
    Removed { key: String, subnet: Option<Ipv4Network> },
    /// The watch lost track (compaction, reconnect): here is the full current list.
    Resync(Vec<LeaseEntry>),
}

#[derive(Debug)]
pub enum StoreError {
    /// The store cannot be reached right now (etcd down, timeout): retry with backoff.
    Unavailable(String),
    /// The store answered, but with something we cannot use.
    Invalid(String),
    /// Any other failure (I/O on the file store, ...).
    Other(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            StoreError::Invalid(m) => write!(f, "invalid store contents: {m}"),
            StoreError::Other(m) => write!(f, "store error: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The lease key for a subnet: `10.244.1.0-24`.
pub fn subnet_key(subnet: Ipv4Network) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix())
}

/// The last path component of a store key.
pub fn short_key(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Parse a lease key (the last path component): `10.244.1.0-24`, or flannel's dual-stack
/// `10.244.1.0-24&fd00:10:244:2e::-64` (its IPv4 subnet). Only the canonical spelling parses,
/// the one [`subnet_key`] writes (no leading zeros or signs, no host bits); `None` otherwise.
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Network> {
    let last = short_key(key);
    let (v4, v6) = match last.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (last, None),
    };
    let (ip, len) = v4.split_once('-')?;
    let net = Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    if subnet_key(net) != v4 || net.network() != net.ip() {
        return None;
    }
    match v6 {
        None => Some(net),
        Some(v6) => parse_v6_key(v6).map(|_| net),
    }
}

/// The IPv6 part of a dual-stack key, canonical (RFC 5952, as flannel writes it) and aligned.
fn parse_v6_key(s: &str) -> Option<Ipv6Network> {
    let (ip, len) = s.rsplit_once('-')?;
    let net = Ipv6Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    let canonical = format!("{}-{}", net.network(), net.prefix());
    (canonical == s && net.network() == net.ip()).then_some(net)
}

/// The IPv4 subnet a key might claim, read leniently (leading zeros, signs, spaces or dashes
/// around numbers, host bits, anything after `&`): what a node picking a free subnet must treat as taken when the key does
/// not parse. `None` only when no reading of the key names a subnet.
pub fn claimed_subnet(key: &str) -> Option<Ipv4Network> {
    let v4 = short_key(key).split('&').next()?;
    let (ip, len) = v4.rsplit_once('-').or_else(|| v4.rsplit_once('/'))?;
    let num = |s: &str| s.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u8>().ok();
    let octets: Vec<u8> = ip.split('.').map(num).collect::<Option<_>>()?;
    let [a, b, c, d] = octets[..] else { return None };
    let len = num(len)?;
    let net = Ipv4Network::new(Ipv4Addr::new(a, b, c, d), len).ok()?;
    Ipv4Network::new(net.network(), len).ok()
}

/// Parse one stored lease value for `key`.
pub fn parse_lease(key: &str, value: &[u8], expires: Option<SystemTime>) -> LeaseEntry {
    let bad = |reason: String| BadLease { key: key.to_string(), reason };
    let subnet = parse_subnet_key(key)
        .ok_or_else(|| bad(format!("{NON_CANONICAL}: not <ip>-<prefix> in canonical form")))?;
    let attrs: LeaseAttrs =
        serde_json::from_slice(value).map_err(|e| bad(format!("value is not lease JSON: {e}")))?;
    Ok(Lease { key: key.to_string(), subnet, attrs, expires })
}

/// How a bad entry's reason starts when its key is not a canonical lease key.
pub const NON_CANONICAL: &str = "non-canonical key";

/// A lease store. All methods are cancel-safe except where noted.
#[allow(async_fn_in_trait)]
pub trait LeaseStore {
    /// The stored network config; `Ok(None)` if none is stored yet.
    async fn get_config(&mut self) -> Result<Option<NetworkConfig>>;

    /// Store `cfg` unless a config exists; returns the config that is stored afterwards.
    async fn put_config_if_absent(&mut self, cfg: &NetworkConfig) -> Result<NetworkConfig>;

    /// Every lease entry (bad ones included), plus a revision to pass to `watch`.
    async fn list(&mut self) -> Result<(Vec<LeaseEntry>, i64)>;

    /// Create the lease for `subnet` only if no key exists for it (a transaction on etcd, an
    /// exclusive create under lock on the file store). `Ok(false)` if someone else holds it.
    async fn create(
        &mut self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool>;

    /// Extend the TTL of a lease this node holds (same attrs). `Ok(false)` if the key is gone or
    /// now belongs to another public IP.
    async fn renew(
        &mut self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool>;

    /// Delete the lease for `subnet` (no error if absent).
    async fn delete(&mut self, subnet: Ipv4Network) -> Result<()>;

    /// Wait for the next batch of changes after `revision` (the first call gets the revision from
    /// `list`); returns the events and the revision to pass next time. Not cancel-safe on etcd:
    /// keep the future alive (select! on a pinned future) or call `list` again after cancelling.
    async fn watch(&mut self, revision: i64) -> Result<(Vec<WatchEvent>, i64)>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let n: Ipv4Network = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(n), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("/coreos.com/network/subnets/10.244.3.0-24"), Some(n));
        assert_eq!(parse_subnet_key("10.244.3.1-24"), None);
        assert_eq!(parse_subnet_key("garbage"), None);
        assert_eq!(parse_subnet_key("10.244.3.0-33"), None);
    }

    #[test]
    fn only_the_canonical_spelling_parses() {
        for k in [
            "10.244.50.0-024",
            "10.244.51.0-+24",
            "010.244.50.0-24",
            "10.244.50.00-24",
            "10.244.50.0- 24",
            " 10.244.50.0-24",
            "10.244.50.0-24 ",
            "10.244.50.0--24",
            "10.244.50.0-24&",
            "10.244.50.0-24&fd00:10:244:002e::-64",
            "10.244.50.0-24&FD00:10:244:2e::-64",
            "10.244.50.0-24&fd00:10:244:2e::1-64",
            "10.244.50.0-24&fd00:10:244:2e::-064",
            "10.244.50.0-24&fd00:10:244:2e:0:0:0:0-64",
        ] {
            assert_eq!(parse_subnet_key(k), None, "{k}");
            assert!(claimed_subnet(k).is_some(), "{k} blocks a subnet");
        }
        let n: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        assert_eq!(parse_subnet_key("10.244.1.0-24&fd00:10:244:2e::-64"), Some(n));
        assert_eq!(claimed_subnet("10.244.1.0-024"), Some(n));
        assert_eq!(claimed_subnet("10.244.1.7-+24&junk"), Some(n));
        assert_eq!(claimed_subnet("junk"), None);
        let e = parse_lease("10.244.50.0-024", br#"{"PublicIP":"198.18.0.9"}"#, None);
        assert!(e.unwrap_err().reason.starts_with(NON_CANONICAL));
    }

    #[test]
    fn flannel_lease_json_parses() {
        let e = parse_lease(
            "10.244.1.0-24",
            br#"{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
            None,
        )
        .unwrap();
        assert_eq!(e.attrs.public_ip, "198.18.0.11".parse::<Ipv4Addr>().unwrap());
        assert!(parse_lease("10.244.1.0-24", b"{garbage", None).is_err());
    }

    #[test]
    fn flannel_config_json_parses() {
        let c: NetworkConfig = serde_json::from_str(
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.backend.kind, "host-gw");
        // flannel's reading: no Backend is udp; null and {} are an empty type.
        let kind = |j: &str| serde_json::from_str::<NetworkConfig>(j).unwrap().backend.kind;
        assert_eq!(kind(r#"{"Network":"10.244.0.0/16"}"#), "udp");
        assert_eq!(kind(r#"{"Network":"10.244.0.0/16","Backend":null}"#), "");
        assert_eq!(kind(r#"{"Network":"10.244.0.0/16","Backend":{}}"#), "");
        let written = serde_json::to_string(&NetworkConfig {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            subnet_min: None,
            subnet_max: None,
            backend: Backend::host_gw(),
        })
        .unwrap();
        assert!(written.contains(r#""Backend":{"Type":"host-gw"}"#), "{written}");
    }
}
