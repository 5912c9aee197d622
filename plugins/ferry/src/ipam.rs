//! The plugin's IPAM seam. [`choose`] decides once per call where addresses come from: the
//! in-process allocator (ferry-ipam's pool and store on the node subnet, no exec: the fast path)
//! or the delegate IPAM plugin named by `"ipam"`, run through CNI_PATH. The verbs call the seam and
//! never ask which one it is.

use crate::conf::{FerryConf, DEFAULT_MTU};
use crate::delegate;
use ferry_cni::error::{CniError, Code, Result, CHECK_FAILED, IPAM};
use ferry_cni::result::{Dns, Route};
use ferry_cni::skel::Request;
use ferry_cni::{CniResult, Command};
use ferry_ipam::{Owner, Pool, Store};
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The address plan for one attachment: what ADD puts on the veth pair.
pub struct Plan {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    pub mtu: u32,
    pub routes: Vec<Route>,
    pub dns: Dns,
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
    /// CHECK: the attachment still holds `ip`.
    fn check(&mut self, ip: IpAddr) -> Result<()>;
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

/// What ADD allocates from: the node's pool, its MTU and the address the runtime asked for.
struct Node {
    pool: Pool,
    mtu: u32,
    requested: Option<IpAddr>,
}

impl InProcess<'_> {
    fn owner(&self) -> Owner {
        Owner::new(self.req.args.container_id.as_str(), self.req.args.ifname.as_str())
    }

    fn store(&self) -> Result<Store> {
        Store::open(&self.conf.range.data_dir, &self.conf.network)
    }

    fn node(&self) -> Result<Node> {
        let node = self.conf.node_subnet()?;
        let pool = self.conf.pool(node.subnet)?;
        // The same rule as ferry-ipam's: a request no pool serves is an error, not ignored.
        let asked = ferry_cni::requested::requested_ips(&self.req.conf, &self.req.args)?;
        let requested = ferry_cni::requested::by_family(&asked, &[pool.is_ipv4()])?[0];
        Ok(Node { pool, mtu: node.mtu.unwrap_or(DEFAULT_MTU), requested })
    }
}

impl Ipam for InProcess<'_> {
    fn prepare(&mut self) -> Result<()> {
        self.node = Some(self.node()?);
        Ok(())
    }

    fn add(&mut self) -> Result<Plan> {
        let Node { pool, mtu, requested } = match self.node.take() {
            Some(n) => n,
            None => self.node()?,
        };
        let ip = self.store()?.allocate(&pool, &self.owner(), requested)?;
        Ok(Plan {
            ip,
            prefix: pool.subnet.prefix(),
            gateway: pool.gateway.unwrap_or(ip),
            mtu,
            routes: self.conf.routes.clone().unwrap_or_else(|| vec![default_route(ip)]),
            dns: self.conf.dns.clone(),
        })
    }

    fn del(&mut self) -> Result<()> {
        self.store()?.release(&self.owner()).map(|_| ())
    }

    fn check(&mut self, ip: IpAddr) -> Result<()> {
        let owner = self.owner();
        let held = self.store()?.lookup(&owner)?;
        if held.contains(&ip) {
            return Ok(());
        }
        Err(CniError::new(
            CHECK_FAILED,
            format!(
                "IPAM holds no allocation of {ip} for {}/{} (holds {held:?})",
                owner.container_id, owner.ifname
            ),
        ))
    }

    fn gc(&mut self, keep: &BTreeSet<Owner>) -> Result<Vec<Owner>> {
        let keep: Vec<Owner> = keep.iter().cloned().collect();
        Ok(self.store()?.gc(&keep)?.into_iter().map(|(_, o)| o).collect())
    }

    fn status(&mut self) -> Result<()> {
        let not_ready = |msg: String| CniError::new(Code::NotAvailable, msg);
        let node = self
            .conf
            .node_subnet()
            .map_err(|e| not_ready(format!("node subnet unknown: {}", e.msg)))?;
        let pool = self
            .conf
            .pool(node.subnet)
            .map_err(|e| not_ready(format!("node subnet unusable: {}", e.msg)))?;
        if self.store()?.available(&pool)? == 0 {
            return Err(not_ready(format!(
                "address pool {} ({}) is exhausted",
                node.subnet,
                pool.range_str()
            )));
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
        plan_from_result(self.conf, r).inspect_err(|_| {
            let _ = self.exec(Command::Del);
        })
    }

    fn del(&mut self) -> Result<()> {
        self.exec(Command::Del)
    }

    fn check(&mut self, _ip: IpAddr) -> Result<()> {
        self.exec(Command::Check)
    }

    fn gc(&mut self, _keep: &BTreeSet<Owner>) -> Result<Vec<Owner>> {
        self.exec(Command::Gc).map(|_| vec![])
    }

    fn status(&mut self) -> Result<()> {
        self.exec(Command::Status)
    }
}

/// The plan from a delegate's result: its first IPv4 address (else its first), its gateway (else
/// the subnet's first host), the config's routes and DNS over the delegate's.
fn plan_from_result(conf: &FerryConf, r: CniResult) -> Result<Plan> {
    let ipc = r
        .ips
        .iter()
        .find(|i| i.address.is_ipv4())
        .or(r.ips.first())
        .ok_or_else(|| CniError::new(IPAM, "IPAM plugin returned no IP address"))?;
    let ip = ipc.address.ip();
    let gateway = match ipc.gateway {
        Some(g) => g,
        None => first_host(ipc.address).filter(|g| *g != ip).ok_or_else(|| {
            CniError::new(IPAM, format!("IPAM gave {} with no usable gateway", ipc.address))
        })?,
    };
    let routes = match (&conf.routes, r.routes.is_empty()) {
        (Some(routes), _) => routes.clone(),
        (None, true) => vec![default_route(ip)],
        (None, false) => r.routes.clone(),
    };
    let dns = if conf.dns.is_empty() { r.dns.clone() } else { conf.dns.clone() };
    let mtu = conf.mtu.unwrap_or(DEFAULT_MTU);
    Ok(Plan { ip, prefix: ipc.address.prefix(), gateway, mtu, routes, dns })
}

fn first_host(n: IpNetwork) -> Option<IpAddr> {
    match n {
        IpNetwork::V4(v) => Some(IpAddr::V4(u32::from(v.network()).checked_add(1)?.into())),
        IpNetwork::V6(v) => Some(IpAddr::V6(u128::from(v.network()).checked_add(1)?.into())),
    }
}
