//! `testlab`: the harness Ferry's integration tests share.
//!
//! Every test that touches networking calls [`require_sandbox`] first: it fails (never skips) unless
//! the process runs in a private network namespace, as `tests/run.sh` arranges with
//! `unshare --net --mount`. Everything a test creates (namespaces, processes, directories) is owned
//! by a guard that removes it on drop, so a failing test still cleans up.

use serde_json::Value;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique within this test process run: `<prefix><pid % 10000>x<n>`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 10000)
}

/// Panic unless this process is in a network namespace other than PID 1's, with only `lo` in it
/// when it started. Networking tests must never run in the machine's root namespace.
pub fn require_sandbox() {
    let me = std::fs::metadata("/proc/self/ns/net").expect("stat /proc/self/ns/net");
    // The kernel's initial network namespace always has inode PROC_NET_INIT_INO (0xEFFFFFF9,
    // fixed since Linux 3.8): refuse it even when PID 1's namespace cannot be inspected.
    const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;
    assert!(
        me.ino() != PROC_NET_INIT_INO,
        "refusing to run: this is the kernel's initial network namespace. Run the suite through \
         tests/sandbox.sh, which enters a throw-away `unshare --net --mount` sandbox."
    );
    // PID 1's namespace may be unreadable (EACCES when PID 1 belongs to a container manager);
    // then the inode check above is what protects the root namespace.
    let init = match std::fs::metadata("/proc/1/ns/net") {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(e) => {
            panic!("stat /proc/1/ns/net: {e} (tests must run as root, inside tests/sandbox.sh)")
        }
    };
    assert!(
        init.is_none_or(|init| me.ino() != init.ino() || me.dev() != init.dev()),
        "refusing to run: this is the root network namespace. Run the suite through tests/run.sh, \
         which enters a throw-away `unshare --net --mount` sandbox."
    );
    assert_eq!(
        std::env::var("FERRY_SANDBOX").as_deref(),
        Ok("1"),
        "refusing to run: FERRY_SANDBOX=1 is not set; run through tests/run.sh"
    );
}

/// Workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Directory of the built binaries: `$FERRY_BIN_DIR`, else the `release` directory beside the
/// profile directory this test binary was built in (`<target>/<triple>/debug/deps/x` →
/// `<target>/<triple>/release`), whatever the host triple and target dir.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "debug" || n == "release"))
        .and_then(Path::parent)
        .map(|t| t.join("release"))
        .unwrap_or_else(|| workspace().join("target/release"))
}

/// Path of a built Ferry binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} not built: run `cargo build --release --workspace` first", p.display());
    p
}

/// Run a command and return its output; panics if it cannot be spawned.
pub fn run<I, S>(prog: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"))
}

/// Run a command and panic unless it succeeds; returns stdout.
pub fn ok<I, S>(prog: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> =
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let out = run(prog, &args);
    assert!(
        out.status.success(),
        "`{prog} {}` failed: {}{}",
        shown.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Shell snippet, must succeed; returns stdout.
pub fn sh(script: &str) -> String {
    ok("sh", ["-c", script])
}

/// Poll `f` until it returns true or `timeout` passes. Returns whether it became true.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_sandbox();
        let name = unique(prefix);
        ok("ip", ["netns", "add", &name]);
        ok("ip", ["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`, must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        ok("ip", a)
    }

    /// `ip -j -n <ns> <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j", "-n", &self.name];
        a.extend_from_slice(args);
        let out = ok("ip", a);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j output: {e}: {out}"))
    }

    /// A command to run inside this namespace (`nsenter --net=<path> prog`).
    pub fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(prog);
        c
    }

    /// Run a shell snippet inside this namespace; returns the output (any exit status).
    pub fn sh(&self, script: &str) -> Output {
        self.cmd("sh").args(["-c", script]).stdin(Stdio::null()).output().expect("nsenter sh")
    }

    /// `ping -c1 -W1` from this namespace; true if answered.
    pub fn ping(&self, addr: &str) -> bool {
        self.cmd("ping")
            .args(["-c", "1", "-W", "1", "-q", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// True once every link but `lo` is operationally up with its queueing discipline
    /// attached. The kernel does both asynchronously after carrier comes on (the linkwatch work
    /// item, delayed under load); until then a link has the `noop` qdisc, which drops what is
    /// sent, so a single ping sent right after a CNI ADD can be lost with its ARP request.
    pub fn links_ready(&self) -> bool {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] == "lo" || (l["operstate"] == "UP" && l["qdisc"] != "noop"))
    }

    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.cmd("cat").arg(path).output().expect("cat sysctl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ =
            Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(&format!("ferry-{prefix}-")));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
    pub fn path_str(&self, p: &str) -> String {
        self.path.join(p).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (SIGTERM, then SIGKILL after 3 s) and reaped on drop. Only processes this
/// harness started are ever signalled, by PID.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let child =
            cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child: Some(child), name: name.to_string() }
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// Send a signal by PID (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }
    /// SIGTERM and wait up to `timeout`; returns the exit status if it exited in time.
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    /// SIGKILL now and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Result of one plugin invocation.
#[derive(Debug)]
pub struct CniOut {
    pub rc: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    /// stdout parsed as JSON (panics with the output when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {:?} stderr: {}", self.stdout, self.stderr)
        })
    }
    /// The error code of a failed call (panics unless rc != 0 and stdout holds an error object).
    pub fn code(&self) -> u64 {
        assert_ne!(self.rc, 0, "expected failure, got success: {}", self.stdout);
        let v = self.json();
        assert!(v["msg"].is_string(), "error without msg: {v}");
        v["code"].as_u64().unwrap_or_else(|| panic!("error without code: {v}"))
    }
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.rc, 0, "plugin failed: stdout={} stderr={}", self.stdout, self.stderr);
        self
    }
}

/// Invoke a CNI plugin binary like a runtime does: `env` (CNI_* and friends) + config on stdin,
/// run inside the namespace `host` (the node), or in the current namespace when `None`.
pub fn cni(host: Option<&Netns>, plugin: &Path, env: &[(&str, &str)], stdin: &str) -> CniOut {
    use std::io::Write;
    let mut cmd = match host {
        Some(ns) => ns.cmd(plugin),
        None => Command::new(plugin),
    };
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", plugin.display()));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    CniOut {
        rc: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The reference-libcni conformance driver (`tests/go/libcni-driver`, built by `tests/go/build.sh`
/// to `<workspace>/target/go/libcni-driver`). `$FERRY_LIBCNI_DRIVER` overrides the path. Panics with
/// the build hint when it is missing.
pub fn libcni_driver() -> PathBuf {
    let p = std::env::var_os("FERRY_LIBCNI_DRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/go/libcni-driver"));
    assert!(
        p.exists(),
        "{} not built: run `tests/go/build.sh` (offline Go build against Debian's \
         golang-github-appc-cni-dev)",
        p.display()
    );
    p
}

/// Run the libcni driver inside the node namespace `host`, as a runtime would run libcni there:
/// `args` are the driver's arguments, e.g.
/// `["add", "--confdir", dir, "--name", "net", "--netns", pod.path(), "--id", "c1", "--ifname", "eth0",
///   "--bindir", bins]`. The driver prints the ADD result (converted by libcni to the conflist's
/// version) or, on failure, the plugin's CNI error object `{"code","msg","details"}` on stdout, so
/// [`CniOut::json`] and [`CniOut::code`] work as for [`cni`]. Bounded: killed after 120 s.
pub fn libcni(host: &Netns, args: &[&str]) -> CniOut {
    libcni_env(host, args, &[])
}

/// [`libcni`] with extra environment variables for the driver (and so for the plugins it runs).
pub fn libcni_env(host: &Netns, args: &[&str], env: &[(&str, &str)]) -> CniOut {
    let driver = libcni_driver();
    let mut cmd = host.cmd(&driver);
    cmd.args(args);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Ok(v) = std::env::var("FERRY_SANDBOX") {
        cmd.env("FERRY_SANDBOX", v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_bounded(cmd, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("libcni-driver {args:?} did not finish within 120 s (killed)"));
    CniOut {
        rc: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `cmd` (stdin null, stdout/stderr captured) in a process group of its own, waiting at most
/// `timeout`; on expiry the group (the child and whatever it started) is killed, the child reaped
/// and `None` returned.
pub fn output_bounded(mut cmd: Command, timeout: Duration) -> Option<Output> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    // Its own process group: past the timeout the whole group goes, so nothing it started
    // (a bench's etcd and daemons) outlives it holding the pipes or the sandbox.
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) on the child's own process group (its pid, see process_group(0)).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Some(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Every pod IP (without prefix) of a 0.3.0+ CNI result, in order.
pub fn pod_ips(r: &Value) -> Vec<String> {
    let ips = r["ips"].as_array().unwrap_or_else(|| panic!("result without ips: {r}"));
    ips.iter().map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().into()).collect()
}

/// A small deterministic generator (xorshift64*) for generated-input tests: the same seed gives
/// the same cases, with no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// [`Rng::below`] as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.index(v.len())]
    }
}
