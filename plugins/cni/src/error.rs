//! CNI errors: a spec code, a short message and optional details.

use serde_json::{json, Value};
use std::fmt;

/// Error codes from the CNI spec (and the plugin-specific range above 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnv,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    /// STATUS: the plugin cannot serve ADD right now.
    NotAvailable,
    /// STATUS: cannot serve ADD, and existing pods may have degraded connectivity.
    NotAvailableDegraded,
    /// Plugin-specific codes (>= 100).
    /// 100: netlink / kernel failure; 101: IPAM failure; 102: subnet exhausted; 103: CHECK mismatch;
    /// 104: delegated plugin failed.
    Plugin(u32),
}

pub const NETLINK: Code = Code::Plugin(100);
pub const IPAM: Code = Code::Plugin(101);
pub const EXHAUSTED: Code = Code::Plugin(102);
pub const CHECK_FAILED: Code = Code::Plugin(103);
pub const DELEGATE: Code = Code::Plugin(104);

impl Code {
    pub fn as_u32(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnv => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::NotAvailableDegraded => 51,
            Code::Plugin(n) => n,
        }
    }

    pub fn from_u32(n: u32) -> Code {
        match n {
            1 => Code::IncompatibleVersion,
            2 => Code::UnsupportedField,
            3 => Code::UnknownContainer,
            4 => Code::InvalidEnv,
            5 => Code::Io,
            6 => Code::Decode,
            7 => Code::InvalidConfig,
            11 => Code::TryAgainLater,
            50 => Code::NotAvailable,
            51 => Code::NotAvailableDegraded,
            n => Code::Plugin(n),
        }
    }
}

/// A CNI error as printed on stdout: `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
    /// Prefix the message with what was being done: `"add route: <msg>"`.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }
    pub fn incompatible(msg: impl Into<String>) -> Self {
        Self::new(Code::IncompatibleVersion, msg)
    }
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidEnv, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(Code::Decode, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidConfig, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(Code::Io, msg)
    }
    pub fn try_again(msg: impl Into<String>) -> Self {
        Self::new(Code::TryAgainLater, msg)
    }
    pub fn plugin(code: Code, msg: impl Into<String>) -> Self {
        Self::new(code, msg)
    }

    /// The JSON object printed on stdout. `cni_version` is the request's version when known.
    pub fn to_json(&self, cni_version: Option<&str>) -> Value {
        let mut v = json!({ "code": self.code.as_u32(), "msg": self.msg });
        if let Some(ver) = cni_version {
            v["cniVersion"] = json!(ver);
        }
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }

    /// Parse an error object printed by another plugin (a delegate). `None` if `v` is not one.
    pub fn from_json(v: &Value) -> Option<CniError> {
        let code = v.get("code")?.as_u64()?;
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
        let details = v.get("details").and_then(Value::as_str).unwrap_or("").to_string();
        Some(CniError { code: Code::from_u32(code as u32), msg, details })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type Result<T> = std::result::Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_code_msg_and_version() {
        let e = CniError::config("bad subnet").with_details("10.0.0.0/33");
        let v = e.to_json(Some("1.0.0"));
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad subnet");
        assert_eq!(v["details"], "10.0.0.0/33");
        assert_eq!(v["cniVersion"], "1.0.0");
        let v = CniError::env("x").to_json(None);
        assert!(v.get("cniVersion").is_none());
        assert!(v.get("details").is_none());
    }

    #[test]
    fn codes_round_trip() {
        for n in [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 999] {
            assert_eq!(Code::from_u32(n).as_u32(), n);
        }
    }

    #[test]
    fn error_parses_from_delegate_output() {
        let v: Value = serde_json::from_str(r#"{"code":999,"msg":"boom","details":"d"}"#).unwrap();
        let e = CniError::from_json(&v).unwrap();
        assert_eq!(e.code, Code::Plugin(999));
        assert_eq!(e.to_string(), "boom (d)");
    }
}
