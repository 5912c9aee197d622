//! From the store's lease entries to the routes this node wants: pure, O(n log n).
//!
//! A lease is routed only if it is a well-formed host-gw lease (its `BackendType` exactly
//! `host-gw`, as flanneld's host-gw backend compares it: a missing type or `HOST-GW` is not
//! routed by either) inside the cluster network, of the network's subnet length, is not this node's own, does not overlap this node's subnet or another
//! lease, and points at a public IP that is not this node's. Everything else is reported as bad and never routed.

use crate::config::{overlaps, Mode};
use crate::overlay;
use crate::store::{claimed_subnet, Lease, LeaseEntry, WatchEvent};
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

/// Who this node is, for telling peers from itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub mode: Mode,
}

/// The store's current entries, keyed by their key exactly as stored (`10.244.1.0-24`): two keys
/// that spell one subnet differently are two entries, never one.
pub type Leases = BTreeMap<String, LeaseEntry>;

#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Peer subnet → gateway (the peer's public IP).
    pub want: BTreeMap<Ipv4Network, Ipv4Addr>,
    /// vxlan backend: peer subnet → VTEP MAC, for the peers that can be sent VXLAN (their
    /// lease is a vxlan lease with valid `BackendData`). Other peers get direct routes only.
    pub vteps: BTreeMap<Ipv4Network, [u8; 6]>,
    /// Key → why it is ignored.
    pub bad: BTreeMap<String, String>,
    /// The store holds this node's lease (own subnet with own public IP).
    pub own_present: bool,
    /// vxlan leases routed only directly (never encapsulated): key → why.
    pub unencapsulated: BTreeMap<String, String>,
}

/// Fold watch events into the lease map.
pub fn apply_event(leases: &mut Leases, ev: WatchEvent) {
    match ev {
        WatchEvent::Put(Ok(l)) => {
            leases.insert(l.key.clone(), Ok(l));
        }
        WatchEvent::Put(Err(b)) => {
            leases.insert(b.key.clone(), Err(b));
        }
        WatchEvent::Removed { key, .. } => {
            leases.remove(&key);
        }
        WatchEvent::Resync(all) => {
            leases.clear();
            for e in all {
                apply_event(leases, WatchEvent::Put(e));
            }
        }
    }
}

/// The routes this node wants from the store's current entries, and which entries are bad.
pub fn evaluate(leases: &Leases, me: &Me, now: SystemTime) -> Verdict {
    let mut v = Verdict::default();
    let mut ok: Vec<(Ipv4Network, Ipv4Addr, &str)> = Vec::with_capacity(leases.len());
    for (key, entry) in leases {
        let l = match entry {
            Err(b) => {
                v.bad.insert(key.clone(), b.reason.clone());
                continue;
            }
            Ok(l) => l,
        };
        if l.expires.is_some_and(|t| t <= now) {
            continue;
        }
        match judge(l, me) {
            Judged::Own => v.own_present = true,
            Judged::Bad(r) => {
                v.bad.insert(key.clone(), r);
            }
            Judged::Peer => ok.push((l.subnet, l.attrs.public_ip, key.as_str())),
        }
    }
    // Every peer lease has the network's subnet length, so two overlap only when they are one
    // subnet (a plain and a dual-stack key): the plain key, else the first key, is routed.
    ok.sort_by_key(|(s, _, k)| (u32::from(s.network()), k.contains('&'), *k));
    let mut first: BTreeMap<Ipv4Network, &str> = BTreeMap::new();
    for (s, ip, key) in ok {
        match first.get(&s) {
            Some(k) => {
                v.bad.insert(key.to_string(), format!("subnet {s} is also leased as {k}"));
            }
            None => {
                first.insert(s, key);
                v.want.insert(s, ip);
                if let (Mode::Vxlan(x), Some(Ok(l))) = (me.mode, leases.get(key)) {
                    if l.attrs.backend_type == "vxlan" {
                        match overlay::peer_vtep(&l.attrs.backend_data, x.vni) {
                            Ok(mac) => {
                                v.vteps.insert(s, mac);
                            }
                            Err(why) => {
                                v.unencapsulated.insert(key.to_string(), why);
                            }
                        }
                    }
                }
            }
        }
    }
    v
}

/// What a live, well-formed lease is to this node.
enum Judged {
    /// This node's own lease.
    Own,
    /// Never routed, for this reason.
    Bad(String),
    /// A peer to route (unless it overlaps another lease).
    Peer,
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

fn judge(l: &Lease, me: &Me) -> Judged {
    let (s, ip) = (l.subnet, l.attrs.public_ip);
    let bad = |r: String| Judged::Bad(r);
    if !speaks(me.mode, &l.attrs.backend_type) {
        bad(backend_reason(me.mode, &l.attrs.backend_type))
    } else if s.prefix() < me.network.prefix() || !me.network.contains(s.network()) {
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
        Judged::Peer
    }
}

/// All subnets any entry occupies: what a claim must avoid. A bad entry blocks whatever subnet
/// its key might claim, read leniently (`10.244.5.0-024` blocks 10.244.5.0/24): an entry that
/// cannot be parsed is never taken as free.
pub fn taken(entries: &[LeaseEntry], now: SystemTime) -> Vec<Ipv4Network> {
    entries
        .iter()
        .filter_map(|e| match e {
            Ok(l) if l.expires.is_none_or(|t| t > now) => Some(l.subnet),
            Ok(_) => None,
            Err(b) => claimed_subnet(&b.key),
        })
        .collect()
}

#[cfg(test)]
mod tests;
