//! A tiny stderr logger: `info!`, `warn!`, `error!`, `debug!`. One line per record:
//! `2026-11-25T12:00:00.123Z INFO message`. The level is a process-wide atomic.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const ERROR: u8 = 0;
pub const WARN: u8 = 1;
pub const INFO: u8 = 2;
pub const DEBUG: u8 = 3;

static LEVEL: AtomicU8 = AtomicU8::new(INFO);

thread_local! {
    /// Set while [`info_as_debug`] runs: INFO records are written at DEBUG.
    static INFO_AS_DEBUG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub fn set_level(l: u8) {
    LEVEL.store(l, Ordering::Relaxed);
}

pub fn enabled(l: u8) -> bool {
    l <= LEVEL.load(Ordering::Relaxed)
}

/// The level `info!` records get: INFO, or DEBUG inside [`info_as_debug`].
pub fn info_level() -> u8 {
    if INFO_AS_DEBUG.with(|q| q.get()) {
        DEBUG
    } else {
        INFO
    }
}

/// Run `f` (synchronous work on this thread) with its `info!` lines logged at DEBUG: bulk work
/// such as the first route programming logs one summary line afterwards instead of one per
/// route. Warnings and errors are unaffected.
pub fn info_as_debug<T>(f: impl FnOnce() -> T) -> T {
    let was = INFO_AS_DEBUG.with(|q| q.replace(true));
    let out = f();
    INFO_AS_DEBUG.with(|q| q.set(was));
    out
}

pub fn write(level: u8, args: std::fmt::Arguments) {
    use std::io::Write;
    let name = ["ERROR", "WARN", "INFO", "DEBUG"][level.min(3) as usize];
    let line = format!("{} {name} {args}\n", timestamp(SystemTime::now()));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Seconds since the Unix epoch, now.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// RFC 3339 UTC with milliseconds (ferry-cni's formatter, shared with the plugin's log).
pub fn timestamp(t: SystemTime) -> String {
    ferry_cni::timefmt::rfc3339_utc(t)
}

#[macro_export]
macro_rules! error { ($($a:tt)*) => { $crate::log::write($crate::log::ERROR, format_args!($($a)*)) } }
#[macro_export]
macro_rules! warn { ($($a:tt)*) => { if $crate::log::enabled($crate::log::WARN) { $crate::log::write($crate::log::WARN, format_args!($($a)*)) } } }
#[macro_export]
macro_rules! info { ($($a:tt)*) => { { let l = $crate::log::info_level(); if $crate::log::enabled(l) { $crate::log::write(l, format_args!($($a)*)) } } } }
#[macro_export]
macro_rules! debug { ($($a:tt)*) => { if $crate::log::enabled($crate::log::DEBUG) { $crate::log::write($crate::log::DEBUG, format_args!($($a)*)) } } }

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // a leap-year date
        assert_eq!(timestamp(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn info_as_debug_is_scoped() {
        assert_eq!(info_level(), INFO);
        let inner = info_as_debug(|| (info_level(), info_as_debug(info_level), info_level()));
        assert_eq!(inner, (DEBUG, DEBUG, DEBUG));
        assert_eq!(info_level(), INFO);
    }
}
