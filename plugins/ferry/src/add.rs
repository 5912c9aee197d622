//! ADD: veth pair, pod IP, host /32 route, pod default route. Rolls back everything it made when a
//! step fails, so a failed ADD leaves neither a link nor an allocation behind.

use crate::conf::FerryConf;
use crate::ipam::{self, Plan};
use crate::{log, names, nl_err, open_netns};
use ferry_cni::error::{CniError, Result, NETLINK};
use ferry_cni::result::{Interface, IpConfig, Route as CniRoute};
use ferry_cni::skel::Request;
use ferry_cni::CniResult;
use ferry_netlink::batch::Op;
use ferry_netlink::{sysctl, Link, Netlink, Route, Scope, RTPROT_FERRY_POD, RT_TABLE_MAIN};
use ipnetwork::IpNetwork;
use std::fs::File;
use std::io::ErrorKind;
use std::net::IpAddr;

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
    let mut plan = ipam.add()?;
    // Routes of the other address family cannot go via this attachment's gateway (CHECK skips
    // them the same way).
    plan.routes.retain(|r| r.dst.is_ipv4() == plan.ip.is_ipv4());
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
            (Err(e), _) => return Err(nl_err(what)(e)),
        }
    }
    match existing.first() {
        None => Ok(()),
        Some((r, _)) => confirm_ours(nl, r.dst.is_ipv6(), &existing),
    }
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

/// Wire the pair: create it (unless re-adding), then the host side, the pod side, the sysctls.
fn setup(s: &mut Sides, n: &Names, p: &Plan, readd: bool) -> Result<(Link, Link)> {
    let h = host_end(s, n, p, readd)?;
    let gw_host = IpNetwork::new(p.gateway, host_prefix(p.gateway)).expect("valid prefix");
    host_side(&mut s.host, &h, n, p, gw_host)?;
    crate::timing::mark("host addr + route");
    log::step("add-host");
    let pl = pod_side(&mut s.pod, n, p, gw_host)?;
    crate::timing::mark("pod link/addr/routes");
    log::step("add-pod");
    sysctls(&s.ns, &n.host, n.ifname, p.ip.is_ipv4())?;
    crate::timing::mark("sysctls");
    Ok((h, pl))
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

/// Host side in one round trip: the gateway /32 on the host end, the /32 route to the pod.
fn host_side(nl: &mut Netlink, h: &Link, n: &Names, p: &Plan, gw_host: IpNetwork) -> Result<()> {
    let ip_host = IpNetwork::new(p.ip, host_prefix(p.ip)).expect("valid prefix");
    let mut to_pod = Route::new(ip_host);
    to_pod.oif = Some(h.index);
    to_pod.scope = Scope::Link;
    to_pod.protocol = RTPROT_FERRY_POD;
    let host_name = &n.host;
    apply(
        nl,
        &[
            (Op::AddAddress(h.index, gw_host, true), format!("add {gw_host} to {host_name}")),
            (Op::AddRoute(&to_pod), format!("add host route {ip_host} dev {host_name}")),
        ],
    )
}

/// Pod side in one round trip, in order: link up, address, gateway route, then the routes.
fn pod_side(nl: &mut Netlink, n: &Names, p: &Plan, gw_host: IpNetwork) -> Result<Link> {
    let ifname = n.ifname;
    let pl = nl
        .link_by_name(ifname)
        .map_err(nl_err("look up pod veth"))?
        .ok_or_else(|| vanished(ifname))?;
    let addr = IpNetwork::new(p.ip, p.prefix)
        .map_err(|e| CniError::config(format!("pod address: {e}")))?;
    let mut to_gw = Route::new(gw_host);
    to_gw.oif = Some(pl.index);
    to_gw.scope = Scope::Link;
    let pod_routes = pod_routes(p, addr, pl.index);
    let mut ops = vec![
        (Op::SetUp(pl.index), format!("set {ifname} up")),
        (Op::AddAddress(pl.index, addr, true), format!("add {addr} to {ifname}")),
        (Op::AddRoute(&to_gw), format!("add pod route {gw_host} dev {ifname}")),
    ];
    for rt in &pod_routes {
        ops.push((Op::AddRoute(rt), format!("add pod route {} via {:?}", rt.dst, rt.gateway)));
    }
    apply(nl, &ops)?;
    Ok(pl)
}

/// The plan's routes via the gateway, on-link. Without a default route the node subnet still goes
/// via the gateway (the pod has no connected route).
fn pod_routes(p: &Plan, addr: IpNetwork, oif: u32) -> Vec<Route> {
    let mut routes = p.routes.clone();
    if !routes.iter().any(|r| r.dst.prefix() == 0) {
        let subnet = IpNetwork::new(addr.network(), addr.prefix()).expect("valid");
        routes.push(CniRoute::new(subnet, None));
    }
    routes
        .iter()
        .map(|r| {
            let mut rt = Route::new(r.dst);
            rt.gateway = Some(r.gw.unwrap_or(p.gateway));
            rt.oif = Some(oif);
            rt.metric = r.priority;
            rt.onlink = true;
            rt
        })
        .collect()
}

/// Forwarding on in this (the node's) namespace; IPv6 DAD off on both veth ends (best effort:
/// IPv6 may be disabled). Keys with `/` are paths, so interface names with dots work.
fn sysctls(ns: &File, host_name: &str, ifname: &str, v4: bool) -> Result<()> {
    let fwd = if v4 { "net.ipv4.ip_forward" } else { "net.ipv6.conf.all.forwarding" };
    sysctl::set(fwd, "1").map_err(|e| CniError::io(format!("enable forwarding ({fwd}): {e}")))?;
    let _ = sysctl::set(&format!("net/ipv6/conf/{host_name}/accept_dad"), "0");
    let _ = ferry_netlink::netns::with_netns(ns, || {
        sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")
    });
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
    r.ips.push(IpConfig {
        address: IpNetwork::new(p.ip, p.prefix).expect("validated"),
        gateway: Some(p.gateway),
        interface: Some(base + 1),
    });
    r.routes.extend(p.routes.iter().cloned());
    if r.dns.is_empty() {
        r.dns = p.dns.clone();
    }
    r
}
