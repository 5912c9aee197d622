//! Network namespace switching for the *current thread*, with a guard that switches back.
//! Use only on a thread that runs nothing else meanwhile (plugins are single-threaded).

use std::fs::File;
use std::io;

/// Switches the calling thread back to its original namespace on drop.
pub struct NetnsGuard {
    _orig: File,
}

/// Enter `ns` on this thread; the returned guard restores the original namespace when dropped.
pub fn enter(ns: &File) -> io::Result<NetnsGuard> {
    let _ = ns;
    todo!()
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
    let _ = ns;
    todo!()
}
