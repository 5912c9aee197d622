//! Nexthop objects (RTM_NEWNEXTHOP and friends, Linux 5.3+): add/replace/delete/dump by id.
//! `netlink-packet-route` has no nexthop messages, so they are encoded and read here: a
//! `struct nhmsg` header and `NHA_*` attributes.
//!
//! A route that points at a nexthop object (`RTA_NH_ID`, [`crate::Route::nh_id`]) costs the
//! kernel O(1) to insert: its `fib_info` hashes on the nexthop id. Routes that each carry their
//! own gateway on one device all hash to one bucket (the hash mixes the device, not the
//! gateway), so N of them cost O(N²).

use crate::frame::{invalid, Msg};
use crate::socket::{is_errno, Part};
use crate::{Netlink, Nexthop};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const RTM_NEWNEXTHOP: u16 = 104;
pub(crate) const RTM_DELNEXTHOP: u16 = 105;
pub(crate) const RTM_GETNEXTHOP: u16 = 106;

/// Multicast group of nexthop notifications.
pub const RTNLGRP_NEXTHOP: u32 = 32;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
/// The type bits of `nla_type` (the top two are the nested / byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTNH_F_ONLINK: u32 = 4;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const NHMSG_LEN: usize = 8;

/// What [`Netlink::nexthops`] answers when the kernel has no nexthop objects: `EOPNOTSUPP`
/// (no RTM_GETNEXTHOP handler before 5.3) or `EINVAL`. See [`unsupported`].
const UNSUPPORTED: [i32; 2] = [libc::EOPNOTSUPP, libc::EINVAL];

/// True if `e` is the kernel saying it has no nexthop objects.
pub fn unsupported(e: &io::Error) -> bool {
    is_errno(e, &UNSUPPORTED)
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (len.next_multiple_of(4) - len), 0);
}

fn header(family: u8, protocol: u8, flags: u32) -> Vec<u8> {
    let mut out = vec![family, 0, protocol, 0];
    out.extend_from_slice(&flags.to_ne_bytes());
    out
}

/// The RTM_NEWNEXTHOP body for a single-hop `nh` (gateway and/or device; `group` and
/// `blackhole` are read from dumps only and not encoded).
pub fn nexthop_body(nh: &Nexthop) -> Vec<u8> {
    let family = if nh.v6 { AF_INET6 } else { AF_INET };
    let flags = if nh.onlink { RTNH_F_ONLINK } else { 0 };
    let mut out = header(family, nh.protocol, flags);
    attr(&mut out, NHA_ID, &nh.id.to_ne_bytes());
    if let Some(oif) = nh.oif {
        attr(&mut out, NHA_OIF, &oif.to_ne_bytes());
    }
    match nh.gateway {
        Some(IpAddr::V4(g)) => attr(&mut out, NHA_GATEWAY, &g.octets()),
        Some(IpAddr::V6(g)) => attr(&mut out, NHA_GATEWAY, &g.octets()),
        None => {}
    }
    out
}

/// The RTM_DELNEXTHOP body for `id`.
pub fn del_body(id: u32) -> Vec<u8> {
    let mut out = header(0, 0, 0);
    attr(&mut out, NHA_ID, &id.to_ne_bytes());
    out
}

/// The RTM_GETNEXTHOP dump request: every nexthop, any family (strict checking refuses
/// anything but zeros in the header).
pub fn dump_body() -> Vec<u8> {
    header(0, 0, 0)
}

fn u32_of(v: &[u8]) -> io::Result<u32> {
    let b: [u8; 4] =
        v.try_into().map_err(|_| invalid(format!("{}-byte u32 attribute", v.len())))?;
    Ok(u32::from_ne_bytes(b))
}

fn gateway_of(v: &[u8]) -> io::Result<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(v) {
        return Ok(IpAddr::V4(Ipv4Addr::from(b)));
    }
    let b: [u8; 16] = v.try_into().map_err(|_| invalid(format!("{}-byte gateway", v.len())))?;
    Ok(IpAddr::V6(Ipv6Addr::from(b)))
}

/// The attributes of a body after `skip` header bytes: (type, value).
fn attrs(body: &[u8], skip: usize) -> impl Iterator<Item = io::Result<(u16, &[u8])>> {
    let mut off = skip;
    std::iter::from_fn(move || {
        let rest = body.get(off..).filter(|r| !r.is_empty())?;
        let len = rest.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]) as usize);
        let Some(len) = len.filter(|l| (4..=rest.len()).contains(l)) else {
            off = body.len();
            return Some(Err(invalid("malformed nexthop attribute")));
        };
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        off += len.next_multiple_of(4);
        Some(Ok((kind, &rest[4..len])))
    })
}

/// Read a kernel nexthop message body (after the netlink header).
pub fn parse_nexthop(body: &[u8]) -> io::Result<Nexthop> {
    if body.len() < NHMSG_LEN {
        return Err(invalid(format!("nexthop message of {} bytes", body.len())));
    }
    let flags = u32::from_ne_bytes([body[4], body[5], body[6], body[7]]);
    let mut nh = Nexthop {
        id: 0,
        v6: body[0] == AF_INET6,
        gateway: None,
        oif: None,
        protocol: body[2],
        onlink: flags & RTNH_F_ONLINK != 0,
        group: false,
        blackhole: false,
    };
    for a in attrs(body, NHMSG_LEN) {
        let (kind, v) = a?;
        match kind {
            NHA_ID => nh.id = u32_of(v)?,
            NHA_OIF => nh.oif = Some(u32_of(v)?),
            NHA_GATEWAY => nh.gateway = Some(gateway_of(v)?),
            NHA_GROUP => nh.group = true,
            NHA_BLACKHOLE => nh.blackhole = true,
            _ => {}
        }
    }
    if nh.id == 0 {
        return Err(invalid("nexthop without an id"));
    }
    Ok(nh)
}

impl Nexthop {
    /// A single-hop nexthop `id` via `gateway` out of `oif`, tagged with `protocol`.
    pub fn via(id: u32, gateway: IpAddr, oif: u32, protocol: u8) -> Nexthop {
        Nexthop {
            id,
            v6: gateway.is_ipv6(),
            gateway: Some(gateway),
            oif: Some(oif),
            protocol,
            onlink: false,
            group: false,
            blackhole: false,
        }
    }
}

/// The message for adding (`replace` false: NLM_F_EXCL) or replacing `nh`.
pub(crate) fn new_msg(nh: &Nexthop, replace: bool) -> (Msg, u16) {
    let flags = if replace { NLM_F_CREATE | NLM_F_REPLACE } else { NLM_F_CREATE | NLM_F_EXCL };
    (Msg::Raw(RTM_NEWNEXTHOP, nexthop_body(nh)), flags)
}

pub(crate) fn del_msg(id: u32) -> (Msg, u16) {
    (Msg::Raw(RTM_DELNEXTHOP, del_body(id)), 0)
}

impl Netlink {
    /// Add a nexthop object (EEXIST → `AlreadyExists` when the id is taken). The kernel checks
    /// the gateway as for a route: not on a connected subnet of `oif` is an error
    /// (ENETUNREACH / EINVAL, "Nexthop has invalid gateway").
    pub fn add_nexthop(&mut self, nh: &Nexthop) -> io::Result<()> {
        let (m, f) = new_msg(nh, false);
        self.request_msg(m, f).map(drop)
    }

    /// Add, or atomically replace, the nexthop with `nh.id`: routes using it follow at once.
    pub fn replace_nexthop(&mut self, nh: &Nexthop) -> io::Result<()> {
        let (m, f) = new_msg(nh, true);
        self.request_msg(m, f).map(drop)
    }

    /// Delete the nexthop `id`, and with it every route that uses it. `Ok(false)` if absent.
    pub fn del_nexthop(&mut self, id: u32) -> io::Result<bool> {
        let (m, f) = del_msg(id);
        match self.request_msg(m, f) {
            Ok(_) => Ok(true),
            Err(e) if is_errno(&e, &[libc::ENOENT, libc::ESRCH]) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every nexthop object in the namespace, any protocol and family. A kernel without
    /// nexthop objects answers an error for which [`unsupported`] is true.
    pub fn nexthops(&mut self) -> io::Result<Vec<Nexthop>> {
        let parts = self.request_msg(Msg::Raw(RTM_GETNEXTHOP, dump_body()), NLM_F_DUMP)?;
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            if let Part::Raw(RTM_NEWNEXTHOP, body) = p {
                // One nexthop we cannot read must not hide the others.
                if let Ok(nh) = parse_nexthop(&body) {
                    out.push(nh);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nh() -> Nexthop {
        Nexthop::via(0xf0a0_0b7f, "198.18.0.12".parse().unwrap(), 4, 113)
    }

    #[test]
    fn nexthop_body_round_trips() {
        let mut v6 = Nexthop::via(7, "fe80::1".parse().unwrap(), 2, 3);
        v6.onlink = true;
        let mut dev_only = nh();
        dev_only.gateway = None;
        for n in [nh(), v6, dev_only] {
            assert_eq!(parse_nexthop(&nexthop_body(&n)).unwrap(), n);
        }
    }

    #[test]
    fn nexthop_body_is_what_the_kernel_expects() {
        let b = nexthop_body(&nh());
        // nhmsg: AF_INET, scope 0, protocol 113, reserved, flags 0
        assert_eq!(&b[..8], &[2, 0, 113, 0, 0, 0, 0, 0]);
        // NHA_ID (8 bytes), NHA_OIF (8), NHA_GATEWAY (8)
        assert_eq!(b.len(), 8 + 8 + 8 + 8);
        assert_eq!(&b[8..12], &[8, 0, 1, 0]);
        assert_eq!(&b[12..16], &0xf0a0_0b7fu32.to_ne_bytes());
        assert_eq!(&b[16..20], &[8, 0, 5, 0]);
        assert_eq!(&b[24..32], &[8, 0, 6, 0, 198, 18, 0, 12]);
        let d = del_body(42);
        assert_eq!(d.len(), 16);
        assert_eq!(&d[12..16], &42u32.to_ne_bytes());
        assert_eq!(dump_body(), vec![0; 8]);
    }

    #[test]
    fn parse_reads_groups_blackholes_and_skips_unknown_attributes() {
        let mut b = header(0, 4, 0);
        attr(&mut b, NHA_ID, &9u32.to_ne_bytes());
        attr(&mut b, NHA_GROUP, &[1, 0, 0, 0, 0, 0, 0, 0]);
        attr(&mut b, 0x8000 | 30, &[1, 2, 3]); // unknown, nested flag, padded
        let n = parse_nexthop(&b).unwrap();
        assert_eq!((n.id, n.group, n.blackhole, n.protocol, n.gateway), (9, true, false, 4, None));
        let mut b = header(2, 0, 0);
        attr(&mut b, NHA_ID, &10u32.to_ne_bytes());
        attr(&mut b, NHA_BLACKHOLE, &[]);
        assert!(parse_nexthop(&b).unwrap().blackhole);
    }

    #[test]
    fn malformed_nexthops_are_errors_not_panics() {
        assert!(parse_nexthop(&[2, 0, 113]).is_err());
        assert!(parse_nexthop(&header(2, 0, 0)).is_err(), "no id");
        let mut b = nexthop_body(&nh());
        b.truncate(b.len() - 2);
        assert!(parse_nexthop(&b).is_err());
        let mut b = header(2, 0, 0);
        b.extend_from_slice(&[2, 0, 1, 0]); // attribute shorter than its header
        assert!(parse_nexthop(&b).is_err());
        let mut b = header(2, 0, 0);
        attr(&mut b, NHA_ID, &[1, 2]);
        assert!(parse_nexthop(&b).is_err(), "short id");
        let mut b = header(2, 0, 0);
        attr(&mut b, NHA_ID, &1u32.to_ne_bytes());
        attr(&mut b, NHA_GATEWAY, &[1, 2, 3]);
        assert!(parse_nexthop(&b).is_err(), "3-byte gateway");
    }

    #[test]
    fn unsupported_means_eopnotsupp_or_einval() {
        assert!(unsupported(&io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        assert!(unsupported(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::EPERM)));
    }
}
