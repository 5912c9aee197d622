//! The one rtnetlink socket every typed op goes through: send a request, collect the replies until
//! the kernel's ACK, NLMSG_DONE or error.

use crate::{netns, Netlink};
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::fs::File;
use std::io;

/// Receive buffer size. The kernel sizes dump datagrams to at most 32 KiB, so 64 KiB never truncates.
pub(crate) const RECV_BUF: usize = 64 * 1024;

/// How often an interrupted dump (NLM_F_DUMP_INTR: the table changed meanwhile) is retried.
const DUMP_RETRIES: usize = 5;

pub(crate) fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
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

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Strict checking lets the kernel filter dumps (by ifindex, table, protocol); harmless if refused.
        let _ = sock.set_netlink_get_strict_chk(true);
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
    /// messages. Kernel errors become `io::Error::from_raw_os_error(errno)`.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        for _ in 0..DUMP_RETRIES {
            match self.request_once(msg.clone(), flags)? {
                Some(replies) => return Ok(replies),
                None if dump => continue,
                None => break,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "netlink dump kept being interrupted by changes",
        ))
    }

    /// `Ok(None)` when a dump was interrupted and should be retried.
    fn request_once(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Option<Vec<RouteNetlinkMessage>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        hdr.sequence_number = seq;
        let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let n = recv_into(&self.sock, &mut self.buf)?;
            let mut off = 0;
            while off < n {
                let frame = NetlinkBuffer::new_checked(&self.buf[off..n]).map_err(invalid)?;
                let len = frame.length() as usize;
                let (mtype, mflags, mseq) =
                    (frame.message_type(), frame.flags(), frame.sequence_number());
                let bytes = &self.buf[off..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue; // a late reply to an earlier request
                }
                interrupted |= mflags & NLM_F_DUMP_INTR != 0;
                match mtype {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                            .map_err(invalid)?;
                        let code = match parsed.payload {
                            NetlinkPayload::Error(e) => e.code.map_or(0, |c| c.get()),
                            NetlinkPayload::Done(d) => d.code,
                            _ => 0,
                        };
                        if code < 0 {
                            return Err(io::Error::from_raw_os_error(code.saturating_neg()));
                        }
                        return Ok(if interrupted { None } else { Some(replies) });
                    }
                    _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                        Ok(m) => {
                            if let NetlinkPayload::InnerMessage(inner) = m.payload {
                                replies.push(inner);
                            }
                        }
                        // One message our parser cannot read must not hide the rest of a dump.
                        Err(_) if dump => {}
                        Err(e) => return Err(invalid(format!("reply type {mtype}: {e}"))),
                    },
                }
            }
        }
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
