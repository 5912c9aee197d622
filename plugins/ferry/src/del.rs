//! DEL: release the IP and delete the host end of the veth (which takes the pod end and the host
//! /32 route with it). Never fails for what is already gone: a missing netns, an empty CNI_NETNS,
//! a container never added, a repeated DEL.

use crate::conf::FerryConf;
use crate::{ipam, names, nl_err};
use ferry_cni::error::Result;
use ferry_cni::skel::Request;
use ferry_netlink::Netlink;

pub fn del(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    let (cid, ifname) = (req.args.container_id.as_str(), req.args.ifname.as_str());
    // IP first: DEL must release it even when every network object is long gone.
    ipam::choose(req, &conf).del()?;
    // The host end has a deterministic name, so the pod's namespace need not be entered at all.
    let name = names::host_veth(cid, ifname);
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    if let Some(l) = host.link_by_name(&name).map_err(nl_err(format!("look up {name}")))? {
        let alias = names::alias(&conf.network, cid, ifname);
        if l.alias.is_none() || l.alias.as_deref() == Some(alias.as_str()) {
            host.del_link(l.index).map_err(nl_err(format!("delete {name}")))?;
        }
    }
    Ok(())
}
