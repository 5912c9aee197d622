//! `cni-bench`: CNI ADD/DEL latency of `ferry` vs the reference `ptp` + `host-local`, side by side,
//! plus the kernel floors: creating a bare veth pair with its peer in the pod
//! (`ip link add vkN type veth peer name eth0 netns <pod>`) and deleting it (`ip link del vkN`).
//!
//! Run through `bench/cni.sh [options]` (builds, then re-executes this inside `tests/sandbox.sh`).
//! Must run inside the sandbox: it creates a "node" namespace, enters it (setns, so every timed
//! process starts there exactly like a plugin started by a runtime on that node) and a fresh
//! pre-created pod namespace per trial.
//!
//! Each trial is one whole-process invocation timed with a monotonic clock from spawn to reaped
//! exit (`Instant` around spawn + stdin write + stdout drain + `wait4`); `wait4`'s rusage gives the
//! peak RSS of the process tree (the plugin and any IPAM child it waited for). Trials interleave
//! ferry / ptp / floor and alternate the order each iteration (ABC, CBA, ...) to cancel drift.
//!
//! Options:
//!   -n N              iterations per system (default 200)
//!   --warmup W        untimed warm-up iterations (default 5)
//!   --ferry PATH      the ferry binary (default <workspace>/target/release/ferry); its directory
//!                     is CNI_PATH for ferry (ferry-ipam lives there)
//!   --ref-dir DIR     the reference plugins (default /usr/lib/cni)
//!   --ptp-as-ferry    put ptp in the ferry slot (calibration: both columns should match)
//!   --floor-via-pod   time the floor DEL as `ip -n <pod> link del eth0` (pays iproute2's netns
//!                     switch: unshare + sysfs remount) instead of `ip link del <node end>`
//!   --nice N          run the bench (and so every timed process) at this nice level (default -10,
//!                     0 = unchanged): on a shared machine this keeps compile jobs from adding
//!                     scheduler wait to every spawn; kernel work (RCU, netns cleanup) is unaffected
//!   --data-root DIR   parent of the IPAM data dirs of both plugins (default /run: tmpfs, where
//!                     ferry keeps its state by default, /run/ferry/ipam); e.g. /tmp (disk) to
//!                     include storage cost (ferry fsyncs its state, host-local does not)
//!   --dual-stack      one IPv4 and one IPv6 address per pod on both sides: ferry reads a
//!                     dual-stack node subnet file (FLANNEL_SUBNET + FLANNEL_IPV6_SUBNET, as
//!                     ferryd writes it), host-local gets two ranges (a /16 and a /64)
//!   --out FILE        also write the markdown report to FILE

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testlab::{bin_dir, ok, require_sandbox};

mod benchkit;
use benchkit::{
    del_pods, die, enter_netns, fail, loadavg, machine, make_pods, percentile, ptp_plugin,
    set_nice, timed, Plugin, Run,
};

struct Opts {
    n: usize,
    warmup: usize,
    ferry: PathBuf,
    ref_dir: PathBuf,
    ptp_as_ferry: bool,
    floor_via_pod: bool,
    nice: i32,
    data_root: Option<PathBuf>,
    dual_stack: bool,
    out: Option<PathBuf>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        n: 200,
        warmup: 5,
        ferry: bin_dir().join("ferry"),
        ref_dir: PathBuf::from("/usr/lib/cni"),
        ptp_as_ferry: false,
        floor_via_pod: false,
        nice: -10,
        data_root: None,
        dual_stack: false,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val =
            |name: &str| it.next().unwrap_or_else(|| die(&format!("{name} needs a value")));
        match a.as_str() {
            "-n" | "--iterations" => {
                o.n = val("-n").parse().unwrap_or_else(|_| die("-n: not a number"))
            }
            "--warmup" => {
                o.warmup = val("--warmup").parse().unwrap_or_else(|_| die("--warmup: not a number"))
            }
            "--ferry" => o.ferry = PathBuf::from(val("--ferry")),
            "--ref-dir" => o.ref_dir = PathBuf::from(val("--ref-dir")),
            "--ptp-as-ferry" => o.ptp_as_ferry = true,
            "--floor-via-pod" => o.floor_via_pod = true,
            "--data-root" => o.data_root = Some(PathBuf::from(val("--data-root"))),
            "--nice" => {
                o.nice = val("--nice").parse().unwrap_or_else(|_| die("--nice: not a number"))
            }
            "--dual-stack" => o.dual_stack = true,
            "--out" => o.out = Some(PathBuf::from(val("--out"))),
            "-h" | "--help" => {
                println!("usage: cni-bench [-n N] [--warmup W] [--ferry PATH] [--ref-dir DIR] [--ptp-as-ferry] [--floor-via-pod] [--nice N] [--data-root DIR] [--dual-stack] [--out FILE]");
                std::process::exit(0);
            }
            _ => die(&format!("unknown argument {a:?}")),
        }
    }
    if o.n == 0 {
        die("-n must be > 0");
    }
    o
}

#[derive(Default)]
struct Series {
    ms: Vec<f64>,
}

impl Series {
    fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&self) -> (f64, f64, f64) {
        let mut s = self.ms.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (percentile(&s, 50.0), percentile(&s, 90.0), percentile(&s, 99.0))
    }
}

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn fmt_size(b: Option<u64>) -> String {
    match b {
        Some(b) if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.0} KiB", b as f64 / 1024.0),
        None => "(not built)".into(),
    }
}

fn median_i64(v: &[i64]) -> i64 {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

/// Every timed sample of one run.
#[derive(Default)]
struct Samples {
    f_add: Series,
    f_del: Series,
    p_add: Series,
    p_del: Series,
    k_add: Series,
    k_del: Series,
    f_rss: Vec<i64>,
    p_rss: Vec<i64>,
}

/// The two plugin columns: the ferry slot (ferry, or ptp for calibration or when ferry is
/// unusable) and the reference ptp + host-local.
struct Columns {
    ferry: Plugin,
    ptp: Plugin,
    ferry_is_real: bool,
    note: Option<String>,
    /// Addresses each ADD result must hold (2 with `--dual-stack`).
    ips: usize,
}

/// The IPAM data directory of both plugins, under `--data-root` (default /run, tmpfs).
fn data_dir(o: &Opts) -> testlab::TempDir {
    let root = o.data_root.clone().unwrap_or_else(|| PathBuf::from("/run"));
    let path = root.join(testlab::unique("ferry-bench-"));
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|e| die(&format!("mkdir {}: {e}", path.display())));
    testlab::TempDir { path }
}

/// The subnets of one column: a /16, and with `--dual-stack` also a /64.
fn subnets(o: &Opts, n: u8) -> Vec<String> {
    let mut v = vec![format!("10.{n}.0.0/16")];
    if o.dual_stack {
        v.push(format!("fd00:{n}::/64"));
    }
    v
}

/// Ferry's address keys: a static `subnet` (IPv4), or with `--dual-stack` the node subnet file
/// ferryd writes, with both families.
fn ferry_subnet(o: &Opts, tmp: &testlab::TempDir) -> (&'static str, String) {
    if !o.dual_stack {
        return ("subnet", "10.251.0.0/16".into());
    }
    let f = tmp.join("subnet.env");
    let text = "FLANNEL_NETWORK=10.251.0.0/16\nFLANNEL_SUBNET=10.251.0.1/16\n\
                FLANNEL_IPV6_NETWORK=fd00:251::/48\nFLANNEL_IPV6_SUBNET=fd00:251::/64\n\
                FLANNEL_MTU=1500\n";
    std::fs::write(&f, text).unwrap_or_else(|e| die(&format!("write {}: {e}", f.display())));
    ("subnetFile", f.to_string_lossy().into_owned())
}

fn columns(o: &Opts, tmp: &testlab::TempDir) -> Columns {
    // The reference pair: ptp + host-local, /16 like ferry's (and a /64 range for dual stack).
    let ptp_subnets = subnets(o, 252);
    let refs: Vec<&str> = ptp_subnets.iter().map(String::as_str).collect();
    let ptp =
        ptp_plugin("ptp + host-local", "benchptp", &refs, &o.ref_dir, tmp.path_str("host-local"));
    if let Err(e) = ptp.version() {
        die(&format!("reference ptp unusable: {e}"));
    }
    let (key, value) = ferry_subnet(o, tmp);
    let mut conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "ferry",
        "dataDir": tmp.path_str("ferry-ipam")
    });
    conf[key] = value.into();
    let ferry = Plugin {
        label: "ferry".into(),
        bin: o.ferry.clone(),
        cni_path: o.ferry.parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned(),
        conf,
    };
    let why_not = if o.ptp_as_ferry {
        Some("--ptp-as-ferry: the \"ferry\" column is ptp + host-local (calibration run)".into())
    } else if !o.ferry.exists() {
        Some(format!("{} not built; the \"ferry\" column is ptp + host-local", o.ferry.display()))
    } else {
        ferry.version().err().map(|e| {
            format!("ferry VERSION failed ({e}); the \"ferry\" column is ptp + host-local")
        })
    };
    if let Some(n) = &why_not {
        eprintln!("cni-bench: note: {n}");
    }
    let slot_subnets = subnets(o, 251);
    let refs: Vec<&str> = slot_subnets.iter().map(String::as_str).collect();
    let ferry = match why_not {
        None => ferry,
        Some(_) => ptp_plugin(
            "ptp + host-local (in ferry's slot)",
            "benchptp2",
            &refs,
            &o.ref_dir,
            tmp.path_str("host-local-2"),
        ),
    };
    let ips = if o.dual_stack { 2 } else { 1 };
    Columns { ferry, ptp, ferry_is_real: why_not.is_none(), note: why_not, ips }
}

/// One plugin ADD then DEL in a fresh pod namespace; returns (add, del). The result must hold
/// `ips` addresses (one per family).
fn plugin_trial(pl: &Plugin, id: &str, pod: &str, i: usize, ips: usize) -> (Run, Run) {
    let netns = format!("/run/netns/{pod}");
    let add = pl.invoke("ADD", id, &netns, None);
    if add.code != 0 {
        fail(&format!("{} ADD #{i}", pl.label), &add);
    }
    let res: Value = serde_json::from_str(add.stdout.trim()).unwrap_or_else(|e| {
        die(&format!("{} ADD #{i}: result not JSON ({e}): {}", pl.label, add.stdout))
    });
    if res["ips"].as_array().is_none_or(|a| a.len() != ips) {
        die(&format!("{} ADD #{i}: result without {ips} ips: {res}", pl.label));
    }
    let del = pl.invoke("DEL", id, &netns, Some(&res));
    if del.code != 0 {
        fail(&format!("{} DEL #{i}", pl.label), &del);
    }
    (add, del)
}

/// Kernel floor: a bare veth pair with its peer created in the pod as eth0, then its deletion,
/// each by a minimal whole process (`ip`), timed the same way. Deleting either end destroys the
/// pair. Default: the node-side end, from the node (no namespace switch); `--floor-via-pod`:
/// `ip -n <pod> link del eth0`, which also pays iproute2's netns switch (unshare + sysfs remount).
fn floor_trial(pod: &str, i: usize, via_pod: bool) -> (Run, Run) {
    let host_end = format!("vk{i}");
    let mut cmd = Command::new("ip");
    cmd.env_clear()
        .args(["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", pod]);
    let add = timed(cmd, "");
    if add.code != 0 {
        fail(&format!("floor `ip link add {host_end} type veth peer name eth0 netns {pod}`"), &add);
    }
    let mut cmd = Command::new("ip");
    if via_pod {
        cmd.env_clear().args(["-n", pod, "link", "del", "eth0"]);
    } else {
        cmd.env_clear().args(["link", "del", &host_end]);
    }
    let shown = format!("{cmd:?}");
    let del = timed(cmd, "");
    if del.code != 0 {
        fail(&format!("floor DEL #{i} ({shown})"), &del);
    }
    (add, del)
}

/// Warm-up plus timed iterations, interleaving ferry / ptp / floor in ABC, CBA, ... order.
fn run_trials(o: &Opts, c: &Columns) -> Samples {
    let total = o.warmup + o.n;
    eprintln!("cni-bench: creating {} pod namespaces ...", 3 * total);
    let pods: Vec<[String; 3]> = make_pods("bf", total)
        .into_iter()
        .zip(make_pods("bp", total))
        .zip(make_pods("bk", total))
        .map(|((f, p), k)| [f, p, k])
        .collect();
    let mut s = Samples::default();
    eprintln!("cni-bench: {} warm-up + {} timed iterations ...", o.warmup, o.n);
    for (i, trio) in pods.iter().enumerate() {
        let timed_iter = i >= o.warmup;
        let order: [usize; 3] = if i % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for which in order {
            let pod = &trio[which];
            let id = format!("bench-{which}-{i:06}");
            let (add, del) = match which {
                0 => plugin_trial(&c.ferry, &id, pod, i, c.ips),
                1 => plugin_trial(&c.ptp, &id, pod, i, c.ips),
                _ => floor_trial(pod, i, o.floor_via_pod),
            };
            if !timed_iter {
                continue;
            }
            let (adds, dels, rss) = match which {
                0 => (&mut s.f_add, &mut s.f_del, Some(&mut s.f_rss)),
                1 => (&mut s.p_add, &mut s.p_del, Some(&mut s.p_rss)),
                _ => (&mut s.k_add, &mut s.k_del, None),
            };
            adds.push(add.dur);
            dels.push(del.dur);
            if let Some(rss) = rss {
                rss.push(add.maxrss_kib);
            }
        }
    }
    del_pods(&pods.concat());
    s
}

/// What the report says about the run besides the samples.
struct RunInfo {
    load_before: String,
    load_after: String,
    nice: i32,
    data_fs: String,
    data_dir: PathBuf,
    leftover: String,
    wall: Duration,
}

fn latency_table(o: &Opts, c: &Columns, s: &Samples, flabel: &str) -> String {
    let row = |name: &str, p: (f64, f64, f64)| {
        format!("| {name} | {:.2} ms | {:.2} ms | {:.2} ms |\n", p.0, p.1, p.2)
    };
    let mut md = String::from("| operation | p50 | p90 | p99 |\n|---|---:|---:|---:|\n");
    md += &row(&format!("{flabel} ADD"), s.f_add.pct());
    md += &row(&format!("{} ADD", c.ptp.label), s.p_add.pct());
    md += &row(
        "kernel floor ADD (`ip link add … type veth peer name eth0 netns pod`)",
        s.k_add.pct(),
    );
    md += &row(&format!("{flabel} DEL"), s.f_del.pct());
    md += &row(&format!("{} DEL", c.ptp.label), s.p_del.pct());
    let floor_del = if o.floor_via_pod {
        "kernel floor DEL (`ip -n pod link del eth0`)"
    } else {
        "kernel floor DEL (`ip link del <node end>`)"
    };
    md += &row(floor_del, s.k_del.pct());
    md
}

fn metrics_table(s: &Samples, flabel: &str) -> String {
    let (fa, fd, pa, ka, kd) =
        (s.f_add.pct(), s.f_del.pct(), s.p_add.pct(), s.k_add.pct(), s.k_del.pct());
    let add_ratio = fa.0 / pa.0;
    // Drift-resistant cross-check: the median of per-iteration ratios (the trials of one
    // iteration run back to back, so slow phases of the machine hit both sides).
    let paired = {
        let mut r: Vec<f64> = s.f_add.ms.iter().zip(&s.p_add.ms).map(|(f, p)| f / p).collect();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        percentile(&r, 50.0)
    };
    let del_over = fd.0 - kd.0;
    let mark = |okk: bool| if okk { "✅" } else { "❌" };
    let rel = bin_dir();
    let mut md = String::from("\n| metric | value | target |\n|---|---:|---|\n");
    md += &format!(
        "| {flabel} ADD p50 / ptp ADD p50 | {add_ratio:.3} | ≤ 0.25 {} |\n",
        mark(add_ratio <= 0.25)
    );
    md += &format!(
        "| median of per-iteration ADD ratios ({flabel} / ptp) | {paired:.3} | (cross-check) |\n"
    );
    md += &format!(
        "| {flabel} DEL p50 − floor p50 | {del_over:.2} ms | ≤ 3 ms {} |\n",
        mark(del_over <= 3.0)
    );
    md += &format!(
        "| ADD p50 − veth-create floor p50 | {flabel}: {:.2} ms, ptp: {:.2} ms | (informational) |\n",
        fa.0 - ka.0,
        pa.0 - ka.0
    );
    md += &format!(
        "| peak RSS, one ADD (median over runs; plugin + IPAM child) | {flabel}: {} KiB, ptp: {} KiB | |\n",
        median_i64(&s.f_rss),
        median_i64(&s.p_rss)
    );
    md += &format!(
        "| release binary size | ferry: {}, ferry-ipam: {} | |\n",
        fmt_size(file_size(&rel.join("ferry"))),
        fmt_size(file_size(&rel.join("ferry-ipam")))
    );
    md
}

fn report(o: &Opts, c: &Columns, s: &Samples, info: &RunInfo) -> String {
    let flabel = if c.ferry_is_real { "ferry".to_string() } else { c.ferry.label.clone() };
    let mut md = format!(
        "### CNI ADD/DEL latency{}: {} vs reference ptp + host-local\n\n",
        if o.dual_stack { " (dual stack: one IPv4 + one IPv6 address per pod)" } else { "" },
        if c.ferry_is_real { "ferry" } else { "ptp in the ferry slot" }
    );
    md += &format!(
        "{} timed iterations per column (+{} warm-up), interleaved, whole-process spawn→exit, \
         fresh pod netns per trial; {}; load average {} before, {} after; nice {}; IPAM data \
         dirs on {} ({}).\n\n",
        o.n,
        o.warmup,
        machine(),
        info.load_before,
        info.load_after,
        info.nice,
        info.data_fs,
        info.data_dir.display()
    );
    md += &latency_table(o, c, s, &flabel);
    md += &metrics_table(s, &flabel);
    md += &format!(
        "\nCommand: `bench/cni.sh{}` (wall time {:.0} s)\n",
        std::env::args().skip(1).map(|a| format!(" {a}")).collect::<String>(),
        info.wall.as_secs_f64()
    );
    if let Some(n) = &c.note {
        md += &format!("\nNote: {n}\n");
    }
    if !info.leftover.trim().is_empty() {
        md += &format!(
            "\nWARNING: veths left in the node after all DELs:\n```\n{}```\n",
            info.leftover
        );
    }
    md
}

fn main() {
    let o = parse_opts();
    require_sandbox();
    set_nice(o.nice);
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let t0 = Instant::now();
    let tmp = data_dir(&o);
    let data_fs = ok("stat", ["-f", "-c", "%T", &tmp.path.to_string_lossy()]).trim().to_string();
    let cols = columns(&o, &tmp);

    // The node: a namespace this process enters, so every timed process starts in it.
    let node = "benchnode";
    let _ = Command::new("ip").args(["netns", "del", node]).stderr(Stdio::null()).status();
    ok("ip", ["netns", "add", node]);
    ok("ip", ["-n", node, "link", "set", "lo", "up"]);
    enter_netns(&format!("/run/netns/{node}"));

    let load_before = loadavg();
    let samples = run_trials(&o, &cols);
    // Leftovers a broken DEL would leave behind.
    let leftover = ok("ip", ["-o", "link", "show", "type", "veth"]);
    eprintln!("cni-bench: cleaning up ...");
    // Leave the node namespace's name behind us (we are still inside it; the mount goes away).
    let _ = Command::new("ip").args(["netns", "del", node]).stderr(Stdio::null()).status();

    let info = RunInfo {
        load_before,
        load_after: loadavg(),
        nice,
        data_fs,
        data_dir: tmp.path.clone(),
        leftover,
        wall: t0.elapsed(),
    };
    let md = report(&o, &cols, &samples, &info);
    println!("{md}");
    if let Some(p) = &o.out {
        std::fs::write(p, &md).unwrap_or_else(|e| die(&format!("write {}: {e}", p.display())));
    }
}
