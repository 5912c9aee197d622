//! Addresses the runtime asks for, from the three places the conventions put them:
//! `runtimeConfig.ips` (the `ips` capability), else `args.cni.ips` (in the config), else the
//! `IP=` key of `CNI_ARGS` (comma-separated). Each entry is `ip` or `ip/prefix`; the prefix is
//! ignored (the pool decides it).

use crate::config::NetConf;
use crate::env::CniArgs;
use crate::error::{CniError, Result};
use serde_json::Value;
use std::net::IpAddr;

fn parse_one(s: &str, from: &str) -> Result<IpAddr> {
    let t = s.trim();
    let ip = t.split_once('/').map(|(a, _)| a).unwrap_or(t);
    ip.parse()
        .map_err(|_| CniError::config(format!("requested IP {s:?} ({from}) is not an IP address")))
}

fn ip_list(v: Option<&Value>, from: &str) -> Result<Vec<IpAddr>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x.as_str() {
                Some(s) => parse_one(s, from),
                None => Err(CniError::config(format!("{from} entries must be strings, got {x}"))),
            })
            .collect(),
        Some(x) => Err(CniError::config(format!("{from} must be a list, got {x}"))),
    }
}

/// The requested addresses, from the first source that names any (see the module docs). Empty
/// when none does. A malformed entry is a config error (code 7).
pub fn requested_ips(conf: &NetConf, args: &CniArgs) -> Result<Vec<IpAddr>> {
    let rc = ip_list(conf.runtime_config("ips"), "runtimeConfig.ips")?;
    if !rc.is_empty() {
        return Ok(rc);
    }
    let cni_args = conf.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get("ips"));
    let from_args = ip_list(cni_args, "args.cni.ips")?;
    if !from_args.is_empty() {
        return Ok(from_args);
    }
    match args.arg("IP").filter(|s| !s.is_empty()) {
        None => Ok(vec![]),
        Some(s) => s
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| parse_one(x, "CNI_ARGS IP"))
            .collect(),
    }
}

/// Match `requested` addresses to the allocating pools, given as their families (`true` = IPv4),
/// in order: at most one per pool, none left over. The one answer for `ferry` and `ferry-ipam`:
/// an address no pool can serve, or two for one pool, is a config error (code 7), never ignored.
pub fn by_family(requested: &[IpAddr], pools_v4: &[bool]) -> Result<Vec<Option<IpAddr>>> {
    let mut out = vec![None; pools_v4.len()];
    for &ip in requested {
        let Some(i) = pools_v4.iter().position(|v4| *v4 == ip.is_ipv4()) else {
            return Err(CniError::config(format!(
                "requested IP {ip} matches no configured subnet's address family"
            )));
        };
        if let Some(prev) = out[i].replace(ip) {
            return Err(CniError::config(format!(
                "requested IPs {prev} and {ip}: only one per address family"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Command;

    fn conf(extra: &str) -> NetConf {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"t"{extra}}}"#);
        NetConf::parse(text.as_bytes()).unwrap()
    }

    fn args(cni_args: &str) -> CniArgs {
        CniArgs {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            args: crate::env::parse_cni_args(cni_args).unwrap(),
            path: vec![],
        }
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn sources_in_order() {
        let all = r#","runtimeConfig":{"ips":["10.0.0.1/24"]},"args":{"cni":{"ips":["10.0.0.2"]}}"#;
        assert_eq!(requested_ips(&conf(all), &args("IP=10.0.0.3")).unwrap(), ips(&["10.0.0.1"]));
        let two = r#","args":{"cni":{"ips":["10.0.0.2","fd00::2/64"]}}"#;
        let want = ips(&["10.0.0.2", "fd00::2"]);
        assert_eq!(requested_ips(&conf(two), &args("IP=10.0.0.3")).unwrap(), want);
        let got = requested_ips(&conf(""), &args("IgnoreUnknown=1;IP=10.0.0.3,fd00::3")).unwrap();
        assert_eq!(got, ips(&["10.0.0.3", "fd00::3"]));
        assert!(requested_ips(&conf(""), &args("IP=")).unwrap().is_empty());
        assert!(requested_ips(&conf(""), &args("")).unwrap().is_empty());
        let empty = r#","runtimeConfig":{"ips":[]}"#;
        assert_eq!(requested_ips(&conf(empty), &args("IP=10.0.0.3")).unwrap().len(), 1);
    }

    #[test]
    fn malformed_entries_are_code_7() {
        for (extra, cni_args) in [
            ("", "IP=junk"),
            ("", "IP=10.0.0.1,nope"),
            (r#","runtimeConfig":{"ips":"10.0.0.1"}"#, ""),
            (r#","runtimeConfig":{"ips":[5]}"#, ""),
            (r#","args":{"cni":{"ips":["x/24"]}}"#, ""),
        ] {
            let e = requested_ips(&conf(extra), &args(cni_args)).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{extra} {cni_args}");
        }
    }

    #[test]
    fn matched_to_pools_by_family() {
        let v4 = ips(&["10.0.0.3"]);
        assert_eq!(by_family(&v4, &[true]).unwrap(), vec![Some(v4[0])]);
        assert_eq!(by_family(&[], &[true, false]).unwrap(), vec![None, None]);
        let dual = ips(&["fd00::3", "10.0.0.3"]);
        assert_eq!(by_family(&dual, &[true, false]).unwrap(), vec![Some(dual[1]), Some(dual[0])]);
        for (req, pools) in [
            (ips(&["10.0.0.3", "10.0.0.4"]), vec![true]),
            (ips(&["fd00::3"]), vec![true]),
            (ips(&["10.0.0.3"]), vec![]),
        ] {
            assert_eq!(by_family(&req, &pools).unwrap_err().code.as_u32(), 7, "{req:?}");
        }
    }
}
