//! A multi-node host-gw lab for ferryd: an underlay namespace with a bridge (198.18.0.1/24),
//! N node namespaces (eth0 198.18.0.1x/24), one `ferryd` per node, and a shared lease store (a
//! directory, or a real etcd in the underlay namespace). Everything is torn down on drop.
#![allow(dead_code)]

pub mod events;

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

/// The pod network's families: IPv4 only (as before), IPv6 only, or dual-stack. The IPv6 modes
/// give the underlay ULA addresses (fd00:198:18::1/64 on the bridge, ::1x on the nodes,
/// `nodad` so they are usable at once); IPv6-only has no IPv4 underlay at all (etcd listens on
/// [fd00:198:18::1]:2379), dual-stack keeps the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    Dual,
}

/// The IPv6 pod network of the IPv6 modes.
pub const NET6: &str = "fd00:10:244::/56";

pub const PREFIX: &str = "/coreos.com/network";
pub const ETCD_URL: &str = "http://198.18.0.1:2379";
/// etcd's client URL in an IPv6-only lab.
pub const ETCD_URL6: &str = "http://[fd00:198:18::1]:2379";

pub struct Node {
    pub ns: Netns,
    /// The node's IPv4 underlay address (`198.18.0.1x`; not configured in an IPv6-only lab).
    pub ip: String,
    /// The node's IPv6 underlay address (`fd00:198:18::1x`; set in every mode, configured on
    /// eth0 only in the IPv6 modes).
    pub ip6: String,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
}

pub struct Lab {
    pub kind: Store,
    pub family: Family,
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
        Lab::with_family(kind, Family::V4, n, store_up)
    }

    /// Underlay + `n` nodes for a pod network of `family` (every ferryd gets the flags for it).
    pub fn with_family(kind: Store, family: Family, n: usize, store_up: bool) -> Lab {
        require_sandbox();
        let dir = TempDir::new("lab");
        let underlay = Netns::new("ful");
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        // A fixed MAC: a bridge without one takes its ports' lowest, so adding or moving a node
        // would change the underlay's MAC under the nodes' ARP caches (seconds of loss).
        underlay.ip(&["link", "set", "br0", "address", "02:fe:00:00:00:01"]);
        if family != Family::V6 {
            underlay.ip(&["addr", "add", "198.18.0.1/24", "dev", "br0"]);
        }
        if family != Family::V4 {
            underlay.ip(&["addr", "add", "fd00:198:18::1/64", "dev", "br0", "nodad"]);
        }
        underlay.ip(&["link", "set", "br0", "up"]);
        let mut common: Vec<String> = vec!["--resync".into(), "300ms".into()];
        match family {
            Family::V4 => {}
            Family::V6 => {
                common.extend(["--ipv6-network", NET6, "--enable-ipv4=false"].map(String::from))
            }
            Family::Dual => common.extend(["--ipv6-network", NET6].map(String::from)),
        }
        let mut lab = Lab { kind, family, nodes: Vec::new(), etcd: None, underlay, dir, common };
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
        self.add_node_on(0)
    }

    /// A lab whose nodes sit on the given underlay segments (see [`Lab::add_node_on`]), every
    /// segment routed to every other through the underlay namespace; the store is up, no
    /// ferryd runs yet.
    pub fn on_segments(kind: Store, segs: &[u8]) -> Lab {
        let mut lab = Lab::with_store(kind, 0, false);
        for &seg in segs {
            lab.add_node_on(seg);
        }
        for (i, _) in segs.iter().enumerate().filter(|(_, &s)| s == 0) {
            lab.nodes[i].ns.ip(&["route", "add", "198.19.0.0/24", "via", "198.18.0.1"]);
        }
        lab.store_up();
        lab
    }

    /// Add a node on underlay segment `seg`: 0 is `br0` (198.18.0.0/24, the only one unless
    /// asked), 1 is `br1` (198.19.0.0/24), with the underlay namespace routing between them (a
    /// node on a second segment reaches the first, and etcd, through it).
    pub fn add_node_on(&mut self, seg: u8) -> usize {
        let i = self.nodes.len();
        let ns = Netns::new("fnd");
        let ip = format!("198.{}.0.{}", 18 + seg, 11 + i);
        let port = format!("v{i}");
        let bridge = format!("br{seg}");
        if seg > 0 && !self.underlay.ip(&["link", "show"]).contains(&format!(" {bridge}:")) {
            self.underlay.ip(&["link", "add", &bridge, "type", "bridge"]);
            let mac = format!("02:fe:00:00:00:{:02x}", seg + 1);
            self.underlay.ip(&["link", "set", &bridge, "address", &mac]);
            self.underlay.ip(&["addr", "add", &format!("198.{}.0.1/24", 18 + seg), "dev", &bridge]);
            self.underlay.ip(&["link", "set", &bridge, "up"]);
            ok(
                "ip",
                ["netns", "exec", &self.underlay.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            );
        }
        self.underlay
            .ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
        self.underlay.ip(&["link", "set", &port, "master", &bridge, "up"]);
        if self.family != Family::V6 {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        }
        let ip6 = format!("fd00:198:18::{}", 11 + i);
        if self.family != Family::V4 {
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
        if seg > 0 {
            // The other segment (and etcd on 198.18.0.1) through the underlay's router.
            ns.ip(&["route", "add", "198.18.0.0/16", "via", &format!("198.{}.0.1", 18 + seg)]);
        }
        let dir = self.dir.join(&format!("n{i}"));
        fs::create_dir_all(&dir).unwrap();
        self.nodes.push(Node { ns, ip, ip6, dir, proc: None });
        i
    }

    /// etcd's client URL: on the IPv4 underlay, or the IPv6 one in an IPv6-only lab.
    pub fn etcd_url(&self) -> &'static str {
        if self.family == Family::V6 {
            ETCD_URL6
        } else {
            ETCD_URL
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn store_url(&self) -> String {
        match self.kind {
            Store::File => format!("file://{}", self.store_dir().display()),
            Store::Etcd => self.etcd_url().replace("http://", "etcd://"),
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
                    self.etcd_url(),
                    "--advertise-client-urls",
                    self.etcd_url(),
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

    /// How many requests of a gRPC method (`Range`, `LeaseTimeToLive`, ...) the lab's etcd has
    /// answered, from its own `/metrics` (fetched from inside the underlay).
    pub fn etcd_requests(&self, method: &str) -> u64 {
        let url = format!("{}/metrics", self.etcd_url());
        let out = self.underlay.cmd("curl").args(["-sf", &url]).output().expect("curl");
        assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        let want = format!("grpc_method=\"{method}\"");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&want))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.underlay
            .cmd("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                self.etcd_url(),
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
            ])
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

    /// Send `sig` to ferryd on node `i` (`nsenter` execs it: the child is ferryd itself).
    pub fn signal(&self, i: usize, sig: i32) {
        let p = self.nodes[i].proc.as_ref().and_then(|p| p.child.as_ref()).expect("ferryd runs");
        // SAFETY: signals only the ferryd this lab started (still its unreaped child).
        assert_eq!(unsafe { libc::kill(p.id() as i32, sig) }, 0, "kill {sig}");
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

    /// Node `i`'s IPv6 subnet from its subnet file (`fd00:10:244:2e::/64`).
    pub fn subnet6(&self, i: usize) -> Option<String> {
        let text = fs::read_to_string(self.nodes[i].dir.join("subnet.env")).ok()?;
        let v = text.lines().find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))?;
        let n: ipnetwork::Ipv6Network = v.parse().ok()?;
        Some(format!("{}/{}", n.network(), n.prefix()))
    }

    /// The lease key of node `i` as its subnet file names it, in the lab's family
    /// (`10.244.1.0-24`, `10.244.1.0-24&fd00:10:244:2e::-64`, `0.0.0.0-0&fd00:10:244:2e::-64`).
    pub fn lease_key(&self, i: usize) -> Option<String> {
        let v4 = || self.subnet(i).map(|s| key(&s));
        let v6 = || self.subnet6(i).map(|s| key(&s));
        Some(match self.family {
            Family::V4 => v4()?,
            Family::V6 => format!("0.0.0.0-0&{}", v6()?),
            Family::Dual => format!("{}&{}", v4()?, v6()?),
        })
    }

    /// Wait until every node in `idx` has a subnet file naming its subnet of every family of
    /// the lab, and a conflist; returns their lease keys.
    pub fn wait_leases(&self, idx: &[usize]) -> Vec<String> {
        let ok = wait_for(Duration::from_secs(30), || {
            idx.iter().all(|&i| self.lease_key(i).is_some() && self.conflist(i).exists())
        });
        assert!(
            ok,
            "nodes {idx:?} got no lease: {}",
            idx.iter().map(|&i| self.log(i)).collect::<String>()
        );
        idx.iter().map(|&i| self.lease_key(i).unwrap()).collect()
    }

    /// Ferry's IPv6 routes on node `i`: dst → gateway (nexthops resolved as by [`Lab::routes`]).
    pub fn routes6(&self, i: usize) -> BTreeMap<String, String> {
        self.routes_of(i, true)
    }

    /// What node `i` should route over IPv6: every other node in `peers`.
    pub fn expected6(&self, i: usize, peers: &[usize]) -> BTreeMap<String, String> {
        peers
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| (self.subnet6(j).unwrap(), self.nodes[j].ip6.clone()))
            .collect()
    }

    /// Wait until node `i`'s Ferry IPv6 routes equal `want`.
    pub fn wait_routes6(&self, i: usize, want: &BTreeMap<String, String>, timeout: Duration) {
        let ok = wait_for(timeout, || &self.routes6(i) == want);
        assert!(
            ok,
            "node {i}: IPv6 routes {:?}, want {want:?}\nlog:\n{}",
            self.routes6(i),
            self.log(i)
        );
    }

    /// Wait until node `i` routes exactly the peers in `peers` in every family of the lab.
    pub fn wait_all_routes(&self, i: usize, peers: &[usize], timeout: Duration) {
        if self.family != Family::V6 {
            self.wait_routes(i, &self.expected(i, peers), timeout);
        } else {
            self.wait_routes(i, &BTreeMap::new(), timeout);
        }
        if self.family != Family::V4 {
            self.wait_routes6(i, &self.expected6(i, peers), timeout);
        }
    }

    /// Wait until every running node has a subnet file; returns the subnets.
    pub fn wait_subnets(&self, idx: &[usize]) -> Vec<String> {
        // Generous: the subnet file and conflist are fsynced, and fsync on a disk busy with a
        // build can take seconds (seen once in a loaded run).
        let ok = wait_for(Duration::from_secs(30), || {
            idx.iter().all(|&i| self.subnet(i).is_some() && self.conflist(i).exists())
        });
        assert!(
            ok,
            "nodes {idx:?} got no lease: {}",
            idx.iter().map(|&i| self.log(i)).collect::<String>()
        );
        idx.iter().map(|&i| self.subnet(i).unwrap()).collect()
    }

    /// Ferry's routes on node `i`: dst → gateway. A route on a nexthop object (`nhid N`) shows
    /// the nexthop's gateway (the kernel adds it unless `net.ipv4.nexthop_compat_mode` is off;
    /// then it is looked up in `ip nexthop`).
    pub fn routes(&self, i: usize) -> BTreeMap<String, String> {
        self.routes_of(i, false)
    }

    fn routes_of(&self, i: usize, v6: bool) -> BTreeMap<String, String> {
        let ns = &self.nodes[i].ns;
        let family = if v6 { "-6" } else { "-4" };
        let v = ns.ip_json(&[family, "route", "show", "proto", "113"]);
        let mut nexthops: Option<BTreeMap<u64, String>> = None;
        let mut gateway = |r: &serde_json::Value| match (r["gateway"].as_str(), r["nhid"].as_u64())
        {
            (Some(g), _) => g.to_string(),
            (None, Some(id)) => {
                let all = nexthops.get_or_insert_with(|| {
                    let nh = ns.ip_json(&["nexthop", "show"]);
                    let list = nh.as_array().cloned().unwrap_or_default();
                    let gw =
                        |n: &serde_json::Value| n["gateway"].as_str().unwrap_or("").to_string();
                    list.iter().filter_map(|n| Some((n["id"].as_u64()?, gw(n)))).collect()
                });
                all.get(&id).cloned().unwrap_or_default()
            }
            (None, None) => String::new(),
        };
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["dst"].as_str().unwrap_or("").to_string(), gateway(r)))
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

    /// Node `i`'s `ip6 ferry` table (IPv6 masquerade), if any.
    pub fn nft_table6(&self, i: usize) -> Option<String> {
        let o = self.nodes[i].ns.sh("nft list table ip6 ferry 2>/dev/null");
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
    let (pod, ips) = add_pod_ips(lab, i, id);
    (pod, ips.into_iter().next().expect("an address"))
}

/// [`add_pod`] returning every address of the result (one per family).
pub fn add_pod_ips(lab: &Lab, i: usize, id: &str) -> (Netns, Vec<String>) {
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
    let ips = testlab::pod_ips(&r);
    // The test's wait for the kernel's linkwatch (see `Netns::links_ready`), not the plugin's.
    let ready = wait_for(Duration::from_secs(3), || pod.links_ready());
    assert!(ready, "pod links not up 3 s after ADD: {}", pod.ip(&["link"]));
    (pod, ips)
}

// ---- A multi-member etcd cluster in the lab (tests/etcd_cluster.rs, bench/etcd_failover.sh) ----

/// One etcd member in its own namespace on the underlay, at 198.18.0.(2+k).
pub struct EtcdMember {
    pub ns: Netns,
    pub ip: String,
    pub name: String,
    pub data: PathBuf,
    pub log: PathBuf,
    pub proc: Option<Proc>,
}

/// A multi-member etcd cluster on the lab's underlay; members are killed (by PID) on drop.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    /// Directory holding ca.pem, server.{pem,key}, client.{pem,key} when clients must use TLS
    /// with client certificates (peers talk plain HTTP).
    pub tls: Option<PathBuf>,
    /// etcd's `--election-timeout` / `--heartbeat-interval` (ms).
    pub election_ms: u32,
    pub heartbeat_ms: u32,
}

/// A throw-away CA, a server certificate for `ips` and a client certificate (EC P-256, openssl).
pub fn make_cluster_certs(dir: &std::path::Path, ips: &[String]) {
    let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    let script = format!(
        r#"set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
            -subj /CN=ferry-lab-ca -keyout ca.key -out ca.pem 2>/dev/null
        for who in server client; do
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
                -keyout $who.key -out $who.csr 2>/dev/null
            printf 'subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n' > $who.ext
            openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
                -extfile $who.ext -out $who.pem 2>/dev/null
        done"#,
        san.join(",")
    );
    let st = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap();
    assert!(st.success(), "openssl failed");
}

impl EtcdCluster {
    /// Start `n` members (TLS for clients if `tls`) and wait until every one is healthy.
    pub fn start(lab: &Lab, n: usize, tls: bool, election_ms: u32, heartbeat_ms: u32) -> Self {
        let mut members = Vec::new();
        for k in 0..n {
            let ns = Netns::new("fet");
            let ip = format!("198.18.0.{}", 2 + k);
            let port = format!("e{k}");
            lab.underlay.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            lab.underlay.ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            let name = format!("m{k}");
            let data = lab.dir.join(&format!("etcd-{name}"));
            let log = lab.dir.join(&format!("etcd-{name}.log"));
            members.push(EtcdMember { ns, ip, name, data, log, proc: None });
        }
        let tls = tls.then(|| {
            let d = lab.dir.join("etcd-tls");
            fs::create_dir_all(&d).unwrap();
            let ips: Vec<String> = members.iter().map(|m| m.ip.clone()).collect();
            make_cluster_certs(&d, &ips);
            d
        });
        let mut c = EtcdCluster { members, tls, election_ms, heartbeat_ms };
        for k in 0..n {
            c.launch(k);
        }
        for k in 0..n {
            assert!(c.wait_healthy(lab, k, Duration::from_secs(20)), "member {k}: {}", c.log(k));
        }
        c
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn client_url(&self, k: usize) -> String {
        format!("{}://{}:2379", self.scheme(), self.members[k].ip)
    }

    /// Every member's client URL, comma-separated.
    pub fn endpoints(&self) -> String {
        (0..self.members.len()).map(|k| self.client_url(k)).collect::<Vec<_>>().join(",")
    }

    /// The ferryd flags that point it at this cluster (all members, TLS files if any).
    pub fn store_flags(&self) -> Vec<String> {
        let mut v = vec!["--store".to_string(), self.endpoints()];
        if let Some(d) = &self.tls {
            for (flag, file) in [
                ("--etcd-ca", "ca.pem"),
                ("--etcd-cert", "client.pem"),
                ("--etcd-key", "client.key"),
            ] {
                v.push(flag.into());
                v.push(d.join(file).display().to_string());
            }
        }
        v
    }

    /// Start member `k` on its data dir (does not wait).
    pub fn launch(&mut self, k: usize) {
        assert!(self.members[k].proc.is_none(), "member {k} already runs");
        let cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://{}:2380", m.name, m.ip)).collect();
        let url = self.client_url(k);
        let m = &self.members[k];
        let peer = format!("http://{}:2380", m.ip);
        let mut c = m.ns.cmd("etcd");
        c.args(["--name", &m.name, "--data-dir"]).arg(&m.data);
        c.args(["--listen-client-urls", &url, "--advertise-client-urls", &url]);
        c.args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer]);
        c.args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"]);
        c.args(["--election-timeout", &self.election_ms.to_string()]);
        c.args(["--heartbeat-interval", &self.heartbeat_ms.to_string()]);
        c.args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(d) = &self.tls {
            c.arg(format!("--cert-file={}", d.join("server.pem").display()));
            c.arg(format!("--key-file={}", d.join("server.key").display()));
            c.arg(format!("--trusted-ca-file={}", d.join("ca.pem").display()));
            c.arg("--client-cert-auth");
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        let name = format!("etcd-{}", m.name);
        self.members[k].proc = Some(Proc::spawn(&name, c));
    }

    pub fn log(&self, k: usize) -> String {
        fs::read_to_string(&self.members[k].log).unwrap_or_default()
    }

    /// SIGKILL member `k` and reap it.
    pub fn kill9(&mut self, k: usize) {
        if let Some(mut p) = self.members[k].proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM member `k` (SIGKILL after 5 s) and reap it.
    pub fn stop(&mut self, k: usize) {
        if let Some(mut p) = self.members[k].proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// `etcdctl` from the underlay against the given members (TLS flags added).
    pub fn etcdctl_on(&self, lab: &Lab, members: &[usize], args: &[&str]) -> std::process::Output {
        let eps: Vec<String> = members.iter().map(|&k| self.client_url(k)).collect();
        let mut c = lab.underlay.cmd("etcdctl");
        c.env("ETCDCTL_API", "3").arg(format!("--endpoints={}", eps.join(",")));
        c.args(["--dial-timeout=1s", "--command-timeout=3s"]);
        if let Some(d) = &self.tls {
            c.arg(format!("--cacert={}", d.join("ca.pem").display()));
            c.arg(format!("--cert={}", d.join("client.pem").display()));
            c.arg(format!("--key={}", d.join("client.key").display()));
        }
        c.args(args).stdin(Stdio::null()).output().expect("etcdctl")
    }

    /// `etcdctl` against every member.
    pub fn etcdctl(&self, lab: &Lab, args: &[&str]) -> std::process::Output {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.etcdctl_on(lab, &all, args)
    }

    /// Member `k` answers `endpoint health` (within `timeout`).
    pub fn wait_healthy(&self, lab: &Lab, k: usize, timeout: Duration) -> bool {
        wait_for(timeout, || self.etcdctl_on(lab, &[k], &["endpoint", "health"]).status.success())
    }

    /// The member that is leader now, if any member knows one.
    pub fn leader(&self, lab: &Lab) -> Option<usize> {
        let o = self.etcdctl(lab, &["endpoint", "status", "--write-out=json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?.iter().find_map(|e| {
            let s = &e["Status"];
            let me = s["header"]["member_id"].as_u64()?;
            (s["leader"].as_u64()? == me).then(|| {
                let ep = e["Endpoint"].as_str().unwrap_or("");
                (0..self.members.len()).find(|&k| self.client_url(k) == ep)
            })?
        })
    }

    /// Drop every packet between member `k` and the nodes (198.18.0.11 and up), inside the
    /// member's namespace; the member keeps running and keeps talking to its peers.
    pub fn partition(&self, k: usize) {
        let o = self.members[k].ns.sh(
            "nft add table inet ferrypart && \
             nft add chain inet ferrypart in '{ type filter hook input priority -10; policy accept; }' && \
             nft add chain inet ferrypart out '{ type filter hook output priority -10; policy accept; }' && \
             nft add rule inet ferrypart in ip saddr 198.18.0.11-198.18.0.254 drop && \
             nft add rule inet ferrypart out ip daddr 198.18.0.11-198.18.0.254 drop",
        );
        assert!(o.status.success(), "partition: {}", String::from_utf8_lossy(&o.stderr));
    }

    pub fn heal(&self, k: usize) {
        let o = self.members[k].ns.sh("nft delete table inet ferrypart");
        assert!(o.status.success(), "heal: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// Write a lease by hand (`key` like `10.244.9.0-24`), through any live member.
    pub fn put_lease(&self, lab: &Lab, key: &str, value: &str) {
        let o = self.etcdctl(lab, &["put", &format!("{PREFIX}/subnets/{key}"), value]);
        assert!(o.status.success(), "etcdctl put: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// Every lease key → its PublicIP.
    pub fn leases(&self, lab: &Lab) -> BTreeMap<String, String> {
        let o = self.etcdctl(lab, &["get", "--prefix", &format!("{PREFIX}/subnets/")]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter_map(|kv| {
                let key = kv.first()?.rsplit('/').next()?.to_string();
                let v: serde_json::Value = serde_json::from_str(kv.get(1)?).ok()?;
                Some((key, v["PublicIP"].as_str()?.to_string()))
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill9();
            }
        }
    }
}

/// A `ping` every 200 ms from `pod` to `dst` until [`Pinger::finish`].
pub struct Pinger {
    pub dst: String,
    child: Option<std::process::Child>,
}

impl Pinger {
    pub fn start(pod: &Netns, dst: &str) -> Pinger {
        let child = pod
            .cmd("ping")
            .args(["-i", "0.2", "-W", "1", "-q", dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ping");
        Pinger { dst: dst.to_string(), child: Some(child) }
    }

    /// Stop it (SIGINT, by PID) and return (sent, received).
    pub fn finish(mut self) -> (u64, u64) {
        let ch = self.child.take().unwrap();
        // SAFETY: signals only the ping process this harness started.
        unsafe {
            libc::kill(ch.id() as i32, libc::SIGINT);
        }
        let out = ch.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
        let num = |word: &str| -> u64 {
            let before = line.split(word).next().unwrap_or("");
            before
                .split(|c: char| c == ',' || c.is_whitespace())
                .rfind(|s| !s.is_empty())
                .map_or(0, |n| n.parse().unwrap_or(0))
        };
        (num(" packets transmitted"), num(" received"))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

/// (HTTP status, body) of `GET path` on node `i`'s metrics address 127.0.0.1:9473 (its netns).
pub fn http_get(lab: &Lab, i: usize, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:9473{path}");
    let o = lab.nodes[i]
        .ns
        .cmd("curl")
        .args(["-s", "-m", "2", "-w", "\n%{http_code}", &url])
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
