//! Node-side state: the uplink (public IP + MTU), the subnet file, the CNI conflist, sysctls.
//! Every file is written atomically (temp + rename) and only when its content changes.

use ferry_cni::subnet_env::SubnetEnv;
use ferry_netlink::{Netlink, RT_TABLE_MAIN};
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::json;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Largest subnet file or conflist read back (both are a few hundred bytes).
const SMALL_FILE_CAP: u64 = 64 << 10;

/// The files ferryd keeps on the node: the subnet file and the CNI conflist (and what it says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    pub subnet_file: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_conf_name: String,
    pub cni_network_name: String,
    pub cni_data_dir: PathBuf,
    pub cni_portmap: bool,
    /// A `host-local` data directory (flannel's pods) whose addresses ferry must not hand out.
    pub cni_exclude_host_local: Option<PathBuf>,
}

impl NodeFiles {
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.cni_conf_name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub public_ip: Ipv4Addr,
    pub iface: String,
    pub mtu: u32,
}

/// Find the node's public IP and uplink: `--public-ip`, else the first IPv4 address of `--iface`,
/// else of the interface holding the default route, else of the only interface with an address.
pub fn find_uplink(
    nl: &mut Netlink,
    public_ip: Option<Ipv4Addr>,
    iface: Option<&str>,
) -> Result<Uplink, String> {
    let addrs = nl.addresses(None).map_err(|e| format!("list addresses: {e}"))?;
    let index = uplink_index(nl, &addrs, public_ip, iface)?;
    let l = index.and_then(|i| nl.link_by_index(i).ok().flatten());
    let ip = match public_ip {
        Some(ip) => ip,
        None => {
            let i = index.ok_or("cannot find the uplink interface: pass --iface or --public-ip")?;
            let v4 = addrs.iter().find_map(|(idx, a)| match a {
                IpNetwork::V4(n) if *idx == i && !n.ip().is_loopback() => Some(n.ip()),
                _ => None,
            });
            v4.ok_or_else(|| {
                format!(
                    "interface {} has no IPv4 address: pass --public-ip",
                    l.as_ref().map(|l| l.name.as_str()).unwrap_or("?")
                )
            })?
        }
    };
    Ok(Uplink {
        public_ip: ip,
        iface: l.as_ref().map(|l| l.name.clone()).unwrap_or_default(),
        mtu: l.map(|l| l.mtu).filter(|m| *m > 0).unwrap_or(1500),
    })
}

/// The uplink's interface index: `--iface`, else the interface holding `--public-ip`, else the
/// default route's, else the only interface with an IPv4 address.
fn uplink_index(
    nl: &mut Netlink,
    addrs: &[(u32, IpNetwork)],
    public_ip: Option<Ipv4Addr>,
    iface: Option<&str>,
) -> Result<Option<u32>, String> {
    if let Some(name) = iface {
        let l = nl.link_by_name(name).map_err(|e| format!("look up --iface {name}: {e}"))?;
        return Ok(Some(l.ok_or_else(|| format!("--iface {name}: no such interface"))?.index));
    }
    if let Some(ip) = public_ip {
        let found = addrs.iter().find(|(_, a)| a.ip() == std::net::IpAddr::V4(ip)).map(|(i, _)| *i);
        if found.is_none() {
            warn!("--public-ip {ip} is not assigned to any interface here (NAT?); using the default-route interface for the MTU");
        }
        return Ok(found.or_else(|| default_route_oif(nl)));
    }
    if let Some(i) = default_route_oif(nl) {
        return Ok(Some(i));
    }
    let mut cands: Vec<u32> = addrs
        .iter()
        .filter(|(_, a)| matches!(a, IpNetwork::V4(n) if !n.ip().is_loopback() && !n.ip().is_link_local()))
        .map(|(i, _)| *i)
        .collect();
    cands.dedup();
    match cands.as_slice() {
        [one] => Ok(Some(*one)),
        [] => Err("no default route and no interface with an IPv4 address: pass --iface or --public-ip".into()),
        _ => Err("no default route and several interfaces with IPv4 addresses: pass --iface or --public-ip".into()),
    }
}

fn default_route_oif(nl: &mut Netlink) -> Option<u32> {
    let routes = nl.routes(false, RT_TABLE_MAIN, None).ok()?;
    routes.iter().find(|r| r.dst.prefix() == 0).and_then(|r| r.oif)
}

/// The subnet file's content for this node's lease.
pub fn subnet_env(network: Ipv4Network, subnet: Ipv4Network, mtu: u32, ipmasq: bool) -> String {
    let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    SubnetEnv {
        network: Some(IpNetwork::V4(network)),
        subnet: Some(IpNetwork::V4(
            Ipv4Network::new(first, subnet.prefix()).expect("prefix from a network"),
        )),
        ipv6_network: None,
        ipv6_subnet: None,
        mtu: Some(mtu),
        ipmasq: Some(ipmasq),
    }
    .render()
}

/// The subnet a previous run wrote into the subnet file, if it belongs to `network`.
pub fn remembered_subnet(path: &Path, network: Ipv4Network) -> Option<Ipv4Network> {
    let text = ferry_fs::read_to_string_capped(path, SMALL_FILE_CAP).ok()?;
    let env = SubnetEnv::parse(&text).ok()?;
    let IpNetwork::V4(s) = env.subnet? else { return None };
    if let Some(IpNetwork::V4(n)) = env.network {
        if n != network {
            return None;
        }
    }
    let s = Ipv4Network::new(s.network(), s.prefix()).ok()?;
    network.contains(s.network()).then_some(s)
}

/// The CNI network config list ferryd installs.
pub fn conflist(a: &NodeFiles) -> String {
    conflist_excluding(a, &[])
}

/// The conflist, with `exclude` entries (addresses ferry must not hand out) when there are any.
pub fn conflist_excluding(a: &NodeFiles, exclude: &[String]) -> String {
    let mut ferry = json!({
        "type": "ferry",
        "subnetFile": a.subnet_file,
        "dataDir": a.cni_data_dir,
    });
    if !exclude.is_empty() {
        ferry["exclude"] = json!(exclude);
    }
    let mut plugins = vec![ferry];
    if a.cni_portmap {
        plugins
            .push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
    let v = json!({"cniVersion": "1.0.0", "name": a.cni_network_name, "plugins": plugins});
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

/// Write `path` (mode 0644, creating its directory) atomically unless it already holds
/// `content`. Returns whether it was written. The temp file is a dotfile ending in `.tmp`, which
/// CNI runtimes ignore.
pub fn write_if_changed(path: &Path, content: &str) -> io::Result<bool> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .and_then(|()| ferry_fs::write_if_changed(path, content.as_bytes(), 0o644))
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

/// Remove the conflist if it is one ferryd wrote (its first plugin is `ferry`). Returns whether
/// it was removed.
pub fn remove_conflist(path: &Path) -> io::Result<bool> {
    let Ok(text) = ferry_fs::read_to_string_capped(path, SMALL_FILE_CAP) else { return Ok(false) };
    let ours = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["plugins"][0]["type"].as_str().map(|t| t == "ferry"))
        .unwrap_or(false);
    if !ours {
        warn!("{} is not a Ferry conflist; leaving it", path.display());
        return Ok(false);
    }
    fs::remove_file(path)?;
    Ok(true)
}

/// `net.ipv4.ip_forward=1`, written only when it differs; a failed write (a read-only /proc/sys
/// in a non-privileged container) is fine when the value is already right.
pub fn enable_forwarding() -> io::Result<()> {
    ensure_sysctl("net.ipv4.ip_forward", "1")
}

pub fn ensure_sysctl(key: &str, want: &str) -> io::Result<()> {
    use ferry_netlink::sysctl;
    if sysctl::get(key).is_ok_and(|v| v.trim() == want) {
        return Ok(());
    }
    match sysctl::set(key, want) {
        Ok(()) => Ok(()),
        Err(_) if sysctl::get(key).is_ok_and(|v| v.trim() == want) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_is_flannel_format() {
        let t = subnet_env(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
            1500,
            true,
        );
        assert_eq!(t, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n");
    }

    #[test]
    fn remembers_previous_subnet_of_the_same_network() {
        let d = std::env::temp_dir().join(format!("ferryd-node-{}", std::process::id()));
        let p = d.join("subnet.env");
        assert!(write_if_changed(
            &p,
            &subnet_env(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.7.0/24".parse().unwrap(),
                1500,
                true
            )
        )
        .unwrap());
        assert!(
            !write_if_changed(&p, &fs::read_to_string(&p).unwrap()).unwrap(),
            "unchanged content is not rewritten"
        );
        assert_eq!(
            remembered_subnet(&p, "10.244.0.0/16".parse().unwrap()),
            Some("10.244.7.0/24".parse().unwrap())
        );
        assert_eq!(remembered_subnet(&p, "10.9.0.0/16".parse().unwrap()), None);
        assert_eq!(remembered_subnet(&d.join("missing"), "10.244.0.0/16".parse().unwrap()), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn conflist_names_the_subnet_file() {
        let a = NodeFiles {
            subnet_file: "/run/n1/subnet.env".into(),
            cni_portmap: true,
            ..crate::args::Args::default().files
        };
        let v: serde_json::Value = serde_json::from_str(&conflist(&a)).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "ferry");
        assert_eq!(v["plugins"][0]["type"], "ferry");
        assert_eq!(v["plugins"][0]["subnetFile"], "/run/n1/subnet.env");
        assert_eq!(v["plugins"][0]["dataDir"], "/run/ferry/ipam");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert!(v["plugins"][0].get("exclude").is_none(), "no exclude without addresses");
        let x = conflist_excluding(&a, &["10.244.7.2-10.244.7.4".into(), "10.244.7.9".into()]);
        let v: serde_json::Value = serde_json::from_str(&x).unwrap();
        assert_eq!(
            v["plugins"][0]["exclude"],
            serde_json::json!(["10.244.7.2-10.244.7.4", "10.244.7.9"])
        );
    }

    #[test]
    fn only_our_conflist_is_removed() {
        let d = std::env::temp_dir().join(format!("ferryd-conf-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let ours = d.join("10-ferry.conflist");
        let theirs = d.join("20-other.conflist");
        fs::write(&ours, conflist(&crate::args::Args::default().files)).unwrap();
        fs::write(&theirs, r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#)
            .unwrap();
        assert!(remove_conflist(&ours).unwrap());
        assert!(!remove_conflist(&theirs).unwrap());
        assert!(theirs.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
