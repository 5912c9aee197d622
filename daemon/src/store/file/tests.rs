use super::*;
use crate::store::LeaseStore;
use std::net::Ipv4Addr;

fn tmpdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("ferryd-fs-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn attrs(ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip.parse().unwrap(),
        backend_type: "host-gw".into(),
        backend_data: serde_json::Value::Null,
        public_ipv6: None,
        backend_v6_data: None,
    }
}

fn net(s: &str) -> ipnetwork::Ipv4Network {
    s.parse().unwrap()
}

#[test]
fn create_is_exclusive_and_renew_checks_owner() {
    let d = tmpdir("create");
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        let ttl = Duration::from_secs(60);
        assert!(s.create(net("10.244.1.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
        assert!(!s.create(net("10.244.1.0/24"), &attrs("198.18.0.12"), ttl).await.unwrap());
        assert!(s.renew(net("10.244.1.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
        assert!(!s.renew(net("10.244.1.0/24"), &attrs("198.18.0.12"), ttl).await.unwrap());
        assert!(!s.renew(net("10.244.2.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
        let (all, _) = s.list().await.unwrap();
        assert_eq!(all.len(), 1);
        let l = all[0].as_ref().unwrap();
        assert_eq!(l.attrs.public_ip, "198.18.0.11".parse::<Ipv4Addr>().unwrap());
        assert!(l.expires.unwrap() > SystemTime::now());
        // The file holds flannel's JSON plus the expiry.
        let text = fs::read_to_string(d.join("10.244.1.0-24")).unwrap();
        assert!(
            text.contains(r#""PublicIP":"198.18.0.11""#) && text.contains(EXPIRES_FIELD),
            "{text}"
        );
        s.delete(net("10.244.1.0/24")).await.unwrap();
        s.delete(net("10.244.1.0/24")).await.unwrap();
        assert!(s.list().await.unwrap().0.is_empty());
    });
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn hand_written_flannel_lease_is_permanent_and_garbage_is_reported() {
    let d = tmpdir("hand");
    fs::write(
        d.join("10.244.7.0-24"),
        r#"{"PublicIP":"198.18.0.17","BackendType":"host-gw","BackendData":null}"#,
    )
    .unwrap();
    fs::write(d.join("10.244.8.0-24"), "{garbage").unwrap();
    fs::write(d.join("junk"), "{}").unwrap();
    fs::write(d.join(".10.244.9.0-24.123.tmp"), "{half").unwrap();
    fs::write(
        d.join("config"),
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        let (mut all, _) = s.list().await.unwrap();
        all.sort_by_key(|e| format!("{e:?}"));
        let ok: Vec<_> = all.iter().filter_map(|e| e.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].expires, None);
        let bad: Vec<_> =
            all.iter().filter_map(|e| e.as_ref().err()).map(|b| b.key.clone()).collect();
        assert_eq!(bad.len(), 2, "{all:?}");
        assert!(bad.contains(&"10.244.8.0-24".to_string()) && bad.contains(&"junk".to_string()));
        // A garbage file still occupies its key.
        assert!(!s
            .create(net("10.244.8.0/24"), &attrs("198.18.0.11"), Duration::from_secs(9))
            .await
            .unwrap());
        assert_eq!(s.get_config().await.unwrap().unwrap().subnet_len, 24);
    });
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn config_is_put_once() {
    let d = tmpdir("config");
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        assert_eq!(s.get_config().await.unwrap(), None);
        let a: NetworkConfig =
            serde_json::from_str(r#"{"Network":"10.244.0.0/16","SubnetLen":24}"#).unwrap();
        let b: NetworkConfig =
            serde_json::from_str(r#"{"Network":"10.9.0.0/16","SubnetLen":24}"#).unwrap();
        assert_eq!(s.put_config_if_absent(&a).await.unwrap(), a);
        assert_eq!(s.put_config_if_absent(&b).await.unwrap(), a);
    });
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_directory_is_unavailable() {
    let d = tmpdir("missing").join("nope");
    rt().block_on(async {
        let mut s = FileStore::open_watching(&d);
        assert!(matches!(s.list().await, Err(StoreError::Unavailable(_))));
        assert!(matches!(
            s.create(net("10.244.1.0/24"), &attrs("1.2.3.4"), Duration::from_secs(1)).await,
            Err(StoreError::Unavailable(_))
        ));
    });
}

#[test]
fn expired_leases_are_absent_and_free() {
    let d = tmpdir("expiry");
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        assert!(s
            .create(net("10.244.1.0/24"), &attrs("198.18.0.11"), Duration::from_millis(1))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(s.list().await.unwrap().0.is_empty());
        assert!(!d.join("10.244.1.0-24").exists(), "expired lease cleaned up under the lock");
        assert!(s
            .create(net("10.244.1.0/24"), &attrs("198.18.0.12"), Duration::from_secs(9))
            .await
            .unwrap());
    });
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn watch_sees_puts_removals_and_expiry() {
    let d = tmpdir("watch");
    rt().block_on(async {
        let mut w = FileStore::open_watching(&d);
        let mut s = FileStore::open(&d);
        let (all, rev) = w.list().await.unwrap();
        assert!(all.is_empty());
        assert!(s.create(net("10.244.1.0/24"), &attrs("198.18.0.11"), Duration::from_millis(300)).await.unwrap());
        let (ev, rev) = tokio::time::timeout(Duration::from_secs(2), w.watch(rev)).await.unwrap().unwrap();
        assert!(matches!(&ev[..], [WatchEvent::Put(Ok(l))] if l.subnet == net("10.244.1.0/24")), "{ev:?}");
        fs::write(d.join("10.244.2.0-24"), r#"{"PublicIP":"198.18.0.12"}"#).unwrap();
        let (ev, rev) = tokio::time::timeout(Duration::from_secs(2), w.watch(rev)).await.unwrap().unwrap();
        assert!(matches!(&ev[..], [WatchEvent::Put(Ok(l))] if l.subnet == net("10.244.2.0/24")), "{ev:?}");
        s.delete(net("10.244.2.0/24")).await.unwrap();
        let (ev, rev) = tokio::time::timeout(Duration::from_secs(2), w.watch(rev)).await.unwrap().unwrap();
        assert!(matches!(&ev[..], [WatchEvent::Removed { subnet: Some(n), .. }] if *n == net("10.244.2.0/24")), "{ev:?}");
        // The first lease runs out: a synthetic removal.
        let (ev, _) = tokio::time::timeout(Duration::from_secs(2), w.watch(rev)).await.unwrap().unwrap();
        assert!(matches!(&ev[..], [WatchEvent::Removed { subnet: Some(n), .. }] if *n == net("10.244.1.0/24")), "{ev:?}");
    });
    fs::remove_dir_all(&d).unwrap();
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", p.display());
}

#[test]
fn fifo_and_symlink_entries_are_bad_entries_read_without_blocking() {
    let d = tmpdir("hostile");
    let good = r#"{"PublicIP":"198.18.0.17","BackendType":"host-gw","BackendData":null}"#;
    fs::write(d.join("10.244.7.0-24"), good).unwrap();
    mkfifo(&d.join("10.244.8.0-24"));
    let outside = d.join(".outside");
    fs::write(&outside, good).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("10.244.9.0-24")).unwrap();
    rt().block_on(async {
        let mut s = FileStore::open_watching(&d);
        let (all, rev) = tokio::time::timeout(Duration::from_secs(2), s.list())
            .await
            .expect("a FIFO entry must not block the listing")
            .unwrap();
        let subnets: Vec<_> =
            all.iter().filter_map(|e| e.as_ref().ok()).map(|l| l.subnet).collect();
        assert_eq!(subnets, [net("10.244.7.0/24")], "{all:?}");
        // The others are bad entries (so they block their subnets), each saying why.
        let mut bad: Vec<_> = all.iter().filter_map(|e| e.as_ref().err()).collect();
        bad.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(bad.len(), 2, "{all:?}");
        assert!(bad[0].key == "10.244.8.0-24" && bad[0].reason.contains("FIFO"), "{bad:?}");
        assert!(bad[1].key == "10.244.9.0-24" && bad[1].reason.contains("symbolic link"));
        // A key held by something that is not a lease file is not free.
        let mut c = FileStore::open(&d);
        let ttl = Duration::from_secs(9);
        assert!(!c.create(net("10.244.8.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
        assert!(!c.create(net("10.244.9.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
        // A watch that sees the FIFO touched keeps going and still reports real changes.
        mkfifo(&d.join("10.244.10.0-24"));
        assert!(c.create(net("10.244.1.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
        let mut got = Vec::new();
        let mut rev = rev;
        while got.is_empty() {
            let (ev, r) =
                tokio::time::timeout(Duration::from_secs(2), s.watch(rev)).await.unwrap().unwrap();
            rev = r;
            got.extend(ev);
        }
        assert!(
            matches!(&got[..], [WatchEvent::Put(Ok(l))] if l.subnet == net("10.244.1.0/24")),
            "{got:?}"
        );
    });
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_fifo_config_is_invalid_not_a_hang() {
    let d = tmpdir("fifo-config");
    mkfifo(&d.join("config"));
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        let r = tokio::time::timeout(Duration::from_secs(2), s.get_config()).await.unwrap();
        assert!(matches!(r, Err(StoreError::Invalid(ref m)) if m.contains("FIFO")), "{r:?}");
    });
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_held_lock_is_waited_for() {
    let d = tmpdir("lock");
    let held = ferry_fs::Lock::acquire(&d.join("lock"), Duration::from_secs(1)).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
    });
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        let t = std::time::Instant::now();
        assert!(s
            .create(net("10.244.1.0/24"), &attrs("198.18.0.11"), Duration::from_secs(9))
            .await
            .unwrap());
        assert!(t.elapsed() >= Duration::from_millis(40), "{:?}", t.elapsed());
    });
    release.join().unwrap();
    fs::remove_dir_all(&d).unwrap();
}

fn dual(v4: &str, v6: &str) -> Subnets {
    Subnets { v4: Some(net(v4)), v6: Some(v6.parse().unwrap()) }
}

fn attrs6(ip: &str, ip6: &str) -> LeaseAttrs {
    LeaseAttrs { public_ipv6: Some(ip6.parse().unwrap()), ..attrs(ip) }
}

#[test]
fn a_key_sharing_a_subnet_with_another_nodes_lease_is_not_created() {
    let d = tmpdir("dual");
    rt().block_on(async {
        let mut s = FileStore::open(&d);
        let ttl = Duration::from_secs(60);
        let a = attrs6("198.18.0.11", "fd00:198:18::11");
        let b = attrs6("198.18.0.12", "fd00:198:18::12");
        assert!(s.create(dual("10.244.1.0/24", "fd00:10:244:1::/64"), &a, ttl).await.unwrap());
        // Two nodes racing for one subnet under different keys: only the first gets it.
        for other in [
            dual("10.244.1.0/24", "fd00:10:244:2::/64"),
            dual("10.244.2.0/24", "fd00:10:244:1::/64"),
            net("10.244.1.0/24").into(),
            Subnets { v4: None, v6: Some("fd00:10:244:1::/64".parse().unwrap()) },
        ] {
            assert!(!s.create(other, &b, ttl).await.unwrap(), "{other}");
        }
        assert!(s.create(dual("10.244.2.0/24", "fd00:10:244:2::/64"), &b, ttl).await.unwrap());
        // The node's own leases never conflict (its plain key from before IPv6, say).
        assert!(s.create(net("10.244.1.0/24"), &a, ttl).await.unwrap());
        assert_eq!(s.list().await.unwrap().0.len(), 3);
        assert!(d.join("10.244.1.0-24&fd00:10:244:1::-64").exists());
    });
    fs::remove_dir_all(&d).unwrap();
}
