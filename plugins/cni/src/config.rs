//! The network configuration a plugin reads on stdin.
//!
//! Only the fields every plugin shares are typed here; plugin-specific keys stay in `raw`, which is
//! also what gets passed verbatim to a delegated IPAM plugin.

use crate::error::{CniError, Result};
use crate::result::CniResult;
use crate::version::Version;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The request's `cniVersion`, exactly as sent (replies echo it).
    pub cni_version: String,
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    /// The whole object, unchanged.
    pub raw: Map<String, Value>,
}

/// One (container, ifname) pair from GC's valid-attachments list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parse stdin. Not JSON / not an object: code 6. Missing or wrong-typed shared fields: code 7.
    /// Unknown `cniVersion`: code 1.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decode(format!("error decoding network config: {e}")))?;
        let Value::Object(raw) = v else {
            return Err(CniError::decode("error decoding network config: expected a JSON object"));
        };
        let cni_version = match raw.get("cniVersion") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(CniError::decode("network config: cniVersion must be a string")),
        };
        let version = Version::parse(&cni_version)?;
        let name = match raw.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(CniError::config("network config: \"name\" is required"))
            }
            Some(_) => return Err(CniError::config("network config: \"name\" must be a string")),
        };
        validate_name(&name)?;
        let plugin_type = match raw.get("type") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(CniError::config("network config: \"type\" is required"))
            }
            Some(_) => return Err(CniError::config("network config: \"type\" must be a string")),
        };
        if plugin_type.contains('/') || plugin_type.contains("..") {
            return Err(CniError::config(format!(
                "network config: invalid plugin type {plugin_type:?}"
            )));
        }
        for (key, want) in [
            ("ipam", "an object"),
            ("dns", "an object"),
            ("runtimeConfig", "an object"),
            ("args", "an object"),
            ("capabilities", "an object"),
            ("prevResult", "an object"),
        ] {
            if let Some(v) = raw.get(key) {
                if !v.is_object() && !v.is_null() {
                    return Err(CniError::config(format!(
                        "network config: \"{key}\" must be {want}"
                    )));
                }
            }
        }
        Ok(NetConf { cni_version, version, name, plugin_type, raw })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// The `ipam` section, if any.
    pub fn ipam(&self) -> Option<&Map<String, Value>> {
        self.get("ipam").and_then(Value::as_object)
    }

    /// `runtimeConfig.<key>`.
    pub fn runtime_config(&self, key: &str) -> Option<&Value> {
        self.get("runtimeConfig").and_then(|r| r.get(key)).filter(|v| !v.is_null())
    }

    /// `prevResult`, parsed (any version; the config's version when it has none).
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match self.get("prevResult") {
            None => Ok(None),
            Some(v) => {
                CniResult::from_json(v, self.version).map(Some).map_err(|e| e.context("prevResult"))
            }
        }
    }

    /// GC's list of attachments to keep: `cni.dev/valid-attachments`, else the older
    /// `cni.dev/attachments`, else (neither sent) the empty set. Both present: the union.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let Some(v) = self.get(key) else { continue };
            let list = v
                .as_array()
                .ok_or_else(|| CniError::config(format!("\"{key}\" must be a list")))?;
            for item in list {
                let id = item.get("containerID").and_then(Value::as_str);
                let ifname = item.get("ifname").and_then(Value::as_str);
                match (id, ifname) {
                    (Some(id), Some(ifname)) => out.push(Attachment {
                        container_id: id.to_string(),
                        ifname: ifname.to_string(),
                    }),
                    _ => {
                        return Err(CniError::config(format!(
                            "\"{key}\" entries need string \"containerID\" and \"ifname\""
                        )))
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Network names become file names: `^[A-Za-z0-9][A-Za-z0-9_.-]*$`, at most 128 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "network config: invalid network name {:?}: use letters, digits, '_', '.', '-' (max 128)",
            name.chars().take(64).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conflist_entry_with_extras() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"ferry","type":"ferry","capabilities":{"portMappings":true},
                "runtimeConfig":{"portMappings":[]},"args":{"cni":{}},"subnet":"10.244.1.0/24","custom":1}"#,
        )
        .unwrap();
        assert_eq!(c.version, Version::V100);
        assert_eq!(c.name, "ferry");
        assert_eq!(c.raw["subnet"], "10.244.1.0/24");
        assert!(c.runtime_config("portMappings").is_some());
        assert!(c.ipam().is_none());
    }

    #[test]
    fn error_codes() {
        let code = |s: &str| NetConf::parse(s.as_bytes()).unwrap_err().code.as_u32();
        assert_eq!(code("{"), 6);
        assert_eq!(code("not json"), 6);
        assert_eq!(code("[1]"), 6);
        assert_eq!(code(r#"{"cniVersion":1,"name":"a","type":"t"}"#), 6);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":5,"type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"a/b","type":"t"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"a"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"a","type":"t","ipam":"x"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"9.9.9","name":"a","type":"t"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"1.0","name":"a","type":"t"}"#), 1);
    }

    #[test]
    fn missing_version_is_010() {
        let c = NetConf::parse(br#"{"name":"a","type":"t"}"#).unwrap();
        assert_eq!(c.version, Version::V010);
        assert_eq!(c.cni_version, "");
    }

    #[test]
    fn valid_attachments_from_either_key() {
        let mk = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.1.0","name":"a","type":"t"{extra}}}"#).as_bytes(),
            )
            .unwrap()
            .valid_attachments()
            .unwrap()
        };
        let a = |id: &str| Attachment { container_id: id.into(), ifname: "eth0".into() };
        assert_eq!(mk(""), vec![]);
        assert_eq!(
            mk(r#","cni.dev/valid-attachments":[{"containerID":"x","ifname":"eth0"}]"#),
            vec![a("x")]
        );
        assert_eq!(
            mk(r#","cni.dev/attachments":[{"containerID":"y","ifname":"eth0"}]"#),
            vec![a("y")]
        );
        assert_eq!(
            mk(
                r#","cni.dev/attachments":[{"containerID":"y","ifname":"eth0"}],"cni.dev/valid-attachments":[{"containerID":"x","ifname":"eth0"},{"containerID":"y","ifname":"eth0"}]"#
            ),
            vec![a("x"), a("y")]
        );
        let bad = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"a","type":"t","cni.dev/valid-attachments":[{"x":1}]}"#)
            .unwrap()
            .valid_attachments();
        assert_eq!(bad.unwrap_err().code.as_u32(), 7);
    }

    #[test]
    fn prev_result_converted() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"a","type":"t","prevResult":{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.2/24"}]}}"#,
        )
        .unwrap();
        let r = c.prev_result().unwrap().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
    }
}
