//! The applier against a recording fake route table: no root, no netlink.

use super::*;
use crate::route_plan::{nh_id, peer_nexthop};
use ferry_netlink::neigh::{Neigh, NeighKind};
use ferry_netlink::{Nexthop, RT_TABLE_MAIN};
use ipnetwork::Ipv4Network;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;

/// A kernel route table in memory that records every call and answers as the kernel does for
/// Ferry's requests: a route or nexthop add fails with EEXIST when its slot (destination and
/// metric; id) is taken, and with ENETUNREACH when its gateway is not on-link; a route on a
/// missing nexthop is EINVAL; deleting a nexthop takes its routes along; a delete naming a
/// gateway never matches a route on a nexthop object.
#[derive(Default)]
struct FakeTable {
    routes: Vec<Route>,
    nexthops: Vec<Nexthop>,
    /// Gateway → (oif, next hop) for `route_to`; those without a next hop are on-link (each
    /// shows as a connected /32 in snapshots). Absent: no route.
    reach: HashMap<IpAddr, (u32, Option<IpAddr>)>,
    /// The kernel has no nexthop objects: the dump fails.
    no_nexthops: bool,
    /// Nexthop adds fail with EOPNOTSUPP (the dump works).
    refuse_nexthops: bool,
    /// Gateways the kernel refuses (ENETUNREACH) though `reach` lists them as on-link.
    refused: Vec<IpAddr>,
    /// Error kind the next add/replace fails with.
    fail_next: Option<io::ErrorKind>,
    /// Permanent ARP / fdb entries (of any device).
    neighbours: Vec<Neigh>,
    calls: Vec<String>,
}

fn same_slot(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.table == b.table && a.metric.unwrap_or(0) == b.metric.unwrap_or(0)
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// `nh 10.244.2.0/24`: a Ferry nexthop id by the subnet it encodes (top nibble 0, as 10/8).
fn nh_name(id: u32) -> String {
    let low = id & 0x0fff_ffff;
    let host = low.trailing_ones() + 1;
    if id & 0xf000_0000 != 0xf000_0000 || host > 28 {
        return format!("nh {id}");
    }
    format!("nh {}/{}", Ipv4Addr::from(low & !((1u32 << host) - 1)), 32 - host)
}

fn show(r: &Route) -> String {
    match (r.nh_id, r.gateway) {
        (Some(id), _) => nh_name(id),
        (None, Some(g)) => g.to_string(),
        (None, None) => "-".into(),
    }
}

fn show_nh(n: &Nexthop) -> String {
    format!("{} via {}", nh_name(n.id), n.gateway.map(|g| g.to_string()).unwrap_or_default())
}

impl FakeTable {
    fn failing(&mut self) -> io::Result<()> {
        match self.fail_next.take() {
            Some(kind) => Err(io::Error::from(kind)),
            None => Ok(()),
        }
    }

    fn on_link(&self, gw: Option<IpAddr>) -> io::Result<()> {
        let ok = match gw {
            Some(g) => matches!(self.reach.get(&g), Some((_, None))) && !self.refused.contains(&g),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(errno(libc::ENETUNREACH))
        }
    }

    fn check_route(&mut self, r: &Route) -> io::Result<()> {
        self.failing()?;
        match r.nh_id {
            Some(id) if !self.nexthops.iter().any(|n| n.id == id) => Err(errno(libc::EINVAL)),
            Some(_) => Ok(()),
            None if r.onlink => Ok(()),
            None => self.on_link(r.gateway),
        }
    }

    fn replace_neigh(&mut self, n: &Neigh) -> io::Result<()> {
        let slot = |h: &Neigh| {
            h.kind == n.kind
                && h.ifindex == n.ifindex
                && match n.kind {
                    NeighKind::Arp => h.addr == n.addr,
                    NeighKind::Fdb => h.mac == n.mac,
                }
        };
        self.neighbours.retain(|h| !slot(h));
        self.neighbours.push(n.clone());
        Ok(())
    }

    fn del_neigh(&mut self, n: &Neigh) -> io::Result<()> {
        let i = self.neighbours.iter().position(|h| h == n).ok_or(io::ErrorKind::NotFound)?;
        self.neighbours.remove(i);
        Ok(())
    }

    fn add_route(&mut self, r: &Route, replace: bool) -> io::Result<()> {
        self.check_route(r)?;
        if replace {
            self.routes.retain(|h| !same_slot(h, r));
        } else if self.routes.iter().any(|h| same_slot(h, r)) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.routes.push(r.clone());
        Ok(())
    }

    fn del_route(&mut self, r: &Route) -> io::Result<()> {
        let matches = |h: &Route| {
            h.dst == r.dst
                && h.table == r.table
                && h.protocol == r.protocol
                && (r.nh_id.is_none() || h.nh_id == r.nh_id)
                && (r.gateway.is_none() || (h.gateway == r.gateway && h.nh_id.is_none()))
                && (r.oif.is_none() || h.oif == r.oif)
                && (r.metric.is_none() || h.metric == r.metric)
        };
        let i = self.routes.iter().position(matches).ok_or(io::ErrorKind::NotFound)?;
        self.routes.remove(i);
        Ok(())
    }

    fn add_nexthop(&mut self, n: &Nexthop, replace: bool) -> io::Result<()> {
        self.failing()?;
        if self.refuse_nexthops {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let at = self.nexthops.iter().position(|h| h.id == n.id);
        if at.is_some() && !replace {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        if !n.onlink {
            self.on_link(n.gateway)?;
        }
        match at {
            Some(i) => self.nexthops[i] = n.clone(),
            None => self.nexthops.push(n.clone()),
        }
        Ok(())
    }

    fn del_nexthop(&mut self, id: u32) -> io::Result<()> {
        let i = self.nexthops.iter().position(|h| h.id == id).ok_or(io::ErrorKind::NotFound)?;
        self.nexthops.remove(i);
        self.routes.retain(|r| r.nh_id != Some(id));
        Ok(())
    }

    fn change(&mut self, c: &Change) -> io::Result<()> {
        let (call, res) = match c {
            Change::AddRoute(r) => {
                (format!("add {} via {}", r.dst, show(r)), self.add_route(r, false))
            }
            Change::ReplaceRoute(r) => {
                (format!("replace {} via {}", r.dst, show(r)), self.add_route(r, true))
            }
            Change::DelRoute(r) => (format!("del {} via {}", r.dst, show(r)), self.del_route(r)),
            Change::AddNexthop(n) => (format!("{} add", show_nh(n)), self.add_nexthop(n, false)),
            Change::ReplaceNexthop(n) => {
                (format!("{} replace", show_nh(n)), self.add_nexthop(n, true))
            }
            Change::DelNexthop(id) => (format!("{} del", nh_name(*id)), self.del_nexthop(*id)),
            Change::ReplaceNeigh(n) => {
                (format!("neigh {} replace", target(c)), self.replace_neigh(n))
            }
            Change::DelNeigh(n) => (format!("neigh {} del", target(c)), self.del_neigh(n)),
        };
        self.calls.push(call);
        res
    }
}

impl RouteTable for FakeTable {
    fn ferry_routes(&mut self) -> io::Result<Vec<Route>> {
        self.calls.push("routes".into());
        Ok(self.routes.iter().filter(|r| r.protocol == RTPROT_FERRY).cloned().collect())
    }

    fn snapshot(&mut self) -> io::Result<Snapshot> {
        self.calls.push("dump".into());
        let connected = self
            .reach
            .iter()
            .filter(|(_, (_, via))| via.is_none())
            .map(|(g, (oif, _))| Connected { net: IpNetwork::from(*g), oif: *oif, metric: 0 })
            .collect();
        Ok(Snapshot {
            routes: self.routes.iter().filter(|r| r.protocol == RTPROT_FERRY).cloned().collect(),
            connected,
            nexthops: (!self.no_nexthops).then(|| self.nexthops.clone()),
        })
    }

    fn route_to(&mut self, gw: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        self.calls.push(format!("get {gw}"));
        Ok(self.reach.get(&gw).copied())
    }

    fn neighbours(&mut self, ifindex: u32) -> io::Result<Vec<Neigh>> {
        self.calls.push(format!("neighbours of {ifindex}"));
        Ok(self.neighbours.iter().filter(|n| n.ifindex == ifindex).cloned().collect())
    }

    fn apply(&mut self, changes: &[Change]) -> Vec<io::Result<()>> {
        self.calls.push(format!("batch of {}", changes.len()));
        changes.iter().map(|c| self.change(c)).collect()
    }
}

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn n4(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn want(pairs: &[(&str, &str)]) -> Want {
    pairs.iter().map(|(d, g)| (n(d), ip(g))).collect()
}

fn id(dst: &str) -> u32 {
    nh_id(n(dst)).unwrap()
}

const ETH0: u32 = 2;

/// An applier whose fake kernel reaches the given gateways directly on eth0.
fn applier(reachable: &[&str]) -> RouteApplier<FakeTable> {
    let mut t = FakeTable::default();
    for g in reachable {
        t.reach.insert(ip(g), (ETH0, None));
    }
    RouteApplier::new(t, Arc::new(Metrics::default()))
}

impl RouteApplier<FakeTable> {
    /// Calls made since the last look.
    fn calls(&mut self) -> Vec<String> {
        std::mem::take(&mut self.table.calls)
    }

    /// Destination → gateway of every route in the fake kernel (a route on a nexthop shows
    /// the nexthop's gateway), plain gateway routes and foreign ones tagged.
    fn kernel(&self) -> Vec<String> {
        let t = &self.table;
        let mut v: Vec<String> = t
            .routes
            .iter()
            .map(|r| {
                let nh = r.nh_id.and_then(|id| t.nexthops.iter().find(|n| n.id == id));
                let gw = nh.and_then(|n| n.gateway).or(r.gateway);
                let gw = gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
                let tag = match (r.protocol == RTPROT_FERRY, r.nh_id) {
                    (false, _) => " (foreign)",
                    (true, None) => " (plain)",
                    (true, Some(_)) => "",
                };
                format!("{} via {gw}{tag}", r.dst)
            })
            .collect();
        v.sort();
        v
    }

    fn nexthops(&self) -> Vec<String> {
        let mut v: Vec<String> = self.table.nexthops.iter().map(show_nh).collect();
        v.sort();
        v
    }

    fn metric(&self, f: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.metrics).load(Relaxed)
    }
}

fn foreign(dst: &str, gw: &str) -> Route {
    let mut r = peer_route(n(dst), ip(gw), ETH0);
    r.protocol = 4; // static
    r
}

/// Ferry's nexthop and route for a peer, as a running ferryd leaves them.
fn put_peer(a: &mut RouteApplier<FakeTable>, dst: &str, gw: &str) {
    a.table.nexthops.push(peer_nexthop(id(dst), ip(gw), ETH0));
    a.table.routes.push(nexthop_route(n(dst), id(dst)));
}

#[test]
fn adds_nexthops_and_routes_in_one_batch_and_then_does_nothing() {
    let mut a = applier(&["198.18.0.12", "198.18.0.13"]);
    let w = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 2);
    assert_eq!(
        a.calls(),
        [
            "dump",
            "batch of 4",
            "nh 10.244.2.0/24 via 198.18.0.12 add",
            "add 10.244.2.0/24 via nh 10.244.2.0/24",
            "nh 10.244.3.0/24 via 198.18.0.13 add",
            "add 10.244.3.0/24 via nh 10.244.3.0/24",
        ]
    );
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12", "10.244.3.0/24 via 198.18.0.13"]);
    let r = &a.table.routes[0];
    assert_eq!((r.oif, r.gateway, r.protocol, r.table), (None, None, RTPROT_FERRY, RT_TABLE_MAIN));
    let h = &a.table.nexthops[0];
    assert_eq!((h.oif, h.protocol), (Some(ETH0), RTPROT_FERRY));
    assert_eq!(a.metric(|m| &m.routes_added_total), 2);
    assert_eq!(a.metric(|m| &m.peers), 2);
    // In sync: one dump, no change.
    assert_eq!(a.reconcile(&w, true).unwrap(), 0);
    assert_eq!(a.calls(), ["dump"]);
    assert!(!a.has_blocked());
}

#[test]
fn wrong_gateway_is_replaced_in_place_on_the_nexthop() {
    let mut a = applier(&["198.18.0.12", "198.18.0.22"]);
    put_peer(&mut a, "10.244.2.0/24", "198.18.0.12");
    let w = want(&[("10.244.2.0/24", "198.18.0.22")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.calls(), ["dump", "batch of 1", "nh 10.244.2.0/24 via 198.18.0.22 replace"]);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.22"]);
    assert_eq!(a.metric(|m| &m.routes_replaced_total), 1);
    // A store event moving the peer back: the nexthop is replaced without a dump.
    let back = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert!(a.apply_delta(&w, &back).unwrap());
    assert_eq!(
        a.calls(),
        ["get 198.18.0.12", "batch of 1", "nh 10.244.2.0/24 via 198.18.0.12 replace"]
    );
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12"]);
}

#[test]
fn plain_routes_from_before_move_onto_nexthops_in_place() {
    let mut a = applier(&["198.18.0.12", "198.18.0.13"]);
    a.table.routes.push(peer_route(n("10.244.2.0/24"), ip("198.18.0.12"), ETH0));
    a.table.routes.push(peer_route(n("10.244.3.0/24"), ip("198.18.0.99"), ETH0));
    let w = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 2);
    let calls = a.calls();
    assert_eq!(
        calls[..4],
        [
            "dump",
            "batch of 4",
            "nh 10.244.2.0/24 via 198.18.0.12 add",
            "replace 10.244.2.0/24 via nh 10.244.2.0/24"
        ]
    );
    assert!(!calls.iter().any(|c| c.starts_with("del")), "never deleted: {calls:?}");
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12", "10.244.3.0/24 via 198.18.0.13"]);
    assert_eq!(a.metric(|m| &m.routes_replaced_total), 2);
}

#[test]
fn stale_routes_and_nexthops_are_deleted_and_foreign_ones_untouched() {
    let mut a = applier(&["198.18.0.12"]);
    put_peer(&mut a, "10.244.9.0/24", "198.18.0.19");
    a.table.nexthops.push(peer_nexthop(id("10.244.8.0/24"), ip("198.18.0.18"), ETH0));
    a.table.routes.push(foreign("10.77.0.0/24", "198.18.0.13"));
    let mut theirs = peer_nexthop(77, ip("198.18.0.13"), ETH0);
    theirs.protocol = 4;
    a.table.nexthops.push(theirs);
    assert_eq!(a.reconcile(&Want::new(), false).unwrap(), 3);
    assert_eq!(
        a.calls(),
        [
            "dump",
            "batch of 1",
            "del 10.244.9.0/24 via nh 10.244.9.0/24",
            "batch of 2",
            "nh 10.244.8.0/24 del",
            "nh 10.244.9.0/24 del",
        ]
    );
    assert_eq!(a.kernel(), ["10.77.0.0/24 via 198.18.0.13 (foreign)"]);
    assert_eq!(a.nexthops(), ["nh 77 via 198.18.0.13"]);
    assert_eq!(a.metric(|m| &m.routes_deleted_total), 1);
    // A peer leaving through a store event: route and nexthop deleted without a dump.
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    a.reconcile(&w, false).unwrap();
    a.calls();
    assert!(a.apply_delta(&w, &Want::new()).unwrap());
    assert_eq!(
        a.calls(),
        ["batch of 2", "del 10.244.2.0/24 via nh 10.244.2.0/24", "nh 10.244.2.0/24 del"]
    );
    assert_eq!(a.kernel(), ["10.77.0.0/24 via 198.18.0.13 (foreign)"]);
    // --uninstall removes ours only: routes, plain or on nexthops, and nexthops.
    put_peer(&mut a, "10.244.5.0/24", "198.18.0.12");
    a.table.routes.push(peer_route(n("10.244.6.0/24"), ip("198.18.0.12"), ETH0));
    assert_eq!(a.remove_all().unwrap(), 2);
    assert_eq!(a.kernel(), ["10.77.0.0/24 via 198.18.0.13 (foreign)"]);
    assert_eq!(a.nexthops(), ["nh 77 via 198.18.0.13"]);
}

#[test]
fn unreachable_peer_is_reported_once_and_retried_only_on_request() {
    let mut a = applier(&["198.18.0.12"]);
    // 203.0.113.5 has no route at all; 192.0.2.9 is reached through a router.
    a.table.reach.insert(ip("192.0.2.9"), (ETH0, Some(ip("198.18.0.1"))));
    let w = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("10.244.3.0/24", "203.0.113.5"),
        ("10.244.4.0/24", "192.0.2.9"),
    ]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12"]);
    assert!(a.has_blocked());
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 2);
    assert_eq!(a.metric(|m| &m.unreachable_peers), 2);
    a.calls();
    // Event-driven reconciles skip them without asking the kernel again.
    assert_eq!(a.reconcile(&w, false).unwrap(), 0);
    assert_eq!(a.calls(), ["dump"]);
    // A sweep retries (from the dump: no question per peer), but does not report them again.
    assert_eq!(a.reconcile(&w, true).unwrap(), 0);
    assert_eq!(a.calls(), ["dump"]);
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 2);
    // The uplink comes up: the next retry routes the peer and forgets it was unreachable.
    a.table.reach.insert(ip("203.0.113.5"), (ETH0, None));
    assert_eq!(a.reconcile(&w, true).unwrap(), 1);
    assert!(a.kernel().contains(&"10.244.3.0/24 via 203.0.113.5".to_string()));
    assert_eq!(a.metric(|m| &m.unreachable_peers), 1);
    // A new gateway for a blocked peer is a new occurrence: reported.
    let moved = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("10.244.3.0/24", "203.0.113.5"),
        ("10.244.4.0/24", "192.0.2.10"),
    ]);
    assert!(a.apply_delta(&w, &moved).unwrap());
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 3);
    // The peer leaves: forgotten.
    let left = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "203.0.113.5")]);
    assert!(a.apply_delta(&moved, &left).unwrap());
    assert!(!a.has_blocked(), "a peer that left is forgotten");
    assert_eq!(a.metric(|m| &m.unreachable_peers), 0);
}

#[test]
fn a_gateway_the_kernel_refuses_counts_as_unreachable_once() {
    let mut a = applier(&["198.18.0.12"]);
    // The dump says on-link, the kernel says otherwise when the nexthop is added.
    a.table.refuse_gateway(ip("198.18.0.66"));
    let w = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.6.0/24", "198.18.0.66")]);
    assert_eq!(a.reconcile(&w, true).unwrap(), 1);
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 1);
    assert_eq!(a.metric(|m| &m.route_errors_total), 0);
    assert_eq!(a.reconcile(&w, true).unwrap(), 0);
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 1, "reported once");
    assert_eq!(a.metric(|m| &m.unreachable_peers), 1);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12"]);
    // The kernel changes its mind: routed, no longer counted.
    a.table.refused.clear();
    assert_eq!(a.reconcile(&w, true).unwrap(), 1);
    assert_eq!(a.metric(|m| &m.unreachable_peers), 0);
}

impl FakeTable {
    /// Snapshots list `gw` as on-link, but adding it fails: the kernel looked again.
    fn refuse_gateway(&mut self, gw: IpAddr) {
        self.reach.insert(gw, (ETH0, None));
        self.refused.push(gw);
    }
}

#[test]
fn moving_to_an_unreachable_gateway_removes_our_old_route_and_nexthop() {
    let mut a = applier(&["198.18.0.12"]);
    let old = want(&[("10.244.2.0/24", "198.18.0.12")]);
    a.reconcile(&old, false).unwrap();
    a.calls();
    let new = want(&[("10.244.2.0/24", "203.0.113.5")]);
    assert!(a.apply_delta(&old, &new).unwrap());
    assert_eq!(
        a.calls(),
        [
            "get 203.0.113.5",
            "batch of 2",
            "del 10.244.2.0/24 via nh 10.244.2.0/24",
            "nh 10.244.2.0/24 del"
        ]
    );
    assert!(a.kernel().is_empty() && a.nexthops().is_empty());
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 1);
    // Its lease moving again while blocked: the blocked route was never ours to replace.
    let again = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert!(a.apply_delta(&new, &again).unwrap());
    assert_eq!(
        a.calls(),
        [
            "get 198.18.0.12",
            "batch of 2",
            "nh 10.244.2.0/24 via 198.18.0.12 replace",
            "add 10.244.2.0/24 via nh 10.244.2.0/24"
        ]
    );
    assert!(!a.has_blocked());
}

#[test]
fn foreign_route_conflict_is_reported_once_and_left_alone() {
    let mut a = applier(&["198.18.0.12"]);
    a.table.routes.push(foreign("10.244.2.0/24", "198.18.0.13"));
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 0);
    assert_eq!(a.metric(|m| &m.route_conflicts_total), 1);
    assert!(a.has_blocked());
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.13 (foreign)"]);
    a.calls();
    // Skipped until a retry; a retry tries again but does not report again.
    a.reconcile(&w, false).unwrap();
    assert_eq!(a.calls(), ["dump"]);
    a.reconcile(&w, true).unwrap();
    assert_eq!(a.calls(), ["dump", "batch of 1", "add 10.244.2.0/24 via nh 10.244.2.0/24"]);
    assert_eq!(a.metric(|m| &m.route_conflicts_total), 1);
    assert_eq!(a.metric(|m| &m.unreachable_peers), 0, "a conflict is not unreachability");
    // The admin removes the foreign route: the next retry installs ours.
    a.table.routes.clear();
    assert_eq!(a.reconcile(&w, true).unwrap(), 1);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12"]);
    assert!(!a.has_blocked());
}

#[test]
fn a_delta_that_meets_a_foreign_route_asks_for_a_full_reconcile() {
    let mut a = applier(&["198.18.0.12"]);
    a.table.routes.push(foreign("10.244.2.0/24", "198.18.0.13"));
    a.reconcile(&Want::new(), false).unwrap();
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert!(!a.apply_delta(&Want::new(), &w).unwrap(), "EEXIST without a dump: out of sync");
    assert_eq!(a.metric(|m| &m.route_conflicts_total), 0, "not known to be foreign yet");
    assert!(!a.has_blocked());
    // The full reconcile that follows knows Ferry has no route there: a conflict.
    a.reconcile(&w, true).unwrap();
    assert_eq!(a.metric(|m| &m.route_conflicts_total), 1);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.13 (foreign)"]);
}

#[test]
fn failed_operations_are_counted_and_retried_by_the_next_reconcile() {
    let mut a = applier(&["198.18.0.12"]);
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    a.table.fail_next = Some(io::ErrorKind::PermissionDenied);
    assert_eq!(a.reconcile(&w, false).unwrap(), 0);
    assert_eq!(a.metric(|m| &m.route_errors_total), 1);
    assert!(!a.has_blocked(), "an error is not a blocked peer: no skipping");
    assert!(a.kernel().is_empty());
    // Even an event-driven (non-retry) reconcile tries again.
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12"]);
}

#[test]
fn duplicates_and_odd_metrics_are_cleaned_up() {
    let mut a = applier(&["198.18.0.12"]);
    let mut dup = peer_route(n("10.244.2.0/24"), ip("198.18.0.12"), ETH0);
    dup.metric = Some(100);
    a.table.routes.push(dup);
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 2);
    assert_eq!(
        a.calls(),
        [
            "dump",
            "batch of 1",
            "del 10.244.2.0/24 via 198.18.0.12",
            "batch of 2",
            "nh 10.244.2.0/24 via 198.18.0.12 add",
            "add 10.244.2.0/24 via nh 10.244.2.0/24",
        ]
    );
    assert_eq!(a.table.routes.len(), 1);
    assert_eq!(a.table.routes[0].metric, None);
}

#[test]
fn a_deleted_nexthop_takes_its_route_and_both_are_repaired() {
    let mut a = applier(&["198.18.0.12", "198.18.0.13"]);
    let w = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]);
    a.reconcile(&w, false).unwrap();
    a.table.del_nexthop(id("10.244.2.0/24")).unwrap(); // `ip nexthop del id ...`
    assert_eq!(a.kernel(), ["10.244.3.0/24 via 198.18.0.13"]);
    a.calls();
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(
        a.calls(),
        [
            "dump",
            "batch of 2",
            "nh 10.244.2.0/24 via 198.18.0.12 add",
            "add 10.244.2.0/24 via nh 10.244.2.0/24"
        ]
    );
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12", "10.244.3.0/24 via 198.18.0.13"]);
}

#[test]
fn a_kernel_without_nexthop_objects_gets_plain_gateway_routes() {
    let mut a = applier(&["198.18.0.12", "198.18.0.22"]);
    a.table.no_nexthops = true;
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.calls(), ["dump", "batch of 1", "add 10.244.2.0/24 via 198.18.0.12"]);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12 (plain)"]);
    assert_eq!(a.table.routes[0].oif, Some(ETH0));
    // Deltas too: a move replaces the route, a leave deletes it by its gateway.
    let moved = want(&[("10.244.2.0/24", "198.18.0.22")]);
    assert!(a.apply_delta(&w, &moved).unwrap());
    assert_eq!(
        a.calls(),
        ["get 198.18.0.22", "batch of 1", "replace 10.244.2.0/24 via 198.18.0.22"]
    );
    assert!(a.apply_delta(&moved, &Want::new()).unwrap());
    assert_eq!(a.calls(), ["batch of 1", "del 10.244.2.0/24 via 198.18.0.22"]);
    assert!(a.kernel().is_empty());
}

#[test]
fn nexthops_refused_when_added_fall_back_to_plain_routes_at_once_and_for_good() {
    let mut a = applier(&["198.18.0.12"]);
    a.table.refuse_nexthops = true;
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12 (plain)"]);
    assert_eq!(a.metric(|m| &m.route_errors_total), 0, "not an error: a fallback");
    a.calls();
    assert_eq!(a.reconcile(&w, true).unwrap(), 0, "plain routes are in sync now");
    assert_eq!(a.calls(), ["dump"]);
}

#[test]
fn a_peer_whose_nexthop_id_another_program_holds_gets_a_plain_route() {
    let mut a = applier(&["198.18.0.12", "198.18.0.13"]);
    let mut theirs = peer_nexthop(id("10.244.2.0/24"), ip("198.18.0.13"), ETH0);
    theirs.protocol = 42;
    a.table.nexthops.push(theirs);
    let w = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 2);
    assert_eq!(
        a.kernel(),
        ["10.244.2.0/24 via 198.18.0.12 (plain)", "10.244.3.0/24 via 198.18.0.13"]
    );
    assert_eq!(a.reconcile(&w, false).unwrap(), 0);
    // Its lease leaving deletes the plain route; their nexthop stays.
    let left = want(&[("10.244.3.0/24", "198.18.0.13")]);
    assert!(a.apply_delta(&w, &left).unwrap());
    assert_eq!(a.kernel(), ["10.244.3.0/24 via 198.18.0.13"]);
    assert_eq!(a.table.nexthops.len(), 2);
}

#[test]
fn thousands_of_peers_go_in_bounded_batches() {
    let gw = |i: u32| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i + 2));
    let mut a = applier(&[]);
    let mut w = Want::new();
    for i in 0..5000u32 {
        a.table.reach.insert(gw(i), (ETH0, None));
        let dst = Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + (i + 2) * 256), 24).unwrap();
        w.insert(dst.into(), gw(i));
    }
    assert_eq!(a.reconcile(&w, false).unwrap(), 5000);
    let batches: Vec<String> = a.calls().into_iter().filter(|c| c.starts_with("batch")).collect();
    assert_eq!(
        batches,
        ["batch of 2048", "batch of 2048", "batch of 2048", "batch of 2048", "batch of 1808"]
    );
    assert_eq!((a.table.routes.len(), a.table.nexthops.len()), (5000, 5000));
}

const VX: u32 = 9;

fn mac(last: u8) -> [u8; 6] {
    [0x0e, 0x66, 0, 0, 0, last]
}

fn neighbours(a: &RouteApplier<FakeTable>) -> Vec<String> {
    let mut v: Vec<String> = a
        .table
        .neighbours
        .iter()
        .map(|n| format!("{:?} {} {:02x}", n.kind, n.addr, n.mac[5]))
        .collect();
    v.sort();
    v
}

#[test]
fn vxlan_sends_off_link_peers_through_the_device_and_on_link_peers_direct() {
    // .12 is on-link; .13 (another segment) and .14 (no VTEP: cannot decapsulate) are not.
    let mut a = applier(&["198.18.0.12"]);
    let vteps = [(n4("10.244.2.0/24"), mac(0x12)), (n4("10.244.3.0/24"), mac(0x13))];
    a.set_encap(Some(Encap {
        ifindex: VX,
        direct_routing: true,
        vteps: vteps.into_iter().collect(),
    }));
    let w = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("10.244.3.0/24", "198.19.0.13"),
        ("10.244.4.0/24", "198.19.0.14"),
    ]);
    a.reconcile(&w, false).unwrap();
    let hop = |a: &RouteApplier<FakeTable>, dst: &str| {
        a.table.nexthops.iter().find(|h| h.id == id(dst)).cloned()
    };
    let direct = hop(&a, "10.244.2.0/24").unwrap();
    assert_eq!(
        (direct.gateway, direct.oif, direct.onlink),
        (Some("198.18.0.12".parse().unwrap()), Some(ETH0), false)
    );
    let vx = hop(&a, "10.244.3.0/24").unwrap();
    assert_eq!(
        (vx.gateway, vx.oif, vx.onlink),
        (Some("10.244.3.0".parse().unwrap()), Some(VX), true)
    );
    assert!(hop(&a, "10.244.4.0/24").is_none(), "no VTEP: never encapsulated");
    assert_eq!(a.table.routes.len(), 2);
    assert_eq!(neighbours(&a), ["Arp 10.244.3.0 13", "Fdb 198.19.0.13 13"]);
    assert_eq!(a.encapsulated(), 1);
    assert_eq!(a.metrics.peers_encapsulated.load(Relaxed), 1);
    assert!(a.has_blocked(), ".14 is unreachable");

    // Steady state: nothing changes.
    a.calls();
    assert_eq!(a.reconcile(&w, false).unwrap(), 0);

    // .13 moves onto this segment: direct route, its neighbour entries go; .12 leaves it.
    a.table.reach.insert(ip("198.19.0.13"), (ETH0, None));
    a.table.reach.remove(&ip("198.18.0.12"));
    a.reconcile(&w, true).unwrap();
    let now = hop(&a, "10.244.3.0/24").unwrap();
    assert_eq!(
        (now.gateway, now.oif, now.onlink),
        (Some("198.19.0.13".parse().unwrap()), Some(ETH0), false)
    );
    let moved = hop(&a, "10.244.2.0/24").unwrap();
    assert_eq!((moved.gateway, moved.oif), (Some("10.244.2.0".parse().unwrap()), Some(VX)));
    assert_eq!(neighbours(&a), ["Arp 10.244.2.0 12", "Fdb 198.18.0.12 12"]);

    // A VTEP MAC change is replaced in place; a stray entry on the device is removed.
    a.table.neighbours.push(Neigh {
        kind: NeighKind::Arp,
        ifindex: VX,
        addr: "10.244.9.0".parse().unwrap(),
        mac: mac(9),
        protocol: 0,
    });
    a.encap_mut().unwrap().vteps.insert(n4("10.244.2.0/24"), mac(0x22));
    a.reconcile(&w, false).unwrap();
    assert_eq!(neighbours(&a), ["Arp 10.244.2.0 22", "Fdb 198.18.0.12 22"]);

    // Without DirectRouting every peer with a VTEP is encapsulated, on-link or not.
    a.encap_mut().unwrap().direct_routing = false;
    a.reconcile(&w, false).unwrap();
    assert_eq!(hop(&a, "10.244.3.0/24").unwrap().oif, Some(VX));
    assert_eq!(a.encapsulated(), 2);
    // Store events take the full reconcile path in vxlan mode.
    assert!(!a.apply_delta(&w, &Want::new()).unwrap());
}

#[test]
fn both_families_share_one_reconcile_with_their_own_nexthops() {
    let mut a = applier(&["198.18.0.12", "fd00:198:18::12", "fd00:198:18::13"]);
    let w = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("fd00:10:244:2::/64", "fd00:198:18::12"),
        ("fd00:10:244:3::/64", "fd00:198:18::13"),
    ]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 3);
    assert_eq!(
        a.kernel(),
        [
            "10.244.2.0/24 via 198.18.0.12",
            "fd00:10:244:2::/64 via fd00:198:18::12",
            "fd00:10:244:3::/64 via fd00:198:18::13",
        ]
    );
    let v6: Vec<&Nexthop> = a.table.nexthops.iter().filter(|h| h.v6).collect();
    assert_eq!(v6.len(), 2);
    assert!(v6.iter().all(|h| h.id & 0xF000_0000 == crate::route_plan::NH_ID_TAG6));
    assert_eq!(a.reconcile(&w, true).unwrap(), 0, "in sync");
    // An IPv6 peer moves (delta: its nexthop replaced), another goes (route and nexthop out),
    // an unreachable one is reported and not routed.
    let moved = want(&[
        ("10.244.2.0/24", "198.18.0.12"),
        ("fd00:10:244:2::/64", "fd00:198:18::13"),
        ("fd00:10:244:4::/64", "fd00:198:18::99"),
    ]);
    a.apply_delta(&w, &moved).unwrap();
    assert_eq!(
        a.kernel(),
        ["10.244.2.0/24 via 198.18.0.12", "fd00:10:244:2::/64 via fd00:198:18::13"]
    );
    assert_eq!(a.table.nexthops.len(), 2, "{:?}", a.nexthops());
    assert!(a.has_blocked());
    // Stale IPv6 routes of Ferry's go at the next reconcile, a foreign one stays.
    a.table.routes.push(peer_route(n("fd00:10:244:9::/64"), ip("fd00:198:18::12"), ETH0));
    a.table.routes.push(foreign("fd00:77::/64", "fd00:198:18::12"));
    a.reconcile(&moved, false).unwrap();
    assert_eq!(
        a.kernel(),
        [
            "10.244.2.0/24 via 198.18.0.12",
            "fd00:10:244:2::/64 via fd00:198:18::13",
            "fd00:77::/64 via fd00:198:18::12 (foreign)",
        ]
    );
}

#[test]
fn ipv6_peers_get_plain_gateway_routes_without_nexthop_objects() {
    let mut a = applier(&["fd00:198:18::12"]);
    a.table.no_nexthops = true;
    let w = want(&[("fd00:10:244:2::/64", "fd00:198:18::12")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.kernel(), ["fd00:10:244:2::/64 via fd00:198:18::12 (plain)"]);
    assert!(a.table.nexthops.is_empty());
    let moved = want(&[("fd00:10:244:2::/64", "fd00:198:18::13")]);
    a.table.reach.insert(ip("fd00:198:18::13"), (ETH0, None));
    a.apply_delta(&w, &moved).unwrap();
    assert_eq!(a.kernel(), ["fd00:10:244:2::/64 via fd00:198:18::13 (plain)"]);
}

/// The sweep plans from a snapshot dumped earlier on another thread; the peers that deltas
/// changed after the dump are left out, so a stale snapshot neither re-adds nor removes them,
/// while everything else is still reconciled from it.
#[test]
fn a_sweep_from_an_earlier_snapshot_leaves_the_peers_changed_since_alone() {
    let mut a = applier(&["198.18.0.12", "198.18.0.13", "198.18.0.14"]);
    put_peer(&mut a, "10.244.2.0/24", "198.18.0.12");
    put_peer(&mut a, "10.244.3.0/24", "198.18.0.13");
    let old = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]);
    assert_eq!(a.reconcile(&old, true).unwrap(), 0); // start-up: in sync
    let snap = a.table.snapshot().unwrap(); // the dump thread's, before the deltas below
                                            // Deltas meanwhile: 10.244.3.0/24 leaves, 10.244.4.0/24 joins; and a drift the sweep must
                                            // still repair: 10.244.2.0/24's route was deleted by hand after the dump.
    let new = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.4.0/24", "198.18.0.14")]);
    assert!(a.apply_delta(&old, &new).unwrap());
    a.table.routes.retain(|r| r.dst != n("10.244.2.0/24"));
    a.calls();
    let settled = [n("10.244.3.0/24"), n("10.244.4.0/24")].into_iter().collect();
    a.reconcile_snapshot(snap.clone(), &new, true, &settled).unwrap();
    // The snapshot still shows 10.244.2.0/24's route, so it is not repaired from it (the next
    // sweep's dump will); 3 is not re-added or deleted again, 4 is not added twice.
    assert_eq!(a.calls(), Vec::<String>::new());
    assert_eq!(a.kernel(), ["10.244.4.0/24 via 198.18.0.14"]);
    // Without leaving them out, the stale snapshot would delete 3 again and add 4 again.
    a.reconcile_snapshot(snap, &new, true, &Default::default()).unwrap();
    assert!(!a.calls().is_empty());
    // A fresh sweep repairs the drift.
    a.reconcile(&new, true).unwrap();
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12", "10.244.4.0/24 via 198.18.0.14"]);
}
