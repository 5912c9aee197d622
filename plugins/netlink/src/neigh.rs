//! Neighbour entries of one device: ARP entries (`ip neigh`, IPv4 address → MAC) and bridge
//! forwarding entries (`bridge fdb ... self`, MAC → remote IP) as a VXLAN device uses them.
//! Permanent entries tagged with a protocol (`NDA_PROTOCOL`, Linux 5.6+) so their owner can tell
//! them from anyone else's.

use crate::frame::Msg;
use crate::Netlink;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use std::io;
use std::net::Ipv4Addr;

/// Which table an entry lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NeighKind {
    /// ARP: `addr` is the neighbour's IPv4 address, `mac` its link-layer address.
    Arp,
    /// Forwarding database of the device itself (`NTF_SELF`): frames for `mac` go to the
    /// remote `addr` (for VXLAN: the remote VTEP's underlay address).
    Fdb,
}

/// One permanent neighbour entry on device `ifindex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neigh {
    pub kind: NeighKind,
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    /// `NDA_PROTOCOL`; 0 when the kernel did not say.
    pub protocol: u8,
}

fn family(kind: NeighKind) -> AddressFamily {
    match kind {
        NeighKind::Arp => AddressFamily::Inet,
        NeighKind::Fdb => AddressFamily::Bridge,
    }
}

/// The RTM_NEWNEIGH / RTM_DELNEIGH body for `n`.
pub fn neigh_msg(n: &Neigh) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(n.kind);
    m.header.ifindex = n.ifindex;
    m.header.state = NeighbourState::Permanent;
    if n.kind == NeighKind::Fdb {
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(n.addr)));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    if n.protocol != 0 {
        m.attributes.push(NeighbourAttribute::Protocol(RouteProtocol::from(n.protocol)));
    }
    m
}

/// Read a kernel neighbour message; `None` for entries that are not IPv4 + MAC (IPv6
/// neighbours, fdb entries without a remote, incomplete ones).
pub fn parse_neigh(m: &NeighbourMessage) -> Option<Neigh> {
    let kind = match m.header.family {
        AddressFamily::Inet => NeighKind::Arp,
        AddressFamily::Bridge => NeighKind::Fdb,
        _ => return None,
    };
    let (mut addr, mut mac, mut protocol) = (None, None, 0);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                addr = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
            }
            NeighbourAttribute::LinkLayerAddress(b) => {
                mac = <[u8; 6]>::try_from(b.as_slice()).ok();
            }
            NeighbourAttribute::Protocol(p) => protocol = u8::from(*p),
            _ => {}
        }
    }
    Some(Neigh { kind, ifindex: m.header.ifindex, addr: addr?, mac: mac?, protocol })
}

/// The message adding or replacing `n` (`NLM_F_REPLACE`: a changed MAC or remote in place).
pub(crate) fn replace_msg(n: &Neigh) -> (Msg, u16) {
    (Msg::Rt(Rt::NewNeighbour(neigh_msg(n))), NLM_F_CREATE | NLM_F_REPLACE)
}

/// The message deleting `n` (matched on device, address and, for fdb entries, MAC).
pub(crate) fn del_msg(n: &Neigh) -> (Msg, u16) {
    (Msg::Rt(Rt::DelNeighbour(neigh_msg(n))), 0)
}

impl Netlink {
    /// Add or replace a permanent neighbour entry.
    pub fn replace_neigh(&mut self, n: &Neigh) -> io::Result<()> {
        let (m, f) = replace_msg(n);
        self.request_msg(m, f).map(drop)
    }

    /// Delete a neighbour entry. `Ok(false)` if absent.
    pub fn del_neigh(&mut self, n: &Neigh) -> io::Result<bool> {
        let (m, f) = del_msg(n);
        match self.request_msg(m, f) {
            Ok(_) => Ok(true),
            Err(e) if crate::socket::is_errno(&e, &[libc::ENOENT, libc::ESRCH]) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The permanent IPv4 ARP entries, or fdb entries with a remote IPv4 address, of device
    /// `ifindex`.
    pub fn neighbours(&mut self, kind: NeighKind, ifindex: u32) -> io::Result<Vec<Neigh>> {
        // No filter in the request: the kernel's fdb dump reads its attributes as those of a
        // link message (EINVAL for NDA_IFINDEX after an ndmsg), so filter here.
        let mut q = NeighbourMessage::default();
        q.header.family = family(kind);
        let replies = self.request(Rt::GetNeighbour(q), NLM_F_DUMP)?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                Rt::NewNeighbour(m) if m.header.state == NeighbourState::Permanent => {
                    parse_neigh(m)
                }
                _ => None,
            })
            .filter(|n| n.ifindex == ifindex && n.kind == kind)
            .collect())
    }
}
