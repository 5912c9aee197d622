//! Shared by the benchmark binaries (`cni-bench`, `cni-scale`): whole-process timing of a plugin
//! invocation (spawn to reaped exit, `wait4` rusage for peak RSS), the CNI invocation itself, pod
//! namespaces, percentiles and a description of the machine.

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testlab::ok;

/// Print `<program>: msg` and exit 2.
pub fn die(msg: &str) -> ! {
    let prog = std::env::args().next().unwrap_or_default();
    let prog = prog.rsplit('/').next().unwrap_or("bench");
    eprintln!("{prog}: {msg}");
    std::process::exit(2);
}

/// One finished process: wall time spawn→reaped, exit status, output, peak RSS (KiB).
pub struct Run {
    pub dur: Duration,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub maxrss_kib: i64,
}

/// Spawn `cmd` with `stdin`, drain its output, reap it with wait4; all inside the timed region.
pub fn timed(mut cmd: Command, stdin: &str) -> Run {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child =
        cmd.spawn().unwrap_or_else(|e| die(&format!("spawn {:?}: {e}", cmd.get_program())));
    {
        let mut si = child.stdin.take().unwrap();
        if !stdin.is_empty() {
            let _ = si.write_all(stdin.as_bytes());
        }
    } // closed: EOF for the plugin
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    // Outputs are small (a result or an error object, far below the pipe buffer), so draining
    // stdout to EOF and then stderr cannot deadlock.
    let mut out = Vec::with_capacity(4096);
    let _ = so.read_to_end(&mut out);
    let mut err = Vec::new();
    let _ = se.read_to_end(&mut err);
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break r;
    };
    let dur = start.elapsed();
    if r != pid {
        die(&format!("wait4({pid}): {}", std::io::Error::last_os_error()));
    }
    // `child` was reaped by wait4; forget it so std never waits on a recycled PID.
    std::mem::forget(child);
    let code =
        if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
    Run {
        dur,
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        maxrss_kib: ru.ru_maxrss,
    }
}

/// A CNI plugin invocation, as a runtime does it: CNI_* environment, config on stdin.
pub struct Plugin {
    pub label: String,
    pub bin: PathBuf,
    pub cni_path: String,
    pub conf: Value,
}

impl Plugin {
    pub fn invoke(&self, command: &str, id: &str, netns: &str, prev: Option<&Value>) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path);
        let mut conf = self.conf.clone();
        if let Some(p) = prev {
            // libcni (spec >= 0.4.0) passes the cached ADD result as prevResult on CHECK and DEL.
            conf["prevResult"] = p.clone();
        }
        timed(cmd, &conf.to_string())
    }

    pub fn version(&self) -> Result<Value, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear().env("CNI_COMMAND", "VERSION").env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let r = timed(cmd, r#"{"cniVersion":"1.0.0"}"#);
        if r.code != 0 {
            return Err(format!("VERSION exited {}: {}{}", r.code, r.stdout, r.stderr));
        }
        let v: Value = serde_json::from_str(r.stdout.trim())
            .map_err(|e| format!("VERSION output {:?}: {e}", r.stdout))?;
        if !v["supportedVersions"].as_array().is_some_and(|a| a.iter().any(|s| s == "1.0.0")) {
            return Err(format!("VERSION does not list 1.0.0: {v}"));
        }
        Ok(v)
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Pre-create pod namespaces (untimed).
pub fn make_pods(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            ok("ip", ["netns", "add", &name]);
            name
        })
        .collect()
}

pub fn del_pods(names: &[String]) {
    for n in names {
        let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
    }
}

pub fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| die(&format!("open {path}: {e}")));
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        die(&format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().next().unwrap_or("?").to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn set_nice(nice: i32) {
    if nice != 0 {
        // Children inherit the nice value.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("cni-bench: setpriority({nice}): {e} (continuing)");
        }
    }
}

/// The reference ptp + host-local, one host-local range per subnet (one address per family for
/// a dual-stack pair) and a default route per family.
pub fn ptp_plugin(
    label: &str,
    name: &str,
    subnets: &[&str],
    ref_dir: &Path,
    data: String,
) -> Plugin {
    let ranges: Vec<Value> = subnets.iter().map(|s| serde_json::json!([{"subnet": s}])).collect();
    let routes: Vec<Value> = subnets
        .iter()
        .map(|s| serde_json::json!({"dst": if s.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
        .collect();
    Plugin {
        label: label.into(),
        bin: ref_dir.join("ptp"),
        cni_path: ref_dir.to_string_lossy().into_owned(),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": name, "type": "ptp", "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": data}
        }),
    }
}

pub fn fail(what: &str, r: &Run) -> ! {
    die(&format!(
        "{what} failed (exit {}): stdout={} stderr={}",
        r.code,
        r.stdout.trim(),
        r.stderr.trim()
    ))
}

/// The machine, for the report: `uname -srm`, CPU count and model.
pub fn machine() -> String {
    let uname = ok("uname", ["-srm"]).trim().to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let model = if model.is_empty() { String::new() } else { format!(" ({model})") };
    format!("{uname}, {cpus} CPUs{model}")
}
