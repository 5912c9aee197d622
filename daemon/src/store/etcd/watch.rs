//! The lease watch: the same prefix watch on two etcd members at once (a *redundant* pair when
//! the cluster has two or more members), merged by revision.
//!
//! Why two: a member that dies closes its connections and its stream breaks at once, but a
//! partitioned (or wedged) member just goes silent, and a silent stream looks exactly like a
//! quiet cluster. The only way one stream finds out in time is to talk to the member on a timer
//! (a progress request every half second: issue 13's one-second target), which costs ferryd
//! and etcd work all the time, however quiet the cluster. With a second stream on another
//! member an event reaches ferryd on whichever stream is alive, within milliseconds, and an idle
//! ferryd does nothing at all: no timer runs and no message is exchanged. A dead stream is
//! replaced in the background (the other one carries on); the kernel's TCP keepalive (see
//! `members::endpoint`) breaks the connection of a partitioned member within seconds at no cost
//! to ferryd, and a stream silent for [`PROBE_AFTER`] gets one progress request (a member whose
//! process hangs while its kernel still answers keepalives).
//!
//! Both streams start from the revision the caller delivered up to (`next`), so a replacement
//! replays what it may have missed; a response's events below `next` were already delivered on
//! the other stream and are dropped (etcd never splits one revision over two responses, and each
//! stream delivers in revision order). etcd 3.4 answers a progress request with its current
//! revision, possibly ahead of events still queued for the stream, so progress answers only
//! prove liveness; they never advance `next`.

use super::members::Members;
use crate::metrics;
use crate::store::Result;
use etcd_client::{WatchOptions, WatchResponse, WatchStream};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A stream silent this long gets a progress request (it must answer within the failover
/// deadline). Only a member whose process hangs while its kernel keeps the connection alive
/// needs it; the pair's other stream carries events meanwhile.
pub(super) const PROBE_AFTER: Duration = Duration::from_secs(60);
/// After a failed attempt to open the second stream, wait this long before the next (doubling
/// up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One prefix watch stream on one member.
pub(super) struct Watching {
    stream: WatchStream,
    /// The member the stream runs on (index into [`Members`]).
    pub member: usize,
    /// The revision it was opened from.
    start: i64,
    last_rx: Instant,
    probe_sent: Option<Instant>,
}

impl Watching {
    /// A watch of `prefix` from revision `next` (0: from now) on the first member that takes
    /// it, not one of `avoid`.
    async fn open(members: &Members, prefix: &str, next: i64, avoid: &[usize]) -> Result<Self> {
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        if next > 1 {
            opts = opts.with_start_revision(next);
        }
        let (member, stream) = members
            .call_avoiding("watch", avoid, |c| {
                let (p, o) = (prefix.to_string(), opts.clone());
                let mut w = c.watch_client().max_decoding_message_size(super::MAX_DECODE);
                async move { w.watch(p, Some(o)).await }
            })
            .await?;
        let now = Instant::now();
        Ok(Watching { stream, member, start: next, last_rx: now, probe_sent: None })
    }

    /// The next response on the stream, or why the stream is dead.
    async fn message(
        &mut self,
        answer_within: Duration,
    ) -> std::result::Result<WatchResponse, String> {
        loop {
            let wake = self.probe_sent.map_or(self.last_rx + PROBE_AFTER, |t| t + answer_within);
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
                    match tokio::time::timeout(answer_within, self.stream.request_progress()).await {
                        Ok(Ok(())) => {}
                        _ => return Err("cannot send a progress request".into()),
                    }
                }
            }
        }
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<Watching>> + Send>>;

/// What [`WatchSet::response`] hands out.
pub(super) enum Got {
    /// A response whose events at or after `next` are new.
    Events(WatchResponse),
    /// The watch cannot resume from `next` (compacted, or the only stream's member went back):
    /// the caller re-lists.
    Relist,
}

/// The watch of one prefix from one revision on, over one or two streams.
pub(super) struct WatchSet {
    members: Arc<Members>,
    prefix: String,
    /// The revision the next delivered event must have at least (`revision + 1` of the caller).
    pub next: i64,
    streams: Vec<Watching>,
    /// A response received but not yet taken (keeps [`WatchSet::response`] cancel-safe).
    pending: Option<WatchResponse>,
    /// The second stream, being opened in the background.
    opening: Option<Opening>,
    /// When the second stream may be tried again after a failure, and the pause after that.
    retry_at: Option<Instant>,
    retry: Duration,
}

impl WatchSet {
    /// A watch from revision `next`; nothing is opened before the first [`WatchSet::response`].
    pub fn new(members: Arc<Members>, prefix: String, next: i64) -> WatchSet {
        let (pending, opening, retry_at, retry) = (None, None, None, FIRST_RETRY);
        WatchSet { members, prefix, next, streams: Vec::new(), pending, opening, retry_at, retry }
    }

    /// The next response with events (the caller then calls [`WatchSet::taken`]), or that the
    /// caller must re-list. Cancel-safe.
    pub async fn response(&mut self) -> Result<Got> {
        loop {
            if let Some(r) = &self.pending {
                return Ok(Got::Events(r.clone()));
            }
            if self.streams.is_empty() {
                // Nothing to carry on with: open one now (the caller sees a failure).
                self.opening = None;
                let w = Watching::open(&self.members, &self.prefix, self.next, &[]).await?;
                self.streams.push(w);
                self.publish();
            }
            self.start_second();
            let answer_within = self.members.failover;
            let (first, rest) = self.streams.split_first_mut().expect("one stream at least");
            let retry_at = self.retry_at.filter(|_| self.opening.is_none() && rest.is_empty());
            let opening = &mut self.opening;
            let got = tokio::select! {
                m = first.message(answer_within) => Ok((0, m)),
                m = async {
                    match rest.first_mut() {
                        Some(w) => w.message(answer_within).await,
                        None => std::future::pending().await,
                    }
                } => Ok((1, m)),
                w = async {
                    match opening.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                } => Err(Some(w)),
                _ = async {
                    match retry_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => Err(None),
            };
            match got {
                Ok((i, Ok(r))) => {
                    if let Some(got) = self.received(i, r) {
                        return Ok(got);
                    }
                }
                Ok((i, Err(why))) => self.lost(i, &why),
                Err(Some(opened)) => self.opened(opened),
                Err(None) => self.retry_at = None,
            }
        }
    }

    /// The pending response was handled.
    pub fn taken(&mut self) {
        self.pending = None;
    }

    /// Start opening a second stream if the cluster has another member and none is underway.
    fn start_second(&mut self) {
        let due = self.retry_at.is_none_or(|t| t <= Instant::now());
        if self.streams.len() != 1 || self.opening.is_some() || !due || self.members.len() < 2 {
            return;
        }
        self.retry_at = None;
        let (members, prefix, next) = (self.members.clone(), self.prefix.clone(), self.next);
        let avoid = [self.streams[0].member];
        self.opening =
            Some(Box::pin(async move { Watching::open(&members, &prefix, next, &avoid).await }));
    }

    /// The background open finished.
    fn opened(&mut self, r: Result<Watching>) {
        self.opening = None;
        match r {
            Ok(w) if self.streams.len() == 1 && self.streams[0].member != w.member => {
                let url = self.members.url(w.member);
                debug!("etcd: second watch stream open on {url} (from revision {})", w.start);
                self.streams.push(w);
                self.retry = FIRST_RETRY;
                self.publish();
            }
            Ok(_) => {} // no longer wanted (the other stream was replaced meanwhile)
            Err(e) => {
                debug!("etcd: no second watch stream yet ({e}); trying again in {:?}", self.retry);
                self.retry_at = Some(Instant::now() + self.retry);
                self.retry = (self.retry * 2).min(MAX_RETRY);
            }
        }
    }

    /// A response on stream `i`: what to hand out, if anything.
    fn received(&mut self, i: usize, r: WatchResponse) -> Option<Got> {
        if r.canceled() && r.compact_revision() == 0 {
            self.lost(i, &format!("cancelled ({})", r.cancel_reason()));
            return None;
        }
        if r.compact_revision() > 0 {
            return Some(Got::Relist);
        }
        if went_back(&r, self.streams[i].start) {
            if self.streams.len() == 1 {
                return Some(Got::Relist);
            }
            // A member behind the other: it may only lag; the other stream carries on.
            self.lost(i, "opened on a member behind the revision it should resume from");
            return None;
        }
        if r.events().is_empty() {
            return None; // created, or a progress answer
        }
        self.pending = Some(r.clone());
        Some(Got::Events(r))
    }

    /// Stream `i` broke, went silent or was cancelled by its member.
    fn lost(&mut self, i: usize, why: &str) {
        let w = self.streams.remove(i);
        let from = self.members.url(w.member);
        self.members.failed(w.member, &format!("watch {why}"), why.contains("silent"));
        metrics::inc(&self.members.metrics.etcd_watch_restarts_total);
        match self.streams.first() {
            Some(other) => {
                let on = self.members.url(other.member);
                info!("etcd: watch on {from} {why}; the watch on {on} carries on, a new second stream is opened");
            }
            None => info!("etcd: watch on {from} {why}; resuming from revision {}", self.next),
        }
        self.opening = None;
        self.retry_at = None;
        self.publish();
    }

    fn publish(&self) {
        metrics::set(&self.members.metrics.etcd_watch_streams, self.streams.len() as u64);
    }
}

impl Drop for WatchSet {
    fn drop(&mut self) {
        metrics::set(&self.members.metrics.etcd_watch_streams, 0);
    }
}

/// A (re)created watch whose member is behind the revision it should resume from: etcd was
/// restored or wiped, so the events in between never happen there (it would wait silently).
fn went_back(resp: &WatchResponse, next: i64) -> bool {
    resp.created() && resp.header().is_some_and(|h| h.revision() < next - 1)
}
