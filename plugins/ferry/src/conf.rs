//! Ferry's own config keys, validated into domain types (pure; reading the subnet file is the
//! only I/O and lives in [`FerryConf::node_subnet`]).
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"ferry","type":"ferry",
//!  "subnet":"10.244.1.0/24",            // static node subnet, or:
//!  "subnetFile":"/run/ferry/subnet.env", // written by ferryd (flannel format); the default
//!  "mtu":1500, "dataDir":"/run/ferry/ipam",
//!  "rangeStart":"10.244.1.10","rangeEnd":"10.244.1.200","exclude":["10.244.1.50-10.244.1.59"],
//!  "routes":[{"dst":"0.0.0.0/0"}], "dns":{"nameservers":["10.96.0.10"]},
//!  "ipam":{...}                         // optional: delegate IP allocation to that plugin
//! }
//! ```

use ferry_cni::error::{CniError, Result};
use ferry_cni::result::{Dns, Route};
use ferry_cni::NetConf;
use ipnetwork::IpNetwork;
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_SUBNET_FILE: &str = "/run/ferry/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/run/ferry/ipam";
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Clone)]
pub struct FerryConf {
    pub network: String,
    pub subnet: Option<IpNetwork>,
    pub subnet_file: PathBuf,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub exclude: Vec<(IpAddr, IpAddr)>,
    /// `None`: the default (a default route via the gateway).
    pub routes: Option<Vec<Route>>,
    pub dns: Dns,
    /// Delegate IP allocation to this IPAM plugin type.
    pub ipam_type: Option<String>,
}

/// The node subnet and MTU, from the config or the subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnet {
    pub subnet: IpNetwork,
    pub mtu: Option<u32>,
}

fn cfg_err(msg: impl Into<String>) -> CniError {
    CniError::config(msg)
}

fn opt_str<'a>(c: &'a NetConf, key: &str) -> Result<Option<&'a str>> {
    match c.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(cfg_err(format!("\"{key}\" must be a string, got {v}"))),
    }
}

fn opt_ip(c: &NetConf, key: &str) -> Result<Option<IpAddr>> {
    opt_str(c, key)?
        .map(|s| s.parse().map_err(|_| cfg_err(format!("\"{key}\": {s:?} is not an IP address"))))
        .transpose()
}

impl FerryConf {
    pub fn parse(c: &NetConf) -> Result<FerryConf> {
        let subnet = opt_str(c, "subnet")?
            .map(|s| {
                s.parse::<IpNetwork>().map_err(|_| {
                    cfg_err(format!(
                        "\"subnet\": {s:?} is not a CIDR (expected e.g. \"10.244.1.0/24\")"
                    ))
                })
            })
            .transpose()?;
        if let Some(IpNetwork::V4(n)) = subnet {
            if n.prefix() > 30 {
                return Err(cfg_err(format!("\"subnet\": {n} is too small: use a /30 or larger")));
            }
        }
        let mtu = match c.get("mtu") {
            None => None,
            Some(v) => {
                Some(v.as_u64().filter(|m| (68..=65535).contains(m)).ok_or_else(|| {
                    cfg_err(format!("\"mtu\" must be an integer 68-65535, got {v}"))
                })? as u32)
            }
        };
        let path = |key: &str, default: &str| -> Result<PathBuf> {
            let p = opt_str(c, key)?.unwrap_or(default);
            if p.is_empty() || !p.starts_with('/') {
                return Err(cfg_err(format!("\"{key}\" must be an absolute path, got {p:?}")));
            }
            Ok(PathBuf::from(p))
        };
        let exclude = match c.get("exclude") {
            None => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(ferry_ipam::config::parse_exclude)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| cfg_err(format!("\"exclude\": {}", e.msg)))?,
            Some(_) => {
                return Err(cfg_err(
                    "\"exclude\" must be a list of \"A-B\", \"A\" or \"A/N\" strings",
                ))
            }
        };
        let routes = match c.get("routes") {
            None => None,
            Some(v) => Some(
                ferry_cni::result::parse_routes(v)
                    .map_err(|e| cfg_err(format!("\"routes\": {}", e.msg)))?,
            ),
        };
        let dns = Dns::from_json(c.get("dns").unwrap_or(&Value::Null))
            .map_err(|e| cfg_err(format!("\"dns\": {}", e.msg)))?;
        let ipam_type = match c.ipam() {
            None => None,
            Some(m) => match m.get("type") {
                Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => Some(t.clone()),
                _ => {
                    return Err(cfg_err(
                        "\"ipam\" needs a \"type\" naming an IPAM plugin in CNI_PATH",
                    ))
                }
            },
        };
        Ok(FerryConf {
            network: c.name.clone(),
            subnet,
            subnet_file: path("subnetFile", DEFAULT_SUBNET_FILE)?,
            mtu,
            data_dir: path("dataDir", DEFAULT_DATA_DIR)?,
            range_start: opt_ip(c, "rangeStart")?,
            range_end: opt_ip(c, "rangeEnd")?,
            exclude,
            routes,
            dns,
            ipam_type,
        })
    }

    /// Where the node subnet comes from: `subnet` in the config, else the subnet file. A missing
    /// file is "try again later" (code 11: the node daemon has not claimed a lease yet); a garbled
    /// one is an invalid config (code 7).
    pub fn node_subnet(&self) -> Result<NodeSubnet> {
        if let Some(s) = self.subnet {
            return Ok(NodeSubnet { subnet: s, mtu: self.mtu });
        }
        let path = &self.subnet_file;
        let env = ferry_ipam::config::read_subnet_file(path)?;
        let subnet = env.subnet.ok_or_else(|| {
            cfg_err(format!("node subnet file {} has no IPv4 subnet", path.display()))
        })?;
        Ok(NodeSubnet { subnet, mtu: self.mtu.or(env.mtu) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<FerryConf> {
        let c = NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ferry"{extra}}}"#).as_bytes(),
        )?;
        FerryConf::parse(&c)
    }

    #[test]
    fn defaults() {
        let c = conf("").unwrap();
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.subnet.is_none() && c.ipam_type.is_none() && c.routes.is_none());
    }

    #[test]
    fn full_config() {
        let c = conf(r#","subnet":"10.244.1.0/24","mtu":1400,"dataDir":"/tmp/x","rangeStart":"10.244.1.10","exclude":["10.244.1.20-10.244.1.29","10.244.1.40"],"routes":[{"dst":"10.0.0.0/8"}],"dns":{"nameservers":["1.1.1.1"]}"#).unwrap();
        assert_eq!(c.subnet.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.exclude.len(), 2);
        assert_eq!(c.routes.unwrap()[0].dst.to_string(), "10.0.0.0/8");
        assert_eq!(c.dns.nameservers, vec!["1.1.1.1"]);
    }

    #[test]
    fn bad_configs_are_code_7_with_hints() {
        for (extra, needle) in [
            (r#","subnet":"10.244.9.0/33""#, "not a CIDR"),
            (r#","subnet":"banana""#, "not a CIDR"),
            (r#","subnet":5"#, "must be a string"),
            (r#","subnet":"10.0.0.0/31""#, "too small"),
            (r#","mtu":"big""#, "mtu"),
            (r#","mtu":10"#, "mtu"),
            (r#","dataDir":"relative""#, "absolute"),
            (r#","rangeStart":"x""#, "rangeStart"),
            (r#","exclude":"x""#, "exclude"),
            (r#","routes":[{"dst":"nope"}]"#, "routes"),
            (r#","ipam":{}"#, "ipam"),
        ] {
            let e = conf(extra).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{extra}");
            assert!(e.msg.contains(needle), "{extra}: {}", e.msg);
        }
    }

    #[test]
    fn subnet_file_missing_is_try_again_and_garbled_is_config() {
        let dir = std::env::temp_dir().join(format!("ferry-conf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("subnet.env");
        let c = conf(&format!(r#","subnetFile":"{}""#, f.display())).unwrap();
        assert_eq!(c.node_subnet().unwrap_err().code.as_u32(), 11);
        std::fs::write(&f, "garbage").unwrap();
        assert_eq!(c.node_subnet().unwrap_err().code.as_u32(), 7);
        std::fs::write(&f, "FLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n").unwrap();
        let n = c.node_subnet().unwrap();
        assert_eq!(n.subnet.to_string(), "10.244.7.1/24");
        assert_eq!(n.mtu, Some(1450));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
