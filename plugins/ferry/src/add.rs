//! ADD: veth pair, pod IP, host /32 route, pod default route. Rolls back everything it made when a
//! step fails, so a failed ADD leaves neither a link nor an allocation behind.

use crate::conf::{FerryConf, DEFAULT_MTU};
use crate::{delegate, names, nl_err, open_netns};
use ferry_cni::error::{CniError, Result, NETLINK};
use ferry_cni::result::{Interface, IpConfig, Route as CniRoute};
use ferry_cni::skel::Request;
use ferry_cni::{CniResult, Command};
use ferry_ipam::{Owner, Pool, Range, Store};
use ferry_netlink::batch::Op;
use ferry_netlink::{sysctl, Link, Netlink, Route, Scope, RTPROT_FERRY_POD};
use ipnetwork::IpNetwork;
use std::fs::File;
use std::io::ErrorKind;
use std::net::IpAddr;

/// The address plan for one attachment.
struct Plan {
    ip: IpAddr,
    prefix: u8,
    gateway: IpAddr,
    mtu: u32,
    routes: Vec<CniRoute>,
    dns: ferry_cni::result::Dns,
}

pub fn add(req: &Request) -> Result<CniResult> {
    let conf = FerryConf::parse(&req.conf)?;
    crate::timing::mark("parse config");
    let prev = req.conf.prev_result()?;
    let netns_path = req.args.netns.clone().unwrap_or_default();
    let (cid, ifname) = (req.args.container_id.as_str(), req.args.ifname.as_str());
    let owner = Owner { container_id: cid.to_string(), ifname: ifname.to_string() };
    let host_name = names::host_veth(cid, ifname);
    let alias = names::alias(&conf.network, cid, ifname);
    // Everything that can be checked before changing anything is checked first.
    let node = if conf.ipam_type.is_none() { Some(conf.node_subnet()?) } else { None };
    let ns = open_netns(&netns_path)?;
    crate::timing::mark("subnet + open netns");
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    let mut pod =
        Netlink::in_netns(&ns).map_err(nl_err(format!("open netlink socket in {netns_path}")))?;
    crate::timing::mark("netlink sockets");
    let pod_link = pod.link_by_name(ifname).map_err(nl_err("look up pod interface"))?;
    let host_link = host.link_by_name(&host_name).map_err(nl_err("look up host interface"))?;
    crate::timing::mark("existing-link lookups");
    let ours = |l: &Link| l.alias.as_deref() == Some(alias.as_str());
    let readd = match (&pod_link, &host_link) {
        (Some(_), Some(h)) if ours(h) => true,
        (Some(_), _) => {
            return Err(CniError::env(format!(
                "CNI_IFNAME {ifname:?} already exists in network namespace {netns_path}: pick another name or DEL the attachment that made it"
            )))
        }
        (None, Some(h)) if ours(h) => {
            // Half-made by an ADD that died: start over.
            host.del_link(h.index).map_err(nl_err(format!("delete stale {host_name}")))?;
            false
        }
        (None, Some(h)) => {
            return Err(CniError::new(
                NETLINK,
                format!("host interface {host_name} exists and belongs to someone else (alias {:?})", h.alias),
            ))
        }
        (None, None) => false,
    };

    // IP allocation: in-process (fast path) or delegated.
    let plan = match &conf.ipam_type {
        None => {
            let node = node.expect("resolved above");
            let range = Range {
                start: conf.range_start,
                end: conf.range_end,
                exclude: conf.exclude.clone(),
                ..Range::default()
            };
            let pool = Pool::new(node.subnet, range)?;
            let requested = requested_ip(req, &pool)?;
            let mut store = Store::open(&conf.data_dir, &conf.network)?;
            let ip = store.allocate(&pool, &owner, requested)?;
            Plan {
                ip,
                prefix: node.subnet.prefix(),
                gateway: pool.gateway.unwrap_or(ip),
                mtu: node.mtu.unwrap_or(DEFAULT_MTU),
                routes: conf.routes.clone().unwrap_or_else(|| vec![default_route(ip)]),
                dns: conf.dns.clone(),
            }
        }
        Some(t) => {
            let r = delegate::add(req, t)?;
            match plan_from_ipam(&conf, r) {
                Ok(p) => p,
                Err(e) => {
                    let _ = delegate::exec(req, t, Command::Del);
                    return Err(e);
                }
            }
        }
    };

    crate::timing::mark("ipam allocate");
    match setup(&mut host, &mut pod, &ns, &host_name, ifname, &alias, &plan, readd) {
        Ok((h, p)) => Ok(result(prev, &plan, &h, &p, &netns_path)),
        Err(e) => {
            if !readd {
                let _ = host.del_link_by_name(&host_name);
                match &conf.ipam_type {
                    None => {
                        if let Ok(mut s) = Store::open(&conf.data_dir, &conf.network) {
                            let _ = s.release(&owner);
                        }
                    }
                    Some(t) => {
                        let _ = delegate::exec(req, t, Command::Del);
                    }
                }
            }
            Err(e)
        }
    }
}

fn default_route(ip: IpAddr) -> CniRoute {
    let dst = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
    CniRoute::new(dst.parse().expect("valid"), None)
}

/// The requested address for `pool`'s family (`runtimeConfig.ips`, `args.cni.ips`, CNI_ARGS `IP=`),
/// read exactly as ferry-ipam reads it.
fn requested_ip(req: &Request, pool: &Pool) -> Result<Option<IpAddr>> {
    Ok(ferry_cni::requested::requested_ips(&req.conf, &req.args)?
        .into_iter()
        .find(|ip| ip.is_ipv4() == pool.is_ipv4()))
}

fn plan_from_ipam(conf: &FerryConf, r: CniResult) -> Result<Plan> {
    let ipc = r.ips.iter().find(|i| i.address.is_ipv4()).or(r.ips.first()).ok_or_else(|| {
        CniError::new(ferry_cni::error::IPAM, "IPAM plugin returned no IP address")
    })?;
    let ip = ipc.address.ip();
    let gateway = match ipc.gateway {
        Some(g) => g,
        None => first_host(ipc.address).filter(|g| *g != ip).ok_or_else(|| {
            CniError::new(
                ferry_cni::error::IPAM,
                format!("IPAM gave {} with no usable gateway", ipc.address),
            )
        })?,
    };
    let routes = conf.routes.clone().unwrap_or_else(|| {
        if r.routes.is_empty() {
            vec![default_route(ip)]
        } else {
            r.routes.clone()
        }
    });
    let dns = if conf.dns.is_empty() { r.dns.clone() } else { conf.dns.clone() };
    Ok(Plan {
        ip,
        prefix: ipc.address.prefix(),
        gateway,
        mtu: conf.mtu.unwrap_or(DEFAULT_MTU),
        routes,
        dns,
    })
}

fn first_host(n: IpNetwork) -> Option<IpAddr> {
    match n {
        IpNetwork::V4(v) => Some(IpAddr::V4(u32::from(v.network()).checked_add(1)?.into())),
        IpNetwork::V6(v) => Some(IpAddr::V6(u128::from(v.network()).checked_add(1)?.into())),
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// Run a batch; "already exists" counts as done (a repeated ADD re-applies the same state).
fn apply(nl: &mut Netlink, ops: &[(Op, String)]) -> Result<()> {
    let only: Vec<Op> = ops.iter().map(|(o, _)| o.clone()).collect();
    let results = nl.batch(&only).map_err(nl_err("netlink batch"))?;
    for (r, (_, what)) in results.into_iter().zip(ops) {
        match r {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(nl_err(what)(e)),
            _ => {}
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn setup(
    host: &mut Netlink,
    pod: &mut Netlink,
    ns: &File,
    host_name: &str,
    ifname: &str,
    alias: &str,
    p: &Plan,
    readd: bool,
) -> Result<(Link, Link)> {
    let mut created = None;
    if !readd {
        created = host
            .create_veth(host_name, ifname, ns, Some(p.mtu), Some(alias))
            .map_err(nl_err(format!("create veth {host_name} <-> {ifname}")))?;
        crate::timing::mark("create veth (+alias)");
    }
    let missing = |what: &str| CniError::new(NETLINK, format!("{what} vanished during ADD"));
    let h = match created {
        Some(l) => l,
        None => host
            .link_by_name(host_name)
            .map_err(nl_err("look up host veth"))?
            .ok_or_else(|| missing(host_name))?,
    };
    let gw_host = IpNetwork::new(p.gateway, host_prefix(p.gateway)).expect("valid prefix");
    let ip_host = IpNetwork::new(p.ip, host_prefix(p.ip)).expect("valid prefix");
    let mut to_pod = Route::new(ip_host);
    to_pod.oif = Some(h.index);
    to_pod.scope = Scope::Link;
    to_pod.protocol = RTPROT_FERRY_POD;
    // Host side in one round trip: the gateway /32 on the host end, the /32 route to the pod.
    apply(
        host,
        &[
            (Op::AddAddress(h.index, gw_host, true), format!("add {gw_host} to {host_name}")),
            (Op::AddRoute(&to_pod), format!("add host route {ip_host} dev {host_name}")),
        ],
    )?;
    crate::timing::mark("host addr + route");

    let pl = pod
        .link_by_name(ifname)
        .map_err(nl_err("look up pod veth"))?
        .ok_or_else(|| missing(ifname))?;
    let addr = IpNetwork::new(p.ip, p.prefix)
        .map_err(|e| CniError::config(format!("pod address: {e}")))?;
    let mut to_gw = Route::new(gw_host);
    to_gw.oif = Some(pl.index);
    to_gw.scope = Scope::Link;
    let mut routes = p.routes.clone();
    if !routes.iter().any(|r| r.dst.prefix() == 0) {
        // Without a default route the node subnet still goes via the gateway (no connected route).
        routes.push(CniRoute::new(
            IpNetwork::new(addr.network(), addr.prefix()).expect("valid"),
            None,
        ));
    }
    let pod_routes: Vec<Route> = routes
        .iter()
        .map(|r| {
            let mut rt = Route::new(r.dst);
            rt.gateway = Some(r.gw.unwrap_or(p.gateway));
            rt.oif = Some(pl.index);
            rt.metric = r.priority;
            rt.onlink = true;
            rt
        })
        .collect();
    // Pod side in one round trip, in order: link up, address, gateway route, then the routes.
    let mut ops = vec![
        (Op::SetUp(pl.index), format!("set {ifname} up")),
        (Op::AddAddress(pl.index, addr, true), format!("add {addr} to {ifname}")),
        (Op::AddRoute(&to_gw), format!("add pod route {gw_host} dev {ifname}")),
    ];
    for rt in &pod_routes {
        ops.push((Op::AddRoute(rt), format!("add pod route {} via {:?}", rt.dst, rt.gateway)));
    }
    apply(pod, &ops)?;
    crate::timing::mark("pod link/addr/routes");
    sysctls(ns, host_name, ifname, p.ip.is_ipv4())?;
    crate::timing::mark("sysctls");
    Ok((h, pl))
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
