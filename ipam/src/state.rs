//! The in-memory form of `state.json`, its strict codec, and the allocator's decisions on it.
//! Pure: no file, lock or process here (the disk store is [`crate::store`]).

use crate::pool::Pool;
use ferry_cni::error::{EXHAUSTED, IPAM};
use ferry_cni::CniError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

mod fast;

/// Who holds an address: one CNI attachment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner { container_id: container_id.into(), ifname: ifname.into() }
    }
}

pub const STATE_VERSION: u32 = 1;

/// Everything one network's store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Round-robin cursor: last address handed out, per subnet (`"10.244.1.0/24"`).
    pub last: BTreeMap<String, IpAddr>,
    pub allocations: BTreeMap<IpAddr, Owner>,
}

#[derive(Deserialize)]
struct DiskState {
    version: u32,
    #[serde(default)]
    last: UniqueMap<String>,
    allocations: UniqueMap<DiskOwner>,
}

/// What [`State::encode`] writes: the maps serialized as they are, without copies.
#[derive(Serialize)]
struct DiskStateOut<'a> {
    version: u32,
    #[serde(serialize_with = "last_out")]
    last: &'a BTreeMap<String, IpAddr>,
    #[serde(serialize_with = "allocations_out")]
    allocations: &'a BTreeMap<IpAddr, Owner>,
}

fn last_out<S: serde::Serializer>(m: &&BTreeMap<String, IpAddr>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(k, v)| (k, v.to_string())))
}

fn allocations_out<S: serde::Serializer>(
    m: &&BTreeMap<IpAddr, Owner>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct O<'a> {
        id: &'a str,
        ifname: &'a str,
    }
    s.collect_map(m.iter().map(|(ip, o)| (ip, O { id: &o.container_id, ifname: &o.ifname })))
}

/// A JSON object read strictly: a key written twice is an error, never "the last one wins" (which
/// would silently drop one owner's allocation). Every map in `state.json` is read this way.
#[derive(Serialize)]
#[serde(transparent)]
struct UniqueMap<V>(BTreeMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(BTreeMap::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with unique keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, v)) = a.next_entry::<String, V>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("key {k:?} appears twice")));
                    }
                    m.insert(k, v);
                }
                Ok(UniqueMap(m))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct DiskOwner {
    id: String,
    ifname: String,
}

impl State {
    /// Parse and validate `state.json`; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<State, String> {
        if let Some(st) = fast::decode(bytes) {
            return Ok(st);
        }
        Self::decode_generic(bytes)
    }

    /// [`State::decode`] for any JSON spelling, with the reason when it is not valid state.
    fn decode_generic(bytes: &[u8]) -> Result<State, String> {
        let d: DiskState =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid state JSON: {e}"))?;
        if d.version != STATE_VERSION {
            return Err(format!(
                "unsupported version {} (this ferry-ipam writes {STATE_VERSION})",
                d.version
            ));
        }
        let mut st = State::default();
        for (k, v) in d.last.0 {
            let net: ipnetwork::IpNetwork =
                k.parse().map_err(|_| format!("last: key {k:?} is not a subnet"))?;
            let ip: IpAddr =
                v.parse().map_err(|_| format!("last[{k}]: {v:?} is not an IP address"))?;
            if net.is_ipv4() != ip.is_ipv4() {
                return Err(format!("last[{k}]: {ip} is of the wrong family"));
            }
            st.last.insert(k, ip);
        }
        for (k, o) in d.allocations.0 {
            let ip: IpAddr =
                k.parse().map_err(|_| format!("allocations: key {k:?} is not an IP address"))?;
            if o.id.is_empty() || o.ifname.is_empty() {
                return Err(format!("allocations[{k}]: empty id or ifname"));
            }
            let owner = Owner { container_id: o.id, ifname: o.ifname };
            if st.allocations.insert(ip, owner).is_some() {
                return Err(format!("allocations: {ip} listed twice"));
            }
        }
        Ok(st)
    }

    pub fn encode(&self) -> Vec<u8> {
        fast::encode(self).unwrap_or_else(|| self.encode_generic())
    }

    fn encode_generic(&self) -> Vec<u8> {
        let d = DiskStateOut {
            version: STATE_VERSION,
            last: &self.last,
            allocations: &self.allocations,
        };
        let mut v = Vec::with_capacity(64 + 100 * self.allocations.len());
        serde_json::to_writer(&mut v, &d).expect("state serializes");
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

    /// Allocate an address from `pool` for `owner`: `requested` if given and free, else the
    /// next free one after the pool's round-robin cursor. Idempotent: an owner already holding
    /// an address of the pool's family inside the pool gets it back; a same-family address
    /// outside the pool (the pool changed) is replaced. On error `self` may be half-changed:
    /// callers discard it (the store writes nothing on error).
    pub fn allocate(
        &mut self,
        pool: &Pool,
        owner: &Owner,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, CniError> {
        check_request(pool, owner, requested)?;
        if let Some(ip) = self.keep_held(pool, owner, requested)? {
            return Ok(ip);
        }
        match requested {
            Some(r) => self.take_requested(r, owner),
            None => self.take_next(pool, owner),
        }
    }

    /// The address `owner` already holds in `pool`, if any; stale same-family ones are dropped.
    fn keep_held(
        &mut self,
        pool: &Pool,
        owner: &Owner,
        requested: Option<IpAddr>,
    ) -> Result<Option<IpAddr>, CniError> {
        let reserved = pool.reserved();
        let held: Vec<IpAddr> =
            self.held_by(owner).into_iter().filter(|ip| ip.is_ipv4() == pool.is_ipv4()).collect();
        if let Some(&ip) = held.iter().find(|ip| pool.contains_with(&reserved, **ip)) {
            return match requested {
                Some(r) if r != ip => Err(CniError::plugin(
                    IPAM,
                    format!(
                        "ferry-ipam: {}/{} already holds {ip}, cannot also take requested {r}",
                        owner.container_id, owner.ifname
                    ),
                )),
                _ => Ok(Some(ip)),
            };
        }
        for ip in &held {
            self.allocations.remove(ip);
        }
        Ok(None)
    }

    fn take_requested(&mut self, r: IpAddr, owner: &Owner) -> Result<IpAddr, CniError> {
        if let Some(other) = self.allocations.get(&r) {
            return Err(CniError::plugin(
                IPAM,
                format!(
                    "ferry-ipam: requested IP {r} is already allocated to {}/{}",
                    other.container_id, other.ifname
                ),
            ));
        }
        self.allocations.insert(r, owner.clone());
        Ok(r)
    }

    fn take_next(&mut self, pool: &Pool, owner: &Owner) -> Result<IpAddr, CniError> {
        let key = pool.subnet.to_string();
        let ip = if self.used_in(pool) >= pool.size() {
            None
        } else {
            pool.next_free(self.last.get(&key).copied(), &|ip| self.allocations.contains_key(&ip))
        };
        let Some(ip) = ip else {
            return Err(CniError::plugin(
                EXHAUSTED,
                format!(
                    "ferry-ipam: no IP addresses available in range {} (subnet {}): all {} allocated",
                    pool.range_str(),
                    pool.subnet,
                    pool.size()
                ),
            ));
        };
        self.allocations.insert(ip, owner.clone());
        self.last.insert(key, ip);
        Ok(ip)
    }
}

/// An owner needs both parts; a requested address must be allocatable in `pool`.
fn check_request(pool: &Pool, owner: &Owner, requested: Option<IpAddr>) -> Result<(), CniError> {
    if owner.container_id.is_empty() || owner.ifname.is_empty() {
        return Err(CniError::plugin(IPAM, "ferry-ipam: owner needs a container id and an ifname"));
    }
    if let Some(why) = requested.and_then(|r| pool.reject_reason(r).map(|why| (r, why))) {
        return Err(CniError::config(format!(
            "ferry-ipam: requested IP {} cannot be allocated: {}",
            why.0, why.1
        )));
    }
    Ok(())
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
            r#"{"version":1,"allocations":{"10.0.0.3":{"id":"a","ifname":"e"},"10.0.0.3":{"id":"b","ifname":"e"}}}"#,
            r#"{"version":1,"last":{"10.0.0.0/24":"10.0.0.1","10.0.0.0/24":"10.0.0.2"},"allocations":{}}"#,
            r#"{"version":1,"version":1,"allocations":{}}"#,
        ] {
            assert!(State::decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allocates_in_memory_without_a_store() {
        let pool = Pool::new("10.0.0.0/29".parse().unwrap(), crate::Range::default()).unwrap();
        let mut st = State::default();
        let (a, b) = (Owner::new("a", "eth0"), Owner::new("b", "eth0"));
        assert_eq!(st.allocate(&pool, &a, None).unwrap().to_string(), "10.0.0.2");
        assert_eq!(st.allocate(&pool, &a, None).unwrap().to_string(), "10.0.0.2");
        let want = "10.0.0.5".parse().unwrap();
        assert_eq!(st.allocate(&pool, &b, Some(want)).unwrap(), want);
        assert_eq!(
            st.allocate(&pool, &Owner::new("c", "eth0"), Some(want)).unwrap_err().code.as_u32(),
            101
        );
        assert_eq!(
            st.allocate(&pool, &Owner::new("", "eth0"), None).unwrap_err().code.as_u32(),
            101
        );
        assert_eq!(st.last["10.0.0.0/29"].to_string(), "10.0.0.2", "requests keep the cursor");
    }

    #[test]
    fn equivalent_spellings_count_as_duplicates() {
        let bad = r#"{"version":1,"allocations":{"fd00::3":{"id":"a","ifname":"e"},"fd00:0::3":{"id":"b","ifname":"e"}}}"#;
        assert!(State::decode(bad.as_bytes()).unwrap_err().contains("twice"));
    }
}
