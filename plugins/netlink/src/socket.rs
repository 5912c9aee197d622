//! The one rtnetlink socket every typed op goes through: send a request, collect the replies until
//! the kernel's ACK, NLMSG_DONE or error.

use crate::frame::{encode, frames, invalid, Frame, Msg};
use crate::{netns, Netlink};
use netlink_packet_core::{
    NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::fs::File;
use std::io;

/// Receive buffer size. The kernel sizes dump datagrams to at most 32 KiB, so 64 KiB never truncates.
pub(crate) const RECV_BUF: usize = 64 * 1024;

/// How often an interrupted dump (NLM_F_DUMP_INTR: the table changed meanwhile) is retried.
const DUMP_RETRIES: usize = 5;

/// Requests sent per datagram are cut at this many bytes, and the kernel's answers to one
/// datagram are all read before the next is sent: each ACK echoes its request, so an unbounded
/// batch overruns the socket's receive buffer (ENOBUFS).
const SEND_CHUNK: usize = 8 * 1024;

/// A reply message as a [`Part`]: raw for nexthop types, else parsed; `None` for control
/// messages (noop, overrun) that carry nothing.
fn read_part(frame: &Frame) -> io::Result<Option<Part>> {
    if is_raw(frame.mtype) {
        return Ok(Some(Part::Raw(frame.mtype, frame.body().to_vec())));
    }
    match frame.parse() {
        Ok(m) => match m.payload {
            NetlinkPayload::InnerMessage(m) => Ok(Some(Part::Rt(m))),
            _ => Ok(None),
        },
        Err(e) => Err(invalid(format!("reply type {}: {e}", frame.mtype))),
    }
}

/// True if `e` carries one of the errnos in `codes`.
pub(crate) fn is_errno(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// Receive one datagram into `buf` (cleared first); EINTR is retried.
pub(crate) fn recv_into(sock: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        buf.clear();
        match sock.recv(buf, libc::MSG_TRUNC) {
            Ok(n) if n > buf.capacity() => {
                return Err(invalid(format!("datagram of {n} bytes truncated")))
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One message of a reply: parsed, or raw for the types `netlink-packet-route` does not know
/// (nexthop objects: the type and the bytes after the netlink header).
#[derive(Debug, Clone)]
pub(crate) enum Part {
    Rt(RouteNetlinkMessage),
    Raw(u16, Vec<u8>),
}

/// Message types handed back raw, see [`Part::Raw`].
fn is_raw(mtype: u16) -> bool {
    (crate::nexthop::RTM_NEWNEXTHOP..=crate::nexthop::RTM_GETNEXTHOP).contains(&mtype)
}

/// The kernel's answer to one request of an exchange.
pub(crate) struct Reply {
    /// The messages before the final ACK / DONE, or the kernel's error.
    pub result: io::Result<Vec<Part>>,
    /// A dump that the kernel flagged NLM_F_DUMP_INTR (the table changed while dumping).
    pub interrupted: bool,
}

/// A request sent and waiting for its answer.
#[derive(Clone, Copy)]
struct Pending {
    seq: u32,
    dump: bool,
    /// NLM_F_ACK was set: the request ends with an ACK (or error) frame. Without it only an
    /// error answers; silence means success.
    acked: bool,
}

/// Byte offset of `nlmsg_flags` in a netlink header.
const FLAGS_AT: usize = 6;

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Strict checking lets the kernel filter dumps (by ifindex, table, protocol); harmless if refused.
        let _ = sock.set_netlink_get_strict_chk(true);
        // ACKs without a copy of the request: smaller answers to big batches; harmless if refused.
        let _ = sock.set_cap_ack(true);
        Ok(Netlink { sock, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// A socket inside the namespace `ns` (an open `/run/netns/x` or `/proc/PID/ns/net`).
    /// The calling thread is back in its own namespace when this returns, also on error.
    pub fn in_netns(ns: &File) -> io::Result<Netlink> {
        let guard = netns::enter(ns)?;
        let nl = Netlink::new();
        drop(guard);
        nl
    }

    /// Send `msg` with `flags` (NLM_F_REQUEST|NLM_F_ACK are added) and return the kernel's reply
    /// messages. Kernel errors become `io::Error::from_raw_os_error(errno)`. A request is an
    /// exchange of one; an interrupted dump is retried.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let parts = self.request_msg(Msg::Rt(msg), flags)?;
        Ok(parts
            .into_iter()
            .filter_map(|p| match p {
                Part::Rt(m) => Some(m),
                Part::Raw(..) => None,
            })
            .collect())
    }

    /// [`Netlink::request`] for any message, answered with [`Part`]s.
    pub(crate) fn request_msg(&mut self, msg: Msg, flags: u16) -> io::Result<Vec<Part>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        for _ in 0..DUMP_RETRIES {
            let reply = self.exchange(vec![(msg.clone(), flags)], false)?.pop();
            match reply {
                Some(r) if r.interrupted && dump => continue,
                Some(r) => return r.result,
                None => break,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "netlink dump kept being interrupted by changes",
        ))
    }

    /// Send every request (in datagrams of at most [`SEND_CHUNK`] bytes; the kernel runs the
    /// messages of one datagram in order and answers each) and return one [`Reply`] per
    /// request, in order. A failing request does not stop the ones after it; the outer error is
    /// for the socket itself failing.
    ///
    /// `quiet` (changes only, no dumps or gets): only the last request of each datagram asks for
    /// an ACK. The kernel answers the others only when they fail, and in order, so once that
    /// last ACK is in, every request of the datagram without an error frame has succeeded: one
    /// read per datagram instead of one per request.
    pub(crate) fn exchange(
        &mut self,
        msgs: Vec<(Msg, u16)>,
        quiet: bool,
    ) -> io::Result<Vec<Reply>> {
        let mut replies = Vec::with_capacity(msgs.len());
        let mut out = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let total = msgs.len();
        for (i, (msg, flags)) in msgs.into_iter().enumerate() {
            self.seq = self.seq.wrapping_add(1);
            let start = out.len();
            encode(&mut out, msg, flags, self.seq);
            let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
            let acked = !quiet || dump;
            if !acked {
                let at = start + FLAGS_AT;
                let f = u16::from_ne_bytes([out[at], out[at + 1]]) & !NLM_F_ACK;
                out[at..at + 2].copy_from_slice(&f.to_ne_bytes());
            }
            pending.push(Pending { seq: self.seq, dump, acked });
            if out.len() >= SEND_CHUNK || i + 1 == total {
                if let Some(last) = pending.last_mut().filter(|p| !p.acked) {
                    let at = start + FLAGS_AT;
                    let f = u16::from_ne_bytes([out[at], out[at + 1]]) | NLM_F_ACK;
                    out[at..at + 2].copy_from_slice(&f.to_ne_bytes());
                    last.acked = true;
                }
                self.sock.send(&out, 0)?;
                out.clear();
                self.collect(&pending, &mut replies)?;
                pending.clear();
            }
        }
        Ok(replies)
    }

    /// Read answers until each of the `pending` requests that ends with a final frame has it
    /// (dumps: DONE; acked requests: ACK or error); the others succeeded unless an error came.
    fn collect(&mut self, pending: &[Pending], replies: &mut Vec<Reply>) -> io::Result<()> {
        let first = pending[0].seq;
        let mut got: Vec<Option<Reply>> = pending.iter().map(|_| None).collect();
        let mut parts: Vec<Vec<Part>> = pending.iter().map(|_| Vec::new()).collect();
        let mut bad: Vec<Option<io::Error>> = pending.iter().map(|_| None).collect();
        let mut intr = vec![false; pending.len()];
        let mut open = pending.iter().filter(|p| p.acked).count();
        while open > 0 {
            let n = recv_into(&self.sock, &mut self.buf)?;
            for frame in frames(&self.buf[..n]) {
                let frame = frame?;
                let i = frame.seq.wrapping_sub(first) as usize;
                if i >= pending.len() || got[i].is_some() {
                    continue; // a late answer to an earlier request
                }
                intr[i] |= frame.flags & NLM_F_DUMP_INTR != 0;
                if frame.mtype == NLMSG_ERROR || frame.mtype == NLMSG_DONE {
                    let result = match (frame.status()?, bad[i].take()) {
                        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
                        (Ok(()), None) => Ok(std::mem::take(&mut parts[i])),
                    };
                    got[i] = Some(Reply { result, interrupted: intr[i] });
                    open -= usize::from(pending[i].acked);
                    continue;
                }
                match read_part(&frame) {
                    Ok(p) => parts[i].extend(p),
                    // One message our parser cannot read must not hide the rest of a dump.
                    Err(_) if pending[i].dump => {}
                    Err(e) => {
                        bad[i].get_or_insert(e);
                    }
                }
            }
        }
        let done = |_| Reply { result: Ok(Vec::new()), interrupted: false };
        replies.extend(got.into_iter().enumerate().map(|(i, r)| r.unwrap_or_else(|| done(i))));
        Ok(())
    }

    /// A request answered by at most one message (GET by name/index): `Ok(None)` on `absent` errnos.
    pub(crate) fn get_one(
        &mut self,
        msg: RouteNetlinkMessage,
        absent: &[i32],
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        match self.request(msg, 0) {
            Ok(mut v) => Ok(v.pop()),
            Err(e) if is_errno(&e, absent) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A request whose only answer is the ACK: `Ok(true)`, or `Ok(false)` on `absent` errnos.
    pub(crate) fn ack_or_absent(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        absent: &[i32],
    ) -> io::Result<bool> {
        match self.request(msg, flags) {
            Ok(_) => Ok(true),
            Err(e) if is_errno(&e, absent) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
