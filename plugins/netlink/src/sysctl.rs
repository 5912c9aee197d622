//! `/proc/sys` writes. `/proc/sys/net` entries act on the network namespace of the thread that
//! opens them, so call these inside [`crate::netns::with_netns`] for another namespace.

use std::io::{self, Write};
use std::path::PathBuf;

/// `/proc/sys/` path of `key`: dots separate components (`net.ipv4.ip_forward`); a key that
/// contains `/` is taken as a path already (`net/ipv4/conf/eth0.100/forwarding`), like sysctl(8).
pub fn path(key: &str) -> PathBuf {
    let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    PathBuf::from("/proc/sys").join(rel.trim_start_matches('/'))
}

/// Write `value` to `/proc/sys/<key with dots as slashes>`, e.g. `net.ipv4.ip_forward`.
/// Skips the write when the value is already set (saves a syscall on the hot path).
pub fn set(key: &str, value: &str) -> io::Result<()> {
    if get(key)? == value.trim() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path(key))?;
    f.write_all(value.as_bytes())
}

pub fn get(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_to_path() {
        assert_eq!(path("net.ipv4.ip_forward"), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            path("net/ipv4/conf/eth0.100/rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn get_reads_trimmed() {
        // read-only and namespace-independent
        let v = get("kernel.ostype").unwrap();
        assert_eq!(v, "Linux");
    }
}
