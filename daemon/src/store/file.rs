//! The embedded file store: a directory shared by the nodes that use it.
//!
//! ```text
//! <dir>/config          flannel's network config JSON
//! <dir>/lock            flock(2) target; held for every read-modify-write
//! <dir>/10.244.1.0-24   one lease: flannel's lease JSON plus "ExpiresUnixMs" (absent = permanent)
//! ```
//! Every write is a temp file (a dotfile, ignored by readers) + rename, so readers never see half
//! a lease. A hand-written flannel lease (`{"PublicIP":"198.18.0.12","BackendType":"host-gw"}`)
//! is a permanent lease. Expired leases read as absent; whoever holds the lock deletes them.
//! Changes are watched with inotify, so they propagate in well under a millisecond.

use super::{
    conflict, parse_lease, parse_lease_key, parse_subnet_key, BadLease, LeaseAttrs, LeaseEntry,
    LeaseStore, NetworkConfig, Result, StoreError, Subnets, WatchEvent,
};
use ferry_fs::Lock;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Field added to flannel's lease JSON: expiry in milliseconds since the Unix epoch.
pub const EXPIRES_FIELD: &str = "ExpiresUnixMs";

/// How long a store operation waits for another holder of the lock before reporting Unavailable.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest lease or config file read; anything bigger is not one of ours.
const ENTRY_CAP: u64 = 1 << 20;

struct Ino(Inotify);

impl AsRawFd for Ino {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct FileStore {
    dir: PathBuf,
    /// Set up by the first `list` of a watching store, so no change after that listing is missed.
    inotify: Option<AsyncFd<Ino>>,
    watching: bool,
    /// Lease keys seen by this watcher and when they expire (for synthetic `Removed` events).
    known: HashMap<String, Option<SystemTime>>,
    rev: i64,
    /// `list` deletes the expired lease files it finds (the daemons do; a reader does not).
    tidy: bool,
}

impl FileStore {
    /// A store handle for claims and renewals (no inotify). Does no I/O.
    pub fn open(dir: impl Into<PathBuf>) -> FileStore {
        let (known, rev) = (HashMap::new(), 0);
        FileStore { dir: dir.into(), inotify: None, watching: false, known, rev, tidy: true }
    }

    /// A handle that only reads: `list` leaves expired lease files in place (ferryctl).
    pub fn open_read_only(dir: impl Into<PathBuf>) -> FileStore {
        FileStore { tidy: false, ..FileStore::open(dir) }
    }

    /// A store handle whose `list` + `watch` follow changes.
    pub fn open_watching(dir: impl Into<PathBuf>) -> FileStore {
        FileStore { watching: true, ..FileStore::open(dir) }
    }

    fn check_dir(&self) -> Result<()> {
        match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => {
                Err(StoreError::Unavailable(format!("{} is not a directory", self.dir.display())))
            }
            Err(e) => {
                Err(StoreError::Unavailable(format!("store directory {}: {e}", self.dir.display())))
            }
        }
    }

    /// Take the directory lock, waiting up to [`LOCK_TIMEOUT`]. Free (the usual case): taken at
    /// once. Held by another node: the bounded wait runs on tokio's blocking pool, so the event
    /// loop keeps running meanwhile.
    async fn lock(&self) -> Result<Lock> {
        if let Some(l) = self.try_lock()? {
            return Ok(l);
        }
        let path = self.lock_path();
        let waited = tokio::task::spawn_blocking(move || Lock::acquire(&path, LOCK_TIMEOUT))
            .await
            .map_err(|e| StoreError::Other(format!("lock waiter: {e}")))?;
        waited.map_err(|e| self.lock_err(e))
    }

    /// The lock if it is free right now; it is released when dropped.
    fn try_lock(&self) -> Result<Option<Lock>> {
        self.check_dir()?;
        Lock::try_acquire(&self.lock_path()).map_err(|e| self.lock_err(e))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn lock_err(&self, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::TimedOut {
            StoreError::Unavailable(format!("{}/lock is held by someone else", self.dir.display()))
        } else {
            io_err("lock", &self.lock_path(), e)
        }
    }

    /// Read one lease file. `Ok(None)`: no such file. `Err`: the entry cannot be read as a file
    /// (a FIFO, symlink, device, directory, one larger than [`ENTRY_CAP`], an I/O error); it is
    /// never opened in a way that blocks or follows a link.
    fn read_entry(&self, name: &str) -> io::Result<Option<(LeaseEntry, Option<SystemTime>)>> {
        read_entry_in(&self.dir, name)
    }

    fn read_listed(&self, name: &str) -> Option<(LeaseEntry, Option<SystemTime>)> {
        read_listed_in(&self.dir, name)
    }

    fn write_lease(&self, subnet: Subnets, attrs: &LeaseAttrs, ttl: Duration) -> Result<()> {
        let bytes = lease_json(attrs, SystemTime::now() + ttl)?;
        write_atomic(&self.dir, &subnet.key(), &bytes)
    }

    /// The entries whose keys name one of `s`'s subnets: every lease [`conflict`] could find
    /// (a lease's subnets are its key's), without reading the others.
    fn entries_naming(&self, s: Subnets) -> Result<Vec<LeaseEntry>> {
        let names: Vec<String> = self
            .names()?
            .into_iter()
            .filter(|n| {
                parse_lease_key(n)
                    .is_some_and(|(v4, v6)| s.v4 == Some(v4) || (s.v6.is_some() && v6 == s.v6))
            })
            .collect();
        Ok(self.read_many(&names).into_iter().flatten().map(|(e, _)| e).collect())
    }

    /// The names of the directory's lease entries (dotfiles, `config` and `lock` left out).
    fn names(&self) -> Result<Vec<String>> {
        let rd = fs::read_dir(&self.dir).map_err(|e| io_err("read directory", &self.dir, e))?;
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| io_err("read directory", &self.dir, e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else { continue };
            if !ignored(&name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// [`FileStore::read_listed`] of every name, in order. A large listing is read by a few
    /// threads at once (each file is an open, a read and a parse; at 5,000 leases reading them
    /// one after another was most of a cold start).
    fn read_many(&self, names: &[String]) -> Vec<Option<(LeaseEntry, Option<SystemTime>)>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
        if names.len() < PARALLEL_FROM || threads < 2 {
            return names.iter().map(|n| self.read_listed(n)).collect();
        }
        let dir = &self.dir;
        let chunk = names.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let parts: Vec<_> = names
                .chunks(chunk)
                .map(|part| {
                    std::thread::Builder::new()
                        .name("lease-read".into())
                        .stack_size(256 * 1024)
                        .spawn_scoped(sc, move || {
                            part.iter().map(|n| read_listed_in(dir, n)).collect::<Vec<_>>()
                        })
                })
                .collect();
            let mut out = Vec::with_capacity(names.len());
            for (part, t) in names.chunks(chunk).zip(parts) {
                match t.ok().and_then(|h| h.join().ok()) {
                    Some(read) => out.extend(read),
                    // No thread (resources): this part on the calling thread.
                    None => out.extend(part.iter().map(|n| self.read_listed(n))),
                }
            }
            out
        })
    }

    fn ensure_inotify(&mut self) -> Result<()> {
        if self.inotify.is_some() || !self.watching {
            return Ok(());
        }
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| StoreError::Other(format!("inotify_init: {e}")))?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        ino.add_watch(&self.dir, mask).map_err(|e| {
            StoreError::Unavailable(format!("inotify watch {}: {e}", self.dir.display()))
        })?;
        // SAFETY: `Ino` owns the inotify fd; the AsyncFd owns `Ino`, so the fd outlives the
        // registration and is closed only when the AsyncFd is dropped.
        let afd = unsafe { AsyncFd::register_with_interest(Ino(ino), Interest::READABLE) };
        self.inotify = Some(afd.map_err(|e| StoreError::Other(format!("register inotify: {e}")))?);
        Ok(())
    }

    /// Wait for inotify events, at most until the next known lease expires (`None` then).
    async fn next_inotify_batch(&mut self) -> Result<Option<Changed>> {
        let sleep_for = self
            .next_expiry()
            .map(|t| {
                t.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(1)
            })
            .unwrap_or(Duration::from_secs(3600));
        let afd = self.inotify.as_ref().expect("inotify set up");
        let read = tokio::time::timeout(
            sleep_for,
            afd.async_io(Interest::READABLE, |i| i.0.read_events().map_err(io::Error::from)),
        )
        .await;
        match read {
            Err(_elapsed) => Ok(None),
            Ok(Err(e)) => {
                self.inotify = None;
                Err(StoreError::Other(format!("inotify read: {e}")))
            }
            Ok(Ok(events)) => self.changed(events).map(Some),
        }
    }

    /// The lease names a batch of inotify events touched (each once, in order).
    fn changed(&mut self, events: Vec<InotifyEvent>) -> Result<Changed> {
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for ev in events {
            if ev.mask.intersects(AddWatchFlags::IN_Q_OVERFLOW) {
                return Ok(Changed::Overflow);
            }
            if ev.mask.intersects(
                AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_IGNORED,
            ) {
                self.inotify = None;
                return Err(StoreError::Unavailable(format!(
                    "store directory {} was removed",
                    self.dir.display()
                )));
            }
            let Some(name) = ev.name.and_then(|n| n.to_str().map(str::to_string)) else {
                continue;
            };
            if !ignored(&name) && seen.insert(name.clone()) {
                names.push(name);
            }
        }
        Ok(Changed::Names(names))
    }

    /// Delete the given expired lease files if the lock is free now (someone else cleans up otherwise).
    fn cleanup_expired(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let Ok(Some(_lock)) = self.try_lock() else { return };
        for name in names {
            if let Ok(Some((_, Some(exp)))) = self.read_entry(name) {
                if exp <= SystemTime::now() {
                    let _ = fs::remove_file(self.dir.join(name));
                }
            }
        }
    }

    /// Re-read the files named by inotify and turn them into watch events.
    fn events_for(&mut self, names: Vec<String>) -> Result<Vec<WatchEvent>> {
        let mut out = Vec::new();
        let now = SystemTime::now();
        for name in names {
            match self.read_listed(&name) {
                Some((entry, exp)) if exp.is_none_or(|t| t > now) => {
                    self.known.insert(name, exp);
                    out.push(WatchEvent::Put(entry));
                }
                _ => {
                    if self.known.remove(&name).is_some() {
                        out.push(WatchEvent::Removed {
                            subnet: parse_subnet_key(&name),
                            key: name,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Synthetic removals for leases whose expiry passed.
    fn expire_known(&mut self) -> Vec<WatchEvent> {
        let now = SystemTime::now();
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|(_, e)| e.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        self.cleanup_expired(&gone);
        gone.into_iter()
            .map(|k| {
                self.known.remove(&k);
                WatchEvent::Removed { subnet: parse_subnet_key(&k), key: k }
            })
            .collect()
    }

    fn next_expiry(&self) -> Option<SystemTime> {
        self.known.values().flatten().min().copied()
    }
}

/// Listings at least this long are read by several threads ([`FileStore::read_many`]).
const PARALLEL_FROM: usize = 512;

fn read_entry_in(dir: &Path, name: &str) -> io::Result<Option<(LeaseEntry, Option<SystemTime>)>> {
    let bytes = ferry_fs::read_optional(&dir.join(name), ENTRY_CAP)?;
    Ok(bytes.map(|b| parse_file(name, &b)))
}

/// [`read_entry_in`] for a listing or watch: an unreadable entry (a FIFO, symlink, directory,
/// device, socket, oversized file) is a bad entry, never opened in a way that blocks and never
/// stopping the other entries from being read; it still blocks the subnet its name might claim.
fn read_listed_in(dir: &Path, name: &str) -> Option<(LeaseEntry, Option<SystemTime>)> {
    read_entry_in(dir, name).unwrap_or_else(|e| {
        let reason = format!("unreadable: {e}");
        Some((Err(BadLease { key: name.to_string(), reason }), None))
    })
}

/// What one batch of inotify events means.
enum Changed {
    /// These entries changed (created, rewritten, renamed, deleted).
    Names(Vec<String>),
    /// The kernel dropped events: only a full listing is safe.
    Overflow,
}

/// File names in the store directory that are not leases.
fn ignored(name: &str) -> bool {
    name.starts_with('.') || name == "config" || name == "lock" || name.ends_with(".tmp")
}

/// Parse one lease file: flannel lease JSON, optionally with [`EXPIRES_FIELD`].
pub fn parse_file(name: &str, bytes: &[u8]) -> (LeaseEntry, Option<SystemTime>) {
    let bad = |reason: String| (Err(BadLease { key: name.to_string(), reason }), None);
    let expires = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => match v.get(EXPIRES_FIELD) {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => match x.as_u64() {
                Some(ms) => Some(UNIX_EPOCH + Duration::from_millis(ms)),
                None => return bad(format!("{EXPIRES_FIELD} is not a number of milliseconds")),
            },
        },
        Err(e) => return bad(format!("value is not lease JSON: {e}")),
    };
    (parse_lease(name, bytes, expires), expires)
}

/// A lease file's content: flannel's lease JSON plus [`EXPIRES_FIELD`] (read by [`parse_file`]).
pub fn lease_json(attrs: &LeaseAttrs, expires: SystemTime) -> Result<Vec<u8>> {
    let mut v = serde_json::to_value(attrs).map_err(|e| StoreError::Other(e.to_string()))?;
    let ms = expires.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    v[EXPIRES_FIELD] = serde_json::json!(ms);
    Ok(v.to_string().into_bytes())
}

/// Write `dir/name` atomically (ferry-fs: exclusive dotfile temp, fsync, rename).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    ferry_fs::write_atomic(&path, bytes, 0o644).map_err(|e| io_err("write", &path, e))
}

fn io_err(op: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Other(format!("{op} {}: {e}", path.display()))
}

impl LeaseStore for FileStore {
    async fn get_config(&mut self) -> Result<Option<NetworkConfig>> {
        self.check_dir()?;
        let path = self.dir.join("config");
        match ferry_fs::read_optional(&path, ENTRY_CAP) {
            Ok(Some(b)) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display()))),
            Ok(None) => Ok(None),
            // A FIFO, symlink, device or oversized file where the config belongs.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(StoreError::Invalid(e.to_string()))
            }
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    async fn put_config_if_absent(&mut self, cfg: &NetworkConfig) -> Result<NetworkConfig> {
        let _lock = self.lock().await?;
        if let Some(c) = self.get_config().await? {
            return Ok(c);
        }
        let json = serde_json::to_vec(cfg).map_err(|e| StoreError::Other(e.to_string()))?;
        write_atomic(&self.dir, "config", &json)?;
        Ok(cfg.clone())
    }

    async fn list(&mut self) -> Result<(Vec<LeaseEntry>, i64)> {
        self.check_dir()?;
        self.ensure_inotify()?;
        let names = self.names()?;
        let read = self.read_many(&names);
        let now = SystemTime::now();
        let (mut out, mut expired) = (Vec::new(), Vec::new());
        self.known.clear();
        for (name, r) in names.into_iter().zip(read) {
            match r {
                Some((_, Some(exp))) if exp <= now => expired.push(name),
                Some((entry, exp)) => {
                    if self.watching {
                        self.known.insert(name, exp);
                    }
                    out.push(entry);
                }
                None => {}
            }
        }
        if self.tidy {
            self.cleanup_expired(&expired);
        }
        self.rev += 1;
        Ok((out, self.rev))
    }

    async fn create(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let subnet: Subnets = subnet.into();
        let _lock = self.lock().await?;
        let key = subnet.key();
        match self.read_entry(&key) {
            Ok(Some((_, Some(exp)))) if exp <= SystemTime::now() => {} // expired: free
            Ok(Some(_)) => return Ok(false),
            Ok(None) => {}
            Err(e) => {
                // Something that is not a lease file holds the key: the subnet is not free.
                warn!("file store: {} is taken by an unreadable entry: {e}", key);
                return Ok(false);
            }
        }
        // Under the lock, so two nodes picking one subnet under different keys (dual-stack)
        // cannot both get it.
        let entries = self.entries_naming(subnet)?;
        if let Some(l) = conflict(&entries, subnet, attrs, SystemTime::now()) {
            debug!("file store: {key} not created: {} holds one of its subnets", l.key);
            return Ok(false);
        }
        self.write_lease(subnet, attrs, ttl)?;
        Ok(true)
    }

    async fn renew(
        &mut self,
        subnet: impl Into<Subnets>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool> {
        let subnet: Subnets = subnet.into();
        let _lock = self.lock().await?;
        match self.read_entry(&subnet.key()) {
            Ok(Some((Ok(l), _))) if l.attrs.same_node(attrs) => {
                self.write_lease(subnet, attrs, ttl)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&mut self, subnet: impl Into<Subnets>) -> Result<()> {
        let subnet: Subnets = subnet.into();
        let _lock = self.lock().await?;
        let path = self.dir.join(subnet.key());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path, e)),
        }
    }

    async fn watch(&mut self, revision: i64) -> Result<(Vec<WatchEvent>, i64)> {
        let _ = revision;
        if self.inotify.is_none() {
            // Not listed yet (or the directory went away): start over with a full listing.
            let (all, rev) = self.list().await?;
            return Ok((vec![WatchEvent::Resync(all)], rev));
        }
        loop {
            let out = match self.next_inotify_batch().await? {
                // The next expiry came first.
                None => self.expire_known(),
                Some(Changed::Names(names)) => {
                    let mut out = self.events_for(names)?;
                    out.extend(self.expire_known());
                    out
                }
                Some(Changed::Overflow) => {
                    let (all, rev) = self.list().await?;
                    return Ok((vec![WatchEvent::Resync(all)], rev));
                }
            };
            if !out.is_empty() {
                self.rev += 1;
                return Ok((out, self.rev));
            }
        }
    }
}

#[cfg(test)]
mod tests;
