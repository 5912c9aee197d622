//! EtcdStore against a real etcd (Debian's /usr/bin/etcd), one private etcd per test, on
//! 127.0.0.1 only. Run inside the sandbox:
//! `tests/sandbox.sh cargo test -p ferryd --offline --test etcd_store`.
//!
//! Nothing here asserts a duration: the machine may be loaded (timings are printed, the benches
//! measure them). Waits are for an event, bounded by [`WAIT`] only so a broken build cannot hang.

use ferryd::store::etcd::{EtcdConfig, EtcdStore};
use ferryd::store::{
    LeaseAttrs, LeaseEntry, LeaseStore, NetworkConfig, StoreError, Subnets, WatchEvent,
};
use ipnetwork::Ipv4Network;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use testlab::{require_sandbox, Proc, TempDir};

const PREFIX: &str = "/coreos.com/network";
/// The bound of every wait for something that should happen (generous: a loaded machine).
const WAIT: Duration = Duration::from_secs(30);

/// A private single-member etcd, killed (by PID) on drop.
struct Etcd {
    proc: Option<Proc>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Serve clients over TLS with client-cert auth (certs in `dir`, see `make_certs`).
    tls: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    fn start() -> Etcd {
        Etcd::start_with(false)
    }

    fn start_with(tls: bool) -> Etcd {
        require_sandbox();
        let dir = TempDir::new("etcd");
        let mut e = Etcd { proc: None, dir, client_port: free_port(), peer_port: free_port(), tls };
        if tls {
            make_certs(&e.dir);
        }
        e.launch();
        e
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.client_port)
    }

    /// etcdctl / etcd flags for TLS (`server` or `client` cert).
    fn tls_args(&self, who: &str) -> Vec<String> {
        let f = |n: &str| self.dir.path_str(n);
        match (self.tls, who) {
            (false, _) => vec![],
            (true, "server") => vec![
                format!("--cert-file={}", f("server.pem")),
                format!("--key-file={}", f("server.key")),
                "--client-cert-auth".into(),
                format!("--trusted-ca-file={}", f("ca.pem")),
            ],
            (true, _) => vec![
                format!("--cacert={}", f("ca.pem")),
                format!("--cert={}", f("client.pem")),
                format!("--key={}", f("client.key")),
            ],
        }
    }

    /// Start etcd on this data dir and ports; wait (bounded) until it answers.
    fn launch(&mut self) {
        let (c, p) = (self.url(), format!("http://127.0.0.1:{}", self.peer_port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args(["--name", "t", "--data-dir", &self.dir.path_str("data")])
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("t={p}")])
            .args(self.tls_args("server"))
            .args([
                "--heartbeat-interval",
                "10",
                "--election-timeout",
                "100",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.proc = Some(Proc::spawn("etcd", cmd));
        let up = testlab::wait_for(Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
                && etcdctl(self, &["endpoint", "health"]).status.success()
        });
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        assert!(up, "etcd did not come up on {c}: {log}");
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcdctl_cmd(e: &Etcd, args: &[&str]) -> Command {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3").arg(format!("--endpoints={}", e.url())).arg("--command-timeout=10s");
    c.args(e.tls_args("client")).args(args).stdin(Stdio::null());
    c
}

fn etcdctl(e: &Etcd, args: &[&str]) -> std::process::Output {
    etcdctl_cmd(e, args).output().expect("spawn etcdctl")
}

/// Run an etcdctl command after `delay` on another thread; yields (start, how long it ran).
fn etcdctl_later(
    e: &Etcd,
    delay: Duration,
    args: &[&str],
) -> std::thread::JoinHandle<(Instant, Duration)> {
    let mut cmd = etcdctl_cmd(e, args);
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let t = Instant::now();
        assert!(cmd.stdout(Stdio::null()).status().unwrap().success());
        (t, t.elapsed())
    })
}

/// Watch from `rev` until an event batch satisfies `pred` (bounded by `limit`).
async fn watch_until(
    s: &mut impl LeaseStore,
    mut rev: i64,
    limit: Duration,
    pred: impl Fn(&WatchEvent) -> bool,
) -> i64 {
    let t0 = Instant::now();
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        let (evs, r) = tokio::time::timeout(left, s.watch(rev))
            .await
            .expect("expected event not seen in time")
            .unwrap();
        rev = r;
        if evs.iter().any(&pred) {
            return rev;
        }
    }
}

fn etcdctl_ok(e: &Etcd, args: &[&str]) -> String {
    let out = etcdctl(e, args);
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A store on `e` whose requests may take up to 10 s (a loaded machine is no failure here).
async fn store(e: &Etcd) -> EtcdStore {
    store_timing(e, Duration::from_secs(10)).await
}

async fn store_timing(e: &Etcd, request_timeout: Duration) -> EtcdStore {
    let cfg = EtcdConfig {
        endpoints: vec![e.url()],
        request_timeout,
        dial_timeout: Duration::from_secs(5),
        ..EtcdConfig::default()
    };
    EtcdStore::connect(cfg).await.expect("connect")
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
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

fn find(entries: &[LeaseEntry], subnet: &str) -> ferryd::store::Lease {
    entries
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .find(|l| l.subnet == net(subnet))
        .unwrap_or_else(|| panic!("{subnet} not listed in {entries:?}"))
        .clone()
}

fn secs_left(l: &ferryd::store::Lease) -> f64 {
    let exp = l.expires.expect("lease has an expiry");
    exp.duration_since(SystemTime::now()).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[tokio::test]
async fn config_put_if_absent_and_get() {
    require_sandbox();
    let e = Etcd::start();
    let mut s = store(&e).await;
    assert_eq!(s.get_config().await.unwrap(), None);
    let a: NetworkConfig = serde_json::from_str(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    let mut b = a.clone();
    b.subnet_len = 26;
    assert_eq!(s.put_config_if_absent(&a).await.unwrap(), a);
    assert_eq!(s.put_config_if_absent(&b).await.unwrap(), a, "second put must not overwrite");
    assert_eq!(s.get_config().await.unwrap(), Some(a.clone()));
    // Stored as flannel JSON at <prefix>/config.
    let raw = etcdctl_ok(&e, &["get", "--print-value-only", &format!("{PREFIX}/config")]);
    let v: serde_json::Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(v["Network"], "10.244.0.0/16");
    assert_eq!(v["Backend"]["Type"], "host-gw");
    // A config written by hand (flannel style) is read; garbage is Invalid.
    etcdctl_ok(
        &e,
        &[
            "put",
            &format!("{PREFIX}/config"),
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
        ],
    );
    assert_eq!(s.get_config().await.unwrap().unwrap().network, Some(net("10.5.0.0/16")));
    etcdctl_ok(&e, &["put", &format!("{PREFIX}/config"), "not json"]);
    assert!(matches!(s.get_config().await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn create_is_exclusive_and_does_not_leak_leases() {
    require_sandbox();
    let e = Etcd::start();
    let mut s = store(&e).await;
    let mut other = store(&e).await;
    let ttl = Duration::from_secs(600);
    let t0 = Instant::now();
    assert!(s.create(net("10.244.1.0/24"), &attrs("198.18.0.11"), ttl).await.unwrap());
    let first = t0.elapsed();
    let leases_before = etcdctl_ok(&e, &["lease", "list"]);
    assert!(!other.create(net("10.244.1.0/24"), &attrs("198.18.0.12"), ttl).await.unwrap());
    assert_eq!(
        etcdctl_ok(&e, &["lease", "list"]),
        leases_before,
        "failed create leaked an etcd lease"
    );
    let (list, rev) = s.list().await.unwrap();
    assert!(rev > 0);
    let l = find(&list, "10.244.1.0/24");
    assert_eq!(l.attrs, attrs("198.18.0.11"));
    assert!((300.0..=601.0).contains(&secs_left(&l)), "expiry {:?}", l.expires);
    // Flannel wire format, attached to an etcd lease.
    let raw =
        etcdctl_ok(&e, &["get", "--print-value-only", &format!("{PREFIX}/subnets/10.244.1.0-24")]);
    assert_eq!(
        raw.trim(),
        r#"{"PublicIP":"198.18.0.11","BackendType":"host-gw","BackendData":null}"#
    );
    let json = etcdctl_ok(&e, &["get", "-w", "json", &format!("{PREFIX}/subnets/10.244.1.0-24")]);
    assert!(json.contains("\"lease\":"), "key has no etcd lease: {json}");
    // Delete, then it can be created again.
    s.delete(net("10.244.1.0/24")).await.unwrap();
    s.delete(net("10.244.1.0/24")).await.unwrap(); // absent: no error
    assert!(other.create(net("10.244.1.0/24"), &attrs("198.18.0.12"), ttl).await.unwrap());
    eprintln!("first create (grant + txn, cold connection): {first:?}");
}

#[tokio::test]
async fn list_includes_reservations_and_bad_entries() {
    require_sandbox();
    let e = Etcd::start();
    let mut s = store(&e).await;
    assert!(s
        .create(net("10.244.1.0/24"), &attrs("198.18.0.11"), Duration::from_secs(60))
        .await
        .unwrap());
    let sub = |k: &str| format!("{PREFIX}/subnets/{k}");
    etcdctl_ok(
        &e,
        &[
            "put",
            &sub("10.244.9.0-24"),
            r#"{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
        ],
    );
    etcdctl_ok(&e, &["put", &sub("10.244.7.0-24"), "{garbage"]);
    etcdctl_ok(&e, &["put", &sub("nonsense"), r#"{"PublicIP":"198.18.0.5"}"#]);
    etcdctl_ok(&e, &["put", &format!("{PREFIX}/subnetsX/10.244.8.0-24"), "{}"]); // not under subnets/
    let (list, _) = s.list().await.unwrap();
    assert_eq!(list.len(), 4, "{list:?}");
    let r = find(&list, "10.244.9.0/24");
    assert_eq!(r.expires, None, "a key without etcd lease is a reservation");
    assert_eq!(r.attrs.public_ip.to_string(), "198.18.0.99");
    assert!(find(&list, "10.244.1.0/24").expires.is_some());
    let bad: Vec<&String> = list.iter().filter_map(|e| e.as_ref().err()).map(|b| &b.key).collect();
    assert_eq!(bad.len(), 2, "{list:?}");
    assert!(bad.contains(&&sub("10.244.7.0-24")) && bad.contains(&&sub("nonsense")), "{bad:?}");
    // Renewing a reservation keeps it TTL-less.
    assert!(s
        .renew(net("10.244.9.0/24"), &attrs("198.18.0.99"), Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(find(&s.list().await.unwrap().0, "10.244.9.0/24").expires, None);
}

/// A listing read in pages (here 2 keys a page) is one snapshot: every page at the first page's
/// revision, even while another client keeps adding leases, so it equals etcd's own listing at
/// that revision; and a watch from that revision + 1 delivers exactly the changes after it.
#[tokio::test]
async fn paged_listing_is_one_snapshot_and_the_watch_continues_it() {
    require_sandbox();
    let e = Etcd::start();
    let cfg = EtcdConfig {
        endpoints: vec![e.url()],
        dial_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        page_size: 2,
        ..EtcdConfig::default()
    };
    let mut s = EtcdStore::connect(cfg).await.expect("connect");
    for k in 0..4 {
        let ttl = Duration::from_secs(600 * (k % 2)); // half with an etcd lease, half reservations
        assert!(s
            .create(net(&format!("10.244.{k}.0/24")), &attrs("198.18.0.11"), ttl)
            .await
            .unwrap());
    }
    // Another client adds 60 leases one by one while we list, page by page, again and again.
    let writer = {
        let cmds: Vec<Command> = (10..70)
            .map(|k| {
                let key = format!("{PREFIX}/subnets/10.244.{k}.0-24");
                etcdctl_cmd(&e, &["put", &key, r#"{"PublicIP":"198.18.0.12"}"#])
            })
            .collect();
        std::thread::spawn(move || {
            for mut c in cmds {
                assert!(c.stdout(Stdio::null()).status().unwrap().success());
            }
        })
    };
    let mut listings = 0;
    while !writer.is_finished() || listings == 0 {
        let (list, rev) = s.list().await.unwrap();
        let at_rev = etcdctl_ok(
            &e,
            &[
                "get",
                "--prefix",
                "--keys-only",
                &format!("--rev={rev}"),
                &format!("{PREFIX}/subnets/"),
            ],
        );
        let mut want: Vec<&str> = at_rev.lines().filter(|l| !l.is_empty()).collect();
        let mut got: Vec<String> = list
            .iter()
            .map(|e| {
                format!(
                    "{PREFIX}/subnets/{}",
                    ferryd::store::subnet_key(e.as_ref().unwrap().subnet)
                )
            })
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "listing at revision {rev} differs from etcd's own");
        listings += 1;
    }
    writer.join().unwrap();
    let (list, rev) = s.list().await.unwrap();
    assert_eq!(list.len(), 64);
    for k in 0..4 {
        let l = find(&list, &format!("10.244.{k}.0/24"));
        assert_eq!(l.expires.is_some(), k % 2 == 1, "{l:?}");
    }
    // The watch from the listing's revision + 1: exactly what happened after it, in order.
    etcdctl_ok(
        &e,
        &["put", &format!("{PREFIX}/subnets/10.244.99.0-24"), r#"{"PublicIP":"198.18.0.13"}"#],
    );
    etcdctl_ok(&e, &["del", &format!("{PREFIX}/subnets/10.244.0.0-24")]);
    let mut seen = Vec::new();
    let mut r = rev;
    while seen.len() < 2 {
        let (evs, next) =
            tokio::time::timeout(WAIT, s.watch(r)).await.expect("watch event").unwrap();
        seen.extend(evs);
        r = next;
    }
    match &seen[..] {
        [WatchEvent::Put(Ok(a)), WatchEvent::Removed { subnet: Some(b), .. }] => {
            assert_eq!((a.subnet, *b), (net("10.244.99.0/24"), net("10.244.0.0/24")));
        }
        other => panic!("expected the put and the delete after the listing, got {other:?}"),
    }
    eprintln!("{listings} paged listings taken while 60 leases were written, each one snapshot");
}

#[tokio::test]
async fn renew_extends_and_refuses_foreign_or_gone() {
    require_sandbox();
    let e = Etcd::start();
    let mut s = store(&e).await;
    let n = net("10.244.2.0/24");
    assert!(s.create(n, &attrs("198.18.0.11"), Duration::from_secs(8)).await.unwrap());
    let before = secs_left(&find(&s.list().await.unwrap().0, "10.244.2.0/24"));
    assert!(before <= 8.0);
    assert!(s.renew(n, &attrs("198.18.0.11"), Duration::from_secs(120)).await.unwrap());
    // A fresh store (no cached expiries) sees the new TTL from etcd itself.
    let after = secs_left(&find(&store(&e).await.list().await.unwrap().0, "10.244.2.0/24"));
    assert!(after > 110.0, "renew did not extend the TTL: {after}");
    // Outlives the original 8 s lease.
    tokio::time::sleep(Duration::from_millis(9500)).await;
    find(&s.list().await.unwrap().0, "10.244.2.0/24");
    assert!(
        !s.renew(n, &attrs("198.18.0.12"), Duration::from_secs(120)).await.unwrap(),
        "foreign IP"
    );
    assert_eq!(
        find(&s.list().await.unwrap().0, "10.244.2.0/24").attrs.public_ip.to_string(),
        "198.18.0.11"
    );
    s.delete(n).await.unwrap();
    assert!(
        !s.renew(n, &attrs("198.18.0.11"), Duration::from_secs(120)).await.unwrap(),
        "deleted key"
    );
    assert!(s.list().await.unwrap().0.is_empty());
}

#[tokio::test]
async fn expired_lease_is_reported_removed() {
    require_sandbox();
    let e = Etcd::start();
    let mut s = store(&e).await;
    let n = net("10.244.3.0/24");
    assert!(s.create(n, &attrs("198.18.0.11"), Duration::from_secs(2)).await.unwrap());
    let (_, rev) = s.list().await.unwrap();
    let t0 = Instant::now();
    let key = format!("{PREFIX}/subnets/10.244.3.0-24");
    watch_until(
        &mut s,
        rev,
        WAIT,
        |ev| matches!(ev, WatchEvent::Removed { subnet: Some(x), key: k } if *x == n && *k == key),
    )
    .await;
    eprintln!("2 s lease removed after {:?}", t0.elapsed());
    assert!(s.list().await.unwrap().0.is_empty());
}

#[tokio::test]
async fn watch_sees_etcdctl_put_and_delete() {
    require_sandbox();
    let e = Etcd::start();
    let mut s = store(&e).await;
    let (_, rev) = s.list().await.unwrap();
    let key = format!("{PREFIX}/subnets/10.244.4.0-24");
    let v = r#"{"PublicIP":"198.18.0.44","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#;
    let writer = etcdctl_later(&e, Duration::from_millis(300), &["put", &key, v]);
    let (evs, rev2) =
        tokio::time::timeout(WAIT, s.watch(rev)).await.expect("watch timed out").unwrap();
    let got = Instant::now();
    let (started, ctl_took) = writer.join().unwrap();
    assert!(rev2 > rev);
    match &evs[..] {
        [WatchEvent::Put(Ok(l))] => {
            assert_eq!(l.subnet, net("10.244.4.0/24"));
            assert_eq!(l.attrs.public_ip.to_string(), "198.18.0.44");
            assert_eq!(l.expires, None);
        }
        other => panic!("unexpected events {other:?}"),
    }
    eprintln!(
        "etcdctl put → Put event: {:?} (etcdctl process itself took {ctl_took:?})",
        got.duration_since(started)
    );
    // An idle watch outlives a request timeout and many liveness probes: a store with a 2 s
    // request timeout still gets the delete made 3 s later as an event.
    let mut s = store_timing(&e, Duration::from_secs(2)).await;
    let writer = etcdctl_later(&e, Duration::from_secs(3), &["del", &key]);
    let (evs, _) = tokio::time::timeout(WAIT, s.watch(rev2)).await.unwrap().unwrap();
    writer.join().unwrap();
    assert!(
        matches!(&evs[..], [WatchEvent::Removed { subnet: Some(x), .. }] if *x == net("10.244.4.0/24")),
        "{evs:?}"
    );
}

#[tokio::test]
async fn watch_latency_and_compaction_resync() {
    require_sandbox();
    let e = Etcd::start();
    let mut watcher = store(&e).await;
    let mut writer = store(&e).await;
    let (_, mut rev) = watcher.list().await.unwrap();
    let (mut lat, mut took) = (Vec::new(), Vec::new());
    for i in 0..40u32 {
        let n = net(&format!("10.244.{}.0/24", i + 10));
        let (w, t0) = tokio::join!(
            async {
                let r = watcher.watch(rev).await.unwrap();
                (r, Instant::now())
            },
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let t0 = Instant::now();
                assert!(writer
                    .create(n, &attrs("198.18.0.11"), Duration::from_secs(600))
                    .await
                    .unwrap());
                (t0, t0.elapsed())
            }
        );
        let ((evs, r), t1) = w;
        assert!(
            matches!(&evs[..], [WatchEvent::Put(Ok(l))] if l.subnet == n && l.expires.is_some()),
            "{evs:?}"
        );
        rev = r;
        lat.push(t1.duration_since(t0.0));
        took.push(t0.1);
    }
    lat.sort();
    took.sort();
    let (p50, p90) = (lat[lat.len() / 2], lat[lat.len() * 9 / 10]);
    eprintln!(
        "create start → peer watch event (incl. its lease TTL lookup): p50 {p50:?} p90 {p90:?}; \
        create alone (grant + txn): p50 {:?}",
        took[took.len() / 2]
    );
    // Fall behind, compact past our revision: the watch must resync with the full list.
    writer.delete(net("10.244.10.0/24")).await.unwrap();
    assert!(writer
        .create(net("10.244.200.0/24"), &attrs("198.18.0.12"), Duration::from_secs(600))
        .await
        .unwrap());
    let (_, head) = writer.list().await.unwrap();
    etcdctl_ok(&e, &["compact", &head.to_string()]);
    let stale = rev; // events after `stale` are compacted away
    let mut fresh = watcher.handle();
    let (evs, r) = tokio::time::timeout(WAIT, fresh.watch(stale)).await.unwrap().unwrap();
    match &evs[..] {
        [WatchEvent::Resync(list)] => {
            assert_eq!(list.len(), 40, "{list:?}");
            find(list, "10.244.200.0/24");
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    assert!(r >= head);
}

#[tokio::test]
async fn etcd_down_is_unavailable_and_store_recovers() {
    require_sandbox();
    let mut e = Etcd::start();
    let mut s = store_timing(&e, Duration::from_secs(3)).await;
    let n = net("10.244.5.0/24");
    assert!(s.create(n, &attrs("198.18.0.11"), Duration::from_secs(600)).await.unwrap());
    let (_, rev) = s.list().await.unwrap();
    // A pending watch fails (not hangs) when etcd dies.
    let (w, ()) = tokio::join!(tokio::time::timeout(WAIT, s.watch(rev)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        e.kill();
    });
    assert!(matches!(w.expect("watch hung after etcd died"), Err(StoreError::Unavailable(_))));
    let t = Instant::now();
    assert!(matches!(s.list().await, Err(StoreError::Unavailable(_))));
    eprintln!("list with etcd down: Unavailable after {:?}", t.elapsed());
    let t = Instant::now();
    assert!(matches!(
        s.renew(n, &attrs("198.18.0.11"), Duration::from_secs(600)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.create(net("10.244.6.0/24"), &attrs("198.18.0.11"), Duration::from_secs(60)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(s.get_config().await, Err(StoreError::Unavailable(_))));
    eprintln!("renew, create, get_config with etcd down: Unavailable after {:?}", t.elapsed());
    // Also a store created while etcd is down: connect succeeds (lazy), calls fail fast.
    let mut cold = store_timing(&e, Duration::from_secs(3)).await;
    assert!(matches!(cold.list().await, Err(StoreError::Unavailable(_))));
    // Back on the same data dir and ports: the same store object works again.
    e.launch();
    let t = Instant::now();
    let listed = loop {
        match s.list().await {
            Ok(l) => break l,
            Err(err) => {
                assert!(t.elapsed() < Duration::from_secs(60), "store did not recover: {err}")
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("store usable again {:?} after etcd restart", t.elapsed());
    find(&listed.0, "10.244.5.0/24");
    assert!(s.renew(n, &attrs("198.18.0.11"), Duration::from_secs(600)).await.unwrap());
    // And the watch resumes from where it was.
    etcdctl_ok(
        &e,
        &["put", &format!("{PREFIX}/subnets/10.244.6.0-24"), r#"{"PublicIP":"198.18.0.66"}"#],
    );
    let n6 = net("10.244.6.0/24");
    watch_until(&mut s, rev, WAIT, |ev| matches!(ev, WatchEvent::Put(Ok(l)) if l.subnet == n6))
        .await;
    assert!(cold.list().await.is_ok());
}

/// A throw-away CA, a server cert for IP 127.0.0.1 and a client cert (EC P-256, openssl CLI).
fn make_certs(dir: &TempDir) {
    let script = r#"set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=ferry-test-ca \
            -keyout ca.key -out ca.pem 2>/dev/null
        for who in server client; do
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
                -keyout $who.key -out $who.csr 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > $who.ext
            openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
                -extfile $who.ext -out $who.pem 2>/dev/null
        done"#;
    let st = Command::new("sh").arg("-c").arg(script).current_dir(&dir.path).status().unwrap();
    assert!(st.success(), "openssl failed");
}

#[tokio::test]
async fn tls_with_client_certificates() {
    require_sandbox();
    let e = Etcd::start_with(true);
    let cfg = EtcdConfig {
        endpoints: vec![e.url()],
        ca_file: Some(e.dir.join("ca.pem")),
        cert_file: Some(e.dir.join("client.pem")),
        key_file: Some(e.dir.join("client.key")),
        ..EtcdConfig::default()
    };
    let mut s = EtcdStore::connect(cfg.clone()).await.unwrap();
    assert!(s
        .create(net("10.244.1.0/24"), &attrs("198.18.0.11"), Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(
        find(&s.list().await.unwrap().0, "10.244.1.0/24").attrs.public_ip.to_string(),
        "198.18.0.11"
    );
    // Without a client certificate etcd refuses us.
    let mut anon =
        EtcdStore::connect(EtcdConfig { cert_file: None, key_file: None, ..cfg }).await.unwrap();
    assert!(anon.list().await.is_err());
}

#[tokio::test]
async fn a_dual_stack_key_sharing_a_subnet_with_another_nodes_lease_is_not_created() {
    require_sandbox();
    let e = Etcd::start();
    let (mut s, mut other) = (store(&e).await, store(&e).await);
    let ttl = Duration::from_secs(600);
    let dual = |v4: &str, v6: &str| Subnets { v4: Some(net(v4)), v6: Some(v6.parse().unwrap()) };
    let with6 =
        |ip: &str, ip6: &str| LeaseAttrs { public_ipv6: Some(ip6.parse().unwrap()), ..attrs(ip) };
    let (a, b) = (with6("198.18.0.11", "fd00:198:18::11"), with6("198.18.0.12", "fd00:198:18::12"));
    assert!(s.create(dual("10.244.1.0/24", "fd00:10:244:1::/64"), &a, ttl).await.unwrap());
    let leases_before = etcdctl_ok(&e, &["lease", "list"]);
    for k in
        [dual("10.244.1.0/24", "fd00:10:244:2::/64"), dual("10.244.2.0/24", "fd00:10:244:1::/64")]
    {
        assert!(!other.create(k, &b, ttl).await.unwrap(), "{k}");
    }
    assert_eq!(
        etcdctl_ok(&e, &["lease", "list"]),
        leases_before,
        "a refused create leaked a lease"
    );
    assert!(other.create(dual("10.244.2.0/24", "fd00:10:244:2::/64"), &b, ttl).await.unwrap());
    // flannel's layout: one key, PublicIPv6 in the value.
    let raw = etcdctl_ok(
        &e,
        &[
            "get",
            "--print-value-only",
            &format!("{PREFIX}/subnets/10.244.1.0-24&fd00:10:244:1::-64"),
        ],
    );
    assert_eq!(
        raw.trim(),
        r#"{"PublicIP":"198.18.0.11","PublicIPv6":"fd00:198:18::11","BackendType":"host-gw","BackendData":null}"#
    );
    let (list, _) = s.list().await.unwrap();
    let l = list
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .find(|l| l.key.ends_with("&fd00:10:244:2::-64"))
        .unwrap();
    assert_eq!(
        (l.subnet, l.subnet6),
        (net("10.244.2.0/24"), Some("fd00:10:244:2::/64".parse().unwrap()))
    );
    assert!(s.renew(dual("10.244.1.0/24", "fd00:10:244:1::/64"), &a, ttl).await.unwrap());
    assert!(!s.renew(dual("10.244.1.0/24", "fd00:10:244:1::/64"), &b, ttl).await.unwrap());
}

/// How many `LeaseTimeToLive` requests etcd has answered, from its own `/metrics` (served on the
/// client URL): the lookups a listing or watch made.
fn lease_lookups(e: &Etcd) -> u64 {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(("127.0.0.1", e.client_port)).expect("connect to etcd");
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    assert!(body.contains("grpc_server_handled_total"), "no gRPC metrics from etcd: {body:.300}");
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_method=\"LeaseTimeToLive\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// ferryd's store handles (`AnyStore::open_pair`: [`EtcdStore::without_expiries`]) ask etcd for
/// no lease's expiry (one `LeaseTimeToLive` per key made a 20,000-lease start-up 10 times
/// slower): a key on an etcd lease is listed and watched as live until its delete
/// ([`until_deleted`]), a reservation stays one, a lease that runs out is seen removed, and a
/// claim keeps this node's subnet and never takes another node's. A store from `connect`
/// (ferryctl's) still shows real expiries.
#[tokio::test]
async fn ferryd_looks_up_no_expiry_and_keys_are_live_until_deleted() {
    use ferryd::lease::{claim, ClaimError};
    use ferryd::store::any::{AnyStore, StoreUrl};
    use ferryd::store::until_deleted;
    require_sandbox();
    let e = Etcd::start();
    let mut writer = store(&e).await;
    let ttl = Duration::from_secs(600);
    for (n, ip) in [("10.244.1.0/24", "198.18.0.11"), ("10.244.2.0/24", "198.18.0.12")] {
        assert!(writer.create(net(n), &attrs(ip), ttl).await.unwrap());
    }
    let reserved = r#"{"PublicIP":"198.18.0.99","BackendType":"host-gw","BackendData":null}"#;
    etcdctl_ok(&e, &["put", &format!("{PREFIX}/subnets/10.244.9.0-24"), reserved]);

    let mut settings = ferryd::args::Args::default().store;
    settings.url = StoreUrl::Etcd(vec![e.url()]);
    settings.etcd.request_timeout = Duration::from_secs(10);
    let metrics = std::sync::Arc::new(ferryd::metrics::Metrics::default());
    let (mut keeper, mut watcher) = AnyStore::open_pair(&settings, &metrics).await.unwrap();
    let before = lease_lookups(&e);
    let (list, rev) = watcher.list().await.unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    for n in ["10.244.1.0/24", "10.244.2.0/24"] {
        assert_eq!(find(&list, n).expires, Some(until_deleted()), "{n}");
    }
    assert_eq!(find(&list, "10.244.9.0/24").expires, None, "a reservation stays one");
    assert_eq!(keeper.list().await.unwrap().0, list);

    // A new key on a short etcd lease: watched as live, then removed when etcd expires it.
    let short = Duration::from_secs(2);
    assert!(writer.create(net("10.244.3.0/24"), &attrs("198.18.0.13"), short).await.unwrap());
    let key = "10.244.3.0-24";
    let rev = watch_until(&mut watcher, rev, WAIT, |ev| {
        matches!(ev, WatchEvent::Put(Ok(l)) if l.key == key && l.expires == Some(until_deleted()))
    })
    .await;
    watch_until(
        &mut watcher,
        rev,
        WAIT,
        |ev| matches!(ev, WatchEvent::Removed { key: k, .. } if k == key),
    )
    .await;
    assert_eq!(lease_lookups(&e), before, "no LeaseTimeToLive from ferryd's handles");

    // Claims: this node keeps (renews) its subnet; another node's live subnet is not free to a
    // node that remembers it.
    let n = ferryd::config::validate(&NetworkConfig::ipv4(net("10.244.0.0/16"))).unwrap();
    let mine = Subnets { v4: Some(net("10.244.1.0/24")), v6: None };
    let l = claim(&mut keeper, &n, &attrs("198.18.0.11"), mine, ttl).await.unwrap();
    assert_eq!(l.subnets(), mine);
    assert!((590.0..=601.0).contains(&secs_left(&l)), "own lease: {:?}", l.expires);
    let theirs = Subnets { v4: Some(net("10.244.2.0/24")), v6: None };
    match claim(&mut keeper, &n, &attrs("198.18.0.77"), theirs, ttl).await {
        Err(ClaimError::Taken { subnet, .. }) => assert_eq!(subnet, "10.244.2.0/24"),
        other => panic!("another node's live subnet claimed: {other:?}"),
    }
    assert_eq!(lease_lookups(&e), before, "claims look up no expiry either");

    // ferryctl's store (expiries on) still asks etcd: real expiries, within the TTL.
    let (full, _) = store(&e).await.list().await.unwrap();
    for n in ["10.244.1.0/24", "10.244.2.0/24"] {
        let left = secs_left(&find(&full, n));
        assert!(left > 500.0 && left <= 601.0, "{n}: {left}");
    }
    assert!(lease_lookups(&e) >= before + 2, "a store with expiries looks them up");
}

/// A private 3-member etcd cluster on 127.0.0.1, killed (by PID) on drop.
struct Cluster {
    procs: Vec<Proc>,
    client_ports: Vec<u16>,
    dir: TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        require_sandbox();
        let dir = TempDir::new("etcd3");
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers: Vec<String> =
            (0..3).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
        let initial: Vec<String> = (0..3).map(|k| format!("m{k}={}", peers[k])).collect();
        let mut procs = Vec::new();
        for k in 0..3 {
            let c = format!("http://127.0.0.1:{}", client_ports[k]);
            let log = std::fs::File::create(dir.join(&format!("m{k}.log"))).unwrap();
            let mut cmd = Command::new("/usr/bin/etcd");
            cmd.args(["--name", &format!("m{k}"), "--data-dir", &dir.path_str(&format!("d{k}"))])
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args(["--listen-peer-urls", &peers[k], "--initial-advertise-peer-urls", &peers[k]])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            procs.push(Proc::spawn("etcd", cmd));
        }
        let c = Cluster { procs, client_ports, dir };
        let up = testlab::wait_for(Duration::from_secs(60), || {
            c.etcdctl(&[0, 1, 2], &["endpoint", "health", "--cluster"]).status.success()
        });
        let logs: String = (0..3)
            .map(|k| std::fs::read_to_string(c.dir.join(&format!("m{k}.log"))).unwrap_or_default())
            .collect();
        assert!(up, "etcd cluster did not come up: {logs}");
        c
    }

    fn url(&self, k: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[k])
    }

    fn etcdctl(&self, members: &[usize], args: &[&str]) -> std::process::Output {
        let eps: Vec<String> = members.iter().map(|&k| self.url(k)).collect();
        etcdctl_at(&eps, "10s", args)
    }
}

/// `etcdctl` against the given client URLs.
fn etcdctl_at(urls: &[String], timeout: &str, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", urls.join(",")))
        .arg(format!("--command-timeout={timeout}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn etcdctl")
}

/// The watch runs on two members at once and merges them: every change arrives exactly once, in
/// revision order, also across a member hanging (SIGSTOP) in the middle, and both streams are
/// open while the cluster is whole (the `etcd_watch_streams` gauge).
#[tokio::test(flavor = "current_thread")]
async fn a_watch_on_two_members_delivers_each_change_once() {
    let c = Cluster::start();
    let m = std::sync::Arc::new(ferryd::metrics::Metrics::default());
    let cfg = EtcdConfig {
        endpoints: (0..3).map(|k| c.url(k)).collect(),
        request_timeout: Duration::from_secs(10),
        dial_timeout: Duration::from_secs(5),
        ..EtcdConfig::default()
    };
    let mut s =
        EtcdStore::connect_with_metrics(cfg, m.clone()).await.expect("connect").without_expiries();
    let (_, mut rev) = s.list().await.unwrap();
    let v = r#"{"PublicIP":"198.18.0.9","BackendType":"host-gw","BackendData":null}"#;
    let key = |i: usize| format!("{PREFIX}/subnets/10.244.{i}.0-24");
    let streams = |m: &ferryd::metrics::Metrics| {
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix("ferryd_etcd_watch_streams ")?.parse::<u32>().ok())
    };
    // Rounds of writes: 20 puts and the first 5 of them deleted again, then one more round
    // after member 0 hangs (the writes go through the other two).
    let mut puts = std::collections::BTreeMap::<String, usize>::new();
    let mut dels = std::collections::BTreeMap::<String, usize>::new();
    let mut wrote = 0;
    for round in 0..3 {
        if round == 2 {
            c.procs[0].signal(libc::SIGSTOP);
        }
        let via: Vec<usize> = if round == 2 { vec![1, 2] } else { vec![0, 1, 2] };
        let (c_eps, keys): (Vec<String>, Vec<usize>) =
            (via.iter().map(|&k| c.url(k)).collect(), (round * 20..round * 20 + 20).collect());
        let writer = std::thread::spawn({
            let (keys, v) = (keys.clone(), v.to_string());
            let put_keys: Vec<String> = keys.iter().map(|&i| key(i)).collect();
            move || {
                let ctl = |args: &[&str]| {
                    for _ in 0..20 {
                        let o = etcdctl_at(&c_eps, "3s", args);
                        if o.status.success() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100)); // an election
                    }
                    panic!("etcdctl {args:?} kept failing");
                };
                for k in &put_keys {
                    ctl(&["put", k, &v]);
                }
                for k in &put_keys[..5] {
                    ctl(&["del", k]);
                }
            }
        });
        wrote += 25;
        // Read until this round's 25 changes are in.
        let t0 = Instant::now();
        while puts.values().sum::<usize>() + dels.values().sum::<usize>() < wrote {
            let left = WAIT.saturating_sub(t0.elapsed());
            let (evs, r) = tokio::time::timeout(left, s.watch(rev))
                .await
                .unwrap_or_else(|_| panic!("round {round}: changes missing: {puts:?} {dels:?}"))
                .unwrap();
            assert!(r > rev, "revisions go forward: {rev} then {r}");
            rev = r;
            for e in evs {
                match e {
                    WatchEvent::Put(Ok(l)) => *puts.entry(l.key.clone()).or_default() += 1,
                    WatchEvent::Removed { key, .. } => *dels.entry(key).or_default() += 1,
                    other => panic!("unexpected event {other:?}"),
                }
            }
        }
        writer.join().unwrap();
        if round == 0 {
            assert_eq!(streams(&m), Some(2), "two watch streams:\n{}", m.render());
        }
    }
    // Nothing arrives twice: a late duplicate would show within a moment.
    if let Ok(Ok((evs, _))) = tokio::time::timeout(Duration::from_millis(500), s.watch(rev)).await {
        panic!("events after the last change: {evs:?}");
    }
    c.procs[0].signal(libc::SIGCONT);
    assert_eq!(puts.len(), 60, "{puts:?}");
    assert!(puts.values().all(|&n| n == 1), "a put delivered twice: {puts:?}");
    assert_eq!(dels.len(), 15, "{dels:?}");
    assert!(dels.values().all(|&n| n == 1), "a delete delivered twice: {dels:?}");
}
