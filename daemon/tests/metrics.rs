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
