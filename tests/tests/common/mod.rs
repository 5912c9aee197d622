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
        let netns = pod.map(|p| p.path()).unwrap_or_default();
        let path = format!("{}:/usr/lib/cni", testlab::bin_dir().display());
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", path.as_str()),
        ];
        cni(Some(&self.ns), &testlab::bin("ferry"), &env, stdin)
    }

    pub fn add(&self, cid: &str, pod: &Netns, stdin: &str) -> Value {
        self.call("ADD", cid, Some(pod), "eth0", stdin).assert_ok().json()
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

/// Config with `prevResult` added (for CHECK / DEL).
pub fn with_prev(conf: &str, prev: &Value) -> String {
    let mut c: Value = serde_json::from_str(conf).unwrap();
    c["prevResult"] = prev.clone();
    c.to_string()
}

/// The pod IP (without prefix) from a result of any version.
pub fn pod_ip(r: &Value) -> String {
    let a = r["ips"][0]["address"]
        .as_str()
        .or_else(|| r["ip4"]["ip"].as_str())
        .expect("result has an IP");
    a.split('/').next().unwrap().to_string()
}
