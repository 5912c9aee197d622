//! From the store's lease entries to the routes this node wants: pure, O(n log n).
//!
//! Each enabled family of a lease is judged on its own: its IPv4 part (subnet, `PublicIP`) and
//! its IPv6 part (subnet, `PublicIPv6`). A part is routed only if the lease is a well-formed
//! host-gw lease (its `BackendType` exactly `host-gw`, as flanneld's host-gw backend compares
//! it: a missing type or `HOST-GW` is not routed by either) and the part's subnet is inside the
//! family's cluster network, of its subnet length, is not this node's own, does not overlap
//! this node's subnet or another lease, and points at a public address that is not this
//! node's and is a usable unicast address (IPv6: global, not link-local or multicast). A peer
//! whose IPv4 part is good and IPv6 part is not is routed for IPv4 only, and the reverse;
//! every part not routed is reported as bad.

use crate::config::{is_global6, overlaps, overlaps6, Mode};
use crate::overlay;
use crate::store::{claimed_subnet, claimed_subnet6, LeaseEntry, Subnets, WatchEvent};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// Who this node is, for telling peers from itself: one part per enabled family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    pub v4: Option<Me4>,
    pub v6: Option<Me6>,
    /// How peers are reached (the config's backend): which lease types are routed.
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me4 {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me6 {
    pub network: Ipv6Network,
    pub subnet_len: u8,
    pub subnet: Ipv6Network,
    pub public_ip: Ipv6Addr,
}

impl Me {
    /// This node's subnets (its lease key).
    pub fn subnets(&self) -> Subnets {
        Subnets { v4: self.v4.map(|m| m.subnet), v6: self.v6.map(|m| m.subnet) }
    }
}

/// The store's current entries, keyed by their key exactly as stored (`10.244.1.0-24`): two keys
/// that spell one subnet differently are two entries, never one. Each entry keeps only what
/// judging it needs ([`Peer`]): at 50,000 leases the map is most of ferryd's heap.
pub type Leases = BTreeMap<Box<str>, Entry>;

/// A store entry as the route logic sees it: a lease, or why it could not be read.
pub type Entry = Result<Peer, Box<str>>;

/// What of a lease decides its routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub subnet6: Option<Ipv6Network>,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend: Backend,
    pub expires: Option<SystemTime>,
}

/// A lease's `BackendType` (and, for vxlan, its `BackendData`).
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    HostGw,
    Vxlan(Box<serde_json::Value>),
    Other(Box<str>),
}

impl Peer {
    /// The lease's subnets, with flannel's empty IPv4 subnet read as none.
    pub fn subnets(&self) -> Subnets {
        Subnets { v4: (self.subnet.prefix() > 0).then_some(self.subnet), v6: self.subnet6 }
    }

    fn backend_type(&self) -> &str {
        match &self.backend {
            Backend::HostGw => BACKEND_TYPE,
            Backend::Vxlan(_) => "vxlan",
            Backend::Other(t) => t,
        }
    }
}

/// A store entry's key, and the entry as the lease map keeps it.
pub fn entry(e: LeaseEntry) -> (Box<str>, Entry) {
    match e {
        Ok(l) => {
            let backend = match l.attrs.backend_type.as_str() {
                BACKEND_TYPE => Backend::HostGw,
                "vxlan" => Backend::Vxlan(Box::new(l.attrs.backend_data)),
                t => Backend::Other(t.into()),
            };
            let p = Peer {
                subnet: l.subnet,
                subnet6: l.subnet6,
                public_ip: l.attrs.public_ip,
                public_ipv6: l.attrs.public_ipv6,
                backend,
                expires: l.expires,
            };
            (l.key.into_boxed_str(), Ok(p))
        }
        Err(b) => (b.key.into_boxed_str(), Err(b.reason.into_boxed_str())),
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Peer subnet → gateway (the peer's public address of that family).
    pub want: BTreeMap<IpNetwork, IpAddr>,
    /// vxlan backend: peer subnet → VTEP MAC, for the peers that can be sent VXLAN (their
    /// lease is a vxlan lease with valid `BackendData`). Other peers get direct routes only.
    pub vteps: BTreeMap<Ipv4Network, [u8; 6]>,
    /// Key → why it (or one family's part of it) is ignored.
    pub bad: BTreeMap<String, String>,
    /// The store holds this node's lease (own subnets with own public address).
    pub own_present: bool,
    /// vxlan leases routed only directly (never encapsulated): key → why.
    pub unencapsulated: BTreeMap<String, String>,
}

/// Fold watch events into the lease map.
pub fn apply_event(leases: &mut Leases, ev: WatchEvent) {
    match ev {
        WatchEvent::Put(e) => {
            let (k, e) = entry(e);
            leases.insert(k, e);
        }
        WatchEvent::Removed { key, .. } => {
            leases.remove(key.as_str());
        }
        WatchEvent::Resync(all) => {
            // Built in bulk (sorted): full B-tree nodes, where one insert after another in key
            // order leaves every node half empty.
            *leases = all.into_iter().map(entry).collect();
        }
    }
}

/// The routes this node wants from the store's current entries, and which entries are bad.
pub fn evaluate(leases: &Leases, me: &Me, now: SystemTime) -> Verdict {
    let mut v = Verdict::default();
    let mut ok: Vec<(IpNetwork, bool, &str, IpAddr)> = Vec::with_capacity(leases.len());
    let dual = me.v4.is_some() && me.v6.is_some();
    for (key, entry) in leases {
        let l = match entry {
            Err(b) => {
                v.bad.insert(key.to_string(), b.to_string());
                continue;
            }
            Ok(l) => l,
        };
        if !live(l, now) {
            continue;
        }
        let parts = judge(l, me);
        if parts.iter().all(|(_, j)| matches!(j, Judged::Own)) {
            v.own_present = true;
            continue;
        }
        let mut reasons = Vec::new();
        for (family, j) in parts {
            match j {
                Judged::Peer(dst, gw) => ok.push((dst, key.contains('&'), &**key, gw)),
                other => reasons.push(reason(family, other, dual)),
            }
        }
        if !reasons.is_empty() {
            v.bad.insert(key.to_string(), reasons.join("; "));
        }
    }
    // Every peer lease has the network's subnet length, so two overlap only when they are one
    // subnet (a plain and a dual-stack key): the plain key, else the first key, is routed.
    ok.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    let mut first: Option<(IpNetwork, &str)> = None;
    let mut want = Vec::with_capacity(ok.len());
    for (s, _, key, ip) in ok {
        match first.filter(|(f, _)| *f == s) {
            Some((_, k)) => {
                let why = format!("subnet {s} is also leased as {k}");
                v.bad
                    .entry(key.to_string())
                    .and_modify(|r| *r = format!("{r}; {why}"))
                    .or_insert(why);
            }
            None => {
                first = Some((s, key));
                want.push((s, ip));
                let vx = match (s, leases.get(key)) {
                    (IpNetwork::V4(s4), Some(Ok(l))) => vtep(l, me).map(|r| (s4, r)),
                    _ => None,
                };
                match vx {
                    Some((s, Ok(mac))) => {
                        v.vteps.insert(s, mac);
                    }
                    Some((_, Err(why))) => {
                        v.unencapsulated.insert(key.to_string(), why);
                    }
                    None => {}
                }
            }
        }
    }
    v.want = want.into_iter().collect(); // sorted: built in bulk
    v
}

/// vxlan backend, a vxlan lease: its VTEP MAC, or why it cannot be sent VXLAN. `None` otherwise.
fn vtep(l: &Peer, me: &Me) -> Option<Result<[u8; 6], String>> {
    match (me.mode, &l.backend) {
        (Mode::Vxlan(x), Backend::Vxlan(data)) => Some(overlay::peer_vtep(data, x.vni)),
        _ => None,
    }
}

/// The lease has not run out at `now`.
fn live(l: &Peer, now: SystemTime) -> bool {
    l.expires.is_none_or(|t| t > now)
}

/// Why one family's part of a lease is not routed (`j` is not a peer).
fn reason(family: &str, j: Judged, dual: bool) -> String {
    match j {
        Judged::Bad(r) if dual => format!("{family}: {r}"),
        Judged::Bad(r) => r,
        Judged::Own => format!("{family}: holds this node's subnet under another key"),
        Judged::Peer(d, _) => format!("{family}: routes {d}"), // not a reason: never asked
    }
}

/// What one family's part of a live, well-formed lease is to this node.
enum Judged {
    /// This node's own subnet with its own address.
    Own,
    /// Never routed, for this reason.
    Bad(String),
    /// A peer subnet to route via this gateway (unless it overlaps another lease).
    Peer(IpNetwork, IpAddr),
}

/// The lease `BackendType` Ferry's host-gw mode speaks, compared byte for byte as flanneld's
/// host-gw backend does (`pkg/backend/route_network.go`: `evt.Lease.Attrs.BackendType !=
/// n.BackendType`).
pub const BACKEND_TYPE: &str = "host-gw";

/// Whether a lease of `BackendType` `t` is routed in `mode`: host-gw routes only host-gw leases
/// (as flannel); vxlan routes vxlan leases (direct or encapsulated) and host-gw leases (direct
/// only: such a node cannot decapsulate), so a cluster can move between the two node by node.
fn speaks(mode: Mode, t: &str) -> bool {
    match mode {
        Mode::HostGw => t == BACKEND_TYPE,
        Mode::Vxlan(_) => t == BACKEND_TYPE || t == "vxlan",
    }
}

fn backend_reason(mode: Mode, t: &str) -> String {
    let wanted = match mode {
        Mode::HostGw => "\"host-gw\"",
        Mode::Vxlan(_) => "\"vxlan\" or \"host-gw\"",
    };
    if t.is_empty() {
        format!("no BackendType (this cluster routes only {wanted} leases)")
    } else {
        format!("backend type {t:?} is not {wanted} (compared exactly, as flannel does)")
    }
}

/// Each enabled family's verdict on `l`.
fn judge(l: &Peer, me: &Me) -> Vec<(&'static str, Judged)> {
    let mut out = Vec::with_capacity(2);
    if !speaks(me.mode, l.backend_type()) {
        out.push(("lease", Judged::Bad(backend_reason(me.mode, l.backend_type()))));
        return out;
    }
    let s = l.subnets();
    if let Some(m) = &me.v4 {
        let j = match s.v4 {
            None => Judged::Bad("no IPv4 subnet (an IPv6-only lease)".into()),
            Some(s) => judge4(s, l.public_ip, m),
        };
        out.push(("IPv4", j));
    }
    if let Some(m) = &me.v6 {
        let j = match (s.v6, l.public_ipv6) {
            (None, _) => Judged::Bad("no IPv6 subnet (an IPv4-only lease)".into()),
            (Some(s), None) => Judged::Bad(format!("IPv6 subnet {s} without a PublicIPv6")),
            (Some(s), Some(ip)) => judge6(s, ip, m),
        };
        out.push(("IPv6", j));
    }
    out
}

fn judge4(s: Ipv4Network, ip: Ipv4Addr, me: &Me4) -> Judged {
    let bad = Judged::Bad;
    if s.prefix() < me.network.prefix() || !me.network.contains(s.network()) {
        bad(format!("subnet {s} is outside the cluster network {}", me.network))
    } else if s.prefix() != me.subnet_len {
        bad(format!("subnet {s} is not a /{} (the network's subnet length)", me.subnet_len))
    } else if s == me.subnet {
        if ip == me.public_ip {
            Judged::Own
        } else {
            bad(format!("claims this node's subnet {s} for {ip}"))
        }
    } else if overlaps(s, me.subnet) {
        bad(format!("subnet {s} overlaps this node's subnet {}", me.subnet))
    } else if ip == me.public_ip {
        bad(format!("points at this node's own public IP {ip}"))
    } else if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || me.network.contains(ip)
    {
        bad(format!("public IP {ip} is not a usable node address"))
    } else {
        Judged::Peer(IpNetwork::V4(s), IpAddr::V4(ip))
    }
}

fn judge6(s: Ipv6Network, ip: Ipv6Addr, me: &Me6) -> Judged {
    let bad = Judged::Bad;
    if s.prefix() < me.network.prefix() || !me.network.contains(s.network()) {
        bad(format!("IPv6 subnet {s} is outside the IPv6 cluster network {}", me.network))
    } else if s.prefix() != me.subnet_len {
        bad(format!(
            "IPv6 subnet {s} is not a /{} (the network's IPv6 subnet length)",
            me.subnet_len
        ))
    } else if s.network() != s.ip() {
        bad(format!("IPv6 subnet {s} has host bits set"))
    } else if s == me.subnet {
        if ip == me.public_ip {
            Judged::Own
        } else {
            bad(format!("claims this node's IPv6 subnet {s} for {ip}"))
        }
    } else if overlaps6(s, me.subnet) {
        bad(format!("IPv6 subnet {s} overlaps this node's IPv6 subnet {}", me.subnet))
    } else if ip == me.public_ip {
        bad(format!("points at this node's own public IPv6 {ip}"))
    } else if !is_global6(ip) || me.network.contains(ip) {
        bad(format!("public IPv6 {ip} is not a usable node address"))
    } else {
        Judged::Peer(IpNetwork::V6(s), IpAddr::V6(ip))
    }
}

/// All IPv4 subnets any entry occupies: what a claim must avoid. A bad entry blocks whatever
/// subnet its key might claim, read leniently (`10.244.5.0-024` blocks 10.244.5.0/24): an entry
/// that cannot be parsed is never taken as free. IPv6-only leases occupy no IPv4 subnet.
pub fn taken(entries: &[LeaseEntry], now: SystemTime) -> Vec<Ipv4Network> {
    entries
        .iter()
        .filter_map(|e| match e {
            Ok(l) if l.expires.is_none_or(|t| t > now) => l.subnets().v4,
            Ok(_) => None,
            Err(b) => claimed_subnet(&b.key).filter(|n| n.prefix() > 0 || !b.key.contains('&')),
        })
        .collect()
}

/// All IPv6 subnets any entry occupies, bad entries read leniently as by [`taken`].
pub fn taken6(entries: &[LeaseEntry], now: SystemTime) -> Vec<Ipv6Network> {
    entries
        .iter()
        .filter_map(|e| match e {
            Ok(l) if l.expires.is_none_or(|t| t > now) => l.subnet6,
            Ok(_) => None,
            Err(b) => claimed_subnet6(&b.key),
        })
        .collect()
}

mod set;
pub use set::{Change, PeerSet, Reported};

#[cfg(test)]
mod tests;
