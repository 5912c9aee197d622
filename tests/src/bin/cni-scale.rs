//! `cni-scale`: pod density and parallel storms on one node, `ferry` vs the reference `ptp` +
//! `host-local`, side by side in one run; every sample written as JSON for `bench/render.py`.
//!
//! Each plugin has a node namespace of its own (a node runs one pod network, and one plugin's
//! links and routes must not weigh on the other's calls), and so has the kernel floor below;
//! the calls interleave in time so both see the same machine.
//!
//! * density: N pods added one after another (ferry and ptp interleaved, order alternating per
//!   pod), then removed in the order they were added. Every call's whole-process time (spawn to
//!   reaped exit, as in `cni-bench`) is kept with its index, so cost against pod count is visible.
//! * storm: M ADDs launched at once (one thread per call, released by a barrier), then M DELs at
//!   once; per-call times and the wall time from the first spawn to the last exit. Rounds
//!   alternate which plugin goes first.
//!
//! Sanity is recorded, never asserted here: failed calls, distinct IPs, the /32 routes present
//! after the ADDs, and what is left after the DELs (veths, routes, IPAM allocations).
//! Must run inside `tests/sandbox.sh`; it enters a fresh node namespace, like `cni-bench`.
//!
//!   cni-scale [--density N] [--storm M] [--storm-rounds R] [--warmup W] [--ferry PATH]
//!             [--ref-dir DIR] [--nice N] --json FILE

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;
use testlab::{bin_dir, ok, require_sandbox, TempDir};

#[allow(dead_code)]
mod benchkit;
use benchkit::{die, loadavg, machine, ptp_plugin, set_nice, timed, Plugin, Run};

struct Opts {
    density: usize,
    storm: usize,
    storm_rounds: usize,
    warmup: usize,
    ferry: PathBuf,
    ref_dir: PathBuf,
    nice: i32,
    json: Option<PathBuf>,
}

fn num(name: &str, v: String) -> usize {
    v.parse().unwrap_or_else(|_| die(&format!("{name}: not a number: {v}")))
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        density: 250,
        storm: 200,
        storm_rounds: 2,
        warmup: 3,
        ferry: bin_dir().join("ferry"),
        ref_dir: PathBuf::from("/usr/lib/cni"),
        nice: -10,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--density" => o.density = num(&a, val()),
            "--storm" => o.storm = num(&a, val()),
            "--storm-rounds" => o.storm_rounds = num(&a, val()),
            "--warmup" => o.warmup = num(&a, val()),
            "--ferry" => o.ferry = PathBuf::from(val()),
            "--ref-dir" => o.ref_dir = PathBuf::from(val()),
            "--nice" => o.nice = val().parse().unwrap_or_else(|_| die("--nice: not a number")),
            "--json" => o.json = Some(PathBuf::from(val())),
            "-h" | "--help" => {
                println!("usage: cni-scale [--density N] [--storm M] [--storm-rounds R] [--warmup W] [--ferry PATH] [--ref-dir DIR] [--nice N] --json FILE");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a:?}")),
        }
    }
    o
}

/// One plugin under test: its invocation, the /16 it allocates from (as a string prefix for
/// route matching), and where its IPAM state lives.
struct Side {
    name: &'static str,
    /// This side's node namespace: entered before each of its calls and checks.
    node: Node,
    plugin: Plugin,
    net_prefix: &'static str,
    ipam_dir: PathBuf,
}

/// A node namespace (made with `lo` up) that this process's thread enters with [`Node::enter`];
/// children spawned afterwards start there.
struct Node {
    name: String,
    fd: std::fs::File,
}

impl Node {
    fn new(label: &str) -> Node {
        let name = testlab::unique(&format!("scalenode-{label}-"));
        ok("ip", ["netns", "add", &name]);
        ok("ip", ["-n", &name, "link", "set", "lo", "up"]);
        let path = format!("/run/netns/{name}");
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| die(&format!("open {path}: {e}")));
        Node { name, fd }
    }

    fn enter(&self) {
        use std::os::fd::AsRawFd;
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            die(&format!("setns {}: {}", self.name, std::io::Error::last_os_error()));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = testlab::run("ip", ["netns", "del", &self.name]);
    }
}

fn sides(o: &Opts, tmp: &TempDir) -> Vec<Side> {
    let ferry_data = tmp.join("ferry-ipam");
    let ferry = Plugin {
        label: "ferry".into(),
        bin: o.ferry.clone(),
        cni_path: o.ferry.parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned(),
        conf: json!({"cniVersion": "1.0.0", "name": "scale", "type": "ferry",
                     "subnet": "10.251.0.0/16", "dataDir": ferry_data}),
    };
    let ptp_data = tmp.join("host-local");
    let ptp = ptp_plugin(
        "ptp + host-local",
        "scaleptp",
        &["10.252.0.0/16"],
        &o.ref_dir,
        ptp_data.to_string_lossy().into_owned(),
    );
    for p in [&ferry, &ptp] {
        if let Err(e) = p.version() {
            die(&format!("{} unusable: {e}", p.label));
        }
    }
    vec![
        Side {
            name: "ferry",
            node: Node::new("ferry"),
            plugin: ferry,
            net_prefix: "10.251.",
            ipam_dir: ferry_data,
        },
        Side {
            name: "ptp",
            node: Node::new("ptp"),
            plugin: ptp,
            net_prefix: "10.252.",
            ipam_dir: ptp_data,
        },
    ]
}

/// Create pod namespaces in one `ip -batch` (untimed).
fn make_netns(prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let batch: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    let path = std::env::temp_dir().join(testlab::unique("cni-scale-batch-"));
    std::fs::write(&path, batch).unwrap_or_else(|e| die(&format!("write batch: {e}")));
    ok("ip", ["-batch", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    names
}

fn drop_netns(names: &[String]) {
    let batch: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    let path = std::env::temp_dir().join(testlab::unique("cni-scale-batch-"));
    if std::fs::write(&path, batch).is_ok() {
        let _ = testlab::run("ip", ["-force", "-batch", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
    }
}

/// The pod IP of a successful ADD result, if any.
fn result_ip(r: &Run) -> Option<(Value, String)> {
    if r.code != 0 {
        return None;
    }
    let v: Value = serde_json::from_str(r.stdout.trim()).ok()?;
    let ip = v["ips"][0]["address"].as_str()?.split('/').next()?.to_string();
    Some((v, ip))
}

fn ms(r: &Run) -> f64 {
    r.dur.as_secs_f64() * 1000.0
}

/// Host routes (`/32`) in this node namespace whose destination is in the side's /16.
fn routes_in(side: &Side) -> usize {
    side.node.enter();
    let out = ok("ip", ["-4", "-j", "route", "show"]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["dst"].as_str())
                .filter(|d| d.starts_with(side.net_prefix) && !d.contains('/'))
                .count()
        })
        .unwrap_or(0)
}

/// IPAM allocations still recorded: ferry's state.json `allocations`, host-local's per-IP files.
fn ipam_left(side: &Side) -> usize {
    let Ok(rd) = std::fs::read_dir(&side.ipam_dir) else { return 0 };
    let mut n = 0;
    for net in rd.flatten() {
        let state = net.path().join("state.json");
        if let Ok(s) = std::fs::read_to_string(&state) {
            let v: Value = serde_json::from_str(&s).unwrap_or(Value::Null);
            n += v["allocations"].as_object().map(|m| m.len()).unwrap_or(0);
        } else if let Ok(files) = std::fs::read_dir(net.path()) {
            n += files
                .flatten()
                .filter(|f| {
                    let name = f.file_name().to_string_lossy().into_owned();
                    name != "lock" && !name.starts_with("last_reserved_ip")
                })
                .count();
        }
    }
    n
}

/// What a side left behind after its DELs.
fn leftover(side: &Side) -> Value {
    side.node.enter();
    let veths = ok("ip", ["-o", "link", "show", "type", "veth"]).lines().count();
    json!({"veths": veths, "routes": routes_in(side), "ipam": ipam_left(side)})
}

/// Untimed ADD + DEL pairs so the first timed call does not pay cold page caches.
fn warm_up(o: &Opts, sides: &[Side]) {
    let pods = make_netns("sw", o.warmup * sides.len());
    for (i, pod) in pods.iter().enumerate() {
        let side = &sides[i % sides.len()];
        let ns = format!("/run/netns/{pod}");
        let id = format!("warm-{i}");
        side.node.enter();
        let add = side.plugin.invoke("ADD", &id, &ns, None);
        let prev = result_ip(&add).map(|(v, _)| v);
        side.plugin.invoke("DEL", &id, &ns, prev.as_ref());
    }
    drop_netns(&pods);
}

/// Per-side samples of the density run.
#[derive(Default)]
struct Density {
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    add_failed: usize,
    del_failed: usize,
    results: Vec<Option<Value>>,
    ips: std::collections::HashSet<String>,
}

// Indexes pods[side][pod] with the pod number driving both sides.
#[allow(clippy::needless_range_loop)]
/// The plugins' ADDs for pod 1..n, and after each pod's the kernel floor's (its ms per pod).
fn density_add(
    sides: &[Side],
    pods: &[Vec<String>],
    n: usize,
    floor: &(Node, Vec<String>),
) -> (Vec<Density>, Vec<f64>) {
    let mut d: Vec<Density> = sides.iter().map(|_| Density::default()).collect();
    let mut floor_ms = Vec::with_capacity(n);
    for i in 0..n {
        let order: Vec<usize> =
            if i % 2 == 0 { (0..sides.len()).collect() } else { (0..sides.len()).rev().collect() };
        for s in order {
            let ns = format!("/run/netns/{}", pods[s][i]);
            sides[s].node.enter();
            let r = sides[s].plugin.invoke("ADD", &format!("dens-{i}"), &ns, None);
            d[s].add_ms.push(ms(&r));
            match result_ip(&r) {
                Some((v, ip)) => {
                    d[s].ips.insert(ip);
                    d[s].results.push(Some(v));
                }
                None => {
                    d[s].add_failed += 1;
                    d[s].results.push(None);
                    eprintln!(
                        "cni-scale: {} ADD #{i} failed: {}{}",
                        sides[s].name, r.stdout, r.stderr
                    );
                }
            }
        }
        floor.0.enter();
        floor_ms.push(floor_step("ADD", i, &floor.1[i]));
    }
    (d, floor_ms)
}

#[allow(clippy::needless_range_loop)]
/// The DELs in the order of the ADDs, each pod's followed by the kernel floor's (returned).
fn density_del(
    sides: &[Side],
    pods: &[Vec<String>],
    d: &mut [Density],
    floor: &(Node, Vec<String>),
) -> Vec<f64> {
    let n = pods[0].len();
    let mut floor_ms = Vec::with_capacity(n);
    for i in 0..n {
        let order: Vec<usize> =
            if i % 2 == 0 { (0..sides.len()).collect() } else { (0..sides.len()).rev().collect() };
        for s in order {
            let ns = format!("/run/netns/{}", pods[s][i]);
            let prev = d[s].results[i].clone();
            sides[s].node.enter();
            let r = sides[s].plugin.invoke("DEL", &format!("dens-{i}"), &ns, prev.as_ref());
            d[s].del_ms.push(ms(&r));
            if r.code != 0 {
                d[s].del_failed += 1;
                eprintln!("cni-scale: {} DEL #{i} failed: {}{}", sides[s].name, r.stdout, r.stderr);
            }
        }
        floor.0.enter();
        floor_ms.push(floor_step("DEL", i, &floor.1[i]));
    }
    floor_ms
}

/// The kernel's own share, pod by pod: a bare veth pair with its peer created in pod `i` as
/// eth0 by a minimal whole process (`ip`), timed like the plugins, after their ADDs for pod `i`
/// (so the namespace holds as many interfaces as theirs do); deleted after their DELs.
fn floor_step(verb: &str, i: usize, pod: &str) -> f64 {
    let host_end = format!("vk{i}");
    let mut cmd = std::process::Command::new("ip");
    cmd.env_clear();
    match verb {
        "ADD" => cmd
            .args(["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", pod]),
        _ => cmd.args(["link", "del", &host_end]),
    };
    let r = timed(cmd, "");
    if r.code != 0 {
        eprintln!("cni-scale: floor {verb} #{i} failed: {}{}", r.stdout, r.stderr);
        return f64::NAN;
    }
    ms(&r)
}

fn density(o: &Opts, sides: &[Side]) -> Value {
    eprintln!("cni-scale: density: {} pods per plugin ...", o.density);
    let pods: Vec<Vec<String>> =
        sides.iter().map(|s| make_netns(&format!("d{}", &s.name[..1]), o.density)).collect();
    let floor = (Node::new("floor"), make_netns("dk", o.density));
    let t0 = Instant::now();
    let (mut d, floor_add) = density_add(sides, &pods, o.density, &floor);
    let routes: Vec<usize> = sides.iter().map(routes_in).collect();
    let floor_del = density_del(sides, &pods, &mut d, &floor);
    let wall = t0.elapsed().as_secs_f64();
    drop_netns(&pods.concat());
    drop_netns(&floor.1);
    let per_side: Vec<Value> = sides
        .iter()
        .zip(&d)
        .zip(&routes)
        .map(|((s, d), r)| {
            json!({"name": s.name, "label": s.plugin.label, "add_ms": d.add_ms, "del_ms": d.del_ms,
                   "add_failed": d.add_failed, "del_failed": d.del_failed,
                   "distinct_ips": d.ips.len(), "routes_present": r, "leftover": leftover(s)})
        })
        .collect();
    json!({"n": o.density, "warmup": o.warmup, "wall_s": wall, "sides": per_side,
           "floor": {"label": "kernel floor (ip link add veth, peer in the pod; own node namespace)", "add_ms": floor_add, "del_ms": floor_del}})
}

/// M calls at once, one thread each, released together; (start, Run) per call.
fn burst(side: &Side, verb: &str, pods: &[String], prev: &[Option<Value>]) -> Vec<(Instant, Run)> {
    side.node.enter(); // the threads start in this thread's namespace
    let gate = Barrier::new(pods.len());
    std::thread::scope(|sc| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let gate = &gate;
                let p = prev.get(i).cloned().flatten();
                sc.spawn(move || {
                    let ns = format!("/run/netns/{pod}");
                    gate.wait();
                    let start = Instant::now();
                    (start, side.plugin.invoke(verb, &format!("storm-{i}"), &ns, p.as_ref()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("storm thread")).collect()
    })
}

fn wall_ms(runs: &[(Instant, Run)]) -> f64 {
    let first = runs.iter().map(|(s, _)| *s).min().unwrap();
    let last = runs.iter().map(|(s, r)| *s + r.dur).max().unwrap();
    (last - first).as_secs_f64() * 1000.0
}

fn storm_side(side: &Side, n: usize, round: usize) -> Value {
    let pods = make_netns(&format!("s{}{round}x", &side.name[..1]), n);
    let adds = burst(side, "ADD", &pods, &[]);
    let results: Vec<Option<(Value, String)>> = adds.iter().map(|(_, r)| result_ip(r)).collect();
    let ips: std::collections::HashSet<&String> =
        results.iter().flatten().map(|(_, ip)| ip).collect();
    let routes = routes_in(side);
    let prev: Vec<Option<Value>> =
        results.iter().map(|r| r.as_ref().map(|(v, _)| v.clone())).collect();
    let dels = burst(side, "DEL", &pods, &prev);
    for (i, (_, r)) in
        adds.iter().chain(&dels).enumerate().filter(|(_, (_, r))| r.code != 0).take(3)
    {
        eprintln!("cni-scale: {} storm call {i} failed: {}{}", side.name, r.stdout, r.stderr);
    }
    drop_netns(&pods);
    json!({"name": side.name, "label": side.plugin.label,
           "add_wall_ms": wall_ms(&adds), "del_wall_ms": wall_ms(&dels),
           "add_ms": adds.iter().map(|(_, r)| ms(r)).collect::<Vec<_>>(),
           "del_ms": dels.iter().map(|(_, r)| ms(r)).collect::<Vec<_>>(),
           "add_failed": adds.iter().filter(|(_, r)| r.code != 0).count(),
           "del_failed": dels.iter().filter(|(_, r)| r.code != 0).count(),
           "distinct_ips": ips.len(), "routes_present": routes, "leftover": leftover(side)})
}

fn storm(o: &Opts, sides: &[Side]) -> Value {
    let mut rounds = Vec::new();
    for round in 0..o.storm_rounds {
        eprintln!(
            "cni-scale: storm round {round}: {} ADDs then {} DELs at once ...",
            o.storm, o.storm
        );
        let order: Vec<usize> = if round % 2 == 0 {
            (0..sides.len()).collect()
        } else {
            (0..sides.len()).rev().collect()
        };
        let per: Vec<Value> =
            order.iter().map(|&s| storm_side(&sides[s], o.storm, round)).collect();
        rounds.push(json!({"order": order.iter().map(|&s| sides[s].name).collect::<Vec<_>>(), "sides": per}));
    }
    json!({"n": o.storm, "rounds": rounds})
}

fn main() {
    let o = parse_opts();
    require_sandbox();
    set_nice(o.nice);
    let t0 = Instant::now();
    let tmp = TempDir { path: PathBuf::from("/run").join(testlab::unique("ferry-scale-")) };
    std::fs::create_dir_all(&tmp.path).unwrap_or_else(|e| die(&format!("mkdir: {e}")));
    let sides = sides(&o, &tmp);
    let load_before = loadavg();
    warm_up(&o, &sides);
    let density = if o.density > 0 { density(&o, &sides) } else { Value::Null };
    let storm = if o.storm > 0 { storm(&o, &sides) } else { Value::Null };
    drop(sides); // their node namespaces
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let out = json!({"machine": machine(), "nice": nice, "load_before": load_before,
                     "load_after": loadavg(), "wall_s": t0.elapsed().as_secs_f64(),
                     "density": density, "storm": storm});
    let text = serde_json::to_string(&out).unwrap();
    match &o.json {
        Some(p) => {
            std::fs::write(p, text).unwrap_or_else(|e| die(&format!("write {}: {e}", p.display())))
        }
        None => println!("{text}"),
    }
}
