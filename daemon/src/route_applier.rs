//! host-gw routes: a pure `plan(want, have)` and the netlink effects that carry it out.
//!
//! Ferry owns exactly the main-table IPv4 routes tagged `proto 113` ([`RTPROT_FERRY`]); it adds,
//! replaces (atomically, NLM_F_REPLACE) and deletes only those, and never touches anything else.

use crate::metrics::{self, Metrics};
use ferry_netlink::{Netlink, Route, Scope, RTPROT_FERRY, RT_TABLE_MAIN};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

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
        self.add.is_empty() && self.replace.is_empty() && self.del.is_empty()
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
    }
}

/// Applies plans through netlink and remembers which peers could not be routed, so they are
/// reported once and retried only on a sweep (or when links/addresses change).
pub struct Routes {
    nl: Netlink,
    m: Arc<Metrics>,
    /// Peer subnet → gateway that was not directly reachable.
    unreachable: HashMap<Ipv4Network, Ipv4Addr>,
    /// Peer subnets held by a route Ferry does not own.
    conflicts: HashMap<Ipv4Network, Ipv4Addr>,
}

impl Routes {
    pub fn new(nl: Netlink, m: Arc<Metrics>) -> Routes {
        Routes { nl, m, unreachable: HashMap::new(), conflicts: HashMap::new() }
    }

    pub fn netlink(&mut self) -> &mut Netlink {
        &mut self.nl
    }

    pub fn has_unreachable(&self) -> bool {
        !self.unreachable.is_empty() || !self.conflicts.is_empty()
    }

    /// Bring the kernel in line with `want` (a full dump of Ferry's routes, then the plan). With
    /// `retry` false, peers already known to be unreachable (same gateway) or blocked by a foreign
    /// route are skipped. Returns how many routes were changed.
    pub fn reconcile(&mut self, want: &Want, retry: bool) -> io::Result<usize> {
        metrics::inc(&self.m.reconciles_total);
        let have = self.nl.routes(false, RT_TABLE_MAIN, Some(RTPROT_FERRY))?;
        let p = plan(want, &have);
        let mut c =
            Count { few: p.add.len() + p.replace.len() + p.del.len() <= 16, ..Count::default() };
        for r in &p.del {
            self.delete(r, &mut c);
        }
        for &(dst, gw) in &p.replace {
            let old =
                have.iter().find(|r| r.dst == IpNetwork::V4(dst) && r.metric.unwrap_or(0) == 0);
            self.install(dst, gw, old, retry, true, &mut c);
        }
        for &(dst, gw) in &p.add {
            self.install(dst, gw, None, retry, true, &mut c);
        }
        self.finish(want, &c);
        Ok(c.total())
    }

    /// Apply the difference between two wanted sets without dumping the routing table: the fast
    /// path for store events. `Ok(false)` means the kernel did not look as expected (a route
    /// already held a new peer's subnet) and a full [`Routes::reconcile`] is needed.
    pub fn apply_delta(&mut self, old: &Want, new: &Want) -> io::Result<bool> {
        let mut c = Count::default();
        let changes = diff(old, new);
        c.few = changes.len() <= 16;
        let mut in_sync = true;
        for (dst, was, now) in changes {
            match (was, now) {
                (Some(g), None) => {
                    let mut r = peer_route(dst, g, 0);
                    r.oif = None;
                    self.delete(&r, &mut c);
                }
                (was, Some(g)) => {
                    // Only a route this daemon installed may be replaced in place.
                    let ours = was.filter(|w| {
                        self.unreachable.get(&dst) != Some(w) && self.conflicts.get(&dst) != Some(w)
                    });
                    let old = ours.map(|w| peer_route(dst, w, 0));
                    if self.install(dst, g, old.as_ref(), true, false, &mut c) == Installed::Exists
                    {
                        in_sync = false;
                    }
                }
                (None, None) => {}
            }
        }
        self.finish(new, &c);
        Ok(in_sync)
    }

    /// Add (or, when `old` is our route for `dst`, atomically replace) the route to a peer.
    /// `planned`: the caller knows Ferry has no route for `dst`, so EEXIST means a foreign one.
    fn install(
        &mut self,
        dst: Ipv4Network,
        gw: Ipv4Addr,
        old: Option<&Route>,
        retry: bool,
        planned: bool,
        c: &mut Count,
    ) -> Installed {
        if !retry
            && (self.unreachable.get(&dst) == Some(&gw) || self.conflicts.get(&dst) == Some(&gw))
        {
            return Installed::Skipped;
        }
        let oif = match self.reach(gw) {
            Ok(oif) => {
                if self.unreachable.remove(&dst).is_some() {
                    info!("peer {gw} ({dst}) is reachable again");
                }
                oif
            }
            Err(why) => {
                if self.unreachable.insert(dst, gw) != Some(gw) {
                    metrics::inc(&self.m.unreachable_peers_total);
                    warn!("peer {dst} via {gw} not routed: {why}; host-gw needs peers on a shared L2 segment (retrying on the next sweep)");
                }
                if let Some(old) = old {
                    // Our old route points at a gateway the lease no longer names.
                    let mut o = old.clone();
                    o.oif = None;
                    self.delete(&o, c);
                }
                return Installed::Skipped;
            }
        };
        let r = peer_route(dst, gw, oif);
        let res = if old.is_some() { self.nl.replace_route(&r) } else { self.nl.add_route(&r) };
        match res {
            Ok(()) => {
                self.conflicts.remove(&dst);
                if old.is_some() {
                    c.replaced += 1;
                    metrics::inc(&self.m.routes_replaced_total);
                    info!("route {dst} via {gw} replaced a wrong gateway");
                } else {
                    c.added += 1;
                    metrics::inc(&self.m.routes_added_total);
                    if c.few {
                        info!("route {dst} via {gw} added");
                    } else {
                        debug!("route {dst} via {gw} added");
                    }
                }
                Installed::Done
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if planned && self.conflicts.insert(dst, gw) != Some(gw) {
                    metrics::inc(&self.m.route_conflicts_total);
                    warn!("peer {dst} via {gw} not routed: a route for {dst} that Ferry does not own exists; leaving it alone");
                }
                Installed::Exists
            }
            Err(e) => {
                self.op_failed(
                    if old.is_some() { "replace" } else { "add" },
                    IpNetwork::V4(dst),
                    e,
                );
                Installed::Skipped
            }
        }
    }

    fn delete(&mut self, r: &Route, c: &mut Count) {
        match self.nl.del_route(r) {
            Ok(true) => {
                c.deleted += 1;
                metrics::inc(&self.m.routes_deleted_total);
                if c.few {
                    info!(
                        "route {} via {} removed (no such peer lease)",
                        r.dst,
                        show_gw(r.gateway)
                    );
                }
            }
            Ok(false) => {}
            Err(e) => self.op_failed("delete", r.dst, e),
        }
    }

    fn finish(&mut self, want: &Want, c: &Count) {
        self.unreachable.retain(|d, g| want.get(d) == Some(g));
        self.conflicts.retain(|d, g| want.get(d) == Some(g));
        metrics::set(&self.m.unreachable_peers, self.unreachable.len() as u64);
        metrics::set(&self.m.peers, want.len() as u64);
        if c.total() > 0 {
            info!(
                "routes: {} added, {} replaced, {} removed ({} peers)",
                c.added,
                c.replaced,
                c.deleted,
                want.len()
            );
        }
    }

    /// The interface that reaches `gw` directly, or why it is not directly reachable.
    fn reach(&mut self, gw: Ipv4Addr) -> Result<u32, String> {
        match self.nl.route_get(IpAddr::V4(gw)) {
            Ok(Some((oif, None))) => Ok(oif),
            Ok(Some((_, Some(via)))) => {
                Err(format!("{gw} is reached via the gateway {via}, not directly"))
            }
            Ok(None) => Err(format!("no route to {gw}")),
            Err(e) => Err(format!("no route to {gw}: {e}")),
        }
    }

    fn op_failed(&mut self, op: &str, dst: IpNetwork, e: io::Error) {
        metrics::inc(&self.m.route_errors_total);
        warn!("{op} route {dst}: {e}");
    }

    /// Remove every route Ferry owns (for `--uninstall`).
    pub fn remove_all(&mut self) -> io::Result<usize> {
        let have = self.nl.routes(false, RT_TABLE_MAIN, Some(RTPROT_FERRY))?;
        let mut n = 0;
        for r in &have {
            if self.nl.del_route(r)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Installed {
    Done,
    Skipped,
    /// EEXIST: some route already holds the destination.
    Exists,
}

#[derive(Default)]
struct Count {
    added: usize,
    replaced: usize,
    deleted: usize,
    /// Few changes: log each one.
    few: bool,
}

impl Count {
    fn total(&self) -> usize {
        self.added + self.replaced + self.deleted
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

fn show_gw(g: Option<IpAddr>) -> String {
    g.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests;
