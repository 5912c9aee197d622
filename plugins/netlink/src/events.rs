//! Multicast route/link/address notifications for the daemon's drift detection.

use crate::frame::frames;
use crate::nexthop::{parse_nexthop, RTM_DELNEXTHOP, RTM_NEWNEXTHOP, RTNLGRP_NEXTHOP};
use crate::route::parse_route;
use crate::socket::{recv_into, RECV_BUF};
use crate::{netns, Event, EventSocket};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage as Rt;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Groups joined: links, IPv4 and IPv6 routes, IPv4 addresses; and nexthop objects where the
/// kernel has them ([`OPTIONAL_GROUPS`]).
pub const GROUPS: [u32; 4] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_IPV4_IFADDR,
];

/// Groups joined when the kernel knows them: deleting a nexthop object takes its routes with it
/// without any route notification, so only the nexthop's own notification shows it.
pub const OPTIONAL_GROUPS: [u32; 1] = [RTNLGRP_NEXTHOP];

/// Receive buffer asked for, so bursts (a node joining with many routes) do not overrun.
const SOCK_RCVBUF: libc::c_int = 4 << 20;

fn set_rcvbuf(fd: RawFd) {
    let v: libc::c_int = SOCK_RCVBUF;
    let set = |opt| unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of_val(&v) as u32,
        )
    };
    // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN in the init user ns; else best effort.
    if set(libc::SO_RCVBUFFORCE) != 0 {
        set(libc::SO_RCVBUF);
    }
}

fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// One notification as an [`Event`]; `None` for what the daemon does not track.
pub fn parse_event(msg: &Rt) -> Option<Event> {
    match msg {
        Rt::NewLink(m) => Some(Event::LinkChanged {
            index: m.header.index,
            name: link_name(m),
            up: m.header.flags.contains(LinkFlags::Up),
        }),
        Rt::DelLink(m) => Some(Event::LinkDeleted { index: m.header.index, name: link_name(m) }),
        Rt::NewRoute(m) => parse_route(m).ok().flatten().map(Event::RouteAdded),
        Rt::DelRoute(m) => parse_route(m).ok().flatten().map(Event::RouteDeleted),
        Rt::NewAddress(_) | Rt::DelAddress(_) => Some(Event::AddressChanged),
        _ => None,
    }
}

/// A nexthop notification (raw: `netlink-packet-route` has no nexthop messages) as an event.
fn nexthop_event(mtype: u16, body: &[u8]) -> Option<Event> {
    let nh = parse_nexthop(body).ok()?;
    match mtype {
        RTM_NEWNEXTHOP => Some(Event::NexthopChanged(nh)),
        RTM_DELNEXTHOP => Some(Event::NexthopDeleted(nh)),
        _ => None,
    }
}

/// Every event in one datagram of notifications; consecutive `AddressChanged` are merged.
pub fn parse_datagram(buf: &[u8]) -> io::Result<Vec<Event>> {
    let mut out = Vec::new();
    for frame in frames(buf) {
        let frame = frame?;
        if frame.mtype == RTM_NEWNEXTHOP || frame.mtype == RTM_DELNEXTHOP {
            out.extend(nexthop_event(frame.mtype, frame.body()));
            continue;
        }
        // A notification our parser cannot read is skipped; the next full resync covers it.
        let Ok(m) = frame.parse() else { continue };
        let ev = match m.payload {
            NetlinkPayload::InnerMessage(inner) => parse_event(&inner),
            NetlinkPayload::Overrun(_) => Some(Event::Overrun),
            _ => None,
        };
        match ev {
            Some(Event::AddressChanged) if out.last() == Some(&Event::AddressChanged) => {}
            Some(e) => out.push(e),
            None => {}
        }
    }
    Ok(out)
}

impl EventSocket {
    pub fn new() -> io::Result<EventSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        set_rcvbuf(sock.as_raw_fd());
        sock.bind_auto()?;
        for g in GROUPS {
            sock.add_membership(g)?;
        }
        for g in OPTIONAL_GROUPS {
            let _ = sock.add_membership(g); // EINVAL before Linux 5.3: no nexthop objects
        }
        Ok(EventSocket { sock, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// An event socket subscribed inside the namespace `ns`; the thread is back home afterwards.
    pub fn in_netns(ns: &File) -> io::Result<EventSocket> {
        let guard = netns::enter(ns)?;
        let s = EventSocket::new();
        drop(guard);
        s
    }

    /// Set the kernel receive buffer (SO_RCVBUF, capped by net.core.rmem_max). `new` already asks
    /// for 4 MiB; a smaller buffer overruns sooner (tests).
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        self.sock.set_rx_buf_sz(bytes.min(i32::MAX as usize) as libc::c_int)
    }

    /// Block until at least one event arrives.
    pub fn recv(&mut self) -> io::Result<Vec<Event>> {
        loop {
            let events = self.recv_one()?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// Like [`EventSocket::recv`], but gives up after `timeout` with an empty list.
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd =
                libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Ok(Vec::new());
            }
            let events = self.recv_one()?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn recv_one(&mut self) -> io::Result<Vec<Event>> {
        match recv_into(&self.sock, &mut self.buf) {
            Ok(n) => parse_datagram(&self.buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(vec![Event::Overrun]),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::route_msg;
    use crate::Route;

    fn datagram(msgs: Vec<Rt>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            crate::frame::encode(&mut out, crate::frame::Msg::Rt(m), 0, 0);
        }
        out
    }

    #[test]
    fn parses_nexthop_notifications() {
        use crate::frame::{encode, Msg};
        use crate::nexthop::nexthop_body;
        let nh = crate::Nexthop::via(7, "198.18.0.12".parse().unwrap(), 2, 113);
        let mut buf = Vec::new();
        encode(&mut buf, Msg::Raw(RTM_NEWNEXTHOP, nexthop_body(&nh)), 0, 0);
        encode(&mut buf, Msg::Raw(RTM_DELNEXTHOP, nexthop_body(&nh)), 0, 0);
        encode(&mut buf, Msg::Raw(RTM_DELNEXTHOP, vec![1, 2]), 0, 0); // garbled: skipped
        let ev = parse_datagram(&buf).unwrap();
        assert_eq!(ev, vec![Event::NexthopChanged(nh.clone()), Event::NexthopDeleted(nh)]);
    }

    #[test]
    fn parses_route_link_and_address_notifications() {
        let r = Route::new("10.244.2.0/24".parse().unwrap());
        let mut link = LinkMessage::default();
        link.header.index = 4;
        link.header.flags = LinkFlags::Up;
        link.attributes.push(LinkAttribute::IfName("eth0".into()));
        let mut local = route_msg(&r);
        local.header.kind = netlink_packet_route::route::RouteType::Local;
        let addr = netlink_packet_route::address::AddressMessage::default();
        let buf = datagram(vec![
            Rt::DelRoute(route_msg(&r)),
            Rt::NewRoute(local),
            Rt::NewAddress(addr.clone()),
            Rt::DelAddress(addr),
            Rt::NewLink(link.clone()),
            Rt::DelLink(link),
            Rt::NewRoute(route_msg(&r)),
        ]);
        let ev = parse_datagram(&buf).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::RouteDeleted(r.clone()),
                Event::AddressChanged,
                Event::LinkChanged { index: 4, name: "eth0".into(), up: true },
                Event::LinkDeleted { index: 4, name: "eth0".into() },
                Event::RouteAdded(r),
            ]
        );
    }

    #[test]
    fn truncated_datagram_is_an_error_not_a_panic() {
        let buf =
            datagram(vec![Rt::DelRoute(route_msg(&Route::new("10.0.0.0/8".parse().unwrap())))]);
        assert!(parse_datagram(&buf[..buf.len() - 3]).is_err());
        assert!(parse_datagram(&[]).unwrap().is_empty());
    }
}
