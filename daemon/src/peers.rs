//! From the store's lease entries to the routes this node wants: pure, O(n log n).
//!
//! A lease is routed only if it is a well-formed host-gw lease inside the cluster network, is not
//! this node's own, does not overlap this node's subnet or another lease, and points at a public IP
//! that is not this node's. Everything else is reported as bad and never routed.

use crate::config::{overlaps, span};
use crate::store::{parse_subnet_key, subnet_key, Lease, LeaseEntry, WatchEvent};
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
}

/// The store's current entries, keyed by lease key (`10.244.1.0-24`).
pub type Leases = BTreeMap<String, LeaseEntry>;

#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Peer subnet → gateway (the peer's public IP).
    pub want: BTreeMap<Ipv4Network, Ipv4Addr>,
    /// Key → why it is ignored.
    pub bad: BTreeMap<String, String>,
    /// The store holds this node's lease (own subnet with own public IP).
    pub own_present: bool,
}

/// The last path component of a store key, which is what `Leases` is keyed on.
pub fn short_key(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Fold watch events into the lease map.
pub fn apply_event(leases: &mut Leases, ev: WatchEvent) {
    match ev {
        WatchEvent::Put(Ok(l)) => {
            leases.insert(subnet_key(l.subnet), Ok(l));
        }
        WatchEvent::Put(Err(b)) => {
            leases.insert(short_key(&b.key).to_string(), Err(b));
        }
        WatchEvent::Removed { key, subnet } => {
            let k = subnet.map(subnet_key).unwrap_or_else(|| short_key(&key).to_string());
            leases.remove(&k);
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
    // Leases of the configured length cannot overlap each other, so in a clash the odd-sized
    // lease is the bad one.
    ok.sort_by_key(|(s, _, _)| (u32::from(s.network()), s.prefix()));
    let clash = clashes(ok.iter().map(|(s, _, _)| *s));
    for (i, (s, ip, key)) in ok.iter().enumerate() {
        match clash[i] {
            Some(j) if s.prefix() != me.subnet_len => {
                v.bad.insert(key.to_string(), format!("subnet {s} overlaps lease {}", ok[j].2));
            }
            _ => {
                v.want.insert(*s, *ip);
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

fn judge(l: &Lease, me: &Me) -> Judged {
    let (s, ip) = (l.subnet, l.attrs.public_ip);
    let bad = |r: String| Judged::Bad(r);
    if !l.attrs.backend_type.is_empty() && !l.attrs.backend_type.eq_ignore_ascii_case("host-gw") {
        bad(format!("backend type {:?} is not host-gw", l.attrs.backend_type))
    } else if s.prefix() < me.network.prefix() || !me.network.contains(s.network()) {
        bad(format!("subnet {s} is outside the cluster network {}", me.network))
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

/// For each subnet (sorted by start address, then prefix), one other subnet it overlaps, if
/// any. CIDRs either nest or are disjoint: a sweep with a stack of enclosing subnets finds every
/// overlap.
fn clashes(sorted: impl ExactSizeIterator<Item = Ipv4Network>) -> Vec<Option<usize>> {
    let spans: Vec<(u32, u32)> = sorted.map(span).collect();
    let mut clash: Vec<Option<usize>> = vec![None; spans.len()];
    let mut stack: Vec<usize> = Vec::new();
    for i in 0..spans.len() {
        let (start, _) = spans[i];
        while stack.last().is_some_and(|&j| spans[j].1 < start) {
            stack.pop();
        }
        for &j in &stack {
            clash[i].get_or_insert(j);
            clash[j].get_or_insert(i);
        }
        stack.push(i);
    }
    clash
}

/// All subnets any entry occupies (bad ones included when their key names a subnet): what a claim
/// must avoid.
pub fn taken(entries: &[LeaseEntry], now: SystemTime) -> Vec<Ipv4Network> {
    entries
        .iter()
        .filter_map(|e| match e {
            Ok(l) if l.expires.is_none_or(|t| t > now) => Some(l.subnet),
            Ok(_) => None,
            Err(b) => parse_subnet_key(&b.key),
        })
        .collect()
}

#[cfg(test)]
mod tests;
