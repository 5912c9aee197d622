//! The applier against a recording fake route table: no root, no netlink.

use super::*;
use ferry_netlink::{RTPROT_FERRY, RT_TABLE_MAIN};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

/// A kernel route table in memory that records every call. Routes are matched as the kernel
/// does for Ferry's requests: add fails with EEXIST when a route with the same destination and
/// metric exists in the table; delete matches the fields the request sets.
#[derive(Default)]
struct FakeTable {
    routes: Vec<Route>,
    /// Gateway → (oif, next hop) for `route_to`; absent: no route.
    reach: HashMap<Ipv4Addr, (u32, Option<IpAddr>)>,
    /// Error kind the next add/replace fails with.
    fail_next: Option<io::ErrorKind>,
    calls: Vec<String>,
}

fn same_slot(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.table == b.table && a.metric.unwrap_or(0) == b.metric.unwrap_or(0)
}

impl FakeTable {
    fn failing(&mut self) -> io::Result<()> {
        match self.fail_next.take() {
            Some(kind) => Err(io::Error::from(kind)),
            None => Ok(()),
        }
    }
}

impl RouteTable for FakeTable {
    fn ferry_routes(&mut self) -> io::Result<Vec<Route>> {
        self.calls.push("dump".into());
        Ok(self.routes.iter().filter(|r| r.protocol == RTPROT_FERRY).cloned().collect())
    }

    fn route_to(&mut self, gw: Ipv4Addr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        self.calls.push(format!("get {gw}"));
        Ok(self.reach.get(&gw).copied())
    }

    fn add(&mut self, r: &Route) -> io::Result<()> {
        self.calls.push(format!("add {} via {}", r.dst, show(r)));
        self.failing()?;
        if self.routes.iter().any(|h| same_slot(h, r)) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.routes.push(r.clone());
        Ok(())
    }

    fn replace(&mut self, r: &Route) -> io::Result<()> {
        self.calls.push(format!("replace {} via {}", r.dst, show(r)));
        self.failing()?;
        self.routes.retain(|h| !same_slot(h, r));
        self.routes.push(r.clone());
        Ok(())
    }

    fn delete(&mut self, r: &Route) -> io::Result<bool> {
        self.calls.push(format!("del {} via {}", r.dst, show(r)));
        let matches = |h: &Route| {
            h.dst == r.dst
                && h.table == r.table
                && h.protocol == r.protocol
                && (r.gateway.is_none() || h.gateway == r.gateway)
                && (r.oif.is_none() || h.oif == r.oif)
                && (r.metric.is_none() || h.metric == r.metric)
        };
        match self.routes.iter().position(matches) {
            Some(i) => {
                self.routes.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn add_all(&mut self, routes: &[Route]) -> Vec<io::Result<()>> {
        self.calls.push(format!("batch of {}", routes.len()));
        routes.iter().map(|r| self.add(r)).collect()
    }
}

fn show(r: &Route) -> String {
    r.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
}

fn n(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn want(pairs: &[(&str, &str)]) -> Want {
    pairs.iter().map(|(d, g)| (n(d), ip(g))).collect()
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

    /// Destination → gateway of every route in the fake kernel, foreign ones tagged.
    fn kernel(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .table
            .routes
            .iter()
            .map(|r| {
                let tag = if r.protocol == RTPROT_FERRY { "" } else { " (foreign)" };
                format!("{} via {}{tag}", r.dst, show(r))
            })
            .collect();
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

#[test]
fn adds_wanted_routes_in_one_batch_and_then_does_nothing() {
    let mut a = applier(&["198.18.0.12", "198.18.0.13"]);
    let w = want(&[("10.244.2.0/24", "198.18.0.12"), ("10.244.3.0/24", "198.18.0.13")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 2);
    assert_eq!(
        a.calls(),
        [
            "dump",
            "get 198.18.0.12",
            "get 198.18.0.13",
            "batch of 2",
            "add 10.244.2.0/24 via 198.18.0.12",
            "add 10.244.3.0/24 via 198.18.0.13",
        ]
    );
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12", "10.244.3.0/24 via 198.18.0.13"]);
    let r = &a.table.routes[0];
    assert_eq!((r.oif, r.protocol, r.table), (Some(ETH0), RTPROT_FERRY, RT_TABLE_MAIN));
    assert_eq!(a.metric(|m| &m.routes_added_total), 2);
    assert_eq!(a.metric(|m| &m.peers), 2);
    // In sync: one dump, no change.
    assert_eq!(a.reconcile(&w, true).unwrap(), 0);
    assert_eq!(a.calls(), ["dump"]);
    assert!(!a.has_blocked());
}

#[test]
fn wrong_gateway_is_replaced_in_place() {
    let mut a = applier(&["198.18.0.12", "198.18.0.22"]);
    a.table.routes.push(peer_route(n("10.244.2.0/24"), ip("198.18.0.12"), ETH0));
    let w = want(&[("10.244.2.0/24", "198.18.0.22")]);
    assert_eq!(a.reconcile(&w, false).unwrap(), 1);
    assert_eq!(a.calls(), ["dump", "get 198.18.0.22", "replace 10.244.2.0/24 via 198.18.0.22"]);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.22"]);
    assert_eq!(a.metric(|m| &m.routes_replaced_total), 1);
    // A store event moving the peer back: replaced without a dump.
    let back = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert!(a.apply_delta(&w, &back).unwrap());
    assert_eq!(a.calls(), ["get 198.18.0.12", "replace 10.244.2.0/24 via 198.18.0.12"]);
    assert_eq!(a.kernel(), ["10.244.2.0/24 via 198.18.0.12"]);
}

#[test]
fn stale_routes_are_deleted_and_foreign_ones_untouched() {
    let mut a = applier(&["198.18.0.12"]);
    a.table.routes.push(peer_route(n("10.244.9.0/24"), ip("198.18.0.19"), ETH0));
    a.table.routes.push(foreign("10.77.0.0/24", "198.18.0.13"));
    assert_eq!(a.reconcile(&Want::new(), false).unwrap(), 1);
    assert_eq!(a.calls(), ["dump", "del 10.244.9.0/24 via 198.18.0.19"]);
    assert_eq!(a.kernel(), ["10.77.0.0/24 via 198.18.0.13 (foreign)"]);
    assert_eq!(a.metric(|m| &m.routes_deleted_total), 1);
    // A peer leaving through a store event: deleted without a dump.
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    a.reconcile(&w, false).unwrap();
    a.calls();
    assert!(a.apply_delta(&w, &Want::new()).unwrap());
    assert_eq!(a.calls(), ["del 10.244.2.0/24 via 198.18.0.12"]);
    assert_eq!(a.kernel(), ["10.77.0.0/24 via 198.18.0.13 (foreign)"]);
    // --uninstall removes ours only.
    a.table.routes.push(peer_route(n("10.244.5.0/24"), ip("198.18.0.15"), ETH0));
    assert_eq!(a.remove_all().unwrap(), 1);
    assert_eq!(a.kernel(), ["10.77.0.0/24 via 198.18.0.13 (foreign)"]);
}

#[test]
fn unreachable_peer_is_reported_once_and_retried_only_on_request() {
    let mut a = applier(&["198.18.0.12"]);
    // 203.0.113.5 has no route at all; 192.0.2.9 is reached through a router.
    a.table.reach.insert(ip("192.0.2.9"), (ETH0, Some(IpAddr::V4(ip("198.18.0.1")))));
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
    // A sweep retries, but does not report them again.
    assert_eq!(a.reconcile(&w, true).unwrap(), 0);
    assert_eq!(a.calls(), ["dump", "get 203.0.113.5", "get 192.0.2.9"]);
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
fn moving_to_an_unreachable_gateway_removes_our_old_route() {
    let mut a = applier(&["198.18.0.12"]);
    let old = want(&[("10.244.2.0/24", "198.18.0.12")]);
    a.reconcile(&old, false).unwrap();
    a.calls();
    let new = want(&[("10.244.2.0/24", "203.0.113.5")]);
    assert!(a.apply_delta(&old, &new).unwrap());
    assert_eq!(a.calls(), ["get 203.0.113.5", "del 10.244.2.0/24 via 198.18.0.12"]);
    assert!(a.kernel().is_empty());
    assert_eq!(a.metric(|m| &m.unreachable_peers_total), 1);
    // Its lease moving again while blocked: the blocked route was never ours to replace.
    let again = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert!(a.apply_delta(&new, &again).unwrap());
    assert_eq!(a.calls(), ["get 198.18.0.12", "add 10.244.2.0/24 via 198.18.0.12"]);
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
    assert_eq!(
        a.calls(),
        ["dump", "get 198.18.0.12", "batch of 1", "add 10.244.2.0/24 via 198.18.0.12"]
    );
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
    let w = want(&[("10.244.2.0/24", "198.18.0.12")]);
    assert!(!a.apply_delta(&Want::new(), &w).unwrap(), "EEXIST without a dump: out of sync");
    assert_eq!(a.metric(|m| &m.route_conflicts_total), 0, "not known to be foreign yet");
    assert!(!a.has_blocked());
    // The full reconcile that follows knows Ferry has no route there: a conflict.
    a.reconcile(&w, true).unwrap();
    assert_eq!(a.metric(|m| &m.route_conflicts_total), 1);
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
            "del 10.244.2.0/24 via 198.18.0.12",
            "get 198.18.0.12",
            "batch of 1",
            "add 10.244.2.0/24 via 198.18.0.12",
        ]
    );
    assert_eq!(a.table.routes.len(), 1);
    assert_eq!(a.table.routes[0].metric, None);
}
