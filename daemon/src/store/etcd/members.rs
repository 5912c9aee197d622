//! The etcd members a store talks to: one client (one HTTP/2 connection) per endpoint, so a dead
//! or partitioned member can never hold a request that another member could answer.
//!
//! [`Members::call`] runs a request on the member that answered last; a refused or reset
//! connection, or an answer that says the member cannot serve ("no leader", ...), moves on to the
//! next member at once, and a member that does not answer within the failover deadline is
//! abandoned (its connection is rebuilt before it is used again). When every member failed in a
//! round, the call waits a little (an election in progress) and tries again (after a few rounds
//! with a longer deadline each round) until the request timeout is spent. The first member is picked at random, so the
//! order of `--store` endpoints is no single point of failure.

use super::map_err;
use crate::metrics::{self, Metrics};
use crate::store::{Result, StoreError};
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Pause between rounds when every member failed (doubles up to [`MAX_PAUSE`]).
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// Rounds with the plain failover deadline before each further round doubles it. During an
/// election a request stuck on a follower (forwarded to the dead leader) is better abandoned
/// and sent again than waited for; only a cluster that stays slow gets longer deadlines.
const PATIENT_AFTER: u32 = 3;

pub(super) struct Members {
    opts: ConnectOptions,
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
        failover: Duration,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Members> {
        let mut members = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let client = connect(url, &opts).await?;
            members.push(Member { url: url.clone(), client: Some(client), failed_at: None });
        }
        let current = (crate::lease::random_u64() % members.len().max(1) as u64) as usize;
        let state = Mutex::new(State { members, current, confirmed: false });
        Ok(Members { opts, failover, request_timeout, metrics, state })
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

    /// The members to try, in order, each with its client (rebuilt where needed).
    pub async fn candidates(&self) -> Vec<(usize, Client)> {
        let (idx, stale): (Vec<usize>, Vec<(usize, String)>) = {
            let s = self.state();
            let idx = order(&s.members, s.current);
            let stale = idx
                .iter()
                .filter(|&&i| s.members[i].client.is_none())
                .map(|&i| (i, s.members[i].url.clone()))
                .collect();
            (idx, stale)
        };
        for (i, url) in stale {
            if let Ok(c) = connect(&url, &self.opts).await {
                self.state().members[i].client.get_or_insert(c);
            }
        }
        let s = self.state();
        idx.into_iter().filter_map(|i| Some((i, s.members[i].client.clone()?))).collect()
    }

    /// Member `i` answered: it becomes the current member (logged and counted if that changes).
    pub fn succeeded(&self, i: usize) {
        let mut s = self.state();
        s.members[i].failed_at = None;
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
    pub async fn call_on<T, F, Fut>(&self, what: &str, mut call: F) -> Result<(usize, T)>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let start = Instant::now();
        let (mut pause, mut limit, mut round) = (FIRST_PAUSE, self.failover, 0);
        let mut last = String::from("no member tried");
        loop {
            for (i, client) in self.candidates().await {
                let left = self.request_timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    break;
                }
                let deadline = limit.min(left);
                match tokio::time::timeout(deadline, call(client)).await {
                    Ok(Ok(v)) => {
                        self.succeeded(i);
                        return Ok((i, v));
                    }
                    Ok(Err(e)) => match map_err(e) {
                        StoreError::Unavailable(m) => {
                            self.failed(i, &format!("{what}: {m}"), false);
                            last = m;
                        }
                        other => {
                            self.succeeded(i); // it answered, just not what we hoped
                            return Err(other);
                        }
                    },
                    Err(_) => {
                        last = format!("{what}: no answer within {deadline:?}");
                        self.failed(i, &last, true);
                    }
                }
            }
            let left = self.request_timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                let n = self.len();
                return Err(StoreError::Unavailable(format!(
                    "no etcd member of {n} answered within {:?} (last: {last})",
                    self.request_timeout
                )));
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_PAUSE);
            round += 1;
            if round >= PATIENT_AFTER {
                limit *= 2; // a slow (not dead) cluster still gets served in a later round
            }
        }
    }
}

/// A client for one endpoint (lazy: no I/O happens here).
async fn connect(url: &str, opts: &ConnectOptions) -> Result<Client> {
    Client::connect([url], Some(opts.clone()))
        .await
        .map_err(|e| StoreError::Other(format!("etcd endpoint {url}: {e}")))
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
