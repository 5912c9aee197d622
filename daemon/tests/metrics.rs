//! `--metrics-address` in the lab: /healthz, /readyz and /metrics before the lease exists, once
//! it is held, and during a store outage. Each node scrapes its own loopback (its namespace).
//! Run inside the sandbox: `tests/sandbox.sh cargo test -p ferryd --offline --test metrics`.

mod common;

use common::{Lab, Store};
use std::time::Duration;
use testlab::wait_for;

const T: Duration = Duration::from_secs(10);

fn get(lab: &Lab, i: usize, path: &str) -> (u16, String) {
    common::http_get(lab, i, path)
}

fn gauge(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

fn scrape_through_a_life(kind: Store) {
    let mut lab = Lab::with_store(kind, 2, false);
    lab.start(0, &[]);
    assert!(wait_for(T, || get(&lab, 0, "/healthz").0 == 200), "{}", lab.log(0));
    assert_eq!(get(&lab, 0, "/readyz").0, 503, "no lease yet");
    let m = get(&lab, 0, "/metrics").1;
    assert_eq!(gauge(&m, "ferryd_lease_held"), Some(0.0), "{m}");
    lab.store_up();
    lab.start(1, &[]);
    lab.wait_subnets(&[0, 1]);
    lab.wait_routes(0, &lab.expected(0, &[0, 1]), T);
    assert!(wait_for(T, || get(&lab, 0, "/readyz").0 == 200), "{}", lab.log(0));
    let m = get(&lab, 0, "/metrics").1;
    for (name, v) in [
        ("ferryd_lease_held", 1.0),
        ("ferryd_peers", 1.0),
        ("ferryd_routes_programmed", 1.0),
        ("ferryd_store_reachable", 1.0),
    ] {
        assert_eq!(gauge(&m, name), Some(v), "{name}:\n{m}");
    }
    assert!(gauge(&m, "ferryd_lease_seconds_to_expiry").unwrap() > 3600.0, "{m}");
    assert!(m.contains("ferryd_reconcile_duration_seconds_count "), "{m}");
    assert!(m.contains("ferryd_peers_ignored{reason=\"noncanonical_key\"} 0"), "{m}");
    // A store outage: still healthy, store unreachable.
    let away = lab.dir.join("store-away");
    match kind {
        Store::File => std::fs::rename(lab.store_dir(), &away).unwrap(),
        Store::Etcd => lab.etcd_down(),
    }
    let down =
        wait_for(T, || gauge(&get(&lab, 0, "/metrics").1, "ferryd_store_reachable") == Some(0.0));
    assert!(down, "store_reachable stays 1:\n{}", lab.log(0));
    assert_eq!(get(&lab, 0, "/healthz").0, 200);
    assert!(lab.log(0).contains("INFO metrics address: http://127.0.0.1:9473/metrics"));
}

#[test]
fn file_scrape_through_a_life() {
    scrape_through_a_life(Store::File)
}

#[test]
fn etcd_scrape_through_a_life() {
    scrape_through_a_life(Store::Etcd)
}

fn heartbeat_age(lab: &Lab) -> Duration {
    let hb = gauge(&get(lab, 0, "/metrics").1, "ferryd_loop_heartbeat_unix_ms").expect("heartbeat");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    now.saturating_sub(Duration::from_millis(hb as u64))
}

/// /healthz asks the event loop itself. An idle daemon whose loop has not woken for longer than
/// the old rule's 3 s floor (`--resync 1h`: no sweep runs) is healthy. A loop wedged in a hung
/// `nft` (a sweep after the ferry table was deleted; `--nft` points at a wrapper that waits for
/// a gate file to go) answers nothing: the responder shares the loop's thread, so the probe
/// gets no answer at all (curl gives up after 2 s; the kubelet after its timeout), /metrics
/// neither. Once nft returns, /healthz is 200 again and the table is back.
#[test]
fn healthz_asks_the_event_loop() {
    let mut lab = Lab::new(Store::File, 1);
    let (gate, entered) = (lab.dir.join("nft-hangs"), lab.dir.join("nft-entered"));
    let wrapper = lab.dir.join("nft-gated");
    let script = format!(
        "#!/bin/sh\nif [ -e {g} ]; then touch {e}; while [ -e {g} ]; do sleep 0.05; done; fi\nexec nft \"$@\"\n",
        g = gate.display(),
        e = entered.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    lab.start(0, &["--resync", "1h", "--nft", &wrapper.display().to_string()]);
    lab.wait_subnets(&[0]);
    assert!(wait_for(T, || get(&lab, 0, "/readyz").0 == 200), "{}", lab.log(0));
    assert_eq!(get(&lab, 0, "/healthz"), (200, "ok\n".into()));
    // Idle: nothing wakes the loop (scraping /metrics does not), then /healthz does.
    std::thread::sleep(Duration::from_millis(4500));
    let age = heartbeat_age(&lab);
    assert!(age > Duration::from_secs(4), "the idle loop woke {age:?} ago:\n{}", lab.log(0));
    assert_eq!(get(&lab, 0, "/healthz"), (200, "ok\n".into()), "idle, heartbeat {age:?} old");
    assert!(heartbeat_age(&lab) < Duration::from_secs(1), "a /healthz ask wakes the loop");

    // Wedge the loop in nft.
    std::fs::write(&gate, "").unwrap();
    let o = lab.nodes[0].ns.sh("nft delete table ip ferry");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lab.signal(0, libc::SIGUSR2);
    assert!(wait_for(T, || entered.exists()), "nft not run:\n{}", lab.log(0));
    let t0 = std::time::Instant::now();
    assert_eq!(get(&lab, 0, "/healthz").0, 0, "answered while the loop is stuck in nft");
    assert!(t0.elapsed() >= Duration::from_millis(1900), "no answer, after curl's 2 s");
    assert_eq!(get(&lab, 0, "/metrics").0, 0, "the responder shares the loop's thread");

    // nft returns: healthy again, table back.
    std::fs::remove_file(&gate).unwrap();
    assert!(wait_for(T, || get(&lab, 0, "/healthz").0 == 200), "{}", lab.log(0));
    assert!(lab.nft_table(0).is_some(), "table not restored:\n{}", lab.log(0));
    assert!(lab.running(0));
}
