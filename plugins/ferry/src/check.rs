//! CHECK: verify what ADD made against `prevResult`, in the pod and on the host.

use crate::conf::FerryConf;
use crate::{delegate, names, nl_err, open_netns};
use ferry_cni::error::{CniError, Result, CHECK_FAILED};
use ferry_cni::skel::Request;
use ferry_cni::Command;
use ferry_ipam::{Owner, Store};
use ferry_netlink::{Netlink, Route};
use ipnetwork::IpNetwork;

fn fail(msg: String) -> CniError {
    CniError::new(CHECK_FAILED, msg)
}

pub fn check(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    let prev = req
        .conf
        .prev_result()?
        .ok_or_else(|| CniError::config("CHECK needs prevResult (the ADD result) in the config"))?;
    let netns_path = req.args.netns.clone().unwrap_or_default();
    let (cid, ifname) = (req.args.container_id.as_str(), req.args.ifname.as_str());

    // The pod interface as ADD reported it.
    let (idx, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| fail(format!("prevResult lists no interface {ifname:?} in a sandbox")))?;
    if iface.sandbox.as_deref() != Some(netns_path.as_str()) {
        return Err(fail(format!(
            "interface {ifname} was added in {:?}, not in CNI_NETNS {netns_path:?}",
            iface.sandbox.as_deref().unwrap_or("")
        )));
    }
    let ipc = prev
        .ips
        .iter()
        .find(|i| i.interface == Some(idx))
        .ok_or_else(|| fail(format!("prevResult has no IP for {ifname}")))?;
    let ip = ipc.address.ip();
    let gw = ipc.gateway.ok_or_else(|| fail("prevResult IP has no gateway".into()))?;

    // IPAM still holds the address.
    match &conf.ipam_type {
        None => {
            let owner = Owner { container_id: cid.to_string(), ifname: ifname.to_string() };
            let held = Store::open(&conf.data_dir, &conf.network)?.lookup(&owner)?;
            if !held.contains(&ip) {
                return Err(fail(format!(
                    "IPAM holds no allocation of {ip} for {cid}/{ifname} (holds {held:?})"
                )));
            }
        }
        Some(t) => {
            delegate::exec(req, t, Command::Check)?;
        }
    }

    // Pod side.
    let ns = open_netns(&netns_path)?;
    let mut pod =
        Netlink::in_netns(&ns).map_err(nl_err(format!("open netlink socket in {netns_path}")))?;
    let pl = pod
        .link_by_name(ifname)
        .map_err(nl_err("look up pod interface"))?
        .ok_or_else(|| fail(format!("interface {ifname} is missing from {netns_path}")))?;
    if pl.kind.as_deref() != Some("veth") {
        return Err(fail(format!("interface {ifname} is a {:?}, not a veth", pl.kind)));
    }
    if !pl.up {
        return Err(fail(format!("interface {ifname} is down")));
    }
    if let Some(mac) = &iface.mac {
        let have = pl.mac.map(ferry_netlink::mac_to_string).unwrap_or_default();
        if !have.eq_ignore_ascii_case(mac) {
            return Err(fail(format!("interface {ifname} has MAC {have}, ADD reported {mac}")));
        }
    }
    let addrs = pod.addresses(Some(pl.index)).map_err(nl_err("list pod addresses"))?;
    if !addrs.iter().any(|(_, a)| *a == ipc.address) {
        return Err(fail(format!("address {} is missing from {ifname}", ipc.address)));
    }
    let v6 = ip.is_ipv6();
    let pod_routes =
        pod.routes(v6, ferry_netlink::RT_TABLE_MAIN, None).map_err(nl_err("list pod routes"))?;
    let gw_net = IpNetwork::new(gw, if gw.is_ipv6() { 128 } else { 32 })
        .expect("host prefix fits the family");
    let has = |f: &dyn Fn(&Route) -> bool| pod_routes.iter().any(f);
    if !has(&|r| r.dst == gw_net && r.oif == Some(pl.index)) {
        return Err(fail(format!("route to gateway {gw} dev {ifname} is missing in the pod")));
    }
    for r in prev.routes.iter().filter(|r| r.dst.is_ipv6() == v6) {
        let want_gw = r.gw.unwrap_or(gw);
        if !has(&|x| x.dst == r.dst && x.gateway == Some(want_gw)) {
            return Err(fail(format!("route {} via {want_gw} is missing in the pod", r.dst)));
        }
    }

    // Host side.
    let host_name = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none())
        .map(|i| i.name.clone())
        .unwrap_or_else(|| names::host_veth(cid, ifname));
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    let hl = host
        .link_by_name(&host_name)
        .map_err(nl_err("look up host interface"))?
        .ok_or_else(|| fail(format!("host interface {host_name} is missing")))?;
    if !hl.up {
        return Err(fail(format!("host interface {host_name} is down")));
    }
    let ip_net = IpNetwork::new(ip, if v6 { 128 } else { 32 }).expect("valid");
    // Only Ferry's pod routes (proto 114): a node may hold thousands of peer routes.
    let host_routes = host
        .routes(v6, ferry_netlink::RT_TABLE_MAIN, Some(ferry_netlink::RTPROT_FERRY_POD))
        .map_err(nl_err("list host routes"))?;
    if !host_routes.iter().any(|r| r.dst == ip_net && r.oif == Some(hl.index)) {
        return Err(fail(format!("host route {ip_net} dev {host_name} is missing")));
    }
    let host_addrs = host.addresses(Some(hl.index)).map_err(nl_err("list host addresses"))?;
    if !host_addrs.iter().any(|(_, a)| *a == gw_net) {
        return Err(fail(format!("gateway address {gw_net} is missing from {host_name}")));
    }
    Ok(())
}
