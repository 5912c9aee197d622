//! One prefix watch stream on one etcd member, with a liveness check: when the stream has been
//! silent for the failover deadline a progress request is sent on it, and a stream that stays
//! silent for another half deadline (a dead member, a partition, a stuck connection) is declared
//! dead. The caller then resumes on another member from the last revision it delivered. An idle
//! watch so costs etcd two small stream messages a second at the default 500 ms (one request,
//! one answer); HTTP/2 pings cannot replace them: etcd closes a connection pinged more often than
//! every 5 s (its --grpc-keepalive-min-time), and one ping per 5 s finds a partition far too late.
//!
//! etcd 3.4 answers a progress request with its current revision, possibly ahead of events still
//! queued for the stream, so progress answers only prove liveness; they never advance the
//! revision a watch resumes from.

use super::members::Members;
use etcd_client::{WatchOptions, WatchResponse, WatchStream};
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct Watching {
    stream: WatchStream,
    /// The member the stream runs on (index into [`Members`]).
    pub member: usize,
    /// The revision the next event must have at least (`revision + 1` of the caller).
    pub next: i64,
    /// A response received but not yet returned (keeps `watch` cancel-safe).
    pub pending: Option<WatchResponse>,
    last_rx: Instant,
    probe_sent: Option<Instant>,
}

impl Watching {
    /// A watch of `prefix` from revision `next` (0: from now) on the first member that takes it.
    pub async fn open(members: &Members, prefix: &str, next: i64) -> crate::store::Result<Self> {
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        if next > 1 {
            opts = opts.with_start_revision(next);
        }
        let (member, stream) = members
            .call_on("watch", |c| {
                let (p, o) = (prefix.to_string(), opts.clone());
                let mut w = c.watch_client().max_decoding_message_size(super::MAX_DECODE);
                async move { w.watch(p, Some(o)).await }
            })
            .await?;
        let now = Instant::now();
        Ok(Watching { stream, member, next, pending: None, last_rx: now, probe_sent: None })
    }

    /// The next response on the stream, or why the stream is dead.
    pub async fn message(&mut self, failover: Duration) -> Result<WatchResponse, String> {
        let half = failover / 2;
        loop {
            let wake = self.probe_sent.map_or(self.last_rx + failover, |sent| sent + half);
            tokio::select! {
                m = self.stream.message() => {
                    self.last_rx = Instant::now();
                    self.probe_sent = None;
                    return match m {
                        Ok(Some(r)) => Ok(r),
                        Ok(None) => Err("stream closed by the member".into()),
                        Err(e) => Err(format!("stream broke: {e}")),
                    };
                }
                _ = tokio::time::sleep_until(wake) => {
                    if self.probe_sent.is_some() {
                        let silent = self.last_rx.elapsed();
                        return Err(format!("stream silent for {silent:?}, progress request unanswered"));
                    }
                    self.probe_sent = Some(Instant::now());
                    match tokio::time::timeout(half, self.stream.request_progress()).await {
                        Ok(Ok(())) => {}
                        _ => return Err("cannot send a progress request".into()),
                    }
                }
            }
        }
    }
}
