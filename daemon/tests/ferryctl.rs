//! `ferryctl` on a 3-node lab, against the file store and etcd: `lease`, `leases` (table and
//! --json, an ignored entry with its reason), `routes` (in sync; then a route deleted by hand,
//! a stale proto-113 route and a wrong gateway while ferryd is stopped: exit 1 naming each;
//! in sync again once ferryd is back), `ipam` after adding pods, `gc` dry-run and --apply.
//! Run inside the sandbox: `tests/sandbox.sh cargo test -p ferryd --offline --test ferryctl`.

mod common;

use common::{add_pod, Family, Lab, Store};
use serde_json::Value;
use std::time::Duration;
use testlab::{bin, output_bounded};

const T: Duration = Duration::from_secs(10);

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }
}

/// `ferryctl ARGS` in node `i`'s namespace after the node's ferryd flags (so ARGS win).
fn ctl(lab: &Lab, i: usize, args: &[&str]) -> Out {
    let mut c = lab.nodes[i].ns.cmd(bin("ferryctl"));
    c.args(lab.args(i)).args(args);
    let o = output_bounded(c, Duration::from_secs(30)).expect("ferryctl still running after 30 s");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn lease(lab: &Lab, subnets: &[String]) {
    let o = ctl(lab, 0, &["lease"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    for want in [subnets[0].as_str(), "198.18.0.11", "host-gw", "held", "(in 23h59m)"] {
        assert!(o.stdout.contains(want), "{want} missing:\n{}", o.stdout);
    }
    println!("ferryctl lease:\n{}", o.stdout);
    let j = ctl(lab, 0, &["lease", "--json"]).json();
    assert_eq!(
        (j["subnet"].as_str(), j["held"].as_bool()),
        (Some(subnets[0].as_str()), Some(true))
    );
    assert_eq!(j["public_ip"], "198.18.0.11");
    assert!(j["expires_in_seconds"].as_i64().unwrap() > 23 * 3600, "{j}");
}

fn leases(lab: &Lab, subnets: &[String]) {
    lab.put_lease("10.244.50.0-024", r#"{"PublicIP":"198.18.0.99","BackendType":"host-gw"}"#);
    let o = ctl(lab, 1, &["leases"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    println!("ferryctl leases:\n{}", o.stdout);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].starts_with("LEASE ") && lines[0].contains("PUBLIC IP"), "{}", o.stdout);
    for (i, s) in subnets.iter().enumerate() {
        let row = lines.iter().find(|l| l.starts_with(&format!("{s} "))).expect(s);
        assert!(row.contains(&lab.nodes[i].ip) && row.contains("host-gw"), "{row}");
        assert!(row.ends_with(if i == 1 { "this node" } else { "peer" }), "{row}");
    }
    let bad = lines.iter().find(|l| l.starts_with("10.244.50.0-024")).expect("bad entry");
    assert!(bad.contains("ignored: non-canonical key"), "{bad}");
    assert!(o.stdout.contains("4 entries: 1 this node, 2 peers, 0 expired, 1 ignored"));
    let j = ctl(lab, 1, &["leases", "--json"]).json();
    let all = j["leases"].as_array().unwrap();
    assert_eq!(all.len(), 4, "{j}");
    let mine: Vec<&Value> = all.iter().filter(|l| l["status"] == "this node").collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0]["subnet"].as_str(), mine[0]["public_ip"].as_str()),
        (Some(subnets[1].as_str()), Some("198.18.0.12"))
    );
    let bad = all.iter().find(|l| l["status"] == "ignored").unwrap();
    assert_eq!(bad["key"], "10.244.50.0-024");
    assert!(bad["reason"].as_str().unwrap().starts_with("non-canonical key"), "{bad}");
    lab.del_lease("10.244.50.0-024");
}

fn routes_in_sync(lab: &Lab, i: usize) {
    let o = ctl(lab, i, &["routes"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("in sync: 2 wanted, 2 ok, 0 missing, 0 wrong gateway, 0 stale"),
        "{}",
        o.stdout
    );
    assert_eq!(ctl(lab, i, &["routes", "--json"]).json()["in_sync"], true);
}

/// ferryd stopped on node 0; one peer route deleted, the other's gateway changed, a stale
/// proto-113 route added: exit 1 naming all three.
fn routes_differ(lab: &mut Lab, subnets: &[String]) {
    assert!(lab.stop(0).unwrap().success());
    let ns = &lab.nodes[0].ns;
    ns.ip(&["route", "del", &subnets[1]]);
    ns.ip(&["route", "replace", &subnets[2], "via", "198.18.0.12", "proto", "113"]);
    let stale =
        (99..=254).map(|k| format!("10.244.{k}.0/24")).find(|s| !subnets.contains(s)).unwrap();
    ns.ip(&["route", "add", &stale, "via", "198.18.0.13", "proto", "113"]);
    let o = ctl(lab, 0, &["routes"]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    println!("ferryctl routes (differences):\n{}", o.stdout);
    let row = |dst: &str| {
        o.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{dst} ")))
            .unwrap_or_else(|| panic!("{dst}: {}", o.stdout))
            .to_string()
    };
    assert!(row(&subnets[1]).ends_with("missing"), "{}", o.stdout);
    let wrong = row(&subnets[2]);
    assert!(
        wrong.contains("198.18.0.13")
            && wrong.contains("198.18.0.12")
            && wrong.ends_with("wrong gateway"),
        "{wrong}"
    );
    assert!(row(&stale).ends_with("stale"), "{}", o.stdout);
    assert!(o.stdout.contains("DIFFERENT: 2 wanted, 0 ok, 1 missing, 1 wrong gateway, 1 stale"));
    let j = ctl(lab, 0, &["routes", "--json"]).json();
    assert_eq!(j["in_sync"], false);
    let states: Vec<&str> =
        j["routes"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states.len(), 3, "{j}");
    let before = lab.log(0).len();
    lab.start(0, &[]);
    lab.wait_routes(0, &lab.expected(0, &[0, 1, 2]), T);
    routes_in_sync(lab, 0);
    // The start-up repair is one INFO line; its per-route lines are DEBUG.
    let log = lab.log(0)[before..].to_string();
    let want = "INFO routes programmed at start-up: 2 peers, 2 routed, 0 unreachable, 3 route \
                changes in ";
    assert!(log.contains(want), "{log}");
    assert!(!log.contains("INFO route "), "{log}");
}

fn ipam_and_gc(lab: &Lab) {
    let (_p1, ip1) = add_pod(lab, 2, "c1");
    let (_p2, ip2) = add_pod(lab, 2, "c2");
    let o = ctl(lab, 2, &["ipam"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    println!("ferryctl ipam:\n{}", o.stdout);
    for (ip, id) in [(&ip1, "c1"), (&ip2, "c2")] {
        let row = o.stdout.lines().find(|l| l.starts_with(&format!("{ip} "))).expect(ip);
        assert!(row.contains(id) && row.ends_with("eth0"), "{row}");
    }
    let j = ctl(lab, 2, &["ipam", "--json"]).json();
    assert_eq!(j["allocations"].as_array().unwrap().len(), 2, "{j}");
    let dry = ctl(lab, 2, &["gc", "--valid", "c1/eth0"]);
    assert_eq!(dry.code, Some(1), "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains(&ip2) && !dry.stdout.contains(&format!("{ip1} ")),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("would release 1 allocation of"), "{}", dry.stdout);
    assert_eq!(
        ctl(lab, 2, &["ipam", "--json"]).json()["allocations"].as_array().unwrap().len(),
        2,
        "dry run"
    );
    let done = ctl(lab, 2, &["gc", "--valid", "c1/eth0", "--apply", "--json"]);
    assert_eq!(done.code, Some(0), "{}{}", done.stdout, done.stderr);
    assert_eq!(done.json()["released"][0]["ip"], ip2.as_str());
    let left = ctl(lab, 2, &["ipam", "--json"]).json();
    assert_eq!(left["allocations"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["allocations"][0]["container_id"], "c1");
    assert_eq!(ctl(lab, 2, &["gc", "--valid", "c1/eth0"]).code, Some(0), "nothing left to release");
}

fn usage_and_failures(lab: &Lab) {
    assert_eq!(ctl(lab, 0, &["frobnicate"]).code, Some(2));
    assert_eq!(ctl(lab, 0, &["gc", "--apply"]).code, Some(2), "--apply needs --valid");
    let h = ctl(lab, 0, &["--help"]);
    assert!(h.code == Some(0) && h.stdout.contains("USAGE: ferryctl"), "{}", h.stdout);
    assert!(ctl(lab, 0, &["--version"]).stdout.starts_with("ferryctl "));
    let o = ctl(lab, 0, &["leases", "--store", "file:///nonexistent/ferryctl"]);
    assert_eq!(o.code, Some(3), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("/nonexistent/ferryctl"), "{}", o.stderr);
}

fn all(kind: Store) {
    let (mut lab, subnets) = Lab::three(kind, T);
    lease(&lab, &subnets);
    leases(&lab, &subnets);
    routes_in_sync(&lab, 1);
    routes_differ(&mut lab, &subnets);
    ipam_and_gc(&lab);
    usage_and_failures(&lab);
}

#[test]
fn file_ferryctl() {
    all(Store::File)
}

#[test]
fn etcd_ferryctl() {
    all(Store::Etcd)
}

/// `ferryctl` on a dual-stack lab: `lease` names both subnets and addresses, `leases` shows
/// flannel's dual-stack keys with both addresses, `routes` compares both families (a missing
/// IPv6 route and a stale one exit 1, named).
fn dual_stack(kind: Store) {
    let mut lab = Lab::with_family(kind, Family::Dual, 3, true);
    for i in 0..3 {
        lab.start(i, &[]);
    }
    let keys = lab.wait_leases(&[0, 1, 2]);
    for i in 0..3 {
        lab.wait_all_routes(i, &[0, 1, 2], T);
    }
    let s6: Vec<String> = (0..3).map(|i| lab.subnet6(i).unwrap()).collect();
    let o = ctl(&lab, 0, &["lease"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    println!("ferryctl lease (dual-stack):\n{}", o.stdout);
    for want in [&lab.subnet(0).unwrap(), &s6[0], "fd00:198:18::11", "198.18.0.11", "held"] {
        assert!(o.stdout.contains(want), "{want} missing:\n{}", o.stdout);
    }
    let j = ctl(&lab, 0, &["lease", "--json"]).json();
    assert_eq!(
        (j["key"].as_str(), j["subnet6"].as_str()),
        (Some(keys[0].as_str()), Some(s6[0].as_str()))
    );
    assert_eq!(j["public_ipv6"], "fd00:198:18::11");
    let o = ctl(&lab, 1, &["leases"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    println!("ferryctl leases (dual-stack):\n{}", o.stdout);
    for (i, k) in keys.iter().enumerate() {
        let row = o.stdout.lines().find(|l| l.starts_with(&format!("{k} "))).expect(k);
        let ips = format!("{} {}", lab.nodes[i].ip, lab.nodes[i].ip6);
        assert!(row.contains(&ips), "{row}");
        assert!(row.ends_with(if i == 1 { "this node" } else { "peer" }), "{row}");
    }
    let o = ctl(&lab, 0, &["routes"]);
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("in sync: 4 wanted, 4 ok"), "{}", o.stdout);
    assert!(lab.stop(0).unwrap().success());
    let ns = &lab.nodes[0].ns;
    ns.ip(&["-6", "route", "del", &s6[1]]);
    ns.ip(&["-6", "route", "add", "fd00:10:244:fe::/64", "via", "fd00:198:18::13", "proto", "113"]);
    let o = ctl(&lab, 0, &["routes"]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    println!("ferryctl routes (dual-stack, differences):\n{}", o.stdout);
    let row = |dst: &str| {
        o.stdout.lines().find(|l| l.starts_with(&format!("{dst} "))).map(str::to_string)
    };
    assert!(row(&s6[1]).is_some_and(|r| r.ends_with("missing")), "{}", o.stdout);
    assert!(row("fd00:10:244:fe::/64").is_some_and(|r| r.ends_with("stale")), "{}", o.stdout);
    assert!(
        o.stdout.contains("DIFFERENT: 4 wanted, 3 ok, 1 missing, 0 wrong gateway, 1 stale"),
        "{}",
        o.stdout
    );
}

#[test]
fn file_ferryctl_dual_stack() {
    dual_stack(Store::File)
}

#[test]
fn etcd_ferryctl_dual_stack() {
    dual_stack(Store::Etcd)
}
