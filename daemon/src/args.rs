//! Command-line flags, parsed by hand (`--flag value` or `--flag=value`; booleans also bare).

use crate::config::NetworkRequest;
use crate::event_loop::ReconcileSettings;
use crate::lease::LeaseTiming;
use crate::masq::Masquerade;
use crate::node::NodeFiles;
use crate::store::any::{EtcdOpts, StoreSettings, StoreUrl};
use crate::store::Backend;
use ferry_fs::paths;
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub const USAGE: &str = "\
ferryd: Ferry's node daemon (subnet lease, host-gw routes, CNI config, masquerade)

USAGE: ferryd [FLAGS]
       ferryd install [--root DIR] [--cni-bin-dir D] [--bin-dir D] [--cni-only]
       ferryd uninstall [--root DIR] [--cni-bin-dir D] [--bin-dir D] [FLAGS]
                                                 (also: ferryd --uninstall ...)

Network (stored in the lease store on first start; the stored config wins):
  --network CIDR            cluster network [10.244.0.0/16]
  --subnet-len N            per-node subnet prefix length [24 for a /22 or larger network]
  --subnet-min IP           first subnet to hand out [the network's second subnet]
  --subnet-max IP           last subnet to hand out [the network's last subnet]
  --enable-ipv4[=BOOL]      IPv4 pod network (flannel's EnableIPv4) [true]
  --ipv6-network CIDR       IPv6 cluster network; turns IPv6 on (flannel's IPv6Network)
  --enable-ipv6[=BOOL]      IPv6 pod network (EnableIPv6) [true with --ipv6-network]
  --ipv6-subnet-len N       per-node IPv6 subnet prefix length [64 for a /62 or larger]
  --ipv6-subnet-min IP  --ipv6-subnet-max IP   IPv6 subnets to hand out [2nd to last]
  --backend host-gw|vxlan   backend stored with the config [host-gw]; vxlan stores flannel's
                            vxlan with DirectRouting: direct routes to peers on this node's
                            segment, VXLAN (VNI 1, UDP 8472, device ferry.1) to the others
  --strict-network          exit 2 if the stored config differs from the flags above
Store:
  --store URL               file:///DIR or etcd://HOST:PORT[,HOST:PORT] [file:///var/lib/ferry/leases]
  --etcd-prefix P           [/coreos.com/network]
  --etcd-ca F  --etcd-cert F  --etcd-key F     TLS for etcd (https)
  --etcd-dial-timeout D     [2s]     --etcd-request-timeout D  [5s]   (10ms-10m)
  --etcd-failover-timeout D [500ms]  abandon an unresponsive etcd member after D
  --etcd-page-size N        [5000]  leases per answer when listing etcd (1-100000)
  --lease-ttl D             [24h] (1s-365d)   --renew-margin D  [1h] (0-365d; renew at ttl/2 at the latest)
Node:
  --public-ip IP            this node's address peers route to [address of --iface]
  --public-ipv6 IP          its IPv6 one (IPv6 on) [first global IPv6 address of --iface]
  --iface NAME              uplink interface [the one holding the default route]
  --mtu N                   [MTU of the uplink]
  --subnet-file PATH        [/run/ferry/subnet.env]
  --cni-conf-dir DIR        [/etc/cni/net.d]    --cni-conf-name NAME [10-ferry.conflist]
  --cni-network-name NAME   [ferry]             --cni-data-dir DIR   [/run/ferry/ipam]
  --cni-portmap             chain the portmap plugin
  --cni-exclude-host-local DIR  never hand out an address a host-local plugin (flannel's pods)
                            recorded in DIR; `off` to skip [/var/lib/cni/networks/cbr0]
  --ip-masq[=BOOL]          masquerade pod traffic leaving the cluster network [true]
  --ipv6-masq[=BOOL]        the same for IPv6 (e.g. off for a global pod prefix) [--ip-masq]
  --nft PATH                nft binary [nft]
  --resync D                full route sweep period [60s] (10ms-24h)
Operation:
  --config FILE             read flags from FILE: `name = value` per line (the long flag
                            without --), # comments, booleans true/false; the command line wins
  --metrics-address A:P     serve /metrics, /healthz, /readyz over HTTP, or `off` [127.0.0.1:9473]
  --log-level L             error, warn, info or debug [info; env FERRY_LOG; the flag wins]
  -v, --verbose             same as --log-level debug      -q, --quiet   same as --log-level warn
  --uninstall               same as `ferryd uninstall`
  -h, --help                this text          --version
Install and uninstall (ferry, ferry-ipam and ferryctl are taken from ferryd's own directory):
  --root DIR                install under DIR (a host mounted in a container, a staging tree) [/]
  --cni-bin-dir D           where ferry and ferry-ipam go, under --root [/opt/cni/bin]
  --bin-dir D               where ferryd and ferryctl go, under --root [/usr/local/bin]
  --cni-only                install the CNI plugins only (not ferryd, ferryctl, the systemd unit)
  install writes each file atomically (0755 programs, 0644 <root>/etc/systemd/system/ferryd.service)
  and only when it differs; uninstall removes Ferry's routes (proto 113), its nft table, the
  conflist and subnet file named by the flags above, and the files install puts under --root:
  nothing else.
Durations: 500ms, 30s, 5m, 24h (a bare number is seconds). Exit codes: 0 ok, 1 runtime error,
2 unusable flags or a network config this node cannot honour (nothing is changed then).";

/// Every flag, grouped by the part of the daemon that uses it; each part gets only its group.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub network: NetworkRequest,
    pub store: StoreSettings,
    pub lease: LeaseTiming,
    pub uplink: UplinkFlags,
    pub files: NodeFiles,
    pub masq: Masquerade,
    pub reconcile: ReconcileSettings,
    pub uninstall: bool,
    pub log_level: u8,
    /// `--metrics-address`: where /metrics, /healthz and /readyz are served (`None`: off).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// `--public-ip`, `--public-ipv6`, `--iface`, `--mtu`: how this node finds its uplink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkFlags {
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: this node's IPv6 address peers route to (IPv6 clusters).
    pub public_ipv6: Option<Ipv6Addr>,
    pub iface: Option<String>,
    pub mtu: Option<u32>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            network: NetworkRequest::default(),
            store: StoreSettings {
                url: StoreUrl::File(paths::LEASE_STORE_DIR.into()),
                etcd: EtcdOpts {
                    prefix: "/coreos.com/network".into(),
                    ca: None,
                    cert: None,
                    key: None,
                    dial_timeout: Duration::from_secs(2),
                    request_timeout: Duration::from_secs(5),
                    failover_timeout: Duration::from_millis(500),
                    page_size: crate::store::etcd::DEFAULT_PAGE_SIZE,
                },
            },
            lease: LeaseTiming {
                ttl: Duration::from_secs(24 * 3600),
                renew_margin: Duration::from_secs(3600),
            },
            uplink: UplinkFlags::default(),
            files: NodeFiles {
                subnet_file: paths::SUBNET_FILE.into(),
                cni_conf_dir: paths::CNI_CONF_DIR.into(),
                cni_conf_name: "10-ferry.conflist".into(),
                cni_network_name: "ferry".into(),
                cni_data_dir: paths::IPAM_DATA_DIR.into(),
                cni_portmap: false,
                cni_exclude_host_local: Some(HOST_LOCAL_FLANNEL.into()),
            },
            masq: Masquerade { enabled: true, enabled6: None, nft: "nft".into() },
            reconcile: ReconcileSettings { resync: Duration::from_secs(60) },
            uninstall: false,
            log_level: crate::log::INFO,
            metrics_address: Some(([127, 0, 0, 1], 9473).into()),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Args>),
    Help,
    Version,
}

/// Parse the command line alone (no config file is read unless `--config` names one).
pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Parsed, String> {
    parse_with_env(argv, None)
}

/// Parse with the precedence config file < `FERRY_LOG` (`ferry_log`) < command line.
pub fn parse_with_env<I: IntoIterator<Item = String>>(
    argv: I,
    ferry_log: Option<&str>,
) -> Result<Parsed, String> {
    let argv: Vec<String> = argv.into_iter().collect();
    let mut all = match config_path(&argv)? {
        Some(path) => config_file(&path)?,
        None => Vec::new(),
    };
    if let Some(level) = ferry_log.filter(|l| !l.trim().is_empty()) {
        all.push(format!("--log-level={}", level.trim()));
    }
    all.extend(argv);
    parse_flags(all)
}

fn parse_flags(argv: Vec<String>) -> Result<Parsed, String> {
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if let Some(done) = bare_flag(&mut a, &flag, &inline)? {
            return Ok(done);
        }
        if BOOL_FLAGS.contains(&flag.as_str()) || matches!(flag.as_str(), "-v" | "-q") {
            continue;
        }
        if !VALUE_FLAGS.contains(&flag.as_str()) {
            return Err(if flag.starts_with('-') {
                format!("unknown flag {flag} (see --help)")
            } else {
                format!("unexpected argument {flag:?} (see --help)")
            });
        }
        let v = match inline {
            Some(v) => v,
            None if flag.starts_with("--") => {
                it.next().ok_or_else(|| format!("{flag} needs a value"))?
            }
            None => return Err(format!("{flag} needs a value")),
        };
        value_flag(&mut a, &flag, &v)?;
    }
    Ok(Parsed::Run(Box::new(a)))
}

/// Flags without a value: help, version, verbosity and the booleans (bare, or `=true|false`).
/// `Some` ends the parse.
fn bare_flag(a: &mut Args, flag: &str, inline: &Option<String>) -> Result<Option<Parsed>, String> {
    let boolean = || -> Result<bool, String> {
        match inline.as_deref() {
            None | Some("true") | Some("1") | Some("yes") => Ok(true),
            Some("false") | Some("0") | Some("no") => Ok(false),
            Some(x) => Err(format!("{flag}: expected true or false, got {x:?}")),
        }
    };
    match flag {
        "-h" | "--help" => return Ok(Some(Parsed::Help)),
        "--version" => return Ok(Some(Parsed::Version)),
        "-v" | "--verbose" => a.log_level = crate::log::DEBUG,
        "-q" | "--quiet" => a.log_level = crate::log::WARN,
        "--strict-network" => a.network.strict = boolean()?,
        "--enable-ipv4" => {
            a.network.enable_ipv4 = boolean()?;
            a.network.explicit = true;
        }
        "--enable-ipv6" => {
            a.network.enable_ipv6 = Some(boolean()?);
            a.network.explicit = true;
        }
        "--cni-portmap" => a.files.cni_portmap = boolean()?,
        "--ip-masq" => a.masq.enabled = boolean()?,
        "--ipv6-masq" => a.masq.enabled6 = Some(boolean()?),
        "--uninstall" => a.uninstall = boolean()?,
        _ => {}
    }
    Ok(None)
}

/// Flags that take true/false (bare means true).
const BOOL_FLAGS: &[&str] = &[
    "--strict-network",
    "--enable-ipv4",
    "--enable-ipv6",
    "--cni-portmap",
    "--ip-masq",
    "--ipv6-masq",
    "--uninstall",
    "--verbose",
    "--quiet",
];

/// The `--config FILE` named on the command line, if any.
fn config_path(argv: &[String]) -> Result<Option<String>, String> {
    let mut found = None;
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = arg.strip_prefix("--config=") {
            found = Some(v.to_string());
        } else if arg == "--config" {
            found = Some(it.next().ok_or("--config needs a value")?.clone());
        }
    }
    Ok(found)
}

/// Largest config file read.
const CONFIG_CAP: u64 = 1 << 20;

/// Read a config file into flags (`--name=value`), in file order.
pub fn config_file(path: &str) -> Result<Vec<String>, String> {
    let text = ferry_fs::read_to_string_capped(std::path::Path::new(path), CONFIG_CAP)
        .map_err(|e| format!("--config {path}: {e}"))?;
    config_lines(path, &text)
}

/// `name = value` per line (the long flag without `--`), `#` comments, blank lines; booleans
/// true/false. An unknown key or a line without `=` is an error naming the line.
pub fn config_lines(path: &str, text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |why: String| format!("{path}:{}: {why}: {raw:?}", n + 1);
        let (k, v) = line.split_once('=').ok_or_else(|| at("expected name = value".into()))?;
        let (k, v) = (k.trim(), v.trim());
        let flag = format!("--{k}");
        let known = VALUE_FLAGS.contains(&flag.as_str()) || BOOL_FLAGS.contains(&flag.as_str());
        if !known || k.starts_with('-') {
            return Err(at(format!("unknown key {k:?}")));
        }
        if BOOL_FLAGS.contains(&flag.as_str()) && !matches!(v, "true" | "false") {
            return Err(at(format!("{k} takes true or false")));
        }
        out.push(format!("{flag}={v}"));
    }
    Ok(out)
}

/// flannel's pods' `host-local` state (the stock kube-flannel network name is `cbr0`).
pub const HOST_LOCAL_FLANNEL: &str = "/var/lib/cni/networks/cbr0";

/// Every flag that takes a value (booleans and the others are matched in [`parse`]).
pub const VALUE_FLAGS: &[&str] = &[
    "--network",
    "--subnet-len",
    "--subnet-min",
    "--subnet-max",
    "--backend",
    "--ipv6-network",
    "--ipv6-subnet-len",
    "--ipv6-subnet-min",
    "--ipv6-subnet-max",
    "--store",
    "--etcd-prefix",
    "--etcd-ca",
    "--etcd-cert",
    "--etcd-key",
    "--etcd-dial-timeout",
    "--etcd-request-timeout",
    "--etcd-failover-timeout",
    "--etcd-page-size",
    "--lease-ttl",
    "--renew-margin",
    "--public-ip",
    "--public-ipv6",
    "--iface",
    "--mtu",
    "--subnet-file",
    "--cni-conf-dir",
    "--cni-conf-name",
    "--cni-network-name",
    "--cni-data-dir",
    "--cni-exclude-host-local",
    "--nft",
    "--resync",
    "--config",
    "--log-level",
    "--metrics-address",
];

/// Flags of `install` / `uninstall` and the informational ones.
const OTHER_FLAGS: &[&str] =
    &["--root", "--cni-bin-dir", "--bin-dir", "--cni-only", "--help", "--version"];

/// Every flag name ferryd knows (for generated-input tests and the docs check).
pub fn flag_names() -> Vec<&'static str> {
    [VALUE_FLAGS, BOOL_FLAGS, OTHER_FLAGS].concat()
}

/// A flag's value did not parse: the message names the flag, the value and what was expected.
fn bad(flag: &str, v: &str, what: &str) -> String {
    format!("{flag}: {v:?} is not {what}")
}

fn value_flag(a: &mut Args, flag: &str, v: &str) -> Result<(), String> {
    match flag {
        "--network" | "--subnet-len" | "--subnet-min" | "--subnet-max" | "--ipv6-network"
        | "--ipv6-subnet-len" | "--ipv6-subnet-min" | "--ipv6-subnet-max" | "--backend" => {
            network_flag(&mut a.network, flag, v)?
        }
        "--store" => a.store.url = parse_store(v)?,
        f if f.starts_with("--etcd-") => etcd_flag(&mut a.store.etcd, flag, v)?,
        "--lease-ttl" => a.lease.ttl = duration_flag(flag, v)?,
        "--renew-margin" => a.lease.renew_margin = duration_flag(flag, v)?,
        "--public-ip" | "--public-ipv6" | "--iface" | "--mtu" => {
            uplink_flag(&mut a.uplink, flag, v)?
        }
        f if f.starts_with("--cni-") || f == "--subnet-file" => files_flag(&mut a.files, flag, v)?,
        "--nft" => a.masq.nft = v.to_string(),
        "--resync" => a.reconcile.resync = duration_flag(flag, v)?,
        "--config" => {} // read before the other flags
        "--log-level" => {
            a.log_level = log_level(v).ok_or_else(|| bad(flag, v, "error, warn, info or debug"))?
        }
        "--metrics-address" => a.metrics_address = metrics_address(v)?,
        _ => return Err(format!("unknown flag {flag} (see --help)")),
    }
    Ok(())
}

/// Every duration flag and the range it accepts: long enough to be meaningful, short enough that
/// no timer, deadline or expiry computed from it can overflow.
pub const DURATION_RANGES: &[(&str, Duration, Duration)] = &[
    ("--lease-ttl", Duration::from_secs(1), Duration::from_secs(365 * 86400)),
    ("--renew-margin", Duration::ZERO, Duration::from_secs(365 * 86400)),
    ("--resync", Duration::from_millis(10), Duration::from_secs(86400)),
    ("--etcd-dial-timeout", Duration::from_millis(10), Duration::from_secs(600)),
    ("--etcd-request-timeout", Duration::from_millis(10), Duration::from_secs(600)),
    ("--etcd-failover-timeout", Duration::from_millis(20), Duration::from_secs(600)),
];

/// A duration flag's value, checked against its range in [`DURATION_RANGES`].
pub fn duration_flag(flag: &str, v: &str) -> Result<Duration, String> {
    let d = duration(v).ok_or_else(|| bad(flag, v, "a duration (500ms, 30s, 5m, 24h)"))?;
    let (_, lo, hi) = DURATION_RANGES.iter().find(|(f, _, _)| *f == flag).copied().unwrap_or((
        flag,
        Duration::ZERO,
        Duration::MAX,
    ));
    if d < lo || d > hi {
        return Err(format!("{flag}: {v:?} is out of range ({lo:?} to {hi:?})"));
    }
    Ok(d)
}

fn network_flag(n: &mut NetworkRequest, flag: &str, v: &str) -> Result<(), String> {
    let addr = || v.parse::<Ipv4Addr>().map_err(|_| bad(flag, v, "an IPv4 address"));
    let addr6 = || v.parse::<Ipv6Addr>().map_err(|_| bad(flag, v, "an IPv6 address"));
    match flag {
        "--network" => {
            let net: Ipv4Network = v.parse().map_err(|_| bad(flag, v, "an IPv4 CIDR"))?;
            if net.network() != net.ip() {
                return Err(format!(
                    "{flag}: {v} has host bits set (did you mean {}/{}?)",
                    net.network(),
                    net.prefix()
                ));
            }
            n.network = net;
        }
        "--subnet-len" => {
            n.subnet_len = Some(v.parse().map_err(|_| bad(flag, v, "a prefix length"))?)
        }
        "--subnet-min" => n.subnet_min = Some(addr()?),
        "--subnet-max" => n.subnet_max = Some(addr()?),
        "--backend" => {
            n.backend = match v {
                "host-gw" => Backend::host_gw(),
                "vxlan" => Backend::vxlan_direct(),
                _ => return Err(bad(flag, v, "host-gw or vxlan")),
            }
        }
        "--ipv6-network" => {
            let net: Ipv6Network = v.parse().map_err(|_| bad(flag, v, "an IPv6 CIDR"))?;
            if net.network() != net.ip() {
                return Err(format!(
                    "{flag}: {v} has host bits set (did you mean {}/{}?)",
                    net.network(),
                    net.prefix()
                ));
            }
            n.ipv6_network = Some(net);
        }
        "--ipv6-subnet-len" => {
            n.ipv6_subnet_len = Some(v.parse().map_err(|_| bad(flag, v, "a prefix length"))?)
        }
        "--ipv6-subnet-min" => n.ipv6_subnet_min = Some(addr6()?),
        "--ipv6-subnet-max" => n.ipv6_subnet_max = Some(addr6()?),
        _ => return Err(format!("unknown flag {flag} (see --help)")),
    }
    n.explicit = true;
    Ok(())
}

fn etcd_flag(e: &mut EtcdOpts, flag: &str, v: &str) -> Result<(), String> {
    let timeout = || duration_flag(flag, v);
    match flag {
        "--etcd-prefix" => e.prefix = v.trim_end_matches('/').to_string(),
        "--etcd-ca" => e.ca = Some(v.into()),
        "--etcd-cert" => e.cert = Some(v.into()),
        "--etcd-key" => e.key = Some(v.into()),
        "--etcd-dial-timeout" => e.dial_timeout = timeout()?,
        "--etcd-request-timeout" => e.request_timeout = timeout()?,
        "--etcd-failover-timeout" => e.failover_timeout = timeout()?,
        "--etcd-page-size" => {
            e.page_size = v
                .parse()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| bad(flag, v, "a number of leases from 1 to 100000"))?
        }
        _ => return Err(format!("unknown flag {flag} (see --help)")),
    }
    Ok(())
}

fn uplink_flag(u: &mut UplinkFlags, flag: &str, v: &str) -> Result<(), String> {
    match flag {
        "--public-ip" => {
            u.public_ip = Some(v.parse().map_err(|_| bad(flag, v, "an IPv4 address"))?)
        }
        "--public-ipv6" => {
            let ip: Ipv6Addr = v.parse().map_err(|_| bad(flag, v, "an IPv6 address"))?;
            if !crate::config::is_global6(ip) {
                return Err(bad(flag, v, "a global unicast IPv6 address"));
            }
            u.public_ipv6 = Some(ip)
        }
        "--iface" => u.iface = Some(v.to_string()),
        "--mtu" => {
            let mtu = v.parse().ok().filter(|m| (576..=65535).contains(m));
            u.mtu = Some(mtu.ok_or_else(|| bad(flag, v, "an MTU (576-65535)"))?);
        }
        _ => return Err(format!("unknown flag {flag} (see --help)")),
    }
    Ok(())
}

fn files_flag(f: &mut NodeFiles, flag: &str, v: &str) -> Result<(), String> {
    match flag {
        "--subnet-file" => f.subnet_file = v.into(),
        "--cni-conf-dir" => f.cni_conf_dir = v.into(),
        "--cni-conf-name" => {
            if v.contains('/') || !(v.ends_with(".conflist")) {
                return Err(bad(flag, v, "a file name ending in .conflist"));
            }
            f.cni_conf_name = v.to_string();
        }
        "--cni-network-name" => f.cni_network_name = v.to_string(),
        "--cni-data-dir" => f.cni_data_dir = v.into(),
        "--cni-exclude-host-local" => {
            f.cni_exclude_host_local = (!v.is_empty() && v != "off").then(|| v.into())
        }
        _ => return Err(format!("unknown flag {flag} (see --help)")),
    }
    Ok(())
}

fn parse_store(v: &str) -> Result<StoreUrl, String> {
    if let Some(p) = v.strip_prefix("file://") {
        if !p.starts_with('/') {
            return Err(format!(
                "--store: {v:?}: a file store needs an absolute path (file:///dir)"
            ));
        }
        return Ok(StoreUrl::File(p.into()));
    }
    for scheme in ["etcd://", "http://", "https://"] {
        if let Some(rest) = v.strip_prefix(scheme) {
            let eps: Vec<String> = rest
                .split(',')
                .map(|e| e.trim().trim_end_matches('/'))
                .filter(|e| !e.is_empty())
                .map(|e| {
                    if e.contains("://") {
                        e.to_string()
                    } else {
                        format!("{}{e}", if scheme == "https://" { "https://" } else { "http://" })
                    }
                })
                .collect();
            if eps.is_empty() {
                return Err(format!("--store: {v:?} names no etcd endpoint"));
            }
            return Ok(StoreUrl::Etcd(eps));
        }
    }
    Err(format!("--store: {v:?}: expected file:///dir or etcd://host:port[,host:port]"))
}

/// `error`, `warn`, `info`, `debug` (any case).
pub fn log_level(v: &str) -> Option<u8> {
    match v.trim().to_ascii_lowercase().as_str() {
        "error" => Some(crate::log::ERROR),
        "warn" | "warning" => Some(crate::log::WARN),
        "info" => Some(crate::log::INFO),
        "debug" => Some(crate::log::DEBUG),
        _ => None,
    }
}

/// `ADDR:PORT` (`127.0.0.1:9473`, `[::1]:9473`) or `off`.
fn metrics_address(v: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| bad("--metrics-address", v, "ADDR:PORT or off"))
}

/// `500ms`, `30s`, `5m`, `24h`, `1d`, or bare seconds.
pub fn duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    // try_from: a value past Duration's range (1e20s) is an error, never a panic.
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        match parse(v.iter().map(|s| s.to_string()))? {
            Parsed::Run(a) => Ok(*a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let a = args(&[]).unwrap();
        assert_eq!(a, Args::default());
        assert!(!a.network.explicit);
        assert_eq!(a.reconcile.resync, Duration::from_secs(60), "the safety-net sweep");
        let a = args(&[
            "--network=10.9.0.0/16",
            "--subnet-len",
            "26",
            "--ip-masq=false",
            "--cni-portmap",
            "--store",
            "etcd://198.18.0.1:2379,h2:2379",
            "--lease-ttl",
            "4s",
            "--public-ip",
            "198.18.0.11",
        ])
        .unwrap();
        assert_eq!(a.network.network.to_string(), "10.9.0.0/16");
        assert!(a.network.explicit);
        assert_eq!(a.network.subnet_len, Some(26));
        assert!(!a.masq.enabled && a.files.cni_portmap);
        assert_eq!(
            a.store.url,
            StoreUrl::Etcd(vec!["http://198.18.0.1:2379".into(), "http://h2:2379".into()])
        );
        assert_eq!(a.lease.ttl, Duration::from_secs(4));
        assert_eq!(
            args(&["--store", "file:///tmp/x"]).unwrap().store.url,
            StoreUrl::File("/tmp/x".into())
        );
    }

    #[test]
    fn each_flag_lands_in_its_group() {
        let a = args(&[
            "--subnet-min=10.244.4.0",
            "--etcd-prefix=/p/",
            "--etcd-dial-timeout=3s",
            "--renew-margin=5m",
            "--iface=eth1",
            "--mtu=9000",
            "--cni-conf-name=20-x.conflist",
            "--subnet-file=/run/x/subnet.env",
            "--nft=/sbin/nft",
            "--resync=2s",
            "--strict-network",
        ])
        .unwrap();
        assert!(a.network.explicit && a.network.strict);
        assert_eq!(a.network.subnet_min, Some(Ipv4Addr::new(10, 244, 4, 0)));
        assert_eq!(a.store.etcd.prefix, "/p");
        assert_eq!(a.store.etcd.dial_timeout, Duration::from_secs(3));
        assert_eq!(a.lease.renew_margin, Duration::from_secs(300));
        assert_eq!((a.uplink.iface.as_deref(), a.uplink.mtu), (Some("eth1"), Some(9000)));
        assert_eq!(a.files.conflist_path().to_str(), Some("/etc/cni/net.d/20-x.conflist"));
        assert_eq!(a.files.subnet_file.to_str(), Some("/run/x/subnet.env"));
        assert_eq!(a.masq.nft, "/sbin/nft");
        assert_eq!(a.reconcile.resync, Duration::from_secs(2));
        assert_eq!(args(&["--mtu", "20"]).unwrap_err(), r#"--mtu: "20" is not an MTU (576-65535)"#);
    }

    #[test]
    fn usage_shows_the_default_paths() {
        for p in
            [paths::LEASE_STORE_DIR, paths::SUBNET_FILE, paths::CNI_CONF_DIR, paths::IPAM_DATA_DIR]
        {
            assert!(USAGE.contains(&format!("{p}]")), "{p}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &["--network", "10.244.1.0/16"][..],
            &["--network", "nope"],
            &["--bogus"],
            &["--store", "file://relative"],
            &["--store", "consul://x"],
            &["--lease-ttl", "0"],
            &["--ip-masq=maybe"],
            &["--mtu", "20"],
            &["stray"],
            &["--iface"],
        ] {
            assert!(args(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse(["--help".to_string()]), Ok(Parsed::Help)));
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration("5x"), None);
        assert_eq!(duration(""), None);
        assert_eq!(duration("18446744073709551616"), None, "past Duration's range");
        assert_eq!(duration("-1"), None);
    }

    #[test]
    fn duration_flags_are_range_checked() {
        for (flag, v) in [
            ("--resync", "18446744073709551616"),
            ("--resync", "10000000000000000000"),
            ("--resync", "0"),
            ("--lease-ttl", "1e19"),
            ("--lease-ttl", "10000000000000000000"),
            ("--lease-ttl", "1000000000000"),
            ("--lease-ttl", "0"),
            ("--renew-margin", "1e20"),
            ("--renew-margin", "100000000000000000000"),
            ("--renew-margin", "400d"),
            ("--etcd-dial-timeout", "99999999999999999999999h"),
            ("--etcd-request-timeout", "0"),
        ] {
            let e = args(&[flag, v]).unwrap_err();
            assert!(e.starts_with(flag), "{flag} {v}: {e}");
        }
        assert_eq!(args(&["--renew-margin", "0"]).unwrap().lease.renew_margin, Duration::ZERO);
        assert_eq!(
            args(&["--lease-ttl", "365d"]).unwrap().lease.ttl,
            Duration::from_secs(365 * 86400)
        );
    }

    #[test]
    fn config_file_lines_and_precedence() {
        let f = config_lines(
            "f.conf",
            "# c\nnetwork = 10.9.0.0/16\n\nip-masq = false  # off\nlog-level = debug\nresync = 2s\n",
        )
        .unwrap();
        assert_eq!(
            f,
            ["--network=10.9.0.0/16", "--ip-masq=false", "--log-level=debug", "--resync=2s"]
        );
        let mut argv = f.clone();
        argv.push("--resync=3s".into());
        let Ok(Parsed::Run(a)) = parse_flags(argv) else { panic!() };
        assert_eq!(a.reconcile.resync, Duration::from_secs(3), "the command line wins");
        assert!(!a.masq.enabled && a.log_level == crate::log::DEBUG);
        let e = config_lines("f.conf", "network = 10.9.0.0/16\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with("f.conf:2: unknown key \"bogus\""), "{e}");
        assert!(config_lines("f.conf", "ip-masq = maybe\n").unwrap_err().contains("f.conf:1"));
        assert!(config_lines("f.conf", "just words\n").unwrap_err().contains("f.conf:1"));
        assert!(config_lines("f.conf", "help = true\n").is_err());
    }

    #[test]
    fn log_level_flag_beats_ferry_log() {
        let run = |argv: &[&str], env: Option<&str>| match parse_with_env(
            argv.iter().map(|s| s.to_string()),
            env,
        ) {
            Ok(Parsed::Run(a)) => Ok(a.log_level),
            Ok(_) => panic!(),
            Err(e) => Err(e),
        };
        assert_eq!(run(&[], Some("debug")), Ok(crate::log::DEBUG));
        assert_eq!(run(&["--log-level", "error"], Some("debug")), Ok(crate::log::ERROR));
        assert_eq!(run(&[], None), Ok(crate::log::INFO));
        assert!(run(&[], Some("loud")).is_err());
        assert!(run(&["--metrics-address", "nowhere"], None).is_err());
        let Ok(Parsed::Run(a)) = parse(["--metrics-address=off".to_string()]) else { panic!() };
        assert_eq!(a.metrics_address, None);
    }

    #[test]
    fn ipv6_flags() {
        let a = args(&[
            "--ipv6-network=fd00:10:244::/56",
            "--ipv6-subnet-len",
            "80",
            "--ipv6-subnet-min=fd00:10:244:1::",
            "--ipv6-subnet-max=fd00:10:244:2::",
            "--enable-ipv4=false",
            "--public-ipv6",
            "fd00:198:18::11",
            "--ipv6-masq=false",
        ])
        .unwrap();
        let n = &a.network;
        assert_eq!(n.ipv6_network, Some("fd00:10:244::/56".parse().unwrap()));
        assert!(n.ipv6_enabled() && !n.enable_ipv4 && n.explicit);
        assert_eq!(n.ipv6_subnet_len, Some(80));
        assert_eq!(n.ipv6_subnet_min, Some("fd00:10:244:1::".parse().unwrap()));
        assert_eq!(a.uplink.public_ipv6, Some("fd00:198:18::11".parse().unwrap()));
        assert!(a.masq.enabled && !a.masq.ipv6());
        assert!(!args(&["--ipv6-network=fd00::/48", "--enable-ipv6=false"])
            .unwrap()
            .network
            .ipv6_enabled());
        assert!(args(&["--enable-ipv6"]).unwrap().network.ipv6_enabled());
        for (v, needle) in [
            (&["--ipv6-network", "fd00::1/48"][..], "host bits"),
            (&["--ipv6-network", "10.0.0.0/8"], "an IPv6 CIDR"),
            (&["--public-ipv6", "fe80::1"], "a global unicast IPv6 address"),
            (&["--public-ipv6", "198.18.0.1"], "an IPv6 address"),
            (&["--ipv6-subnet-min", "10.0.0.0"], "an IPv6 address"),
            (&["--enable-ipv4=maybe"], "true or false"),
        ] {
            let e = args(v).unwrap_err();
            assert!(e.contains(needle), "{v:?}: {e}");
        }
    }

    #[test]
    fn every_flag_name_is_in_the_usage() {
        for f in flag_names() {
            assert!(USAGE.contains(f), "{f} missing from USAGE");
        }
    }
}
