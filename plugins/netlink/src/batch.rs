//! Several changes in one datagram: the kernel runs the messages of one `sendmsg` in order and
//! answers each, so a batch costs one round trip instead of one per change (large batches are
//! cut into datagrams of a few KiB, and only the last change of each asks for an ACK: see
//! `socket.rs`). Used on the plugin's ADD hot path and by the daemon's route programming.

use crate::frame::Msg;
use crate::link::{no_addrgen_msg, up_msg};
use crate::neigh::{self, Neigh};
use crate::nexthop;
use crate::{addr::addr_msg, route::route_del_msg, route::route_msg};
use crate::{Netlink, Nexthop, Route};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage as Rt;
use std::io;

/// One change in a [`Netlink::batch`].
#[derive(Debug, Clone)]
pub enum Op<'a> {
    /// Set IFF_UP on a link.
    SetUp(u32),
    /// No kernel IPv6 address generation on a link (see [`crate::link::no_addrgen_msg`]).
    NoAddrGen(u32),
    /// Add an address (ifindex, address/prefix, noprefixroute).
    AddAddress(u32, IpNetwork, bool),
    /// Add a route (EEXIST if present).
    AddRoute(&'a Route),
    /// Add or atomically replace the route for its destination (and metric).
    ReplaceRoute(&'a Route),
    /// Delete the route the fields match (ESRCH if none), as [`Netlink::del_route`].
    DelRoute(&'a Route),
    /// Add a nexthop object (EEXIST if its id is taken).
    AddNexthop(&'a Nexthop),
    /// Add or atomically replace the nexthop object with its id.
    ReplaceNexthop(&'a Nexthop),
    /// Delete the nexthop object with this id, and its routes (ENOENT if none).
    DelNexthop(u32),
    /// Add or replace a permanent neighbour (ARP or fdb) entry.
    ReplaceNeigh(&'a Neigh),
    /// Delete a neighbour entry (ENOENT if none).
    DelNeigh(&'a Neigh),
}

impl Op<'_> {
    fn message(&self) -> (Msg, u16) {
        let rt = |m, f| (Msg::Rt(m), f);
        match self {
            Op::SetUp(i) => rt(Rt::SetLink(up_msg(*i)), 0),
            Op::NoAddrGen(i) => rt(Rt::SetLink(no_addrgen_msg(*i)), 0),
            Op::AddAddress(i, a, npr) => {
                rt(Rt::NewAddress(addr_msg(*i, *a, *npr)), NLM_F_CREATE | NLM_F_EXCL)
            }
            Op::AddRoute(r) => rt(Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_EXCL),
            Op::ReplaceRoute(r) => rt(Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_REPLACE),
            Op::DelRoute(r) => rt(Rt::DelRoute(route_del_msg(r)), 0),
            Op::AddNexthop(n) => nexthop::new_msg(n, false),
            Op::ReplaceNexthop(n) => nexthop::new_msg(n, true),
            Op::DelNexthop(id) => nexthop::del_msg(*id),
            Op::ReplaceNeigh(n) => neigh::replace_msg(n),
            Op::DelNeigh(n) => neigh::del_msg(n),
        }
    }
}

impl Netlink {
    /// Send every op (one datagram per few KiB) and return one result per op, in order. A
    /// failing op does not stop the ones after it (the kernel processes each message on its
    /// own); the outer error is for the socket itself failing.
    pub fn batch(&mut self, ops: &[Op]) -> io::Result<Vec<io::Result<()>>> {
        let msgs = ops.iter().map(Op::message).collect();
        Ok(self.exchange(msgs, true)?.into_iter().map(|r| r.result.map(drop)).collect())
    }
}
