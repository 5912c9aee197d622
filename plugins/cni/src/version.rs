//! CNI spec versions.

use crate::error::{CniError, Result};

/// Every version this suite speaks, oldest first.
pub const SUPPORTED: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V010,
    V020,
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl Version {
    /// Exact-string parse (like the reference skel: `"1.0"` is not `"1.0.0"`). An empty or missing
    /// version means 0.1.0, as the reference library treats it.
    pub fn parse(s: &str) -> Result<Version> {
        Ok(match s {
            "" | "0.1.0" => Version::V010,
            "0.2.0" => Version::V020,
            "0.3.0" => Version::V030,
            "0.3.1" => Version::V031,
            "0.4.0" => Version::V040,
            "1.0.0" => Version::V100,
            "1.1.0" => Version::V110,
            other => {
                return Err(CniError::incompatible("incompatible CNI versions").with_details(
                    format!("config is {other:?}, plugin supports {}", SUPPORTED.join(", ")),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V010 => "0.1.0",
            Version::V020 => "0.2.0",
            Version::V030 => "0.3.0",
            Version::V031 => "0.3.1",
            Version::V040 => "0.4.0",
            Version::V100 => "1.0.0",
            Version::V110 => "1.1.0",
        }
    }

    /// 0.1.0 / 0.2.0 results use the `ip4`/`ip6` shape.
    pub fn is_legacy(self) -> bool {
        self <= Version::V020
    }
    /// 0.3.x and 0.4.0 results carry `ips[].version`.
    pub fn has_ip_version(self) -> bool {
        (Version::V030..=Version::V040).contains(&self)
    }
    pub fn supports_check(self) -> bool {
        self >= Version::V040
    }
    pub fn supports_gc_status(self) -> bool {
        self >= Version::V110
    }

    /// Whether a result of this version can carry an attachment with addresses of both families
    /// (dual stack): 0.3.0 and later (`ips[]` tied to `interfaces[]`). The 0.1.0 / 0.2.0 shape has
    /// no interfaces and one `ip4` / `ip6` pair per plugin; Ferry does not use it for dual stack.
    pub fn carries_dual_stack(self) -> bool {
        self >= Version::V030
    }

    /// Refuse an attachment with both an IPv4 and an IPv6 address in a version whose results
    /// cannot carry it (see [`Version::carries_dual_stack`]): code 1 (incompatible version), with
    /// what to change. Called before anything is allocated or created.
    pub fn check_families(self, has_v4: bool, has_v6: bool) -> Result<()> {
        if !(has_v4 && has_v6) || self.carries_dual_stack() {
            return Ok(());
        }
        Err(CniError::incompatible(format!(
            "dual stack (an IPv4 and an IPv6 address per pod) needs cniVersion 0.3.0 or later, \
             the config says {self}"
        ))
        .with_details(
            "set \"cniVersion\" to 0.3.0 or later (1.0.0 recommended), or give the node one \
             address family (only FLANNEL_SUBNET or only FLANNEL_IPV6_SUBNET in the subnet file)",
        ))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_exactly() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), *s);
        }
        assert_eq!(Version::parse("").unwrap(), Version::V010);
        for bad in ["1.0", "9.9.9", "1.2.0", " 1.0.0", "v1.0.0"] {
            let e = Version::parse(bad).unwrap_err();
            assert_eq!(e.code.as_u32(), 1, "{bad}");
        }
    }

    #[test]
    fn feature_gates() {
        assert!(!Version::V031.supports_check());
        assert!(Version::V040.supports_check());
        assert!(!Version::V100.supports_gc_status());
        assert!(Version::V110.supports_gc_status());
        assert!(Version::V020.is_legacy() && !Version::V030.is_legacy());
        assert!(Version::V040.has_ip_version() && !Version::V100.has_ip_version());
    }

    #[test]
    fn dual_stack_needs_030_or_later() {
        for s in SUPPORTED {
            let v = Version::parse(s).unwrap();
            // One family is fine in every version.
            for (v4, v6) in [(true, false), (false, true), (false, false)] {
                assert!(v.check_families(v4, v6).is_ok(), "{s} {v4} {v6}");
            }
            let both = v.check_families(true, true);
            if matches!(v, Version::V010 | Version::V020) {
                let e = both.unwrap_err();
                assert_eq!(e.code.as_u32(), 1, "{s}");
                assert!(e.msg.contains("0.3.0") && e.msg.contains(s), "{s}: {}", e.msg);
                assert!(e.details.contains("cniVersion"), "{}", e.details);
                assert!(!v.carries_dual_stack());
            } else {
                assert!(both.is_ok(), "{s}");
                assert!(v.carries_dual_stack());
            }
        }
    }
}
