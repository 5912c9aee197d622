//! Installing peers: decide each (skip, unreachable, or its changes), send the changes of a
//! chunk of peers in one batch, and settle each peer on the kernel's answers.

use super::{dst_of, target, Blocked, Installed, Reach, RouteApplier, Source, Tally};
use crate::metrics;
use crate::overlay;
use crate::route_plan::{nexthop_route, peer_nexthop, peer_route, PeerStep, Step};
use crate::route_table::{on_link, Change, RouteTable};
use ferry_netlink::Route;
use ipnetwork::IpNetwork;
use std::io;
use std::net::IpAddr;

/// What to do with one peer before anything is sent.
enum Prepared {
    /// Blocked and not retried.
    Skip,
    /// Its gateway is not on-link: nothing to send, its old route and nexthop go.
    Unreachable,
    /// Send its changes; the gateway is on-link through this interface (`true`: declared
    /// on-link, the VXLAN device's VTEP gateways).
    Go(u32, bool),
}

/// The kernel refused the gateway itself: not on-link (ENETUNREACH, EHOSTUNREACH), or for a
/// nexthop or a plain route not a usable unicast gateway (EINVAL: "invalid gateway").
fn refused_gateway(c: &Change, e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => true,
        Some(libc::EINVAL) => match c {
            Change::AddNexthop(_) | Change::ReplaceNexthop(_) => true,
            Change::AddRoute(r) | Change::ReplaceRoute(r) => r.nh_id.is_none(),
            _ => false,
        },
        _ => false,
    }
}

/// The changes that install peer `p` through `oif`: its nexthop (if it needs one), its route.
fn changes_for(p: &PeerStep, oif: u32, onlink: bool) -> Vec<Change> {
    let mut out = Vec::with_capacity(2);
    let route = match p.nexthop {
        Some((id, step)) => {
            let mut nh = peer_nexthop(id, p.gw, oif);
            nh.onlink = onlink;
            match step {
                Step::Add => out.push(Change::AddNexthop(nh)),
                Step::Replace => out.push(Change::ReplaceNexthop(nh)),
                Step::Keep => {}
            }
            nexthop_route(p.dst, id)
        }
        None => Route { onlink, ..peer_route(p.dst, p.gw, oif) },
    };
    match p.route {
        Step::Add => out.push(Change::AddRoute(route)),
        Step::Replace => out.push(Change::ReplaceRoute(route)),
        Step::Keep => {}
    }
    out
}

/// The changes that take away what peer `p` has: its old route and its nexthop.
fn cleanup(p: &PeerStep) -> Vec<Change> {
    let mut out = Vec::with_capacity(2);
    if let Some(old) = &p.old {
        let mut o = old.clone();
        o.oif = None;
        out.push(Change::DelRoute(o));
    }
    out.extend(p.old_nexthop().map(Change::DelNexthop));
    out
}

impl<T: RouteTable> RouteApplier<T> {
    /// Install a chunk of peers with one batch of changes; one outcome per peer sent.
    pub(super) fn install(
        &mut self,
        peers: &[PeerStep],
        src: Source,
        how: &Reach,
        tally: &mut Tally,
    ) -> Vec<Installed> {
        let (mut changes, mut jobs, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        let mut outcomes = Vec::with_capacity(peers.len());
        for p in peers {
            match self.prepare(p, src, how) {
                Prepared::Skip => {}
                Prepared::Unreachable => {
                    gone.extend(cleanup(p));
                    outcomes.push(Installed::Unreachable);
                }
                Prepared::Go(oif, onlink) => {
                    let first = changes.len();
                    changes.extend(changes_for(p, oif, onlink));
                    jobs.push((p, first..changes.len()));
                }
            }
        }
        let results = if changes.is_empty() { Vec::new() } else { self.table.apply(&changes) };
        for (p, range) in jobs {
            let failed = changes[range.clone()]
                .iter()
                .zip(&results[range])
                .find_map(|(c, r)| r.as_ref().err().map(|e| (c, e)));
            let out = self.settle(p, failed, src, tally);
            if out == Installed::Unreachable {
                gone.extend(cleanup(p));
            }
            outcomes.push(out);
        }
        self.remove(gone, tally);
        outcomes
    }

    /// Skip a blocked peer (unless retried), or find the interface its gateway is on.
    fn prepare(&mut self, p: &PeerStep, src: Source, how: &Reach) -> Prepared {
        if src == (Source::Plan { retry: false }) && self.blocked_gateway(p.dst) == Some(p.gw) {
            return Prepared::Skip;
        }
        if let Some(e) = &self.encap {
            if let IpNetwork::V4(d) = p.dst {
                if self.encapsulated.contains_key(&d) && p.gw == IpAddr::V4(overlay::vtep_ip(d)) {
                    return Prepared::Go(e.ifindex, true);
                }
            }
        }
        match self.reach(p.gw, how) {
            Ok(oif) => Prepared::Go(oif, false),
            Err(why) => {
                self.unreachable(p, &why);
                Prepared::Unreachable
            }
        }
    }

    /// Remember that `p`'s gateway is not directly reachable; say so once per gateway.
    fn unreachable(&mut self, p: &PeerStep, why: &str) {
        let now = Blocked::Unreachable(p.gw);
        if self.blocked.insert(p.dst, now) != Some(now) {
            metrics::inc(&self.metrics.unreachable_peers_total);
            warn!("peer {} via {} not routed: {why}; host-gw needs peers on a shared L2 segment (retrying on the next sweep)", p.dst, p.gw);
        }
    }

    /// Record the kernel's answer to `p`'s changes: `failed` is the first that failed.
    fn settle(
        &mut self,
        p: &PeerStep,
        failed: Option<(&Change, &io::Error)>,
        src: Source,
        tally: &mut Tally,
    ) -> Installed {
        let Some((c, e)) = failed else {
            if let Some(Blocked::Unreachable(_)) = self.blocked.remove(&p.dst) {
                info!("peer {} ({}) is reachable again", p.gw, p.dst);
            }
            self.count_installed(p, tally);
            return Installed::Done;
        };
        match c {
            Change::AddRoute(_) if e.kind() == io::ErrorKind::AlreadyExists => {
                let now = Blocked::Foreign(p.gw);
                if src != Source::Delta && self.blocked.insert(p.dst, now) != Some(now) {
                    metrics::inc(&self.metrics.route_conflicts_total);
                    warn!("peer {} via {} not routed: a route for {} that Ferry does not own exists; leaving it alone", p.dst, p.gw, p.dst);
                }
                Installed::Exists
            }
            Change::AddNexthop(_) | Change::ReplaceNexthop(_)
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                if self.nexthops == Some(true) {
                    self.no_nexthops(&format!("the kernel refused one ({e})"));
                }
                Installed::Skipped
            }
            _ if refused_gateway(c, e) => {
                self.unreachable(p, &format!("the kernel refused gateway {}: {e}", p.gw));
                Installed::Unreachable
            }
            _ => {
                // An error, not unreachability: tried again by every reconcile.
                if let Some(Blocked::Unreachable(_)) = self.blocked.get(&p.dst) {
                    self.blocked.remove(&p.dst);
                }
                let add = matches!(c, Change::AddRoute(_) | Change::AddNexthop(_));
                let op = if add { "add" } else { "replace" };
                self.op_failed(op, &target(c), e);
                Installed::Skipped
            }
        }
    }

    fn count_installed(&self, p: &PeerStep, tally: &mut Tally) {
        let (dst, gw) = (dst_of(p.dst), p.gw);
        if p.route == Step::Add {
            tally.added += 1;
            metrics::inc(&self.metrics.routes_added_total);
            info!("route add: peer {dst} via gateway {gw}");
            return;
        }
        tally.replaced += 1;
        metrics::inc(&self.metrics.routes_replaced_total);
        let old_gw = p.old.as_ref().and_then(|r| r.gateway);
        if p.nexthop.is_some() && p.route == Step::Replace && old_gw == Some(gw) {
            info!("route replace: peer {dst} via gateway {gw} (now on its nexthop object)");
        } else {
            info!("route replace: peer {dst} via gateway {gw} (was another gateway)");
        }
    }

    /// The interface that reaches `gw` directly, or why it is not directly reachable.
    fn reach(&mut self, gw: IpAddr, how: &Reach) -> Result<u32, String> {
        let connected = match how {
            Reach::Connected(c) => c,
            Reach::Ask => return self.ask(gw),
        };
        on_link(connected, gw).ok_or_else(|| format!("{gw} is not on a directly connected network"))
    }

    fn ask(&mut self, gw: IpAddr) -> Result<u32, String> {
        match self.table.route_to(gw) {
            Ok(Some((oif, None))) => Ok(oif),
            Ok(Some((_, Some(via)))) => {
                Err(format!("{gw} is reached via the gateway {via}, not directly"))
            }
            Ok(None) => Err(format!("no route to {gw}")),
            Err(e) => Err(format!("no route to {gw}: {e}")),
        }
    }
}
