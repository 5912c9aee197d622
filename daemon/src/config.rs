//! The cluster network config: defaults, validation, and the subnet ranges it hands out, per
//! family (flannel's `EnableIPv4` / `EnableIPv6`, `Network` / `IPv6Network`, ...).

use crate::store::{Backend, NetworkConfig};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A validated network config: one part per enabled family (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub v4: Option<Net4>,
    pub v6: Option<Net6>,
    /// How peers are reached (the config's backend).
    pub mode: Mode,
}

/// The IPv4 part of a validated network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net4 {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    /// First and last subnet (network addresses) to hand out, inclusive.
    pub min: Ipv4Addr,
    pub max: Ipv4Addr,
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

/// The IPv6 part of a validated network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net6 {
    pub network: Ipv6Network,
    pub subnet_len: u8,
    /// First and last subnet (network addresses) to hand out, inclusive.
    pub min: Ipv6Addr,
    pub max: Ipv6Addr,
}

/// The network config this node asks for (`--network`, `--subnet-*`, `--ipv6-*`,
/// `--enable-ipv4`), before the store has its say.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequest {
    pub network: Ipv4Network,
    pub subnet_len: Option<u8>,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    /// flannel's `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// flannel's `EnableIPv6`; `None`: on when `--ipv6-network` is given.
    pub enable_ipv6: Option<bool>,
    pub ipv6_network: Option<Ipv6Network>,
    pub ipv6_subnet_len: Option<u8>,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// Any of the above was given explicitly (a mismatch with the store is then logged).
    pub explicit: bool,
    /// Refuse to start when the stored config differs (`--strict-network`).
    pub strict: bool,
    /// The backend written when this node stores the config (`--backend`).
    pub backend: Backend,
}

impl Default for NetworkRequest {
    fn default() -> Self {
        NetworkRequest {
            network: Ipv4Network::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("/16"),
            subnet_len: None,
            subnet_min: None,
            subnet_max: None,
            enable_ipv4: true,
            enable_ipv6: None,
            ipv6_network: None,
            ipv6_subnet_len: None,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            explicit: false,
            strict: false,
            backend: Backend::host_gw(),
        }
    }
}

impl NetworkRequest {
    pub fn ipv6_enabled(&self) -> bool {
        self.enable_ipv6.unwrap_or(self.ipv6_network.is_some())
    }
}

/// The config this node would store: what it asks for, with `"Backend":{"Type":"host-gw"}`
/// written out (flannel reads a config without `Backend` as udp). A family that is off gets no
/// keys but its `Enable*` switch.
pub fn desired(r: &NetworkRequest) -> NetworkConfig {
    let v4 = r.enable_ipv4;
    let v6 = r.ipv6_enabled();
    NetworkConfig {
        enable_ipv4: v4,
        network: v4.then_some(r.network),
        subnet_len: if v4 {
            r.subnet_len.unwrap_or_else(|| default_subnet_len(r.network))
        } else {
            0
        },
        subnet_min: r.subnet_min.filter(|_| v4),
        subnet_max: r.subnet_max.filter(|_| v4),
        enable_ipv6: v6,
        ipv6_network: r.ipv6_network.filter(|_| v6),
        ipv6_subnet_len: match (v6, r.ipv6_network) {
            (true, Some(n)) => r.ipv6_subnet_len.unwrap_or_else(|| default_subnet_len6(n)),
            (true, None) => r.ipv6_subnet_len.unwrap_or(0),
            _ => 0,
        },
        ipv6_subnet_min: r.ipv6_subnet_min.filter(|_| v6),
        ipv6_subnet_max: r.ipv6_subnet_max.filter(|_| v6),
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

/// flannel's IPv6 default: IPv6SubnetLen 64 for a /62 or larger network, else prefix + 2.
pub fn default_subnet_len6(network: Ipv6Network) -> u8 {
    if network.prefix() <= 62 {
        64
    } else {
        network.prefix() + 2
    }
}

/// Check `cfg` and fill in the defaults; the error says what cannot be honoured and why.
pub fn validate(cfg: &NetworkConfig) -> Result<Net, String> {
    let mode = mode(&cfg.backend)?;
    if matches!(mode, Mode::Vxlan(_)) && cfg.enable_ipv6 {
        return Err("the vxlan backend is IPv4-only in Ferry for now: use host-gw for an IPv6 or \
                    dual-stack cluster (\"Backend\":{\"Type\":\"host-gw\"})"
            .into());
    }
    if !cfg.enable_ipv4 && !cfg.enable_ipv6 {
        return Err("neither IPv4 nor IPv6 is enabled (EnableIPv4 is false and EnableIPv6 is \
                    not true): nothing to route"
            .into());
    }
    let v4 = if cfg.enable_ipv4 { Some(validate4(cfg)?) } else { None };
    let v6 = if cfg.enable_ipv6 { Some(validate6(cfg)?) } else { None };
    Ok(Net { v4, v6, mode })
}

fn validate4(cfg: &NetworkConfig) -> Result<Net4, String> {
    let Some(network) = cfg.network else {
        return Err("EnableIPv4 is on but no \"Network\" is set (set \"Network\", or \
                    \"EnableIPv4\":false for an IPv6-only cluster)"
            .into());
    };
    if network.ip() != network.network() {
        return Err(format!("network {network} has host bits set"));
    }
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
    Ok(Net4 { network, subnet_len: len, min: min.into(), max: max.into() })
}

fn validate6(cfg: &NetworkConfig) -> Result<Net6, String> {
    let Some(network) = cfg.ipv6_network else {
        return Err("EnableIPv6 is on but no \"IPv6Network\" is set".into());
    };
    if network.ip() != network.network() {
        return Err(format!("IPv6 network {network} has host bits set"));
    }
    let len =
        if cfg.ipv6_subnet_len == 0 { default_subnet_len6(network) } else { cfg.ipv6_subnet_len };
    if len <= network.prefix() {
        return Err(format!(
            "IPv6 subnet length /{len} must be longer than the IPv6 network's /{} ({network})",
            network.prefix()
        ));
    }
    if len > 126 {
        return Err(format!(
            "IPv6 subnet length /{len} is too long: at most /126 (a node subnet needs room for pods)"
        ));
    }
    let host = 128 - u32::from(len);
    let size = 1u128 << host;
    let first = u128::from(network.network());
    let last = u128::from(network.broadcast()) - (size - 1);
    let check = |what: &str, ip: Option<Ipv6Addr>, default: u128| -> Result<u128, String> {
        let Some(ip) = ip else { return Ok(default) };
        let v = u128::from(ip);
        if !network.contains(ip) {
            return Err(format!("{what} {ip} is outside the IPv6 network {network}"));
        }
        if (v - first) % size != 0 {
            return Err(format!("{what} {ip} is not aligned to the IPv6 subnet length /{len}"));
        }
        Ok(v)
    };
    let min = check(
        "IPv6SubnetMin",
        cfg.ipv6_subnet_min,
        if last > first { first + size } else { first },
    )?;
    let max = check("IPv6SubnetMax", cfg.ipv6_subnet_max, last)?;
    if min > max {
        return Err(format!(
            "IPv6SubnetMin {} is above IPv6SubnetMax {}",
            Ipv6Addr::from(min),
            Ipv6Addr::from(max)
        ));
    }
    Ok(Net6 { network, subnet_len: len, min: min.into(), max: max.into() })
}

/// Node-specific checks: each enabled family needs an address of this node (its IPv6 one a
/// global one, on the uplink), and that address must not be inside the pod network.
pub fn check_node(
    net: &Net,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<(), String> {
    if let Some(n) = &net.v4 {
        let Some(ip) = public_ip else {
            return Err("IPv4 is enabled but this node has no IPv4 address on its uplink: pass \
                        --public-ip or --iface"
                .into());
        };
        if n.network.contains(ip) {
            return Err(format!(
                "this node's address {ip} is inside the cluster network {}: node and pod \
                 addresses would overlap; pick another --network",
                n.network
            ));
        }
    }
    if let Some(n) = &net.v6 {
        let Some(ip) = public_ipv6 else {
            return Err(
                "IPv6 is enabled (EnableIPv6) but this node has no global IPv6 address on \
                        its uplink: add one, or pass --public-ipv6 or --iface"
                    .into(),
            );
        };
        if !is_global6(ip) {
            return Err(format!("this node's IPv6 address {ip} is not a global unicast address"));
        }
        if n.network.contains(ip) {
            return Err(format!(
                "this node's IPv6 address {ip} is inside the IPv6 cluster network {}: node and \
                 pod addresses would overlap; pick another --ipv6-network",
                n.network
            ));
        }
    }
    Ok(())
}

/// A global unicast IPv6 address (ULA included): not unspecified, loopback, multicast,
/// link-local or IPv4-mapped.
pub fn is_global6(ip: Ipv6Addr) -> bool {
    let s0 = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s0 & 0xffc0) == 0xfe80
        || ip.to_ipv4_mapped().is_some())
}

impl Net {
    /// Each enabled family's network config, for logs and comparisons.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = &self.v4 {
            parts.push(n.describe());
        }
        if let Some(n) = &self.v6 {
            parts.push(n.describe());
        }
        parts.join("; ")
    }
}

impl Net4 {
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

impl Net6 {
    pub fn subnet_size(&self) -> u128 {
        1u128 << (128 - u32::from(self.subnet_len))
    }

    /// Whether `s` is an IPv6 subnet this config could hand out.
    pub fn in_range(&self, s: Ipv6Network) -> bool {
        s.prefix() == self.subnet_len
            && s.ip() == s.network()
            && u128::from(s.network()) >= u128::from(self.min)
            && u128::from(s.network()) <= u128::from(self.max)
    }

    /// Every subnet in [min, max], in order (lazily: a /48 has 65,536 /64s).
    pub fn candidates(&self) -> impl Iterator<Item = Ipv6Network> + '_ {
        let size = self.subnet_size();
        let (lo, hi) = (u128::from(self.min), u128::from(self.max));
        (0..=(hi - lo) / size)
            .map(move |i| Ipv6Network::new((lo + i * size).into(), self.subnet_len).unwrap())
    }

    pub fn describe(&self) -> String {
        format!(
            "IPv6 network {} subnets /{} from {} to {}",
            self.network, self.subnet_len, self.min, self.max
        )
    }
}

/// Address interval [first, last] of a CIDR.
pub fn span(n: Ipv4Network) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

/// Address interval [first, last] of an IPv6 CIDR.
pub fn span6(n: Ipv6Network) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    let ((a0, a1), (b0, b1)) = (span(a), span(b));
    a0 <= b1 && b0 <= a1
}

pub fn overlaps6(a: Ipv6Network, b: Ipv6Network) -> bool {
    let ((a0, a1), (b0, b1)) = (span6(a), span6(b));
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
        let n = validate(&cfg(r#"{"Network":"10.244.0.0/16"}"#)).unwrap().v4.unwrap();
        assert_eq!(n.subnet_len, 24);
        assert_eq!(n.min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(n.candidates().count(), 255);
        let small = validate(&cfg(r#"{"Network":"10.0.0.0/26"}"#)).unwrap().v4.unwrap();
        assert_eq!(small.subnet_len, 28);
        assert_eq!(
            small.candidates().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/28"]
        );
    }

    #[test]
    fn explicit_range() {
        let n = validate(&cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0"}"#)).unwrap().v4.unwrap();
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
        assert!(check_node(&n, Some("198.18.0.11".parse().unwrap()), None)
            .unwrap_err()
            .contains("inside the cluster network"));
        assert!(check_node(&n, Some("192.0.2.7".parse().unwrap()), None).is_ok());
        assert!(check_node(&n, None, None).unwrap_err().contains("no IPv4 address"));
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
        let r = NetworkRequest::default();
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
    fn the_written_config_names_each_family() {
        let v6: Ipv6Network = "fd00:10:244::/56".parse().unwrap();
        let dual = NetworkRequest { ipv6_network: Some(v6), ..NetworkRequest::default() };
        assert_eq!(
            serde_json::to_string(&desired(&dual)).unwrap(),
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#
        );
        let only6 = NetworkRequest { enable_ipv4: false, ..dual };
        let json = serde_json::to_string(&desired(&only6)).unwrap();
        assert_eq!(
            json,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#
        );
        // flannel's reading of it: EnableIPv4 defaults to true, so it must be written false.
        let back: NetworkConfig = serde_json::from_str(&json).unwrap();
        let n = validate(&back).unwrap();
        assert!(n.v4.is_none());
        assert_eq!(n.v6.unwrap().subnet_len, 64);
    }

    #[test]
    fn ipv6_defaults_and_range_as_flannel() {
        let n = validate(&cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        ))
        .unwrap();
        assert!(n.v4.is_none());
        let n6 = n.v6.unwrap();
        assert_eq!(n6.subnet_len, 64);
        assert_eq!(
            n6.min,
            "fd00:10:244:1::".parse::<Ipv6Addr>().unwrap(),
            "the first subnet is skipped"
        );
        assert_eq!(n6.max, "fd00:10:244:ff::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n6.candidates().count(), 255);
        assert!(n6.in_range("fd00:10:244:2e::/64".parse().unwrap()));
        assert!(!n6.in_range("fd00:10:244:2e::/80".parse().unwrap()));
        assert!(!n6.in_range("fd00:10:245::/64".parse().unwrap()));
        let small = validate(&cfg(
            r#"{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/120"}"#,
        ))
        .unwrap();
        assert_eq!(small.v6.unwrap().subnet_len, 122, "prefix + 2 below a /62");
        assert!(small.v4.is_some());
        // A huge range stays lazy.
        let big = validate(&cfg(
            r#"{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/16"}"#,
        ))
        .unwrap();
        assert_eq!(big.v6.unwrap().candidates().take(3).count(), 3);
    }

    #[test]
    fn ipv6_refuses_what_cannot_be_honoured() {
        for (json, needle) in [
            (r#"{"EnableIPv4":false}"#, "neither IPv4 nor IPv6"),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":false,"IPv6Network":"fd00::/48"}"#,
                "neither IPv4 nor IPv6",
            ),
            (r#"{"EnableIPv6":true,"Network":"10.1.0.0/16"}"#, "no \"IPv6Network\""),
            (r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::1/48"}"#, "host bits"),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetLen":48}"#,
                "longer than",
            ),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#,
                "at most /126",
            ),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}"#,
                "outside",
            ),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:7::1"}"#,
                "not aligned",
            ),
            (
                r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::"}"#,
                "above",
            ),
            (r#"{"EnableIPv4":true}"#, "no \"Network\""),
        ] {
            let e = validate(&cfg(json)).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
        let n = validate(&cfg(
            r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00:10::/48"}"#,
        ))
        .unwrap();
        let e = check_node(&n, Some("192.0.2.7".parse().unwrap()), None).unwrap_err();
        assert!(e.contains("no global IPv6 address"), "{e}");
        let e = check_node(&n, None, Some("fd00:10::5".parse().unwrap())).unwrap_err();
        assert!(e.contains("inside the IPv6 cluster network"), "{e}");
        let e = check_node(&n, None, Some("fe80::5".parse().unwrap())).unwrap_err();
        assert!(e.contains("not a global unicast"), "{e}");
        assert!(check_node(&n, None, Some("fd00:198:18::11".parse().unwrap())).is_ok());
        assert!(is_global6("2001:db8::1".parse().unwrap()));
        for bad in ["::", "::1", "ff02::1", "fe80::1", "febf::1", "::ffff:10.0.0.1"] {
            assert!(!is_global6(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn overlap_math() {
        let a: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        assert!(overlaps(a, "10.244.3.0/24".parse().unwrap()));
        assert!(overlaps("10.244.3.0/24".parse().unwrap(), a));
        assert!(!overlaps("10.244.3.0/24".parse().unwrap(), "10.244.4.0/24".parse().unwrap()));
    }
}
