//! Routes: add/replace/delete/dump/get; `Route` <-> `RouteMessage` conversion.

use crate::frame::invalid;
use crate::{Netlink, Route, Scope};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rt};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `rtm_table` value that defers to the RTA_TABLE attribute (tables above 255).
const RT_TABLE_COMPAT: u8 = 252;

/// The kernel's table of local and broadcast routes (`RT_TABLE_LOCAL`).
pub const RT_TABLE_LOCAL: u32 = 255;

/// The metric the kernel gives an IPv6 route added without one (IP6_RT_PRIO_USER).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn scope_to_nl(s: Scope) -> RouteScope {
    match s {
        Scope::Universe => RouteScope::Universe,
        Scope::Link => RouteScope::Link,
        Scope::Host => RouteScope::Host,
    }
}

/// Kernel scope to ours; the rare `site` (200) reads as universe, `nowhere` (255) as host.
fn scope_from_nl(s: RouteScope) -> Scope {
    match u8::from(s) {
        253 => Scope::Link,
        254 | 255 => Scope::Host,
        _ => Scope::Universe,
    }
}

/// Header table byte plus the RTA_TABLE attribute when the id does not fit in it.
fn set_table(m: &mut RouteMessage, table: u32) {
    if table > 255 {
        m.header.table = RT_TABLE_COMPAT;
        m.attributes.push(RouteAttribute::Table(table));
    } else {
        m.header.table = table as u8;
    }
}

fn addr(ip: IpAddr) -> RouteAddress {
    RouteAddress::from(ip)
}

/// The RTM_NEWROUTE body for `r`. A route on a nexthop object carries `RTA_NH_ID` instead of
/// its gateway and oif.
pub fn route_msg(r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.dst.is_ipv6());
    m.header.destination_prefix_length = r.dst.prefix();
    m.header.protocol = RouteProtocol::from(r.protocol);
    m.header.scope = scope_to_nl(r.scope);
    m.header.kind = RouteType::Unicast;
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    set_table(&mut m, r.table);
    if r.dst.prefix() > 0 {
        m.attributes.push(RouteAttribute::Destination(addr(r.dst.ip())));
    }
    if let Some(id) = r.nh_id {
        m.attributes.push(RouteAttribute::NhId(id));
    } else {
        if let Some(gw) = r.gateway {
            m.attributes.push(RouteAttribute::Gateway(addr(gw)));
        }
        if let Some(oif) = r.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
    }
    if let Some(src) = r.src {
        m.attributes.push(RouteAttribute::PrefSource(addr(src)));
    }
    if let Some(metric) = r.metric {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    m
}

/// The RTM_DELROUTE body for `r`: any scope matches; gateway, oif, protocol, source and metric
/// narrow the match when set. A nexthop id narrows it to routes on that nexthop (the kernel
/// never matches a gateway against a route on a nexthop object).
pub fn route_del_msg(r: &Route) -> RouteMessage {
    let mut m = route_msg(r);
    m.header.scope = RouteScope::NoWhere;
    m.header.flags = RouteFlags::empty();
    m
}

/// The RTM_GETROUTE dump request for one family; `table` 0 means all tables. The kernel filters
/// on table, protocol and type when strict checking is on; [`parse_route`] + the caller filter again.
pub fn dump_msg(v6: bool, table: u32, protocol: Option<u8>) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(v6);
    m.header.kind = RouteType::Unicast;
    m.header.protocol = RouteProtocol::from(protocol.unwrap_or(0));
    set_table(&mut m, table);
    m
}

/// The RTM_GETROUTE body asking which route reaches `dst`.
pub fn get_msg(dst: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst.is_ipv6());
    m.header.destination_prefix_length = if dst.is_ipv6() { 128 } else { 32 };
    m.attributes.push(RouteAttribute::Destination(addr(dst)));
    m
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Read a kernel route message. `Ok(None)` for what [`Route`] cannot express: non-unicast types
/// (local, broadcast, blackhole...), other families, cloned/cache entries. For IPv6 the kernel's
/// default metric 1024 reads back as `None`, so a route added with `metric: None` round-trips.
/// The kernel reports every IPv6 route with scope universe, so give IPv6 routes `Scope::Universe`.
pub fn parse_route(m: &RouteMessage) -> io::Result<Option<Route>> {
    let v6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return Ok(None),
    };
    if m.header.kind != RouteType::Unicast || m.header.flags.contains(RouteFlags::Cloned) {
        return Ok(None);
    }
    let unspecified =
        if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let mut dst_ip = unspecified;
    let mut r = Route::new(IpNetwork::new(unspecified, 0).map_err(invalid)?);
    r.table = u32::from(m.header.table);
    r.protocol = u8::from(m.header.protocol);
    r.scope = scope_from_nl(m.header.scope);
    r.onlink = m.header.flags.contains(RouteFlags::Onlink);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                dst_ip = ip_of(d).ok_or_else(|| invalid(format!("route dst {d:?}")))?
            }
            RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(s) => r.src = ip_of(s),
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::NhId(id) => r.nh_id = Some(*id),
            _ => {}
        }
    }
    if v6 && r.metric == Some(IPV6_DEFAULT_METRIC) {
        r.metric = None;
    }
    let len = m.header.destination_prefix_length;
    r.dst = IpNetwork::new(dst_ip, len)
        .map_err(|e| invalid(format!("route dst {dst_ip}/{len}: {e}")))?;
    Ok(Some(r))
}

impl Netlink {
    /// RTM_NEWROUTE with NLM_F_CREATE|NLM_F_EXCL (EEXIST → `AlreadyExists`).
    pub fn add_route(&mut self, r: &Route) -> io::Result<()> {
        self.request(Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE: atomic add-or-replace.
    pub fn replace_route(&mut self, r: &Route) -> io::Result<()> {
        self.request(Rt::NewRoute(route_msg(r)), NLM_F_CREATE | NLM_F_REPLACE).map(drop)
    }

    /// Delete a route (matched on dst, table, and gateway/oif/protocol when set). `Ok(false)` if absent.
    pub fn del_route(&mut self, r: &Route) -> io::Result<bool> {
        self.ack_or_absent(Rt::DelRoute(route_del_msg(r)), 0, &[libc::ESRCH, libc::ENOENT])
    }

    /// Dump routes of one family (`v6 == false`: IPv4) in `table`, optionally only those with `protocol`.
    /// Only unicast routes (`RTN_UNICAST`) are returned. `table` 0 means every table.
    pub fn routes(&mut self, v6: bool, table: u32, protocol: Option<u8>) -> io::Result<Vec<Route>> {
        let replies = match self.request(Rt::GetRoute(dump_msg(v6, table, protocol)), NLM_F_DUMP) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()), // no such table
            r => r?,
        };
        let mut out = Vec::new();
        for reply in &replies {
            let Rt::NewRoute(m) = reply else { continue };
            let Ok(Some(r)) = parse_route(m) else { continue };
            if r.dst.is_ipv6() == v6
                && (table == 0 || r.table == table)
                && protocol.is_none_or(|p| r.protocol == p)
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The route the kernel would use to reach `dst` (RTM_GETROUTE), for "is this gateway directly
    /// reachable" checks: returns (oif, gateway if any). `Ok(None)` when `dst` is unreachable.
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        let absent = [libc::ENETUNREACH, libc::EHOSTUNREACH];
        let Some(reply) = self.get_one(Rt::GetRoute(get_msg(dst)), &absent)? else {
            return Ok(None);
        };
        let Rt::NewRoute(m) = reply else {
            return Err(invalid(format!("unexpected reply to RTM_GETROUTE: {reply:?}")));
        };
        let mut oif = None;
        let mut gw = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(g) => gw = ip_of(g),
                _ => {}
            }
        }
        let oif = oif.ok_or_else(|| invalid(format!("route to {dst} without output interface")))?;
        Ok(Some((oif, gw)))
    }

    /// The addresses with a `local` route (table local) out of link `oif`: the addresses of
    /// this family the namespace receives on that link. An IPv6 address gets its local route only
    /// when the kernel's DAD work item has run for it (with IFA_F_NODAD right after it was added,
    /// but still asynchronously); until then it is on the link but packets to it are not
    /// received. A dump, filtered by the kernel (strict checking) on table, type and oif: it
    /// answers for this very link (a route lookup would also say "local" for the same address on
    /// another link) and, unlike a lookup, makes the kernel create no cached route (dst).
    pub fn local_routes(&mut self, v6: bool, oif: u32) -> io::Result<Vec<IpAddr>> {
        let mut q = dump_msg(v6, RT_TABLE_LOCAL, None);
        q.header.kind = RouteType::Local;
        q.attributes.push(RouteAttribute::Oif(oif));
        let replies = self.request(Rt::GetRoute(q), NLM_F_DUMP)?;
        let mut out = vec![];
        for reply in &replies {
            let Rt::NewRoute(m) = reply else { continue };
            if m.header.kind != RouteType::Local {
                continue;
            }
            let (mut dst, mut dev) = (None, None);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = ip_of(d),
                    RouteAttribute::Oif(i) => dev = Some(*i),
                    _ => {}
                }
            }
            if let (Some(d), Some(i)) = (dst, dev) {
                if i == oif && d.is_ipv6() == v6 {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    fn wire(m: &RouteMessage) -> RouteMessage {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        RouteMessage::parse(buf.as_slice()).unwrap()
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn full_v4() -> Route {
        Route {
            dst: net("10.244.3.0/24"),
            gateway: Some("192.168.7.3".parse().unwrap()),
            oif: Some(4),
            scope: Scope::Universe,
            protocol: crate::RTPROT_FERRY,
            table: crate::RT_TABLE_MAIN,
            src: Some("192.168.7.2".parse().unwrap()),
            metric: Some(20),
            onlink: true,
            nh_id: None,
        }
    }

    #[test]
    fn route_msg_round_trips_v4_v6_default_and_big_table() {
        let mut pod = Route::new(net("10.244.1.5/32"));
        pod.oif = Some(9);
        pod.scope = Scope::Link;
        pod.protocol = crate::RTPROT_FERRY_POD;
        let mut v6 = Route::new(net("fd00:10:244:3::/64"));
        v6.gateway = Some("fe80::1".parse().unwrap());
        v6.oif = Some(2);
        let mut big = Route::new(net("0.0.0.0/0"));
        big.table = 1000;
        big.gateway = Some("10.0.0.1".parse().unwrap());
        let mut v6_metric = Route::new(net("::/0"));
        v6_metric.metric = Some(512);
        for r in [full_v4(), pod, v6, big, v6_metric, Route::new(net("10.0.0.0/8"))] {
            assert_eq!(parse_route(&wire(&route_msg(&r))).unwrap(), Some(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn nexthop_routes_carry_the_id_instead_of_gateway_and_oif() {
        let mut r = full_v4();
        r.nh_id = Some(0xf0a0_0b7f);
        let m = route_msg(&r);
        assert!(m.attributes.contains(&RouteAttribute::NhId(0xf0a0_0b7f)));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_))));
        let back = parse_route(&wire(&m)).unwrap().unwrap();
        assert_eq!((back.nh_id, back.gateway, back.oif), (Some(0xf0a0_0b7f), None, None));
        // A dump in compat mode shows the nexthop's gateway and oif next to the id: all kept.
        let mut m = route_msg(&r);
        m.attributes.push(RouteAttribute::Gateway(addr("192.168.7.3".parse().unwrap())));
        m.attributes.push(RouteAttribute::Oif(4));
        let back = parse_route(&wire(&m)).unwrap().unwrap();
        assert_eq!(back, r);
        // ... and deleting it by what the dump said matches on the id only.
        let d = route_del_msg(&back);
        assert!(d.attributes.contains(&RouteAttribute::NhId(0xf0a0_0b7f)));
        assert!(!d.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_))));
    }

    #[test]
    fn route_msg_header_fields() {
        let m = route_msg(&full_v4());
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 24);
        assert_eq!(m.header.table, 254);
        assert_eq!(u8::from(m.header.protocol), 113);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(_))));
        let mut r = full_v4();
        r.table = 70000;
        let m = route_msg(&r);
        assert_eq!(m.header.table, RT_TABLE_COMPAT);
        assert!(m.attributes.contains(&RouteAttribute::Table(70000)));
        // a default route carries no RTA_DST
        assert!(!route_msg(&Route::new(net("0.0.0.0/0")))
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
    }

    #[test]
    fn del_msg_matches_any_scope() {
        let m = route_del_msg(&full_v4());
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert!(m.header.flags.is_empty());
        assert_eq!(u8::from(m.header.protocol), 113);
    }

    #[test]
    fn parse_route_skips_non_unicast_and_cloned() {
        let mut m = route_msg(&full_v4());
        m.header.kind = RouteType::Local;
        assert_eq!(parse_route(&m).unwrap(), None);
        let mut m = route_msg(&full_v4());
        m.header.flags = RouteFlags::Cloned;
        assert_eq!(parse_route(&m).unwrap(), None);
        let mut m = route_msg(&full_v4());
        m.header.address_family = AddressFamily::Mpls;
        assert_eq!(parse_route(&m).unwrap(), None);
    }

    #[test]
    fn parse_route_kernel_shapes() {
        // RTA_TABLE overrides the header byte; v6 default metric reads as None; onlink with linkdown
        let mut m = route_msg(&Route::new(net("fd00::/8")));
        m.header.table = 0;
        m.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        m.attributes.push(RouteAttribute::Table(254));
        m.attributes.push(RouteAttribute::Priority(1024));
        let r = parse_route(&wire(&m)).unwrap().unwrap();
        assert_eq!((r.table, r.metric, r.onlink), (254, None, true));
        // a malformed prefix length is an error, not a panic
        let mut m = route_msg(&Route::new(net("10.0.0.0/8")));
        m.header.destination_prefix_length = 40;
        assert!(parse_route(&m).is_err());
    }

    #[test]
    fn scopes_map_both_ways() {
        for s in [Scope::Universe, Scope::Link, Scope::Host] {
            assert_eq!(scope_from_nl(scope_to_nl(s)), s);
        }
        assert_eq!(scope_from_nl(RouteScope::Site), Scope::Universe);
        assert_eq!(scope_from_nl(RouteScope::NoWhere), Scope::Host);
    }

    #[test]
    fn dump_and_get_msgs() {
        let m = dump_msg(true, 254, Some(113));
        assert_eq!(
            (m.header.address_family, m.header.table, u8::from(m.header.protocol)),
            (AddressFamily::Inet6, 254, 113)
        );
        assert_eq!(m.header.destination_prefix_length, 0);
        let m = get_msg("10.1.2.3".parse().unwrap());
        assert_eq!(m.header.destination_prefix_length, 32);
        assert!(m.attributes.contains(&RouteAttribute::Destination(RouteAddress::Inet(
            "10.1.2.3".parse().unwrap()
        ))));
    }
}
