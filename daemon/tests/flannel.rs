//! Mixed clusters with the real flannel (issue 9): flanneld v0.26.5 and the flannel CNI plugin
//! (test fixtures, found through `FERRY_FLANNEL_DIR`, default `<workspace>/../shared/anchors/
//! flannel`) beside ferryd on one etcd, in the lab. Run inside the sandbox:
//! `tests/sandbox.sh cargo test -p ferryd --offline --test flannel`.
//!
//! Without the binaries a test prints `skipped: flannel binaries not found at X` and passes,
//! except with `CI=true` (CI has shared/ beside the clone), where it fails saying so.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use testlab::{cni, wait_for, workspace, Netns, Proc};

const CONFIG_KEY: &str = "/coreos.com/network/config";
const HOST_GW_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// The directory holding `flanneld` and `flannel`, or `None` (the test is skipped) outside CI.
fn flannel_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRY_FLANNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/anchors/flannel"));
    if dir.join("flanneld").is_file() && dir.join("flannel").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "flannel binaries not found at {} (set FERRY_FLANNEL_DIR to the directory holding \
         flanneld and flannel)",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}: CI=true, so this is a failure, not a skip");
    }
    eprintln!("skipped: {msg}");
    None
}

/// flanneld and the flannel CNI plugin on lab nodes.
struct Flannel {
    dir: PathBuf,
    procs: BTreeMap<usize, Proc>,
}

impl Flannel {
    fn new(dir: PathBuf) -> Flannel {
        Flannel { dir, procs: BTreeMap::new() }
    }

    /// flanneld's subnet file on node `i` (flannel's own, not ferryd's).
    fn subnet_file(lab: &Lab, i: usize) -> PathBuf {
        lab.nodes[i].dir.join("flannel-subnet.env")
    }

    /// host-local's data directory for flannel's pods on node `i` (network `cbr0`).
    fn host_local(lab: &Lab, i: usize) -> PathBuf {
        lab.nodes[i].dir.join("host-local/cbr0")
    }

    fn log_path(lab: &Lab, i: usize) -> PathBuf {
        lab.dir.join(&format!("n{i}-flanneld.log"))
    }

    fn log(lab: &Lab, i: usize) -> String {
        fs::read_to_string(Flannel::log_path(lab, i)).unwrap_or_default()
    }

    /// Start flanneld on node `i` (host-gw over etcd, its log in `n<i>-flanneld.log`).
    fn start(&mut self, lab: &Lab, i: usize) {
        let mut c = lab.nodes[i].ns.cmd(self.dir.join("flanneld"));
        c.arg(format!("--etcd-endpoints={ETCD_URL}")).arg("--iface=eth0");
        c.arg(format!("--subnet-file={}", Flannel::subnet_file(lab, i).display()));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Flannel::log_path(lab, i))
            .unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        self.procs.insert(i, Proc::spawn(&format!("flanneld-n{i}"), c));
    }

    /// SIGTERM flanneld on node `i`; returns whether it exited within 5 s.
    fn stop(&mut self, i: usize) -> bool {
        self.procs.remove(&i).and_then(|mut p| p.stop(Duration::from_secs(5))).is_some()
    }

    /// The subnet flanneld leased on node `i` (`10.244.7.0/24`), waiting up to 15 s for it.
    fn wait_subnet(lab: &Lab, i: usize) -> String {
        let path = Flannel::subnet_file(lab, i);
        let read = || {
            let text = fs::read_to_string(&path).ok()?;
            let v = text.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
            let n: ipnetwork::Ipv4Network = v.parse().ok()?;
            Some(format!("{}/{}", n.network(), n.prefix()))
        };
        let ok = wait_for(Duration::from_secs(15), || read().is_some());
        assert!(ok, "flanneld on node {i} wrote no subnet file:\n{}", Flannel::log(lab, i));
        read().unwrap()
    }

    /// A pod on node `i` through the flannel CNI plugin (bridge `cni0` + host-local, Debian's
    /// plugins in /usr/lib/cni), as kube-flannel's conflist sets it up. Returns (netns, IP).
    fn add_pod(&self, lab: &Lab, i: usize, id: &str) -> (Netns, String) {
        let (pod, ips) = self.add_pod_ips(lab, i, id);
        (pod, ips.into_iter().next().expect("an address"))
    }

    /// [`Flannel::add_pod`] with every address of the result (one per family).
    fn add_pod_ips(&self, lab: &Lab, i: usize, id: &str) -> (Netns, Vec<String>) {
        let n = &lab.nodes[i];
        let conf = serde_json::json!({
            "cniVersion": "0.3.1",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": Flannel::subnet_file(lab, i),
            "dataDir": n.dir.join("flannel-data"),
            "ipam": { "dataDir": n.dir.join("host-local") },
            "delegate": { "hairpinMode": true, "isDefaultGateway": true, "ipMasq": false },
        });
        let pod = Netns::new("fpf");
        let path = format!("{}:/usr/lib/cni", self.dir.display());
        let netns = pod.path();
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ];
        let out = cni(Some(&n.ns), &self.dir.join("flannel"), &env, &conf.to_string());
        out.assert_ok();
        let r = out.json();
        let ips = testlab::pod_ips(&r);
        assert!(wait_for(Duration::from_secs(3), || pod.links_ready()), "flannel pod links not up");
        (pod, ips)
    }
}

/// Every IPv4 route of node `i` with a gateway, whatever its protocol: dst → gateway.
fn gateway_routes(lab: &Lab, i: usize) -> BTreeMap<String, String> {
    let v = lab.nodes[i].ns.ip_json(&["-4", "route", "show"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_string(), r["gateway"].as_str()?.to_string())))
        .collect()
}

/// Wait until flanneld on node `i` routes every `want` entry (among its other routes).
fn wait_flannel_routes(lab: &Lab, i: usize, want: &BTreeMap<String, String>) {
    let ok = wait_for(Duration::from_secs(15), || {
        let have = gateway_routes(lab, i);
        want.iter().all(|(d, g)| have.get(d) == Some(g))
    });
    assert!(
        ok,
        "flanneld on node {i}: routes {:?}, want {want:?}\n{}",
        gateway_routes(lab, i),
        Flannel::log(lab, i)
    );
}

fn put_config(lab: &Lab, value: &str) {
    let o = lab.etcdctl(&["put", CONFIG_KEY, value]);
    assert!(o.status.success(), "put config: {}", String::from_utf8_lossy(&o.stderr));
}

fn get_config(lab: &Lab) -> String {
    let o = lab.etcdctl(&["get", "--print-value-only", CONFIG_KEY]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Every pod pings every other pod's address.
fn ping_all(pods: &[(&Netns, &str)]) {
    for (a, (ns, from)) in pods.iter().enumerate() {
        for (b, (_, to)) in pods.iter().enumerate() {
            if a != b {
                let ok = wait_for(Duration::from_secs(5), || ns.ping(to));
                assert!(ok, "pod {from} cannot ping pod {to}");
            }
        }
    }
}

/// A `ping -i 0.1` from `pod` to `dst` until [`Ping::finish`].
struct Ping {
    what: String,
    child: Option<Child>,
}

impl Ping {
    fn start(pod: &Netns, what: &str, dst: &str) -> Ping {
        let child = pod
            .cmd("ping")
            .args(["-i", "0.1", "-W", "1", "-q", dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ping");
        Ping { what: what.to_string(), child: Some(child) }
    }

    /// Stop it (SIGINT, by PID) and return (sent, received).
    fn finish(mut self) -> (u64, u64) {
        let ch = self.child.take().unwrap();
        // SAFETY: signals only the ping process this test started.
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

impl Drop for Ping {
    fn drop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

/// Start the mixed cluster: flanneld on node 0, ferryd on nodes 1 and 2, in the given order.
/// Returns the three subnets (node order).
fn mixed_cluster(lab: &mut Lab, fl: &mut Flannel, flannel_first: bool) -> Vec<String> {
    if flannel_first {
        put_config(lab, HOST_GW_CONFIG);
        fl.start(lab, 0);
        Flannel::wait_subnet(lab, 0);
        lab.start(1, &[]);
        lab.start(2, &[]);
        lab.wait_subnets(&[1, 2]);
    } else {
        lab.start(1, &[]);
        lab.wait_subnets(&[1]);
        lab.start(2, &[]);
        lab.wait_subnets(&[2]);
        fl.start(lab, 0);
    }
    let s0 = Flannel::wait_subnet(lab, 0);
    let (s1, s2) = (lab.subnet(1).unwrap(), lab.subnet(2).unwrap());
    assert!(s0 != s1 && s0 != s2 && s1 != s2, "subnets not distinct: {s0} {s1} {s2}");
    vec![s0, s1, s2]
}

/// Routes both ways: ferryd's (proto 113) on nodes 1 and 2, flanneld's own on node 0.
fn check_routes(lab: &Lab, s: &[String]) {
    let ip = |i: usize| lab.nodes[i].ip.clone();
    for (i, j) in [(1, 2), (2, 1)] {
        let want: BTreeMap<String, String> =
            [(s[0].clone(), ip(0)), (s[j].clone(), ip(j))].into_iter().collect();
        lab.wait_routes(i, &want, Duration::from_secs(10));
    }
    let want: BTreeMap<String, String> =
        [(s[1].clone(), ip(1)), (s[2].clone(), ip(2))].into_iter().collect();
    wait_flannel_routes(lab, 0, &want);
}

/// Leases with BackendType missing or "HOST-GW" are routed by neither daemon; a host-gw lease
/// written after them is (the barrier that shows both daemons have seen all three).
fn check_backend_type_filter(lab: &Lab) {
    lab.put_lease("10.244.200.0-24", r#"{"PublicIP":"198.18.0.90"}"#);
    lab.put_lease("10.244.201.0-24", r#"{"PublicIP":"198.18.0.91","BackendType":"HOST-GW"}"#);
    lab.put_lease("10.244.202.0-24", r#"{"PublicIP":"198.18.0.92","BackendType":"host-gw"}"#);
    let sentinel = ("10.244.202.0/24".to_string(), "198.18.0.92".to_string());
    for i in 0..3 {
        let ok = wait_for(Duration::from_secs(15), || {
            gateway_routes(lab, i).get(&sentinel.0) == Some(&sentinel.1)
        });
        assert!(ok, "node {i} never routed the host-gw lease: {:?}", gateway_routes(lab, i));
        let r = gateway_routes(lab, i);
        for dst in ["10.244.200.0/24", "10.244.201.0/24"] {
            assert!(!r.contains_key(dst), "node {i} routes {dst}: {r:?}");
        }
    }
    assert!(Flannel::log(lab, 0).contains("type=HOST-GW"), "{}", Flannel::log(lab, 0));
    for k in ["10.244.200.0-24", "10.244.201.0-24", "10.244.202.0-24"] {
        lab.del_lease(k);
    }
}

fn mixed_cluster_case(flannel_first: bool) {
    let Some(dir) = flannel_dir() else { return };
    let mut lab = Lab::new(Store::Etcd, 3);
    let mut fl = Flannel::new(dir);
    let t = Instant::now();
    let s = mixed_cluster(&mut lab, &mut fl, flannel_first);
    check_routes(&lab, &s);
    println!(
        "mixed cluster ({} first): subnets {s:?}, routes both ways after {:?}",
        if flannel_first { "flanneld" } else { "ferryd" },
        t.elapsed()
    );
    let (f0, ip0) = fl.add_pod(&lab, 0, "flannel-pod-0");
    let (f1, ip1) = add_pod(&lab, 1, "ferry-pod-1");
    let (f2, ip2) = add_pod(&lab, 2, "ferry-pod-2");
    ping_all(&[(&f0, &ip0), (&f1, &ip1), (&f2, &ip2)]);
    check_backend_type_filter(&lab);
    assert!(fl.stop(0), "flanneld did not exit on SIGTERM");
}

#[test]
fn mixed_cluster_flanneld_first() {
    mixed_cluster_case(true);
}

#[test]
fn mixed_cluster_ferryd_first() {
    mixed_cluster_case(false);
}

#[test]
fn config_without_backend_is_refused_and_ferryd_writes_host_gw() {
    let Some(dir) = flannel_dir() else { return };
    let lab = Lab::new(Store::Etcd, 2);
    let legacy = r#"{"Network":"10.244.0.0/16"}"#;
    put_config(&lab, legacy);
    let (st, out) = lab.run_once(0, &[], Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(2), "{out}");
    assert!(out.contains(r#"set "Backend":{"Type":"host-gw"}"#), "{out}");
    assert!(out.contains("udp"), "{out}");
    // Nothing changed: no lease, no files, no routes, the config as it was.
    assert!(lab.lease_keys().is_empty(), "{:?}", lab.lease_keys());
    assert!(lab.subnet(0).is_none() && !lab.conflist(0).exists());
    assert!(lab.routes(0).is_empty());
    assert_eq!(get_config(&lab), legacy);
    // flanneld reads the same config as udp, which it does not run either.
    let mut fl = Flannel::new(dir);
    fl.start(&lab, 1);
    let ok = wait_for(Duration::from_secs(10), || Flannel::log(&lab, 1).contains("udp"));
    assert!(ok, "flanneld did not object to udp:\n{}", Flannel::log(&lab, 1));
    fl.stop(1);
    // With no config stored, ferryd writes one that names host-gw.
    let o = lab.etcdctl(&["del", CONFIG_KEY]);
    assert!(o.status.success());
    let mut lab = lab;
    lab.start(0, &[]);
    lab.wait_subnets(&[0]);
    let stored = get_config(&lab);
    assert!(stored.contains(r#""Backend":{"Type":"host-gw"}"#), "{stored}");
    println!("ferryd stored {stored}");
}

/// The takeover's pods and pingers: flannel's two pods on node 0 pinging the peers' pods
/// continuously, a peer pod pinging one of them.
struct Traffic {
    old: Vec<(Netns, String)>,
    peers: Vec<(Netns, String)>,
    pings: Vec<Ping>,
}

fn start_traffic(lab: &Lab, fl: &Flannel) -> Traffic {
    let old = vec![fl.add_pod(lab, 0, "old-pod-a"), fl.add_pod(lab, 0, "old-pod-b")];
    let peers = vec![add_pod(lab, 1, "peer-pod-1"), add_pod(lab, 2, "peer-pod-2")];
    let all: Vec<(&Netns, &str)> =
        old.iter().chain(peers.iter()).map(|(n, ip)| (n, ip.as_str())).collect();
    ping_all(&all);
    let pings = vec![
        Ping::start(&old[0].0, "old pod a -> node 1 pod", &peers[0].1),
        Ping::start(&old[1].0, "old pod b -> node 2 pod", &peers[1].1),
        Ping::start(&old[0].0, "old pod a -> old pod b", &old[1].1),
        Ping::start(&peers[0].0, "node 1 pod -> old pod a", &old[0].1),
    ];
    Traffic { old, peers, pings }
}

/// The README's takeover steps between stopping flanneld and starting ferryd: hand flanneld's
/// peer routes (`proto boot`) to ferryd by re-tagging them in place (`ip route replace`: atomic),
/// and let flannel's pods on cni0 reach ferry's pods (proxy ARP on cni0).
fn hand_over(lab: &Lab, network_prefix: &str) {
    let o = lab.nodes[0].ns.sh(&format!(
        "ip -4 route show proto boot | awk '$1 ~ /^{network_prefix}/ && $2 == \"via\" \
         {{ print $1, $3, $5 }}' | while read dst gw dev; do \
         ip route replace \"$dst\" via \"$gw\" dev \"$dev\" proto 113 || exit 1; done && \
         sysctl -qw net.ipv4.conf.cni0.proxy_arp=1 net.ipv4.neigh.cni0.proxy_delay=0"
    ));
    assert!(o.status.success(), "hand-over: {}", String::from_utf8_lossy(&o.stderr));
}

/// Lines of an `ip monitor route` capture that mention `subnet`.
fn monitor_lines(path: &std::path::Path, subnet: &str) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| l.contains(subnet)).map(String::from).collect()
}

/// The new ferry pod on node 0: not one of flannel's addresses, reaching old pods and peers.
fn check_new_pod(lab: &Lab, t: &Traffic, hl: &std::path::Path) -> String {
    let (new, ip) = add_pod(lab, 0, "new-ferry-pod");
    let taken: Vec<String> = fs::read_dir(hl)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    assert!(!taken.contains(&ip), "ferry handed out {ip}, which host-local gave a flannel pod");
    assert!(t.old.iter().all(|(_, o)| *o != ip));
    let mut all: Vec<(&Netns, &str)> = vec![(&new, ip.as_str())];
    all.extend(t.old.iter().chain(t.peers.iter()).map(|(n, ip)| (n, ip.as_str())));
    ping_all(&all);
    ip
}

#[test]
fn takeover_from_flanneld_in_place() {
    let Some(dir) = flannel_dir() else { return };
    let mut lab = Lab::new(Store::Etcd, 3);
    let mut fl = Flannel::new(dir);
    let s = mixed_cluster(&mut lab, &mut fl, false);
    check_routes(&lab, &s);
    let traffic = start_traffic(&lab, &fl);
    let monitors = [lab.monitor(1, "mon1.txt"), lab.monitor(2, "mon2.txt")];
    std::thread::sleep(Duration::from_secs(1));

    // The switch: SIGTERM flanneld, hand over, start ferryd with flannel's pods' addresses
    // excluded. ferryd reuses the lease that carries this node's public IP.
    let t = Instant::now();
    assert!(fl.stop(0), "flanneld did not exit on SIGTERM");
    let stopped = t.elapsed();
    hand_over(&lab, "10\\.244\\.");
    let hl = Flannel::host_local(&lab, 0);
    lab.start(0, &["--cni-exclude-host-local", &hl.display().to_string()]);
    assert_eq!(lab.wait_subnets(&[0])[0], s[0], "ferryd did not keep flannel's subnet");
    lab.wait_routes(0, &lab.expected(0, &[0, 1, 2]), Duration::from_secs(10));
    let took = t.elapsed() - stopped;

    let new_ip = check_new_pod(&lab, &traffic, &hl);
    std::thread::sleep(Duration::from_secs(1));
    check_takeover_state(&lab, &s);
    let mut lost_total = 0;
    for p in traffic.pings {
        let what = p.what.clone();
        let (sent, recv) = p.finish();
        println!("takeover ping {what}: {sent} sent, {recv} received, {} lost", sent - recv);
        assert!(sent > 20, "{what}: only {sent} pings sent");
        lost_total += sent - recv;
    }
    for (mut p, path) in monitors {
        p.stop(Duration::from_secs(2));
        let changed = monitor_lines(&path, &s[0]);
        assert!(changed.is_empty(), "a peer's route to node 0 changed: {changed:?}");
    }
    println!(
        "takeover: flanneld took {stopped:?} to exit; hand-over + ferryd start -> holding {} \
         with routes in sync in {took:?}; new ferry pod {new_ip}; {lost_total} pings lost",
        s[0]
    );
    assert_eq!(lost_total, 0, "pings lost during the takeover");
}

/// After the takeover: the lease is ferryd's (same subnet, same public IP), cni0 and its
/// connected route are in place, ferry's conflist excludes flannel's pods' addresses.
fn check_takeover_state(lab: &Lab, s: &[String]) {
    let v = lab.get_lease(&key(&s[0])).expect("node 0's lease");
    assert!(v.contains(&format!(r#""PublicIP":"{}""#, lab.nodes[0].ip)), "{v}");
    assert!(v.contains(r#""BackendType":"host-gw""#), "{v}");
    let r = lab.nodes[0].ns.ip(&["-4", "route", "show", "dev", "cni0"]);
    assert!(r.contains(&format!("{} proto kernel", s[0])), "cni0's route: {r}");
    let conf = fs::read_to_string(lab.conflist(0)).unwrap();
    assert!(conf.contains("\"exclude\""), "{conf}");
    let log = lab.log(0);
    assert!(!log.contains("Ferry does not own"), "ferryd met a foreign route:\n{log}");
}

const DUAL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;

/// Every IPv6 route of node `i` with a gateway, whatever its protocol: dst → gateway.
fn gateway_routes6(lab: &Lab, i: usize) -> BTreeMap<String, String> {
    let v = lab.nodes[i].ns.ip_json(&["-6", "route", "show"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_string(), r["gateway"].as_str()?.to_string())))
        .collect()
}

/// flanneld's IPv6 subnet on node `i` (`fd00:10:244:2e::/64`), waiting up to 15 s.
fn flannel_subnet6(lab: &Lab, i: usize) -> String {
    let path = Flannel::subnet_file(lab, i);
    let read = || {
        let text = fs::read_to_string(&path).ok()?;
        let v = text.lines().find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))?;
        let n: ipnetwork::Ipv6Network = v.parse().ok()?;
        Some(format!("{}/{}", n.network(), n.prefix()))
    };
    let ok = wait_for(Duration::from_secs(15), || read().is_some());
    assert!(ok, "flanneld on node {i} wrote no IPv6 subnet:\n{}", Flannel::log(lab, i));
    read().unwrap()
}

/// A dual-stack mixed cluster on one etcd: the real flanneld on node 0, ferryd on nodes 1 and 2.
/// Both read each other's dual-stack leases (one key per node, flannel's
/// `10.244.x.0-24&fd00:10:244:y::-64`), take distinct subnets in both families, and route each
/// other both ways in both families; every flannel and ferry pod pings the others on IPv4 and
/// IPv6 across nodes.
#[test]
fn mixed_dual_stack_cluster() {
    let Some(dir) = flannel_dir() else { return };
    let mut lab = Lab::with_family(Store::Etcd, Family::Dual, 3, true);
    let mut fl = Flannel::new(dir);
    put_config(&lab, DUAL_CONFIG);
    fl.start(&lab, 0);
    let s0 = Flannel::wait_subnet(&lab, 0);
    let s0v6 = flannel_subnet6(&lab, 0);
    lab.start(1, &[]);
    lab.start(2, &[]);
    let keys = lab.wait_leases(&[1, 2]);
    // flannel's key for its node, beside ferryd's two, all in one layout.
    let all = lab.lease_keys();
    assert!(all.contains(&format!("{}&{}", key(&s0), key(&s0v6))), "{all:?}");
    for k in &keys {
        assert!(all.contains(k), "{k} not in {all:?}");
    }
    let v4: Vec<String> = vec![s0.clone(), lab.subnet(1).unwrap(), lab.subnet(2).unwrap()];
    let v6: Vec<String> = vec![s0v6.clone(), lab.subnet6(1).unwrap(), lab.subnet6(2).unwrap()];
    for v in [&v4, &v6] {
        assert!(v[0] != v[1] && v[0] != v[2] && v[1] != v[2], "subnets not distinct: {v:?}");
    }
    // ferryd (proto 113) on nodes 1 and 2: every peer in both families, flanneld's included.
    let ip = |i: usize| lab.nodes[i].ip.clone();
    let ip6 = |i: usize| lab.nodes[i].ip6.clone();
    for (i, j) in [(1usize, 2usize), (2, 1)] {
        let want: BTreeMap<String, String> =
            [(v4[0].clone(), ip(0)), (v4[j].clone(), ip(j))].into_iter().collect();
        lab.wait_routes(i, &want, Duration::from_secs(10));
        let want6: BTreeMap<String, String> =
            [(v6[0].clone(), ip6(0)), (v6[j].clone(), ip6(j))].into_iter().collect();
        lab.wait_routes6(i, &want6, Duration::from_secs(10));
    }
    // flanneld on node 0 routes ferryd's nodes in both families.
    let want: BTreeMap<String, String> =
        [(v4[1].clone(), ip(1)), (v4[2].clone(), ip(2))].into_iter().collect();
    wait_flannel_routes(&lab, 0, &want);
    let want6: BTreeMap<String, String> =
        [(v6[1].clone(), ip6(1)), (v6[2].clone(), ip6(2))].into_iter().collect();
    let ok = wait_for(Duration::from_secs(15), || {
        let have = gateway_routes6(&lab, 0);
        want6.iter().all(|(d, g)| have.get(d) == Some(g))
    });
    assert!(
        ok,
        "flanneld IPv6 routes {:?}, want {want6:?}\n{}",
        gateway_routes6(&lab, 0),
        Flannel::log(&lab, 0)
    );
    // Pods: flannel's on node 0 (both families from the flannel CNI plugin over the bridge
    // plugin, whose IPv6 addresses go through DAD: waited for), ferry's on nodes 1 and 2 (both
    // families, usable at once).
    let mut pods = vec![fl.add_pod_ips(&lab, 0, "flpod0")];
    assert_eq!(pods[0].1.len(), 2, "flannel pod: {:?}", pods[0].1);
    for i in 1..3 {
        let (pod, ips) = add_pod_ips(&lab, i, &format!("fepod{i}"));
        assert_eq!(ips.len(), 2, "ferry pod on node {i}: {ips:?}");
        pods.push((pod, ips));
    }
    let node_of = |p: usize| p;
    // Global addresses only (the pods' and the gateways'): link-local ones play no part.
    let tentative = |ns: &Netns| ns.ip(&["-6", "addr", "show", "scope", "global", "tentative"]);
    let settled = |ns: &Netns| tentative(ns).trim().is_empty();
    let ready = wait_for(Duration::from_secs(10), || {
        pods.iter().all(|(p, _)| settled(p)) && lab.nodes.iter().all(|n| settled(&n.ns))
    });
    let left: String = pods
        .iter()
        .map(|(p, _)| tentative(p))
        .chain(lab.nodes.iter().map(|n| tentative(&n.ns)))
        .collect();
    assert!(ready, "IPv6 addresses still tentative after 10 s:\n{left}");
    let is_v6 = |ip: &str| ip.contains(':');
    let mut pings = [0, 0];
    for (a, (pa, mine)) in pods.iter().enumerate() {
        for (b, (_, ips)) in pods.iter().enumerate().filter(|(b, _)| node_of(*b) != node_of(a)) {
            for ip in ips.iter().filter(|ip| mine.iter().any(|m| is_v6(m) == is_v6(ip))) {
                let ok = wait_for(Duration::from_secs(5), || pa.ping(ip));
                assert!(
                    ok,
                    "pod {a} (node {}) cannot ping {ip} (pod {b}, node {})",
                    node_of(a),
                    node_of(b)
                );
                pings[usize::from(is_v6(ip))] += 1;
            }
        }
    }
    assert_eq!(pings, [6, 6], "every pod to every pod of every family across the three nodes");
    println!("mixed dual-stack cluster: IPv4 {v4:?}, IPv6 {v6:?}; routes both ways in both families, pings {pings:?}");
    assert!(fl.stop(0), "flanneld did not exit on SIGTERM");
}
