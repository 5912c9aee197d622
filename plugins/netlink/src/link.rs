//! Links: veth creation, lookup, up, delete; message builders and the `Link` parser.

use crate::frame::invalid;
use crate::{Link, Netlink};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::RouteNetlinkMessage as Rt;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

/// The RTM_NEWLINK body for a veth pair: `host` here (UP), `peer` created in the namespace `peer_ns_fd`.
/// The peer is never set UP here: the kernel opens it before the pair is linked (ENOTCONN).
pub fn veth_msg(host: &str, peer: &str, peer_ns_fd: RawFd, mtu: Option<u32>) -> LinkMessage {
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(peer.to_string()));
    p.attributes.push(LinkAttribute::NetNsFd(peer_ns_fd));
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::IfName(host.to_string()));
    if let Some(mtu) = mtu {
        p.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    m
}

/// The settings of a VXLAN device that carries IPv4 over an IPv4 underlay with static
/// forwarding entries (no multicast group, no learning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Underlay source address of the encapsulated packets.
    pub local: Ipv4Addr,
    /// The underlay device.
    pub uplink: u32,
    pub learning: bool,
}

/// The RTM_NEWLINK body creating VXLAN device `name` (left down).
pub fn vxlan_msg(name: &str, v: &Vxlan, mtu: u32, mac: [u8; 6]) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes.push(LinkAttribute::Mtu(mtu));
    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::Id(v.vni),
            InfoVxlan::Local(v.local),
            InfoVxlan::Link(v.uplink),
            InfoVxlan::Port(v.port),
            InfoVxlan::Learning(v.learning),
        ])),
    ]));
    m
}

/// The VXLAN settings of a link message, if it is a VXLAN device.
pub fn parse_vxlan(m: &LinkMessage) -> Option<Vxlan> {
    let infos = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    })?;
    let mut v = Vxlan { vni: 0, port: 0, local: Ipv4Addr::UNSPECIFIED, uplink: 0, learning: true };
    for d in data {
        match d {
            InfoVxlan::Id(x) => v.vni = *x,
            InfoVxlan::Port(x) => v.port = *x,
            InfoVxlan::Local(x) => v.local = *x,
            InfoVxlan::Link(x) => v.uplink = *x,
            InfoVxlan::Learning(x) => v.learning = *x,
            _ => {}
        }
    }
    Some(v)
}

/// RTM_SETLINK body changing only IFLA_IFALIAS of `index`.
pub fn alias_msg(index: u32, alias: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    m
}

/// A link selected by index (`index != 0`) or else by name, with no other attributes.
pub fn select_msg(index: u32, name: Option<&str>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(name) = name {
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
    }
    m
}

/// RTM_SETLINK body setting IFF_UP on `index`.
pub fn up_msg(index: u32) -> LinkMessage {
    let mut m = select_msg(index, None);
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m
}

/// RTM_SETLINK body turning off the kernel's IPv6 address generation on `index`
/// (`addrgenmode none`): no link-local address, so no DAD, router solicitations or MLD reports
/// from it, and no `fe80::/64` route. Effective only before the link has carrier (the kernel
/// makes the link-local address when it does). The kernel refuses this attribute when creating
/// a link, and answers EAFNOSUPPORT when the link has no IPv6 (disabled).
pub fn no_addrgen_msg(index: u32) -> LinkMessage {
    let mut m = select_msg(index, None);
    m.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
        AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
    ])]));
    m
}

/// Read a kernel link message into a [`Link`].
pub fn parse_link(m: &LinkMessage) -> io::Result<Link> {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        alias: None,
        peer_index: None,
        oper_up: false,
        qdisc: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::Link(i) if *i != 0 => l.peer_index = Some(*i),
            LinkAttribute::OperState(s) => l.oper_up = *s == State::Up,
            LinkAttribute::Qdisc(q) => l.qdisc = Some(q.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if l.index == 0 || l.name.is_empty() {
        return Err(invalid(format!("link message without index or name: index {}", l.index)));
    }
    Ok(l)
}

fn one_link(reply: Option<Rt>) -> io::Result<Option<Link>> {
    match reply {
        None => Ok(None),
        Some(Rt::NewLink(m)) => parse_link(&m).map(Some),
        Some(other) => Err(invalid(format!("unexpected reply to RTM_GETLINK: {other:?}"))),
    }
}

impl Netlink {
    /// Create a veth pair in one RTM_NEWLINK: `host` in this handle's namespace (set UP),
    /// `peer` created directly inside `peer_ns` (left DOWN: bring it up from inside).
    /// `mtu` applies to both ends. `alias`, if given, is set as IFLA_IFALIAS on the host end.
    /// EEXIST surfaces as `io::ErrorKind::AlreadyExists`.
    ///
    /// Returns the host end as the kernel reports it when that comes for free: the create carries
    /// NLM_F_ECHO, and kernels since 6.3 echo the new link back in the same round trip. `Ok(None)`
    /// when there was no echo (older kernels): look it up then.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: &File,
        mtu: Option<u32>,
        alias: Option<&str>,
    ) -> io::Result<Option<Link>> {
        let msg = veth_msg(host, peer, peer_ns.as_raw_fd(), mtu);
        let replies = self.request(Rt::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO)?;
        let mut link = replies.iter().rev().find_map(|r| match r {
            Rt::NewLink(l) => parse_link(l).ok().filter(|l| l.name == host),
            _ => None,
        });
        // The kernel ignores IFLA_IFALIAS in a create (only do_setlink applies it): set it after,
        // selecting the link by name to save a lookup.
        let Some(alias) = alias else { return Ok(link) };
        let mut m = select_msg(0, Some(host));
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        if let Err(e) = self.request(Rt::SetLink(m), 0) {
            let _ = self.del_link_by_name(host); // takes the peer with it
            return Err(e);
        }
        if let Some(l) = link.as_mut() {
            l.alias = Some(alias.to_string());
        }
        Ok(link)
    }

    /// Create VXLAN device `name` (EEXIST → `AlreadyExists`), left down.
    pub fn create_vxlan(
        &mut self,
        name: &str,
        v: &Vxlan,
        mtu: u32,
        mac: [u8; 6],
    ) -> io::Result<()> {
        self.request(Rt::NewLink(vxlan_msg(name, v, mtu, mac)), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Link `name` and, if it is a VXLAN device, its settings.
    pub fn vxlan_by_name(&mut self, name: &str) -> io::Result<Option<(Link, Option<Vxlan>)>> {
        let reply = self.get_one(Rt::GetLink(select_msg(0, Some(name))), &[libc::ENODEV])?;
        match reply {
            None => Ok(None),
            Some(Rt::NewLink(m)) => Ok(Some((parse_link(&m)?, parse_vxlan(&m)))),
            Some(other) => Err(invalid(format!("unexpected reply to RTM_GETLINK: {other:?}"))),
        }
    }

    /// Set the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut m = select_msg(index, None);
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(Rt::SetLink(m), 0).map(drop)
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let reply = self.get_one(Rt::GetLink(select_msg(0, Some(name))), &[libc::ENODEV])?;
        one_link(reply)
    }

    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let reply = self.get_one(Rt::GetLink(select_msg(index, None)), &[libc::ENODEV])?;
        one_link(reply)
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(Rt::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        let links = replies.iter().filter_map(|r| match r {
            Rt::NewLink(m) => parse_link(m).ok(),
            _ => None,
        });
        Ok(links.collect())
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.request(Rt::SetLink(up_msg(index)), 0).map(drop)
    }

    /// Set IFLA_IFALIAS on `index` (an empty string clears it).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        self.request(Rt::SetLink(alias_msg(index, alias)), 0).map(drop)
    }

    /// Delete a link. `Ok(false)` if it did not exist.
    pub fn del_link(&mut self, index: u32) -> io::Result<bool> {
        self.ack_or_absent(Rt::DelLink(select_msg(index, None)), 0, &[libc::ENODEV])
    }

    /// Delete a link by name. `Ok(false)` if it did not exist.
    pub fn del_link_by_name(&mut self, name: &str) -> io::Result<bool> {
        self.ack_or_absent(Rt::DelLink(select_msg(0, Some(name))), 0, &[libc::ENODEV])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    fn roundtrip(m: &LinkMessage) -> LinkMessage {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        LinkMessage::parse(buf.as_slice()).unwrap()
    }

    #[test]
    fn veth_msg_has_host_up_and_peer_in_netns_down() {
        let m = roundtrip(&veth_msg("vethab", "eth0", 7, Some(1400)));
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(m.attributes.contains(&LinkAttribute::IfName("vethab".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1400)));
        let infos = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i.clone()),
            _ => None,
        });
        let infos = infos.expect("linkinfo");
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
            _ => None,
        });
        let peer = peer.expect("peer");
        assert!(peer.header.flags.is_empty() && peer.header.change_mask.is_empty());
        assert!(peer.attributes.contains(&LinkAttribute::IfName("eth0".into())));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(7)));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1400)));
    }

    #[test]
    fn veth_msg_without_mtu_has_none() {
        let m = veth_msg("a", "b", 3, None);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Mtu(_) | LinkAttribute::IfAlias(_))));
        let m = alias_msg(9, "pod/x");
        assert_eq!(m.header.index, 9);
        assert_eq!(m.attributes, vec![LinkAttribute::IfAlias("pod/x".into())]);
    }

    #[test]
    fn up_msg_sets_only_up() {
        let m = up_msg(42);
        assert_eq!(m.header.index, 42);
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(m.attributes.is_empty());
    }

    #[test]
    fn no_addrgen_msg_sets_only_the_inet6_mode() {
        let m = roundtrip(&no_addrgen_msg(42));
        assert_eq!(m.header.index, 42);
        assert_eq!(m.header.change_mask, LinkFlags::empty());
        assert_eq!(
            m.attributes,
            vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                AfSpecInet6::AddrGenMode(In6AddrGenMode::None)
            ])])]
        );
    }

    #[test]
    fn parse_link_reads_all_fields() {
        let mut m = LinkMessage::default();
        m.header.index = 5;
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        m.attributes = vec![
            LinkAttribute::IfName("veth1".into()),
            LinkAttribute::Address(vec![0xaa, 0xbb, 0xcc, 0x01, 0x02, 0x03]),
            LinkAttribute::Mtu(1450),
            LinkAttribute::IfAlias("ns/pod".into()),
            LinkAttribute::Link(2),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::Qdisc("noqueue".into()),
        ];
        let l = parse_link(&roundtrip(&m)).unwrap();
        assert_eq!(
            l,
            Link {
                index: 5,
                name: "veth1".into(),
                mac: Some([0xaa, 0xbb, 0xcc, 1, 2, 3]),
                mtu: 1450,
                up: true,
                kind: Some("veth".into()),
                alias: Some("ns/pod".into()),
                peer_index: Some(2),
                oper_up: true,
                qdisc: Some("noqueue".into()),
            }
        );
        assert!(l.can_send());
        for (oper, qdisc, up) in [
            (State::Up, "noop", true),
            (State::LowerLayerDown, "noqueue", true),
            (State::Up, "noqueue", false),
        ] {
            let mut m = m.clone();
            m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
            for a in m.attributes.iter_mut() {
                match a {
                    LinkAttribute::OperState(s) => *s = oper,
                    LinkAttribute::Qdisc(q) => *q = qdisc.into(),
                    _ => {}
                }
            }
            assert!(!parse_link(&m).unwrap().can_send(), "{oper:?} {qdisc} up={up}");
        }
    }

    #[test]
    fn parse_link_minimal_and_invalid() {
        let mut m = select_msg(1, Some("lo"));
        m.attributes.push(LinkAttribute::Address(vec![0; 6]));
        let l = parse_link(&m).unwrap();
        assert!(!l.up && l.kind.is_none() && l.peer_index.is_none() && l.alias.is_none());
        assert_eq!(l.mac, Some([0; 6]));
        let mut m = select_msg(3, Some("ip6tnl0"));
        m.attributes.push(LinkAttribute::Address(vec![0; 16]));
        assert_eq!(parse_link(&m).unwrap().mac, None);
        assert!(parse_link(&select_msg(0, Some("x"))).is_err());
        assert!(parse_link(&select_msg(4, None)).is_err());
    }
}
