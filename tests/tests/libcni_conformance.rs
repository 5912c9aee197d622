//! Ferry through the REFERENCE libcni (Debian golang-github-appc-cni-dev 1.1.2, driven by
//! tests/go/libcni-driver): each conflist in conf-examples/, loaded verbatim by
//! `libcni.LoadConfList`, goes through AddNetworkList, CheckNetworkList and DelNetworkList on
//! real namespaces, including chains with the reference `portmap` and `tuning` plugins.

use serde_json::Value;
use testlab::*;

struct Run {
    node: Netns,
    pod: Netns,
    tmp: TempDir,
    name: String,
    id: String,
}

impl Run {
    /// Copy `conf-examples/<file>` unchanged into a fresh conf dir.
    fn new(file: &str, name: &str) -> Run {
        Run::with_conf_dir(name, |tmp| {
            let conf = tmp.join("conf").join(file);
            std::fs::copy(workspace().join("conf-examples").join(file), conf).unwrap();
        })
    }

    /// A conflist given as text (`{dir}` is replaced by this run's temp dir), as `name.conflist`.
    fn with_conflist(text: &str, name: &str) -> Run {
        Run::with_conf_dir(name, |tmp| {
            let text = text.replace("{dir}", &tmp.path_str(""));
            std::fs::write(tmp.join("conf").join(format!("{name}.conflist")), text).unwrap();
        })
    }

    /// A run whose fresh conf dir `fill` populates.
    fn with_conf_dir(name: &str, fill: impl FnOnce(&TempDir)) -> Run {
        require_sandbox();
        let tmp = TempDir::new("lc");
        std::fs::create_dir_all(tmp.join("conf")).unwrap();
        fill(&tmp);
        Run {
            node: Netns::new("lcn"),
            pod: Netns::new("lcp"),
            tmp,
            name: name.into(),
            id: unique("lc"),
        }
    }

    fn call(&self, cmd: &str, extra: &[&str]) -> CniOut {
        self.call_as(&self.pod, &self.id, cmd, extra)
    }

    /// [`Run::call`] for another attachment on the same node: pod namespace `pod`, container `id`.
    fn call_as(&self, pod: &Netns, id: &str, cmd: &str, extra: &[&str]) -> CniOut {
        let bindir = format!("{}:/usr/lib/cni", bin_dir().display());
        let (conf, cache, netns) =
            (self.tmp.path_str("conf"), self.tmp.path_str("cache"), pod.path());
        let mut a = vec![
            cmd,
            "--confdir",
            &conf,
            "--name",
            &self.name,
            "--netns",
            &netns,
            "--id",
            id,
            "--ifname",
            "eth0",
            "--bindir",
            &bindir,
            "--cachedir",
            &cache,
        ];
        a.extend_from_slice(extra);
        libcni(&self.node, &a)
    }

    fn cache_file(&self) -> std::path::PathBuf {
        self.cache_file_of(&self.id)
    }

    fn cache_file_of(&self, id: &str) -> std::path::PathBuf {
        self.tmp.join("cache/results").join(format!("{}-{id}-eth0", self.name))
    }

    /// ADD → result checks → CHECK → ping → DEL → everything gone.
    fn lifecycle(&self, subnet_prefix: &str, extra: &[&str]) -> Value {
        let out = self.call("add", extra);
        out.assert_ok();
        let r = out.json();
        assert_eq!(r["cniVersion"], "1.0.0");
        let ip = r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
        assert!(ip.starts_with(subnet_prefix), "{r}");
        assert!(r["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["sandbox"] == self.pod.path()));
        let cache: Value = serde_json::from_str(
            &std::fs::read_to_string(self.cache_file()).expect("libcni cache written"),
        )
        .unwrap();
        assert_eq!(cache["kind"], "cniCacheV1");
        assert!(self.node.ping(&ip), "node -> pod {ip}");
        self.call("check", extra).assert_ok();
        self.call("del", extra).assert_ok();
        assert!(!self.cache_file().exists(), "libcni cache removed by DEL");
        assert!(!self.pod.sh("ip link show eth0").status.success(), "pod interface gone");
        // A second DEL (no cache any more, so no prevResult) still succeeds.
        self.call("del", extra).assert_ok();
        r
    }
}

#[test]
fn static_subnet_conflist_chained_with_portmap() {
    let run = Run::new("10-ferry-static.conflist", "ferry-static");
    let pm = r#"{"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]}"#;
    let out = run.call("add", &["--capargs", pm]);
    out.assert_ok();
    let nat = run.node.sh("iptables -t nat -S 2>/dev/null || nft list ruleset");
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("18080"),
        "portmap installed its DNAT rule after ferry"
    );
    // (No CHECK here: Debian's portmap 1.1.1 fails its own CHECK looking for an IPv6 DNAT chain it
    // never made for an IPv4-only pod; the ferry-only CHECK path is covered by lifecycle() below.)
    run.call("del", &["--capargs", pm]).assert_ok();
    let nat = run.node.sh("iptables -t nat -S 2>/dev/null || nft list ruleset");
    assert!(!String::from_utf8_lossy(&nat.stdout).contains("18080"), "portmap rule removed by DEL");
    run.lifecycle("10.244.1.", &[]);
}

#[test]
fn node_conflist_reads_the_daemon_subnet_file_and_chains_tuning() {
    let run = Run::new("10-ferry-node.conflist", "ferry");
    // Before the daemon wrote the subnet file: try again later (code 11), nothing cached.
    let _ = std::fs::remove_file("/run/ferry/subnet.env");
    let out = run.call("add", &[]);
    assert_ne!(out.rc, 0);
    assert!(
        out.stdout.contains("\"code\":11") || out.stderr.contains("does not exist yet"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    run.call("del", &[]).assert_ok();
    std::fs::create_dir_all("/run/ferry").unwrap();
    std::fs::write("/run/ferry/subnet.env", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n").unwrap();
    let r = run.lifecycle("10.244.7.", &[]);
    assert_eq!(r["ips"][0]["gateway"], "10.244.7.1");
}

#[test]
fn ptp_with_ferry_ipam_conflist() {
    let run = Run::new("10-ptp-ferry-ipam.conflist", "ptp-ferry-ipam");
    run.lifecycle("10.244.2.", &[]);
}

#[test]
fn version_of_every_plugin_in_the_chain() {
    let run = Run::new("10-ferry-static.conflist", "ferry-static");
    let out = run.call("version", &[]);
    out.assert_ok();
    assert!(out.stdout.contains("1.1.0") && out.stdout.contains("0.1.0"), "{}", out.stdout);
}

/// Both families' NAT tables of the node (`iptables-save` / `ip6tables-save -t nat`).
fn nat(node: &Netns) -> (String, String) {
    let save = |prog: &str| {
        let out = node.cmd(prog).args(["-t", "nat"]).output().expect(prog);
        assert!(out.status.success(), "{prog}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    (save("iptables-save"), save("ip6tables-save"))
}

/// The dual-stack node conflist through the reference libcni: ferry reading a dual-stack subnet
/// file (as ferryd writes it), chained with the reference portmap. Two pods: both IPs in the
/// result libcni returns and caches, real addresses and routes in each pod, portmap's DNAT for
/// both families, ping and ping6 between the pods and from the node, CHECK, DEL.
#[test]
fn dual_stack_conflist_chained_with_portmap() {
    let run = Run::with_conflist(
        r#"{"cniVersion":"1.0.0","name":"ferry-dual","plugins":[
  {"type":"ferry","subnetFile":"{dir}/subnet.env","dataDir":"{dir}/ipam"},
  {"type":"portmap","capabilities":{"portMappings":true}}
]}"#,
        "ferry-dual",
    );
    std::fs::write(
        run.tmp.join("subnet.env"),
        "FLANNEL_NETWORK=10.77.0.0/16\nFLANNEL_SUBNET=10.77.1.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:77::/48\nFLANNEL_IPV6_SUBNET=fd00:77:0:1::/64\n\
         FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let pm = r#"{"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]}"#;
    let caps = ["--capargs", pm];
    let other = Netns::new("lcp");
    let other_id = unique("lc");

    let ra = run.call("add", &caps).assert_ok().json();
    let rb = run.call_as(&other, &other_id, "add", &[]).assert_ok().json();
    let mut ips = vec![];
    for (r, pod, id) in [(&ra, &run.pod, &run.id), (&rb, &other, &other_id)] {
        assert_eq!(r["cniVersion"], "1.0.0", "{r}");
        let list = r["ips"].as_array().unwrap();
        assert_eq!(list.len(), 2, "both families in the result: {r}");
        let (v4, v6) = (list[0]["address"].as_str().unwrap(), list[1]["address"].as_str().unwrap());
        assert!(v4.starts_with("10.77.1.") && v4.ends_with("/24"), "{r}");
        assert!(v6.starts_with("fd00:77:0:1::") && v6.ends_with("/64"), "{r}");
        assert_eq!(
            (&list[0]["gateway"], &list[1]["gateway"]),
            (&"10.77.1.1".into(), &"fd00:77:0:1::1".into())
        );
        let idx = list[0]["interface"].as_u64().unwrap() as usize;
        assert_eq!(list[1]["interface"], list[0]["interface"]);
        assert_eq!(r["interfaces"][idx]["sandbox"], pod.path(), "{r}");
        // libcni cached the same result.
        let cache: Value =
            serde_json::from_str(&std::fs::read_to_string(run.cache_file_of(id)).unwrap()).unwrap();
        assert_eq!(cache["result"]["ips"], r["ips"], "{cache}");
        // The real addresses and routes in the pod.
        let a4 = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        let a6 = pod.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]);
        assert!(a4.contains(v4) && a6.contains(v6), "{a4}\n{a6}");
        let d4 = pod.ip(&["-4", "route", "show", "default"]);
        let d6 = pod.ip(&["-6", "route", "show", "default"]);
        assert!(d4.contains("via 10.77.1.1 dev eth0"), "{d4}");
        assert!(d6.contains("via fd00:77:0:1::1 dev eth0"), "{d6}");
        let bare = |a: &str| a.split('/').next().unwrap().to_string();
        ips.push((bare(v4), bare(v6)));
    }
    // portmap's DNAT for both of pod A's addresses (the capability reached the chain's end).
    let (n4, n6) = nat(&run.node);
    assert!(
        n4.contains(&format!("--dport 18080 -j DNAT --to-destination {}:80", ips[0].0)),
        "{n4}"
    );
    assert!(
        n6.contains(&format!("--dport 18080 -j DNAT --to-destination [{}]:80", ips[0].1)),
        "{n6}"
    );
    // Traffic: pod <-> pod on both families, node -> pods.
    let (b4, b6) = &ips[1];
    assert!(run.pod.ping(b4) && run.pod.ping(b6), "pod A -> pod B {b4} {b6}");
    assert!(other.ping(&ips[0].0) && other.ping(&ips[0].1), "pod B -> pod A");
    for (ip4, ip6) in &ips {
        assert!(run.node.ping(ip4) && run.node.ping(ip6), "node -> {ip4} {ip6}");
    }
    // CHECK: ferry per family, then portmap with its rules. Debian's portmap 1.1.1 has upstream
    // bug containernetworking/plugins#819: its CHECK looks for the IPv4 DNAT rules in the IPv6
    // table (so it fails whenever a pod has an IPv6 address and port mappings). Tolerate exactly
    // that error, after ferry passed; and require the whole chain's CHECK to pass without the
    // port mappings, and for pod B.
    let check = run.call("check", &caps);
    if check.rc != 0 {
        assert!(check.stdout.contains("could not check ipv6 dnat"), "CHECK failed: {check:?}");
        eprintln!("note: portmap CHECK hit upstream bug containernetworking/plugins#819");
    }
    run.call("check", &[]).assert_ok();
    run.call_as(&other, &other_id, "check", &[]).assert_ok();
    // DEL: both pods, every trace gone.
    run.call("del", &caps).assert_ok();
    run.call_as(&other, &other_id, "del", &[]).assert_ok();
    let (n4, n6) = nat(&run.node);
    assert!(!n4.contains("18080") && !n6.contains("18080"), "portmap rules survived DEL");
    assert!(!run.cache_file().exists() && !run.cache_file_of(&other_id).exists());
    for pod in [&run.pod, &other] {
        assert!(!pod.sh("ip link show eth0").status.success(), "pod interface gone");
    }
    let state = std::fs::read_to_string(run.tmp.join("ipam/ferry-dual/state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["allocations"], serde_json::json!({}), "both families released: {state}");
    let left = run.node.ip(&["-6", "route", "show", "proto", "114"]);
    assert!(left.trim().is_empty(), "IPv6 host routes left: {left}");
}
