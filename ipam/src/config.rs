//! The `ipam` section of a request, for the `ferry-ipam` plugin:
//!
//! ```json
//! {"type": "ferry-ipam",
//!  "subnet": "10.244.1.0/24",             // or "subnetFile": "/run/ferry/subnet.env" (one of the two)
//!  "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.200", "gateway": "10.244.1.1",
//!  "exclude": ["10.244.1.50-10.244.1.59", "10.244.1.77", "10.244.1.128/28", ["10.244.1.90", "10.244.1.95"]],
//!  "routes": [{"dst": "0.0.0.0/0"}],
//!  "dns": {"nameservers": ["10.96.0.10"]},
//!  "dataDir": "/run/ferry/ipam"}
//! ```
//! `exclude` entries are inclusive: `"a-b"`, a single `"a"`, a CIDR `"a/n"`, or a pair `["a","b"]`.
//! With `subnetFile`, the file's `*_SUBNET` (and `*_IPV6_SUBNET`, for dual stack) give one pool per
//! family; `rangeStart`/`rangeEnd`/`gateway`/`exclude` apply to the pool of their family.
//!
//! The address keys (`subnet` / `subnetFile`, `rangeStart`, `rangeEnd`, `gateway`, `exclude`,
//! `dataDir`) are [`RangeConf`], which the `ferry` plugin embeds for its own top-level keys: one
//! parser, so the two read every value alike.
//!
//! Only JSON shapes are checked by [`RangeConf::parse`]; addresses are resolved by
//! [`RangeConf::pools`], so DEL and GC (which only need `dataDir`) work even when the subnet part of
//! the config has gone bad.

use crate::pool::{Pool, Range};
use ferry_cni::result::{Dns, Route};
use ferry_cni::subnet_env::SubnetEnv;
use ferry_cni::CniError;
use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

fn cfg(msg: impl Into<String>) -> CniError {
    CniError::config(msg)
}

/// A string key; absent, `null` and `""` all mean "not set".
fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(cfg(format!("\"{key}\" must be a string, got {v}"))),
    }
}

fn opt_list(m: &Map<String, Value>, key: &str) -> Result<Vec<Value>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(v) => Err(cfg(format!("\"{key}\" must be a list, got {v}"))),
    }
}

/// An absolute path key, or `default`.
fn opt_path(
    m: &Map<String, Value>,
    key: &str,
    default: Option<&str>,
) -> Result<Option<PathBuf>, CniError> {
    let Some(p) = opt_str(m, key)?.or(default.map(String::from)) else { return Ok(None) };
    if !p.starts_with('/') {
        return Err(cfg(format!("{key} {p:?} must be an absolute path")));
    }
    Ok(Some(PathBuf::from(p)))
}

fn parse_ip(key: &str, s: &str) -> Result<IpAddr, CniError> {
    s.trim().parse().map_err(|_| cfg(format!("{key} {s:?} is not an IP address")))
}

fn parse_net(key: &str, s: &str) -> Result<IpNetwork, CniError> {
    s.trim().parse().map_err(|_| cfg(format!("{key} {s:?} is not a CIDR (like 10.244.1.0/24)")))
}

/// One `exclude` entry as an inclusive pair: `"a-b"`, `"a"`, `"a/n"` or `["a","b"]`.
pub fn parse_exclude(v: &Value) -> Result<(IpAddr, IpAddr), CniError> {
    match v {
        Value::String(s) if s.contains('/') => {
            let n = parse_net("exclude", s)?;
            Ok((n.network(), n.broadcast()))
        }
        Value::String(s) => match s.split_once('-') {
            Some((a, b)) => Ok((parse_ip("exclude", a)?, parse_ip("exclude", b)?)),
            None => parse_ip("exclude", s).map(|ip| (ip, ip)),
        },
        Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_string) => Ok((
            parse_ip("exclude", a[0].as_str().unwrap_or(""))?,
            parse_ip("exclude", a[1].as_str().unwrap_or(""))?,
        )),
        other => Err(cfg(format!(
            "exclude entry {other} must be \"a-b\", \"a\", \"a/n\" or [\"a\",\"b\"]"
        ))),
    }
}

/// Largest subnet file read (a real one is a few hundred bytes).
const SUBNET_FILE_CAP: u64 = 64 << 10;

/// Read the node subnet file (flannel's `subnet.env`, written by ferryd or flanneld). Missing →
/// code 11, try again later (the node daemon has not claimed a lease yet); unreadable, not a
/// regular file, or garbled → code 7 with the reason.
pub fn read_subnet_file(path: &Path) -> Result<SubnetEnv, CniError> {
    let text = match ferry_fs::read_to_string_capped(path, SUBNET_FILE_CAP) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::try_again(format!(
                "node subnet file {} does not exist yet: the node daemon (ferryd) has not written it; is it running? (or set \"subnet\" in the config)",
                path.display()
            )))
        }
        Err(e) => return Err(CniError::config(format!("cannot read node subnet file {}: {e}", path.display()))),
    };
    SubnetEnv::parse(&text).map_err(|e| {
        CniError::config(format!("node subnet file {} is invalid: {e}", path.display()))
    })
}

/// The address keys ferry-ipam's `ipam` section and the `ferry` plugin's own config share,
/// checked for JSON shape only (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeConf {
    pub subnet: Option<String>,
    /// The subnet file: `subnetFile`, or the caller's default when neither key is given.
    pub subnet_file: Option<PathBuf>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
    pub exclude: Vec<Value>,
    pub data_dir: PathBuf,
}

/// The node's subnets (one per family) and, from a subnet file, its MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnets {
    pub subnets: Vec<IpNetwork>,
    pub mtu: Option<u32>,
}

impl RangeConf {
    /// Parse the keys from `m`. `default_subnet_file` applies when neither `subnet` nor
    /// `subnetFile` is given (`None`: one of them is required, checked when resolving).
    /// `dataDir` defaults to [`ferry_fs::paths::IPAM_DATA_DIR`].
    pub fn parse(
        m: &Map<String, Value>,
        default_subnet_file: Option<&str>,
    ) -> Result<RangeConf, CniError> {
        let subnet = opt_str(m, "subnet")?;
        let explicit_file = opt_path(m, "subnetFile", None)?;
        if subnet.is_some() && explicit_file.is_some() {
            return Err(cfg("give either \"subnet\" or \"subnetFile\", not both"));
        }
        let subnet_file = match (&subnet, explicit_file) {
            (None, None) => opt_path(m, "subnetFile", default_subnet_file)?,
            (_, f) => f,
        };
        let data_dir = opt_path(m, "dataDir", Some(ferry_fs::paths::IPAM_DATA_DIR))?;
        Ok(RangeConf {
            subnet,
            subnet_file,
            range_start: opt_str(m, "rangeStart")?,
            range_end: opt_str(m, "rangeEnd")?,
            gateway: opt_str(m, "gateway")?,
            exclude: opt_list(m, "exclude")?,
            data_dir: data_dir.expect("has a default"),
        })
    }

    /// The subnets to allocate from: `subnet`, or the subnet file's `*_SUBNET` and
    /// `*_IPV6_SUBNET` (with its MTU). A missing subnet file is code 11 (the node daemon has not
    /// written it yet); an unreadable or garbled one code 7.
    pub fn node_subnets(&self) -> Result<NodeSubnets, CniError> {
        if let Some(s) = &self.subnet {
            return Ok(NodeSubnets { subnets: vec![parse_net("subnet", s)?], mtu: None });
        }
        let Some(path) = &self.subnet_file else {
            return Err(cfg("one of \"subnet\" or \"subnetFile\" is required"));
        };
        let env = read_subnet_file(path)?;
        Ok(NodeSubnets {
            subnets: env.subnet.into_iter().chain(env.ipv6_subnet).collect(),
            mtu: env.mtu,
        })
    }

    /// One validated pool per subnet of [`RangeConf::node_subnets`].
    pub fn pools(&self) -> Result<Vec<Pool>, CniError> {
        self.pools_for(&self.node_subnets()?.subnets)
    }

    /// One validated pool per subnet in `subnets`: `gateway`, `rangeStart`, `rangeEnd` and
    /// `exclude` apply to the pool of their family, and each must match one of the subnets.
    pub fn pools_for(&self, subnets: &[IpNetwork]) -> Result<Vec<Pool>, CniError> {
        let ip = |key: &str, v: &Option<String>| v.as_deref().map(|s| parse_ip(key, s)).transpose();
        let gw = ip("gateway", &self.gateway)?;
        let start = ip("rangeStart", &self.range_start)?;
        let end = ip("rangeEnd", &self.range_end)?;
        let exclude = self.exclude.iter().map(parse_exclude).collect::<Result<Vec<_>, _>>()?;
        for (what, ip) in [("gateway", gw), ("rangeStart", start), ("rangeEnd", end)] {
            if let Some(ip) = ip.filter(|ip| !subnets.iter().any(|n| n.is_ipv4() == ip.is_ipv4())) {
                return Err(cfg(format!("{what} {ip} matches no configured subnet's family")));
            }
        }
        let fam = |ip: Option<IpAddr>, n: &IpNetwork| ip.filter(|i| i.is_ipv4() == n.is_ipv4());
        let range = |n: &IpNetwork| Range {
            gateway: fam(gw, n),
            start: fam(start, n),
            end: fam(end, n),
            exclude: exclude.iter().copied().filter(|(a, _)| a.is_ipv4() == n.is_ipv4()).collect(),
        };
        subnets.iter().map(|n| Pool::new(*n, range(n))).collect()
    }
}

/// The `ipam` section of the `ferry-ipam` plugin: the address keys plus `routes` and `dns`.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    pub range: RangeConf,
    pub routes: Vec<Value>,
    pub dns: Option<Value>,
}

/// Config errors of the `ipam` section say so.
fn in_ipam(e: CniError) -> CniError {
    if e.code.as_u32() == 7 {
        e.context("ipam config")
    } else {
        e
    }
}

impl IpamConf {
    pub fn parse(m: &Map<String, Value>) -> Result<IpamConf, CniError> {
        let range = RangeConf::parse(m, None).map_err(in_ipam)?;
        let dns = match m.get("dns") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(v) => return Err(in_ipam(cfg(format!("\"dns\" must be an object, got {v}")))),
        };
        Ok(IpamConf { range, routes: opt_list(m, "routes").map_err(in_ipam)?, dns })
    }

    /// The subnets to allocate from (see [`RangeConf::node_subnets`]).
    pub fn subnets(&self) -> Result<Vec<IpNetwork>, CniError> {
        self.range.node_subnets().map(|n| n.subnets).map_err(in_ipam)
    }

    /// One validated pool per subnet (see [`RangeConf::pools`]).
    pub fn pools(&self) -> Result<Vec<Pool>, CniError> {
        self.range.pools().map_err(in_ipam)
    }

    pub fn routes(&self) -> Result<Vec<Route>, CniError> {
        ferry_cni::result::parse_routes(&Value::Array(self.routes.clone()))
            .map_err(|e| in_ipam(cfg(e.msg)))
    }

    pub fn dns(&self) -> Result<Dns, CniError> {
        match &self.dns {
            None => Ok(Dns::default()),
            Some(v) => Dns::from_json(v).map_err(|e| in_ipam(cfg(e.msg))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<IpamConf, CniError> {
        IpamConf::parse(v.as_object().unwrap())
    }

    #[test]
    fn full_config() {
        let c = conf(json!({"type":"ferry-ipam","subnet":"10.244.1.0/24","rangeStart":"10.244.1.10",
            "rangeEnd":"10.244.1.20","gateway":"10.244.1.1","exclude":["10.244.1.12-10.244.1.13","10.244.1.15",
            ["10.244.1.17","10.244.1.17"],"10.244.1.18/31"],"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.0/8","gw":"10.244.1.1"}],
            "dns":{"nameservers":["10.96.0.10"]},"dataDir":"/tmp/x"}))
        .unwrap();
        let p = &c.pools().unwrap()[0];
        assert_eq!(p.size(), 11 - 6);
        assert_eq!(c.routes().unwrap().len(), 2);
        assert_eq!(c.dns().unwrap().nameservers, vec!["10.96.0.10"]);
        assert_eq!(c.range.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn defaults() {
        let c = conf(json!({"subnet":"10.244.1.1/24"})).unwrap();
        assert_eq!(c.range.data_dir, PathBuf::from("/run/ferry/ipam"));
        assert_eq!(c.pools().unwrap()[0].subnet.to_string(), "10.244.1.0/24");
        assert!(c.routes().unwrap().is_empty() && c.dns().unwrap().is_empty());
    }

    #[test]
    fn bad_configs_are_code_7() {
        for v in [
            json!({"subnet":"10.0.0.0/24","subnetFile":"/x"}),
            json!({"subnet":5}),
            json!({"subnet":"10.0.0.0/24","dataDir":"rel"}),
            json!({"subnet":"10.0.0.0/24","exclude":"x"}),
            json!({"subnet":"10.0.0.0/24","routes":{}}),
            json!({"subnet":"10.0.0.0/24","dns":[]}),
        ] {
            assert_eq!(conf(v.clone()).unwrap_err().code.as_u32(), 7, "{v}");
        }
        for v in [
            json!({}),
            json!({"subnet":"10.0.0.0/33"}),
            json!({"subnet":"bogus"}),
            json!({"subnet":"10.0.0.0/31"}),
            json!({"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}),
            json!({"subnet":"10.0.0.0/24","gateway":"fd00::1"}),
            json!({"subnet":"10.0.0.0/24","rangeStart":"10.1.0.1"}),
            json!({"subnet":"10.0.0.0/24","rangeEnd":"x"}),
            json!({"subnet":"10.0.0.0/24","exclude":[["10.0.0.1"]]}),
            json!({"subnet":"10.0.0.0/24","exclude":["10.0.0.1-"]}),
        ] {
            assert_eq!(conf(v.clone()).unwrap().pools().unwrap_err().code.as_u32(), 7, "{v}");
        }
        let c = conf(json!({"subnet":"10.0.0.0/24","routes":[{"gw":"10.0.0.1"}]})).unwrap();
        assert_eq!(c.routes().unwrap_err().code.as_u32(), 7);
    }

    #[test]
    fn subnet_file() {
        let dir = std::env::temp_dir().join(format!("ferry-ipam-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("subnet.env");
        let c =
            conf(json!({"subnetFile": f.to_str().unwrap(), "rangeStart":"fd00:1::10"})).unwrap();
        assert_eq!(c.subnets().unwrap_err().code.as_u32(), 11);
        std::fs::write(&f, "FLANNEL_SUBNET=bogus\n").unwrap();
        assert_eq!(c.subnets().unwrap_err().code.as_u32(), 7);
        std::fs::write(&f, "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_SUBNET=fd00:1::/64\n")
            .unwrap();
        let pools = c.pools().unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].start.to_string(), "10.244.3.1");
        assert_eq!(pools[1].start.to_string(), "fd00:1::10");
        std::fs::write(&f, "FLANNEL_SUBNET=10.244.3.1/24\n").unwrap();
        assert_eq!(c.pools().unwrap_err().code.as_u32(), 7, "v6 rangeStart with no v6 subnet");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
