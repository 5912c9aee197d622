//! Carries route plans out on a [`RouteTable`] and remembers which peers could not be routed,
//! so each is reported once and retried only on a sweep (or when links/addresses change).

use crate::metrics::{self, Metrics};
use crate::route_plan::{diff, peer_route, plan, Want};
use crate::route_table::{NetlinkRouteTable, RouteTable};
use ferry_netlink::Route;
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Why a wanted route is not in the kernel. Peers without one are routed (or being routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// The gateway is not directly reachable (host-gw needs peers on a shared L2 segment).
    Unreachable(Ipv4Addr),
    /// A route Ferry does not own holds the destination; it is left alone.
    Foreign(Ipv4Addr),
}

impl Blocked {
    fn gateway(self) -> Ipv4Addr {
        match self {
            Blocked::Unreachable(g) | Blocked::Foreign(g) => g,
        }
    }
}

/// Where an install comes from, which decides what a blocked peer and EEXIST mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A full reconcile's plan: the dump showed no Ferry route for the destination, so EEXIST
    /// means a foreign route. `retry`: try peers already known to be blocked, too.
    Plan { retry: bool },
    /// A store event applied without a dump (blocked peers are always retried: their lease
    /// changed). EEXIST only means the kernel does not look as expected.
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Installed {
    Done,
    Skipped,
    /// EEXIST: some route already holds the destination.
    Exists,
}

/// Changes made by one reconcile or delta.
#[derive(Default)]
struct Tally {
    added: usize,
    replaced: usize,
    deleted: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.added + self.replaced + self.deleted
    }
}

/// Applies plans to the kernel's route table (netlink by default).
pub struct RouteApplier<T: RouteTable = NetlinkRouteTable> {
    table: T,
    metrics: Arc<Metrics>,
    /// Peer subnet → why its route is not installed.
    blocked: HashMap<Ipv4Network, Blocked>,
}

impl<T: RouteTable> RouteApplier<T> {
    pub fn new(table: T, metrics: Arc<Metrics>) -> RouteApplier<T> {
        RouteApplier { table, metrics, blocked: HashMap::new() }
    }

    /// Some wanted peer is unreachable or blocked by a foreign route.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Bring the kernel in line with `want` (a full dump of Ferry's routes, then the plan). With
    /// `retry` false, peers already known to be unreachable (same gateway) or blocked by a foreign
    /// route are skipped. Returns how many routes were changed.
    pub fn reconcile(&mut self, want: &Want, retry: bool) -> io::Result<usize> {
        metrics::inc(&self.metrics.reconciles_total);
        let have = self.table.ferry_routes()?;
        let p = plan(want, &have);
        let mut tally = Tally::default();
        let src = Source::Plan { retry };
        for r in &p.del {
            self.delete(r, &mut tally);
        }
        for &(dst, gw) in &p.replace {
            let old =
                have.iter().find(|r| r.dst == IpNetwork::V4(dst) && r.metric.unwrap_or(0) == 0);
            self.install(dst, gw, old, src, &mut tally);
        }
        self.add_all(&p.add, src, &mut tally);
        self.finish(want, &tally);
        Ok(tally.total())
    }

    /// Apply the difference between two wanted sets without dumping the routing table: the fast
    /// path for store events. `Ok(false)` means the kernel did not look as expected (a route
    /// already held a new peer's subnet) and a full [`RouteApplier::reconcile`] is needed.
    pub fn apply_delta(&mut self, old: &Want, new: &Want) -> io::Result<bool> {
        let changes = diff(old, new);
        let mut tally = Tally::default();
        let mut in_sync = true;
        for (dst, was, now) in changes {
            match (was, now) {
                (Some(g), None) => {
                    let mut r = peer_route(dst, g, 0);
                    r.oif = None;
                    self.delete(&r, &mut tally);
                }
                (was, Some(g)) => {
                    // Only a route this daemon installed may be replaced in place.
                    let ours = was.filter(|w| self.blocked_gateway(dst) != Some(*w));
                    let old = ours.map(|w| peer_route(dst, w, 0));
                    let res = self.install(dst, g, old.as_ref(), Source::Delta, &mut tally);
                    in_sync &= res != Installed::Exists;
                }
                (None, None) => {}
            }
        }
        self.finish(new, &tally);
        Ok(in_sync)
    }

    /// Remove every route Ferry owns (for `--uninstall`).
    pub fn remove_all(&mut self) -> io::Result<usize> {
        let mut n = 0;
        for r in &self.table.ferry_routes()? {
            if self.table.delete(r)? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn blocked_gateway(&self, dst: Ipv4Network) -> Option<Ipv4Addr> {
        self.blocked.get(&dst).map(|b| b.gateway())
    }

    /// Add (or, when `old` is our route for `dst`, atomically replace) the route to a peer.
    fn install(
        &mut self,
        dst: Ipv4Network,
        gw: Ipv4Addr,
        old: Option<&Route>,
        src: Source,
        tally: &mut Tally,
    ) -> Installed {
        let Some(r) = self.prepare(dst, gw, old, src, tally) else { return Installed::Skipped };
        let res = if old.is_some() { self.table.replace(&r) } else { self.table.add(&r) };
        self.settle(dst, gw, old.is_some(), res, src, tally)
    }

    /// Planned adds, sent together (in batches on netlink).
    fn add_all(&mut self, adds: &[(Ipv4Network, Ipv4Addr)], src: Source, tally: &mut Tally) {
        let (mut peers, mut routes) = (Vec::new(), Vec::new());
        for &(dst, gw) in adds {
            if let Some(r) = self.prepare(dst, gw, None, src, tally) {
                peers.push((dst, gw));
                routes.push(r);
            }
        }
        if routes.is_empty() {
            return;
        }
        let results = self.table.add_all(&routes);
        for ((dst, gw), res) in peers.into_iter().zip(results) {
            self.settle(dst, gw, false, res, src, tally);
        }
    }

    /// The route to send for (`dst`, `gw`), or `None` when the peer is skipped: blocked and not
    /// retried, or its gateway is not directly reachable (reported once; `old`, our route with
    /// a gateway the lease no longer names, is then deleted).
    fn prepare(
        &mut self,
        dst: Ipv4Network,
        gw: Ipv4Addr,
        old: Option<&Route>,
        src: Source,
        tally: &mut Tally,
    ) -> Option<Route> {
        if src == (Source::Plan { retry: false }) && self.blocked_gateway(dst) == Some(gw) {
            return None;
        }
        match self.reach(gw) {
            Ok(oif) => {
                if matches!(self.blocked.get(&dst), Some(Blocked::Unreachable(_))) {
                    self.blocked.remove(&dst);
                    info!("peer {gw} ({dst}) is reachable again");
                }
                Some(peer_route(dst, gw, oif))
            }
            Err(why) => {
                let now = Blocked::Unreachable(gw);
                if self.blocked.insert(dst, now) != Some(now) {
                    metrics::inc(&self.metrics.unreachable_peers_total);
                    warn!("peer {dst} via {gw} not routed: {why}; host-gw needs peers on a shared L2 segment (retrying on the next sweep)");
                }
                if let Some(old) = old {
                    let mut o = old.clone();
                    o.oif = None;
                    self.delete(&o, tally);
                }
                None
            }
        }
    }

    /// Record the kernel's answer to adding (or replacing) the route for `dst`.
    fn settle(
        &mut self,
        dst: Ipv4Network,
        gw: Ipv4Addr,
        replaced: bool,
        res: io::Result<()>,
        src: Source,
        tally: &mut Tally,
    ) -> Installed {
        match res {
            Ok(()) => {
                self.blocked.remove(&dst);
                self.count_installed(dst, gw, replaced, tally);
                Installed::Done
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let now = Blocked::Foreign(gw);
                if src != Source::Delta && self.blocked.insert(dst, now) != Some(now) {
                    metrics::inc(&self.metrics.route_conflicts_total);
                    warn!("peer {dst} via {gw} not routed: a route for {dst} that Ferry does not own exists; leaving it alone");
                }
                Installed::Exists
            }
            Err(e) => {
                let op = if replaced { "replace" } else { "add" };
                self.op_failed(op, IpNetwork::V4(dst), e);
                Installed::Skipped
            }
        }
    }

    fn count_installed(&self, dst: Ipv4Network, gw: Ipv4Addr, replaced: bool, tally: &mut Tally) {
        if replaced {
            tally.replaced += 1;
            metrics::inc(&self.metrics.routes_replaced_total);
            info!("route replace: peer {dst} via gateway {gw} (was another gateway)");
        } else {
            tally.added += 1;
            metrics::inc(&self.metrics.routes_added_total);
            info!("route add: peer {dst} via gateway {gw}");
        }
    }

    fn delete(&mut self, r: &Route, tally: &mut Tally) {
        match self.table.delete(r) {
            Ok(true) => {
                tally.deleted += 1;
                metrics::inc(&self.metrics.routes_deleted_total);
                let gw = r.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
                info!("route delete: peer {} via gateway {gw} (no such peer lease)", r.dst);
            }
            Ok(false) => {}
            Err(e) => self.op_failed("delete", r.dst, e),
        }
    }

    fn finish(&mut self, want: &Want, tally: &Tally) {
        self.blocked.retain(|d, b| want.get(d) == Some(&b.gateway()));
        let unreachable =
            self.blocked.values().filter(|b| matches!(b, Blocked::Unreachable(_))).count();
        metrics::set(&self.metrics.unreachable_peers, unreachable as u64);
        metrics::set(&self.metrics.peers, want.len() as u64);
        let programmed = want.len().saturating_sub(self.blocked.len());
        metrics::set(&self.metrics.routes_programmed, programmed as u64);
        if tally.total() > 0 {
            info!(
                "routes: {} added, {} replaced, {} removed ({} peers)",
                tally.added,
                tally.replaced,
                tally.deleted,
                want.len()
            );
        }
    }

    /// The interface that reaches `gw` directly, or why it is not directly reachable.
    fn reach(&mut self, gw: Ipv4Addr) -> Result<u32, String> {
        match self.table.route_to(gw) {
            Ok(Some((oif, None))) => Ok(oif),
            Ok(Some((_, Some(via)))) => {
                Err(format!("{gw} is reached via the gateway {via}, not directly"))
            }
            Ok(None) => Err(format!("no route to {gw}")),
            Err(e) => Err(format!("no route to {gw}: {e}")),
        }
    }

    fn op_failed(&self, op: &str, dst: IpNetwork, e: io::Error) {
        metrics::inc(&self.metrics.route_errors_total);
        warn!("{op} route {dst}: {e}");
    }
}

#[cfg(test)]
mod tests;
