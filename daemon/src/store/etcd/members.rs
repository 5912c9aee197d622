//! The etcd members a store talks to: one client (one HTTP/2 connection) per endpoint, so a dead
//! or partitioned member can never hold a request that another member could answer.
//!
//! [`Members::call`] runs a request on the member that answered last; a refused or reset
//! connection, or an answer that says the member cannot serve ("no leader", ...), moves on to the
//! next member at once. An attempt that has not answered within a fifth of the failover deadline
//! is hedged: the next member gets the request too and the first answer wins. An attempt that
//! does not answer within the failover deadline is abandoned (its member's connection is rebuilt
//! before it is used again). When every member was tried, the call waits a little (an election
//! in progress) and goes round again (after a few rounds with a longer deadline each round) until
//! the request timeout is spent. The first member is picked at random, so the order of `--store`
//! endpoints is no single point of failure.

use super::map_err;
use crate::metrics::{self, Metrics};
use crate::store::{Result, StoreError};
use etcd_client::{Client, ConnectOptions, TlsOptions};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// Pause between rounds when every member failed (doubles up to [`MAX_PAUSE`]).
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// Rounds with the plain failover deadline before each further round doubles it. During an
/// election a request stuck on a follower (forwarded to the dead leader) is better abandoned
/// and sent again than waited for; only a cluster that stays slow gets longer deadlines.
const PATIENT_AFTER: u32 = 3;
/// An attempt unanswered after failover / HEDGE_DIVISOR (100 ms at the default 500 ms) gets a
/// second one on the next member (see [`Members::call_on`]).
const HEDGE_DIVISOR: u32 = 5;
const MIN_HEDGE: Duration = Duration::from_millis(10);
/// Before an attempt is abandoned at its deadline, the connections get this long to deliver what
/// they received meanwhile: ferryd runs on one thread, and a long synchronous route reconcile
/// (50,000 peers: ~0.8 s) can hold it past a deadline while the answer sits unread in a socket.
const GRACE: Duration = Duration::from_millis(5);

/// How a member connection is made (the transport under etcd-client's [`ConnectOptions`]).
#[derive(Clone)]
pub(super) struct Dial {
    pub connect_timeout: Duration,
    /// Bound of every unary request (and of a watch's creation).
    pub request_timeout: Duration,
    /// TLS for `https://` endpoints (and for endpoints without a scheme).
    pub tls: Option<TlsOptions>,
}

/// TCP keepalive of every member connection: after this long without receiving anything the
/// kernel probes the member every [`KEEPALIVE_INTERVAL`], and [`KEEPALIVE_PROBES`] unanswered
/// probes break the connection (a partitioned member: about 8 s). It is the kernel's work alone:
/// ferryd sleeps, and etcd's process does not see the probes (its kernel answers them). No
/// HTTP/2 pings: they wake both sides, and etcd closes a connection pinged more often than every
/// 5 s (its --grpc-keepalive-min-time).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;

pub(super) struct Members {
    opts: ConnectOptions,
    dial: Dial,
    /// Abandon an unresponsive member after this long (first round; later rounds wait longer).
    pub failover: Duration,
    /// Give up (`Unavailable`) after this long in all.
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    members: Vec<Member>,
    /// The member that answered last; requests start there.
    current: usize,
    /// Whether `current` has answered yet (logged once: "talking to ...").
    confirmed: bool,
}

struct Member {
    url: String,
    /// `None`: rebuild before the next use (the old connection stopped answering).
    client: Option<Client>,
    /// When this member last failed, if it failed after its last success.
    failed_at: Option<Instant>,
}

/// Who to try, in order: the current member first, then healthy ones in ring order, then the
/// ones that failed, the longest-failed first.
fn order(members: &[Member], current: usize) -> Vec<usize> {
    let n = members.len();
    let mut v: Vec<usize> = (0..n).map(|k| (current + k) % n).collect();
    v.sort_by_key(|&i| members[i].failed_at.map_or((0, None), |t| (1, Some(t))));
    v
}

impl Members {
    pub async fn new(
        endpoints: &[String],
        opts: ConnectOptions,
        dial: Dial,
        failover: Duration,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Members> {
        let mut members = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let client = connect(url, &dial, &opts).await?;
            members.push(Member { url: url.clone(), client: Some(client), failed_at: None });
        }
        let current = (crate::lease::random_u64() % members.len().max(1) as u64) as usize;
        let state = Mutex::new(State { members, current, confirmed: false });
        Ok(Members { opts, dial, failover, request_timeout, metrics, state })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn url(&self, i: usize) -> String {
        self.state().members[i].url.clone()
    }

    pub fn len(&self) -> usize {
        self.state().members.len()
    }

    /// The members to try, in order, each with its client (rebuilt where needed), but `avoid`.
    async fn candidates(&self, avoid: &[usize]) -> Vec<(usize, Client)> {
        let (idx, stale): (Vec<usize>, Vec<(usize, String)>) = {
            let s = self.state();
            let mut idx = order(&s.members, s.current);
            idx.retain(|i| !avoid.contains(i));
            let stale = idx
                .iter()
                .filter(|&&i| s.members[i].client.is_none())
                .map(|&i| (i, s.members[i].url.clone()))
                .collect();
            (idx, stale)
        };
        for (i, url) in stale {
            if let Ok(c) = connect(&url, &self.dial, &self.opts).await {
                self.state().members[i].client.get_or_insert(c);
            }
        }
        let s = self.state();
        idx.into_iter().filter_map(|i| Some((i, s.members[i].client.clone()?))).collect()
    }

    /// Member `i` answered: it becomes the current member (logged and counted if that changes)
    /// if `current`, which a call that had to avoid some members (a second watch stream) is not.
    fn answered(&self, i: usize, current: bool) {
        let mut s = self.state();
        s.members[i].failed_at = None;
        if !current {
            return;
        }
        let (from, to) = (s.members[s.current].url.clone(), s.members[i].url.clone());
        let (moved, first) = (s.current != i, !s.confirmed);
        (s.current, s.confirmed) = (i, true);
        drop(s);
        if moved {
            metrics::inc(&self.metrics.etcd_failovers_total);
            info!("etcd: now talking to {to} (failed over from {from})");
        } else if first {
            info!("etcd: talking to {to}");
        }
        metrics::set(&self.metrics.etcd_member, i as u64 + 1);
    }

    /// Member `i` failed (`rebuild`: its connection is stuck, make a new one before next use).
    pub fn failed(&self, i: usize, why: &str, rebuild: bool) {
        let mut s = self.state();
        let m = &mut s.members[i];
        let first = m.failed_at.is_none();
        m.failed_at = Some(Instant::now());
        if rebuild {
            m.client = None;
        }
        let url = m.url.clone();
        drop(s);
        metrics::inc(&self.metrics.etcd_member_failures_total);
        if first {
            warn!("etcd: member {url}: {why}");
        } else {
            debug!("etcd: member {url}: {why}");
        }
    }

    /// Run `call` on one member after another (see the module doc) until one answers.
    pub async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_on(what, call).await.map(|(_, v)| v)
    }

    /// [`Members::call`], also saying which member answered.
    ///
    /// Attempts are hedged: one that has not answered within a fifth of its deadline keeps
    /// waiting while the next member is tried too (possibly the same member again, on a fresh
    /// request: during an election a request a follower forwarded to the dead leader never gets
    /// an answer, one sent after the election does), and the first answer wins (the others are
    /// dropped). At most two attempts per member wait at once. Every request ferryd sends may run twice this way:
    /// reads, watch creation, delete and revoke are idempotent, lease grants carry their own id
    /// (a second grant of it is recognised), and the create/renew transactions recognise their
    /// own committed write (see `wrote`).
    pub async fn call_on<T, F, Fut>(&self, what: &str, call: F) -> Result<(usize, T)>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_avoiding(what, &[], call).await
    }

    /// [`Members::call_on`] on the members but `avoid` (e.g. a second watch stream).
    pub async fn call_avoiding<T, F, Fut>(
        &self,
        what: &str,
        avoid: &[usize],
        mut call: F,
    ) -> Result<(usize, T)>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        // The clock starts once the member clients are (re)built: a reconnect must not eat the
        // request's deadline.
        let queue = self.candidates(avoid).await.into();
        let mut plan = Plan { queue, avoid: avoid.to_vec(), ..Plan::new() };
        let end = Instant::now() + self.request_timeout;
        let mut running: Vec<Attempt<Fut>> = Vec::new();
        let mut last = String::from("no member tried");
        let mut next_start = Instant::now();
        loop {
            let now = Instant::now();
            if now >= end {
                return Err(self.exhausted(&last));
            }
            if now >= next_start {
                next_start = self.start_next(&mut plan, &mut running, &mut call, end).await;
                continue;
            }
            let wake = running.iter().map(|a| a.deadline).fold(next_start.min(end), Instant::min);
            let done = match first_done(&mut running, wake).await {
                None if !running.is_empty() => {
                    first_done(&mut running, Instant::now() + GRACE).await
                }
                done => done,
            };
            match done {
                Some((i, Ok(v))) => {
                    self.answered(i, avoid.is_empty());
                    return Ok((i, v));
                }
                Some((i, Err(e))) => match map_err(e) {
                    StoreError::Unavailable(m) => {
                        self.failed(i, &format!("{what}: {m}"), false);
                        (last, next_start) = (m, Instant::now());
                    }
                    other => {
                        self.answered(i, avoid.is_empty()); // it answered, just not as hoped
                        return Err(other);
                    }
                },
                None => {
                    if self.expire(what, &mut running, &mut last) {
                        next_start = Instant::now();
                    }
                }
            }
        }
    }

    /// Start an attempt on the next member of the plan (refilling it after a pause when every
    /// member was tried); returns when the next attempt may start.
    async fn start_next<T, F, Fut>(
        &self,
        plan: &mut Plan,
        running: &mut Vec<Attempt<Fut>>,
        call: &mut F,
        end: Instant,
    ) -> Instant
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let now = Instant::now();
        if running.len() >= 2 * self.len() {
            return end; // enough waiting already: the next one starts when one of them ends
        }
        if plan.queue.is_empty() {
            if !plan.refill_due {
                plan.refill_due = true;
                let pause = plan.pause;
                plan.pause = (plan.pause * 2).min(MAX_PAUSE);
                return now + pause; // an election in progress: give it a moment
            }
            plan.refill_due = false;
            plan.queue = self.candidates(&plan.avoid).await.into();
        }
        let Some((member, client)) = plan.queue.pop_front() else { return end };
        let limit = self.limit(plan.started);
        plan.started += 1;
        let deadline = (now + limit).min(end);
        let fut = Box::pin(call(client));
        running.push(Attempt { member, allowed: deadline - now, deadline, fut });
        now + (limit / HEDGE_DIVISOR).max(MIN_HEDGE)
    }

    /// Drop the attempts past their deadline (each member failed, its connection rebuilt);
    /// whether any was dropped.
    fn expire<Fut>(&self, what: &str, running: &mut Vec<Attempt<Fut>>, last: &mut String) -> bool {
        let now = Instant::now();
        let before = running.len();
        running.retain(|a| {
            if a.deadline > now {
                return true;
            }
            *last = format!("{what}: no answer within {:?}", a.allowed);
            self.failed(a.member, last, true);
            false
        });
        running.len() != before
    }

    /// The deadline of the `started`-th attempt of a call: the failover deadline for the first
    /// [`PATIENT_AFTER`] rounds over the members, doubling each round after that (a slow, not
    /// dead, cluster still gets served).
    fn limit(&self, started: usize) -> Duration {
        let rounds = (started / self.len().max(1)) as u32;
        self.failover * 2u32.pow(rounds.saturating_sub(PATIENT_AFTER).min(10))
    }

    fn exhausted(&self, last: &str) -> StoreError {
        let n = self.len();
        StoreError::Unavailable(format!(
            "no etcd member of {n} answered within {:?} (last: {last})",
            self.request_timeout
        ))
    }
}

/// One attempt of a call, on one member.
struct Attempt<Fut> {
    member: usize,
    /// How long it may wait for its answer.
    allowed: Duration,
    deadline: Instant,
    fut: Pin<Box<Fut>>,
}

/// The members still to try in a call.
struct Plan {
    queue: VecDeque<(usize, Client)>,
    /// Every member was tried: the queue is refilled after `pause`.
    refill_due: bool,
    pause: Duration,
    /// Attempts started so far.
    started: usize,
    /// Members this call must not use.
    avoid: Vec<usize>,
}

impl Plan {
    fn new() -> Plan {
        let (queue, pause, avoid) = (VecDeque::new(), FIRST_PAUSE, Vec::new());
        Plan { queue, refill_due: false, pause, started: 0, avoid }
    }
}

/// The first attempt to finish (removed from `running`, with its member), or `None` at `wake`.
async fn first_done<R, Fut: Future<Output = R>>(
    running: &mut Vec<Attempt<Fut>>,
    wake: Instant,
) -> Option<(usize, R)> {
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
    tokio::pin!(sleep);
    std::future::poll_fn(|cx| {
        for k in 0..running.len() {
            if let Poll::Ready(r) = running[k].fut.as_mut().poll(cx) {
                return Poll::Ready(Some((running.swap_remove(k).member, r)));
            }
        }
        sleep.as_mut().poll(cx).map(|_| None)
    })
    .await
}

/// A client for one endpoint (lazy: no I/O happens here).
async fn connect(url: &str, dial: &Dial, opts: &ConnectOptions) -> Result<Client> {
    let bad = |e: String| StoreError::Other(format!("etcd endpoint {url}: {e}"));
    let channel = endpoint(url, dial).map_err(bad)?.connect_lazy();
    Client::from_channel(etcd_client::Channel::Tonic(channel), Some(opts.clone()))
        .await
        .map_err(|e| bad(e.to_string()))
}

/// The transport of one endpoint: `http://` plain, `https://` with TLS, no scheme: TLS if it is
/// configured.
fn endpoint(url: &str, dial: &Dial) -> std::result::Result<Endpoint, String> {
    let full = match (url.contains("://"), &dial.tls) {
        (true, _) => url.to_string(),
        (false, Some(_)) => format!("https://{url}"),
        (false, None) => format!("http://{url}"),
    };
    let mut e = Endpoint::from_shared(full.clone()).map_err(|e| e.to_string())?;
    if full.starts_with("https://") {
        e = e.tls_config(dial.tls.clone().unwrap_or_default()).map_err(|e| e.to_string())?;
    } else if !full.starts_with("http://") {
        return Err("expected an http:// or https:// URL".into());
    } else if dial.tls.is_some() {
        return Err("TLS is configured: the endpoint must be https://".into());
    }
    Ok(e.connect_timeout(dial.connect_timeout)
        .timeout(dial.request_timeout)
        .tcp_keepalive(Some(KEEPALIVE_IDLE))
        .tcp_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .tcp_keepalive_retries(Some(KEEPALIVE_PROBES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(failed: Option<Instant>) -> Member {
        Member { url: String::new(), client: None, failed_at: failed }
    }

    #[test]
    fn order_starts_at_current_and_puts_failed_members_last() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(order(&[m(None), m(None), m(None)], 1), vec![1, 2, 0]);
        assert_eq!(order(&[m(None), m(Some(t0)), m(None)], 1), vec![2, 0, 1]);
        assert_eq!(order(&[m(Some(t1)), m(Some(t0)), m(None)], 0), vec![2, 1, 0]);
    }
}
