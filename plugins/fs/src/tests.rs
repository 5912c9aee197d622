use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-fs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn read_capped_reads_regular_files_and_refuses_everything_else() {
    let d = tmpdir("read");
    let f = d.join("f");
    std::fs::write(&f, b"hello").unwrap();
    assert_eq!(read_capped(&f, 5).unwrap(), b"hello");
    assert_eq!(read_capped(&f, 4).unwrap_err().kind(), ErrorKind::InvalidData);
    assert_eq!(read_capped(&d.join("missing"), 9).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(read_optional(&d.join("missing"), 9).unwrap(), None);

    symlink(&f, d.join("link")).unwrap();
    symlink(d.join("self"), d.join("self")).unwrap();
    symlink("/dev/zero", d.join("zero")).unwrap();
    symlink(&d, d.join("dirlink")).unwrap();
    mkfifo(&d.join("fifo"));
    std::fs::create_dir(d.join("dir")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    for name in ["link", "self", "zero", "dirlink", "fifo", "dir", "sock"] {
        let e = read_capped(&d.join(name), DEFAULT_CAP).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{name}: {e}");
    }
    assert_eq!(read_capped(Path::new("/dev/zero"), 10).unwrap_err().kind(), ErrorKind::InvalidData);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn write_atomic_replaces_and_never_writes_through_planted_links() {
    let d = tmpdir("write");
    let victim = d.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let target = d.join("state.json");
    // Plant symlinks at every name an older writer would have used.
    symlink(&victim, d.join("state.json.tmp")).unwrap();
    symlink(&victim, d.join(format!(".state.json.{}.tmp", std::process::id()))).unwrap();
    write_atomic(&target, b"one", 0o600).unwrap();
    write_atomic(&target, b"two", 0o600).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"two");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    let meta = std::fs::symlink_metadata(&target).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temp files left behind.
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            n.ends_with(".tmp")
                && !n.starts_with("state.json.tmp")
                && !n.contains(&format!(".{}.tmp", std::process::id()))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!write_if_changed(&target, b"two", 0o600).unwrap());
    assert!(write_if_changed(&target, b"three", 0o600).unwrap());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn write_atomic_replaces_a_symlink_target_name_not_its_destination() {
    let d = tmpdir("replace-link");
    let victim = d.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let target = d.join("lease");
    symlink(&victim, &target).unwrap();
    write_atomic(&target, b"new", 0o644).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&target).unwrap().file_type().is_file());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn lock_excludes_and_times_out() {
    let d = tmpdir("lock");
    let p = d.join("lock");
    let held = Lock::acquire(&p, Duration::from_secs(1)).unwrap();
    assert!(Lock::try_acquire(&p).unwrap().is_none());
    let e = Lock::acquire(&p, Duration::from_millis(20)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    drop(held);
    assert!(Lock::try_acquire(&p).unwrap().is_some());
    // Hostile lock files.
    symlink("/dev/zero", d.join("lock-link")).unwrap();
    mkfifo(&d.join("lock-fifo"));
    for name in ["lock-link", "lock-fifo"] {
        let e = Lock::try_acquire(&d.join(name)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{name}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
