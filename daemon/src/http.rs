//! `--metrics-address`: a minimal HTTP/1.1 responder on the daemon's runtime for /metrics
//! (Prometheus text), /healthz and /readyz. GET only, one request per connection (closed after
//! the response), requests capped at 4 KiB and 2 s, at most 16 connections at once. /metrics
//! and /readyz only read atomics; /healthz asks the event loop itself (see [`Liveness`]).
//!
//! The responder runs on the event loop's thread (one current_thread runtime): while the loop
//! is blocked in a system call or a child process (a hung `nft`, netlink), no request is
//! answered at all, and the probe times out. The on-demand ask adds what a shared thread cannot
//! see: a loop that is parked but no longer gets to its `select!` answers nothing, so /healthz
//! returns 503 after [`LIVENESS_DEADLINE`].

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

const MAX_REQUEST: usize = 4096;
const MAX_CONNECTIONS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(2);

/// How long /healthz waits for the event loop's answer. A loop that is alive answers at once:
/// the responder shares its thread, so a request is only read while the loop is parked in its
/// `select!`, where the ask is the first branch polled. 1 s is the kubelet's default probe
/// timeout (a later answer fails the probe anyway) and stays under the 2 s a connection gets,
/// so a loop that does not answer gets a 503, not a dropped connection.
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(1);

/// /healthz's side of the liveness check: asks the event loop and waits for its answer.
#[derive(Clone)]
pub struct Liveness {
    ask: mpsc::Sender<oneshot::Sender<()>>,
    /// The event loop runs; before (start-up, waiting for the store) the daemon is healthy.
    running: Arc<AtomicBool>,
    deadline: Duration,
}

/// The event loop's side: every ask is answered as soon as the loop gets to it.
pub struct Answerer {
    asks: mpsc::Receiver<oneshot::Sender<()>>,
    running: Arc<AtomicBool>,
}

/// A liveness check waiting at most `deadline` for the loop; at most one ask per connection
/// is pending, so more than that many queued means the loop is not answering.
pub fn liveness(deadline: Duration) -> (Liveness, Answerer) {
    let (ask, asks) = mpsc::channel(MAX_CONNECTIONS);
    let running = Arc::new(AtomicBool::new(false));
    (Liveness { ask, running: running.clone(), deadline }, Answerer { asks, running })
}

impl Liveness {
    /// `Err(why)` unless the event loop answered within the deadline (or has not started).
    /// The store being unreachable does not make the daemon unhealthy.
    pub async fn check(&self) -> Result<(), String> {
        if !self.running.load(Relaxed) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        match self.ask.try_send(tx) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err("event loop not answering".into()),
            Err(TrySendError::Closed(_)) => return Err("event loop gone".into()),
        }
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("event loop gone".into()),
            Err(_) => Err(format!("event loop did not answer within {:?}", self.deadline)),
        }
    }
}

impl Answerer {
    /// The loop runs from now on: asks are answered (and must be).
    pub fn start(&self) {
        self.running.store(true, Relaxed);
    }

    /// The next ask (pending forever once every [`Liveness`] is gone).
    pub async fn next(&mut self) -> oneshot::Sender<()> {
        match self.asks.recv().await {
            Some(a) => a,
            None => std::future::pending().await,
        }
    }

    /// Answer `first` and every other ask already queued.
    pub fn answer(&mut self, first: oneshot::Sender<()>) {
        let _ = first.send(()); // the asker may have given up
        while let Ok(a) = self.asks.try_recv() {
            let _ = a.send(());
        }
    }
}

/// What the endpoints answer from.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub liveness: Liveness,
}

impl Health {
    /// The lease is held, the subnet file and conflist are written, routes are in sync.
    pub fn ready(&self) -> bool {
        let m = &self.metrics;
        [&m.lease_held, &m.node_files_written, &m.routes_in_sync]
            .iter()
            .all(|g| g.load(Relaxed) == 1)
    }

    /// Status line and body for a request path.
    pub async fn answer(&self, path: &str) -> (&'static str, String) {
        let ok = |r: Result<(), String>| match r {
            Ok(()) => ("200 OK", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", format!("{why}\n")),
        };
        match path.split('?').next().unwrap_or("") {
            "/metrics" => ("200 OK", self.metrics.render()),
            "/healthz" => ok(self.liveness.check().await),
            "/readyz" => ok(self
                .ready()
                .then_some(())
                .ok_or_else(|| "not ready: lease, node files or routes not in place".into())),
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
        (Some("GET"), Some(path)) => health.answer(path).await,
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

    fn health(deadline: Duration) -> (Health, Answerer) {
        let (liveness, answerer) = liveness(deadline);
        (Health { metrics: Arc::new(Metrics::default()), liveness }, answerer)
    }

    #[tokio::test]
    async fn endpoints_answer_from_the_gauges() {
        let (h, _answerer) = health(LIVENESS_DEADLINE);
        let m = h.metrics.clone();
        assert_eq!(h.answer("/readyz").await.0, "503 Service Unavailable");
        for g in [&m.lease_held, &m.node_files_written, &m.routes_in_sync] {
            crate::metrics::set(g, 1);
        }
        assert_eq!(h.answer("/readyz").await.0, "200 OK");
        assert!(h.answer("/metrics").await.1.contains("ferryd_lease_held 1\n"));
        assert_eq!(h.answer("/nope").await.0, "404 Not Found");
    }

    /// Healthy before the loop runs (start-up) and while it answers, whatever the heartbeat.
    #[tokio::test]
    async fn healthz_is_what_the_loop_answers() {
        let (h, mut answerer) = health(LIVENESS_DEADLINE);
        assert_eq!(h.answer("/healthz").await, ("200 OK", "ok\n".into()), "start-up");
        answerer.start();
        let serving = tokio::spawn(async move {
            loop {
                let a = answerer.next().await;
                answerer.answer(a);
            }
        });
        crate::metrics::set(&h.metrics.loop_heartbeat_unix_ms, crate::log::unix_ms() - 600_000);
        for _ in 0..3 {
            assert_eq!(h.answer("/healthz").await.0, "200 OK");
        }
        serving.abort();
        let _ = serving.await;
        assert_eq!(h.answer("/healthz").await.1, "event loop gone\n", "the loop ended");
    }

    /// A loop that runs but no longer gets to its `select!` (stuck awaiting something else)
    /// answers nothing: 503 after the deadline, and at once while asks pile up.
    #[tokio::test]
    async fn healthz_fails_when_the_loop_does_not_answer() {
        let deadline = Duration::from_millis(50);
        let (h, answerer) = health(deadline);
        answerer.start();
        let t0 = std::time::Instant::now();
        let (status, body) = h.answer("/healthz").await;
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(body, "event loop did not answer within 50ms\n");
        assert!(t0.elapsed() >= deadline);
        for _ in 0..MAX_CONNECTIONS {
            let _ = h.answer("/healthz").await;
        }
        let t0 = std::time::Instant::now();
        assert_eq!(h.answer("/healthz").await.1, "event loop not answering\n");
        assert!(t0.elapsed() < deadline, "a full queue answers at once");
    }
}
