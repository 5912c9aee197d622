//! The kernel routing table as the route applier sees it: a small trait, so the applier's
//! decisions are testable without root, and its netlink implementation.

use ferry_netlink::batch::Op;
use ferry_netlink::{Netlink, Route, RTPROT_FERRY, RT_TABLE_MAIN};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// What [`crate::route_applier::RouteApplier`] needs from the kernel.
pub trait RouteTable {
    /// Every route Ferry owns: main table, protocol 113.
    fn ferry_routes(&mut self) -> io::Result<Vec<Route>>;

    /// How the kernel reaches `gw`: the output interface and, when not directly, the next hop.
    /// `Ok(None)`: no route at all.
    fn route_to(&mut self, gw: Ipv4Addr) -> io::Result<Option<(u32, Option<IpAddr>)>>;

    /// Add a route; an `AlreadyExists` error when a route already holds its destination.
    fn add(&mut self, r: &Route) -> io::Result<()>;

    /// Add or atomically replace the route for `r`'s destination.
    fn replace(&mut self, r: &Route) -> io::Result<()>;

    /// Delete the route `r` matches; `Ok(false)` if there was none.
    fn delete(&mut self, r: &Route) -> io::Result<bool>;

    /// Add several routes; one result per route, in order. A failing add does not stop the
    /// others. The default adds them one by one.
    fn add_all(&mut self, routes: &[Route]) -> Vec<io::Result<()>> {
        routes.iter().map(|r| self.add(r)).collect()
    }
}

/// Routes added per netlink datagram by [`NetlinkRouteTable::add_all`]: one round trip each, and
/// well inside the socket buffers (a route message and its ack are each under 100 bytes).
pub const ADD_BATCH: usize = 64;

/// [`RouteTable`] on a netlink socket in the daemon's network namespace.
pub struct NetlinkRouteTable {
    netlink: Netlink,
}

impl NetlinkRouteTable {
    pub fn new(netlink: Netlink) -> NetlinkRouteTable {
        NetlinkRouteTable { netlink }
    }
}

impl RouteTable for NetlinkRouteTable {
    fn ferry_routes(&mut self) -> io::Result<Vec<Route>> {
        self.netlink.routes(false, RT_TABLE_MAIN, Some(RTPROT_FERRY))
    }

    fn route_to(&mut self, gw: Ipv4Addr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        self.netlink.route_get(IpAddr::V4(gw))
    }

    fn add(&mut self, r: &Route) -> io::Result<()> {
        self.netlink.add_route(r)
    }

    fn replace(&mut self, r: &Route) -> io::Result<()> {
        self.netlink.replace_route(r)
    }

    fn delete(&mut self, r: &Route) -> io::Result<bool> {
        self.netlink.del_route(r)
    }

    /// [`ADD_BATCH`] routes per datagram. If the socket itself fails mid-way, every route of
    /// that datagram gets the error (the next reconcile sees what actually landed).
    fn add_all(&mut self, routes: &[Route]) -> Vec<io::Result<()>> {
        let mut out = Vec::with_capacity(routes.len());
        for chunk in routes.chunks(ADD_BATCH) {
            let ops: Vec<Op> = chunk.iter().map(Op::AddRoute).collect();
            match self.netlink.batch(&ops) {
                Ok(results) => out.extend(results),
                Err(e) => {
                    out.extend(chunk.iter().map(|_| Err(io::Error::new(e.kind(), e.to_string()))))
                }
            }
        }
        out
    }
}
