//! Masquerade in Ferry's own nftables tables, one per family: `ip ferry` (IPv4) and `ip6 ferry`
//! (IPv6), applied declaratively with `nft -f -`: each apply deletes and re-creates both tables
//! in one transaction (a family that is off gets none), so nothing else is touched and no stale
//! rule survives. The periodic check re-applies only when nftables' generation id moved since the
//! last apply (see [`generation`]): an idle node runs no `nft`.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const TABLE: &str = "ferry";

/// `--ip-masq`, `--ipv6-masq` and `--nft`.
#[derive(Debug, Clone, PartialEq)]
pub struct Masquerade {
    /// Masquerade pod traffic leaving the cluster network (IPv4, and IPv6 unless `enabled6`).
    pub enabled: bool,
    /// `--ipv6-masq`: the IPv6 switch, when it differs from `enabled`.
    pub enabled6: Option<bool>,
    /// The nft binary.
    pub nft: String,
}

impl Masquerade {
    /// Whether IPv6 pod traffic leaving the IPv6 cluster network is masqueraded.
    pub fn ipv6(&self) -> bool {
        self.enabled6.unwrap_or(self.enabled)
    }
}

/// What to masquerade: per enabled family, the cluster network and this node's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub v4: Option<(Ipv4Network, Ipv4Network)>,
    pub v6: Option<(Ipv6Network, Ipv6Network)>,
}

/// Pods (this node's subnet) talking to anything outside the cluster network of their family
/// are masqueraded; pod-to-pod traffic across nodes (of either family), multicast and IPv6
/// link-local keep their source address.
pub fn ruleset(scope: &Scope) -> String {
    let mut out = removal();
    if let Some((network, subnet)) = scope.v4 {
        out += &format!(
            "table ip {TABLE} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} ip daddr {network} return\n\
             \t\tip saddr {subnet} ip daddr 224.0.0.0/4 return\n\
             \t\tip saddr {subnet} masquerade\n\
             \t}}\n\
             }}\n"
        );
    }
    if let Some((network, subnet)) = scope.v6 {
        out += &format!(
            "table ip6 {TABLE} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip6 saddr {subnet} ip6 daddr {network} return\n\
             \t\tip6 saddr {subnet} ip6 daddr ff00::/8 return\n\
             \t\tip6 saddr {subnet} ip6 daddr fe80::/10 return\n\
             \t\tip6 saddr {subnet} masquerade\n\
             \t}}\n\
             }}\n"
        );
    }
    out
}

/// Removes both tables if they exist (creating them first makes the deletes never fail).
pub fn removal() -> String {
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip6 {TABLE} {{}}\ndelete table ip6 {TABLE}\n"
    )
}

/// How long one `nft -f -` may take before it is killed: it runs on the event loop's thread, so
/// a hung nft (a stuck netlink lock, a wrapper waiting on something) must not wedge the daemon.
/// An apply takes milliseconds.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `nft -f -` with `script` on stdin; killed (and reaped) past [`NFT_TIMEOUT`].
pub fn nft(bin: &str, script: &str) -> Result<(), String> {
    nft_within(bin, script, NFT_TIMEOUT)
}

fn nft_within(bin: &str, script: &str, limit: Duration) -> Result<(), String> {
    let mut child = Command::new(bin)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {bin}: {e}"))?;
    let written = child.stdin.take().expect("piped").write_all(script.as_bytes());
    // stdin is closed here (dropped), so nft sees the end of its script.
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if t0.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{bin} -f - did not finish within {limit:?}: killed"));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("wait for {bin}: {e}"));
            }
        }
    };
    if status.success() {
        // nft read a whole script or it would have failed; a write error still means it did not.
        return written.map_err(|e| format!("write to {bin}: {e}"));
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Err(format!("{bin} -f - failed ({status}): {}", err.trim()))
}

pub fn apply(bin: &str, scope: &Scope) -> Result<(), String> {
    nft(bin, &ruleset(scope))
}

pub fn remove(bin: &str) -> Result<(), String> {
    nft(bin, &removal())
}

/// The nftables ruleset generation of this network namespace: every commit by anyone (also a
/// deleted or edited `ferry` table) changes it. `None` if it cannot be read (no nf_tables, no
/// permission): then nothing can be skipped.
pub fn generation() -> Option<u32> {
    ferry_netlink::nftgen::generation().map_err(|e| debug!("nftables generation: {e}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hung nft is killed at the limit (and reaped), a failing one's stderr is the error.
    #[test]
    fn nft_is_bounded_and_its_failure_explained() {
        let dir = std::env::temp_dir().join(format!("ferry-nft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.to_string_lossy().into_owned()
        };
        let hung = script("hung", "cat >/dev/null; exec sleep 30");
        let t0 = Instant::now();
        let e = nft_within(&hung, "table ip ferry {}\n", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not finish within 300ms: killed"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let failing = script("failing", "cat >/dev/null; echo 'Error: no such table' >&2; exit 1");
        let e = nft_within(&failing, "x\n", Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("failed (exit status: 1): Error: no such table"), "{e}");
        let fine = script("fine", "cat >/dev/null");
        assert_eq!(nft_within(&fine, "x\n", Duration::from_secs(5)), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn v4() -> Option<(Ipv4Network, Ipv4Network)> {
        Some(("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap()))
    }

    fn v6() -> Option<(Ipv6Network, Ipv6Network)> {
        Some(("fd00:10:244::/56".parse().unwrap(), "fd00:10:244:3::/64".parse().unwrap()))
    }

    #[test]
    fn ruleset_exempts_the_cluster_network() {
        let r = ruleset(&Scope { v4: v4(), v6: None });
        assert!(r.starts_with("table ip ferry {}\ndelete table ip ferry\n"), "{r}");
        assert!(r.contains("table ip6 ferry {}\ndelete table ip6 ferry\n"), "{r}");
        assert!(r.contains("ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return\n"), "{r}");
        assert!(r.contains("ip saddr 10.244.3.0/24 masquerade\n"), "{r}");
        assert!(r.contains("type nat hook postrouting priority srcnat;"), "{r}");
        assert!(!r.contains("ip6 saddr"), "no IPv6 rules without IPv6: {r}");
    }

    #[test]
    fn ruleset_per_family() {
        let both = ruleset(&Scope { v4: v4(), v6: v6() });
        assert!(both.contains("ip saddr 10.244.3.0/24 masquerade\n"), "{both}");
        assert!(
            both.contains("ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return\n"),
            "{both}"
        );
        assert!(both.contains("ip6 saddr fd00:10:244:3::/64 masquerade\n"), "{both}");
        let only6 = ruleset(&Scope { v4: None, v6: v6() });
        assert!(!only6.contains("ip saddr"), "{only6}");
        assert!(only6.contains("table ip6 ferry {\n"), "{only6}");
        // IPv4 pods never SNAT towards the IPv6 pod network and the reverse: each table
        // matches its own family only, and each exempts its own cluster network.
        assert!(only6.contains("delete table ip ferry\n"), "a stale IPv4 table goes: {only6}");
    }
}
