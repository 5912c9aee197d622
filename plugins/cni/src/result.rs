//! CNI results in one rich in-memory form, rendered to and parsed from every spec version.
//!
//! * 0.1.0 / 0.2.0: `{"ip4": {"ip","gateway","routes"}, "ip6": {...}, "dns"}` (first IP per family).
//! * 0.3.0 / 0.3.1 / 0.4.0: `interfaces`, `ips` with `"version"`, `routes`, `dns`.
//! * 1.0.0: as 0.4.0 without `ips[].version`. 1.1.0: adds optional interface `mtu`, `socketPath`,
//!   `pciID` and route `mtu`, `advmss`, `priority`, `table`, `scope`.

use crate::error::{CniError, Result};
use crate::version::Version;
use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Netns path for a container-side interface; `None` on the host side.
    pub sandbox: Option<String>,
    pub socket_path: Option<String>,
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix of its subnet, e.g. `10.244.1.2/24`.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            m.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }

    pub fn from_json(v: &Value) -> Result<Dns> {
        if v.is_null() {
            return Ok(Dns::default());
        }
        let o = v.as_object().ok_or_else(|| bad("dns must be an object"))?;
        Ok(Dns {
            nameservers: str_list(o.get("nameservers"), "dns.nameservers")?,
            domain: opt_str(o.get("domain"), "dns.domain")?,
            search: str_list(o.get("search"), "dns.search")?,
            options: str_list(o.get("options"), "dns.options")?,
        })
    }
}

impl CniResult {
    /// Render in the shape of version `v`.
    pub fn to_json(&self, v: Version) -> Result<Value> {
        if v.is_legacy() {
            return self.to_legacy_json(v);
        }
        let modern = v >= Version::V110;
        let interfaces: Vec<Value> =
            self.interfaces.iter().map(|i| interface_json(i, modern)).collect();
        let ips: Vec<Value> = self.ips.iter().map(|ip| ip_json(ip, v)).collect();
        let routes: Vec<Value> = self.routes.iter().map(|r| route_json(r, modern)).collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(v.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), self.dns.to_json());
        Ok(Value::Object(out))
    }

    fn to_legacy_json(&self, v: Version) -> Result<Value> {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(v.as_str()));
        let mut any = false;
        for (key, want_v4) in [("ip4", true), ("ip6", false)] {
            if let Some(ip) = self.ips.iter().find(|i| i.address.is_ipv4() == want_v4) {
                any = true;
                let mut m = Map::new();
                m.insert("ip".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                let routes: Vec<Value> = self
                    .routes
                    .iter()
                    .filter(|r| r.dst.is_ipv4() == want_v4)
                    .map(|r| route_json(r, false))
                    .collect();
                if !routes.is_empty() {
                    m.insert("routes".into(), Value::Array(routes));
                }
                out.insert(key.into(), Value::Object(m));
            }
        }
        if !any {
            return Err(CniError::incompatible(format!(
                "cannot convert a result with no IP address to version {v}"
            )));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), self.dns.to_json());
        }
        Ok(Value::Object(out))
    }

    /// Parse a result of any version. The result's own `cniVersion` decides its shape; when absent
    /// `fallback` does (libcni does the same with the config version).
    pub fn from_json(v: &Value, fallback: Version) -> Result<CniResult> {
        let o = v.as_object().ok_or_else(|| bad("result must be a JSON object"))?;
        let ver = match o.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => Version::parse(s)?,
            Some(Value::String(_)) | None | Some(Value::Null) => fallback,
            Some(_) => return Err(bad("result cniVersion must be a string")),
        };
        if ver.is_legacy() {
            return Self::from_legacy(o);
        }
        let mut r = CniResult::default();
        for (n, i) in arr(o.get("interfaces"), "interfaces")?.iter().enumerate() {
            r.interfaces.push(parse_interface(n, i)?);
        }
        for (n, i) in arr(o.get("ips"), "ips")?.iter().enumerate() {
            r.ips.push(parse_ip_config(n, i, r.interfaces.len())?);
        }
        for rv in arr(o.get("routes"), "routes")? {
            r.routes.push(parse_route(rv)?);
        }
        r.dns = Dns::from_json(o.get("dns").unwrap_or(&Value::Null))?;
        Ok(r)
    }

    fn from_legacy(o: &Map<String, Value>) -> Result<CniResult> {
        let mut r = CniResult::default();
        for key in ["ip4", "ip6"] {
            let Some(v) = o.get(key).filter(|v| !v.is_null()) else { continue };
            let io = v.as_object().ok_or_else(|| bad(format!("{key} must be an object")))?;
            let address =
                cidr(io.get("ip"), "ip")?.ok_or_else(|| bad(format!("{key}.ip is required")))?;
            r.ips.push(IpConfig {
                address,
                gateway: ip(io.get("gateway"), "gateway")?,
                interface: None,
            });
            for rv in arr(io.get("routes"), "routes")? {
                r.routes.push(parse_route(rv)?);
            }
        }
        r.dns = Dns::from_json(o.get("dns").unwrap_or(&Value::Null))?;
        Ok(r)
    }
}

/// One `interfaces[]` entry in the shape of version 0.3.0+ (`modern`: 1.1.0's extra fields).
fn interface_json(i: &Interface, modern: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(i.name));
    if let Some(mac) = &i.mac {
        m.insert("mac".into(), json!(mac));
    }
    if let Some(mtu) = i.mtu.filter(|_| modern) {
        m.insert("mtu".into(), json!(mtu));
    }
    if let Some(sb) = &i.sandbox {
        m.insert("sandbox".into(), json!(sb));
    }
    if let Some(s) = i.socket_path.as_ref().filter(|_| modern) {
        m.insert("socketPath".into(), json!(s));
    }
    if let Some(s) = i.pci_id.as_ref().filter(|_| modern) {
        m.insert("pciID".into(), json!(s));
    }
    Value::Object(m)
}

/// One `ips[]` entry in the shape of version `v` (0.3.x and 0.4.0 carry `version`).
fn ip_json(ip: &IpConfig, v: Version) -> Value {
    let mut m = Map::new();
    if v.has_ip_version() {
        m.insert("version".into(), json!(if ip.address.is_ipv4() { "4" } else { "6" }));
    }
    if let Some(i) = ip.interface {
        m.insert("interface".into(), json!(i));
    }
    m.insert("address".into(), json!(ip.address.to_string()));
    if let Some(gw) = ip.gateway {
        m.insert("gateway".into(), json!(gw.to_string()));
    }
    Value::Object(m)
}

fn parse_interface(n: usize, i: &Value) -> Result<Interface> {
    let io = i.as_object().ok_or_else(|| bad(format!("interfaces[{n}] must be an object")))?;
    Ok(Interface {
        name: opt_str(io.get("name"), "interfaces[].name")?
            .ok_or_else(|| bad(format!("interfaces[{n}].name is required")))?,
        mac: opt_str(io.get("mac"), "interfaces[].mac")?,
        mtu: opt_u32(io.get("mtu"), "interfaces[].mtu")?,
        sandbox: opt_str(io.get("sandbox"), "interfaces[].sandbox")?.filter(|s| !s.is_empty()),
        socket_path: opt_str(io.get("socketPath"), "interfaces[].socketPath")?,
        pci_id: opt_str(io.get("pciID"), "interfaces[].pciID")?,
    })
}

/// One `ips[]` entry; its `interface` must index one of the `n_ifaces` interfaces.
fn parse_ip_config(n: usize, i: &Value, n_ifaces: usize) -> Result<IpConfig> {
    let io = i.as_object().ok_or_else(|| bad(format!("ips[{n}] must be an object")))?;
    let address = cidr(io.get("address"), "ips[].address")?
        .ok_or_else(|| bad(format!("ips[{n}].address is required")))?;
    let interface = match io.get("interface") {
        None | Some(Value::Null) => None,
        Some(x) => {
            Some(x.as_u64().ok_or_else(|| bad("ips[].interface must be a non-negative integer"))?
                as usize)
        }
    };
    if let Some(idx) = interface.filter(|&idx| idx >= n_ifaces) {
        return Err(bad(format!("ips[{n}].interface {idx} is out of range")));
    }
    Ok(IpConfig { address, gateway: ip(io.get("gateway"), "ips[].gateway")?, interface })
}

fn route_json(r: &Route, modern: bool) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), json!(r.dst.to_string()));
    if let Some(gw) = r.gw {
        m.insert("gw".into(), json!(gw.to_string()));
    }
    if modern {
        for (k, val) in [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
            ("scope", r.scope),
        ] {
            if let Some(x) = val {
                m.insert(k.into(), json!(x));
            }
        }
    }
    Value::Object(m)
}

/// A `routes` list as it appears in a network config (`[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}]`):
/// the same shape as in a result, but a malformed one is the config's fault, so errors are code 7.
pub fn parse_routes(v: &Value) -> Result<Vec<Route>> {
    let as_config =
        |e: CniError| CniError::config(e.msg.trim_start_matches("invalid result: ").to_string());
    arr(Some(v), "routes")
        .map_err(as_config)?
        .iter()
        .map(|r| parse_route(r).map_err(as_config))
        .collect()
}

/// One route object. A `gw` of the other address family than `dst` is rejected (the kernel would
/// otherwise install it via a mapped address): the one rule for config and result routes alike.
fn parse_route(v: &Value) -> Result<Route> {
    let o = v.as_object().ok_or_else(|| bad("routes[] must be objects"))?;
    let dst = cidr(o.get("dst"), "routes[].dst")?.ok_or_else(|| bad("routes[].dst is required"))?;
    let gw = ip(o.get("gw"), "routes[].gw")?;
    if let Some(g) = gw.filter(|g| g.is_ipv4() != dst.is_ipv4()) {
        return Err(bad(format!("route {dst} via {g} mixes address families")));
    }
    Ok(Route {
        dst,
        gw,
        mtu: opt_u32(o.get("mtu"), "routes[].mtu")?,
        advmss: opt_u32(o.get("advmss"), "routes[].advmss")?,
        priority: opt_u32(o.get("priority"), "routes[].priority")?,
        table: opt_u32(o.get("table"), "routes[].table")?,
        scope: opt_u32(o.get("scope"), "routes[].scope")?,
    })
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::decode(format!("invalid result: {}", msg.into()))
}

fn arr<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a [Value]> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(format!("{what} must be a list"))),
    }
}

fn opt_str(v: Option<&Value>, what: &str) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{what} must be a string"))),
    }
}

fn opt_u32(v: Option<&Value>, what: &str) -> Result<Option<u32>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(format!("{what} must be a non-negative integer"))),
    }
}

fn str_list(v: Option<&Value>, what: &str) -> Result<Vec<String>> {
    arr(v, what)?
        .iter()
        .map(|x| {
            x.as_str().map(String::from).ok_or_else(|| bad(format!("{what} must hold strings")))
        })
        .collect()
}

fn cidr(v: Option<&Value>, what: &str) -> Result<Option<IpNetwork>> {
    match opt_str(v, what)? {
        None => Ok(None),
        Some(s) if !s.contains('/') => {
            Err(bad(format!("{what} {s:?} is not an address with a prefix length")))
        }
        Some(s) => s
            .parse::<IpNetwork>()
            .map(Some)
            .map_err(|_| bad(format!("{what} {s:?} is not an address with a prefix length"))),
    }
}

fn ip(v: Option<&Value>, what: &str) -> Result<Option<IpAddr>> {
    match opt_str(v, what)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => {
            s.parse().map(Some).map_err(|_| bad(format!("{what} {s:?} is not an IP address")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::SUPPORTED;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "veth1234".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/p1".into()),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns { nameservers: vec!["10.96.0.10".into()], ..Default::default() },
        }
    }

    #[test]
    fn v110_has_new_fields_and_no_ip_version() {
        let v = sample().to_json(Version::V110).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/p1");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["mtu"], 1400);
    }

    #[test]
    fn v100_drops_11_fields() {
        let v = sample().to_json(Version::V100).unwrap();
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn v03x_and_v040_carry_ip_version() {
        for ver in [Version::V030, Version::V031, Version::V040] {
            let v = sample().to_json(ver).unwrap();
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["cniVersion"], ver.as_str());
        }
    }

    #[test]
    fn legacy_shape() {
        for ver in [Version::V010, Version::V020] {
            let v = sample().to_json(ver).unwrap();
            assert_eq!(v["ip4"]["ip"], "10.244.1.2/24");
            assert_eq!(v["ip4"]["gateway"], "10.244.1.1");
            assert_eq!(v["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
            assert!(
                v.get("ips").is_none() && v.get("interfaces").is_none() && v.get("ip6").is_none()
            );
        }
    }

    /// `sample()` with a second, IPv6 address on the pod interface and a route per family.
    fn dual() -> CniResult {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "fd00:10:244:1::2/64".parse().unwrap(),
            gateway: Some("fd00:10:244:1::1".parse().unwrap()),
            interface: Some(1),
        });
        r.routes.push(Route::new("::/0".parse().unwrap(), None));
        r
    }

    #[test]
    fn dual_stack_results_carry_both_ips_from_030_on() {
        for s in &SUPPORTED[2..] {
            let ver = Version::parse(s).unwrap();
            let v = dual().to_json(ver).unwrap();
            let ips = v["ips"].as_array().unwrap();
            assert_eq!(ips.len(), 2, "{s}: {v}");
            assert_eq!(ips[0]["address"], "10.244.1.2/24");
            assert_eq!(ips[1]["address"], "fd00:10:244:1::2/64");
            assert_eq!(ips[1]["gateway"], "fd00:10:244:1::1");
            assert_eq!((&ips[0]["interface"], &ips[1]["interface"]), (&json!(1), &json!(1)));
            if ver.has_ip_version() {
                assert_eq!((&ips[0]["version"], &ips[1]["version"]), (&json!("4"), &json!("6")));
            }
            let dsts: Vec<&str> = v["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["dst"].as_str().unwrap())
                .collect();
            assert_eq!(dsts, ["0.0.0.0/0", "::/0"], "{s}");
            let back = CniResult::from_json(&v, Version::V100).unwrap();
            assert_eq!(back.ips, dual().ips, "{s}: round trip");
            assert_eq!(back.to_json(ver).unwrap(), v, "{s}");
        }
    }

    #[test]
    fn legacy_needs_an_ip() {
        let e = CniResult::default().to_json(Version::V020).unwrap_err();
        assert_eq!(e.code.as_u32(), 1);
    }

    #[test]
    fn round_trips_through_every_version() {
        for s in SUPPORTED {
            let ver = Version::parse(s).unwrap();
            let j = sample().to_json(ver).unwrap();
            let back = CniResult::from_json(&j, Version::V100).unwrap();
            let again = back.to_json(ver).unwrap();
            assert_eq!(j, again, "version {s}");
            assert_eq!(back.ips[0].address, sample().ips[0].address);
        }
    }

    #[test]
    fn converts_legacy_prev_result_up() {
        let j: Value = serde_json::from_str(
            r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.5/16","gateway":"10.1.0.1","routes":[{"dst":"0.0.0.0/0"}]},"ip6":{"ip":"fd00::5/64"},"dns":{}}"#,
        )
        .unwrap();
        let r = CniResult::from_json(&j, Version::V100).unwrap();
        assert_eq!(r.ips.len(), 2);
        let v = r.to_json(Version::V040).unwrap();
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
    }

    #[test]
    fn accepts_empty_dns_and_missing_fields() {
        let j: Value = serde_json::from_str(r#"{"cniVersion":"1.0.0","dns":{}}"#).unwrap();
        assert_eq!(CniResult::from_json(&j, Version::V100).unwrap(), CniResult::default());
    }

    #[test]
    fn config_routes_parse_and_fail_as_config_errors() {
        let ok: Value =
            serde_json::from_str(r#"[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.0/8","gw":"10.1.0.1"}]"#)
                .unwrap();
        let r = parse_routes(&ok).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].gw, Some("10.1.0.1".parse().unwrap()));
        for bad in [
            r#""x""#,
            r#"[{"dst":"nope"}]"#,
            r#"[{"gw":"10.0.0.1"}]"#,
            r#"[5]"#,
            r#"[{"dst":"0.0.0.0/0","gw":"fd00::1"}]"#,
            r#"[{"dst":"::/0","gw":"10.0.0.1"}]"#,
        ] {
            let e = parse_routes(&serde_json::from_str(bad).unwrap()).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{bad}");
            assert!(!e.msg.contains("invalid result"), "{}", e.msg);
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            r#"[]"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/24","interface":3}]}"#,
            r#"{"cniVersion":"1.0.0","routes":"x"}"#,
            r#"{"cniVersion":"7.0.0"}"#,
        ] {
            let j: Value = serde_json::from_str(bad).unwrap();
            assert!(CniResult::from_json(&j, Version::V100).is_err(), "{bad}");
        }
    }
}
