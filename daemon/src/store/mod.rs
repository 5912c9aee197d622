//! Lease stores: where the cluster network config and the per-node subnet leases live.
//!
//! Two backends implement [`LeaseStore`]: [`file::FileStore`] (the embedded default, a directory
//! shared by the nodes that use it) and [`etcd::EtcdStore`] (etcd v3, flannel-compatible layout).
//! Both speak flannel's JSON for the config and for lease attributes.
//!
//! Wire formats (both stores):
//! * config: `{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.255.0","Backend":{"Type":"host-gw"}}`
//! * lease key `<prefix>/subnets/10.244.1.0-24`, value `{"PublicIP":"198.18.0.11","BackendType":"host-gw","BackendData":null}`
//! * dual-stack (config `"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"`): one key for both
//!   families, `10.244.1.0-24&fd00:10:244:2e::-64`, value with `"PublicIPv6":"fd00:198:18::11"`;
//!   IPv6-only (`"EnableIPv4":false`): `0.0.0.0-0&fd00:10:244:2e::-64`, `"PublicIP":"0.0.0.0"`
//!   ([`Subnets`])
//!
//! Lease keys parse only in their one canonical spelling ([`parse_lease_key`]): a key that spells
//! a subnet differently (`10.244.1.0-024`, an upper-case IPv6 part) is a bad entry under its own
//! key, never merged with the real lease. Such a key still blocks the subnets it might claim
//! ([`claimed_subnet`], [`claimed_subnet6`]). A create never succeeds while another node's live
//! lease names one of its subnets under another key ([`conflict`]).

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

pub mod any;
pub mod etcd;
pub mod file;

/// The cluster network config, flannel's field names. `EnableIPv4` defaults to true and is
/// written only when false; `EnableIPv6` is written only when true (flannel's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    #[serde(rename = "EnableIPv4", default = "yes", skip_serializing_if = "is_true")]
    pub enable_ipv4: bool,
    #[serde(rename = "Network", default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Ipv4Network>,
    #[serde(rename = "SubnetLen", default, skip_serializing_if = "is_zero")]
    pub subnet_len: u8,
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<Ipv4Addr>,
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<Ipv4Addr>,
    #[serde(rename = "EnableIPv6", default, skip_serializing_if = "is_false")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPv6Network", default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<Ipv6Network>,
    #[serde(rename = "IPv6SubnetLen", default, skip_serializing_if = "is_zero")]
    pub ipv6_subnet_len: u8,
    #[serde(rename = "IPv6SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    #[serde(rename = "IPv6SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// As flannel reads it: absent means `udp`, `null` or `{}` an empty type.
    #[serde(rename = "Backend", default = "Backend::absent", deserialize_with = "backend_or_null")]
    pub backend: Backend,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

impl NetworkConfig {
    /// An IPv4-only config of `network` (the other fields empty, host-gw).
    pub fn ipv4(network: Ipv4Network) -> NetworkConfig {
        NetworkConfig {
            enable_ipv4: true,
            network: Some(network),
            subnet_len: 0,
            subnet_min: None,
            subnet_max: None,
            enable_ipv6: false,
            ipv6_network: None,
            ipv6_subnet_len: 0,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            backend: Backend::host_gw(),
        }
    }
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

/// What a lease says about its node, flannel's `LeaseAttrs`. `PublicIP` is `0.0.0.0` in an
/// IPv6-only lease; `PublicIPv6` and `BackendV6Data` are written only when set (flannel reads
/// them absent as null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: serde_json::Value,
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "Option::is_none")]
    pub backend_v6_data: Option<serde_json::Value>,
}

impl LeaseAttrs {
    /// Whether a lease with these attrs belongs to the node whose own attrs are `me`: the same
    /// `PublicIP`, or in an IPv6-only lease (`PublicIP` 0.0.0.0) the same `PublicIPv6`.
    pub fn same_node(&self, me: &LeaseAttrs) -> bool {
        if me.public_ip.is_unspecified() {
            me.public_ipv6.is_some() && self.public_ipv6 == me.public_ipv6
        } else {
            self.public_ip == me.public_ip
        }
    }

    /// The node's address for messages: its IPv4 one, else its IPv6 one.
    pub fn node_ip(&self) -> IpAddr {
        match (self.public_ip.is_unspecified(), self.public_ipv6) {
            (true, Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(self.public_ip),
        }
    }
}

/// The subnets one lease key claims: flannel's `10.244.1.0-24`, dual-stack
/// `10.244.1.0-24&fd00:10:244:2e::-64`, or IPv6-only `0.0.0.0-0&fd00:10:244:2e::-64` (flannel
/// writes its empty IPv4 subnet as `0.0.0.0-0`). One key per node covers both families, so
/// a node never holds one family's subnet without the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnets {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

/// flannel's empty IPv4 subnet, the IPv4 part of an IPv6-only lease key.
pub fn no_v4() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0")
}

impl Subnets {
    /// The lease key (last path component).
    pub fn key(&self) -> String {
        let v4 = subnet_key(self.v4.unwrap_or_else(no_v4));
        match self.v6 {
            None => v4,
            Some(n) => format!("{v4}&{}-{}", n.network(), n.prefix()),
        }
    }

    /// [`Lease::subnet`]'s value: the IPv4 subnet, or flannel's empty 0.0.0.0/0.
    pub fn v4_or_empty(&self) -> Ipv4Network {
        self.v4.unwrap_or_else(no_v4)
    }
}

impl From<Ipv4Network> for Subnets {
    fn from(n: Ipv4Network) -> Subnets {
        Subnets { v4: Some(n), v6: None }
    }
}

impl std::fmt::Display for Subnets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a} + {b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("(none)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The entry's key as the store gave it (the daemon sees keys relative to the subnets
    /// prefix: `10.244.1.0-24`, or a dual-stack `10.244.1.0-24&fd00::-64`).
    pub key: String,
    /// The IPv4 subnet; flannel's empty `0.0.0.0/0` in an IPv6-only lease (never routed, never
    /// claimed: see [`Lease::subnets`]).
    pub subnet: Ipv4Network,
    /// The IPv6 subnet of a dual-stack or IPv6-only lease.
    pub subnet6: Option<Ipv6Network>,
    pub attrs: LeaseAttrs,
    /// When the lease runs out; `None` for a permanent reservation; [`until_deleted`] for an
    /// etcd key on an etcd lease whose expiry was not looked up (live while the key exists).
    pub expires: Option<SystemTime>,
}

/// The expiry of a lease whose key exists but whose end was not looked up: an etcd key on an
/// etcd lease, as ferryd's store handles list and watch it ([`etcd::EtcdStore::without_expiries`]).
/// etcd deletes a key when its etcd lease runs out (and only then does the lease stop being
/// live), so a listed or watched key is live until its delete arrives: this is far in the
/// future (9999-12-31), so every liveness check (`expires > now`) holds, and it is `Some` (the
/// key is not a permanent reservation). Only ever compared, never shown by ferryd: it looks up
/// no peer's expiry, and its own lease's expiry is what its last create or renew granted.
pub fn until_deleted() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

impl Lease {
    /// The lease's subnets, with flannel's empty IPv4 subnet read as none.
    pub fn subnets(&self) -> Subnets {
        Subnets { v4: (self.subnet.prefix() > 0).then_some(self.subnet), v6: self.subnet6 }
    }
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
/// `10.244.1.0-24&fd00:10:244:2e::-64` (its IPv4 subnet; IPv6-only keys give flannel's empty
/// `0.0.0.0/0`). Only the canonical spelling parses, the one [`Subnets::key`] writes (no
/// leading zeros or signs, no host bits, RFC 5952 IPv6); `None` otherwise.
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Network> {
    parse_lease_key(key).map(|(v4, _)| v4)
}

/// [`parse_subnet_key`] with the key's IPv6 subnet.
pub fn parse_lease_key(key: &str) -> Option<(Ipv4Network, Option<Ipv6Network>)> {
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
        None if net.prefix() == 0 => None, // neither family
        None => Some((net, None)),
        Some(v6) => parse_v6_key(v6).map(|n| (net, Some(n))),
    }
}

/// The IPv6 part of a dual-stack key, canonical (RFC 5952, as flannel writes it) and aligned.
fn parse_v6_key(s: &str) -> Option<Ipv6Network> {
    let (ip, len) = s.rsplit_once('-')?;
    let net = Ipv6Network::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    let canonical = format!("{}-{}", net.network(), net.prefix());
    (canonical == s && net.network() == net.ip() && net.prefix() > 0).then_some(net)
}

/// The IPv6 subnet a key might claim, read leniently (the part after `&`: upper case, leading
/// zeros, host bits, spaces or signs around the length): what a node picking a free IPv6
/// subnet must treat as taken when the key does not parse.
pub fn claimed_subnet6(key: &str) -> Option<Ipv6Network> {
    let (_, v6) = short_key(key).split_once('&')?;
    let (ip, len) = v6.rsplit_once('-').or_else(|| v6.rsplit_once('/'))?;
    let ip: Ipv6Addr = ip.trim().to_ascii_lowercase().parse().ok()?;
    let len = len.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u8>().ok()?;
    let net = Ipv6Network::new(ip, len).ok()?;
    Ipv6Network::new(net.network(), len).ok()
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

/// Another node's live lease of one of `s`'s subnets (the same IPv4 or the same IPv6 subnet)
/// under another key, in `entries`: what makes a create of `s` fail. Different keys can name
/// one subnet (a dual-stack key shares its IPv4 part with others), so a store that creates by
/// key alone would let two nodes racing for one subnet both win. Bad entries do not count here
/// (a claim avoids them when it picks; a look-alike must not evict a node from its subnet).
pub fn conflict<'a>(
    entries: &'a [LeaseEntry],
    s: Subnets,
    me: &LeaseAttrs,
    now: SystemTime,
) -> Option<&'a Lease> {
    let key = s.key();
    entries.iter().filter_map(|e| e.as_ref().ok()).find(|l| {
        let o = l.subnets();
        l.expires.is_none_or(|t| t > now)
            && short_key(&l.key) != key
            && !l.attrs.same_node(me)
            && ((s.v4.is_some() && o.v4 == s.v4) || (s.v6.is_some() && o.v6 == s.v6))
    })
}

/// Parse one stored lease value for `key`.
pub fn parse_lease(key: &str, value: &[u8], expires: Option<SystemTime>) -> LeaseEntry {
    let bad = |reason: String| BadLease { key: key.to_string(), reason };
    let (subnet, subnet6) = parse_lease_key(key).ok_or_else(|| {
        bad(format!("{NON_CANONICAL}: not <ip>-<prefix>[&<ipv6>-<prefix>] in canonical form"))
    })?;
    let attrs: LeaseAttrs =
        serde_json::from_slice(value).map_err(|e| bad(format!("value is not lease JSON: {e}")))?;
    Ok(Lease { key: key.to_string(), subnet, subnet6, attrs, expires })
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

    /// Create the lease for `subnet` (one key for both families) only if no key exists for it
    /// and no other node's live lease holds one of its subnets ([`conflict`]) (a transaction on etcd, an
    /// exclusive create under lock on the file store). `Ok(false)` if someone else holds it.
    async fn create(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool>;

    /// Extend the TTL of a lease this node holds (same attrs). `Ok(false)` if the key is gone or
    /// now belongs to another public IP.
    async fn renew(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool>;

    /// Delete the lease for `subnet` (no error if absent).
    async fn delete(&mut self, subnet: impl Into<Subnets>) -> Result<()>;

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
        let written =
            serde_json::to_string(&NetworkConfig::ipv4("10.244.0.0/16".parse().unwrap())).unwrap();
        assert!(written.contains(r#""Backend":{"Type":"host-gw"}"#), "{written}");
    }
}
