//! The in-memory form of `state.json` and its strict decoder.

use crate::pool::Pool;
use crate::store::Owner;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const STATE_VERSION: u32 = 1;

/// Everything one network's store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Round-robin cursor: last address handed out, per subnet (`"10.244.1.0/24"`).
    pub last: BTreeMap<String, IpAddr>,
    pub allocations: BTreeMap<IpAddr, Owner>,
}

#[derive(Serialize, Deserialize)]
struct DiskState {
    version: u32,
    #[serde(default)]
    last: BTreeMap<String, String>,
    allocations: BTreeMap<String, DiskOwner>,
}

#[derive(Serialize, Deserialize)]
struct DiskOwner {
    id: String,
    ifname: String,
}

impl State {
    /// Parse and validate `state.json`; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<State, String> {
        let d: DiskState =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid state JSON: {e}"))?;
        if d.version != STATE_VERSION {
            return Err(format!(
                "unsupported version {} (this ferry-ipam writes {STATE_VERSION})",
                d.version
            ));
        }
        let mut st = State::default();
        for (k, v) in d.last {
            let net: ipnetwork::IpNetwork =
                k.parse().map_err(|_| format!("last: key {k:?} is not a subnet"))?;
            let ip: IpAddr =
                v.parse().map_err(|_| format!("last[{k}]: {v:?} is not an IP address"))?;
            if net.is_ipv4() != ip.is_ipv4() {
                return Err(format!("last[{k}]: {ip} is of the wrong family"));
            }
            st.last.insert(k, ip);
        }
        for (k, o) in d.allocations {
            let ip: IpAddr =
                k.parse().map_err(|_| format!("allocations: key {k:?} is not an IP address"))?;
            if o.id.is_empty() || o.ifname.is_empty() {
                return Err(format!("allocations[{k}]: empty id or ifname"));
            }
            if st.allocations.insert(ip, Owner { container_id: o.id, ifname: o.ifname }).is_some() {
                return Err(format!("allocations: {ip} listed twice"));
            }
        }
        Ok(st)
    }

    pub fn encode(&self) -> Vec<u8> {
        let d = DiskState {
            version: STATE_VERSION,
            last: self.last.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            allocations: self
                .allocations
                .iter()
                .map(|(ip, o)| {
                    (
                        ip.to_string(),
                        DiskOwner { id: o.container_id.clone(), ifname: o.ifname.clone() },
                    )
                })
                .collect(),
        };
        let mut v = serde_json::to_vec(&d).expect("state serializes");
        v.push(b'\n');
        v
    }

    pub fn held_by(&self, owner: &Owner) -> Vec<IpAddr> {
        self.allocations.iter().filter(|(_, o)| *o == owner).map(|(ip, _)| *ip).collect()
    }

    /// Number of allocations inside `pool`'s allocatable set.
    pub fn used_in(&self, pool: &Pool) -> u128 {
        let reserved = pool.reserved();
        self.allocations.keys().filter(|ip| pool.contains_with(&reserved, **ip)).count() as u128
    }

    pub fn release(&mut self, owner: &Owner) -> Vec<IpAddr> {
        let ips = self.held_by(owner);
        for ip in &ips {
            self.allocations.remove(ip);
        }
        ips
    }

    /// Drop every allocation whose owner is not in `keep`; returns the dropped ones.
    pub fn retain(&mut self, keep: &[Owner]) -> Vec<(IpAddr, Owner)> {
        let keep: std::collections::HashSet<&Owner> = keep.iter().collect();
        let gone: Vec<(IpAddr, Owner)> = self
            .allocations
            .iter()
            .filter(|(_, o)| !keep.contains(o))
            .map(|(ip, o)| (*ip, o.clone()))
            .collect();
        for (ip, _) in &gone {
            self.allocations.remove(ip);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut st = State::default();
        st.allocations.insert("10.0.0.2".parse().unwrap(), Owner::new("c1", "eth0"));
        st.allocations.insert("fd00::2".parse().unwrap(), Owner::new("c1", "eth0"));
        st.last.insert("10.0.0.0/24".into(), "10.0.0.2".parse().unwrap());
        let bytes = st.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"version":1,"last":{"10.0.0.0/24":"10.0.0.2"},"allocations":{"#),
            "{text}"
        );
        assert!(text.contains(r#""10.0.0.2":{"id":"c1","ifname":"eth0"}"#));
        assert_eq!(State::decode(&bytes).unwrap(), st);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "garbage",
            "{",
            "[]",
            r#"{"version":2,"allocations":{}}"#,
            r#"{"allocations":{}}"#,
            r#"{"version":1}"#,
            r#"{"version":1,"allocations":{"10.0.0.300":{"id":"a","ifname":"eth0"}}}"#,
            r#"{"version":1,"allocations":{"10.0.0.3":{"id":"","ifname":"eth0"}}}"#,
            r#"{"version":1,"allocations":{"10.0.0.3":{"id":"a"}}}"#,
            r#"{"version":1,"allocations":{"10.0.0.3":"a"}}"#,
            r#"{"version":1,"last":{"x":"10.0.0.1"},"allocations":{}}"#,
            r#"{"version":1,"last":{"10.0.0.0/24":"fd00::1"},"allocations":{}}"#,
            r#"{"version":1,"allocations":{"10.0.0.3":{"id":"a","ifname":"e"},"10.0.0.03":{"id":"b","ifname":"e"}}}"#,
        ] {
            assert!(State::decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn equivalent_spellings_count_as_duplicates() {
        let bad = r#"{"version":1,"allocations":{"fd00::3":{"id":"a","ifname":"e"},"fd00:0::3":{"id":"b","ifname":"e"}}}"#;
        assert!(State::decode(bad.as_bytes()).unwrap_err().contains("twice"));
    }
}
