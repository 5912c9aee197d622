//! Store contract tests: a real store in a temporary directory (no root needed).

use crate::pool::{Pool, Range};
use crate::state::Owner;
use crate::store::Store;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tmp() -> Tmp {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "ferry-ipam-unit-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&p).unwrap();
    Tmp(p)
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn pool(s: &str) -> Pool {
    Pool::new(s.parse().unwrap(), Range::default()).unwrap()
}
fn who(id: &str) -> Owner {
    Owner::new(id, "eth0")
}
fn code(e: ferry_cni::CniError) -> u32 {
    e.code.as_u32()
}

#[test]
fn allocates_in_order_and_is_idempotent() {
    let t = tmp();
    let mut s = Store::open(&t.0, "net1").unwrap();
    let p = pool("10.1.0.0/24");
    assert_eq!(s.allocate(&p, &who("a"), None).unwrap(), ip("10.1.0.2"));
    assert_eq!(s.allocate(&p, &who("b"), None).unwrap(), ip("10.1.0.3"));
    assert_eq!(
        s.allocate(&p, &who("a"), None).unwrap(),
        ip("10.1.0.2"),
        "repeated ADD returns the same IP"
    );
    assert_eq!(s.allocate(&p, &Owner::new("a", "eth1"), None).unwrap(), ip("10.1.0.4"));
    assert_eq!(s.lookup(&who("a")).unwrap(), vec![ip("10.1.0.2")]);
    assert_eq!(s.list().unwrap().len(), 3);
    assert!(t.0.join("net1/state.json").exists() && t.0.join("net1/lock").exists());
    assert!(!t.0.join("net1/state.json.tmp").exists());
    let text = std::fs::read_to_string(t.0.join("net1/state.json")).unwrap();
    assert!(text.contains(r#""10.1.0.2":{"id":"a","ifname":"eth0"}"#), "{text}");
    assert!(text.contains(r#""last":{"10.1.0.0/24":"10.1.0.4"}"#), "{text}");
}

#[test]
fn round_robin_does_not_reuse_freed_ip_at_once_and_wraps() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let p = pool("10.1.0.0/29"); // .2-.6
    assert_eq!(s.allocate(&p, &who("a"), None).unwrap(), ip("10.1.0.2"));
    assert_eq!(s.release(&who("a")).unwrap(), vec![ip("10.1.0.2")]);
    assert_eq!(s.allocate(&p, &who("b"), None).unwrap(), ip("10.1.0.3"));
    for (id, want) in [("c", "10.1.0.4"), ("d", "10.1.0.5"), ("e", "10.1.0.6"), ("f", "10.1.0.2")] {
        assert_eq!(s.allocate(&p, &who(id), None).unwrap(), ip(want));
    }
}

#[test]
fn exhaustion_is_code_102_naming_the_range() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let p = pool("10.1.0.0/29");
    for i in 0..5 {
        s.allocate(&p, &who(&format!("c{i}")), None).unwrap();
    }
    let e = s.allocate(&p, &who("c5"), None).unwrap_err();
    assert_eq!(e.code.as_u32(), 102);
    assert!(e.msg.contains("10.1.0.1-10.1.0.6"), "{}", e.msg);
    assert_eq!(s.list().unwrap().len(), 5);
    assert_eq!(s.available(&p).unwrap(), 0);
    s.release(&who("c3")).unwrap();
    assert_eq!(s.available(&p).unwrap(), 1);
    assert_eq!(s.allocate(&p, &who("c5"), None).unwrap(), ip("10.1.0.5"));
}

#[test]
fn release_and_gc() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let p = pool("10.1.0.0/24");
    assert_eq!(s.release(&who("nobody")).unwrap(), Vec::<IpAddr>::new());
    for id in ["a", "b", "c"] {
        s.allocate(&p, &who(id), None).unwrap();
    }
    let gone = s.gc(&[who("b"), who("zzz")]).unwrap();
    assert_eq!(gone, vec![(ip("10.1.0.2"), who("a")), (ip("10.1.0.4"), who("c"))]);
    assert_eq!(s.list().unwrap(), vec![(ip("10.1.0.3"), who("b"))]);
    assert_eq!(s.gc(&[]).unwrap().len(), 1);
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn garbled_state_is_an_error_and_left_alone() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let p = pool("10.1.0.0/24");
    let f = t.0.join("n/state.json");
    for junk in [
        "{not json a",
        "a",
        r#"{"version":7,"allocations":{}}"#,
        r#"{"version":1,"allocations":{"10.1.0.2":{"id":"a","ifname":"e"},"10.1.0.2":{"id":"b","ifname":"e"}}}"#,
    ] {
        std::fs::write(&f, junk).unwrap();
        // Releasing an owner whose id the raw bytes never mention succeeds, touching nothing.
        assert!(s.release(&Owner::new("zz-never-added", "eth0")).unwrap().is_empty());
        for e in [
            s.allocate(&p, &who("a"), None).unwrap_err(),
            s.release(&who("a")).unwrap_err(),
            s.gc(&[]).unwrap_err(),
            s.list().unwrap_err(),
        ] {
            assert_eq!(e.code.as_u32(), 101);
            assert!(e.msg.contains("corrupt") && e.msg.contains("state.json"), "{}", e.msg);
        }
        assert_eq!(std::fs::read_to_string(&f).unwrap(), junk);
    }
    // A leftover temp file from a crash mid-write changes nothing.
    std::fs::remove_file(&f).unwrap();
    std::fs::write(t.0.join("n/state.json.tmp"), "garbage").unwrap();
    assert_eq!(s.allocate(&p, &who("a"), None).unwrap(), ip("10.1.0.2"));
}

#[test]
fn requested_ips() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let p = pool("10.1.0.0/24");
    assert_eq!(s.allocate(&p, &who("a"), Some(ip("10.1.0.50"))).unwrap(), ip("10.1.0.50"));
    assert_eq!(s.allocate(&p, &who("a"), Some(ip("10.1.0.50"))).unwrap(), ip("10.1.0.50"));
    assert_eq!(code(s.allocate(&p, &who("a"), Some(ip("10.1.0.51"))).unwrap_err()), 101);
    let e = s.allocate(&p, &who("b"), Some(ip("10.1.0.50"))).unwrap_err();
    assert_eq!(e.code.as_u32(), 101);
    assert!(e.msg.contains("already allocated to a/eth0"), "{}", e.msg);
    let e = s.allocate(&p, &who("b"), Some(ip("10.1.0.1"))).unwrap_err();
    assert!(e.msg.contains("gateway"), "{}", e.msg);
    for bad in ["10.1.0.1", "10.1.0.255", "10.1.0.0", "10.2.0.5", "fd00::5"] {
        assert_eq!(code(s.allocate(&p, &who("b"), Some(ip(bad))).unwrap_err()), 7, "{bad}");
    }
    // Requested addresses do not move the round-robin cursor.
    assert_eq!(s.allocate(&p, &who("b"), None).unwrap(), ip("10.1.0.2"));
    assert_eq!(s.list().unwrap().len(), 2);
}

#[test]
fn allocate_all_is_all_or_nothing() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let (p4, p6) = (pool("10.1.0.0/24"), pool("fd00:1::/64"));
    let got = s.allocate_all(&[&p4, &p6], &who("a"), &[]).unwrap();
    assert_eq!(got, vec![ip("10.1.0.2"), ip("fd00:1::2")]);
    assert_eq!(s.allocate_all(&[&p4, &p6], &who("a"), &[]).unwrap(), got);
    let e = s.allocate_all(&[&p4, &p6], &who("b"), &[None, Some(ip("fd00:1::2"))]).unwrap_err();
    assert_eq!(e.code.as_u32(), 101);
    assert!(s.lookup(&who("b")).unwrap().is_empty(), "the v4 address was not kept");
    assert_eq!(s.release(&who("a")).unwrap().len(), 2);
}

#[test]
fn stale_address_outside_a_changed_pool_is_replaced() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    assert_eq!(s.allocate(&pool("10.1.0.0/24"), &who("a"), None).unwrap(), ip("10.1.0.2"));
    assert_eq!(s.allocate(&pool("10.9.0.0/24"), &who("a"), None).unwrap(), ip("10.9.0.2"));
    assert_eq!(s.lookup(&who("a")).unwrap(), vec![ip("10.9.0.2")]);
}

#[test]
fn v6_allocation_with_exclusions() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let exclude = vec![(ip("fd00::2"), ip("fd00::9"))];
    let p =
        Pool::new("fd00::/120".parse().unwrap(), Range { exclude, ..Range::default() }).unwrap();
    assert_eq!(s.allocate(&p, &who("a"), None).unwrap(), ip("fd00::a"));
    let q = pool("fd00::/126"); // ::1 gateway, ::2 ::3 usable
    let mut s2 = Store::open(&t.0, "m").unwrap();
    assert_eq!(s2.allocate(&q, &who("a"), None).unwrap(), ip("fd00::2"));
    assert_eq!(s2.allocate(&q, &who("b"), None).unwrap(), ip("fd00::3"));
    assert_eq!(code(s2.allocate(&q, &who("c"), None).unwrap_err()), 102);
}

#[test]
fn networks_and_data_dirs_are_separate() {
    let (t1, t2) = (tmp(), tmp());
    let p = pool("10.1.0.0/24");
    let a = Store::open(&t1.0, "n").unwrap().allocate(&p, &who("a"), None).unwrap();
    let b = Store::open(&t2.0, "n").unwrap().allocate(&p, &who("a"), None).unwrap();
    let c = Store::open(&t1.0, "other").unwrap().allocate(&p, &who("a"), None).unwrap();
    assert_eq!((a, b, c), (ip("10.1.0.2"), ip("10.1.0.2"), ip("10.1.0.2")));
    for bad in ["", "../x", "a/b", ".hidden"] {
        assert_eq!(code(Store::open(&t1.0, bad).err().unwrap()), 7, "{bad:?}");
    }
}

#[test]
fn lock_timeout_is_try_again() {
    let t = tmp();
    let mut holder = Store::open(&t.0, "n").unwrap();
    let mut other = Store::open(&t.0, "n").unwrap();
    other.set_lock_timeout(std::time::Duration::from_millis(50));
    let p = pool("10.1.0.0/24");
    holder
        .transact(|_| {
            let e = other.allocate(&p, &who("x"), None).unwrap_err();
            assert_eq!(e.code.as_u32(), 11);
            Ok(())
        })
        .unwrap();
    assert_eq!(other.allocate(&p, &who("x"), None).unwrap(), ip("10.1.0.2"));
}

#[test]
fn parallel_threads_never_share_an_ip() {
    let t = tmp();
    let p = pool("10.1.0.0/24");
    let dir = t.0.clone();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let (dir, p) = (dir.clone(), p.clone());
            std::thread::spawn(move || {
                let mut s = Store::open(&dir, "n").unwrap();
                let me = who(&format!("c{i}"));
                let a = s.allocate(&p, &me, None).unwrap();
                assert_eq!(s.allocate(&p, &me, None).unwrap(), a);
                a
            })
        })
        .collect();
    let ips: Vec<IpAddr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 50);
    let listed = Store::open(&t.0, "n").unwrap().list().unwrap();
    assert_eq!(listed.len(), 50);
    assert!(listed.iter().all(|(ip, _)| p.contains(*ip)));
}

#[test]
fn state_file_must_be_a_regular_file_and_writes_leave_no_temp() {
    let t = tmp();
    let mut s = Store::open(&t.0, "n").unwrap();
    let p = pool("10.1.0.0/24");
    s.allocate(&p, &who("a"), None).unwrap();
    s.allocate(&p, &who("b"), None).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(t.0.join("n"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["lock", "state.json"], "no temp file left behind");
    // A symlink planted as state.json is refused (not followed, not overwritten).
    let f = t.0.join("n/state.json");
    let elsewhere = t.0.join("elsewhere.json");
    std::fs::rename(&f, &elsewhere).unwrap();
    let before = std::fs::read(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &f).unwrap();
    let e = s.allocate(&p, &who("c"), None).unwrap_err();
    assert_eq!(e.code.as_u32(), 101);
    assert!(e.msg.contains("symbolic link"), "{}", e.msg);
    assert_eq!(std::fs::read(&elsewhere).unwrap(), before);
    assert!(std::fs::symlink_metadata(&f).unwrap().file_type().is_symlink());
    // A FIFO as state.json is an error at once, never a hang.
    std::fs::remove_file(&f).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&f).status().unwrap();
    assert!(made.success());
    for e in [s.release(&who("a")).unwrap_err(), s.list().unwrap_err()] {
        assert_eq!(e.code.as_u32(), 101);
        assert!(e.msg.contains("FIFO"), "{}", e.msg);
    }
}
