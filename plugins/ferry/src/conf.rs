//! Ferry's config, validated into domain types (pure; reading the subnet file is the only I/O
//! and lives in [`FerryConf::node_subnet`]).
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
//! The address keys (`subnet`, `subnetFile`, `rangeStart`, `rangeEnd`, `gateway`, `exclude`,
//! `dataDir`) are ferry-ipam's [`RangeConf`], parsed by ferry-ipam's code: they mean exactly what
//! they mean in a `ferry-ipam` section, and like there, only their JSON shape is checked up front.
//! A bad address surfaces when the pool is built (ADD, STATUS), never in DEL or GC.

use ferry_cni::error::{CniError, Result};
use ferry_cni::result::{Dns, Route};
use ferry_cni::NetConf;
use ferry_ipam::config::RangeConf;
use ferry_ipam::Pool;
use ipnetwork::IpNetwork;
use serde_json::Value;

pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Clone)]
pub struct FerryConf {
    pub network: String,
    /// The address keys, as ferry-ipam reads them (subnet file default: ferryd's).
    pub range: RangeConf,
    pub mtu: Option<u32>,
    /// `None`: the default (a default route via the gateway).
    pub routes: Option<Vec<Route>>,
    pub dns: Dns,
    /// Delegate IP allocation to this IPAM plugin type.
    pub ipam_type: Option<String>,
}

/// The node's subnets (IPv4 first, then IPv6: one per enabled family) and MTU, from the config
/// or the subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnets {
    pub subnets: Vec<IpNetwork>,
    pub mtu: Option<u32>,
}

impl NodeSubnets {
    /// (has an IPv4 subnet, has an IPv6 subnet).
    pub fn families(&self) -> (bool, bool) {
        (self.subnets.iter().any(|s| s.is_ipv4()), self.subnets.iter().any(|s| s.is_ipv6()))
    }
}

fn cfg_err(msg: impl Into<String>) -> CniError {
    CniError::config(msg)
}

fn mtu(c: &NetConf) -> Result<Option<u32>> {
    let Some(v) = c.get("mtu") else { return Ok(None) };
    let m = v.as_u64().filter(|m| (68..=65535).contains(m));
    m.map(|m| Some(m as u32))
        .ok_or_else(|| cfg_err(format!("\"mtu\" must be an integer 68-65535, got {v}")))
}

fn routes(c: &NetConf) -> Result<Option<Vec<Route>>> {
    c.get("routes")
        .map(|v| {
            ferry_cni::result::parse_routes(v)
                .map_err(|e| cfg_err(format!("\"routes\": {}", e.msg)))
        })
        .transpose()
}

fn ipam_type(c: &NetConf) -> Result<Option<String>> {
    let Some(m) = c.ipam() else { return Ok(None) };
    match m.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => Ok(Some(t.clone())),
        _ => Err(cfg_err("\"ipam\" needs a \"type\" naming an IPAM plugin in CNI_PATH")),
    }
}

impl FerryConf {
    pub fn parse(c: &NetConf) -> Result<FerryConf> {
        let dns = Dns::from_json(c.get("dns").unwrap_or(&Value::Null))
            .map_err(|e| cfg_err(format!("\"dns\": {}", e.msg)))?;
        crate::log::settings(c)?;
        Ok(FerryConf {
            network: c.name.clone(),
            range: RangeConf::parse(&c.raw, Some(ferry_fs::paths::SUBNET_FILE))?,
            mtu: mtu(c)?,
            routes: routes(c)?,
            dns,
            ipam_type: ipam_type(c)?,
        })
    }

    /// The node subnets: `subnet` in the config, else the subnet file's `FLANNEL_SUBNET` and
    /// `FLANNEL_IPV6_SUBNET` (either or both: IPv4-only, IPv6-only and dual-stack nodes). A
    /// missing file is "try again later" (code 11: the node daemon has not claimed a lease yet); a
    /// garbled one, or a garbled `subnet`, is an invalid config (code 7).
    pub fn node_subnets(&self) -> Result<NodeSubnets> {
        let n = self.range.node_subnets()?;
        if n.subnets.is_empty() {
            return Err(cfg_err("the node subnet file names no subnet"));
        }
        Ok(NodeSubnets { subnets: n.subnets, mtu: self.mtu.or(n.mtu) })
    }

    /// One pool per subnet, with the config's range, gateway and exclusions applied to the pool of
    /// their family (code 7 when bad).
    pub fn pools(&self, subnets: &[IpNetwork]) -> Result<Vec<Pool>> {
        self.range.pools_for(subnets)
    }

    /// The pool of one `subnet` (see [`FerryConf::pools`]).
    pub fn pool(&self, subnet: IpNetwork) -> Result<Pool> {
        Ok(self.pools(&[subnet])?.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_ipam::config::IpamConf;
    use std::path::PathBuf;

    fn conf(extra: &str) -> Result<FerryConf> {
        let c = NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ferry"{extra}}}"#).as_bytes(),
        )?;
        FerryConf::parse(&c)
    }

    /// The pool ferry builds from `extra`: parse, node subnet, pool (the ADD path).
    fn ferry_pool(extra: &str) -> Result<Pool> {
        let c = conf(extra)?;
        Ok(c.pools(&c.node_subnets()?.subnets)?.remove(0))
    }

    /// The pool ferry-ipam builds from the same keys in an `ipam` section.
    fn ipam_pool(extra: &str) -> Result<Pool> {
        let c = NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"x","ipam":{{"type":"ferry-ipam"{extra}}}}}"#)
                .as_bytes(),
        )?;
        Ok(IpamConf::parse(c.ipam().unwrap())?.pools()?.remove(0))
    }

    #[test]
    fn defaults() {
        let c = conf("").unwrap();
        assert_eq!(c.range.subnet_file, Some(PathBuf::from(ferry_fs::paths::SUBNET_FILE)));
        assert_eq!(c.range.data_dir, PathBuf::from(ferry_fs::paths::IPAM_DATA_DIR));
        assert!(c.range.subnet.is_none() && c.ipam_type.is_none() && c.routes.is_none());
        let c = conf(r#","subnet":"10.1.0.0/24""#).unwrap();
        assert_eq!(c.range.subnet_file, None, "a static subnet needs no file");
    }

    #[test]
    fn full_config() {
        let c = conf(r#","subnet":"10.244.1.0/24","mtu":1400,"dataDir":"/tmp/x","rangeStart":"10.244.1.10","exclude":["10.244.1.20-10.244.1.29","10.244.1.40"],"routes":[{"dst":"10.0.0.0/8"}],"dns":{"nameservers":["1.1.1.1"]}"#).unwrap();
        let n = c.node_subnets().unwrap();
        let subnets = vec!["10.244.1.0/24".parse().unwrap()];
        assert_eq!(n, NodeSubnets { subnets, mtu: Some(1400) });
        let p = c.pool(n.subnets[0]).unwrap();
        assert_eq!((p.start.to_string(), p.exclude.len()), ("10.244.1.10".into(), 2));
        assert_eq!(c.range.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.routes.unwrap()[0].dst.to_string(), "10.0.0.0/8");
        assert_eq!(c.dns.nameservers, vec!["1.1.1.1"]);
    }

    #[test]
    fn bad_configs_are_code_7_with_hints() {
        // Shape errors at parse time; address errors when the pool is built (ADD, STATUS).
        for (extra, needle) in [
            (r#","subnet":5"#, "must be a string"),
            (r#","mtu":"big""#, "mtu"),
            (r#","mtu":10"#, "mtu"),
            (r#","dataDir":"relative""#, "absolute"),
            (r#","subnetFile":"relative""#, "absolute"),
            (r#","subnet":"10.0.0.0/24","subnetFile":"/x""#, "not both"),
            (r#","exclude":"x""#, "exclude"),
            (r#","routes":[{"dst":"nope"}]"#, "routes"),
            (r#","ipam":{}"#, "ipam"),
        ] {
            let e = conf(extra).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{extra}");
            assert!(e.msg.contains(needle), "{extra}: {}", e.msg);
        }
        for (extra, needle) in [
            (r#","subnet":"10.244.9.0/33""#, "not a CIDR"),
            (r#","subnet":"banana""#, "not a CIDR"),
            (r#","subnet":"10.0.0.0/31""#, "too small"),
            (r#","subnet":"10.0.0.0/24","rangeStart":"x""#, "rangeStart"),
            (r#","subnet":"10.0.0.0/24","rangeStart":"fd00::1""#, "rangeStart"),
            (r#","subnet":"10.0.0.0/24","exclude":["x"]"#, "exclude"),
        ] {
            let e = ferry_pool(extra).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{extra}");
            assert!(e.msg.contains(needle), "{extra}: {}", e.msg);
        }
    }

    #[test]
    fn garbled_subnet_defers_the_error_so_del_and_gc_still_work() {
        for extra in [r#","subnet":"banana""#, r#","subnet":"10.0.0.0/31","rangeEnd":"junk""#] {
            let c = conf(&format!(r#"{extra},"dataDir":"/tmp/d""#)).expect("parses");
            assert_eq!(c.range.data_dir, PathBuf::from("/tmp/d"), "DEL finds the store");
            let e = c.node_subnets().and_then(|n| c.pools(&n.subnets)).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{extra}");
        }
    }

    #[test]
    fn ferry_and_ferry_ipam_read_the_address_keys_alike() {
        for extra in [
            r#","subnet":"10.9.0.0/24","rangeStart":"""#,
            r#","subnet":"10.9.0.0/24","rangeStart":"","rangeEnd":"","gateway":"","dataDir":"""#,
            r#","subnet":"10.9.0.0/24","rangeStart":null"#,
            r#","subnet":"10.9.0.0/24","rangeStart":" 10.9.0.10 ","rangeEnd":"10.9.0.20""#,
            r#","subnet":"10.9.0.1/24","gateway":"10.9.0.254","exclude":["10.9.0.2-10.9.0.4",["10.9.0.9","10.9.0.9"],"10.9.0.16/30"]"#,
            r#","subnet":"fd00:9::/64","rangeStart":"fd00:9::100""#,
            r#","subnet":"10.9.0.0/24","rangeStart":"x""#,
            r#","subnet":"10.9.0.0/24","rangeStart":"10.9.1.1""#,
            r#","subnet":"10.9.0.0/24","rangeStart":"fd00::1""#,
            r#","subnet":"10.9.0.0/24","gateway":"10.9.0.0""#,
            r#","subnet":"10.9.0.0/24","exclude":["10.9.0.5-"]"#,
            r#","subnet":"10.9.0.0/24","exclude":"10.9.0.5""#,
            r#","subnet":"10.9.0.0/24","rangeStart":5"#,
            r#","subnet":"banana""#,
            r#","subnet":"10.9.0.0/31""#,
            r#","subnet":"10.9.0.0/24","subnetFile":"/x""#,
            r#","subnet":"10.9.0.0/24","dataDir":"rel""#,
        ] {
            match (ferry_pool(extra), ipam_pool(extra)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{extra}"),
                (Err(a), Err(b)) => assert_eq!(a.code, b.code, "{extra}: {} vs {}", a.msg, b.msg),
                (a, b) => panic!("{extra}: ferry {a:?} but ferry-ipam {b:?}"),
            }
        }
        let p = ferry_pool(r#","subnet":"10.9.0.0/24","rangeStart":"""#).unwrap();
        assert_eq!(p.start.to_string(), "10.9.0.1", "an empty rangeStart means unset");
        // The one intended difference: with neither key, ferry reads ferryd's subnet file.
        let none = conf(r#","subnet":"""#).unwrap();
        assert_eq!(none.range.subnet_file.unwrap().to_str(), Some(ferry_fs::paths::SUBNET_FILE));
        assert_eq!(ipam_pool(r#","subnet":"""#).unwrap_err().code.as_u32(), 7);
    }

    #[test]
    fn subnet_file_missing_is_try_again_and_garbled_is_config() {
        let dir = std::env::temp_dir().join(format!("ferry-conf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("subnet.env");
        let c = conf(&format!(r#","subnetFile":"{}""#, f.display())).unwrap();
        assert_eq!(c.node_subnets().unwrap_err().code.as_u32(), 11);
        std::fs::write(&f, "garbage").unwrap();
        assert_eq!(c.node_subnets().unwrap_err().code.as_u32(), 7);
        std::fs::write(&f, "FLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n").unwrap();
        let n = c.node_subnets().unwrap();
        assert_eq!(n.subnets, vec!["10.244.7.1/24".parse::<IpNetwork>().unwrap()]);
        assert_eq!((n.mtu, n.families()), (Some(1450), (true, false)));
        // Dual stack: both, IPv4 first whatever the file's order.
        std::fs::write(&f, "FLANNEL_IPV6_SUBNET=fd00:7::/64\nFLANNEL_SUBNET=10.244.7.1/24\n")
            .unwrap();
        let n = c.node_subnets().unwrap();
        let s: Vec<String> = n.subnets.iter().map(|s| s.to_string()).collect();
        assert_eq!(s, ["10.244.7.1/24", "fd00:7::/64"]);
        assert_eq!(n.families(), (true, true));
        let pools = c.pools(&n.subnets).unwrap();
        assert_eq!(pools[1].gateway, Some("fd00:7::1".parse().unwrap()));
        // IPv6 only.
        std::fs::write(&f, "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:7::/64\n")
            .unwrap();
        assert_eq!(c.node_subnets().unwrap().families(), (false, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
