//! The etcd v3 store, flannel-compatible (`pkg/subnet/etcd`):
//!
//! * `<prefix>/config`: the network config JSON;
//! * `<prefix>/subnets/10.244.1.0-24`: one key per lease, value = [`LeaseAttrs`] JSON, attached to
//!   an etcd lease of the lease TTL. Each create/renew grants a *fresh* etcd lease (like flannel;
//!   no keepalive). A key without an etcd lease is a permanent reservation (`expires: None`).
//!
//! Entry keys ([`BadLease::key`](super::BadLease), [`WatchEvent::Removed`]) are the full etcd keys.
//! Every request is bounded by `request_timeout`; transport failures map to
//! [`StoreError::Unavailable`]. The client connects lazily, so `connect` succeeds with etcd down.
//! `watch` keeps one prefix watch stream open across calls and is cancel-safe (a received but
//! unreturned batch is kept; a cancelled resync simply happens again on the next call).

use super::{
    parse_lease, parse_subnet_key, subnet_key, LeaseAttrs, LeaseEntry, LeaseStore, NetworkConfig,
    Result, StoreError, WatchEvent,
};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse,
    WatchStream,
};
use ipnetwork::Ipv4Network;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix, flannel's `--etcd-prefix` (default `/coreos.com/network`).
    pub prefix: String,
    /// TCP/TLS connect timeout.
    pub dial_timeout: Duration,
    /// Upper bound of every request (watch: of establishing the stream).
    pub request_timeout: Duration,
    /// CA bundle (PEM) to verify the servers; needed for `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/coreos.com/network".into(),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// The etcd-backed [`LeaseStore`]. Not `Sync`-shared: use [`EtcdStore::handle`] for a second
/// store object (sharing the connection) e.g. to renew while another task watches.
pub struct EtcdStore {
    client: Client,
    cfg: EtcdConfig,
    prefix: String,
    watch: Option<Watching>,
    /// etcd lease id → expiry. Leases are never kept alive (fresh lease per write), so an expiry
    /// once learned stays valid; pruned by `list` and on deletes.
    expiry: HashMap<i64, SystemTime>,
}

struct Watching {
    stream: WatchStream,
    /// The revision the next event must have at least (`revision + 1` of the caller).
    next: i64,
    /// A response received but not yet returned (keeps `watch` cancel-safe).
    pending: Option<WatchResponse>,
}

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

/// Run one etcd call bounded by `timeout`.
async fn io<T>(
    timeout: Duration,
    call: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(StoreError::Unavailable(format!("etcd request timed out after {timeout:?}"))),
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

impl EtcdStore {
    /// Build the client (lazy: no request is made; the first call reports an unreachable etcd).
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdStore> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Other("no etcd endpoints configured".into()));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.dial_timeout)
            .with_timeout(cfg.request_timeout)
            // HTTP/2 pings while a stream (the watch) is open: detects a dead peer / partition.
            // etcd's default --grpc-keepalive-min-time is 5 s, stay above it.
            .with_keep_alive(Duration::from_secs(10), cfg.request_timeout)
            .with_require_leader(true);
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
                _ => {
                    return Err(StoreError::Other("etcd cert_file and key_file go together".into()))
                }
            }
            opts = opts.with_tls(tls);
        }
        let client =
            io(cfg.dial_timeout + cfg.request_timeout, Client::connect(&cfg.endpoints, Some(opts)))
                .await?;
        let prefix = cfg.prefix.trim_end_matches('/').to_string();
        Ok(EtcdStore { client, cfg, prefix, watch: None, expiry: HashMap::new() })
    }

    /// Another store object on the same connection (its own watch state).
    pub fn handle(&self) -> EtcdStore {
        EtcdStore {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            prefix: self.prefix.clone(),
            watch: None,
            expiry: HashMap::new(),
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
    pub fn lease_key(&self, subnet: Ipv4Network) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// Grant an etcd lease for `ttl` (none for a zero TTL: a reservation). Returns (put options, id).
    async fn grant(&mut self, ttl: Duration) -> Result<(Option<PutOptions>, i64)> {
        if ttl.is_zero() {
            return Ok((None, 0));
        }
        let g = io(self.cfg.request_timeout, self.client.lease_grant(ttl_secs(ttl), None)).await?;
        self.expiry.insert(g.id(), SystemTime::now() + Duration::from_secs(g.ttl().max(0) as u64));
        Ok((Some(PutOptions::new().with_lease(g.id())), g.id()))
    }

    /// Give back a lease we granted but did not use (best effort: it expires anyway).
    async fn revoke(&mut self, id: i64) {
        if id != 0 {
            self.expiry.remove(&id);
            let _ = io(self.cfg.request_timeout, self.client.lease_revoke(id)).await;
        }
    }

    /// Learn the expiry of the given etcd leases we don't know yet (concurrently, 64 at a time).
    async fn learn_expiry(&mut self, ids: impl IntoIterator<Item = i64>) -> Result<()> {
        let mut missing: Vec<i64> =
            ids.into_iter().filter(|id| *id != 0 && !self.expiry.contains_key(id)).collect();
        missing.sort_unstable();
        missing.dedup();
        if self.expiry.len() + missing.len() > 10_000 {
            self.expiry.clear(); // stale ids of renewed leases pile up between lists; start over
        }
        let t = self.cfg.request_timeout;
        for chunk in missing.chunks(64) {
            let mut set = tokio::task::JoinSet::new();
            for &id in chunk {
                let mut lc = self.client.lease_client();
                set.spawn(async move { (id, io(t, lc.time_to_live(id, None)).await) });
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
            id => Some(self.expiry.get(&id).copied().unwrap_or_else(SystemTime::now)),
        };
        parse_lease(&key, kv.value(), expires)
    }

    async fn resync(&mut self) -> Result<(Vec<WatchEvent>, i64)> {
        self.watch = None;
        let (list, rev) = self.list().await?;
        Ok((vec![WatchEvent::Resync(list)], rev))
    }

    /// Turn one watch response into events; `None` if it carries none.
    async fn events(&mut self, resp: &WatchResponse) -> Result<Option<(Vec<WatchEvent>, i64)>> {
        let puts = resp.events().iter().filter(|e| e.event_type() == EventType::Put);
        self.learn_expiry(puts.filter_map(|e| e.kv().map(|kv| kv.lease())).collect::<Vec<_>>())
            .await?;
        let mut out = Vec::with_capacity(resp.events().len());
        let mut rev = 0;
        for ev in resp.events() {
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
        let r = io(self.cfg.request_timeout, self.client.get(self.config_key(), None)).await?;
        r.kvs().first().map(|kv| decode_config(kv.value())).transpose()
    }

    async fn put_config_if_absent(&mut self, cfg: &NetworkConfig) -> Result<NetworkConfig> {
        let key = self.config_key();
        let value = serde_json::to_vec(cfg).map_err(|e| StoreError::Other(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = io(self.cfg.request_timeout, self.client.txn(txn)).await?;
        if r.succeeded() {
            return Ok(cfg.clone());
        }
        for op in r.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return decode_config(kv.value());
                }
            }
        }
        Err(StoreError::Invalid("config exists but the transaction returned none".into()))
    }

    async fn list(&mut self) -> Result<(Vec<LeaseEntry>, i64)> {
        let opts = GetOptions::new().with_prefix();
        let mut r =
            io(self.cfg.request_timeout, self.client.get(self.subnets_prefix(), Some(opts)))
                .await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let kvs = r.take_kvs();
        let ids: HashSet<i64> = kvs.iter().map(|kv| kv.lease()).filter(|id| *id != 0).collect();
        // Forget leases no key uses, and expiries that have passed: a key still listed under a
        // lease we think expired is alive (etcd extends every lease when it restarts, e.g. after
        // an outage longer than the TTL), so ask etcd again instead of dropping the route.
        let now = SystemTime::now();
        self.expiry.retain(|id, exp| ids.contains(id) && *exp > now);
        self.learn_expiry(ids).await?;
        Ok((kvs.iter().map(|kv| self.entry(kv)).collect(), rev))
    }

    async fn create(
        &mut self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let key = self.lease_key(subnet);
        let value = serde_json::to_vec(attrs).map_err(|e| StoreError::Other(e.to_string()))?;
        let (opts, lease) = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, opts)]);
        match io(self.cfg.request_timeout, self.client.txn(txn)).await {
            Ok(r) if r.succeeded() => Ok(true),
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
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let key = self.lease_key(subnet);
        let value = serde_json::to_vec(attrs).map_err(|e| StoreError::Other(e.to_string()))?;
        for _ in 0..3 {
            let r = io(self.cfg.request_timeout, self.client.get(key.clone(), None)).await?;
            let Some(kv) = r.kvs().first() else { return Ok(false) };
            match serde_json::from_slice::<LeaseAttrs>(kv.value()) {
                Ok(cur) if cur.public_ip == attrs.public_ip => {
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
                .and_then([TxnOp::put(key.clone(), value.clone(), opts)]);
            match io(self.cfg.request_timeout, self.client.txn(txn)).await {
                Ok(r) if r.succeeded() => return Ok(true),
                Ok(_) => self.revoke(lease).await, // changed under us: look again
                Err(e) => {
                    self.revoke(lease).await;
                    return Err(e);
                }
            }
        }
        Err(StoreError::Other(format!("lease {key} keeps changing under renew")))
    }

    async fn delete(&mut self, subnet: Ipv4Network) -> Result<()> {
        io(self.cfg.request_timeout, self.client.delete(self.lease_key(subnet), None)).await?;
        Ok(())
    }

    async fn watch(&mut self, revision: i64) -> Result<(Vec<WatchEvent>, i64)> {
        let next = revision + 1;
        if self.watch.as_ref().is_none_or(|w| w.next != next) {
            self.watch = None;
            let mut opts = WatchOptions::new().with_prefix().with_prev_key();
            if revision > 0 {
                opts = opts.with_start_revision(next);
            }
            let stream =
                io(self.cfg.request_timeout, self.client.watch(self.subnets_prefix(), Some(opts)))
                    .await?;
            self.watch = Some(Watching { stream, next, pending: None });
        }
        loop {
            let w = self.watch.as_mut().expect("watch stream set above");
            if w.pending.is_none() {
                match w.stream.message().await {
                    Ok(Some(resp)) => w.pending = Some(resp),
                    // Stream ended or broke: re-list (reports Unavailable if etcd is gone).
                    Ok(None) | Err(_) => return self.resync().await,
                }
            }
            let resp = w.pending.clone().expect("pending set above");
            if resp.canceled() || resp.compact_revision() > 0 {
                return self.resync().await; // compacted past `revision`, or cancelled by etcd
            }
            let done = self.events(&resp).await?;
            let w = self.watch.as_mut().expect("watch stream kept");
            w.pending = None;
            if let Some((events, rev)) = done {
                w.next = rev + 1;
                return Ok((events, rev));
            }
        }
    }
}
