//! GC (spec 1.1.0): release every IP and host-side object of this network that belongs to an
//! attachment not in the valid list, trying every step and reporting what failed. STATUS: not
//! ready (code 50) while the node subnet is unknown or the pool is full.

use crate::conf::FerryConf;
use crate::{ipam, names, nl_err, Failures};
use ferry_cni::error::Result;
use ferry_cni::skel::Request;
use ferry_ipam::Owner;
use ferry_netlink::Netlink;
use std::collections::BTreeSet;

pub fn gc(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    let keep: BTreeSet<Owner> = req
        .conf
        .valid_attachments()?
        .into_iter()
        .map(|a| Owner::new(a.container_id, a.ifname))
        .collect();
    let mut failures = Failures::default();
    // Deterministic host-end names of the allocations GC releases.
    let released: BTreeSet<String> = failures
        .note(ipam::choose(req, &conf).gc(&keep))
        .unwrap_or_default()
        .iter()
        .map(|o| names::host_veth(&o.container_id, &o.ifname))
        .collect();
    let swept = sweep_host_ends(&conf.network, &keep, &released, &mut failures);
    failures.note(swept);
    failures.finish()
}

/// One pass over the host's links. A host end is stale when its alias names this network and an
/// attachment not in `keep`, or when it has no alias and is the deterministic host end of an
/// allocation just released (an ADD killed between creating and tagging its veth).
fn sweep_host_ends(
    network: &str,
    keep: &BTreeSet<Owner>,
    released: &BTreeSet<String>,
    failures: &mut Failures,
) -> Result<()> {
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    for l in host.links().map_err(nl_err("list links"))? {
        if !l.name.starts_with(names::HOST_PREFIX) {
            continue;
        }
        let stale = match l.alias.as_deref() {
            None => released.contains(&l.name),
            Some(a) => names::parse_alias(a).is_some_and(|(net, cid, ifname)| {
                net == network && !keep.contains(&Owner::new(cid, ifname))
            }),
        };
        if stale {
            failures.note(host.del_link(l.index).map_err(nl_err(format!("delete {}", l.name))));
        }
    }
    Ok(())
}

pub fn status(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    let mut ipam = ipam::choose(req, &conf);
    ipam.status()
}
