//! Shared helpers for the plugin tests: a node namespace with its own IPAM dir, and CNI calls.
#![allow(dead_code)]

use serde_json::Value;
use testlab::{cni, CniOut, Netns, TempDir};

pub const VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A node: a namespace the plugin runs in, plus a temp dir for IPAM state and config files.
pub struct Node {
    pub ns: Netns,
    pub dir: TempDir,
}

impl Node {
    pub fn new() -> Node {
        Node { ns: Netns::new("fn"), dir: TempDir::new("node") }
    }

    /// A ferry config with a static subnet; `extra` is spliced into the object (start with ',').
    pub fn conf(&self, ver: &str, subnet: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{ver}","name":"t","type":"ferry","subnet":"{subnet}","dataDir":"{}"{extra}}}"#,
            self.dir.path_str("ipam")
        )
    }

    pub fn call(
        &self,
        cmd: &str,
        cid: &str,
        pod: Option<&Netns>,
        ifname: &str,
        stdin: &str,
    ) -> CniOut {
        self.call_env(cmd, (cid, pod, ifname), stdin, &[])
    }

    /// [`Node::call`] with extra environment variables (`CNI_ARGS`, `FERRY_FAILPOINT`, ...).
    pub fn call_env(
        &self,
        cmd: &str,
        attachment: (&str, Option<&Netns>, &str),
        stdin: &str,
        extra: &[(&str, &str)],
    ) -> CniOut {
        let (cid, pod, ifname) = attachment;
        let netns = pod.map(|p| p.path()).unwrap_or_default();
        let path = format!("{}:/usr/lib/cni", testlab::bin_dir().display());
        let mut env = vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", path.as_str()),
        ];
        env.extend_from_slice(extra);
        cni(Some(&self.ns), &testlab::bin("ferry"), &env, stdin)
    }

    /// [`Node::call_env`] bounded in time: `None` when the plugin had not finished after
    /// `timeout` (it is then killed, by PID). For inputs that must fail fast, not hang.
    pub fn call_bounded(
        &self,
        cmd: &str,
        attachment: (&str, Option<&Netns>, &str),
        stdin: &str,
        timeout: std::time::Duration,
    ) -> Option<CniOut> {
        let (cid, pod, ifname) = attachment;
        let input = self.dir.join(&testlab::unique("stdin-"));
        std::fs::write(&input, stdin).unwrap();
        let mut c = self.ns.cmd("sh");
        c.args(["-c", "exec \"$0\" < \"$1\""]).arg(testlab::bin("ferry")).arg(&input);
        c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs([
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", &pod.map(|p| p.path()).unwrap_or_default()),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
        ]);
        let out = testlab::output_bounded(c, timeout)?;
        let _ = std::fs::remove_file(&input);
        Some(CniOut {
            rc: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// ADD eth0 into `pod`, and check at once, without waiting, that the pair can carry traffic
    /// (the plugin returns only then: see [`Node::assert_usable`]).
    pub fn add(&self, cid: &str, pod: &Netns, stdin: &str) -> Value {
        let r = self.call("ADD", cid, Some(pod), "eth0", stdin).assert_ok().json();
        self.assert_usable(cid, pod, "eth0");
        r
    }

    /// Right now (no wait): the attachment's host end and its pod end are operationally up with
    /// their queueing discipline attached. The kernel does both asynchronously after carrier
    /// comes on (linkwatch); until then a link has the `noop` qdisc, which drops what is sent.
    /// The plugin returns from ADD only once both are done.
    pub fn assert_usable(&self, cid: &str, pod: &Netns, ifname: &str) {
        let host = ferry::names::host_veth(cid, ifname);
        for (ns, dev) in [(&self.ns, host.as_str()), (pod, ifname)] {
            let l = &ns.ip_json(&["link", "show", "dev", dev])[0];
            assert!(
                l["operstate"] == "UP" && l["qdisc"] != "noop",
                "{dev} not usable right after ADD: {l}"
            );
        }
    }

    /// Wait (at most 3 s) until every link but `lo` in the node and in `pod` is operationally up
    /// with its queueing discipline attached (see [`Node::assert_usable`]): for links not made by
    /// a complete ADD of the plugin.
    pub fn wait_up(&self, pod: &Netns) {
        let done = testlab::wait_for(std::time::Duration::from_secs(3), || {
            self.ns.links_ready() && pod.links_ready()
        });
        assert!(done, "links not up after 3 s: {:?} / {}", self.links(), pod.ip(&["link"]));
    }

    /// A ferry config reading the node subnet file `text` (written to this node's dir, as ferryd
    /// writes `/run/ferry/subnet.env`); `extra` is spliced into the object (start with ',').
    pub fn conf_file(&self, ver: &str, text: &str, extra: &str) -> String {
        let f = self.dir.join(&testlab::unique("subnet-")).with_extension("env");
        std::fs::write(&f, text).unwrap();
        format!(
            r#"{{"cniVersion":"{ver}","name":"t","type":"ferry","subnetFile":"{}","dataDir":"{}"{extra}}}"#,
            f.display(),
            self.dir.path_str("ipam")
        )
    }

    /// Names of the links in the node namespace.
    pub fn links(&self) -> Vec<String> {
        self.ns
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// IPs currently allocated in this node's in-process IPAM state (`<dataDir>/<net>/state.json`).
    pub fn allocated(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.dir.join("ipam")) else { return out };
        for net in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(net.path().join("state.json")) else { continue };
            let v: Value = serde_json::from_str(&text).expect("state.json is JSON");
            if let Some(m) = v["allocations"].as_object() {
                out.extend(m.keys().cloned());
            }
        }
        out.sort();
        out
    }

    /// Files under the IPAM dir with their contents (to show nothing changed).
    pub fn ipam_state(&self) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("cd {} 2>/dev/null && find . -type f ! -name lock -exec sh -c 'echo {{}}; cat {{}}' \\; | sort", self.dir.path_str("ipam"))])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Host routes the plugin made (protocol 114) in the node, of both families.
pub fn pod_routes(node: &Node) -> usize {
    let count = |fam: &str| {
        node.ns.ip_json(&[fam, "route", "show", "proto", "114"]).as_array().map_or(0, |a| a.len())
    };
    count("-4") + count("-6")
}

/// Host ends (`fry*` links) in the node.
pub fn host_ends(node: &Node) -> usize {
    node.links().iter().filter(|l| l.starts_with("fry")).count()
}

/// Nothing of any attachment is left on `node`: no IP in the state, no host end, no host route.
pub fn assert_clean(node: &Node, when: &str) {
    assert_eq!(node.allocated(), Vec::<String>::new(), "{when}: IPs left: {}", node.ipam_state());
    assert_eq!(host_ends(node), 0, "{when}: host veths left: {:?}", node.links());
    assert_eq!(pod_routes(node), 0, "{when}: proto-114 routes left");
}

/// Config with `prevResult` added (for CHECK / DEL).
/// Breaks one thing of a pod that ADD set up: (pod netns, node, pod IPs, host interface).
pub type Breaker<'a> = &'a dyn Fn(&Netns, &Node, &[String], &str);

/// For each case: a fresh pod passes CHECK, the case breaks one thing, CHECK then fails with
/// code 103 naming nothing else, and DEL cleans up.
pub fn check_catches_each(node: &Node, conf: &str, cases: &[(&str, Breaker)]) {
    for (i, (what, break_it)) in cases.iter().enumerate() {
        let pod = Netns::new("fp");
        let cid = format!("chk{i}");
        let r = node.add(&cid, &pod, conf);
        let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_string();
        node.call("CHECK", &cid, Some(&pod), "eth0", &with_prev(conf, &r)).assert_ok();
        break_it(&pod, node, &pod_ips(&r), &host_if);
        let out = node.call("CHECK", &cid, Some(&pod), "eth0", &with_prev(conf, &r));
        assert_eq!(out.code(), 103, "CHECK after removing the {what}: {}", out.stdout);
        node.call("DEL", &cid, Some(&pod), "eth0", conf).assert_ok();
    }
}

pub fn with_prev(conf: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(conf).unwrap();
    c["prevResult"] = prev.clone();
    c.to_string()
}

pub use testlab::pod_ips;

/// The pod IP (without prefix) from a result of any version.
pub fn pod_ip(r: &Value) -> String {
    let a = r["ips"][0]["address"]
        .as_str()
        .or_else(|| r["ip4"]["ip"].as_str())
        .expect("result has an IP");
    a.split('/').next().unwrap().to_string()
}
