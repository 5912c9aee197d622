//! The kernel routing table as the route applier sees it: a small trait, so the applier's
//! decisions are testable without root, and its netlink implementation.

use ferry_netlink::batch::Op;
use ferry_netlink::neigh::{Neigh, NeighKind};
use ferry_netlink::{nexthop, Netlink, Nexthop, Route, Scope, RTPROT_FERRY, RT_TABLE_MAIN};
use ipnetwork::IpNetwork;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

/// A directly connected IPv4 network: a main-table link-scope route without a gateway (the
/// kernel's own subnet routes, `ip route add NET dev X`). A gateway inside one is on-link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    pub net: IpNetwork,
    pub oif: u32,
    pub metric: u32,
}

/// The interface that reaches `gw` directly: the longest connected network holding it (the
/// lowest metric among equals), as the kernel looks a gateway up when a route is added.
pub fn on_link(connected: &[Connected], gw: IpAddr) -> Option<u32> {
    connected
        .iter()
        .filter(|c| c.net.contains(gw))
        .max_by_key(|c| (c.net.prefix(), std::cmp::Reverse(c.metric)))
        .map(|c| c.oif)
}

/// One look at the kernel, for a full reconcile.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Ferry's routes: main table, protocol 113.
    pub routes: Vec<Route>,
    pub connected: Vec<Connected>,
    /// Every nexthop object, anyone's; `None` when the kernel has none (before Linux 5.3).
    pub nexthops: Option<Vec<Nexthop>>,
}

/// One change to the kernel, see [`RouteTable::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    AddRoute(Route),
    ReplaceRoute(Route),
    DelRoute(Route),
    AddNexthop(Nexthop),
    ReplaceNexthop(Nexthop),
    DelNexthop(u32),
    /// Add or replace a permanent neighbour (ARP) or fdb entry on the VXLAN device.
    ReplaceNeigh(Neigh),
    DelNeigh(Neigh),
}

/// What [`crate::route_applier::RouteApplier`] needs from the kernel.
pub trait RouteTable {
    /// Every route Ferry owns: main table, protocol 113. A route on a nexthop object reads with
    /// that nexthop's gateway and oif.
    fn ferry_routes(&mut self) -> io::Result<Vec<Route>>;

    /// Ferry's routes, the connected networks and the nexthop objects: one dump each.
    fn snapshot(&mut self) -> io::Result<Snapshot>;

    /// How the kernel reaches `gw`: the output interface and, when not directly, the next hop.
    /// `Ok(None)`: no route at all.
    fn route_to(&mut self, gw: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>>;

    /// The permanent ARP and fdb entries of device `ifindex` (the VXLAN device).
    fn neighbours(&mut self, ifindex: u32) -> io::Result<Vec<Neigh>>;

    /// Make the changes, in order; one result per change. A failing change does not stop the
    /// others. Adds fail with `AlreadyExists` when the slot is taken; deletes of what is not
    /// there fail with `NotFound`.
    fn apply(&mut self, changes: &[Change]) -> Vec<io::Result<()>>;
}

/// Changes sent per [`Netlink::batch`] call (which cuts them into datagrams of 8 KiB): bounds
/// the memory a batch of 100,000 changes would take as netlink messages all at once.
pub const APPLY_CHUNK: usize = 2048;

/// [`RouteTable`] on a netlink socket in the daemon's network namespace.
pub struct NetlinkRouteTable {
    netlink: Netlink,
}

/// The sweep's table dump on a thread of its own, with its own netlink socket in this process's
/// namespace: at 50,000 peers a dump is ~50 ms of kernel and parsing, and the event loop keeps
/// applying store events meanwhile. Ask with a number; the snapshot comes back with it.
pub struct Dumper {
    pub ask: std::sync::mpsc::Sender<u64>,
    pub done: tokio::sync::mpsc::UnboundedReceiver<(u64, io::Result<Snapshot>)>,
}

impl Dumper {
    pub fn spawn() -> io::Result<Dumper> {
        let mut table = NetlinkRouteTable::new(Netlink::new()?);
        let (ask, asked) = std::sync::mpsc::channel::<u64>();
        let (tx, done) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new().name("sweep-dump".into()).stack_size(256 * 1024).spawn(
            move || {
                while let Ok(n) = asked.recv() {
                    if tx.send((n, table.snapshot())).is_err() {
                        return;
                    }
                }
            },
        )?;
        Ok(Dumper { ask, done })
    }
}

impl NetlinkRouteTable {
    pub fn new(netlink: Netlink) -> NetlinkRouteTable {
        NetlinkRouteTable { netlink }
    }

    /// Every nexthop object; `None` when the kernel has none.
    fn nexthops(&mut self) -> io::Result<Option<Vec<Nexthop>>> {
        match self.netlink.nexthops() {
            Ok(v) => Ok(Some(v)),
            Err(e) if nexthop::unsupported(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Give routes on a nexthop object the nexthop's gateway and oif where the kernel left them out
/// (`net.ipv4.nexthop_compat_mode=0`).
fn resolve(routes: &mut [Route], nexthops: &[Nexthop]) {
    let by_id: HashMap<u32, &Nexthop> = nexthops.iter().map(|n| (n.id, n)).collect();
    for r in routes.iter_mut().filter(|r| r.gateway.is_none()) {
        if let Some(n) = r.nh_id.and_then(|id| by_id.get(&id)) {
            r.gateway = n.gateway;
            r.oif = r.oif.or(n.oif);
        }
    }
}

fn connected(r: &Route) -> Option<Connected> {
    let metric = r.metric.unwrap_or(0);
    match (r.dst, r.scope, r.gateway, r.nh_id, r.oif) {
        (IpNetwork::V4(_), Scope::Link, None, None, Some(oif)) => {
            Some(Connected { net: r.dst, oif, metric })
        }
        // IPv6 on-link prefixes have universe scope; link-local fe80::/64 (on every link) is
        // no network a peer's global address is on.
        (IpNetwork::V6(n), _, None, None, Some(oif))
            if n.prefix() > 0
                && (n.ip().segments()[0] & 0xffc0) != 0xfe80
                && !n.ip().is_multicast() =>
        {
            Some(Connected { net: r.dst, oif, metric })
        }
        _ => None,
    }
}

fn op(c: &Change) -> Op<'_> {
    match c {
        Change::AddRoute(r) => Op::AddRoute(r),
        Change::ReplaceRoute(r) => Op::ReplaceRoute(r),
        Change::DelRoute(r) => Op::DelRoute(r),
        Change::AddNexthop(n) => Op::AddNexthop(n),
        Change::ReplaceNexthop(n) => Op::ReplaceNexthop(n),
        Change::DelNexthop(id) => Op::DelNexthop(*id),
        Change::ReplaceNeigh(n) => Op::ReplaceNeigh(n),
        Change::DelNeigh(n) => Op::DelNeigh(n),
    }
}

/// A delete's ESRCH / ENOENT as `NotFound`.
fn absent_as_not_found(c: &Change, res: io::Result<()>) -> io::Result<()> {
    let delete = matches!(c, Change::DelRoute(_) | Change::DelNexthop(_) | Change::DelNeigh(_));
    match res {
        Err(e) if delete && matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => {
            Err(io::Error::new(io::ErrorKind::NotFound, e))
        }
        r => r,
    }
}

impl RouteTable for NetlinkRouteTable {
    fn ferry_routes(&mut self) -> io::Result<Vec<Route>> {
        let mut routes = self.netlink.routes(false, RT_TABLE_MAIN, Some(RTPROT_FERRY))?;
        routes.extend(self.netlink.routes(true, RT_TABLE_MAIN, Some(RTPROT_FERRY))?);
        if routes.iter().any(|r| r.nh_id.is_some() && r.gateway.is_none()) {
            resolve(&mut routes, &self.nexthops()?.unwrap_or_default());
        }
        Ok(routes)
    }

    fn snapshot(&mut self) -> io::Result<Snapshot> {
        let nexthops = self.nexthops()?;
        let mut all = self.netlink.routes(false, RT_TABLE_MAIN, None)?;
        all.extend(self.netlink.routes(true, RT_TABLE_MAIN, None)?);
        let connected = all.iter().filter_map(connected).collect();
        let routes = all.into_iter().filter(|r| r.protocol == RTPROT_FERRY).collect();
        Ok(Snapshot { routes, connected, nexthops })
    }

    fn route_to(&mut self, gw: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        self.netlink.route_get(gw)
    }

    fn neighbours(&mut self, ifindex: u32) -> io::Result<Vec<Neigh>> {
        let mut out = self.netlink.neighbours(NeighKind::Arp, ifindex)?;
        out.extend(self.netlink.neighbours(NeighKind::Fdb, ifindex)?);
        Ok(out)
    }

    /// [`APPLY_CHUNK`] changes per batch. If the socket itself fails mid-way, every change of
    /// that batch gets the error (the next reconcile sees what actually landed).
    fn apply(&mut self, changes: &[Change]) -> Vec<io::Result<()>> {
        let mut out = Vec::with_capacity(changes.len());
        for chunk in changes.chunks(APPLY_CHUNK) {
            let ops: Vec<Op> = chunk.iter().map(op).collect();
            match self.netlink.batch(&ops) {
                Ok(results) => {
                    out.extend(chunk.iter().zip(results).map(|(c, r)| absent_as_not_found(c, r)))
                }
                Err(e) => {
                    out.extend(chunk.iter().map(|_| Err(io::Error::new(e.kind(), e.to_string()))))
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(net: &str, oif: u32, metric: u32) -> Connected {
        Connected { net: net.parse().unwrap(), oif, metric }
    }

    #[test]
    fn on_link_takes_the_longest_then_cheapest_connected_network() {
        let table =
            [c("198.18.0.0/16", 2, 0), c("198.18.7.0/24", 3, 100), c("198.18.7.0/24", 4, 5)];
        assert_eq!(on_link(&table, "198.18.7.9".parse().unwrap()), Some(4));
        assert_eq!(on_link(&table, "198.18.8.9".parse().unwrap()), Some(2));
        assert_eq!(on_link(&table, "203.0.113.5".parse().unwrap()), None);
    }

    #[test]
    fn connected_means_link_scope_without_gateway_or_nexthop() {
        let mut r = Route::new("198.18.0.0/16".parse().unwrap());
        r.scope = Scope::Link;
        r.oif = Some(2);
        assert_eq!(connected(&r), Some(c("198.18.0.0/16", 2, 0)));
        let via = Route { gateway: Some("198.18.0.1".parse().unwrap()), ..r.clone() };
        let on_nh = Route { nh_id: Some(5), ..r.clone() };
        let universe = Route { scope: Scope::Universe, ..r.clone() };
        let link_local = Route { dst: "fe80::/64".parse().unwrap(), ..r.clone() };
        for x in [via, on_nh, universe, link_local] {
            assert_eq!(connected(&x), None, "{x:?}");
        }
        // IPv6 on-link prefixes come with universe scope: connected all the same.
        let v6 = Route { dst: "fd00::/64".parse().unwrap(), scope: Scope::Universe, ..r };
        assert_eq!(connected(&v6).map(|c| c.net.to_string()), Some("fd00::/64".into()));
        let table = [Connected { net: "fd00::/64".parse().unwrap(), oif: 5, metric: 256 }];
        assert_eq!(on_link(&table, "fd00::12".parse().unwrap()), Some(5));
        assert_eq!(on_link(&table, "fd01::12".parse().unwrap()), None);
    }

    #[test]
    fn routes_on_nexthops_read_with_the_nexthops_gateway() {
        let nh = Nexthop::via(9, "198.18.0.12".parse().unwrap(), 2, RTPROT_FERRY);
        let mut routes =
            vec![Route { nh_id: Some(9), ..Route::new("10.1.0.0/24".parse().unwrap()) }];
        resolve(&mut routes, &[nh]);
        assert_eq!(routes[0].gateway, Some("198.18.0.12".parse().unwrap()));
        assert_eq!(routes[0].oif, Some(2));
    }
}
