//! The container image (conf-examples/Containerfile, built by conf-examples/build-image.sh with
//! podman, offline, FROM scratch) runs as the daemon of a lab node: on that node's network
//! namespace (what `hostNetwork: true` gives a DaemonSet pod), with the store and the node's
//! files mounted in, NET_ADMIN only. The node gets its lease and its routes, its peers route it,
//! and pods on every node ping each other.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use testlab::{bin_dir, workspace, Proc};

const T: Duration = Duration::from_secs(15);
const IMAGE: &str = "localhost/ferry:lab";

/// podman with its own storage under the lab dir (vfs: no overlay mounts needed) and settings
/// that work without systemd or cgroup v2 delegation (cgroupfs, runc).
struct Podman {
    global: Vec<String>,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let root = dir.join("podman-root");
        let run = dir.join("podman-run");
        let global = [
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            run.to_str().unwrap(),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            "--runtime",
            "runc",
        ]
        .map(String::from)
        .to_vec();
        Podman { global }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(&self.global);
        c
    }

    fn build(&self) {
        let out = Command::new(workspace().join("conf-examples/build-image.sh"))
            .arg(IMAGE)
            .env("PODMAN", format!("podman {}", self.global.join(" ")))
            .env("FERRY_BIN_DIR", bin_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run build-image.sh");
        assert!(
            out.status.success(),
            "image build: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Removes the container however the test ends (the foreground `podman run` is stopped by the
/// lab like any ferryd; this catches what a panic leaves).
struct Container<'a>(&'a Podman, &'a str);

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.0.cmd().args(["rm", "-f", "-t", "2", self.1]).output();
    }
}

fn require_podman() {
    for tool in ["podman", "runc"] {
        let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(ok, "{tool} is not installed: tests/install-deps.sh installs it");
    }
}

/// `podman run` of the image as node `i`'s daemon, with the lab's flags.
fn run_in_container(lab: &Lab, podman: &Podman, i: usize, name: &str) -> Command {
    let mounts: Vec<PathBuf> = vec![lab.store_dir(), lab.nodes[i].dir.clone()];
    let mut c = podman.cmd();
    c.args(["run", "--rm", "--name", name, "--network"])
        .arg(format!("ns:{}", lab.nodes[i].ns.path()))
        .args(["--cap-drop", "ALL", "--cap-add", "NET_ADMIN"])
        // This machine's CI lacks CAP_SYS_RESOURCE: ask for limits no higher than it has.
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]);
    for m in &mounts {
        c.arg("-v").arg(format!("{0}:{0}", m.display()));
    }
    c.arg(IMAGE).args(lab.args(i));
    c
}

#[test]
fn the_image_runs_as_a_nodes_daemon_and_its_pods_ping_across() {
    require_podman();
    let mut lab = Lab::new(Store::File, 3);
    let podman = Podman::new(&lab.dir.path);
    podman.build();
    // A Kubernetes node prerequisite: the pod sees /proc/sys read-only, so ferryd only checks it.
    lab.nodes[2].ns.sh("sysctl -qw net.ipv4.ip_forward=1");
    lab.start(0, &[]);
    lab.start(1, &[]);
    let _guard = Container(&podman, "ferryd-n2");
    let mut c = run_in_container(&lab, &podman, 2, "ferryd-n2");
    let log = std::fs::File::create(lab.log_path(2)).unwrap();
    c.stdout(log.try_clone().unwrap()).stderr(log).stdin(Stdio::null());
    lab.nodes[2].proc = Some(Proc::spawn("podman-ferryd-n2", c));

    let subnets = lab.wait_subnets(&[0, 1, 2]);
    for i in 0..3 {
        lab.wait_routes(i, &lab.expected(i, &[0, 1, 2]), T);
    }
    let masq = lab.nft_table(2).unwrap_or_default();
    assert!(masq.contains("masquerade"), "nft from the image set up masquerade: {masq}");
    let pods: Vec<_> = (0..3).map(|i| add_pod(&lab, i, &format!("img{i}"))).collect();
    for (a, (pa, _)) in pods.iter().enumerate() {
        for (b, (_, ipb)) in pods.iter().enumerate() {
            if a != b {
                assert!(pa.ping(ipb), "pod{a} -> pod{b} ({ipb})\n{}", lab.log(2));
            }
        }
    }
    println!(
        "image: node 2's ferryd ran from {IMAGE} and holds {}; 6/6 cross-node pod pings",
        subnets[2]
    );
    assert!(lab.stop(2).is_some(), "the container stops on SIGTERM");
}
