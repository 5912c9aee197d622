//! The node subnet file, flannel's `subnet.env` format:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1500
//! FLANNEL_IPMASQ=true
//! ```
//! Keys may also be spelled `FERRY_NETWORK`, `FERRY_SUBNET`, ... (a `FERRY_` key wins over its
//! `FLANNEL_` twin). `*_IPV6_NETWORK` / `*_IPV6_SUBNET` are parsed for dual-stack.

use ipnetwork::IpNetwork;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The cluster network, e.g. `10.244.0.0/16`.
    pub network: Option<IpNetwork>,
    /// The node's subnet, written as its first usable address with the prefix (`10.244.1.1/24`).
    pub subnet: Option<IpNetwork>,
    pub ipv6_network: Option<IpNetwork>,
    pub ipv6_subnet: Option<IpNetwork>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

impl SubnetEnv {
    /// Parse the file's text. Errors say which line and key is wrong.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut out = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: None,
            ipmasq: None,
        };
        let mut seen_ferry = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected KEY=VALUE, got {:?}", n + 1, clip(line)));
            };
            let v = v.trim().trim_matches('"').trim_matches('\'');
            let (is_ferry, key) = if let Some(k) = k.strip_prefix("FERRY_") {
                (true, k)
            } else if let Some(k) = k.strip_prefix("FLANNEL_") {
                (false, k)
            } else {
                continue;
            };
            if !is_ferry && seen_ferry.contains(key) {
                continue;
            }
            if is_ferry {
                seen_ferry.insert(key.to_string());
            }
            out.set(key, k, v, n + 1)?;
        }
        if out.subnet.is_none() && out.ipv6_subnet.is_none() {
            return Err("no FLANNEL_SUBNET or FERRY_SUBNET key".into());
        }
        Ok(out)
    }

    /// Apply one line's value: `key` without its prefix, `k` as written (for errors).
    fn set(&mut self, key: &str, k: &str, v: &str, line: usize) -> Result<(), String> {
        let cidr = |v: &str| -> Result<Option<IpNetwork>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            // Multi-CIDR files hold comma-separated lists; the first entry is the node's.
            let first = v.split(',').next().unwrap_or("").trim();
            first.parse().map(Some).map_err(|_| format!("line {line}: {k}={v:?} is not a CIDR"))
        };
        match key {
            "NETWORK" => self.network = cidr(v)?,
            "SUBNET" => self.subnet = cidr(v)?,
            "IPV6_NETWORK" => self.ipv6_network = cidr(v)?,
            "IPV6_SUBNET" => self.ipv6_subnet = cidr(v)?,
            "MTU" => {
                let mtu = v.parse::<u32>().ok().filter(|m| (68..=65535).contains(m));
                let bad = || format!("line {line}: {k}={v:?} is not an MTU (68-65535)");
                self.mtu = Some(mtu.ok_or_else(bad)?);
            }
            "IPMASQ" => {
                self.ipmasq = Some(match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("line {line}: {k}={v:?} is not true/false")),
                })
            }
            _ => {}
        }
        Ok(())
    }

    /// Render in flannel's spelling, so the flannel CNI plugin can read a file Ferry wrote.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: String| {
            s.push_str(k);
            s.push('=');
            s.push_str(&v);
            s.push('\n');
        };
        if let Some(n) = self.network {
            kv("FLANNEL_NETWORK", n.to_string());
        }
        if let Some(n) = self.subnet {
            kv("FLANNEL_SUBNET", n.to_string());
        }
        if let Some(n) = self.ipv6_network {
            kv("FLANNEL_IPV6_NETWORK", n.to_string());
        }
        if let Some(n) = self.ipv6_subnet {
            kv("FLANNEL_IPV6_SUBNET", n.to_string());
        }
        if let Some(m) = self.mtu {
            kv("FLANNEL_MTU", m.to_string());
        }
        if let Some(b) = self.ipmasq {
            kv("FLANNEL_IPMASQ", b.to_string());
        }
        s
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_file() {
        let e = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(e.subnet.unwrap().to_string(), "10.244.1.1/24");
        assert_eq!(e.network.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(e.mtu, Some(1450));
        assert_eq!(e.ipmasq, Some(true));
        assert_eq!(SubnetEnv::parse(&e.render()).unwrap(), e);
    }

    #[test]
    fn ferry_keys_win() {
        let e = SubnetEnv::parse(
            "FERRY_SUBNET=10.9.0.1/24\nFLANNEL_SUBNET=10.8.0.1/24\n# c\n\nOTHER=1\n",
        )
        .unwrap();
        assert_eq!(e.subnet.unwrap().to_string(), "10.9.0.1/24");
    }

    #[test]
    fn garbled_files_are_rejected() {
        for bad in [
            "",
            "garbage",
            "FLANNEL_SUBNET=10.0.0.0/33",
            "FLANNEL_SUBNET=x",
            "FLANNEL_SUBNET=10.0.0.1/24\nFLANNEL_MTU=abc",
            "FLANNEL_NETWORK=10.0.0.0/8",
        ] {
            assert!(SubnetEnv::parse(bad).is_err(), "{bad:?}");
        }
    }
}
