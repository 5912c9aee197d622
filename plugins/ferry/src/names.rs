//! Deterministic host-side names and ownership tags.

/// Host end of the pod's veth: `fry` + 12 hex digits of a hash of (container id, ifname).
/// 15 bytes, the kernel's limit; 48 hash bits make a collision between live pods on one node
/// vanishingly unlikely, and the alias records the owner so one would be detected, not clobbered.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a 64
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fry{:012x}", h >> 16)
}

pub const HOST_PREFIX: &str = "fry";

/// IFLA_IFALIAS on the host end: `ferry <network> <container id> <ifname>` (what GC matches on).
pub fn alias(network: &str, container_id: &str, ifname: &str) -> String {
    let mut s = format!("ferry {network} {container_id} {ifname}");
    s.truncate(250);
    s
}

/// Parse an alias written by [`alias`]: (network, container id, ifname).
pub fn parse_alias(a: &str) -> Option<(&str, &str, &str)> {
    let mut it = a.strip_prefix("ferry ")?.split(' ');
    let (n, c, i) = (it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some((n, c, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_short_and_distinct() {
        let a = host_veth("abc", "eth0");
        assert_eq!(a, host_veth("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_PREFIX));
        assert_ne!(a, host_veth("abc", "eth1"));
        assert_ne!(a, host_veth("abd", "eth0"));
        assert_ne!(host_veth("ab", "ceth0"), host_veth("abc", "eth0"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..20000 {
            assert!(seen.insert(host_veth(&format!("c{i}"), "eth0")));
        }
    }

    #[test]
    fn alias_round_trips() {
        let a = alias("net", "c1", "eth0");
        assert_eq!(parse_alias(&a), Some(("net", "c1", "eth0")));
        assert_eq!(parse_alias("something else"), None);
    }
}
