//! Node-side state: the uplink (public IP + MTU), the subnet file, the CNI conflist, sysctls.
//! Every file is written atomically (temp + rename) and only when its content changes.

use crate::config::{is_global6, Net};
use crate::peers::Me;
use crate::store::Subnets;
use ferry_cni::subnet_env::SubnetEnv;
use ferry_netlink::{Netlink, RT_TABLE_MAIN};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::json;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// This node's IPv4 address (`None`: the uplink has none; fine in an IPv6-only cluster).
    pub public_ip: Option<Ipv4Addr>,
    /// This node's global IPv6 address (`None`: the uplink has none; fine without IPv6).
    pub public_ipv6: Option<Ipv6Addr>,
    pub iface: String,
    pub mtu: u32,
}

/// Find the node's public addresses and uplink: `--public-ip` / `--public-ipv6`, else the first
/// IPv4 / global IPv6 address of `--iface`, else of the interface holding the default route,
/// else of the only interface with an address. Which families the cluster needs is checked
/// later ([`crate::config::check_node`]): the stored config decides.
pub fn find_uplink(
    nl: &mut Netlink,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    iface: Option<&str>,
) -> Result<Uplink, String> {
    let addrs = nl.addresses(None).map_err(|e| format!("list addresses: {e}"))?;
    let index = uplink_index(nl, &addrs, public_ip, public_ipv6, iface)?;
    let l = index.and_then(|i| nl.link_by_index(i).ok().flatten());
    let on_uplink = |want: fn(&IpNetwork) -> bool| {
        addrs.iter().find(|(idx, a)| Some(*idx) == index && want(a)).map(|(_, a)| a.ip())
    };
    let v4 = public_ip.or_else(|| match on_uplink(|a| a.is_ipv4() && !a.ip().is_loopback()) {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    });
    let v6 = public_ipv6.or_else(|| {
        match on_uplink(|a| matches!(a, IpNetwork::V6(n) if is_global6(n.ip()))) {
            Some(IpAddr::V6(ip)) => Some(ip),
            _ => None,
        }
    });
    if index.is_none() && v4.is_none() && v6.is_none() {
        return Err("cannot find the uplink interface: pass --iface or --public-ip".into());
    }
    Ok(Uplink {
        public_ip: v4,
        public_ipv6: v6,
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
    public_ipv6: Option<Ipv6Addr>,
    iface: Option<&str>,
) -> Result<Option<u32>, String> {
    if let Some(name) = iface {
        let l = nl.link_by_name(name).map_err(|e| format!("look up --iface {name}: {e}"))?;
        return Ok(Some(l.ok_or_else(|| format!("--iface {name}: no such interface"))?.index));
    }
    let given = public_ip.map(IpAddr::V4).or(public_ipv6.map(IpAddr::V6));
    if let Some(ip) = given {
        let found = addrs.iter().find(|(_, a)| a.ip() == ip).map(|(i, _)| *i);
        if found.is_none() {
            warn!("public address {ip} is not assigned to any interface here (NAT?); using the default-route interface for the MTU");
        }
        return Ok(found.or_else(|| default_route_oif(nl)));
    }
    if let Some(i) = default_route_oif(nl) {
        return Ok(Some(i));
    }
    let mut cands: Vec<u32> = addrs
        .iter()
        .filter(|(_, a)| match a {
            IpNetwork::V4(n) => !n.ip().is_loopback() && !n.ip().is_link_local(),
            IpNetwork::V6(n) => is_global6(n.ip()),
        })
        .map(|(i, _)| *i)
        .collect();
    cands.sort_unstable();
    cands.dedup();
    match cands.as_slice() {
        [one] => Ok(Some(*one)),
        [] => {
            Err("no default route and no interface with an address: pass --iface or --public-ip"
                .into())
        }
        _ => Err(
            "no default route and several interfaces with addresses: pass --iface or --public-ip"
                .into(),
        ),
    }
}

/// The IPv4 default route's interface, else the IPv6 one's.
fn default_route_oif(nl: &mut Netlink) -> Option<u32> {
    [false, true].into_iter().find_map(|v6| {
        let routes = nl.routes(v6, RT_TABLE_MAIN, None).ok()?;
        routes.iter().find(|r| r.dst.prefix() == 0).and_then(|r| r.oif)
    })
}

/// The subnet file's content for this node's lease: flannel's `FLANNEL_NETWORK` /
/// `FLANNEL_SUBNET` for IPv4 and `FLANNEL_IPV6_NETWORK` / `FLANNEL_IPV6_SUBNET` for IPv6, each
/// only when its family is on (the subnet written as its first address, as flannel does).
pub fn subnet_env(me: &Me, mtu: u32, ipmasq: bool) -> String {
    let first4 = |s: Ipv4Network| {
        let ip = Ipv4Addr::from(u32::from(s.network()) + 1);
        IpNetwork::V4(Ipv4Network::new(ip, s.prefix()).expect("prefix from a network"))
    };
    let first6 = |s: Ipv6Network| {
        let ip = Ipv6Addr::from(u128::from(s.network()) + 1);
        IpNetwork::V6(Ipv6Network::new(ip, s.prefix()).expect("prefix from a network"))
    };
    SubnetEnv {
        network: me.v4.map(|m| IpNetwork::V4(m.network)),
        subnet: me.v4.map(|m| first4(m.subnet)),
        ipv6_network: me.v6.map(|m| IpNetwork::V6(m.network)),
        ipv6_subnet: me.v6.map(|m| first6(m.subnet)),
        mtu: Some(mtu),
        ipmasq: Some(ipmasq),
    }
    .render()
}

/// The subnets a previous run wrote into the subnet file, each only if it belongs to its
/// family's network in `net` (a subnet file of another network is forgotten).
pub fn remembered_subnets(path: &Path, net: &Net) -> Subnets {
    let none = Subnets { v4: None, v6: None };
    let Ok(text) = ferry_fs::read_to_string_capped(path, SMALL_FILE_CAP) else { return none };
    let Ok(env) = SubnetEnv::parse(&text) else { return none };
    let v4 = match (net.v4, env.subnet, env.network) {
        (Some(n), Some(IpNetwork::V4(s)), net_in_file) => {
            let same = !matches!(net_in_file, Some(IpNetwork::V4(f)) if f != n.network);
            Ipv4Network::new(s.network(), s.prefix())
                .ok()
                .filter(|s| same && n.network.contains(s.network()))
        }
        _ => None,
    };
    let v6 = match (net.v6, env.ipv6_subnet, env.ipv6_network) {
        (Some(n), Some(IpNetwork::V6(s)), net_in_file) => {
            let same = !matches!(net_in_file, Some(IpNetwork::V6(f)) if f != n.network);
            Ipv6Network::new(s.network(), s.prefix())
                .ok()
                .filter(|s| same && n.network.contains(s.network()))
        }
        _ => None,
    };
    Subnets { v4, v6 }
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

/// `net.ipv6.conf.all.forwarding=1` (IPv6 on), as [`enable_forwarding`].
pub fn enable_forwarding6() -> io::Result<()> {
    ensure_sysctl("net.ipv6.conf.all.forwarding", "1")
}

/// With forwarding on, the kernel ignores router advertisements on an interface whose
/// `accept_ra` is 1 (the default): an uplink configured by SLAAC would lose its address and
/// default route when they expire. `accept_ra=2` keeps accepting them; set only when it is 1
/// (0 and 2 are someone's choice). Returns whether it was changed.
pub fn keep_accepting_ra(iface: &str) -> io::Result<bool> {
    use ferry_netlink::sysctl;
    if iface.is_empty() || iface.contains('/') || iface.starts_with('.') {
        return Ok(false);
    }
    let key = format!("net/ipv6/conf/{iface}/accept_ra");
    if sysctl::get(&key)? != "1" {
        return Ok(false);
    }
    sysctl::set(&key, "2").map(|()| true)
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

    /// The IPv4 subnet a previous run wrote into the subnet file, if it belongs to `network`.
    fn remembered_subnet(path: &Path, network: Ipv4Network) -> Option<Ipv4Network> {
        let n4 =
            crate::config::Net4 { network, subnet_len: 0, min: network.ip(), max: network.ip() };
        remembered_subnets(path, &Net { v4: Some(n4), v6: None, mode: crate::config::Mode::HostGw })
            .v4
    }

    fn me4(network: &str, subnet: &str) -> Me {
        Me {
            v4: Some(crate::peers::Me4 {
                network: network.parse().unwrap(),
                subnet_len: 24,
                subnet: subnet.parse().unwrap(),
                public_ip: "198.18.0.11".parse().unwrap(),
            }),
            v6: None,
            mode: crate::config::Mode::HostGw,
        }
    }

    fn me6() -> crate::peers::Me6 {
        crate::peers::Me6 {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet_len: 64,
            subnet: "fd00:10:244:2e::/64".parse().unwrap(),
            public_ip: "fd00:198:18::11".parse().unwrap(),
        }
    }

    #[test]
    fn subnet_env_is_flannel_format() {
        let t = subnet_env(&me4("10.244.0.0/16", "10.244.7.0/24"), 1500, true);
        assert_eq!(t, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n");
        let dual = Me { v6: Some(me6()), ..me4("10.244.0.0/16", "10.244.7.0/24") };
        assert_eq!(
            subnet_env(&dual, 1500, true),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:2e::1/64\n\
             FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
        );
        let v6only = Me { v4: None, v6: Some(me6()), mode: crate::config::Mode::HostGw };
        let t = subnet_env(&v6only, 1400, false);
        assert_eq!(
            t,
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:2e::1/64\n\
             FLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n"
        );
        assert!(!t.contains("FLANNEL_NETWORK=") && !t.contains("FLANNEL_SUBNET="), "{t}");
    }

    #[test]
    fn remembers_both_families_of_the_same_networks() {
        let d = std::env::temp_dir().join(format!("ferryd-node6-{}", std::process::id()));
        let p = d.join("subnet.env");
        let dual = Me { v6: Some(me6()), ..me4("10.244.0.0/16", "10.244.7.0/24") };
        assert!(write_if_changed(&p, &subnet_env(&dual, 1500, true)).unwrap());
        let cfg = |j: &str| {
            let mut c: crate::store::NetworkConfig = serde_json::from_str(j).unwrap();
            c.backend = crate::store::Backend::host_gw();
            crate::config::validate(&c).unwrap()
        };
        let net = cfg(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        );
        let r = remembered_subnets(&p, &net);
        assert_eq!(r.v4, Some("10.244.7.0/24".parse().unwrap()));
        assert_eq!(r.v6, Some("fd00:10:244:2e::/64".parse().unwrap()));
        // Another IPv6 network: its subnet is forgotten, the IPv4 one kept.
        let other =
            cfg(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:99::/56"}"#);
        let r = remembered_subnets(&p, &other);
        assert_eq!((r.v4.is_some(), r.v6), (true, None));
        // IPv6-only: no IPv4 subnet remembered.
        let v6 = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
        let r = remembered_subnets(&p, &v6);
        assert_eq!((r.v4, r.v6.is_some()), (None, true));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn remembers_previous_subnet_of_the_same_network() {
        let d = std::env::temp_dir().join(format!("ferryd-node-{}", std::process::id()));
        let p = d.join("subnet.env");
        assert!(write_if_changed(
            &p,
            &subnet_env(&me4("10.244.0.0/16", "10.244.7.0/24"), 1500, true)
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
