//! The etcd v3 store, flannel-compatible (`pkg/subnet/etcd`):
//!
//! * `<prefix>/config`: the network config JSON;
//! * `<prefix>/subnets/10.244.1.0-24`: one key per lease, value = [`LeaseAttrs`] JSON, attached to
//!   an etcd lease of the lease TTL. Each create/renew grants a *fresh* etcd lease (like flannel;
//!   no keepalive). A key without an etcd lease is a permanent reservation (`expires: None`).
//!
//! A listed or watched key's expiry is its etcd lease's, asked of etcd (one `LeaseTimeToLive`
//! per etcd lease, remembered) by a store from [`EtcdStore::connect`] (ferryctl shows it). A
//! store [`EtcdStore::without_expiries`] (ferryd's) asks nothing: etcd deletes a key when its
//! lease runs out, so a key it lists or watches is live ([`until_deleted`]) until its delete is
//! watched. At 20,000 keys on their own etcd leases the lookups made a listing 10 times slower.
//!
//! Entry keys ([`BadLease::key`](super::BadLease), [`WatchEvent::Removed`]) are the full etcd keys.
//! Every request fails over between the members ([`members`]: one connection per endpoint, a short
//! per-member deadline, the whole call bounded by `request_timeout`); transport failures map to
//! [`StoreError::Unavailable`]. The clients connect lazily, so `connect` succeeds with etcd down.
//! `watch` keeps the prefix watch open across calls, on two members at once where there are two
//! ([`watch`]: an event arrives on whichever stream is alive, so a partitioned member delays
//! nothing, and an idle ferryd exchanges no message with etcd), and is cancel-safe (a received
//! but unreturned batch is kept; a cancelled resync simply happens again on the next call). A
//! stream that breaks is replaced, from the last delivered revision; only a compaction past that
//! revision makes it re-list.

mod members;
mod watch;

use super::{
    parse_lease, parse_subnet_key, until_deleted, LeaseAttrs, LeaseEntry, LeaseStore,
    NetworkConfig, Result, StoreError, Subnets, WatchEvent,
};
use crate::metrics::{self, Metrics};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, LeaseGrantOptions, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
    WatchResponse,
};
use members::Dial;
use members::Members;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use watch::{Got, WatchSet};

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix, flannel's `--etcd-prefix` (default `/coreos.com/network`).
    pub prefix: String,
    /// TCP/TLS connect timeout.
    pub dial_timeout: Duration,
    /// Upper bound of every request over all members (watch: of establishing the stream).
    pub request_timeout: Duration,
    /// A member that does not answer within this long is abandoned for the next one (and one
    /// that has not answered within a fifth of it gets a second attempt on the next member); a
    /// watch stream's progress request (after a minute of silence) must be answered this fast.
    pub failover_timeout: Duration,
    /// CA bundle (PEM) to verify the servers; needed for `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Keys per page of a listing (at least 1): a listing is read in pages of this many keys,
    /// all at the revision of the first page.
    pub page_size: usize,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/coreos.com/network".into(),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            failover_timeout: Duration::from_millis(500),
            ca_file: None,
            cert_file: None,
            key_file: None,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

/// Keys per listing page by default: about 0.7 MB of answer at flannel's lease size (~135 bytes
/// a key), so 50,000 leases are 10 answers instead of one 6.6 MB answer over gRPC's 4 MB limit.
pub const DEFAULT_PAGE_SIZE: usize = 5_000;
/// The largest answer a member connection decodes (gRPC's default is 4 MiB). Pages keep listings
/// far below it; it is headroom for a page of unusually large values and for a watch response
/// carrying a big transaction (every event with its previous value), bounded so a broken or
/// hostile member cannot make ferryd buffer without limit.
const MAX_DECODE: usize = 64 << 20;

/// The etcd-backed [`LeaseStore`]. Not `Sync`-shared: use [`EtcdStore::handle`] for a second
/// store object (sharing the member connections) e.g. to renew while another task watches.
pub struct EtcdStore {
    members: Arc<Members>,
    prefix: String,
    page_size: usize,
    watch: Option<WatchSet>,
    /// Look up the expiry of every etcd lease a listed or watched key is on (else a key on an
    /// etcd lease gets [`until_deleted`]).
    expiries: bool,
    /// etcd lease id → expiry (only with `expiries`). Leases are never kept alive (fresh lease
    /// per write), so an expiry once learned stays valid; pruned by `list` and on deletes.
    expiry: HashMap<i64, SystemTime>,
    /// etcd leases a failed call may have granted, to revoke when etcd answers again.
    orphans: Vec<i64>,
    /// How many etcd leases the last listing used (the expiry cache may hold that many and
    /// [`EXPIRY_SLACK`] more before it starts over).
    live: usize,
}

/// Expiries remembered beyond the leases of the last listing (ids of renewed leases, learnt from
/// watch events, pile up between listings) before the cache starts over.
const EXPIRY_SLACK: usize = 10_000;
/// How many possibly granted, unused etcd leases a store remembers to revoke.
const MAX_ORPHANS: usize = 64;
/// etcd's answer to a grant of an id that exists.
const LEASE_EXISTS: &str = "lease already exists";

/// Map an etcd-client error: transport trouble → `Unavailable`, the rest → `Other`.
fn map_err(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            StoreError::Unavailable(e.to_string())
        }
        // gRPC codes: 1 Cancelled, 2 Unknown, 4 DeadlineExceeded, 8 ResourceExhausted,
        // 10 Aborted, 13 Internal, 14 Unavailable (etcd "no leader", tcp connect error, ...).
        E::GRpcStatus(s) if matches!(s.code() as i32, 1 | 2 | 4 | 8 | 10 | 13 | 14) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(e.to_string()),
    }
}

/// An etcd lease TTL in whole seconds (rounded up, at least 1).
fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_millis().div_ceil(1000).max(1) as i64
}

fn read_pem(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| StoreError::Other(format!("read {}: {e}", p.display())))
}

fn decode_config(v: &[u8]) -> Result<NetworkConfig> {
    serde_json::from_slice(v).map_err(|e| {
        StoreError::Invalid(format!(
            "network config is not valid JSON ({e}): {}",
            String::from_utf8_lossy(v)
        ))
    })
}

/// The client options every member connection shares (TLS, timeouts, require-leader).
fn connect_options(cfg: &EtcdConfig) -> Result<(ConnectOptions, Dial)> {
    // A member without a leader refuses at once ("no leader"): the call moves on.
    let opts = ConnectOptions::new().with_require_leader(true);
    let mut dial =
        Dial { connect_timeout: cfg.dial_timeout, request_timeout: cfg.request_timeout, tls: None };
    if cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca)?));
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => {
                tls = tls.identity(Identity::from_pem(read_pem(c)?, read_pem(k)?))
            }
            (None, None) => {}
            _ => return Err(StoreError::Other("etcd cert_file and key_file go together".into())),
        }
        dial.tls = Some(tls);
    }
    Ok((opts, dial))
}

/// etcd's answer to a read at a revision that was compacted away.
const COMPACTED: &str = "required revision has been compacted";

/// The end of the range of keys that start with `prefix` (etcd's `WithPrefix`): the prefix
/// with its last byte below 0xff incremented, and the bytes after it dropped.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(b) = end.pop() {
        if b < 0xff {
            end.push(b + 1);
            return end;
        }
    }
    vec![0] // every key (no prefix, or all 0xff)
}

/// The value of the first `Get` in a transaction's else branch.
fn txn_get(r: &TxnResponse) -> Option<KeyValue> {
    r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

/// Did a create/renew transaction write our value? Yes if it succeeded, and also if it failed
/// only because an earlier attempt of the same call (whose answer was lost on a dying member)
/// already wrote it: the key then carries the etcd lease this call granted.
fn wrote(r: &TxnResponse, lease: i64) -> bool {
    r.succeeded() || (lease != 0 && txn_get(r).is_some_and(|kv| kv.lease() == lease))
}

impl EtcdStore {
    /// Build the member clients (lazy: no request is made; the first call reports an
    /// unreachable etcd). Counters go to a private [`Metrics`].
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdStore> {
        EtcdStore::connect_with_metrics(cfg, Arc::new(Metrics::default())).await
    }

    /// [`EtcdStore::connect`], counting failovers and watch restarts in `metrics`.
    pub async fn connect_with_metrics(cfg: EtcdConfig, m: Arc<Metrics>) -> Result<EtcdStore> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Other("no etcd endpoints configured".into()));
        }
        let (opts, dial) = connect_options(&cfg)?;
        let (failover, timeout) = (cfg.failover_timeout, cfg.request_timeout);
        let members = Members::new(&cfg.endpoints, opts, dial, failover, timeout, m).await?;
        let prefix = cfg.prefix.trim_end_matches('/').to_string();
        let members = Arc::new(members);
        Ok(EtcdStore {
            members,
            prefix,
            page_size: cfg.page_size.max(1),
            watch: None,
            expiries: true,
            expiry: HashMap::new(),
            orphans: Vec::new(),
            live: 0,
        })
    }

    /// This store without expiry lookups (ferryd's): a key on an etcd lease is listed and
    /// watched with the expiry [`until_deleted`] (live while the key exists, which etcd ends
    /// when the lease runs out) instead of one `LeaseTimeToLive` request per etcd lease.
    /// Reservations (keys on no etcd lease) stay `None`; [`EtcdStore::handle`] keeps the mode.
    pub fn without_expiries(mut self) -> EtcdStore {
        self.expiries = false;
        self.expiry.clear();
        self
    }

    /// Another store object on the same member connections (its own watch state).
    pub fn handle(&self) -> EtcdStore {
        EtcdStore {
            members: self.members.clone(),
            prefix: self.prefix.clone(),
            page_size: self.page_size,
            watch: None,
            expiries: self.expiries,
            expiry: HashMap::new(),
            orphans: Vec::new(),
            live: 0,
        }
    }

    fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/subnets/` (with the slash, so `subnets2/...` is not matched).
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The full etcd key of a subnet's lease.
    pub fn lease_key(&self, subnet: impl Into<Subnets>) -> String {
        format!("{}{}", self.subnets_prefix(), subnet.into().key())
    }

    async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse> {
        let key: Vec<u8> = key.into();
        self.members
            .call("get", |c| {
                let (k, o) = (key.clone(), opts.clone());
                let mut kv = c.kv_client().max_decoding_message_size(MAX_DECODE);
                async move { kv.get(k, o).await }
            })
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.members
            .call("txn", |mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await
    }

    /// Grant an etcd lease for `ttl` (none for a zero TTL: a reservation). Returns (put options, id).
    ///
    /// The id is chosen here (random, 63 bits), so an attempt sent again after a lost answer
    /// cannot grant a second lease: etcd answers "lease already exists" and that is our lease. A
    /// grant that fails for want of an answer may still have been granted: its id is revoked
    /// once etcd answers again.
    async fn grant(&mut self, ttl: Duration) -> Result<(Option<PutOptions>, i64)> {
        if ttl.is_zero() {
            return Ok((None, 0));
        }
        self.revoke_orphans().await;
        let (secs, id) = (ttl_secs(ttl), (crate::lease::random_u64() >> 1).max(1) as i64);
        let grant = |mut c: Client| async move {
            let opts = LeaseGrantOptions::new().with_id(id);
            match c.lease_grant(secs, Some(opts)).await {
                Ok(g) => Ok(g.ttl()),
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains(LEASE_EXISTS) => {
                    Ok(secs) // an earlier attempt of this call granted it
                }
                Err(e) => Err(e),
            }
        };
        match self.members.call("lease grant", grant).await {
            Ok(granted) => {
                if self.expiries {
                    let left = Duration::from_secs(granted.max(0) as u64);
                    self.expiry.insert(id, SystemTime::now() + left);
                }
                Ok((Some(PutOptions::new().with_lease(id)), id))
            }
            Err(e) => {
                self.orphan(id);
                Err(e)
            }
        }
    }

    /// Give back a lease we granted but did not use (kept for later if etcd does not answer).
    async fn revoke(&mut self, id: i64) {
        if id == 0 {
            return;
        }
        self.expiry.remove(&id);
        let call = |mut c: Client| async move { c.lease_revoke(id).await };
        // "lease not found" is fine: never granted, or already revoked.
        if let Err(StoreError::Unavailable(_)) = self.members.call("lease revoke", call).await {
            self.orphan(id);
        }
    }

    /// Remember a lease that may exist unused, to revoke it later (a bounded list: past that
    /// the lease just expires with its TTL).
    fn orphan(&mut self, id: i64) {
        if self.orphans.len() < MAX_ORPHANS && !self.orphans.contains(&id) {
            self.orphans.push(id);
        }
    }

    async fn revoke_orphans(&mut self) {
        for id in std::mem::take(&mut self.orphans) {
            self.revoke(id).await;
        }
    }

    /// Learn the expiry of the given etcd leases we don't know yet (concurrently, 64 at a time).
    async fn learn_expiry(&mut self, ids: impl IntoIterator<Item = i64>) -> Result<()> {
        if !self.expiries {
            return Ok(());
        }
        let mut missing: Vec<i64> =
            ids.into_iter().filter(|id| *id != 0 && !self.expiry.contains_key(id)).collect();
        missing.sort_unstable();
        missing.dedup();
        // Stale ids of renewed leases pile up between listings: start over past the slack (not
        // at a fixed size: with more than that many leases every watch event cleared the cache
        // and every re-list looked up every lease again).
        if self.expiry.len() + missing.len() > self.live + EXPIRY_SLACK {
            self.expiry.clear();
        }
        for chunk in missing.chunks(64) {
            let mut set = tokio::task::JoinSet::new();
            for &id in chunk {
                let members = self.members.clone();
                set.spawn(async move {
                    let ttl = |mut c: Client| async move { c.lease_time_to_live(id, None).await };
                    (id, members.call("lease ttl", ttl).await)
                });
            }
            while let Some(joined) = set.join_next().await {
                let (id, r) =
                    joined.map_err(|e| StoreError::Other(format!("lease lookup task: {e}")))?;
                let left = match r {
                    Ok(r) => r.ttl().max(0) as u64, // -1: the lease is gone, the key goes with it
                    Err(e @ StoreError::Unavailable(_)) => return Err(e),
                    Err(_) => 0,
                };
                self.expiry.insert(id, SystemTime::now() + Duration::from_secs(left));
            }
        }
        Ok(())
    }

    fn entry(&self, kv: &KeyValue) -> LeaseEntry {
        let key = String::from_utf8_lossy(kv.key());
        let expires = match kv.lease() {
            0 => None,
            _ if !self.expiries => Some(until_deleted()),
            id => Some(self.expiry.get(&id).copied().unwrap_or_else(SystemTime::now)),
        };
        parse_lease(&key, kv.value(), expires)
    }

    /// One listing of the subnets prefix in pages of `page_size` keys, every page read at the
    /// revision of the first, so the listing is one consistent snapshot and a watch from its
    /// revision + 1 misses nothing and repeats nothing. Each page is parsed as it arrives and its
    /// raw answer dropped: at no time are the whole raw listing and its parsed copy both held.
    async fn list_pages(&mut self) -> Result<(Vec<LeaseEntry>, i64)> {
        let prefix = self.subnets_prefix();
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.into_bytes();
        let mut rev = 0;
        // The entries, and each one's etcd lease id (0: none) while expiries are to be looked
        // up (filled in at the end). Without lookups an entry is complete as parsed.
        let (mut entries, mut ids): (Vec<LeaseEntry>, Vec<i64>) = (Vec::new(), Vec::new());
        loop {
            let mut opts =
                GetOptions::new().with_range(end.clone()).with_limit(self.page_size as i64);
            if rev > 0 {
                opts = opts.with_revision(rev);
            }
            let mut r = self.get(from.clone(), Some(opts)).await?;
            if rev == 0 {
                rev = r.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = r.more();
            let kvs = r.take_kvs();
            entries.reserve(if more { kvs.len() * 2 } else { kvs.len() });
            for kv in &kvs {
                let key = String::from_utf8_lossy(kv.key());
                let expires = (kv.lease() != 0 && !self.expiries).then(until_deleted);
                entries.push(parse_lease(&key, kv.value(), expires));
                if self.expiries {
                    ids.push(kv.lease());
                }
            }
            match kvs.last() {
                // etcd's next key after the last one: the same key with a zero byte appended.
                Some(last) if more => from = [last.key(), b"\0"].concat(),
                _ => break,
            }
        }
        if !self.expiries {
            return Ok((entries, rev));
        }
        let live: HashSet<i64> = ids.iter().copied().filter(|id| *id != 0).collect();
        // Forget leases no key uses, and expiries that have passed: a key still listed under a
        // lease we think expired is alive (etcd extends every lease when it restarts, e.g. after
        // an outage longer than the TTL), so ask etcd again instead of dropping the route.
        let now = SystemTime::now();
        self.expiry.retain(|id, exp| live.contains(id) && *exp > now);
        self.live = live.len();
        self.learn_expiry(live).await?;
        for (e, id) in entries.iter_mut().zip(ids) {
            if let (Ok(l), true) = (e, id != 0) {
                l.expires = Some(self.expiry.get(&id).copied().unwrap_or(now));
            }
        }
        Ok((entries, rev))
    }

    async fn resync(&mut self) -> Result<(Vec<WatchEvent>, i64)> {
        self.watch = None;
        let (list, rev) = self.list().await?;
        Ok((vec![WatchEvent::Resync(list)], rev))
    }

    /// Turn one watch response into events, only those of revision `from` or later (the
    /// earlier ones came on the other stream); `None` if it carries none.
    async fn events(
        &mut self,
        resp: &WatchResponse,
        from: i64,
    ) -> Result<Option<(Vec<WatchEvent>, i64)>> {
        let new = |e: &&etcd_client::Event| e.kv().is_some_and(|kv| kv.mod_revision() >= from);
        let puts = resp.events().iter().filter(new).filter(|e| e.event_type() == EventType::Put);
        self.learn_expiry(puts.filter_map(|e| e.kv().map(|kv| kv.lease())).collect::<Vec<_>>())
            .await?;
        let mut out = Vec::with_capacity(resp.events().len());
        let mut rev = 0;
        for ev in resp.events().iter().filter(new) {
            let Some(kv) = ev.kv() else { continue };
            rev = rev.max(kv.mod_revision());
            if let Some(prev) = ev.prev_kv().filter(|p| p.lease() != kv.lease()) {
                self.expiry.remove(&prev.lease()); // replaced (renew) or deleted with the key
            }
            match ev.event_type() {
                EventType::Put => out.push(WatchEvent::Put(self.entry(kv))),
                EventType::Delete => {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let subnet = parse_subnet_key(&key);
                    out.push(WatchEvent::Removed { key, subnet });
                }
            }
        }
        Ok((!out.is_empty()).then_some((out, rev)))
    }
}

impl LeaseStore for EtcdStore {
    async fn get_config(&mut self) -> Result<Option<NetworkConfig>> {
        let r = self.get(self.config_key(), None).await?;
        r.kvs().first().map(|kv| decode_config(kv.value())).transpose()
    }

    async fn put_config_if_absent(&mut self, cfg: &NetworkConfig) -> Result<NetworkConfig> {
        let key = self.config_key();
        let value = serde_json::to_vec(cfg).map_err(|e| StoreError::Other(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.txn(txn).await?;
        if r.succeeded() {
            return Ok(cfg.clone());
        }
        match txn_get(&r) {
            Some(kv) => decode_config(kv.value()),
            None => {
                Err(StoreError::Invalid("config exists but the transaction returned none".into()))
            }
        }
    }

    async fn list(&mut self) -> Result<(Vec<LeaseEntry>, i64)> {
        // A compaction past the first page's revision (etcd's auto-compaction, between two
        // pages of a long listing) makes the later pages fail: list again at a newer revision.
        let mut tries = 0;
        loop {
            match self.list_pages().await {
                Err(StoreError::Other(e)) if e.contains(COMPACTED) && tries < 3 => {
                    tries += 1;
                    info!("etcd: listing overtaken by a compaction ({e}); listing again");
                }
                other => return other,
            }
        }
    }

    async fn create(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let subnet: Subnets = subnet.into();
        let key = self.lease_key(subnet);
        let value = serde_json::to_vec(attrs).map_err(|e| StoreError::Other(e.to_string()))?;
        let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        if subnet.v4.is_some() && subnet.v6.is_some() {
            // A dual-stack key shares its subnets with keys that differ in the other part: check
            // a fresh listing for another node's lease of either subnet, and create only if no
            // lease changed since (otherwise the caller lists again and retries).
            let (entries, rev) = self.list().await?;
            if let Some(l) = super::conflict(&entries, subnet, attrs, SystemTime::now()) {
                debug!("etcd: {key} not created: {} holds one of its subnets", l.key);
                return Ok(false);
            }
            let prefix = self.subnets_prefix();
            let mut end = prefix.clone().into_bytes();
            *end.last_mut().expect("non-empty prefix") += 1;
            when.push(Compare::mod_revision(prefix, CompareOp::Less, rev + 1).with_range(end));
        }
        let (opts, lease) = self.grant(ttl).await?;
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key.clone(), value, opts)])
            .or_else([TxnOp::get(key, None)]);
        match self.txn(txn).await {
            Ok(r) if wrote(&r, lease) => Ok(true),
            other => {
                // Lost the race (or the answer): don't leak the lease. If the txn did commit and
                // only the answer was lost, this deletes the key again; the caller retries.
                self.revoke(lease).await;
                other.map(|_| false)
            }
        }
    }

    async fn renew(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let key = self.lease_key(subnet);
        let value = serde_json::to_vec(attrs).map_err(|e| StoreError::Other(e.to_string()))?;
        for _ in 0..3 {
            let r = self.get(key.as_str(), None).await?;
            let Some(kv) = r.kvs().first() else { return Ok(false) };
            match serde_json::from_slice::<LeaseAttrs>(kv.value()) {
                Ok(cur) if cur.same_node(attrs) => {
                    // A reservation (no etcd lease) stays TTL-less, as in flannel.
                    if kv.lease() == 0 && cur == *attrs {
                        return Ok(true);
                    }
                }
                _ => return Ok(false),
            }
            let (opts, lease) = if kv.lease() == 0 { (None, 0) } else { self.grant(ttl).await? };
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::put(key.clone(), value.clone(), opts)])
                .or_else([TxnOp::get(key.clone(), None)]);
            match self.txn(txn).await {
                Ok(r) if wrote(&r, lease) => return Ok(true),
                Ok(_) => self.revoke(lease).await, // changed under us: look again
                Err(e) => {
                    self.revoke(lease).await;
                    return Err(e);
                }
            }
        }
        Err(StoreError::Other(format!("lease {key} keeps changing under renew")))
    }

    async fn delete(&mut self, subnet: impl Into<Subnets>) -> Result<()> {
        let key = self.lease_key(subnet);
        self.members
            .call("delete", |mut c| {
                let k = key.clone();
                async move { c.delete(k, None).await }
            })
            .await?;
        Ok(())
    }

    async fn watch(&mut self, revision: i64) -> Result<(Vec<WatchEvent>, i64)> {
        let next = revision + 1;
        if self.watch.as_ref().is_none_or(|w| w.next != next) {
            let prefix = self.subnets_prefix();
            self.watch = Some(WatchSet::new(self.members.clone(), prefix, next));
        }
        loop {
            let w = self.watch.as_mut().expect("watch set");
            let resp = match w.response().await? {
                Got::Events(resp) => resp,
                Got::Relist => {
                    metrics::inc(&self.members.metrics.etcd_watch_relists_total);
                    info!("etcd: watch cannot resume from revision {} (compacted, or etcd's data went back): re-listing", w.next);
                    return self.resync().await;
                }
            };
            let done = self.events(&resp, next).await?;
            let w = self.watch.as_mut().expect("watch set kept");
            w.taken();
            if let Some((events, rev)) = done {
                w.next = rev + 1;
                return Ok((events, rev));
            }
        }
    }
}
