//! The cluster network config: defaults, validation, and the subnet range it hands out.

use crate::store::{Backend, NetworkConfig};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// A validated network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    /// First and last subnet (network addresses) to hand out, inclusive.
    pub min: Ipv4Addr,
    pub max: Ipv4Addr,
    pub mode: Mode,
}

/// How peers are reached: the config's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A route per peer via its public IP; peers off this node's segment are unreachable.
    HostGw,
    /// flannel's vxlan backend: peers reached through a VXLAN device, or, with
    /// `DirectRouting`, by a direct route when their public IP is on-link.
    Vxlan(VxlanConf),
}

/// The vxlan backend's settings (flannel's keys and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConf {
    /// `VNI`, default 1.
    pub vni: u32,
    /// `Port`, default 8472 (the Linux VXLAN port flannel uses by default).
    pub port: u16,
    /// `DirectRouting`, default false (flannel's default): on-link peers get a plain route.
    pub direct_routing: bool,
}

/// VXLAN header overhead over an IPv4 underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

impl Mode {
    /// The lease `BackendType` this node writes.
    pub fn backend_type(&self) -> &'static str {
        match self {
            Mode::HostGw => "host-gw",
            Mode::Vxlan(_) => "vxlan",
        }
    }

    /// What encapsulation costs the pods' MTU.
    pub fn mtu_overhead(&self) -> u32 {
        match self {
            Mode::HostGw => 0,
            Mode::Vxlan(_) => VXLAN_OVERHEAD,
        }
    }
}

/// The network config this node asks for (`--network`, `--subnet-*`), before the store has its
/// say.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequest {
    pub network: Ipv4Network,
    pub subnet_len: Option<u8>,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    /// Any of the above was given explicitly (a mismatch with the store is then logged).
    pub explicit: bool,
    /// Refuse to start when the stored config differs (`--strict-network`).
    pub strict: bool,
    /// The backend written when this node stores the config (`--backend`).
    pub backend: Backend,
}

/// The config this node would store: what it asks for, with `"Backend":{"Type":"host-gw"}`
/// written out (flannel reads a config without `Backend` as udp).
pub fn desired(r: &NetworkRequest) -> NetworkConfig {
    NetworkConfig {
        network: r.network,
        subnet_len: r.subnet_len.unwrap_or_else(|| default_subnet_len(r.network)),
        subnet_min: r.subnet_min,
        subnet_max: r.subnet_max,
        backend: r.backend.clone(),
    }
}

/// The mode a config's `Backend` asks for, if Ferry speaks it. The type is compared
/// case-insensitively: flannel lower-cases the config's type before it looks the backend up
/// (leases are compared exactly, see [`crate::peers`]).
pub fn mode(backend: &Backend) -> Result<Mode, String> {
    if backend.kind.eq_ignore_ascii_case("host-gw") {
        return Ok(Mode::HostGw);
    }
    if !backend.kind.eq_ignore_ascii_case("vxlan") {
        return Err(backend_error(backend));
    }
    let vni = backend.vni.unwrap_or(1);
    if !(1..(1 << 24)).contains(&vni) {
        return Err(format!("Backend.VNI {vni} is not a VXLAN network identifier (1 to 16777215)"));
    }
    let port = match backend.port {
        None | Some(0) => 8472,
        Some(p) => p,
    };
    let direct_routing = backend.direct_routing.unwrap_or(false);
    Ok(Mode::Vxlan(VxlanConf { vni, port, direct_routing }))
}

/// Why a config's backend cannot be honoured, with how to fix it.
fn backend_error(backend: &Backend) -> String {
    let what = match backend.kind.as_str() {
        "" => "an empty backend type".to_string(),
        "udp" => "backend type \"udp\" (also what flannel reads when \"Backend\" is absent)".into(),
        k => format!("backend type {k:?}"),
    };
    format!(
        "{what} is not supported: ferryd implements host-gw and vxlan; set \"Backend\":{{\"Type\":\"host-gw\"}} \
         (or {{\"Type\":\"vxlan\",\"DirectRouting\":true}} for peers beyond this node's segment) in the \
         stored network config (flannel's nodes must use the same backend)"
    )
}

/// Defaults as flannel fills them: SubnetLen 24 for a /22 or larger network, else prefix + 2.
pub fn default_subnet_len(network: Ipv4Network) -> u8 {
    if network.prefix() <= 22 {
        24
    } else {
        network.prefix() + 2
    }
}

/// Check `cfg` and fill in the defaults; the error says what cannot be honoured and why.
pub fn validate(cfg: &NetworkConfig) -> Result<Net, String> {
    let network = cfg.network;
    if network.ip() != network.network() {
        return Err(format!("network {network} has host bits set"));
    }
    let mode = mode(&cfg.backend)?;
    let len = if cfg.subnet_len == 0 { default_subnet_len(network) } else { cfg.subnet_len };
    if len <= network.prefix() {
        return Err(format!(
            "subnet length /{len} must be longer than the network's /{} ({network})",
            network.prefix()
        ));
    }
    if len > 30 {
        return Err(format!(
            "subnet length /{len} is too long: at most /30 (a node subnet needs room for pods)"
        ));
    }
    let size = 1u32 << (32 - len);
    let first = u32::from(network.network());
    let last = u32::from(network.broadcast()) - (size - 1);
    let check = |what: &str, ip: Option<Ipv4Addr>, default: u32| -> Result<u32, String> {
        let Some(ip) = ip else { return Ok(default) };
        let v = u32::from(ip);
        if !network.contains(ip) {
            return Err(format!("{what} {ip} is outside the network {network}"));
        }
        if (v - first) % size != 0 {
            return Err(format!("{what} {ip} is not aligned to the subnet length /{len}"));
        }
        Ok(v)
    };
    // Skip the first subnet by default, as flannel does: no node gets the network's own address.
    let min = check("SubnetMin", cfg.subnet_min, if last > first { first + size } else { first })?;
    let max = check("SubnetMax", cfg.subnet_max, last)?;
    if min > max {
        return Err(format!(
            "SubnetMin {} is above SubnetMax {}",
            Ipv4Addr::from(min),
            Ipv4Addr::from(max)
        ));
    }
    Ok(Net { network, subnet_len: len, min: min.into(), max: max.into(), mode })
}

/// Node-specific checks: the node's own address must not be inside the pod network.
pub fn check_node(net: &Net, public_ip: Ipv4Addr) -> Result<(), String> {
    if net.network.contains(public_ip) {
        return Err(format!(
            "this node's address {public_ip} is inside the cluster network {}: node and pod addresses \
             would overlap; pick another --network",
            net.network
        ));
    }
    Ok(())
}

impl Net {
    pub fn subnet_size(&self) -> u32 {
        1u32 << (32 - self.subnet_len)
    }

    /// Whether `s` is a subnet this config could hand out (right length, inside the range).
    pub fn in_range(&self, s: Ipv4Network) -> bool {
        s.prefix() == self.subnet_len
            && s.ip() == s.network()
            && u32::from(s.network()) >= u32::from(self.min)
            && u32::from(s.network()) <= u32::from(self.max)
    }

    /// Every subnet in [min, max], in order.
    pub fn candidates(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        let size = self.subnet_size();
        let (lo, hi) = (u32::from(self.min), u32::from(self.max));
        (0..=(hi - lo) / size)
            .map(move |i| Ipv4Network::new((lo + i * size).into(), self.subnet_len).unwrap())
    }

    /// The same network config as stored, for comparisons and logs.
    pub fn describe(&self) -> String {
        format!(
            "network {} subnets /{} from {} to {}",
            self.network, self.subnet_len, self.min, self.max
        )
    }
}

/// Address interval [first, last] of a CIDR.
pub fn span(n: Ipv4Network) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    let ((a0, a1), (b0, b1)) = (span(a), span(b));
    a0 <= b1 && b0 <= a1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config; fixtures without `Backend` get host-gw (absent means udp, see `backend_*`).
    fn cfg(json: &str) -> NetworkConfig {
        let mut c: NetworkConfig = serde_json::from_str(json).unwrap();
        if !json.contains("Backend") {
            c.backend = Backend::host_gw();
        }
        c
    }

    #[test]
    fn defaults_skip_the_first_subnet() {
        let n = validate(&cfg(r#"{"Network":"10.244.0.0/16"}"#)).unwrap();
        assert_eq!(n.subnet_len, 24);
        assert_eq!(n.min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(n.candidates().count(), 255);
        let small = validate(&cfg(r#"{"Network":"10.0.0.0/26"}"#)).unwrap();
        assert_eq!(small.subnet_len, 28);
        assert_eq!(
            small.candidates().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/28"]
        );
    }

    #[test]
    fn explicit_range() {
        let n = validate(&cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0"}"#)).unwrap();
        assert_eq!(n.candidates().count(), 3);
        assert!(n.in_range("10.244.11.0/24".parse().unwrap()));
        assert!(!n.in_range("10.244.13.0/24".parse().unwrap()));
        assert!(!n.in_range("10.244.11.0/25".parse().unwrap()));
    }

    #[test]
    fn refuses_what_cannot_be_honoured() {
        for (json, needle) in [
            (r#"{"Network":"10.244.0.0/16","SubnetLen":16}"#, "longer than"),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#, "longer than"),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#, "at most /30"),
            (r#"{"Network":"10.0.0.0/30"}"#, "at most /30"),
            (r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#, "outside"),
            (r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.7"}"#, "not aligned"),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
                "above",
            ),
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#, "not supported"),
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#, "VNI 0"),
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#, "VNI"),
        ] {
            let e = validate(&cfg(json)).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let n = validate(&cfg(r#"{"Network":"198.18.0.0/16"}"#)).unwrap();
        assert!(check_node(&n, "198.18.0.11".parse().unwrap())
            .unwrap_err()
            .contains("inside the cluster network"));
        assert!(check_node(&n, "192.0.2.7".parse().unwrap()).is_ok());
    }

    #[test]
    fn backend_as_flannel_reads_it() {
        let parse = |j: &str| serde_json::from_str::<NetworkConfig>(j).unwrap();
        for (json, needle) in [
            (r#"{"Network":"10.244.0.0/16"}"#, "\"udp\" (also what flannel reads when"),
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#, "\"udp\""),
            (r#"{"Network":"10.244.0.0/16","Backend":null}"#, "empty backend type"),
            (r#"{"Network":"10.244.0.0/16","Backend":{}}"#, "empty backend type"),
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#, "\"wireguard\""),
        ] {
            let e = validate(&parse(json)).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
            assert!(e.contains(r#"set "Backend":{"Type":"host-gw"}"#), "{json}: {e}");
        }
        // flannel lower-cases the config's type: HOST-GW is host-gw.
        for t in ["host-gw", "HOST-GW", "Host-Gw"] {
            let j = format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{t}"}}}}"#);
            assert_eq!(validate(&parse(&j)).unwrap().mode, Mode::HostGw, "{t}");
        }
    }

    #[test]
    fn vxlan_takes_flannels_keys_and_defaults() {
        let parse = |j: &str| validate(&serde_json::from_str::<NetworkConfig>(j).unwrap());
        let n = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"VXLAN"}}"#).unwrap();
        let defaults = VxlanConf { vni: 1, port: 8472, direct_routing: false };
        assert_eq!(n.mode, Mode::Vxlan(defaults));
        assert_eq!(n.mode.mtu_overhead(), 50);
        assert_eq!(n.mode.backend_type(), "vxlan");
        let j = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":true,"GBP":false}}"#;
        let want = VxlanConf { vni: 4096, port: 4789, direct_routing: true };
        assert_eq!(parse(j).unwrap().mode, Mode::Vxlan(want));
        // What `--backend vxlan` stores reads back as vxlan with direct routes.
        let mut c =
            serde_json::from_str::<NetworkConfig>(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        c.backend = Backend::vxlan_direct();
        let back: NetworkConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert!(matches!(validate(&back).unwrap().mode, Mode::Vxlan(v) if v.direct_routing));
    }

    #[test]
    fn the_written_config_names_host_gw() {
        let r = NetworkRequest {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: None,
            subnet_min: None,
            subnet_max: None,
            explicit: false,
            strict: false,
            backend: Backend::host_gw(),
        };
        let json = serde_json::to_string(&desired(&r)).unwrap();
        assert_eq!(
            json,
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#
        );
        let r = NetworkRequest { backend: Backend::vxlan_direct(), ..r };
        let json = serde_json::to_string(&desired(&r)).unwrap();
        assert_eq!(
            json,
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","DirectRouting":true}}"#
        );
    }

    #[test]
    fn overlap_math() {
        let a: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        assert!(overlaps(a, "10.244.3.0/24".parse().unwrap()));
        assert!(overlaps("10.244.3.0/24".parse().unwrap(), a));
        assert!(!overlaps("10.244.3.0/24".parse().unwrap(), "10.244.4.0/24".parse().unwrap()));
    }
}
