//! DEL: delete the host end of the veth (which takes the pod end and the host /32 route with it)
//! and release the IP. Every step is tried whatever the others did; DEL then reports what failed
//! (a corrupt IPAM state file must not leave the link behind, nor a netlink failure the IP).
//! Never fails for what is already gone: a missing netns, an empty CNI_NETNS, a container never
//! added, a repeated DEL.

use crate::conf::FerryConf;
use crate::{ipam, log, names, nl_err, Failures};
use ferry_cni::error::Result;
use ferry_cni::skel::Request;
use ferry_netlink::Netlink;

pub fn del(req: &Request) -> Result<()> {
    let mut failures = Failures::default();
    // The host end first: with it gone the pod is unreachable before its address is freed for
    // reuse. It needs nothing from the config but the network name.
    failures.note(remove_host_end(req));
    log::step("del-host-end");
    let conf = failures.note(FerryConf::parse(&req.conf));
    if let Some(conf) = conf {
        failures.note(ipam::choose(req, &conf).del());
        log::step("del-release");
    }
    failures.finish()
}

/// The host end has a deterministic name, so the pod's namespace need not be entered at all. A
/// link of that name tagged for another attachment is left alone.
fn remove_host_end(req: &Request) -> Result<()> {
    let (cid, ifname) = (req.args.container_id.as_str(), req.args.ifname.as_str());
    let name = names::host_veth(cid, ifname);
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    let Some(l) = host.link_by_name(&name).map_err(nl_err(format!("look up {name}")))? else {
        return Ok(());
    };
    let ours = match l.alias.as_deref() {
        None => true,
        Some(a) => names::is_ours(a, &req.conf.name, cid, ifname),
    };
    if ours {
        host.del_link(l.index).map_err(nl_err(format!("delete {name}")))?;
    }
    Ok(())
}
