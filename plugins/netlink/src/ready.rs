//! Waiting, bounded and event-driven, until a freshly wired veth pair can carry traffic.
//!
//! Two things happen asynchronously in the kernel after the last netlink request of an ADD is
//! acknowledged: the linkwatch work item that, once carrier is on, attaches the link's queueing
//! discipline and sets its operational state (until then the `noop` qdisc drops what is sent),
//! and the DAD work item that inserts an IPv6 address's local route (until then packets to the
//! address are not received). [`wait_ready`] returns once neither is pending on either end.
//!
//! The common case costs no subscription: a single RTM_GETLINK of a link runs its pending
//! linkwatch work first (`rtnl_getlink`, Linux 5.15+), so the first check usually succeeds. An
//! end that is not ready gets a notification socket in its namespace (subscribed *before* it is
//! checked again, so no change can slip between check and wait) and is re-checked on each
//! notification, until the deadline. No sleeping, no polling on a timer.

use crate::socket::RECV_BUF;
use crate::{netns, Netlink};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Groups a [`Watch`] joins: link changes (operstate, qdisc) and IPv6 routes (local routes of
/// new addresses).
pub const GROUPS: [u32; 2] = [libc::RTNLGRP_LINK, libc::RTNLGRP_IPV6_ROUTE];

/// A notification socket used only as a wake-up: its messages are drained, not parsed.
pub struct Watch {
    sock: Socket,
    buf: Vec<u8>,
}

impl Watch {
    /// Subscribed in the calling thread's namespace.
    pub fn new() -> io::Result<Watch> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        for g in GROUPS {
            sock.add_membership(g)?;
        }
        Ok(Watch { sock, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Subscribed inside `ns`; the thread is back home afterwards, also on error.
    pub fn in_netns(ns: &File) -> io::Result<Watch> {
        let guard = netns::enter(ns)?;
        let w = Watch::new();
        drop(guard);
        w
    }

    /// Read every queued notification without blocking. An overrun (ENOBUFS) is only a lost
    /// wake-up reason: the caller re-checks the state anyway.
    fn drain(&mut self) -> io::Result<()> {
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One end of a pair: the handle of its namespace (`ns`: that namespace, to subscribe in;
/// `None` for the calling thread's own), the link, and the addresses that must be local.
pub struct End<'a> {
    pub nl: &'a mut Netlink,
    pub ns: Option<&'a File>,
    pub link: u32,
    pub local: Vec<IpAddr>,
}

impl Netlink {
    /// Whether link `index` can send (see [`crate::Link::can_send`]) and every address in
    /// `local` has its local route on it ([`Netlink::local_routes`]). A vanished link is an
    /// error (`NotFound`).
    pub fn end_ready(&mut self, index: u32, local: &[IpAddr]) -> io::Result<bool> {
        let link = self.link_by_index(index)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("link {index} vanished"))
        })?;
        if !link.can_send() {
            return Ok(false);
        }
        for v6 in [false, true] {
            let want: Vec<&IpAddr> = local.iter().filter(|ip| ip.is_ipv6() == v6).collect();
            if want.is_empty() {
                continue;
            }
            let have = self.local_routes(v6, index)?;
            if want.iter().any(|ip| !have.contains(ip)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Wait until every end is ready ([`Netlink::end_ready`]) or `timeout` has passed: `Ok(true)`
/// when ready, `Ok(false)` on timeout. See the module docs for how.
pub fn wait_ready(ends: &mut [End], timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut watches: Vec<Option<Watch>> = ends.iter().map(|_| None).collect();
    let mut ready = vec![false; ends.len()];
    loop {
        for (e, r) in ends.iter_mut().zip(ready.iter_mut()).filter(|(_, r)| !**r) {
            *r = e.nl.end_ready(e.link, &e.local)?;
        }
        if ready.iter().all(|r| *r) {
            return Ok(true);
        }
        // Subscribe where still needed, then check again before waiting.
        let mut subscribed = false;
        for (i, e) in ends.iter().enumerate() {
            if !ready[i] && watches[i].is_none() {
                watches[i] = Some(match e.ns {
                    Some(ns) => Watch::in_netns(ns)?,
                    None => Watch::new()?,
                });
                subscribed = true;
            }
        }
        if subscribed {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let waiting: Vec<usize> = (0..ends.len()).filter(|i| !ready[*i]).collect();
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .filter_map(|i| watches[*i].as_ref())
            .map(|w| libc::pollfd { fd: w.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // Round up: a sub-millisecond remainder must not become a busy poll(0).
        let ms = (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32;
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (i, fd) in waiting.iter().zip(&fds) {
            if fd.revents != 0 {
                if let Some(w) = watches[*i].as_mut() {
                    w.drain()?;
                }
            }
        }
    }
}
