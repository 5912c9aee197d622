//! `ferryctl lease` (this node's lease: subnet file and store) and `ferryctl leases` (the
//! cluster's, with the entries ferryd ignores and why).

use super::table::{expiry, expiry_json, pairs, render};
use super::{Report, EXIT_DIFFERENT, EXIT_FAILED, EXIT_OK};
use crate::args::Args;
use crate::config;
use crate::node::NodeFiles;
use crate::peers::{apply_event, evaluate, Leases, Me, Me4, Me6, Verdict};
use crate::store::any::AnyStore;
use crate::store::{subnet_key, LeaseEntry, LeaseStore, NetworkConfig, Subnets, WatchEvent};
use ferry_cni::subnet_env::SubnetEnv;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::json;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::SystemTime;

/// What the subnet file ferryd wrote says about this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub path: PathBuf,
    pub network: Option<Ipv4Network>,
    /// The node's subnet (network address form: `10.244.7.0/24`); flannel's empty `0.0.0.0/0`
    /// on an IPv6-only node.
    pub subnet: Ipv4Network,
    pub network6: Option<Ipv6Network>,
    /// The node's IPv6 subnet (network address form), with IPv6 on.
    pub subnet6: Option<Ipv6Network>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

impl Local {
    /// The subnets the subnet file names (its lease key).
    pub fn subnets(&self) -> Subnets {
        Subnets { v4: (self.subnet.prefix() > 0).then_some(self.subnet), v6: self.subnet6 }
    }
}

/// This node's lease attrs match `m`'s addresses (each enabled family's).
fn same_ips(a: &crate::store::LeaseAttrs, m: &Me) -> bool {
    m.v4.is_none_or(|m| a.public_ip == m.public_ip)
        && m.v6.is_none_or(|m| a.public_ipv6 == Some(m.public_ip))
}

/// Read the subnet file; `Ok(None)` when there is none.
pub fn local(files: &NodeFiles) -> Result<Option<Local>, String> {
    let path = &files.subnet_file;
    let text = match ferry_fs::read_optional(path, 64 << 10) {
        Ok(Some(b)) => {
            String::from_utf8(b).map_err(|_| format!("{}: not UTF-8", path.display()))?
        }
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("subnet file {}: {e}", path.display())),
    };
    let env =
        SubnetEnv::parse(&text).map_err(|e| format!("subnet file {}: {e}", path.display()))?;
    let subnet6 = match env.ipv6_subnet {
        Some(IpNetwork::V6(s)) => Some(Ipv6Network::new(s.network(), s.prefix()).expect("prefix")),
        _ => None,
    };
    let subnet = match (env.subnet, subnet6) {
        (Some(IpNetwork::V4(s)), _) => Ipv4Network::new(s.network(), s.prefix()).expect("prefix"),
        (_, Some(_)) => crate::store::no_v4(),
        _ => {
            return Err(format!(
                "subnet file {}: no FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET",
                path.display()
            ))
        }
    };
    let network = match env.network {
        Some(IpNetwork::V4(n)) => Some(n),
        _ => None,
    };
    let network6 = match env.ipv6_network {
        Some(IpNetwork::V6(n)) => Some(n),
        _ => None,
    };
    let (mtu, ipmasq) = (env.mtu, env.ipmasq);
    Ok(Some(Local { path: path.clone(), network, subnet, network6, subnet6, mtu, ipmasq }))
}

/// The store's network config (if any) and every entry.
pub async fn listing(a: &Args) -> Result<(Option<NetworkConfig>, Vec<LeaseEntry>), String> {
    let at = || AnyStore::describe(&a.store);
    let mut store = AnyStore::open_reader(&a.store).await.map_err(|e| format!("{}: {e}", at()))?;
    let cfg = store.get_config().await.map_err(|e| format!("{}: {e}", at()))?;
    let (entries, _) = store.list().await.map_err(|e| format!("{}: {e}", at()))?;
    Ok((cfg, entries))
}

/// The entries as ferryd keeps them (keyed by their key).
pub fn lease_map(entries: &[LeaseEntry]) -> Leases {
    let mut m = Leases::new();
    apply_event(&mut m, WatchEvent::Resync(entries.to_vec()));
    m
}

/// This node as ferryd judges leases: the network from the store's config (else the subnet
/// file), the subnet from the subnet file, the public IP given (else the lease's). `None` when
/// neither names a network.
pub fn me(
    cfg: Option<&NetworkConfig>,
    local: Option<&Local>,
    public_ip: Option<Ipv4Addr>,
    entries: &[LeaseEntry],
) -> Option<Me> {
    let net = cfg.and_then(|c| config::validate(c).ok());
    let own = local.and_then(|l| own_lease(entries, l.subnets())).map(|l| l.attrs.clone());
    let v4 = (|| {
        if net.is_some_and(|n| n.v4.is_none()) {
            return None;
        }
        let n4 = net.and_then(|n| n.v4);
        let network = n4.map(|n| n.network).or(local.and_then(|l| l.network))?;
        let subnet = local.map(|l| l.subnet).filter(|s| s.prefix() > 0);
        let subnet_len = n4.map(|n| n.subnet_len).or(subnet.map(|s| s.prefix()))?;
        Some(Me4 {
            network,
            subnet_len,
            // No subnet file: a subnet no lease can equal or overlap inside the network.
            subnet: subnet.unwrap_or(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 32).expect("/32")),
            public_ip: public_ip
                .or(own.as_ref().map(|a| a.public_ip))
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
        })
    })();
    let v6 = (|| {
        let n6 = net.and_then(|n| n.v6);
        let network = n6.map(|n| n.network).or(local.and_then(|l| l.network6))?;
        let subnet = local.and_then(|l| l.subnet6);
        let subnet_len = n6.map(|n| n.subnet_len).or(subnet.map(|s| s.prefix()))?;
        let none = Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 128).expect("/128");
        Some(Me6 {
            network,
            subnet_len,
            subnet: subnet.unwrap_or(none),
            public_ip: own.as_ref().and_then(|a| a.public_ipv6).unwrap_or(Ipv6Addr::UNSPECIFIED),
        })
    })();
    let mode = net.map_or(config::Mode::HostGw, |n| n.mode);
    (v4.is_some() || v6.is_some()).then_some(Me { v4, v6, mode })
}

/// The lease stored under the canonical key of `subnet` (one family's or both).
pub fn own_lease(
    entries: &[LeaseEntry],
    subnet: impl Into<Subnets>,
) -> Option<&crate::store::Lease> {
    let key = subnet.into().key();
    entries.iter().filter_map(|e| e.as_ref().ok()).find(|l| l.key == key)
}

/// `ferryctl leases`.
pub async fn leases(a: &Args) -> Result<Report, String> {
    let (cfg, entries) = listing(a).await?;
    let local = local(&a.files).ok().flatten();
    let me = me(cfg.as_ref(), local.as_ref(), a.uplink.public_ip, &entries);
    let now = SystemTime::now();
    let verdict = me.as_ref().map(|m| evaluate(&lease_map(&entries), m, now)).unwrap_or_default();
    let mut rows: Vec<Row> =
        entries.iter().map(|e| Row::of(e, me.as_ref(), local.is_some(), &verdict, now)).collect();
    // Leases by address, then the entries ferryd ignores for what they are.
    rows.sort_by_key(|r| {
        (r.subnet.is_none(), r.subnet.map(|s| u32::from(s.network())), r.key.clone())
    });
    let text = leases_text(&rows, cfg.as_ref(), a, now);
    let json = json!({
        "store": AnyStore::describe(&a.store),
        "network": cfg.as_ref().and_then(|c| c.network).map(|n| n.to_string()),
        "subnet_len": cfg.as_ref().and_then(|c| config::validate(c).ok()).and_then(|n| n.v4).map(|n| n.subnet_len),
        "ipv6_network": cfg.as_ref().and_then(|c| c.ipv6_network).map(|n| n.to_string()),
        "this_node": local.as_ref().map(|l| l.subnet.to_string()),
        "leases": rows.iter().map(|r| r.json(now)).collect::<Vec<_>>(),
    });
    Ok(Report { text, json, code: EXIT_OK })
}

/// One store entry as `leases` shows it.
struct Row {
    key: String,
    subnet: Option<Ipv4Network>,
    public_ip: Option<Ipv4Addr>,
    subnet6: Option<Ipv6Network>,
    public_ipv6: Option<Ipv6Addr>,
    backend: Option<String>,
    expires: Option<SystemTime>,
    /// `this node`, `peer`, `expired` or `ignored`.
    status: &'static str,
    reason: Option<String>,
}

impl Row {
    fn of(e: &LeaseEntry, me: Option<&Me>, node: bool, v: &Verdict, now: SystemTime) -> Row {
        let l = match e {
            Err(b) => {
                let (key, reason) = (b.key.clone(), Some(b.reason.clone()));
                let (subnet, public_ip, backend, expires) = (None, None, None, None);
                let (subnet6, public_ipv6) = (None, None);
                return Row {
                    key,
                    subnet,
                    public_ip,
                    subnet6,
                    public_ipv6,
                    backend,
                    expires,
                    status: "ignored",
                    reason,
                };
            }
            Ok(l) => l,
        };
        let reason = v.bad.get(&l.key).cloned();
        let mine = me.is_some_and(|m| node && l.subnets() == m.subnets() && same_ips(&l.attrs, m));
        let status = if l.expires.is_some_and(|t| t <= now) {
            "expired"
        } else if reason.is_some() {
            "ignored"
        } else if mine {
            "this node"
        } else {
            "peer"
        };
        Row {
            key: l.key.clone(),
            subnet: Some(l.subnet),
            public_ip: Some(l.attrs.public_ip),
            subnet6: l.subnet6,
            public_ipv6: l.attrs.public_ipv6,
            backend: Some(l.attrs.backend_type.clone()),
            expires: l.expires,
            status,
            reason,
        }
    }

    fn cells(&self, now: SystemTime) -> Vec<String> {
        let dash = || "-".to_string();
        let plain = self.subnet.is_some_and(|s| subnet_key(s) == self.key);
        let status = match &self.reason {
            Some(r) => format!("{}: {r}", self.status),
            None => self.status.to_string(),
        };
        vec![
            if plain {
                self.subnet.map(|s| s.to_string()).unwrap_or_default()
            } else {
                self.key.clone()
            },
            match (self.public_ip, self.public_ipv6) {
                (Some(ip), Some(v6)) if ip.is_unspecified() => v6.to_string(),
                (Some(ip), Some(v6)) => format!("{ip} {v6}"),
                (ip, _) => ip.map_or_else(dash, |ip| ip.to_string()),
            },
            self.backend.clone().filter(|b| !b.is_empty()).unwrap_or_else(dash),
            if self.subnet.is_some() { expiry(self.expires, now) } else { dash() },
            status,
        ]
    }

    fn json(&self, now: SystemTime) -> serde_json::Value {
        let mut v = json!({
            "key": self.key,
            "subnet": self.subnet.map(|s| s.to_string()),
            "public_ip": self.public_ip.map(|i| i.to_string()),
            "subnet6": self.subnet6.map(|s| s.to_string()),
            "public_ipv6": self.public_ipv6.map(|i| i.to_string()),
            "backend": self.backend,
            "status": self.status,
            "reason": self.reason,
        });
        if self.subnet.is_some() {
            for (k, x) in expiry_json(self.expires, now).as_object().expect("object") {
                v[k] = x.clone();
            }
        }
        v
    }
}

fn leases_text(rows: &[Row], cfg: Option<&NetworkConfig>, a: &Args, now: SystemTime) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells(now)).collect();
    let mut t = render(&["LEASE", "PUBLIC IP", "BACKEND", "EXPIRES", "STATUS"], &cells);
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    t.push_str(&format!(
        "\n{} entries: {} this node, {} peers, {} expired, {} ignored\n",
        rows.len(),
        count("this node"),
        count("peer"),
        count("expired"),
        count("ignored")
    ));
    let net = match cfg.map(config::validate) {
        Some(Ok(n)) => n.describe(),
        Some(Err(e)) => format!("unusable stored config: {e}"),
        None => "no network config stored".into(),
    };
    t.push_str(&format!("{net}\nstore: {}\n", AnyStore::describe(&a.store)));
    t
}

/// `ferryctl lease`: exit 1 when this node holds no live lease (no subnet file, no lease under
/// its subnet, or one naming another node), 3 when the store cannot be read.
pub async fn lease(a: &Args) -> Result<Report, String> {
    let Some(local) = local(&a.files)? else {
        let path = a.files.subnet_file.display();
        let msg =
            format!("no subnet file at {path}: this node holds no lease (is ferryd running?)");
        let json =
            json!({"held": false, "state": "no subnet file", "subnet_file": path.to_string()});
        return Ok(Report { text: msg + "\n", json, code: EXIT_DIFFERENT });
    };
    let store = AnyStore::describe(&a.store);
    let found = match listing(a).await {
        Ok((_, entries)) => Ok(own_lease(&entries, local.subnets()).cloned()),
        Err(e) => Err(e),
    };
    let view = LeaseView::new(&local, found, a.uplink.public_ip, SystemTime::now());
    Ok(view.report(&local, &store))
}

/// This node's lease as `lease` shows it.
struct LeaseView {
    lease: Option<crate::store::Lease>,
    /// `held`, `expired`, `missing from the store`, `held by another node`, `store unreachable`.
    state: String,
    code: i32,
    now: SystemTime,
}

impl LeaseView {
    fn new(
        local: &Local,
        found: Result<Option<crate::store::Lease>, String>,
        me: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> LeaseView {
        let (lease, state, code) = match found {
            Err(e) => (None, format!("store unreachable: {e}"), EXIT_FAILED),
            Ok(None) => (
                None,
                format!("missing from the store (no key {})", local.subnets().key()),
                EXIT_DIFFERENT,
            ),
            Ok(Some(l)) => {
                let (state, code) = if l.expires.is_some_and(|t| t <= now) {
                    ("expired".to_string(), EXIT_DIFFERENT)
                } else if me.is_some_and(|ip| ip != l.attrs.public_ip) {
                    (format!("held by another node ({})", l.attrs.public_ip), EXIT_DIFFERENT)
                } else {
                    ("held".to_string(), EXIT_OK)
                };
                (Some(l), state, code)
            }
        };
        LeaseView { lease, state, code, now }
    }

    fn report(&self, local: &Local, store: &str) -> Report {
        let l = self.lease.as_ref();
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let file = format!(
            "{} (MTU {}, ip-masq {})",
            local.path.display(),
            opt(local.mtu.map(|m| m.to_string())),
            opt(local.ipmasq.map(|m| m.to_string()))
        );
        let v4 = (local.subnet.prefix() > 0).then_some(local.subnet);
        let mut rows = vec![
            ("subnet", opt(v4.map(|s| s.to_string()))),
            ("network", opt(local.network.map(|n| n.to_string()))),
            ("public IP", opt(l.map(|l| l.attrs.public_ip.to_string()))),
        ];
        if local.subnet6.is_some() {
            rows.extend([
                ("IPv6 subnet", opt(local.subnet6.map(|s| s.to_string()))),
                ("IPv6 network", opt(local.network6.map(|n| n.to_string()))),
                ("public IPv6", opt(l.and_then(|l| l.attrs.public_ipv6).map(|i| i.to_string()))),
            ]);
        }
        rows.extend([
            ("backend", opt(l.map(|l| l.attrs.backend_type.clone()))),
            ("expires", opt(l.map(|l| expiry(l.expires, self.now)))),
            ("state", self.state.clone()),
            ("subnet file", file),
            ("store", store.to_string()),
        ]);
        let text = pairs(&rows);
        let mut json = json!({
            "subnet": v4.map(|s| s.to_string()),
            "network": local.network.map(|n| n.to_string()),
            "public_ip": l.map(|l| l.attrs.public_ip.to_string()),
            "subnet6": local.subnet6.map(|s| s.to_string()),
            "ipv6_network": local.network6.map(|n| n.to_string()),
            "public_ipv6": l.and_then(|l| l.attrs.public_ipv6).map(|i| i.to_string()),
            "key": local.subnets().key(),
            "backend": l.map(|l| l.attrs.backend_type.clone()),
            "held": self.code == EXIT_OK,
            "state": self.state,
            "subnet_file": local.path.display().to_string(),
            "mtu": local.mtu,
            "ip_masq": local.ipmasq,
            "store": store,
        });
        if let Some(l) = l {
            for (k, x) in expiry_json(l.expires, self.now).as_object().expect("object") {
                json[k] = x.clone();
            }
        }
        Report { text, json, code: self.code }
    }
}
