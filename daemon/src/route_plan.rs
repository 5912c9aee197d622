//! host-gw routes as data: what this node wants, what Ferry has in the kernel, and the plan
//! between the two. Pure; [`crate::route_applier`] carries plans out.
//!
//! Ferry owns exactly the main-table IPv4 routes tagged `proto 113` ([`RTPROT_FERRY`]); it adds,
//! replaces (atomically, NLM_F_REPLACE) and deletes only those, and never touches anything else.

use ferry_netlink::{Route, Scope, RTPROT_FERRY, RT_TABLE_MAIN};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

/// Peer subnet → gateway (the peer's public IP).
pub type Want = BTreeMap<Ipv4Network, Ipv4Addr>;

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub add: Vec<(Ipv4Network, Ipv4Addr)>,
    /// Our route for the subnet exists with a wrong gateway.
    pub replace: Vec<(Ipv4Network, Ipv4Addr)>,
    /// Our routes that are not wanted (peer gone, duplicates, a metric we never set).
    pub del: Vec<Route>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many kernel changes the plan asks for.
    pub fn len(&self) -> usize {
        self.add.len() + self.replace.len() + self.del.len()
    }
}

/// Compare wanted routes with the ones Ferry owns in the kernel. `have` must contain only Ferry's
/// routes (protocol 113, main table). O(n log n).
pub fn plan(want: &Want, have: &[Route]) -> Plan {
    let mut p = Plan::default();
    let mut seen: HashSet<Ipv4Network> = HashSet::with_capacity(have.len());
    for r in have {
        let IpNetwork::V4(dst) = r.dst else { continue };
        let gw = match r.gateway {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        match want.get(&dst) {
            Some(&w) if r.metric.unwrap_or(0) == 0 && seen.insert(dst) => {
                if gw != Some(w) {
                    p.replace.push((dst, w));
                }
            }
            _ => p.del.push(r.clone()),
        }
    }
    p.add = want.iter().filter(|(d, _)| !seen.contains(*d)).map(|(d, g)| (*d, *g)).collect();
    p
}

/// The route Ferry installs for a peer.
pub fn peer_route(dst: Ipv4Network, gw: Ipv4Addr, oif: u32) -> Route {
    Route {
        dst: IpNetwork::V4(dst),
        gateway: Some(IpAddr::V4(gw)),
        oif: Some(oif),
        scope: Scope::Universe,
        protocol: RTPROT_FERRY,
        table: RT_TABLE_MAIN,
        src: None,
        metric: None,
        onlink: false,
        nh_id: None,
    }
}

/// Destinations whose gateway differs between two wanted sets: (dst, old gw, new gw). O(n).
pub fn diff(old: &Want, new: &Want) -> Vec<(Ipv4Network, Option<Ipv4Addr>, Option<Ipv4Addr>)> {
    let mut out = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(&(d, g)), None) => {
                out.push((*d, Some(*g), None));
                a.next();
            }
            (None, Some(&(d, g))) => {
                out.push((*d, None, Some(*g)));
                b.next();
            }
            (Some(&(da, ga)), Some(&(db, gb))) => {
                if da < db {
                    out.push((*da, Some(*ga), None));
                    a.next();
                } else if db < da {
                    out.push((*db, None, Some(*gb)));
                    b.next();
                } else {
                    if ga != gb {
                        out.push((*da, Some(*ga), Some(*gb)));
                    }
                    a.next();
                    b.next();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
