//! Several changes in one datagram: the kernel runs the messages of one `sendmsg` in order and
//! acknowledges each, so a batch costs one round trip instead of one per change (large batches
//! are cut into datagrams of a few KiB, see `socket.rs`). Used on the plugin's ADD hot path.

use crate::{addr::addr_msg, link::up_msg, route::route_msg, Netlink, Route};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage as Rt;
use std::io;

/// One change in a [`Netlink::batch`].
#[derive(Debug, Clone)]
pub enum Op<'a> {
    /// Set IFF_UP on a link.
    SetUp(u32),
    /// Add an address (ifindex, address/prefix, noprefixroute).
    AddAddress(u32, IpNetwork, bool),
    /// Add a route (EEXIST if present).
    AddRoute(&'a Route),
}

impl Op<'_> {
    fn message(&self) -> (Rt, u16) {
        match self {
            Op::SetUp(i) => (Rt::SetLink(up_msg(*i)), 0),
            Op::AddAddress(i, a, npr) => {
                (Rt::NewAddress(addr_msg(*i, *a, *npr)), NLM_F_CREATE | NLM_F_EXCL)
            }
            Op::AddRoute(r) => (Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_EXCL),
        }
    }
}

impl Netlink {
    /// Send every op in one datagram and return one result per op, in order. A failing op does
    /// not stop the ones after it (the kernel processes each message on its own); the outer
    /// error is for the socket itself failing.
    pub fn batch(&mut self, ops: &[Op]) -> io::Result<Vec<io::Result<()>>> {
        let msgs = ops.iter().map(Op::message).collect();
        Ok(self.exchange(msgs)?.into_iter().map(|r| r.result.map(drop)).collect())
    }
}
