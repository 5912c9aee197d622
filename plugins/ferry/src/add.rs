//! ADD: veth pair, one pod address per family the node has (IPv4, IPv6 or both), per family a
//! host /32 or /128 route to the pod and the pod's routes via that family's gateway. Rolls back
//! everything it made when a step fails, so a failed ADD leaves neither a link nor an allocation
//! behind. Returns only once the pair can carry traffic: both ends operationally up with their
//! queueing discipline attached, every IPv6 address usable (no DAD: IFA_F_NODAD) and locally
//! routed, so the pod can send from each of its addresses the moment ADD returns.

use crate::conf::FerryConf;
use crate::ipam::{self, Addr, Plan};
use crate::{log, names, nl_err, open_netns};
use ferry_cni::error::{CniError, Result, NETLINK};
use ferry_cni::result::{Interface, IpConfig, Route as CniRoute};
use ferry_cni::skel::Request;
use ferry_cni::CniResult;
use ferry_netlink::batch::Op;
use ferry_netlink::ready::{self, End};
use ferry_netlink::{sysctl, Link, Netlink, Route, Scope, RTPROT_FERRY_POD, RT_TABLE_MAIN};
use ipnetwork::IpNetwork;
use std::fs::File;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::time::Duration;

/// How long ADD waits for the kernel to make the pair usable (linkwatch, IPv6 local routes) before
/// it returns anyway with a warning in the log. Normally no wait at all; under heavy load a few ms.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The attachment's names: where the pod end goes and what the host end is called and tagged.
struct Names<'a> {
    netns: String,
    network: &'a str,
    cid: &'a str,
    ifname: &'a str,
    host: String,
    alias: String,
}

/// The two namespaces ADD works in: the node's (this process's) and the pod's.
struct Sides {
    host: Netlink,
    pod: Netlink,
    ns: File,
}

pub fn add(req: &Request) -> Result<CniResult> {
    let conf = FerryConf::parse(&req.conf)?;
    crate::timing::mark("parse config");
    let prev = req.conf.prev_result()?;
    let (cid, ifname) = (req.args.container_id.as_str(), req.args.ifname.as_str());
    let names = Names {
        netns: req.args.netns.clone().unwrap_or_default(),
        network: &conf.network,
        cid,
        ifname,
        host: names::host_veth(cid, ifname),
        alias: names::alias(&conf.network, cid, ifname),
    };
    let mut ipam = ipam::choose(req, &conf);
    // Everything that can be checked before changing anything is checked first.
    ipam.prepare()?;
    let mut sides = open_sides(&names)?;
    let readd = existing(&mut sides, &names)?;
    // (Each route is of a family the plan has an address of: see `ipam::routes_for`.)
    let plan = ipam.add()?;
    crate::timing::mark("ipam allocate");
    log::step("add-ipam");
    match setup(&mut sides, &names, &plan, readd) {
        Ok((h, p)) => Ok(result(prev, &plan, &h, &p, &names.netns)),
        Err(e) => {
            if !readd {
                log::event(log::Level::Warn, &format!("rolling back: {e}"));
                let _ = sides.host.del_link_by_name(&names.host);
                let _ = ipam.del();
            }
            Err(e)
        }
    }
}

fn open_sides(n: &Names) -> Result<Sides> {
    let ns = open_netns(&n.netns)?;
    crate::timing::mark("subnet + open netns");
    let host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    let pod =
        Netlink::in_netns(&ns).map_err(nl_err(format!("open netlink socket in {}", n.netns)))?;
    crate::timing::mark("netlink sockets");
    Ok(Sides { host, pod, ns })
}

/// What a previous ADD of this attachment left: `true` for a complete pair of ours (a repeated
/// ADD re-applies the addresses and routes). A half-made pair of ours is removed; anything
/// else in the way is an error.
fn existing(s: &mut Sides, n: &Names) -> Result<bool> {
    let pod_link = s.pod.link_by_name(n.ifname).map_err(nl_err("look up pod interface"))?;
    let host_link = s.host.link_by_name(&n.host).map_err(nl_err("look up host interface"))?;
    crate::timing::mark("existing-link lookups");
    let ours = |l: &Link| {
        l.alias.as_deref().is_some_and(|a| names::is_ours(a, n.network, n.cid, n.ifname))
    };
    match (&pod_link, &host_link) {
        (Some(_), Some(h)) if ours(h) => Ok(true),
        (Some(_), _) => Err(CniError::env(format!(
            "CNI_IFNAME {:?} already exists in network namespace {}: pick another name or DEL the attachment that made it",
            n.ifname, n.netns
        ))),
        (None, Some(h)) if ours(h) => {
            // Half-made by an ADD that died: start over.
            s.host.del_link(h.index).map_err(nl_err(format!("delete stale {}", n.host)))?;
            Ok(false)
        }
        (None, Some(h)) => Err(CniError::new(
            NETLINK,
            format!("host interface {} exists and belongs to someone else (alias {:?})", n.host, h.alias),
        )),
        (None, None) => Ok(false),
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// Run a batch. "Already exists" counts as done (a repeated ADD re-applies the same state) only
/// for what is provably this attachment's: an address (it exists on this very link) or a route
/// of the same destination, protocol and gateway out of the same link. A destination already
/// routed out of another link is an error naming that link, never a silent success.
fn apply(nl: &mut Netlink, ops: &[(Op, String)]) -> Result<()> {
    let only: Vec<Op> = ops.iter().map(|(o, _)| o.clone()).collect();
    let results = nl.batch(&only).map_err(nl_err("netlink batch"))?;
    let mut existing: Vec<(&Route, &str)> = vec![];
    for (r, (op, what)) in results.into_iter().zip(ops) {
        match (r, op) {
            (Ok(()), _) => {}
            (Err(e), Op::AddRoute(rt)) if e.kind() == ErrorKind::AlreadyExists => {
                existing.push((rt, what))
            }
            (Err(e), _) if e.kind() == ErrorKind::AlreadyExists => {}
            // The link has no IPv6 (disabled): no addresses to generate either.
            (Err(e), Op::NoAddrGen(_)) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            (Err(e), _) => return Err(nl_err(what)(e)),
        }
    }
    for v6 in [false, true] {
        let of: Vec<(&Route, &str)> =
            existing.iter().filter(|(r, _)| r.dst.is_ipv6() == v6).copied().collect();
        if !of.is_empty() {
            confirm_ours(nl, v6, &of)?;
        }
    }
    Ok(())
}

/// Every route in `existing` (all of one family) is present exactly as wanted; else the error
/// names the link that holds its destination. One dump, only when something already existed.
fn confirm_ours(nl: &mut Netlink, v6: bool, existing: &[(&Route, &str)]) -> Result<()> {
    let table = nl.routes(v6, RT_TABLE_MAIN, None).map_err(nl_err("list routes"))?;
    for (want, what) in existing {
        let same = |x: &&Route| {
            x.dst == want.dst
                && x.oif == want.oif
                && x.gateway == want.gateway
                && x.protocol == want.protocol
        };
        if table.iter().any(|x| same(&x)) {
            continue;
        }
        let holder = table.iter().find(|x| x.dst == want.dst).and_then(|x| x.oif);
        let name = holder.and_then(|i| nl.link_by_index(i).ok().flatten()).map(|l| l.name);
        return Err(CniError::new(
            NETLINK,
            format!(
                "{what}: {} is already routed via another link ({}), not this attachment's",
                want.dst,
                name.as_deref().unwrap_or("unknown")
            ),
        )
        .with_details(
            "refusing to take it over. In a pod: a second attachment must not share the first's \
             gateway or routes (see \"The ferry plugin\" in README.md). On the node: a stale \
             attachment still routes this address; DEL or GC it",
        ));
    }
    Ok(())
}

/// Wire the pair: create it (unless re-adding), then the sysctls, the host side, the pod side;
/// then wait until it can carry traffic.
fn setup(s: &mut Sides, n: &Names, p: &Plan, readd: bool) -> Result<(Link, Link)> {
    let h = host_end(s, n, p, readd)?;
    // Before the pod end comes up (carrier): the kernel's link-local address on the pod end of
    // an IPv6 attachment, made once linkwatch sees carrier, then skips DAD too.
    sysctls(&s.ns, n.ifname, p)?;
    crate::timing::mark("sysctls");
    host_side(&mut s.host, &h, n, p)?;
    crate::timing::mark("host addr + route");
    log::step("add-host");
    let pl = pod_side(&mut s.pod, n, p)?;
    crate::timing::mark("pod link/addr/routes");
    log::step("add-pod");
    wait_usable(s, &h, &pl, p)?;
    crate::timing::mark("wait usable");
    Ok((h, pl))
}

/// Wait (bounded, on netlink notifications: see `ferry_netlink::ready`) until both ends can send
/// and every IPv6 address (the pod's in the pod, its gateway on the host) is locally routed.
/// Past [`READY_TIMEOUT`] the attachment is complete but the kernel has not caught up: ADD
/// succeeds with a warning in the log rather than failing a pod over the kernel's backlog.
fn wait_usable(s: &mut Sides, h: &Link, pl: &Link, p: &Plan) -> Result<()> {
    let v6 = p.addr(false);
    let mut ends = [
        End {
            nl: &mut s.host,
            ns: None,
            link: h.index,
            local: v6.map(|a| a.gateway).into_iter().collect(),
        },
        End {
            nl: &mut s.pod,
            ns: Some(&s.ns),
            link: pl.index,
            local: v6.map(|a| a.ip).into_iter().collect(),
        },
    ];
    let ready = ready::wait_ready(&mut ends, READY_TIMEOUT)
        .map_err(nl_err(format!("wait for {} and {} to come up", h.name, pl.name)))?;
    if !ready {
        log::event(
            log::Level::Warn,
            &format!(
                "{} / {} not usable after {READY_TIMEOUT:?} (kernel linkwatch or IPv6 address \
                 setup still pending); returning anyway",
                h.name, pl.name
            ),
        );
    }
    Ok(())
}

fn vanished(what: &str) -> CniError {
    CniError::new(NETLINK, format!("{what} vanished during ADD"))
}

/// The host end: created with the pod end in the pod's namespace (echoed back, no lookup), or
/// the existing one on a repeated ADD.
fn host_end(s: &mut Sides, n: &Names, p: &Plan, readd: bool) -> Result<Link> {
    let created = match readd {
        true => None,
        false => {
            let made = s
                .host
                .create_veth(&n.host, n.ifname, &s.ns, Some(p.mtu), Some(&n.alias))
                .map_err(nl_err(format!("create veth {} <-> {}", n.host, n.ifname)))?;
            crate::timing::mark("create veth (+alias)");
            log::step("add-veth");
            made
        }
    };
    match created {
        Some(l) => Ok(l),
        None => s
            .host
            .link_by_name(&n.host)
            .map_err(nl_err("look up host veth"))?
            .ok_or_else(|| vanished(&n.host)),
    }
}

/// The gateway as the /32 (/128) the host end carries and the pod routes to on-link.
fn gw_host(a: &Addr) -> IpNetwork {
    IpNetwork::new(a.gateway, host_prefix(a.gateway)).expect("valid prefix")
}

/// A link-local address on every host end of an IPv6 attachment, usable at once (IFA_F_NODAD).
/// The node resolves a pod's IPv6 address for traffic it forwards (from another pod, another
/// node) with a neighbour solicitation, and the kernel sends one only from a non-tentative
/// link-local address of the outgoing link (`ndisc_send_ns`). The kernel's own link-local
/// appears only after linkwatch has seen carrier and then goes through DAD for a second or more:
/// without this one, forwarded IPv6 traffic to a new pod waits that long. Link-local addresses
/// are per link, so every host end can carry the same one.
const HOST_LINK_LOCAL: &str = "fe80::1/64";

/// Host side in one round trip: no kernel-made IPv6 addresses on the host end (it needs none:
/// [`HOST_LINK_LOCAL`] serves neighbour discovery; see [`no_addrgen`]), then per family the gateway
/// /32 or /128 on the host end, the /32 or /128 route to the pod (and, for IPv6,
/// [`HOST_LINK_LOCAL`]).
fn host_side(nl: &mut Netlink, h: &Link, n: &Names, p: &Plan) -> Result<()> {
    let host_name = &n.host;
    let to_pod: Vec<Route> = p
        .addrs
        .iter()
        .map(|a| {
            let mut r = Route::new(IpNetwork::new(a.ip, host_prefix(a.ip)).expect("valid prefix"));
            r.oif = Some(h.index);
            r.scope = Scope::Link;
            r.protocol = RTPROT_FERRY_POD;
            r
        })
        .collect();
    let mut ops = vec![no_addrgen(h.index, host_name)];
    if p.addr(false).is_some() {
        let ll: IpNetwork = HOST_LINK_LOCAL.parse().expect("valid");
        ops.push((Op::AddAddress(h.index, ll, true), format!("add {ll} to {host_name}")));
    }
    for (a, r) in p.addrs.iter().zip(&to_pod) {
        let gw = gw_host(a);
        ops.push((Op::AddAddress(h.index, gw, true), format!("add {gw} to {host_name}")));
        ops.push((Op::AddRoute(r), format!("add host route {} dev {host_name}", r.dst)));
    }
    apply(nl, &ops)
}

/// The kernel makes no IPv6 addresses on this veth end (`addrgenmode none`; best effort: a link
/// without IPv6 has none to make). Set before the pair has carrier. Every kernel-made link-local
/// address costs a DAD run, router solicitations, MLD reports and two IPv6 routes in its
/// namespace, and the kernel walks the whole IPv6 routing table on each link event there, so on
/// a node with hundreds of pods every ADD and DEL grew dearer. The host end never needs one;
/// an IPv4-only pod neither (its IPv6 stays up: `::1`, sockets bound to `::`).
fn no_addrgen<'a>(index: u32, name: &str) -> (Op<'a>, String) {
    (Op::NoAddrGen(index), format!("turn off IPv6 address generation on {name}"))
}

/// Pod side in one round trip, in order: for an IPv4-only attachment no kernel-made IPv6
/// address ([`no_addrgen`]), link up, then per family the address and the gateway route, then
/// the routes.
fn pod_side(nl: &mut Netlink, n: &Names, p: &Plan) -> Result<Link> {
    let ifname = n.ifname;
    let pl = nl
        .link_by_name(ifname)
        .map_err(nl_err("look up pod veth"))?
        .ok_or_else(|| vanished(ifname))?;
    let mut addrs = vec![];
    let mut to_gw = vec![];
    for a in &p.addrs {
        let addr = IpNetwork::new(a.ip, a.prefix)
            .map_err(|e| CniError::config(format!("pod address: {e}")))?;
        let mut r = Route::new(gw_host(a));
        r.oif = Some(pl.index);
        r.scope = Scope::Link;
        addrs.push(addr);
        to_gw.push(r);
    }
    let pod_routes = pod_routes(p, pl.index);
    let mut ops = vec![];
    if p.addr(false).is_none() {
        ops.push(no_addrgen(pl.index, ifname));
    }
    ops.push((Op::SetUp(pl.index), format!("set {ifname} up")));
    for (addr, r) in addrs.iter().zip(&to_gw) {
        ops.push((Op::AddAddress(pl.index, *addr, true), format!("add {addr} to {ifname}")));
        ops.push((Op::AddRoute(r), format!("add pod route {} dev {ifname}", r.dst)));
    }
    for rt in &pod_routes {
        ops.push((Op::AddRoute(rt), format!("add pod route {} via {:?}", rt.dst, rt.gateway)));
    }
    apply(nl, &ops)?;
    Ok(pl)
}

/// The plan's routes, each via its family's gateway, on-link. A family without a default route
/// still reaches its node subnet via the gateway (the pod has no connected route).
fn pod_routes(p: &Plan, oif: u32) -> Vec<Route> {
    let mut routes = p.routes.clone();
    for a in &p.addrs {
        let v4 = a.ip.is_ipv4();
        if !routes.iter().any(|r| r.dst.prefix() == 0 && r.dst.is_ipv4() == v4) {
            let subnet = IpNetwork::new(a.ip, a.prefix).expect("valid");
            let subnet = IpNetwork::new(subnet.network(), a.prefix).expect("valid");
            routes.push(CniRoute::new(subnet, None));
        }
    }
    routes
        .iter()
        .filter_map(|r| {
            let gw = p.addr(r.dst.is_ipv4())?.gateway;
            let mut rt = Route::new(r.dst);
            rt.gateway = Some(r.gw.unwrap_or(gw));
            rt.oif = Some(oif);
            rt.metric = r.priority;
            rt.onlink = true;
            Some(rt)
        })
        .collect()
}

/// Forwarding on in this (the node's) namespace for each family of the plan; for an IPv6
/// attachment DAD off on the pod end, for the kernel's link-local address there (best effort:
/// IPv6 may be disabled; Ferry's own IPv6 addresses skip DAD anyway, and the host end has no
/// kernel-made address: [`no_addrgen`]). A key with `/` is a path, so interface names with dots
/// work.
fn sysctls(ns: &File, ifname: &str, p: &Plan) -> Result<()> {
    for a in &p.addrs {
        let fwd =
            if a.ip.is_ipv4() { "net.ipv4.ip_forward" } else { "net.ipv6.conf.all.forwarding" };
        sysctl::set(fwd, "1")
            .map_err(|e| CniError::io(format!("enable forwarding ({fwd}): {e}")))?;
    }
    if p.addr(false).is_some() {
        let _ = ferry_netlink::netns::with_netns(ns, || {
            sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")
        });
    }
    Ok(())
}

fn result(prev: Option<CniResult>, p: &Plan, h: &Link, pl: &Link, netns: &str) -> CniResult {
    let mut r = prev.unwrap_or_default();
    let base = r.interfaces.len();
    let mac = |l: &Link| l.mac.map(ferry_netlink::mac_to_string);
    r.interfaces.push(Interface {
        name: h.name.clone(),
        mac: mac(h),
        mtu: Some(h.mtu),
        ..Default::default()
    });
    r.interfaces.push(Interface {
        name: pl.name.clone(),
        mac: mac(pl),
        mtu: Some(pl.mtu),
        sandbox: Some(netns.to_string()),
        ..Default::default()
    });
    for a in &p.addrs {
        r.ips.push(IpConfig {
            address: IpNetwork::new(a.ip, a.prefix).expect("validated"),
            gateway: Some(a.gateway),
            interface: Some(base + 1),
        });
    }
    r.routes.extend(p.routes.iter().cloned());
    if r.dns.is_empty() {
        r.dns = p.dns.clone();
    }
    r
}
