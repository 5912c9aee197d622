//! GC (spec 1.1.0): release every IP and host-side object of this network that belongs to an
//! attachment not in the valid list, trying every step and reporting what failed. STATUS: not
//! ready (code 50) while the node subnet is unknown or the pool is full.

use crate::conf::FerryConf;
use crate::names::Tag;
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

/// One pass over the host's links. A host end of this network is stale when its alias names an
/// attachment not in `keep` (compared by the alias's fixed-size hash, so no id is too long to
/// match), or when it is the deterministic host end of an allocation just released (also when
/// untagged: an ADD killed before tagging). Another network's host ends are never touched.
fn sweep_host_ends(
    network: &str,
    keep: &BTreeSet<Owner>,
    released: &BTreeSet<String>,
    failures: &mut Failures,
) -> Result<()> {
    let hashes: BTreeSet<String> =
        keep.iter().map(|o| names::attachment_hash(network, &o.container_id, &o.ifname)).collect();
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    for l in host.links().map_err(nl_err("list links"))? {
        if !l.name.starts_with(names::HOST_PREFIX) {
            continue;
        }
        let stale = match l.alias.as_deref().map(names::parse_alias) {
            None => released.contains(&l.name),
            Some(None) => false,
            Some(Some(tag)) if tag.network() != network => false,
            Some(Some(_)) if released.contains(&l.name) => true,
            Some(Some(Tag::Hashed { hash, .. })) => !hashes.contains(hash),
            Some(Some(Tag::Legacy { owner, .. })) => {
                owner.is_some_and(|(c, i)| !keep.contains(&Owner::new(c, i)))
            }
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
