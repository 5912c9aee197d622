//! `--metrics-address`: a minimal HTTP/1.1 responder on the daemon's runtime for /metrics
//! (Prometheus text), /healthz and /readyz. GET only, one request per connection (closed after
//! the response), requests capped at 4 KiB and 2 s, at most 16 connections at once. A scrape
//! only reads atomics: it never waits for, or holds up, a reconcile.

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 4096;
const MAX_CONNECTIONS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints answer from.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// /healthz fails when the event loop's heartbeat is older than this.
    pub stale_after: Duration,
}

impl Health {
    /// The event loop ran recently (it bumps the heartbeat on every wake-up, at least once per
    /// resync period). The store being unreachable does not make the daemon unhealthy.
    pub fn healthy(&self) -> bool {
        let hb = self.metrics.loop_heartbeat_unix_ms.load(Relaxed);
        let age = crate::log::unix_ms().saturating_sub(hb);
        hb == 0 || age <= self.stale_after.as_millis() as u64
    }

    /// The lease is held, the subnet file and conflist are written, routes are in sync.
    pub fn ready(&self) -> bool {
        let m = &self.metrics;
        [&m.lease_held, &m.node_files_written, &m.routes_in_sync]
            .iter()
            .all(|g| g.load(Relaxed) == 1)
    }

    /// Status line and body for a request path.
    pub fn answer(&self, path: &str) -> (&'static str, String) {
        let ok = |b: bool, what: &str| {
            if b {
                ("200 OK", "ok\n".to_string())
            } else {
                ("503 Service Unavailable", format!("{what}\n"))
            }
        };
        match path.split('?').next().unwrap_or("") {
            "/metrics" => ("200 OK", self.metrics.render()),
            "/healthz" => ok(self.healthy(), "event loop stalled"),
            "/readyz" => ok(self.ready(), "not ready: lease, node files or routes not in place"),
            _ => ("404 Not Found", "not found\n".into()),
        }
    }
}

/// Serve on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, health: Health) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if active.load(Relaxed) >= MAX_CONNECTIONS {
            continue; // dropped: closed at once
        }
        active.fetch_add(1, Relaxed);
        let (h, a) = (health.clone(), active.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, respond(conn, &h)).await;
            a.fetch_sub(1, Relaxed);
        });
    }
}

/// Read one request head (bounded), answer it, close.
async fn respond(mut conn: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (status, body) = match (first.next(), first.next()) {
        (Some("GET"), Some(path)) => health.answer(path),
        (Some(_), Some(_)) => ("405 Method Not Allowed", "GET only\n".into()),
        _ => ("400 Bad Request", "bad request\n".into()),
    };
    let kind = "text/plain; version=0.0.4; charset=utf-8";
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer_from_the_gauges() {
        let m = Arc::new(Metrics::default());
        let h = Health { metrics: m.clone(), stale_after: Duration::from_secs(3) };
        assert_eq!(h.answer("/readyz").0, "503 Service Unavailable");
        assert_eq!(h.answer("/healthz").0, "200 OK");
        for g in [&m.lease_held, &m.node_files_written, &m.routes_in_sync] {
            crate::metrics::set(g, 1);
        }
        assert_eq!(h.answer("/readyz").0, "200 OK");
        crate::metrics::set(&m.loop_heartbeat_unix_ms, crate::log::unix_ms() - 10_000);
        assert_eq!(h.answer("/healthz").0, "503 Service Unavailable");
        assert!(h.answer("/metrics").1.contains("ferryd_lease_held 1\n"));
        assert_eq!(h.answer("/nope").0, "404 Not Found");
    }
}
