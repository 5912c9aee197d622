//! Network namespace switching for the *current thread*, with a guard that switches back.
//! Use only on a thread that runs nothing else meanwhile (plugins are single-threaded).

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

/// The calling thread's own network namespace (not the process's: setns is per thread).
pub const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Switches the calling thread back to its original namespace on drop.
pub struct NetnsGuard {
    _orig: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self._orig, CloneFlags::CLONE_NEWNET) {
            // Carrying on in the wrong namespace would put links and routes in the wrong place.
            eprintln!("ferry-netlink: cannot switch back to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Enter `ns` on this thread; the returned guard restores the original namespace when dropped.
pub fn enter(ns: &File) -> io::Result<NetnsGuard> {
    let orig = File::open(THREAD_NETNS)?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    Ok(NetnsGuard { _orig: orig })
}

/// Run `f` with this thread inside `ns`, switching back afterwards (also when `f` fails).
pub fn with_netns<T>(ns: &File, f: impl FnOnce() -> T) -> io::Result<T> {
    let g = enter(ns)?;
    let out = f();
    drop(g);
    Ok(out)
}

/// True if `ns` is the namespace the calling thread is in now (same nsfs inode and device).
pub fn is_current(ns: &File) -> io::Result<bool> {
    let a = ns.metadata()?;
    let b = std::fs::metadata(THREAD_NETNS)?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}
