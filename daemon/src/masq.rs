//! Masquerade in Ferry's own nftables table `ip ferry`, applied declaratively with `nft -f -`:
//! each apply deletes and re-creates the table in one transaction, so nothing else is touched and
//! no stale rule survives.

use ipnetwork::Ipv4Network;
use std::io::Write;
use std::process::{Command, Stdio};

pub const TABLE: &str = "ferry";

/// `--ip-masq` and `--nft`.
#[derive(Debug, Clone, PartialEq)]
pub struct Masquerade {
    /// Masquerade pod traffic leaving the cluster network.
    pub enabled: bool,
    /// The nft binary.
    pub nft: String,
}

/// Pods (this node's subnet) talking to anything outside the cluster network are masqueraded;
/// pod-to-pod traffic across nodes and multicast keep their source address.
pub fn ruleset(network: Ipv4Network, subnet: Ipv4Network) -> String {
    format!(
        "table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr {network} return\n\
         \t\tip saddr {subnet} ip daddr 224.0.0.0/4 return\n\
         \t\tip saddr {subnet} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Removes the table if it exists (creating it first makes the delete never fail).
pub fn removal() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

/// Run `nft -f -` with `script` on stdin.
pub fn nft(bin: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new(bin)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {bin}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("write to {bin}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("wait for {bin}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{bin} -f - failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn apply(bin: &str, network: Ipv4Network, subnet: Ipv4Network) -> Result<(), String> {
    nft(bin, &ruleset(network, subnet))
}

pub fn remove(bin: &str) -> Result<(), String> {
    nft(bin, &removal())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_exempts_the_cluster_network() {
        let r = ruleset("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap());
        assert!(r.starts_with("table ip ferry {}\ndelete table ip ferry\n"), "{r}");
        assert!(r.contains("ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return\n"), "{r}");
        assert!(r.contains("ip saddr 10.244.3.0/24 masquerade\n"), "{r}");
        assert!(r.contains("type nat hook postrouting priority srcnat;"), "{r}");
    }
}
