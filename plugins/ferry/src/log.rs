//! Operator logging and the crash hook.
//!
//! * `"logFile": "/abs/path"` and `"logLevel": "error" | "warn" | "info" | "debug"` in the config
//!   (off without `logFile`; `info` when only the file is given): one line per event, appended,
//!   with a UTC timestamp, the verb, container id, ifname and the outcome. `error` logs failed
//!   verbs, `warn` also an ADD's rollback, `info` every verb's outcome, `debug` every step. Never
//!   stdout (that is the runtime's). The file is opened `O_APPEND|O_CREAT|O_NOFOLLOW|O_CLOEXEC`,
//!   mode 0640: a symlink planted at its path is refused, not written through.
//! * `FERRY_FAILPOINT=<step>` (read once, at start): abort the process right after that step of
//!   ADD or DEL, as a crash there would (see [`step`] and the step names in README.md).

use ferry_cni::error::{CniError, Result};
use ferry_cni::skel::Request;
use ferry_cni::NetConf;
use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

/// `logFile` and `logLevel` from the config: `None` when logging is off; code 7 when malformed.
pub fn settings(c: &NetConf) -> Result<Option<(PathBuf, Level)>> {
    let level = match c.get("logLevel") {
        None => Level::Info,
        Some(Value::String(s)) => Level::parse(s).ok_or_else(|| {
            CniError::config(format!("\"logLevel\" {s:?} must be error, warn, info or debug"))
        })?,
        Some(v) => return Err(CniError::config(format!("\"logLevel\" must be a string, got {v}"))),
    };
    match c.get("logFile") {
        None => Ok(None),
        Some(Value::String(p)) if p.starts_with('/') => Ok(Some((PathBuf::from(p), level))),
        Some(v) => Err(CniError::config(format!("\"logFile\" must be an absolute path, got {v}"))),
    }
}

struct Logger {
    file: File,
    level: Level,
    /// `<VERB> container=<id> ifname=<name>`.
    who: String,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static FAILPOINT: OnceLock<String> = OnceLock::new();

/// Arm the crash hook (`main` passes `FERRY_FAILPOINT`, read once).
pub fn arm(failpoint: Option<String>) {
    if let Some(f) = failpoint.filter(|f| !f.is_empty()) {
        let _ = FAILPOINT.set(f);
    }
}

/// Start logging for this request when the config asks for it. A log file that cannot be opened
/// is said on stderr and otherwise ignored: logging never fails a verb.
pub fn start(req: &Request) {
    let Ok(Some((path, level))) = settings(&req.conf) else { return };
    let opened = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .and_then(|f| match f.metadata()?.is_file() {
            true => Ok(f),
            false => Err(std::io::Error::other("not a regular file")),
        });
    match opened {
        Ok(file) => {
            let a = &req.args;
            let who =
                format!("{} container={} ifname={}", a.command.as_str(), a.container_id, a.ifname);
            let _ = LOGGER.set(Logger { file, level, who });
        }
        Err(e) => eprintln!("ferry: logFile {}: {e} (not logging)", path.display()),
    }
}

/// Write one event at `level` (when the configured level includes it).
pub fn event(level: Level, what: &str) {
    let Some(l) = LOGGER.get().filter(|l| level <= l.level) else { return };
    let tag = format!("{level:?}").to_lowercase();
    let line = format!("{} ferry {tag} {} {what}\n", timestamp(), l.who);
    let _ = (&l.file).write_all(line.as_bytes());
}

/// The outcome of a verb: logged (info for success, error for failure) and returned unchanged.
pub fn finish<T>(r: Result<T>, detail: impl Fn(&T) -> String) -> Result<T> {
    match &r {
        Ok(v) => event(Level::Info, format!("outcome=ok {}", detail(v)).trim_end()),
        Err(e) => event(
            Level::Error,
            &format!("outcome=error code={} msg={:?}", e.code.as_u32(), e.to_string()),
        ),
    }
    r
}

/// A step of ADD or DEL is done: a debug event, and the crash hook's abort when armed for it.
pub fn step(name: &str) {
    event(Level::Debug, &format!("step={name}"));
    if FAILPOINT.get().is_some_and(|f| f == name) {
        event(Level::Debug, &format!("failpoint={name} abort"));
        std::process::abort();
    }
}

/// Now in UTC, RFC 3339 with milliseconds: `2025-01-31T12:00:00.123Z`.
fn timestamp() -> String {
    ferry_cni::timefmt::rfc3339_utc(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp().len(), 24);
    }

    #[test]
    fn settings_parse_and_reject() {
        let c = |extra: &str| {
            NetConf::parse(format!(r#"{{"name":"n","type":"ferry"{extra}}}"#).as_bytes()).unwrap()
        };
        assert_eq!(settings(&c("")).unwrap(), None);
        assert_eq!(settings(&c(r#","logLevel":"debug""#)).unwrap(), None, "no file: off");
        let s = settings(&c(r#","logFile":"/x/f.log""#)).unwrap().unwrap();
        assert_eq!(s, (PathBuf::from("/x/f.log"), Level::Info));
        let s = settings(&c(r#","logFile":"/f","logLevel":"warn""#)).unwrap().unwrap();
        assert_eq!(s.1, Level::Warn);
        for bad in [r#","logFile":"rel""#, r#","logFile":5"#, r#","logFile":"/f","logLevel":"x""#] {
            assert_eq!(settings(&c(bad)).unwrap_err().code.as_u32(), 7, "{bad}");
        }
    }
}
