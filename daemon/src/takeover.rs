//! Taking a node over from flanneld in place: the addresses flannel's pods already hold.
//!
//! flannel's CNI plugin hands its pods' addresses out of this node's subnet with `host-local`,
//! which records each one as a file named after the address in its data directory
//! (`/var/lib/cni/networks/cbr0/10.244.7.2`). After a takeover those pods keep running on
//! `cni0`, so ferry must never hand out one of their addresses: ferryd lists that directory and
//! puts every address inside its subnet into the conflist's `exclude`, re-read at every sweep
//! (host-local's DEL removes the file, so the list only shrinks once flannel's CNI config is
//! gone). In a dual-stack cluster host-local records both families' addresses there; both are
//! excluded.

use crate::store::Subnets;
use std::net::IpAddr;
use std::path::Path;

/// The addresses `host-local` has allocated in `dir` that lie inside one of `subnets` (each
/// family's), sorted (IPv4 first). A missing or unreadable directory is none; entries that are
/// not addresses (`lock`, `last_reserved_ip.0`) or outside the subnets are skipped.
pub fn host_local_allocations(dir: &Path, subnets: Subnets) -> Vec<IpAddr> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let inside = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => subnets.v4.is_some_and(|s| s.contains(*a)),
        IpAddr::V6(a) => subnets.v6.is_some_and(|s| s.contains(*a)),
    };
    let mut v: Vec<IpAddr> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<IpAddr>().ok())
        .filter(inside)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The address after `a` in its family, if any.
fn next(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(x) => u32::from(x).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(x) => u128::from(x).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// Sorted, deduplicated addresses as the plugin's `exclude` entries, runs collapsed to `A-B`.
pub fn exclude_entries(addrs: &[IpAddr]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < addrs.len() {
        let mut j = i;
        while j + 1 < addrs.len() && next(addrs[j]) == Some(addrs[j + 1]) {
            j += 1;
        }
        out.push(if i == j { addrs[i].to_string() } else { format!("{}-{}", addrs[i], addrs[j]) });
        i = j + 1;
    }
    out
}

/// The `exclude` entries for this node's conflist (`dir` is `--cni-exclude-host-local`).
pub fn excludes(dir: Option<&Path>, subnets: Subnets) -> Vec<String> {
    dir.map(|d| exclude_entries(&host_local_allocations(d, subnets))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_files_in_the_subnet_are_excluded_in_runs() {
        let d = std::env::temp_dir().join(format!("ferryd-hl-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "10.244.7.2",
            "10.244.7.3",
            "10.244.7.4",
            "10.244.7.9",
            "10.244.8.2", // another node's subnet
            "fd00::2",    // outside this node's IPv6 subnet
            "fd00:10:244:7::2",
            "fd00:10:244:7::3",
            "fd00:10:244:7::a",
            "lock",
            "last_reserved_ip.0",
            "10.244.7.300",
        ] {
            std::fs::write(d.join(f), "c1\neth0").unwrap();
        }
        let s: Subnets = "10.244.7.0/24".parse::<ipnetwork::Ipv4Network>().unwrap().into();
        assert_eq!(excludes(Some(&d), s), ["10.244.7.2-10.244.7.4", "10.244.7.9"]);
        assert!(excludes(None, s).is_empty());
        assert!(excludes(Some(&d.join("missing")), s).is_empty());
        // Dual-stack (flannel's host-local with two ranges): both families' addresses.
        let dual = Subnets { v6: Some("fd00:10:244:7::/64".parse().unwrap()), ..s };
        assert_eq!(
            excludes(Some(&d), dual),
            [
                "10.244.7.2-10.244.7.4",
                "10.244.7.9",
                "fd00:10:244:7::2-fd00:10:244:7::3",
                "fd00:10:244:7::a"
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
