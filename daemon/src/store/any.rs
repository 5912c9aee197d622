//! The store the command line picked, as one type (async trait methods rule out `dyn`).

use super::etcd::{EtcdConfig, EtcdStore};
use super::file::FileStore;
use super::{
    parse_subnet_key, BadLease, LeaseAttrs, LeaseEntry, LeaseStore, NetworkConfig, Result, Subnets,
    WatchEvent, NON_CANONICAL,
};
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which store, and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub url: StoreUrl,
    pub etcd: EtcdOpts,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    File(PathBuf),
    Etcd(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdOpts {
    pub prefix: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    /// Abandon an unresponsive etcd member (or a silent watch stream) after this long.
    pub failover_timeout: Duration,
    /// Keys per answer when listing.
    pub page_size: usize,
}

pub enum AnyStore {
    File(FileStore),
    Etcd(Box<EtcdStore>),
}

impl AnyStore {
    /// Two handles: one for claims/renewals, one that lists and watches (so a watch in progress
    /// never delays a renewal).
    pub async fn open_pair(s: &StoreSettings, m: &Arc<Metrics>) -> Result<(AnyStore, AnyStore)> {
        Ok(match &s.url {
            StoreUrl::File(dir) => (
                AnyStore::File(FileStore::open(dir)),
                AnyStore::File(FileStore::open_watching(dir)),
            ),
            StoreUrl::Etcd(endpoints) => {
                // ferryd looks up no lease's expiry: a listed key is live (etcd deletes it when
                // its lease runs out), and its own lease's expiry is what it granted itself.
                let s = EtcdStore::connect_with_metrics(etcd_config(endpoints, &s.etcd), m.clone())
                    .await?
                    .without_expiries();
                let w = s.handle();
                (AnyStore::Etcd(Box::new(s)), AnyStore::Etcd(Box::new(w)))
            }
        })
    }

    /// One handle for a reader (ferryctl): it lists and reads the config, and on the file store
    /// leaves expired leases for the daemons to tidy.
    pub async fn open_reader(s: &StoreSettings) -> Result<AnyStore> {
        Ok(match &s.url {
            StoreUrl::File(dir) => AnyStore::File(FileStore::open_read_only(dir)),
            StoreUrl::Etcd(endpoints) => {
                let cfg = etcd_config(endpoints, &s.etcd);
                AnyStore::Etcd(Box::new(EtcdStore::connect(cfg).await?))
            }
        })
    }

    pub fn describe(s: &StoreSettings) -> String {
        match &s.url {
            StoreUrl::File(d) => format!("file store {}", d.display()),
            StoreUrl::Etcd(e) => format!("etcd {} (prefix {})", e.join(","), s.etcd.prefix),
        }
    }
}

fn etcd_config(endpoints: &[String], etcd: &EtcdOpts) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.to_vec(),
        prefix: etcd.prefix.clone(),
        dial_timeout: etcd.dial_timeout,
        request_timeout: etcd.request_timeout,
        failover_timeout: etcd.failover_timeout,
        ca_file: etcd.ca.clone(),
        cert_file: etcd.cert.clone(),
        key_file: etcd.key.clone(),
        page_size: etcd.page_size,
    }
}

/// Keys as the daemon sees them: relative to the store's subnets prefix (etcd gives full keys,
/// `<prefix>/subnets/10.244.1.0-24`; the file store gives file names). A key with a further
/// path level under the prefix (`<prefix>/subnets/x/10.244.1.0-24`) is not a lease key: it is a
/// bad entry under its own relative key, never merged with the lease its last part spells.
impl AnyStore {
    fn relative<'k>(&self, key: &'k str) -> &'k str {
        match self {
            AnyStore::File(_) => key,
            AnyStore::Etcd(s) => key.strip_prefix(&s.subnets_prefix()).unwrap_or(key),
        }
    }

    fn relative_entry(&self, e: LeaseEntry) -> LeaseEntry {
        match e {
            Ok(mut l) => {
                let rel = self.relative(&l.key).to_string();
                if rel.contains('/') {
                    let reason = format!("{NON_CANONICAL}: not directly under the subnets prefix");
                    return Err(BadLease { key: rel, reason });
                }
                l.key = rel;
                Ok(l)
            }
            Err(mut b) => {
                b.key = self.relative(&b.key).to_string();
                Err(b)
            }
        }
    }

    fn relative_event(&self, ev: WatchEvent) -> WatchEvent {
        match ev {
            WatchEvent::Put(e) => WatchEvent::Put(self.relative_entry(e)),
            WatchEvent::Removed { key, .. } => {
                let key = self.relative(&key).to_string();
                let subnet = (!key.contains('/')).then(|| parse_subnet_key(&key)).flatten();
                WatchEvent::Removed { key, subnet }
            }
            WatchEvent::Resync(all) => {
                WatchEvent::Resync(all.into_iter().map(|e| self.relative_entry(e)).collect())
            }
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::File($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl LeaseStore for AnyStore {
    async fn get_config(&mut self) -> Result<Option<NetworkConfig>> {
        each!(self, s => s.get_config().await)
    }
    async fn put_config_if_absent(&mut self, cfg: &NetworkConfig) -> Result<NetworkConfig> {
        each!(self, s => s.put_config_if_absent(cfg).await)
    }
    async fn list(&mut self) -> Result<(Vec<LeaseEntry>, i64)> {
        let (entries, rev) = each!(self, s => s.list().await)?;
        Ok((entries.into_iter().map(|e| self.relative_entry(e)).collect(), rev))
    }
    async fn create(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let subnet: Subnets = subnet.into();
        each!(self, s => s.create(subnet, attrs, ttl).await)
    }
    async fn renew(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let subnet: Subnets = subnet.into();
        each!(self, s => s.renew(subnet, attrs, ttl).await)
    }
    async fn delete(&mut self, subnet: impl Into<Subnets>) -> Result<()> {
        let subnet: Subnets = subnet.into();
        each!(self, s => s.delete(subnet).await)
    }
    async fn watch(&mut self, revision: i64) -> Result<(Vec<WatchEvent>, i64)> {
        let (events, rev) = each!(self, s => s.watch(revision).await)?;
        Ok((events.into_iter().map(|e| self.relative_event(e)).collect(), rev))
    }
}
