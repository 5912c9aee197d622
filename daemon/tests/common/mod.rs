//! A multi-node host-gw lab for ferryd: an underlay namespace with a bridge (198.18.0.1/24),
//! N node namespaces (eth0 198.18.0.1x/24), one `ferryd` per node, and a shared lease store (a
//! directory, or a real etcd in the underlay namespace). Everything is torn down on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use testlab::{bin, bin_dir, cni, ok, require_sandbox, wait_for, Netns, Proc, TempDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    File,
    Etcd,
}

pub const PREFIX: &str = "/coreos.com/network";
pub const ETCD_URL: &str = "http://198.18.0.1:2379";

pub struct Node {
    pub ns: Netns,
    pub ip: String,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
}

pub struct Lab {
    pub kind: Store,
    pub nodes: Vec<Node>,
    pub etcd: Option<Proc>,
    pub underlay: Netns,
    pub dir: TempDir,
    /// Extra flags every ferryd of this lab gets.
    pub common: Vec<String>,
}

impl Lab {
    /// Underlay + `n` nodes; the store is created (etcd started) but no ferryd runs yet.
    pub fn new(kind: Store, n: usize) -> Lab {
        Lab::with_store(kind, n, true)
    }

    pub fn with_store(kind: Store, n: usize, store_up: bool) -> Lab {
        require_sandbox();
        let dir = TempDir::new("lab");
        let underlay = Netns::new("ful");
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&["addr", "add", "198.18.0.1/24", "dev", "br0"]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let mut lab = Lab {
            kind,
            nodes: Vec::new(),
            etcd: None,
            underlay,
            dir,
            common: vec!["--resync".into(), "300ms".into()],
        };
        for _ in 0..n {
            lab.add_node();
        }
        if store_up {
            lab.store_up();
        }
        lab
    }

    /// Three nodes running ferryd, each with its lease and every peer route in place (waiting up
    /// to `timeout` for the routes). Returns the lab and the nodes' subnets.
    pub fn three(kind: Store, timeout: Duration) -> (Lab, Vec<String>) {
        let mut lab = Lab::new(kind, 3);
        for i in 0..3 {
            lab.start(i, &[]);
        }
        let subnets = lab.wait_subnets(&[0, 1, 2]);
        for i in 0..3 {
            lab.wait_routes(i, &lab.expected(i, &[0, 1, 2]), timeout);
        }
        (lab, subnets)
    }

    /// Add a node namespace wired to the underlay (not started). Returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let ns = Netns::new("fnd");
        let ip = format!("198.18.0.{}", 11 + i);
        let port = format!("v{i}");
        self.underlay
            .ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        self.underlay.ip(&["link", "set", &port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let dir = self.dir.join(&format!("n{i}"));
        fs::create_dir_all(&dir).unwrap();
        self.nodes.push(Node { ns, ip, dir, proc: None });
        i
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn store_url(&self) -> String {
        match self.kind {
            Store::File => format!("file://{}", self.store_dir().display()),
            Store::Etcd => "etcd://198.18.0.1:2379".into(),
        }
    }

    /// Make the store reachable: create the directory / start etcd and wait until it serves.
    pub fn store_up(&mut self) {
        match self.kind {
            Store::File => fs::create_dir_all(self.store_dir()).unwrap(),
            Store::Etcd => {
                let data = self.dir.join("etcd-data");
                let mut c = self.underlay.cmd("etcd");
                c.args(["--name", "lab", "--data-dir"]).arg(&data).args([
                    "--listen-client-urls",
                    ETCD_URL,
                    "--advertise-client-urls",
                    ETCD_URL,
                    "--listen-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-cluster",
                    "lab=http://127.0.0.1:2380",
                    "--election-timeout",
                    "100",
                    "--heartbeat-interval",
                    "10",
                ]);
                let log = fs::File::create(self.dir.join("etcd.log")).unwrap();
                c.stdout(log.try_clone().unwrap()).stderr(log);
                self.etcd = Some(Proc::spawn("etcd", c));
                let up = wait_for(Duration::from_secs(15), || {
                    self.etcdctl(&["endpoint", "health"]).status.success()
                });
                assert!(
                    up,
                    "etcd did not come up: {}",
                    fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                );
            }
        }
    }

    /// Stop etcd (SIGTERM, reaped) / nothing for the file store.
    pub fn etcd_down(&mut self) {
        if let Some(mut p) = self.etcd.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.underlay
            .cmd("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", ETCD_URL, "--dial-timeout", "1s", "--command-timeout", "2s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl")
    }

    pub fn args(&self, i: usize) -> Vec<String> {
        let d = &self.nodes[i].dir;
        let mut v: Vec<String> = vec![
            "--store".into(),
            self.store_url(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            d.join("subnet.env").display().to_string(),
            "--cni-conf-dir".into(),
            d.join("net.d").display().to_string(),
            "--cni-data-dir".into(),
            d.join("cni-data").display().to_string(),
            "--etcd-dial-timeout".into(),
            "500ms".into(),
            "--etcd-request-timeout".into(),
            "1s".into(),
        ];
        v.extend(self.common.iter().cloned());
        v
    }

    /// Start ferryd on node `i` with the lab's flags plus `extra`; its stderr goes to `n<i>.log`.
    pub fn start(&mut self, i: usize, extra: &[&str]) {
        assert!(self.nodes[i].proc.is_none(), "node {i} already runs ferryd");
        let mut c = self.nodes[i].ns.cmd(bin("ferryd"));
        c.args(self.args(i)).args(extra);
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        self.nodes[i].proc = Some(Proc::spawn(&format!("ferryd-n{i}"), c));
    }

    /// Run ferryd to completion (e.g. `--uninstall`, or a config it must refuse).
    pub fn run_once(
        &self,
        i: usize,
        extra: &[&str],
        timeout: Duration,
    ) -> (Option<ExitStatus>, String) {
        let mut c = self.nodes[i].ns.cmd(bin("ferryd"));
        c.args(self.args(i)).args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut p = Proc::spawn("ferryd-once", c);
        let start = Instant::now();
        let mut st = None;
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = p.child.as_mut().unwrap().try_wait() {
                st = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = if st.is_some() {
            let o = p.child.take().unwrap().wait_with_output().unwrap();
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
        } else {
            String::new()
        };
        (st, out)
    }

    /// SIGTERM ferryd on node `i`; returns its exit status.
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        self.nodes[i].proc.take().and_then(|mut p| p.stop(Duration::from_secs(5)))
    }

    /// SIGKILL ferryd on node `i` (no chance to clean up) and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill9();
        }
    }

    pub fn running(&mut self, i: usize) -> bool {
        self.nodes[i].proc.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(&format!("n{i}.log"))
    }

    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn conflist(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("net.d/10-ferry.conflist")
    }

    /// Node `i`'s subnet from its subnet file (`10.244.7.0/24`).
    pub fn subnet(&self, i: usize) -> Option<String> {
        let text = fs::read_to_string(self.nodes[i].dir.join("subnet.env")).ok()?;
        let v = text.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
        let n: ipnetwork::Ipv4Network = v.parse().ok()?;
        Some(format!("{}/{}", n.network(), n.prefix()))
    }

    /// Wait until every running node has a subnet file; returns the subnets.
    pub fn wait_subnets(&self, idx: &[usize]) -> Vec<String> {
        let ok = wait_for(Duration::from_secs(10), || {
            idx.iter().all(|&i| self.subnet(i).is_some() && self.conflist(i).exists())
        });
        assert!(
            ok,
            "nodes {idx:?} got no lease: {}",
            idx.iter().map(|&i| self.log(i)).collect::<String>()
        );
        idx.iter().map(|&i| self.subnet(i).unwrap()).collect()
    }

    /// Ferry's routes on node `i`: dst → gateway.
    pub fn routes(&self, i: usize) -> BTreeMap<String, String> {
        let v = self.nodes[i].ns.ip_json(&["route", "show", "proto", "113"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap_or("").to_string(),
                    r["gateway"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// What node `i` should route: every other node in `peers` (subnet via its IP).
    pub fn expected(&self, i: usize, peers: &[usize]) -> BTreeMap<String, String> {
        peers
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| (self.subnet(j).unwrap(), self.nodes[j].ip.clone()))
            .collect()
    }

    /// Wait until node `i`'s Ferry routes equal `want`.
    pub fn wait_routes(&self, i: usize, want: &BTreeMap<String, String>, timeout: Duration) {
        let ok = wait_for(timeout, || &self.routes(i) == want);
        assert!(ok, "node {i}: routes {:?}, want {want:?}\nlog:\n{}", self.routes(i), self.log(i));
    }

    /// Write a lease by hand: `key` like `10.244.9.0-24`, `value` the JSON as stored.
    pub fn put_lease(&self, key: &str, value: &str) {
        match self.kind {
            Store::File => {
                let tmp = self.store_dir().join(format!(".{key}.tmp"));
                fs::write(&tmp, value).unwrap();
                fs::rename(&tmp, self.store_dir().join(key)).unwrap();
            }
            Store::Etcd => {
                let o = self.etcdctl(&["put", &format!("{PREFIX}/subnets/{key}"), value]);
                assert!(o.status.success(), "etcdctl put: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }

    pub fn del_lease(&self, key: &str) {
        match self.kind {
            Store::File => {
                let _ = fs::remove_file(self.store_dir().join(key));
            }
            Store::Etcd => {
                let o = self.etcdctl(&["del", &format!("{PREFIX}/subnets/{key}")]);
                assert!(o.status.success(), "etcdctl del: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }

    /// The stored lease value for `key`, if any.
    pub fn get_lease(&self, key: &str) -> Option<String> {
        match self.kind {
            Store::File => fs::read_to_string(self.store_dir().join(key)).ok(),
            Store::Etcd => {
                let o = self.etcdctl(&[
                    "get",
                    "--print-value-only",
                    &format!("{PREFIX}/subnets/{key}"),
                ]);
                let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
                (!s.is_empty()).then_some(s)
            }
        }
    }

    /// Every lease key in the store.
    pub fn lease_keys(&self) -> Vec<String> {
        match self.kind {
            Store::File => {
                let mut v: Vec<String> = fs::read_dir(self.store_dir())
                    .map(|rd| {
                        rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .filter(|n| n.contains('-') && !n.starts_with('.'))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v
            }
            Store::Etcd => {
                let o = self.etcdctl(&[
                    "get",
                    "--prefix",
                    "--keys-only",
                    &format!("{PREFIX}/subnets/"),
                ]);
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| l.rsplit('/').next().unwrap().to_string())
                    .collect()
            }
        }
    }

    /// Start `ip monitor route` in node `i`, output to a file; stop it with `Proc::stop`.
    pub fn monitor(&self, i: usize, name: &str) -> (Proc, PathBuf) {
        let path = self.dir.join(name);
        let f = fs::File::create(&path).unwrap();
        let mut c = Command::new("ip");
        c.args(["-n", &self.nodes[i].ns.name, "-ts", "monitor", "route"])
            .stdout(f)
            .stderr(Stdio::null());
        let p = Proc::spawn("ip-monitor", c);
        std::thread::sleep(Duration::from_millis(100)); // let it subscribe
        (p, path)
    }

    pub fn nft_table(&self, i: usize) -> Option<String> {
        let o = self.nodes[i].ns.sh("nft list table ip ferry 2>/dev/null");
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

/// `10.244.7.0/24` → `10.244.7.0-24`.
pub fn key(subnet: &str) -> String {
    subnet.replace('/', "-")
}

pub fn sh(s: &str) -> String {
    ok("sh", ["-c", s])
}

/// Add a pod on node `i` the way a runtime would: the first plugin of the installed conflist,
/// with the list's name and cniVersion, on stdin. Returns (pod netns, pod IP).
pub fn add_pod(lab: &Lab, i: usize, id: &str) -> (Netns, String) {
    let list: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(lab.conflist(i)).unwrap()).unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let pod = Netns::new("fpo");
    let path = bin_dir().display().to_string();
    let netns = pod.path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", &netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", &path),
    ];
    let out = cni(Some(&lab.nodes[i].ns), &bin("ferry"), &env, &conf.to_string());
    out.assert_ok();
    let r = out.json();
    let ip = r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    (pod, ip)
}
