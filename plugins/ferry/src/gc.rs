//! GC (spec 1.1.0): release every IP and host-side object of this network that belongs to an
//! attachment not in the valid list. STATUS: not ready (code 50) while the node subnet is unknown
//! or the pool is full.

use crate::conf::FerryConf;
use crate::{delegate, names, nl_err};
use ferry_cni::error::{CniError, Code, Result};
use ferry_cni::skel::Request;
use ferry_cni::Command;
use ferry_ipam::{Owner, Pool, Range, Store};
use ferry_netlink::Netlink;
use std::collections::BTreeSet;

pub fn gc(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    let keep: BTreeSet<Owner> = req
        .conf
        .valid_attachments()?
        .into_iter()
        .map(|a| Owner { container_id: a.container_id, ifname: a.ifname })
        .collect();
    let mut errors: Vec<CniError> = Vec::new();
    // Deterministic host-end names of the allocations GC releases.
    let mut released: BTreeSet<String> = BTreeSet::new();
    match &conf.ipam_type {
        None => {
            let keep: Vec<Owner> = keep.iter().cloned().collect();
            match Store::open(&conf.data_dir, &conf.network).and_then(|mut s| s.gc(&keep)) {
                Ok(r) => {
                    released = r
                        .iter()
                        .map(|(_, o)| names::host_veth(&o.container_id, &o.ifname))
                        .collect()
                }
                Err(e) => errors.push(e),
            }
        }
        Some(t) => {
            if let Err(e) = delegate::exec(req, t, Command::Gc) {
                errors.push(e);
            }
        }
    }
    // One pass over the host's links. A host end is stale when its alias names this network and an
    // attachment not in the valid list, or when it has no alias and is the deterministic host end
    // of an allocation just released (an ADD killed between creating and tagging its veth).
    let mut host = Netlink::new().map_err(nl_err("open netlink socket"))?;
    for l in host.links().map_err(nl_err("list links"))? {
        if !l.name.starts_with(names::HOST_PREFIX) {
            continue;
        }
        let stale = match l.alias.as_deref() {
            None => released.contains(&l.name),
            Some(a) => names::parse_alias(a).is_some_and(|(net, cid, ifname)| {
                net == conf.network
                    && !keep.contains(&Owner {
                        container_id: cid.to_string(),
                        ifname: ifname.to_string(),
                    })
            }),
        };
        if stale {
            if let Err(e) = host.del_link(l.index) {
                errors.push(nl_err(format!("delete {}", l.name))(e));
            }
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let details: Vec<String> = errors.iter().map(|e| e.msg.clone()).collect();
            Err(CniError { details: details.join("; "), ..errors.remove(0) })
        }
    }
}

pub fn status(req: &Request) -> Result<()> {
    let conf = FerryConf::parse(&req.conf)?;
    if let Some(t) = &conf.ipam_type {
        delegate::exec(req, t, Command::Status)?;
        return Ok(());
    }
    let not_ready = |msg: String| CniError::new(Code::NotAvailable, msg);
    let node =
        conf.node_subnet().map_err(|e| not_ready(format!("node subnet unknown: {}", e.msg)))?;
    let range = Range {
        start: conf.range_start,
        end: conf.range_end,
        exclude: conf.exclude.clone(),
        ..Range::default()
    };
    let pool = Pool::new(node.subnet, range)
        .map_err(|e| not_ready(format!("node subnet unusable: {}", e.msg)))?;
    let free = Store::open(&conf.data_dir, &conf.network)?.available(&pool)?;
    if free == 0 {
        return Err(not_ready(format!(
            "address pool {} ({}) is exhausted",
            node.subnet,
            pool.range_str()
        )));
    }
    Ok(())
}
