//! Several changes in one datagram: the kernel runs the messages of one `sendmsg` in order and
//! acknowledges each, so a batch costs one round trip instead of one per change. Used on the
//! plugin's ADD hot path.

use crate::socket::{invalid, recv_into};
use crate::{addr::addr_msg, link::up_msg, route::route_msg, Netlink, Route};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
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
    /// Add or replace a route atomically.
    ReplaceRoute(&'a Route),
}

impl Op<'_> {
    fn message(&self) -> (Rt, u16) {
        match self {
            Op::SetUp(i) => (Rt::SetLink(up_msg(*i)), 0),
            Op::AddAddress(i, a, npr) => {
                (Rt::NewAddress(addr_msg(*i, *a, *npr)), NLM_F_CREATE | NLM_F_EXCL)
            }
            Op::AddRoute(r) => (Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_EXCL),
            Op::ReplaceRoute(r) => (Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_REPLACE),
        }
    }
}

impl Netlink {
    /// Send every op in one datagram and return one result per op, in order. A failing op does
    /// not stop the ones after it (the kernel processes each message on its own); the outer
    /// error is for the socket itself failing.
    pub fn batch(&mut self, ops: &[Op]) -> io::Result<Vec<io::Result<()>>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        for op in ops {
            self.seq = self.seq.wrapping_add(1);
            let (msg, flags) = op.message();
            let mut hdr = NetlinkHeader::default();
            hdr.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
            hdr.sequence_number = self.seq;
            let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
            nl.finalize();
            let start = out.len();
            out.resize(start + nl.buffer_len(), 0);
            nl.serialize(&mut out[start..]);
        }
        self.sock.send(&out, 0)?;
        let mut results: Vec<Option<io::Result<()>>> = (0..ops.len()).map(|_| None).collect();
        let mut pending = ops.len();
        while pending > 0 {
            let n = recv_into(&self.sock, &mut self.buf)?;
            let mut off = 0;
            while off < n {
                let frame = NetlinkBuffer::new_checked(&self.buf[off..n]).map_err(invalid)?;
                let len = frame.length() as usize;
                let (mtype, seq) = (frame.message_type(), frame.sequence_number());
                let bytes = &self.buf[off..off + len];
                off += (len + 3) & !3;
                let idx = seq.wrapping_sub(first) as usize;
                if mtype != NLMSG_ERROR || idx >= ops.len() || results[idx].is_some() {
                    continue;
                }
                let parsed = NetlinkMessage::<Rt>::deserialize(bytes).map_err(invalid)?;
                let code = match parsed.payload {
                    NetlinkPayload::Error(e) => e.code.map_or(0, |c| c.get()),
                    _ => 0,
                };
                results[idx] =
                    Some(if code < 0 { Err(io::Error::from_raw_os_error(-code)) } else { Ok(()) });
                pending -= 1;
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
    }
}
