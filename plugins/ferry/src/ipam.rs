//! The plugin's IPAM seam. [`choose`] decides once per call where addresses come from: the
//! in-process allocator (ferry-ipam's pool and store on the node subnet, no exec: the fast path)
//! or the delegate IPAM plugin named by `"ipam"`, run through CNI_PATH. The verbs call the seam and
//! never ask which one it is.

use crate::conf::{FerryConf, DEFAULT_MTU};
use crate::delegate;
use ferry_cni::error::{CniError, Code, Result, CHECK_FAILED, IPAM};
use ferry_cni::result::{Dns, Route};
use ferry_cni::skel::Request;
use ferry_cni::{CniResult, Command, Version};
use ferry_ipam::{Owner, Pool, Store};
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// One address of the attachment: the pod's, the prefix of its subnet, and the gateway the host end
/// carries for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// The address plan for one attachment: what ADD puts on the veth pair.
pub struct Plan {
    /// One address per family the node has (IPv4 first).
    pub addrs: Vec<Addr>,
    pub mtu: u32,
    /// The pod's routes, each of a family in `addrs` (it goes via that family's gateway).
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Plan {
    /// The address of one family (`true`: IPv4).
    pub fn addr(&self, v4: bool) -> Option<&Addr> {
        self.addrs.iter().find(|a| a.ip.is_ipv4() == v4)
    }
}

/// The pod's routes for `addrs`: the config's `routes` when given (of the families in `addrs`:
/// a route of another family could not go via this attachment's gateway), else a default route
/// per family.
pub fn routes_for(configured: Option<&[Route]>, addrs: &[Addr]) -> Vec<Route> {
    let has = |v4: bool| addrs.iter().any(|a| a.ip.is_ipv4() == v4);
    match configured {
        Some(routes) => routes.iter().filter(|r| has(r.dst.is_ipv4())).cloned().collect(),
        None => addrs.iter().map(|a| default_route(a.ip)).collect(),
    }
}

/// Where an attachment's address comes from, and goes back to.
pub trait Ipam {
    /// ADD, before anything changes: resolve everything bad input can break (in-process: the node
    /// subnet and pool), so a rejected ADD leaves nothing behind.
    fn prepare(&mut self) -> Result<()>;
    /// ADD: allocate the attachment's address (idempotent for a repeated ADD).
    fn add(&mut self) -> Result<Plan>;
    /// Release what the attachment holds (DEL, and ADD's rollback). Holding nothing is success.
    fn del(&mut self) -> Result<()>;
    /// CHECK: the attachment still holds exactly `ips` (one per family).
    fn check(&mut self, ips: &[IpAddr]) -> Result<()>;
    /// GC: release every allocation of an attachment not in `keep`; returns those it released,
    /// as far as it knows them (a delegate does not say).
    fn gc(&mut self, keep: &BTreeSet<Owner>) -> Result<Vec<Owner>>;
    /// STATUS: code 50 unless an ADD could get an address now.
    fn status(&mut self) -> Result<()>;
}

/// The seam for this request: a delegate when the config has `"ipam"`, else in-process.
pub fn choose<'a>(req: &'a Request, conf: &'a FerryConf) -> Box<dyn Ipam + 'a> {
    match &conf.ipam_type {
        Some(plugin) => Box::new(Delegate { req, conf, plugin }),
        None => Box::new(InProcess { req, conf, node: None }),
    }
}

pub(crate) fn default_route(ip: IpAddr) -> Route {
    let dst = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
    Route::new(dst.parse().expect("valid"), None)
}

/// ferry-ipam's allocator and store, in this process.
struct InProcess<'a> {
    req: &'a Request,
    conf: &'a FerryConf,
    /// The node's pool, MTU and the requested address, once [`Ipam::prepare`] resolved them.
    node: Option<Node>,
}

/// What ADD allocates from: the node's pools (one per family), its MTU and the address the runtime
/// asked for from each.
struct Node {
    pools: Vec<Pool>,
    mtu: u32,
    requested: Vec<Option<IpAddr>>,
}

impl InProcess<'_> {
    fn owner(&self) -> Owner {
        Owner::new(self.req.args.container_id.as_str(), self.req.args.ifname.as_str())
    }

    fn store(&self) -> Result<Store> {
        Store::open(&self.conf.range.data_dir, &self.conf.network)
    }

    /// The node's pools, checked against the request before anything is allocated: a result of
    /// the request's version must be able to carry one address per family (0.1.0 / 0.2.0 with
    /// two families: code 1), and every requested address must match a pool's family (code 7).
    fn node(&self) -> Result<Node> {
        let node = self.conf.node_subnets()?;
        let (v4, v6) = node.families();
        self.req.conf.version.check_families(v4, v6)?;
        let pools = self.conf.pools(&node.subnets)?;
        // The same rule as ferry-ipam's: a request no pool serves is an error, not ignored.
        let asked = ferry_cni::requested::requested_ips(&self.req.conf, &self.req.args)?;
        let families: Vec<bool> = pools.iter().map(Pool::is_ipv4).collect();
        let requested = ferry_cni::requested::by_family(&asked, &families)?;
        Ok(Node { pools, mtu: node.mtu.unwrap_or(DEFAULT_MTU), requested })
    }
}

impl Ipam for InProcess<'_> {
    fn prepare(&mut self) -> Result<()> {
        self.node = Some(self.node()?);
        Ok(())
    }

    fn add(&mut self) -> Result<Plan> {
        let Node { pools, mtu, requested } = match self.node.take() {
            Some(n) => n,
            None => self.node()?,
        };
        let refs: Vec<&Pool> = pools.iter().collect();
        // One lock, one write: both families or neither.
        let ips = self.store()?.allocate_all(&refs, &self.owner(), &requested)?;
        let addrs: Vec<Addr> = pools
            .iter()
            .zip(ips)
            .map(|(p, ip)| Addr { ip, prefix: p.subnet.prefix(), gateway: p.gateway.unwrap_or(ip) })
            .collect();
        Ok(Plan {
            routes: routes_for(self.conf.routes.as_deref(), &addrs),
            addrs,
            mtu,
            dns: self.conf.dns.clone(),
        })
    }

    fn del(&mut self) -> Result<()> {
        self.store()?.release(&self.owner()).map(|_| ())
    }

    fn check(&mut self, ips: &[IpAddr]) -> Result<()> {
        let owner = self.owner();
        let held = self.store()?.lookup(&owner)?;
        let who = format!("{}/{}", owner.container_id, owner.ifname);
        if let Some(ip) = ips.iter().find(|ip| !held.contains(ip)) {
            return Err(CniError::new(
                CHECK_FAILED,
                format!("IPAM holds no allocation of {ip} for {who} (holds {held:?})"),
            ));
        }
        if let Some(ip) = held.iter().find(|h| !ips.contains(h)) {
            return Err(CniError::new(
                CHECK_FAILED,
                format!("IPAM holds {ip} for {who}, which prevResult does not list"),
            ));
        }
        Ok(())
    }

    fn gc(&mut self, keep: &BTreeSet<Owner>) -> Result<Vec<Owner>> {
        let keep: Vec<Owner> = keep.iter().cloned().collect();
        Ok(self.store()?.gc(&keep)?.into_iter().map(|(_, o)| o).collect())
    }

    fn status(&mut self) -> Result<()> {
        let not_ready = |msg: String| CniError::new(Code::NotAvailable, msg);
        let node = self
            .conf
            .node_subnets()
            .map_err(|e| not_ready(format!("node subnet unknown: {}", e.msg)))?;
        let pools = self
            .conf
            .pools(&node.subnets)
            .map_err(|e| not_ready(format!("node subnet unusable: {}", e.msg)))?;
        let mut store = self.store()?;
        for pool in &pools {
            if store.available(pool)? == 0 {
                return Err(not_ready(format!(
                    "address pool {} ({}) is exhausted",
                    pool.subnet,
                    pool.range_str()
                )));
            }
        }
        Ok(())
    }
}

/// An IPAM plugin from CNI_PATH, given the whole request.
struct Delegate<'a> {
    req: &'a Request,
    conf: &'a FerryConf,
    plugin: &'a str,
}

impl Delegate<'_> {
    fn exec(&self, cmd: Command) -> Result<()> {
        delegate::exec(self.req, self.plugin, cmd).map(|_| ())
    }
}

impl Ipam for Delegate<'_> {
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }

    fn add(&mut self) -> Result<Plan> {
        let r = delegate::add(self.req, self.plugin)?;
        plan_from_result(self.conf, self.req.conf.version, r).inspect_err(|_| {
            let _ = self.exec(Command::Del);
        })
    }

    fn del(&mut self) -> Result<()> {
        self.exec(Command::Del)
    }

    fn check(&mut self, _ips: &[IpAddr]) -> Result<()> {
        self.exec(Command::Check)
    }

    fn gc(&mut self, _keep: &BTreeSet<Owner>) -> Result<Vec<Owner>> {
        self.exec(Command::Gc).map(|_| vec![])
    }

    fn status(&mut self) -> Result<()> {
        self.exec(Command::Status)
    }
}

/// The plan from a delegate's result: its first address of each family (IPv4 first), each with
/// its gateway (else its subnet's first host), the config's routes and DNS over the delegate's.
/// Both families in a version whose result cannot carry them: code 1 (the caller releases).
fn plan_from_result(conf: &FerryConf, version: Version, r: CniResult) -> Result<Plan> {
    let mut addrs = Vec::new();
    for v4 in [true, false] {
        let Some(ipc) = r.ips.iter().find(|i| i.address.is_ipv4() == v4) else { continue };
        let ip = ipc.address.ip();
        let gateway = match ipc.gateway {
            Some(g) if g.is_ipv4() == v4 => g,
            Some(g) => {
                return Err(CniError::new(
                    IPAM,
                    format!("IPAM gave {} with gateway {g} of the other family", ipc.address),
                ))
            }
            None => first_host(ipc.address).filter(|g| *g != ip).ok_or_else(|| {
                CniError::new(IPAM, format!("IPAM gave {} with no usable gateway", ipc.address))
            })?,
        };
        addrs.push(Addr { ip, prefix: ipc.address.prefix(), gateway });
    }
    if addrs.is_empty() {
        return Err(CniError::new(IPAM, "IPAM plugin returned no IP address"));
    }
    version.check_families(
        addrs.iter().any(|a| a.ip.is_ipv4()),
        addrs.iter().any(|a| a.ip.is_ipv6()),
    )?;
    let routes = match (&conf.routes, r.routes.is_empty()) {
        (Some(routes), _) => routes_for(Some(routes), &addrs),
        (None, true) => routes_for(None, &addrs),
        (None, false) => routes_for(Some(&r.routes), &addrs),
    };
    let dns = if conf.dns.is_empty() { r.dns.clone() } else { conf.dns.clone() };
    let mtu = conf.mtu.unwrap_or(DEFAULT_MTU);
    Ok(Plan { addrs, mtu, routes, dns })
}

fn first_host(n: IpNetwork) -> Option<IpAddr> {
    match n {
        IpNetwork::V4(v) => Some(IpAddr::V4(u32::from(v.network()).checked_add(1)?.into())),
        IpNetwork::V6(v) => Some(IpAddr::V6(u128::from(v.network()).checked_add(1)?.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_cni::result::IpConfig;
    use ferry_cni::NetConf;

    fn addr(ip: &str, prefix: u8, gw: &str) -> Addr {
        Addr { ip: ip.parse().unwrap(), prefix, gateway: gw.parse().unwrap() }
    }

    fn route(dst: &str) -> Route {
        Route::new(dst.parse().unwrap(), None)
    }

    fn dsts(r: &[Route]) -> Vec<String> {
        r.iter().map(|r| r.dst.to_string()).collect()
    }

    #[test]
    fn routes_per_family() {
        let v4 = addr("10.1.0.5", 24, "10.1.0.1");
        let v6 = addr("fd00::5", 64, "fd00::1");
        assert_eq!(dsts(&routes_for(None, &[v4, v6])), ["0.0.0.0/0", "::/0"]);
        assert_eq!(dsts(&routes_for(None, &[v6])), ["::/0"]);
        let conf = [route("10.0.0.0/8"), route("fd00:9::/48"), route("0.0.0.0/0")];
        assert_eq!(
            dsts(&routes_for(Some(&conf), &[v4, v6])),
            ["10.0.0.0/8", "fd00:9::/48", "0.0.0.0/0"]
        );
        assert_eq!(dsts(&routes_for(Some(&conf), &[v6])), ["fd00:9::/48"], "no IPv4 address");
        assert_eq!(dsts(&routes_for(Some(&conf), &[v4])), ["10.0.0.0/8", "0.0.0.0/0"]);
    }

    fn conf() -> FerryConf {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"ferry","ipam":{"type":"x"}}"#,
        )
        .unwrap();
        FerryConf::parse(&c).unwrap()
    }

    fn ip(address: &str, gateway: Option<&str>) -> IpConfig {
        IpConfig {
            address: address.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            interface: None,
        }
    }

    #[test]
    fn delegate_result_one_address_per_family_ipv4_first() {
        let r = CniResult {
            ips: vec![
                ip("fd00::7/64", Some("fd00::1")),
                ip("10.2.0.7/24", None),
                ip("10.2.0.8/24", None),
            ],
            ..Default::default()
        };
        let p = plan_from_result(&conf(), Version::V100, r.clone()).unwrap();
        assert_eq!(p.addrs, [addr("10.2.0.7", 24, "10.2.0.1"), addr("fd00::7", 64, "fd00::1")]);
        assert_eq!(dsts(&p.routes), ["0.0.0.0/0", "::/0"], "a default route per family");
        // Both families in a version whose result cannot carry them: code 1.
        let e = plan_from_result(&conf(), Version::V020, r).err().unwrap();
        assert_eq!(e.code.as_u32(), 1, "{}", e.msg);
        // One family is fine in 0.2.0.
        let r = CniResult { ips: vec![ip("fd00::7/64", None)], ..Default::default() };
        let p = plan_from_result(&conf(), Version::V020, r).unwrap();
        assert_eq!(p.addrs, [addr("fd00::7", 64, "fd00::1")]);
    }

    #[test]
    fn delegate_result_errors() {
        let none = CniResult::default();
        assert_eq!(plan_from_result(&conf(), Version::V100, none).err().unwrap().code, IPAM);
        let mixed =
            CniResult { ips: vec![ip("10.2.0.7/24", Some("fd00::1"))], ..Default::default() };
        let e = plan_from_result(&conf(), Version::V100, mixed).err().unwrap();
        assert!(e.code == IPAM && e.msg.contains("other family"), "{}", e.msg);
    }
}
