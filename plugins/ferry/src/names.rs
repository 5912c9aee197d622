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

/// Prefix of the current alias format.
const TAG: &str = "ferry1 ";

/// The attachment's fixed-size key: 128-bit FNV-1a of (network, container id, ifname), as 32 hex
/// digits. The full key lives in the IPAM state and the runtime's lists; this only has to match.
pub fn attachment_hash(network: &str, container_id: &str, ifname: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d; // FNV-1a 128 offset basis
    let bytes = network.bytes().chain([0u8]).chain(container_id.bytes()).chain([0u8]);
    for b in bytes.chain(ifname.bytes()) {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    format!("{h:032x}")
}

/// IFLA_IFALIAS on the host end: `ferry1 <network> <attachment hash>`, at most 7 + 128 + 1 + 32
/// bytes, well inside the kernel's 255: never truncated, whatever the container id's length
/// (what GC, DEL and a repeated ADD match on).
pub fn alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{TAG}{network} {}", attachment_hash(network, container_id, ifname))
}

/// Who a host end's alias says owns it.
#[derive(Debug, PartialEq, Eq)]
pub enum Tag<'a> {
    /// `ferry1 <network> <hash>`.
    Hashed { network: &'a str, hash: &'a str },
    /// The format before `ferry1`: `ferry <network> <container id> <ifname>`, read only when short
    /// enough never to have been truncated (250 bytes); a longer one names its network only.
    Legacy { network: &'a str, owner: Option<(&'a str, &'a str)> },
}

impl Tag<'_> {
    pub fn network(&self) -> &str {
        match self {
            Tag::Hashed { network, .. } | Tag::Legacy { network, .. } => network,
        }
    }
}

/// Parse an alias written by [`alias`] (or by an older Ferry); `None`: not Ferry's.
pub fn parse_alias(a: &str) -> Option<Tag<'_>> {
    if let Some(rest) = a.strip_prefix(TAG) {
        let (network, hash) = rest.split_once(' ')?;
        let ok = hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        return ok.then_some(Tag::Hashed { network, hash });
    }
    let mut it = a.strip_prefix("ferry ")?.split(' ');
    let network = it.next()?;
    let owner = match (it.next(), it.next(), it.next()) {
        (Some(c), Some(i), None) if a.len() < 250 => Some((c, i)),
        _ => None,
    };
    Some(Tag::Legacy { network, owner })
}

/// Whether `alias` (a host end's) belongs to exactly this attachment.
pub fn is_ours(alias: &str, network: &str, container_id: &str, ifname: &str) -> bool {
    match parse_alias(alias) {
        Some(Tag::Hashed { network: n, hash }) => {
            n == network && hash == attachment_hash(network, container_id, ifname)
        }
        Some(Tag::Legacy { network: n, owner }) => {
            n == network && owner == Some((container_id, ifname))
        }
        None => false,
    }
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
        assert!(is_ours(&a, "net", "c1", "eth0"));
        assert!(!is_ours(&a, "net", "c1", "eth1"));
        assert!(!is_ours(&a, "other", "c1", "eth0"));
        assert_eq!(parse_alias(&a).unwrap().network(), "net");
        assert_eq!(parse_alias("something else"), None);
        assert_eq!(parse_alias("ferry1 net nothex"), None);
        let legacy = "ferry net c1 eth0";
        assert!(is_ours(legacy, "net", "c1", "eth0"));
    }

    #[test]
    fn longest_accepted_names_never_truncate_or_collide() {
        // A 128-byte network and 255-byte container ids that differ only at the very end.
        let net = "n".repeat(128);
        let (c1, c2) = ("c".repeat(254) + "1", "c".repeat(254) + "2");
        let (a1, a2) = (alias(&net, &c1, "eth0"), alias(&net, &c2, "eth0"));
        assert!(a1.len() <= 255, "{}", a1.len());
        assert_ne!(a1, a2);
        assert!(is_ours(&a1, &net, &c1, "eth0") && !is_ours(&a1, &net, &c2, "eth0"));
        // The old format cut these to the same string; such a legacy alias names no owner.
        let old = format!("ferry {net} {c1} eth0");
        assert_eq!(parse_alias(&old[..250]), Some(Tag::Legacy { network: &net, owner: None }));
    }
}
