//! CHECK: verify what ADD made against `prevResult`, in the pod and on the host.

use crate::conf::FerryConf;
use crate::{ipam, names, nl_err, open_netns};
use ferry_cni::error::{CniError, Result, CHECK_FAILED};
use ferry_cni::result::Route as CniRoute;
use ferry_cni::skel::Request;
use ferry_cni::CniResult;
use ferry_netlink::{Link, Netlink, Route};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

fn fail(msg: String) -> CniError {
    CniError::new(CHECK_FAILED, msg)
}

/// What ADD reported for this attachment.
struct Reported<'a> {
    netns: &'a str,
    ifname: &'a str,
    mac: Option<&'a str>,
    /// Each address of the pod interface (one per family) with its gateway.
    addrs: Vec<(IpNetwork, IpAddr)>,
    routes: &'a [CniRoute],
    /// The host end's name (the deterministic one when the result lists none).
    host: String,
}

fn host_net(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv6() { 128 } else { 32 }).expect("host prefix fits")
}

pub fn check(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    let prev = req
        .conf
        .prev_result()?
        .ok_or_else(|| CniError::config("CHECK needs prevResult (the ADD result) in the config"))?;
    let r = reported(req, &prev)?;
    // IPAM still holds exactly these addresses.
    let ips: Vec<IpAddr> = r.addrs.iter().map(|(a, _)| a.ip()).collect();
    ipam::choose(req, &conf).check(&ips)?;
    check_pod(&r)?;
    check_host(&r)
}

/// The pod interface, its addresses and their gateways as ADD reported them, in CNI_NETNS.
fn reported<'a>(req: &'a Request, prev: &'a CniResult) -> Result<Reported<'a>> {
    let netns = req.args.netns.as_deref().unwrap_or_default();
    let ifname = req.args.ifname.as_str();
    let (idx, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| fail(format!("prevResult lists no interface {ifname:?} in a sandbox")))?;
    if iface.sandbox.as_deref() != Some(netns) {
        return Err(fail(format!(
            "interface {ifname} was added in {:?}, not in CNI_NETNS {netns:?}",
            iface.sandbox.as_deref().unwrap_or("")
        )));
    }
    let mut addrs = vec![];
    for ipc in prev.ips.iter().filter(|i| i.interface == Some(idx)) {
        let gw = ipc
            .gateway
            .ok_or_else(|| fail(format!("prevResult IP {} has no gateway", ipc.address)))?;
        if addrs.iter().any(|(a, _): &(IpNetwork, IpAddr)| a.is_ipv4() == ipc.address.is_ipv4()) {
            return Err(fail(format!("prevResult has two IPs of one family for {ifname}")));
        }
        addrs.push((ipc.address, gw));
    }
    if addrs.is_empty() {
        return Err(fail(format!("prevResult has no IP for {ifname}")));
    }
    let host = match prev.interfaces.iter().find(|i| i.sandbox.is_none()) {
        Some(i) => i.name.clone(),
        None => names::host_veth(&req.args.container_id, ifname),
    };
    let mac = iface.mac.as_deref();
    Ok(Reported { netns, ifname, mac, addrs, routes: prev.routes.as_slice(), host })
}

/// Per family: the address on the pod interface, the on-link route to the gateway, and each
/// reported route of that family via it.
fn check_pod(r: &Reported) -> Result<()> {
    let ns = open_netns(r.netns)?;
    let mut pod =
        Netlink::in_netns(&ns).map_err(nl_err(format!("open netlink socket in {}", r.netns)))?;
    let pl = pod_link(&mut pod, r)?;
    let addrs = pod.addresses(Some(pl.index)).map_err(nl_err("list pod addresses"))?;
    for (address, gw) in &r.addrs {
        if !addrs.iter().any(|(_, a)| a == address) {
            return Err(fail(format!("address {address} is missing from {}", r.ifname)));
        }
        let v6 = address.is_ipv6();
        let routes = pod
            .routes(v6, ferry_netlink::RT_TABLE_MAIN, None)
            .map_err(nl_err("list pod routes"))?;
        let has = |f: &dyn Fn(&Route) -> bool| routes.iter().any(f);
        let gw_host = host_net(*gw);
        if !has(&|x| x.dst == gw_host && x.oif == Some(pl.index)) {
            return Err(fail(format!(
                "route to gateway {gw} dev {} is missing in the pod",
                r.ifname
            )));
        }
        for want in r.routes.iter().filter(|x| x.dst.is_ipv6() == v6) {
            let via = want.gw.unwrap_or(*gw);
            if !has(&|x| x.dst == want.dst && x.gateway == Some(via)) {
                return Err(fail(format!("route {} via {via} is missing in the pod", want.dst)));
            }
        }
    }
    Ok(())
}
/// The pod end: present, a veth, up, with the MAC ADD reported.
fn pod_link(pod: &mut Netlink, r: &Reported) -> Result<Link> {
    let ifname = r.ifname;
    let pl = pod
        .link_by_name(ifname)
        .map_err(nl_err("look up pod interface"))?
        .ok_or_else(|| fail(format!("interface {ifname} is missing from {}", r.netns)))?;
    if pl.kind.as_deref() != Some("veth") {
        return Err(fail(format!("interface {ifname} is a {:?}, not a veth", pl.kind)));
    }
    if !pl.up {
        return Err(fail(format!("interface {ifname} is down")));
    }
    if let Some(mac) = r.mac {
        let have = pl.mac.map(ferry_netlink::mac_to_string).unwrap_or_default();
        if !have.eq_ignore_ascii_case(mac) {
            return Err(fail(format!("interface {ifname} has MAC {have}, ADD reported {mac}")));
        }
    }
    Ok(pl)
}

/// The host end: present, up, and per family holding the gateway address, with the /32 (/128)
/// route to the pod.
fn check_host(r: &Reported) -> Result<()> {
    let host_name = &r.host;
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    let hl = host
        .link_by_name(host_name)
        .map_err(nl_err("look up host interface"))?
        .ok_or_else(|| fail(format!("host interface {host_name} is missing")))?;
    if !hl.up {
        return Err(fail(format!("host interface {host_name} is down")));
    }
    let host_addrs = host.addresses(Some(hl.index)).map_err(nl_err("list host addresses"))?;
    for (address, gw) in &r.addrs {
        let ip_net = host_net(address.ip());
        // Only Ferry's pod routes (proto 114): a node may hold thousands of peer routes.
        let host_routes = host
            .routes(
                address.is_ipv6(),
                ferry_netlink::RT_TABLE_MAIN,
                Some(ferry_netlink::RTPROT_FERRY_POD),
            )
            .map_err(nl_err("list host routes"))?;
        if !host_routes.iter().any(|x| x.dst == ip_net && x.oif == Some(hl.index)) {
            return Err(fail(format!("host route {ip_net} dev {host_name} is missing")));
        }
        let gw_host = host_net(*gw);
        if !host_addrs.iter().any(|(_, a)| *a == gw_host) {
            return Err(fail(format!("gateway address {gw_host} is missing from {host_name}")));
        }
    }
    Ok(())
}
