//! Interface addresses: add, list, delete.

use crate::Netlink;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use std::io;
use std::net::IpAddr;

/// The RTM_NEWADDR / RTM_DELADDR body for `addr` on `index`. IPv4 carries IFA_LOCAL and IFA_ADDRESS
/// (equal: no peer), IPv6 IFA_ADDRESS; `noprefixroute` adds IFA_F_NOPREFIXROUTE to IFA_FLAGS.
///
/// IPv6 addresses always carry IFA_F_NODAD: Ferry's addresses come from its own allocator, unique
/// by construction, so duplicate address detection would only hold them tentative (unusable as a
/// source, dropped as a destination) for a second or more after they were added. With NODAD the
/// kernel never marks them tentative (`ipv6_add_addr`); what remains asynchronous is the local
/// route, which [`crate::Netlink::local_routes`] observes.
pub fn addr_msg(index: u32, addr: IpNetwork, noprefixroute: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if addr.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    m.header.prefix_len = addr.prefix();
    m.header.index = index;
    if addr.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(addr.ip()));
    }
    m.attributes.push(AddressAttribute::Address(addr.ip()));
    let mut flags = AddressFlags::empty();
    if noprefixroute {
        flags |= AddressFlags::Noprefixroute;
    }
    if addr.is_ipv6() {
        flags |= AddressFlags::Nodad;
    }
    if !flags.is_empty() {
        m.attributes.push(AddressAttribute::Flags(flags));
    }
    m
}

/// Read a kernel address message as (ifindex, address/prefix). IFA_LOCAL wins over IFA_ADDRESS
/// (they differ only on point-to-point links, where IFA_ADDRESS is the peer).
pub fn parse_addr(m: &AddressMessage) -> Option<(u32, IpNetwork)> {
    let mut local: Option<IpAddr> = None;
    let mut address: Option<IpAddr> = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    IpNetwork::new(ip, m.header.prefix_len).ok().map(|n| (m.header.index, n))
}

impl Netlink {
    /// Add `addr` (address with prefix length) to `index`. With `noprefixroute` the kernel adds no
    /// connected-subnet route. EEXIST surfaces as `AlreadyExists`.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpNetwork,
        noprefixroute: bool,
    ) -> io::Result<()> {
        self.request(
            Rt::NewAddress(addr_msg(index, addr, noprefixroute)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Addresses on `index` (all links when `None`): (ifindex, address/prefix).
    pub fn addresses(&mut self, index: Option<u32>) -> io::Result<Vec<(u32, IpNetwork)>> {
        let mut q = AddressMessage::default();
        q.header.index = index.unwrap_or(0); // the kernel filters on it under strict checking
        let replies = self.request(Rt::GetAddress(q), NLM_F_DUMP)?;
        let all = replies.iter().filter_map(|r| match r {
            Rt::NewAddress(m) => parse_addr(m),
            _ => None,
        });
        Ok(all.filter(|(i, _)| index.is_none_or(|want| *i == want)).collect())
    }

    /// Delete an address. `Ok(false)` if it was not there.
    pub fn del_address(&mut self, index: u32, addr: IpNetwork) -> io::Result<bool> {
        self.ack_or_absent(Rt::DelAddress(addr_msg(index, addr, false)), 0, &[libc::EADDRNOTAVAIL])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    fn wire(m: &AddressMessage) -> AddressMessage {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        AddressMessage::parse(buf.as_slice()).unwrap()
    }

    #[test]
    fn v4_msg_has_local_address_and_flags() {
        let net: IpNetwork = "10.244.1.5/32".parse().unwrap();
        let m = wire(&addr_msg(3, net, true));
        assert_eq!(
            (m.header.family, m.header.prefix_len, m.header.index),
            (AddressFamily::Inet, 32, 3)
        );
        assert!(m.attributes.contains(&AddressAttribute::Local(net.ip())));
        assert!(m.attributes.contains(&AddressAttribute::Address(net.ip())));
        assert!(m.attributes.contains(&AddressAttribute::Flags(AddressFlags::Noprefixroute)));
        assert_eq!(parse_addr(&m), Some((3, net)));
    }

    #[test]
    fn v6_msg_has_address_and_nodad() {
        let net: IpNetwork = "fd00::5/64".parse().unwrap();
        let m = wire(&addr_msg(7, net, false));
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert!(!m.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(_))));
        assert!(m.attributes.contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
        assert_eq!(parse_addr(&m), Some((7, net)));
        let m = wire(&addr_msg(7, net, true));
        let both = AddressFlags::Nodad | AddressFlags::Noprefixroute;
        assert!(m.attributes.contains(&AddressAttribute::Flags(both)));
        // IPv4 has no DAD: no flag for it.
        let m = wire(&addr_msg(7, "10.0.0.1/24".parse().unwrap(), false));
        assert!(!m.attributes.iter().any(|a| matches!(a, AddressAttribute::Flags(_))));
    }

    #[test]
    fn parse_addr_prefers_local_and_rejects_garbage() {
        let mut m = AddressMessage::default();
        m.header.index = 2;
        m.header.prefix_len = 24;
        m.attributes = vec![
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
        ];
        assert_eq!(parse_addr(&m), Some((2, "10.0.0.1/24".parse().unwrap())));
        m.header.prefix_len = 33;
        assert_eq!(parse_addr(&m), None);
        m.attributes.clear();
        assert_eq!(parse_addr(&m), None);
    }
}
