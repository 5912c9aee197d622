//! Delegation to an IPAM plugin found in CNI_PATH, as the spec describes: same environment with
//! CNI_COMMAND set, the whole request config on stdin, result or error JSON on stdout.

use ferry_cni::error::{CniError, Code, Result, DELEGATE};
use ferry_cni::skel::Request;
use ferry_cni::{CniResult, Command};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

/// First regular file named `plugin` in the CNI_PATH dirs.
pub fn find(req: &Request, plugin: &str) -> Result<PathBuf> {
    for dir in &req.args.path {
        let p = PathBuf::from(dir).join(plugin);
        if p.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Ok(p);
        }
    }
    Err(CniError::config(format!(
        "IPAM plugin {plugin:?} not found in CNI_PATH [{}]",
        req.args.path.join(":")
    )))
}

/// Run `plugin` with `cmd`; returns its stdout (empty for non-ADD verbs).
pub fn exec(req: &Request, plugin: &str, cmd: Command) -> Result<Vec<u8>> {
    let path = find(req, plugin)?;
    let mut child = std::process::Command::new(&path)
        .env("CNI_COMMAND", cmd.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("exec IPAM plugin {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&req.stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("wait for IPAM plugin {}: {e}", path.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let err = serde_json::from_slice(&out.stdout)
        .ok()
        .and_then(|v| CniError::from_json(&v))
        .unwrap_or_else(|| {
            CniError::new(DELEGATE, String::from_utf8_lossy(&out.stdout).trim().to_string())
        });
    Err(CniError { msg: format!("IPAM plugin {plugin}: {}", err.msg), ..err })
}

/// Delegated ADD: the IPAM result, parsed in whatever version it answered.
pub fn add(req: &Request, plugin: &str) -> Result<CniResult> {
    let out = exec(req, plugin, Command::Add)?;
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(Code::Decode, format!("IPAM plugin {plugin} printed no JSON result: {e}"))
    })?;
    CniResult::from_json(&v, req.conf.version)
        .map_err(|e| e.context(format!("IPAM plugin {plugin} result")))
}
