//! The on-disk allocation store: one directory per network, `<data_dir>/<network>/`, holding
//!
//! * `lock`: empty; writers hold an exclusive `flock` on it for the whole read-modify-write;
//! * `state.json`: every allocation of the network plus the round-robin cursor per subnet:
//!   `{"version":1,"last":{"10.244.1.0/24":"10.244.1.7"},"allocations":{"10.244.1.2":{"id":"c1","ifname":"eth0"}}}`
//! * `state.json.tmp`: transient; written, fsynced, then renamed over `state.json` (and the
//!   directory fsynced), so `state.json` is always either the old or the new state.
//!
//! A crash anywhere leaves a consistent file: an allocation is either recorded (and DEL/GC can
//! free it) or not made. Readers (`lookup`, `list`) need no lock, since rename is atomic.

use crate::pool::Pool;
use crate::state::{Owner, State};
use ferry_cni::error::IPAM;
use ferry_cni::CniError;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default data directory: on tmpfs, so allocations do not outlive a reboot.
pub const DEFAULT_DATA_DIR: &str = "/run/ferry/ipam";

/// One network's allocation store. Each instance owns its own lock-file descriptor, so separate
/// instances (threads or processes) exclude each other.
pub struct Store {
    dir: PathBuf,
    state_path: PathBuf,
    lock: File,
    lock_timeout: Duration,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("ferry-ipam: {what} {}: {e}", path.display()))
}

/// Unlocks on drop (the kernel also drops the lock if the process dies).
struct Locked<'a>(&'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

impl Store {
    /// Open (creating directories and the lock file) the store of `network` under `data_dir`.
    /// No lock is held until an operation runs.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        ferry_cni::config::validate_name(network)?;
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io_err("create state directory", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_err("open lock file", &lock_path, e))?;
        Ok(Store {
            state_path: dir.join("state.json"),
            dir,
            lock,
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

    fn lock(&self) -> Result<Locked<'_>, CniError> {
        let fd = self.lock.as_raw_fd();
        let deadline = Instant::now() + self.lock_timeout;
        let mut nap = Duration::from_micros(20);
        loop {
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Locked(&self.lock));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {}
                _ => return Err(io_err("lock", &self.dir.join("lock"), e)),
            }
            if Instant::now() >= deadline {
                return Err(CniError::try_again(format!(
                    "ferry-ipam: timed out after {:?} waiting for the lock on {}",
                    self.lock_timeout,
                    self.dir.join("lock").display()
                )));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    fn read(&self) -> Result<State, CniError> {
        match fs::read(&self.state_path) {
            Ok(bytes) => State::decode(&bytes).map_err(|why| {
                CniError::plugin(
                    IPAM,
                    format!(
                        "ferry-ipam: state file {} is corrupt: {why}",
                        self.state_path.display()
                    ),
                )
                .with_details(
                    "refusing to overwrite it; move it aside to reset this network's allocations",
                )
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_err("read", &self.state_path, e)),
        }
    }

    fn write(&self, st: &State) -> Result<(), CniError> {
        let tmp = self.dir.join("state.json.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&st.encode())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("write", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &self.state_path)
            .map_err(|e| io_err("rename into", &self.state_path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("sync directory", &self.dir, e))
    }

    /// Under the exclusive lock: read the state, run `f`, write the state back (atomically) if
    /// `f` succeeded and changed it. On error nothing is written.
    pub fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        let _guard = self.lock()?;
        let before = self.read()?;
        let mut st = before.clone();
        let out = f(&mut st)?;
        if st != before {
            self.write(&st)?;
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

    /// Free every address `owner` holds; `Ok(vec![])` when it holds none.
    pub fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        self.transact(|st| Ok(st.release(owner)))
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
