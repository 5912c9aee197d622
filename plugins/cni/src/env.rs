//! The `CNI_*` environment, validated per command.

use crate::error::{CniError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => return Err(CniError::env(format!("unknown CNI_COMMAND: {other}"))),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The validated invocation environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pub command: Command,
    /// Empty for VERSION, GC and STATUS.
    pub container_id: String,
    /// `None` when unset or empty (allowed for DEL, GC, STATUS, VERSION).
    pub netns: Option<String>,
    /// Empty for VERSION, GC and STATUS.
    pub ifname: String,
    /// `CNI_ARGS` as `K=V` pairs, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on `:`, empty entries dropped.
    pub path: Vec<String>,
}

impl CniArgs {
    /// Value of a `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

pub const MAX_CONTAINER_ID: usize = 255;
pub const MAX_IFNAME: usize = 15;

/// Read and validate the environment. `Ok(None)` means `CNI_COMMAND` is unset (print "about").
/// VERSION validates nothing else: runtimes send `dummy` netns/ifname/path and an empty id.
pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<CniArgs>> {
    let command = match get("CNI_COMMAND") {
        None => return Ok(None),
        Some(c) if c.is_empty() => return Ok(None),
        Some(c) => Command::parse(&c)?,
    };
    let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
    let mut a = CniArgs {
        command,
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        args: Vec::new(),
        path: Vec::new(),
    };
    if command == Command::Version {
        return Ok(Some(a));
    }
    let need_id = check_required(command, &nonempty)?;
    if need_id {
        a.container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&a.container_id)?;
        a.ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&a.ifname)?;
        a.netns = nonempty("CNI_NETNS");
        if let Some(ns) = &a.netns {
            validate_netns(ns)?;
        }
    }
    if let Some(raw) = nonempty("CNI_ARGS") {
        a.args = parse_cni_args(&raw)?;
    }
    if let Some(p) = nonempty("CNI_PATH") {
        a.path = p.split(':').filter(|s| !s.is_empty()).map(String::from).collect();
    }
    Ok(Some(a))
}

/// Fail (code 4, naming every one) unless the variables `command` needs are set and non-empty.
/// Returns whether the command names an attachment (container id and ifname).
fn check_required(command: Command, nonempty: &dyn Fn(&str) -> Option<String>) -> Result<bool> {
    let need: &[&str] = match command {
        Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        _ => &[],
    };
    let missing: Vec<&str> = need.iter().copied().filter(|k| nonempty(k).is_none()).collect();
    if !missing.is_empty() {
        return Err(CniError::env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    Ok(!need.is_empty())
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]*$`, at most 255 bytes.
pub fn validate_container_id(id: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(CniError::env(format!("invalid CNI_CONTAINERID {:?}: {why}", truncate(id))))
    };
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > MAX_CONTAINER_ID {
        return bad(&format!("longer than {MAX_CONTAINER_ID} bytes"));
    }
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("may only contain letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Linux interface name rules: 1..=15 bytes, not `.`/`..`, no `/`, `:`, `%` (the kernel expands
/// `%d` into a free number: the link would get another name than asked), whitespace or control
/// chars.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad =
        |why: &str| Err(CniError::env(format!("invalid CNI_IFNAME {:?}: {why}", truncate(name))));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_IFNAME {
        return bad(&format!("longer than {MAX_IFNAME} bytes"));
    }
    if name == "." || name == ".." {
        return bad("must not be '.' or '..'");
    }
    if name.chars().any(|c| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control()) {
        return bad("must not contain '/', ':', '%', whitespace or control characters");
    }
    Ok(())
}

/// A netns path must be absolute and free of control characters and `..` components.
pub fn validate_netns(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(CniError::env(format!(
            "invalid CNI_NETNS {:?}: must be an absolute path",
            truncate(path)
        )));
    }
    if path.chars().any(|c| c.is_control()) || path.split('/').any(|p| p == "..") {
        return Err(CniError::env(format!(
            "invalid CNI_NETNS {:?}: must not contain '..' or control characters",
            truncate(path)
        )));
    }
    Ok(())
}

/// `K=V;K2=V2`; each pair needs exactly one `=` and a non-empty key.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let mut kv = pair.splitn(2, '=');
        let k = kv.next().unwrap_or("");
        match kv.next() {
            Some(v) if !k.is_empty() && !v.contains('=') => {
                out.push((k.to_string(), v.to_string()))
            }
            _ => {
                return Err(CniError::env(format!(
                    "invalid CNI_ARGS pair {:?}: expected KEY=VALUE",
                    truncate(pair)
                )))
            }
        }
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<CniArgs>> {
        let m: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_env(&move |k: &str| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
    ];

    #[test]
    fn add_env_parses() {
        let a = env(ADD).unwrap().unwrap();
        assert_eq!(a.command, Command::Add);
        assert_eq!(a.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(a.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
        assert_eq!(a.arg("K8S_POD_NAME"), Some("p"));
    }

    #[test]
    fn no_command_is_about() {
        assert!(env(&[]).unwrap().is_none());
    }

    #[test]
    fn unknown_command_is_code_4() {
        let e = env(&[("CNI_COMMAND", "FOO")]).unwrap_err();
        assert_eq!(e.code.as_u32(), 4);
        assert!(e.msg.contains("FOO"));
    }

    #[test]
    fn version_validates_nothing() {
        let a = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
            ("CNI_CONTAINERID", ""),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.command, Command::Version);
    }

    #[test]
    fn missing_vars_are_named() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(e.code.as_u32(), 4);
        assert!(e.msg.contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"), "{}", e.msg);
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")])
            .unwrap_err();
        assert!(e.msg.contains("[CNI_NETNS]"));
    }

    #[test]
    fn del_allows_empty_netns() {
        let a = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.netns, None);
    }

    #[test]
    fn gc_and_status_need_no_attachment() {
        for c in ["GC", "STATUS"] {
            let a = env(&[("CNI_COMMAND", c), ("CNI_CONTAINERID", ""), ("CNI_IFNAME", "")])
                .unwrap()
                .unwrap();
            assert!(a.container_id.is_empty());
        }
    }

    #[test]
    fn container_ids() {
        assert!(validate_container_id("a_b.c-1").is_ok());
        let long = "a".repeat(256);
        for bad in ["-abc", "a/b", "a b", "..", "a\nb", "", "a..b/..", long.as_str()] {
            assert_eq!(validate_container_id(bad).unwrap_err().code.as_u32(), 4, "{bad:?}");
        }
    }

    #[test]
    fn ifnames() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname(&"a".repeat(15)).is_ok());
        for bad in [
            &"a".repeat(16) as &str,
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "e\u{1}",
            "",
            "e%d",
            "%",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code.as_u32(), 4, "{bad:?}");
        }
    }

    #[test]
    fn netns_paths() {
        assert!(validate_netns("/proc/123/ns/net").is_ok());
        for bad in ["relative", "/run/../etc", "/run/netns/a\n"] {
            assert!(validate_netns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cni_args_pairs() {
        assert_eq!(
            parse_cni_args("A=1;B=;").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "".into())]
        );
        assert!(parse_cni_args("A").is_err());
        assert!(parse_cni_args("=1").is_err());
        assert!(parse_cni_args("A=1=2").is_err());
    }
}
