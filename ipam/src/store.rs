//! The on-disk allocation store: one directory per network, `<data_dir>/<network>/`, holding
//!
//! * `lock`: empty; writers hold an exclusive `flock` on it for the whole read-modify-write;
//! * `state.json`: every allocation of the network plus the round-robin cursor per subnet:
//!   `{"version":1,"last":{"10.244.1.0/24":"10.244.1.7"},"allocations":{"10.244.1.2":{"id":"c1","ifname":"eth0"}}}`
//!
//! Writes go through [`ferry_fs::write_atomic`]: a fresh temp file created exclusively (never a
//! fixed name, never through a planted symlink), fsynced, renamed over `state.json`, directory
//! fsynced, so `state.json` is always either the old or the new state. Reads go through
//! [`ferry_fs::read_optional`]: a regular file only (a FIFO or symlink planted as `state.json` is
//! an error, never a hang), size-capped.
//!
//! A crash anywhere leaves a consistent file: an allocation is either recorded (and DEL/GC can
//! free it) or not made. Readers (`lookup`, `list`) need no lock, since rename is atomic.

use crate::pool::Pool;
use crate::state::{Owner, State};
use ferry_cni::error::IPAM;
use ferry_cni::CniError;
use ferry_fs::Lock;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest `state.json` read: far above any real node's (a /16 of allocations is ~4 MiB).
const STATE_CAP: u64 = ferry_fs::DEFAULT_CAP;

/// One network's allocation store. Every transaction takes the `flock` on its own descriptor, so
/// separate instances (threads or processes) exclude each other.
pub struct Store {
    dir: PathBuf,
    state_path: PathBuf,
    lock_path: PathBuf,
    lock_timeout: Duration,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("ferry-ipam: {what} {}: {e}", path.display()))
}

impl Store {
    /// Open (creating directories) the store of `network` under `data_dir`. No lock is held
    /// until an operation runs.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        ferry_cni::config::validate_name(network)?;
        let dir = data_dir.join(network);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io_err("create state directory", &dir, e))?;
        Ok(Store {
            state_path: dir.join("state.json"),
            lock_path: dir.join("lock"),
            dir,
            lock_timeout: Duration::from_secs(10),
        })
    }

    /// The network's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long a writer waits for the lock before failing with code 11 (default 10 s).
    pub fn set_lock_timeout(&mut self, t: Duration) {
        self.lock_timeout = t;
    }

    fn lock(&self) -> Result<Lock, CniError> {
        Lock::acquire(&self.lock_path, self.lock_timeout).map_err(|e| match e.kind() {
            ErrorKind::TimedOut => CniError::try_again(format!(
                "ferry-ipam: timed out after {:?} waiting for the lock on {}",
                self.lock_timeout,
                self.lock_path.display()
            )),
            _ => io_err("lock", &self.lock_path, e),
        })
    }

    /// The state; a missing file is the empty state. A file that is not valid state, or not a
    /// regular file at all, is an error that names it and is never overwritten.
    fn read(&self) -> Result<State, CniError> {
        self.decode(self.read_bytes()?.as_deref())
    }

    fn corrupt(&self, why: String) -> CniError {
        CniError::plugin(
            IPAM,
            format!("ferry-ipam: state file {} is corrupt: {why}", self.state_path.display()),
        )
        .with_details("refusing to overwrite it; move it aside to reset this network's allocations")
    }

    /// The raw `state.json` (`None`: missing). Not a regular file, or too large: corrupt.
    fn read_bytes(&self) -> Result<Option<Vec<u8>>, CniError> {
        match ferry_fs::read_optional(&self.state_path, STATE_CAP) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::InvalidData => Err(self.corrupt(e.to_string())),
            Err(e) => Err(io_err("read", &self.state_path, e)),
        }
    }

    fn decode(&self, bytes: Option<&[u8]>) -> Result<State, CniError> {
        match bytes {
            Some(b) => State::decode(b).map_err(|why| self.corrupt(why)),
            None => Ok(State::default()),
        }
    }

    fn write(&self, encoded: &[u8]) -> Result<(), CniError> {
        ferry_fs::write_atomic(&self.state_path, encoded, 0o644)
            .map_err(|e| io_err("write", &self.state_path, e))
    }

    /// Under the exclusive lock: read the state, run `f`, write the state back (atomically) if
    /// `f` succeeded and changed it. On error nothing is written.
    pub fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        let _guard = self.lock()?;
        let before = self.read_bytes()?;
        let mut st = self.decode(before.as_deref())?;
        let out = f(&mut st)?;
        // Unchanged state encodes to the bytes read (or is the empty state of a missing file).
        let after = st.encode();
        let same = match &before {
            Some(b) => *b == after,
            None => st == State::default(),
        };
        if !same {
            self.write(&after)?;
        }
        Ok(out)
    }

    /// Allocate one address from each pool for `owner`, all or nothing, under one lock and one
    /// write. `requested[i]` (if any) asks for a specific address from `pools[i]`.
    /// Idempotent: an owner already holding an address of a pool's family in that pool gets it
    /// back (a same-family address outside the pool is replaced).
    pub fn allocate_all(
        &mut self,
        pools: &[&Pool],
        owner: &Owner,
        requested: &[Option<IpAddr>],
    ) -> Result<Vec<IpAddr>, CniError> {
        self.transact(|st| {
            pools
                .iter()
                .enumerate()
                .map(|(i, p)| st.allocate(p, owner, requested.get(i).copied().flatten()))
                .collect()
        })
    }

    /// Allocate an address from `pool` for `owner` (see [`Store::allocate_all`]).
    pub fn allocate(
        &mut self,
        pool: &Pool,
        owner: &Owner,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, CniError> {
        self.transact(|st| st.allocate(pool, owner, requested))
    }

    /// Free every address `owner` holds; `Ok(vec![])` when it holds none. A corrupt (but
    /// readable) `state.json` whose bytes never mention the owner's container id cannot hold an
    /// address of it: `Ok(vec![])`, and the file is left alone (so teardown of attachments it
    /// cannot concern still succeeds). Otherwise the corruption is the error.
    pub fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        let _guard = self.lock()?;
        let bytes = self.read_bytes()?;
        let mut st = match (self.decode(bytes.as_deref()), bytes.as_deref()) {
            (Ok(st), _) => st,
            (Err(_), Some(b)) if !mentions(b, &owner.container_id) => return Ok(vec![]),
            (Err(e), _) => return Err(e),
        };
        let ips = st.release(owner);
        if !ips.is_empty() {
            self.write(&st.encode())?;
        }
        Ok(ips)
    }

    /// Addresses `owner` holds (lock-free read).
    pub fn lookup(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        Ok(self.read()?.held_by(owner))
    }

    /// Free every allocation whose owner is not in `keep`; returns what was freed.
    pub fn gc(&mut self, keep: &[Owner]) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        self.transact(|st| Ok(st.retain(keep)))
    }

    /// Every allocation (lock-free read), sorted by address.
    pub fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        Ok(self.read()?.allocations.into_iter().collect())
    }

    /// Allocatable addresses of `pool` not held by anyone (lock-free read).
    pub fn available(&mut self, pool: &Pool) -> Result<u128, CniError> {
        Ok(pool.size() - self.read()?.used_in(pool).min(pool.size()))
    }
}

/// Whether `needle` occurs anywhere in `hay` (a container id in raw state bytes).
fn mentions(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && hay.windows(n.len()).any(|w| w == n)
}
