//! The `ferry-ipam` CNI IPAM plugin: [`IpamPlugin`] behind `ferry_cni::skel::run`.
//!
//! * ADD: one address per configured pool (per family), idempotent per (container id, ifname);
//!   result = `ips` (no `interface`) with the gateway, the configured `routes` and `dns`. Two
//!   families with cniVersion 0.1.0 / 0.2.0: code 1 before anything is allocated.
//!   A requested address comes from `runtimeConfig.ips`, else `args.cni.ips`, else CNI_ARGS `IP=`
//!   (comma-separated; `ip` or `ip/prefix`), at most one per family.
//! * DEL: releases whatever the attachment holds; succeeds when it holds nothing. Needs only
//!   `dataDir` and the network name, so a since-broken subnet config does not block it.
//! * CHECK: fails (code 103) unless the attachment holds an address, and every address it holds
//!   is in `prevResult` (when given), and `prevResult` lists no other address of those families.
//! * GC: releases every allocation not in `cni.dev/valid-attachments` (or `cni.dev/attachments`);
//!   no list at all means "none valid" (cnitool `gc`).
//! * STATUS: code 50 when the subnet is unknown (subnet file missing/garbled), the state file is
//!   unusable, or a pool is exhausted.

use crate::config::IpamConf;
use crate::pool::Pool;
use crate::state::Owner;
use crate::store::Store;
use ferry_cni::error::CHECK_FAILED;
use ferry_cni::result::IpConfig;
use ferry_cni::skel::{Plugin, Request};
use ferry_cni::{CniError, CniResult, Code};
use ipnetwork::IpNetwork;
use std::net::IpAddr;

pub const ABOUT: &str = concat!("CNI ferry-ipam plugin ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Default)]
pub struct IpamPlugin;

fn conf(req: &Request) -> Result<IpamConf, CniError> {
    let m = req
        .conf
        .ipam()
        .ok_or_else(|| CniError::config("network config has no \"ipam\" section"))?;
    IpamConf::parse(m)
}

fn store(c: &IpamConf, req: &Request) -> Result<Store, CniError> {
    Store::open(&c.range.data_dir, &req.conf.name)
}

fn owner(req: &Request) -> Owner {
    Owner::new(req.args.container_id.clone(), req.args.ifname.clone())
}

fn requested_ips(req: &Request) -> Result<Vec<IpAddr>, CniError> {
    ferry_cni::requested::requested_ips(&req.conf, &req.args).map_err(|e| e.context("ferry-ipam"))
}

/// Match requested addresses to pools by family: ferry-cni's one rule (at most one per pool,
/// none left over, code 7 otherwise), which the `ferry` plugin applies too.
fn match_requests(pools: &[Pool], requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>, CniError> {
    let families: Vec<bool> = pools.iter().map(Pool::is_ipv4).collect();
    ferry_cni::requested::by_family(requested, &families).map_err(|e| e.context("ferry-ipam"))
}

impl Plugin for IpamPlugin {
    fn add(&mut self, req: &Request) -> Result<CniResult, CniError> {
        let c = conf(req)?;
        let pools = c.pools()?;
        // Before anything is allocated: a dual-stack result needs 0.3.0 or later.
        let has = |v4: bool| pools.iter().any(|p| p.is_ipv4() == v4);
        req.conf.version.check_families(has(true), has(false))?;
        let routes = c.routes()?;
        let dns = c.dns()?;
        let requested = match_requests(&pools, &requested_ips(req)?)?;
        let refs: Vec<&Pool> = pools.iter().collect();
        let ips = store(&c, req)?.allocate_all(&refs, &owner(req), &requested)?;
        let ips = pools
            .iter()
            .zip(ips)
            .map(|(p, ip)| IpConfig {
                address: IpNetwork::new(ip, p.subnet.prefix()).expect("prefix fits the family"),
                gateway: p.gateway,
                interface: None,
            })
            .collect();
        Ok(CniResult { interfaces: vec![], ips, routes, dns })
    }

    fn del(&mut self, req: &Request) -> Result<(), CniError> {
        let c = conf(req)?;
        store(&c, req)?.release(&owner(req)).map(|_| ())
    }

    fn check(&mut self, req: &Request) -> Result<(), CniError> {
        let c = conf(req)?;
        let who = owner(req);
        let held = store(&c, req)?.lookup(&who)?;
        let fail = |msg: String| Err(CniError::plugin(CHECK_FAILED, format!("ferry-ipam: {msg}")));
        if held.is_empty() {
            return fail(format!("{}/{} holds no IP address", who.container_id, who.ifname));
        }
        let Some(prev) = req.conf.prev_result()? else { return Ok(()) };
        let listed: Vec<IpAddr> = prev.ips.iter().map(|i| i.address.ip()).collect();
        for ip in &held {
            if !listed.contains(ip) {
                return fail(format!(
                    "{}/{} holds {ip}, which prevResult does not list",
                    who.container_id, who.ifname
                ));
            }
        }
        for ip in listed.iter().filter(|l| held.iter().any(|h| h.is_ipv4() == l.is_ipv4())) {
            if !held.contains(ip) {
                return fail(format!(
                    "prevResult lists {ip} but {}/{} holds {:?}",
                    who.container_id, who.ifname, held
                ));
            }
        }
        Ok(())
    }

    fn gc(&mut self, req: &Request) -> Result<(), CniError> {
        let c = conf(req)?;
        let keep: Vec<Owner> = req
            .conf
            .valid_attachments()?
            .into_iter()
            .map(|a| Owner::new(a.container_id, a.ifname))
            .collect();
        store(&c, req)?.gc(&keep).map(|_| ())
    }

    fn status(&mut self, req: &Request) -> Result<(), CniError> {
        let unavailable =
            |e: CniError| CniError::new(Code::NotAvailable, e.msg).with_details(e.details);
        let c = conf(req)?;
        let pools = c.pools().map_err(unavailable)?;
        let mut st = store(&c, req).map_err(unavailable)?;
        for p in &pools {
            if st.available(p).map_err(unavailable)? == 0 {
                return Err(CniError::new(
                    Code::NotAvailable,
                    format!("ferry-ipam: pool {} (range {}) is exhausted", p.subnet, p.range_str()),
                ));
            }
        }
        Ok(())
    }
}
