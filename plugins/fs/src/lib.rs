//! Ferry's file primitives, one of each, used by every binary:
//!
//! * [`read_capped`]: read a file that anyone may have planted: regular files only, never
//!   through a symlink, never blocking (FIFOs, devices), never more than a size cap.
//! * [`write_atomic`]: replace a file atomically: a temp file created exclusively
//!   (`O_CREAT | O_EXCL | O_NOFOLLOW`, unpredictable name, restrictive mode) in the same
//!   directory, written, fsynced, renamed over the target, and the directory fsynced.
//! * [`Lock`]: an exclusive `flock` on a lock file, with a bounded wait.
//! * [`paths`]: the default paths, in one place.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default paths. Every binary takes each of these as a flag or config key too.
pub mod paths {
    /// Ferry's run directory (tmpfs: gone at reboot).
    pub const RUN_DIR: &str = "/run/ferry";
    /// The node's subnet file, flannel's `subnet.env` format.
    pub const SUBNET_FILE: &str = "/run/ferry/subnet.env";
    /// IPAM allocation state (`<dir>/<network>/state.json`), on tmpfs.
    pub const IPAM_DATA_DIR: &str = "/run/ferry/ipam";
    /// The CNI config directory runtimes read.
    pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
    /// The CNI plugin directory.
    pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
    /// The embedded (file) lease store.
    pub const LEASE_STORE_DIR: &str = "/var/lib/ferry/leases";
}

/// Largest file [`read_capped`] is asked to read by default callers (state files, leases,
/// configs): 16 MiB.
pub const DEFAULT_CAP: u64 = 16 << 20;

fn invalid(path: &Path, why: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}

/// Open `path` for reading without following a symlink in its last component and without
/// blocking on a FIFO or device, and check that it is a regular file.
///
/// Errors: `NotFound` if it does not exist; `InvalidData` ("is a symbolic link", "is not a
/// regular file") for anything that is not a plain file; other I/O errors as they come.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_meta(path).map(|(f, _)| f)
}

/// [`open_regular`], also returning the file's metadata (from the one `fstat` it makes).
fn open_regular_meta(path: &Path) -> io::Result<(File, std::fs::Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => invalid(path, "is a symbolic link"),
            // open(2) of a unix socket (or of a device without a driver) fails with ENXIO.
            Some(libc::ENXIO) => invalid(path, "is a socket or a device"),
            _ => e,
        })?;
    let meta = f.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "is a directory"
        } else if ft.is_fifo() {
            "is a FIFO"
        } else if ft.is_socket() {
            "is a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "is a device"
        } else {
            "is not a regular file"
        };
        return Err(invalid(path, kind));
    }
    Ok((f, meta))
}

/// Read a regular file of at most `cap` bytes (see [`open_regular`]). A larger file is an
/// `InvalidData` error, detected without reading more than `cap + 1` bytes.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let (f, meta) = open_regular_meta(path)?;
    let len = meta.len();
    if len > cap {
        return Err(invalid(path, &format!("is {len} bytes, more than the {cap} allowed")));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(invalid(path, &format!("grew past the {cap} bytes allowed")));
    }
    Ok(buf)
}

/// [`read_capped`], as UTF-8 text.
pub fn read_to_string_capped(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?).map_err(|_| invalid(path, "is not UTF-8 text"))
}

/// [`read_capped`] that maps a missing file to `None`.
pub fn read_optional(path: &Path, cap: u64) -> io::Result<Option<Vec<u8>>> {
    match read_capped(path, cap) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A name no one can predict: pid, a per-process counter and clock bits.
fn temp_name(target: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = std::process::id();
    let mix = nanos ^ (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ ((pid as u64) << 40);
    let mut name = OsString::from(".");
    name.push(target.file_name().unwrap_or_default());
    name.push(format!(".{pid}.{mix:016x}.tmp"));
    parent_of(target).join(PathBuf::from(OsString::from_vec(name.into_vec())))
}

/// Create a new file exclusively (never opening an existing file or following a symlink) with
/// `mode`, under a fresh temp name next to `target`. Returns the file and its path.
fn create_temp(target: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    for _ in 0..16 {
        let tmp = temp_name(target);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(ErrorKind::AlreadyExists, "could not create a unique temp file"))
}

/// Replace `path` with `bytes`, atomically and durably: readers see the old or the new content,
/// never a mix, and after a crash the file holds one of the two. The temp file is a dotfile
/// ending in `.tmp` (which CNI runtimes ignore), created exclusively with `mode`; a planted
/// symlink or file at any name is never written through. The directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (mut f, tmp) = create_temp(path, mode)?;
    let res = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(parent_of(path))?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Write `path` atomically unless it already holds exactly `bytes`. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    if matches!(read_capped(path, bytes.len() as u64), Ok(old) if old == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes, mode).map(|_| true)
}

/// An exclusive `flock` on a lock file, held until dropped (or the process dies).
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// Open (creating it, mode 0600) the lock file read-only: a read-only descriptor raises no
    /// inotify `IN_CLOSE_WRITE` when closed, so taking the lock wakes no watcher. A symlink, FIFO
    /// or any other non-regular file at `path` is refused.
    fn open(path: &Path) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(
                libc::O_CREAT
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_CLOEXEC
                    | libc::O_NOCTTY,
            )
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => invalid(path, "is a symbolic link"),
                _ => e,
            })?;
        if !f.metadata()?.file_type().is_file() {
            return Err(invalid(path, "is not a regular file"));
        }
        Ok(f)
    }

    fn try_flock(file: &File) -> io::Result<bool> {
        loop {
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// The lock if it is free right now.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        let file = Lock::open(path)?;
        Ok(Lock::try_flock(&file)?.then_some(Lock { file }))
    }

    /// The lock, waiting (sleeping with back-off from 20 µs up to 1 ms) at most `timeout`;
    /// then an error of kind `TimedOut`.
    pub fn acquire(path: &Path, timeout: Duration) -> io::Result<Lock> {
        let file = Lock::open(path)?;
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(20);
        loop {
            if Lock::try_flock(&file)? {
                return Ok(Lock { file });
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "{}: lock still held by another process after {timeout:?}",
                        path.display()
                    ),
                ));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests;
