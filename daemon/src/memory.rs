//! Handing memory back once start-up is over.
//!
//! Start-up (flag parsing, the store client's connection set-up, the lease claim, the first
//! listing and the bulk route programming) runs code a steady daemon never runs again, and the
//! kernel maps a binary's pages in 64 KiB groups (fault-around), so after start-up nearly the
//! whole ferryd binary is resident: 3.5 MB of a 5,000-peer daemon's 5.3 MB. [`release_code`]
//! asks the kernel to reclaim the binary's never-written pages (`MADV_PAGEOUT`, Linux 5.4+):
//! they leave the page cache unless another process maps them, and whatever the steady loop
//! runs is faulted back on its first use (from the page cache, or the binary on disk). The
//! event loop calls it once it has been quiet for half a second after the start-up programming
//! (the claim, the watch's set-up and the node files come after that programming).

use std::io::Read;

/// `madvise(MADV_PAGEOUT)` every mapping of this process's own executable that was never
/// written (read-only or executable, no anonymous copy-on-write page: the data segment and
/// the relocated read-only part are left alone). Returns the KiB advised; best effort.
pub fn release_code() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
    let mut text = String::new();
    let read =
        std::fs::File::open("/proc/self/smaps").and_then(|mut f| f.read_to_string(&mut text));
    if read.is_err() {
        return 0;
    }
    let mut advised = 0;
    for (start, end, writable, anon) in exe_mappings(&text, &exe.to_string_lossy()) {
        if writable || anon > 0 {
            continue;
        }
        // SAFETY: the range is a whole mapping of this process's own executable that is not
        // writable and has no private copy of any page: dropping its pages loses nothing, and
        // the kernel faults them back from the file on the next access.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_PAGEOUT) };
        if r == 0 {
            advised += (end - start) / 1024;
        }
    }
    advised
}

const MADV_PAGEOUT: libc::c_int = 21;

/// (start, end, writable, anonymous KiB) of each mapping of `exe` in a `/proc/PID/smaps` text.
fn exe_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize, bool, u64)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, usize, bool)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-').filter(|(a, _)| !a.ends_with(':')) {
            let (perms, path) = (f.next().unwrap_or(""), f.nth(3).unwrap_or(""));
            cur = match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                (Ok(a), Ok(b)) if path == exe => Some((a, b, perms.contains('w'))),
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let Some((a, b, w)) = cur.take() {
                out.push((a, b, w, f.next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_mappings_are_read() {
        let smaps = "\
00400000-00401000 r--p 00000000 fd:01 42 /usr/bin/ferryd
Size:                  4 kB
Anonymous:             0 kB
00401000-00800000 r-xp 00001000 fd:01 42 /usr/bin/ferryd
Anonymous:             0 kB
00a00000-00a10000 rw-p 00600000 fd:01 42 /usr/bin/ferryd
Anonymous:            12 kB
01000000-01100000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1024 kB
7f0000000000-7f0000001000 r-xp 00000000 fd:01 43 /usr/lib/other.so
Anonymous:             0 kB
";
        let m = exe_mappings(smaps, "/usr/bin/ferryd");
        assert_eq!(
            m,
            [
                (0x400000, 0x401000, false, 0),
                (0x401000, 0x800000, false, 0),
                (0xa00000, 0xa10000, true, 12)
            ]
        );
    }

    #[test]
    fn this_process_code_is_found_and_released_and_still_runs() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let maps = exe_mappings(&smaps, &exe.to_string_lossy());
        assert!(maps.iter().any(|&(_, _, w, anon)| !w && anon == 0), "{maps:?}");
        assert!(maps.iter().any(|&(_, _, w, _)| w), "the data segment is found, and skipped");
        let kib = release_code();
        assert!(kib > 0, "nothing advised");
        // The code just released runs again (faulted back in from the file).
        assert_eq!(exe_mappings(&smaps, &exe.to_string_lossy()), maps);
    }
}
