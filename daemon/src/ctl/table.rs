//! Aligned text tables and human times for ferryctl's output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// `key  value` lines, keys padded to the widest.
pub fn pairs(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<w$}  {v}\n")).collect()
}

/// `1 allocation`, `2 allocations`.
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// `3d4h`, `23h59m`, `5m3s`, `12s` (two units at most).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// An expiry for a table: `2026-11-25T12:00:00.000Z (in 23h59m)`, `... (expired 5m3s ago)`, or
/// `never (reservation)`.
pub fn expiry(t: Option<SystemTime>, now: SystemTime) -> String {
    let Some(t) = t else { return "never (reservation)".into() };
    let when = crate::log::timestamp(t);
    match t.duration_since(now) {
        Ok(left) => format!("{when} (in {})", human(left)),
        Err(e) => format!("{when} (expired {} ago)", human(e.duration())),
    }
}

/// An expiry for JSON: `{"expires": RFC 3339 or null, "expires_unix_ms", "expires_in_seconds"}`
/// fields (null for a permanent reservation; seconds negative once expired).
pub fn expiry_json(t: Option<SystemTime>, now: SystemTime) -> serde_json::Value {
    let Some(t) = t else {
        return serde_json::json!({"expires": null, "expires_unix_ms": null, "expires_in_seconds": null});
    };
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let left = match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    serde_json::json!({
        "expires": crate::log::timestamp(t),
        "expires_unix_ms": ms,
        "expires_in_seconds": left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = render(
            &["SUBNET", "GATEWAY", "STATE"],
            &[
                vec!["10.244.1.0/24".into(), "198.18.0.12".into(), "ok".into()],
                vec!["10.244.22.0/24".into(), "-".into(), "stale".into()],
            ],
        );
        assert_eq!(
            t,
            "SUBNET          GATEWAY      STATE\n\
             10.244.1.0/24   198.18.0.12  ok\n\
             10.244.22.0/24  -            stale\n"
        );
        assert_eq!(pairs(&[("a", "1".into()), ("long", "2".into())]), "a     1\nlong  2\n");
    }

    #[test]
    fn human_times() {
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(303)), "5m3s");
        assert_eq!(human(Duration::from_secs(86399)), "23h59m");
        assert_eq!(human(Duration::from_secs(3 * 86400 + 4 * 3600 + 5)), "3d4h");
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let e = expiry(Some(now + Duration::from_secs(90)), now);
        assert_eq!(e, "1970-01-01T00:18:10.000Z (in 1m30s)");
        assert!(expiry(Some(now - Duration::from_secs(5)), now).ends_with("(expired 5s ago)"));
        assert_eq!(expiry(None, now), "never (reservation)");
        assert_eq!(expiry_json(Some(now - Duration::from_secs(5)), now)["expires_in_seconds"], -5);
    }
}
