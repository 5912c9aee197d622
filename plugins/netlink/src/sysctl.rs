//! `/proc/sys` writes. `/proc/sys/net` entries act on the network namespace of the thread that
//! opens them, so call these inside [`crate::netns::with_netns`] for another namespace.

use std::io;

/// Write `value` to `/proc/sys/<key with dots as slashes>`, e.g. `net.ipv4.ip_forward`.
/// Skips the write when the value is already set (saves a syscall on the hot path).
pub fn set(key: &str, value: &str) -> io::Result<()> {
    let _ = (key, value);
    todo!()
}

pub fn get(key: &str) -> io::Result<String> {
    let _ = key;
    todo!()
}
