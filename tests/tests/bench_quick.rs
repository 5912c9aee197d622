//! The benchmark's quick mode as a test (`bench/report.sh --quick` without the build and the
//! report): `cni-scale` with 30 pods and a storm of 50, then `bench/scale.py --quick` (500 and
//! 2,000 leases on etcd and the file store, 5 s of churn, 3 real nodes with pods, 5 daemons on one
//! etcd). Only sanity is asserted, never a timing: every call succeeds, IPs are distinct, every
//! route is present, the table matches the store after churn, nothing is left behind.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use testlab::{bin, bin_dir, output_bounded, require_sandbox, workspace, TempDir};

fn run_json(cmd: Command, json: &std::path::Path, what: &str) -> Value {
    let out = output_bounded(cmd, Duration::from_secs(300)).unwrap_or_else(|| {
        panic!("{what} did not finish within 300 s (a hang guard, not a timing)")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("{what}: no JSON: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: bad JSON: {e}"))
}

fn assert_clean(side: &Value, n: u64, what: &str) {
    let name = &side["name"];
    assert_eq!(side["add_failed"], 0, "{what} {name}: failed ADDs");
    assert_eq!(side["del_failed"], 0, "{what} {name}: failed DELs");
    assert_eq!(side["distinct_ips"], n, "{what} {name}: distinct IPs");
    assert_eq!(side["routes_present"], n, "{what} {name}: /32 routes after the ADDs");
    for (k, v) in side["leftover"].as_object().expect("leftover") {
        assert_eq!(v, 0, "{what} {name}: {k} left after the DELs");
    }
}

fn check_cni(v: &Value) {
    let n = v["density"]["n"].as_u64().unwrap();
    for side in v["density"]["sides"].as_array().unwrap() {
        assert_clean(side, n, "density");
        assert_eq!(side["add_ms"].as_array().unwrap().len() as u64, n);
    }
    let n = v["storm"]["n"].as_u64().unwrap();
    for round in v["storm"]["rounds"].as_array().unwrap() {
        for side in round["sides"].as_array().unwrap() {
            assert_clean(side, n, "storm");
        }
    }
}

fn check_scale_rows(v: &Value) {
    for r in v["scale"].as_array().unwrap() {
        let what = format!("cold start {} {}", r["store"], r["leases"]);
        assert!(r["startup_s"].is_number(), "{what}: never converged: {r}");
        assert_eq!(r["routes_seen"], r["expected_routes"], "{what}: route events");
        assert_eq!(r["routes_in_table"], r["expected_routes"], "{what}: routes in the table");
    }
    for c in v["churn"].as_array().unwrap() {
        let what = format!("churn {} {}", c["store"], c["leases"]);
        assert_eq!(c["missed"], 0, "{what}: changes never seen as route events");
        for k in ["missing", "extra", "wrong_gw"] {
            assert_eq!(c["final"][k], 0, "{what}: {k} routes against the store: {}", c["final"]);
        }
    }
}

fn check_scale_nodes(v: &Value) {
    let dp = &v["datapath"];
    for p in dp["pings"].as_array().unwrap() {
        assert_eq!(p["ok"], true, "datapath ping {} -> {} failed", p["src"], p["dst"]);
    }
    for (k, runs) in dp["gbps"].as_object().unwrap() {
        assert!(runs.as_array().unwrap().iter().all(Value::is_number), "iperf3 {k}: {runs}");
    }
    let dm = &v["daemons"];
    let n = dm["n"].as_u64().unwrap();
    assert!(dm["converge_s"].as_array().unwrap().iter().all(Value::is_number), "daemons: {dm}");
    assert_eq!(dm["distinct_subnets"], n, "daemons: subnets not distinct");
    assert_eq!(dm["alive"], n, "daemons: one exited");
    assert_eq!(dm["propagate_missed"], 0, "daemons: a new lease never reached one");
    assert_eq!(v["leftover_netns"], serde_json::json!([]), "namespaces left behind");
}

#[test]
fn bench_quick_is_sane() {
    require_sandbox();
    let tmp = TempDir::new("bench-quick");
    let cni_json = tmp.join("cni.json");
    let mut cmd = Command::new(bin("cni-scale"));
    cmd.args(["--density", "30", "--storm", "50", "--storm-rounds", "1", "--json"]).arg(&cni_json);
    check_cni(&run_json(cmd, &cni_json, "cni-scale"));

    let scale_json = tmp.join("scale.json");
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("bench/scale.py"))
        .args(["--quick", "--bin"])
        .arg(bin_dir())
        .arg("--json")
        .arg(&scale_json);
    let v = run_json(cmd, &scale_json, "bench/scale.py --quick");
    check_scale_rows(&v);
    check_scale_nodes(&v);
}
