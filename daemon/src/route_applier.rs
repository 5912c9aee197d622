//! Carries route plans out on a [`RouteTable`] and remembers which peers could not be routed,
//! so each is reported once and retried only on a sweep (or when links/addresses change).
//!
//! A full reconcile is one [`RouteTable::snapshot`] (Ferry's routes, the connected networks,
//! the nexthop objects) and then batches of changes: each peer's nexthop object and its route
//! (see [`crate::route_plan`]). Whether a gateway is on-link is read from the connected
//! networks of the snapshot, not asked per peer; the kernel refuses a gateway that is not
//! (ENETUNREACH), and that answer counts as unreachable too.

use crate::metrics::{self, Metrics};
use crate::overlay;
use crate::route_plan::{
    diff, nexthop_route, nh_id, nh_id_before, nh_id_in, peer_route, steps, PeerStep, Step, Want,
    WantChange,
};
use crate::route_table::{Change, Connected, NetlinkRouteTable, RouteTable, Snapshot};
use ferry_netlink::neigh::{Neigh, NeighKind};
use ferry_netlink::{Route, RTPROT_FERRY};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Peers installed per batch of changes: bounds the memory of a start-up with 100,000 peers.
const INSTALL_CHUNK: usize = 1024;

/// Why a wanted route is not in the kernel. Peers without one are routed (or being routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// The gateway is not directly reachable (host-gw needs peers on a shared L2 segment).
    Unreachable(IpAddr),
    /// A route Ferry does not own holds the destination; it is left alone.
    Foreign(IpAddr),
}

impl Blocked {
    fn gateway(self) -> IpAddr {
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

/// How an install decides that a gateway is on-link.
enum Reach<'a> {
    /// From the connected networks of a snapshot.
    Connected(&'a [Connected]),
    /// By asking the kernel (RTM_GETROUTE): for the few peers of a delta.
    Ask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Installed {
    Done,
    Skipped,
    /// EEXIST: some route already holds the destination.
    Exists,
    /// The gateway is not directly reachable (seen before sending, or the kernel said so).
    Unreachable,
}

/// Changes made by one reconcile or delta.
#[derive(Default)]
struct Tally {
    added: usize,
    replaced: usize,
    deleted: usize,
    /// Nexthop objects removed (stale ones, and those of peers that left or became unreachable).
    nexthops_deleted: usize,
    /// VXLAN ARP / fdb entries added, replaced or removed.
    neighbours: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.added + self.replaced + self.deleted + self.nexthops_deleted + self.neighbours
    }
}

/// The vxlan backend, as the applier needs it: the device and which peers it can reach
/// encapsulated. Set by the event loop; `None` in host-gw mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encap {
    /// The VXLAN device (`ferry.<VNI>`).
    pub ifindex: u32,
    /// On-link peers get direct routes (flannel's `DirectRouting`).
    pub direct_routing: bool,
    /// Peer subnet → VTEP MAC, for the peers whose lease says they decapsulate.
    pub vteps: BTreeMap<Ipv4Network, [u8; 6]>,
}

/// Where each peer's traffic goes this reconcile (vxlan backend).
struct Paths {
    /// The wanted routes with encapsulated peers' gateways replaced by their VTEP addresses.
    want: Want,
    /// Peer subnet → public IP, of the peers sent VXLAN.
    encapsulated: HashMap<Ipv4Network, Ipv4Addr>,
}

/// Applies plans to the kernel's route table (netlink by default).
pub struct RouteApplier<T: RouteTable = NetlinkRouteTable> {
    table: T,
    metrics: Arc<Metrics>,
    /// Peer subnet → why its route is not installed.
    blocked: HashMap<IpNetwork, Blocked>,
    /// Nexthop objects: `None` until the first snapshot shows whether the kernel has them;
    /// `Some(false)` (for good, once seen): plain gateway routes.
    nexthops: Option<bool>,
    /// Ids held by nexthops that are not Ferry's, as of the last snapshot: those peers get
    /// plain gateway routes.
    taken: HashSet<u32>,
    /// The vxlan backend's device and VTEPs; `None`: host-gw.
    encap: Option<Encap>,
    /// Peers sent VXLAN as of the last reconcile (subnet → public IP).
    encapsulated: HashMap<Ipv4Network, Ipv4Addr>,
}

mod install;

impl<T: RouteTable> RouteApplier<T> {
    pub fn new(table: T, metrics: Arc<Metrics>) -> RouteApplier<T> {
        RouteApplier {
            table,
            metrics,
            blocked: HashMap::new(),
            nexthops: None,
            taken: HashSet::new(),
            encap: None,
            encapsulated: HashMap::new(),
        }
    }

    /// The vxlan backend's state, to update (`None` in host-gw mode until [`Self::set_encap`]).
    pub fn encap_mut(&mut self) -> Option<&mut Encap> {
        self.encap.as_mut()
    }

    pub fn set_encap(&mut self, e: Option<Encap>) {
        self.encap = e;
    }

    /// How many peers are sent VXLAN (as of the last reconcile).
    pub fn encapsulated(&self) -> usize {
        self.encapsulated.len()
    }

    /// Some wanted peer is unreachable or blocked by a foreign route.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Bring the kernel in line with `want` (one snapshot, then the plan). With `retry` false,
    /// peers already known to be unreachable (same gateway) or blocked by a foreign route are
    /// skipped. Returns how many routes (and stale nexthops) were changed.
    pub fn reconcile(&mut self, want: &Want, retry: bool) -> io::Result<usize> {
        let snap = self.table.snapshot()?;
        self.reconcile_snapshot(snap, want, retry, &BTreeSet::new())
    }

    /// [`RouteApplier::reconcile`] from a snapshot taken earlier (the sweep's, dumped on a thread
    /// of its own while store events kept being applied), leaving out the peers in `settled`:
    /// the subnets whose routes deltas changed after the dump began, which the snapshot may show
    /// as they were (their routes are as wanted already; the next sweep checks them).
    pub fn reconcile_snapshot(
        &mut self,
        mut snap: Snapshot,
        want: &Want,
        retry: bool,
        settled: &BTreeSet<IpNetwork>,
    ) -> io::Result<usize> {
        let orig = want;
        metrics::inc(&self.metrics.reconciles_total);
        if !settled.is_empty() {
            snap.routes.retain(|r| !settled.contains(&r.dst));
            if let Some(n) = snap.nexthops.as_mut() {
                let ids: HashSet<u32> = settled.iter().filter_map(|d| nh_id(*d)).collect();
                n.retain(|h| h.protocol != RTPROT_FERRY || !ids.contains(&h.id));
            }
        }
        self.learn(&snap);
        let before = self.nexthops;
        let mut tally = Tally::default();
        let paths = match self.encap.take() {
            Some(e) => {
                let p = self.choose_paths(want, &snap, &e);
                let synced = self.sync_neighbours(&e, &p, &mut tally);
                self.encap = Some(e);
                synced?;
                self.encapsulated = p.encapsulated;
                metrics::set(&self.metrics.peers_encapsulated, self.encapsulated.len() as u64);
                Some(p.want)
            }
            None => None,
        };
        let want = paths.as_ref().unwrap_or(want);
        let nexthops = snap.nexthops.as_deref().filter(|_| self.nexthops == Some(true));
        let unsettled: Want;
        let plan_for = if settled.is_empty() {
            want
        } else {
            unsettled =
                want.iter().filter(|(d, _)| !settled.contains(d)).map(|(d, g)| (*d, *g)).collect();
            &unsettled
        };
        let plan = steps(plan_for, &snap.routes, nexthops);
        let src = Source::Plan { retry };
        self.remove(plan.del_routes.into_iter().map(Change::DelRoute).collect(), &mut tally);
        let how = Reach::Connected(&snap.connected);
        for chunk in plan.peers.chunks(INSTALL_CHUNK) {
            self.install(chunk, src, &how, &mut tally);
        }
        let stale = plan.del_nexthops.into_iter().map(Change::DelNexthop).collect();
        self.remove(stale, &mut tally);
        self.finish(want, &tally);
        if self.nexthops != before {
            // The kernel refused nexthop objects after all: once more, with plain routes.
            return Ok(tally.total() + self.reconcile(orig, retry)?);
        }
        Ok(tally.total())
    }

    /// Each peer's path (vxlan backend): a direct route when its public IP is on a directly
    /// connected network (and `DirectRouting` is on), else VXLAN when its lease names a VTEP,
    /// else the direct route it cannot have (reported unreachable). Logs each peer whose path
    /// changed, with why.
    fn choose_paths(&self, want: &Want, snap: &Snapshot, e: &Encap) -> Paths {
        let mut out = Paths { want: Want::new(), encapsulated: HashMap::new() };
        for (&dst, &gw) in want {
            let on_link = crate::route_table::on_link(&snap.connected, gw).is_some();
            // VXLAN carries the IPv4 pod network (the vxlan backend is IPv4-only).
            let v4 = match (dst, gw) {
                (IpNetwork::V4(d), IpAddr::V4(g)) => Some((d, g)),
                _ => None,
            };
            let hop = match v4.filter(|(d, _)| e.vteps.contains_key(d)) {
                Some((d, g)) if !(e.direct_routing && on_link) => {
                    out.encapsulated.insert(d, g);
                    if self.encapsulated.get(&d) != Some(&g) {
                        let why = if on_link {
                            "DirectRouting is off"
                        } else {
                            "not on a directly connected network"
                        };
                        info!("peer {dst}: VXLAN to {gw} ({why})");
                    }
                    IpAddr::V4(overlay::vtep_ip(d))
                }
                _ => {
                    let was = v4.is_some_and(|(d, _)| self.encapsulated.contains_key(&d));
                    if was && on_link {
                        info!(
                            "peer {dst}: direct route via {gw} (on a directly connected network)"
                        );
                    }
                    gw
                }
            };
            out.want.insert(dst, hop);
        }
        out
    }

    /// Make the VXLAN device's permanent ARP and fdb entries exactly those of the encapsulated
    /// peers: `vtep address → VtepMAC` and `VtepMAC → public IP`, replaced in place when they
    /// change, extra ones removed. Sent before the routes that need them.
    fn sync_neighbours(&mut self, e: &Encap, p: &Paths, tally: &mut Tally) -> io::Result<()> {
        let have = self.table.neighbours(e.ifindex)?;
        let mut want: HashMap<(NeighKind, Ipv4Addr, [u8; 6]), Neigh> = HashMap::new();
        for (dst, gw) in &p.encapsulated {
            let Some(&mac) = e.vteps.get(dst) else { continue };
            let mk =
                |kind, addr| Neigh { kind, ifindex: e.ifindex, addr, mac, protocol: RTPROT_FERRY };
            for n in [mk(NeighKind::Arp, overlay::vtep_ip(*dst)), mk(NeighKind::Fdb, *gw)] {
                want.insert((n.kind, n.addr, n.mac), n);
            }
        }
        let key = |n: &Neigh| (n.kind, n.addr, n.mac);
        let present: HashSet<_> = have.iter().map(key).collect();
        // An ARP entry is one per address, an fdb entry one per MAC: what a replace overwrites.
        let slot = |n: &Neigh| match n.kind {
            NeighKind::Arp => (n.kind, n.addr, [0; 6]),
            NeighKind::Fdb => (n.kind, Ipv4Addr::UNSPECIFIED, n.mac),
        };
        let wanted_slots: HashSet<_> = want.values().map(slot).collect();
        let mut changes: Vec<Change> = have
            .iter()
            .filter(|h| !want.contains_key(&key(h)) && !wanted_slots.contains(&slot(h)))
            .map(|h| Change::DelNeigh(h.clone()))
            .collect();
        changes.extend(
            want.into_values().filter(|w| !present.contains(&key(w))).map(Change::ReplaceNeigh),
        );
        changes.sort_by_key(|c| matches!(c, Change::ReplaceNeigh(_)));
        for (c, res) in changes.iter().zip(self.table.apply(&changes)) {
            match (c, res) {
                (_, Ok(())) => tally.neighbours += 1,
                (_, Err(err)) if err.kind() == io::ErrorKind::NotFound => {}
                (c, Err(err)) => self.op_failed("neighbour", &target(c), &err),
            }
        }
        Ok(())
    }

    /// Apply the difference between two wanted sets without dumping the routing table: the fast
    /// path for store events. `Ok(false)` means the kernel did not look as expected (a route
    /// already held a new peer's subnet) and a full [`RouteApplier::reconcile`] is needed.
    pub fn apply_delta(&mut self, old: &Want, new: &Want) -> io::Result<bool> {
        self.apply_changes(&diff(old, new), new)
    }

    /// [`RouteApplier::apply_delta`] given the changes (sorted by subnet) that made `new`.
    pub fn apply_changes(&mut self, changes: &[WantChange], new: &Want) -> io::Result<bool> {
        if self.encap.is_some() {
            // A peer's path depends on the whole snapshot (connected networks, neighbours).
            return Ok(false);
        }
        let mut tally = Tally::default();
        let (mut gone, mut peers) = (Vec::new(), Vec::new());
        for &(dst, was, now) in changes {
            match (was, now) {
                (Some(g), None) => gone.extend(self.forget(dst, g, new, changes)),
                (was, Some(g)) => peers.push(self.delta_step(dst, was, g, new)),
                (None, None) => {}
            }
        }
        self.remove(gone, &mut tally);
        let mut in_sync = true;
        for chunk in peers.chunks(INSTALL_CHUNK) {
            let outcomes = self.install(chunk, Source::Delta, &Reach::Ask, &mut tally);
            in_sync &= !outcomes.contains(&Installed::Exists);
        }
        self.finish(new, &tally);
        Ok(in_sync)
    }

    /// Remove every route and nexthop object Ferry owns (for `--uninstall`). Returns how many
    /// routes went; the first failure is the error.
    pub fn remove_all(&mut self) -> io::Result<usize> {
        let snap = self.table.snapshot()?;
        let ours = snap.nexthops.iter().flatten().filter(|n| n.protocol == RTPROT_FERRY);
        let nexthops: Vec<Change> = ours.map(|n| Change::DelNexthop(n.id)).collect();
        let routes: Vec<Change> = snap.routes.into_iter().map(Change::DelRoute).collect();
        let mut removed = [0, 0];
        for (i, changes) in [routes, nexthops].iter().enumerate() {
            for res in self.table.apply(changes) {
                match res {
                    Ok(()) => removed[i] += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if removed[1] > 0 {
            info!("removed {} Ferry nexthop objects (proto 113)", removed[1]);
        }
        Ok(removed[0])
    }

    /// Whether the kernel has nexthop objects (decided once) and whose ids are taken.
    fn learn(&mut self, snap: &Snapshot) {
        match (&snap.nexthops, self.nexthops) {
            (Some(_), None) => {
                self.nexthops = Some(true);
                info!("peer routes use nexthop objects (ip nexthop, proto 113): one per peer");
            }
            (None, None | Some(true)) => self.no_nexthops("the kernel has none, before Linux 5.3"),
            _ => {}
        }
        let theirs = snap.nexthops.iter().flatten().filter(|n| n.protocol != RTPROT_FERRY);
        self.taken = theirs.map(|n| n.id).collect();
    }

    fn no_nexthops(&mut self, why: &str) {
        self.nexthops = Some(false);
        warn!("no nexthop objects ({why}): plain gateway routes, which the kernel is slow to add by the thousand");
    }

    /// The nexthop id peer `dst` uses now; `None`: a plain gateway route.
    fn nexthop_for(&self, dst: IpNetwork, want: &Want) -> Option<u32> {
        nh_id_in(dst, want).filter(|id| self.nexthops == Some(true) && !self.taken.contains(id))
    }

    /// What a delta does for peer `dst`, now via `gw`, before via `was`.
    fn delta_step(&self, dst: IpNetwork, was: Option<IpAddr>, gw: IpAddr, want: &Want) -> PeerStep {
        // Only a route this daemon installed may be replaced in place.
        let ours = was.filter(|w| self.blocked_gateway(dst) != Some(*w));
        let id = self.nexthop_for(dst, want);
        let old = ours.map(|w| match id {
            Some(id) => nexthop_route(dst, id),
            None => peer_route(dst, w, 0),
        });
        // The nexthop is the peer's own (its id is not taken): replacing creates it if need be.
        let nexthop = id.map(|id| (id, Step::Replace));
        let route = match (ours, id) {
            (Some(_), Some(_)) => Step::Keep, // the route is on the nexthop already
            (Some(_), None) => Step::Replace,
            (None, _) => Step::Add,
        };
        PeerStep { dst, gw, nexthop, route, old }
    }

    /// The changes that remove peer `dst` (last via `gw`): its route, then its nexthop.
    fn forget(
        &self,
        dst: IpNetwork,
        gw: IpAddr,
        new: &Want,
        changes: &[WantChange],
    ) -> Vec<Change> {
        let id = nh_id_before(dst, new, changes);
        match id.filter(|id| self.nexthops == Some(true) && !self.taken.contains(id)) {
            Some(id) => vec![Change::DelRoute(nexthop_route(dst, id)), Change::DelNexthop(id)],
            None => {
                let mut r = peer_route(dst, gw, 0);
                r.oif = None;
                vec![Change::DelRoute(r)]
            }
        }
    }

    fn blocked_gateway(&self, dst: IpNetwork) -> Option<IpAddr> {
        self.blocked.get(&dst).map(|b| b.gateway())
    }

    /// Delete routes and nexthops in one batch; what was already gone is not counted.
    fn remove(&mut self, changes: Vec<Change>, tally: &mut Tally) {
        if changes.is_empty() {
            return;
        }
        let results = self.table.apply(&changes);
        for (c, res) in changes.iter().zip(results) {
            match (c, res) {
                (Change::DelRoute(r), Ok(())) => {
                    tally.deleted += 1;
                    metrics::inc(&self.metrics.routes_deleted_total);
                    info!("route delete: peer {} {} (no such peer lease)", r.dst, via(r));
                }
                (Change::DelNexthop(id), Ok(())) => {
                    tally.nexthops_deleted += 1;
                    debug!("nexthop delete: id {id}");
                }
                (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                (Change::DelNexthop(id), Err(e)) => self.op_failed("delete nexthop", &id, &e),
                (c, Err(e)) => self.op_failed("delete route", &target(c), &e),
                _ => {}
            }
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
                "routes: {} added, {} replaced, {} removed; {} nexthops removed ({} peers)",
                tally.added,
                tally.replaced,
                tally.deleted,
                tally.nexthops_deleted,
                want.len()
            );
        }
    }

    fn op_failed(&self, op: &str, what: &dyn std::fmt::Display, e: &io::Error) {
        metrics::inc(&self.metrics.route_errors_total);
        warn!("{op} {what}: {e}");
    }
}

/// `via gateway G` / `on nexthop N` for a log line.
fn via(r: &Route) -> String {
    match (r.gateway, r.nh_id) {
        (Some(g), _) => format!("via gateway {g}"),
        (None, Some(id)) => format!("on nexthop {id}"),
        (None, None) => "via gateway -".into(),
    }
}

/// What a change is about, for an error message.
fn target(c: &Change) -> String {
    match c {
        Change::AddRoute(r) | Change::ReplaceRoute(r) | Change::DelRoute(r) => r.dst.to_string(),
        Change::AddNexthop(n) | Change::ReplaceNexthop(n) => format!("nexthop {}", n.id),
        Change::DelNexthop(id) => format!("nexthop {id}"),
        Change::ReplaceNeigh(n) | Change::DelNeigh(n) => {
            format!("{:?} {} {}", n.kind, n.addr, ferry_netlink::mac_to_string(n.mac))
        }
    }
}

/// A route destination as the log shows it.
fn dst_of(d: IpNetwork) -> IpNetwork {
    d
}

#[cfg(test)]
mod tests;
