//! The `state.json` codec for the exact bytes [`State::encode`] writes, without serde.
//!
//! Every ADD and DEL reads, checks and rewrites the whole state, so on a node with hundreds of
//! pods the generic JSON path (a token stream, a visitor call per value, formatting machinery per
//! address) was most of what an allocation cost beyond its constant part. These two functions
//! do the same work on the one layout Ferry writes: [`decode`] checks every entry exactly as
//! [`State::decode`] does and answers `None` for anything else (another spelling, whitespace,
//! escapes, a duplicate, an empty owner, a bad address), which then goes the generic way for its
//! verdict; [`encode`] writes the same bytes as the generic encoder, or `None` when a string
//! would need escaping. Tests check both against the generic path.

use super::{Owner, State, STATE_VERSION};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.i.checked_add(s.len())?;
        (self.b.get(self.i..end)? == s).then(|| self.i = end)
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    /// A string without escapes or control characters (anything else: `None`).
    fn string(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let rest = self.b.get(self.i..)?;
        let len = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        let s = std::str::from_utf8(&rest[..len]).ok()?;
        self.i += len + 1;
        Some(s)
    }

    /// `{` entries `}`, each read by `entry`, comma-separated.
    fn object(&mut self, mut entry: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.lit(b"{")?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            entry(self)?;
            if self.eat(b'}') {
                return Some(());
            }
            self.lit(b",")?;
        }
    }
}

/// The state in `b` if `b` is exactly what [`encode`] writes for a valid state; else `None`.
pub(super) fn decode(b: &[u8]) -> Option<State> {
    let mut c = Cursor { b, i: 0 };
    let mut st = State::default();
    c.lit(format!("{{\"version\":{STATE_VERSION},\"last\":").as_bytes())?;
    c.object(|c| {
        let k = c.string()?;
        c.lit(b":")?;
        let ip: IpAddr = c.string()?.parse().ok()?;
        let net: ipnetwork::IpNetwork = k.parse().ok()?;
        if net.is_ipv4() != ip.is_ipv4() || st.last.insert(k.to_string(), ip).is_some() {
            return None;
        }
        Some(())
    })?;
    c.lit(b",\"allocations\":")?;
    let mut m = BTreeMap::new();
    c.object(|c| {
        let ip: IpAddr = c.string()?.parse().ok()?;
        c.lit(b":{\"id\":")?;
        let id = c.string()?;
        c.lit(b",\"ifname\":")?;
        let ifname = c.string()?;
        c.lit(b"}")?;
        if id.is_empty() || ifname.is_empty() {
            return None;
        }
        m.insert(ip, Owner::new(id, ifname)).is_none().then_some(())
    })?;
    c.lit(b"}")?;
    c.eat(b'\n');
    st.allocations = m;
    (c.i == b.len()).then_some(st)
}

/// Whether serde_json would write `s` as it is between quotes.
fn plain(s: &str) -> bool {
    !s.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20)
}

/// The bytes of [`State::encode`], or `None` if a string needs escaping.
pub(super) fn encode(st: &State) -> Option<Vec<u8>> {
    let owners = st.allocations.values();
    if !st.last.keys().all(|k| plain(k))
        || !owners.into_iter().all(|o| plain(&o.container_id) && plain(&o.ifname))
    {
        return None;
    }
    let mut v = Vec::with_capacity(64 + 100 * st.allocations.len());
    let _ = write!(v, "{{\"version\":{STATE_VERSION},\"last\":{{");
    for (i, (k, ip)) in st.last.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(v, "{sep}\"{k}\":\"{ip}\"");
    }
    v.extend_from_slice(b"},\"allocations\":{");
    for (i, (ip, o)) in st.allocations.iter().enumerate() {
        if i > 0 {
            v.push(b',');
        }
        let _ = write!(v, "\"{ip}\":{{\"id\":\"");
        v.extend_from_slice(o.container_id.as_bytes());
        v.extend_from_slice(b"\",\"ifname\":\"");
        v.extend_from_slice(o.ifname.as_bytes());
        v.extend_from_slice(b"\"}");
    }
    v.extend_from_slice(b"}}\n");
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use testlab::Rng;

    fn state(r: &mut Rng) -> State {
        let ids = [
            "c1",
            "a-b_c.d",
            "0123456789abcdef0123456789abcdef",
            "q\"uote",
            "back\\slash",
            "tab\there",
            "ünï",
            "x",
        ];
        let ifs = ["eth0", "net1", "e", "we\"ird", "ctl\u{1}"];
        // A third of the states may hold names that need escaping (the generic path's).
        let (ids, ifs) =
            if r.index(3) == 0 { (&ids[..], &ifs[..]) } else { (&ids[..3], &ifs[..3]) };
        let mut st = State::default();
        for _ in 0..r.index(40) {
            let ip: IpAddr = if r.index(3) == 0 {
                format!("fd00::{:x}", r.index(5000)).parse().unwrap()
            } else {
                format!("10.{}.{}.{}", r.index(3), r.index(256), r.index(256)).parse().unwrap()
            };
            st.allocations.insert(ip, Owner::new(*r.pick(ids), *r.pick(ifs)));
        }
        for _ in 0..r.index(3) {
            let (k, v) = match r.index(3) {
                0 => ("fd00::/64", "fd00::7"),
                1 => ("10.1.0.0/16", "10.1.2.3"),
                _ => ("10.0.0.0/24", "10.0.0.9"),
            };
            st.last.insert(k.into(), v.parse().unwrap());
        }
        st
    }

    #[test]
    fn writes_what_the_generic_encoder_writes_and_reads_it_back() {
        let mut r = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut fast_ones = 0;
        for _ in 0..3000 {
            let st = state(&mut r);
            let generic = st.encode_generic();
            assert_eq!(st.encode(), generic);
            if let Some(b) = encode(&st) {
                fast_ones += 1;
                assert_eq!(decode(&b).as_ref(), Some(&st), "{}", String::from_utf8_lossy(&b));
            }
            assert_eq!(State::decode(&generic).unwrap(), st);
        }
        assert!(fast_ones > 1500, "the fast path ran {fast_ones} times");
    }

    /// Whatever the bytes, `State::decode` (fast path first) answers as the generic path does:
    /// the same state, or an error where it errs.
    #[test]
    fn damaged_files_get_the_generic_verdict() {
        let mut r = Rng::new(7);
        let junk = [b'"', b'\\', b',', b':', b'{', b'}', b' ', b'1', b'a', b'.', 0, 0xff, b'\n'];
        let mut differing_ok = 0;
        for _ in 0..20000 {
            let mut b = state(&mut r).encode_generic();
            for _ in 0..1 + r.index(3) {
                let at = r.index(b.len());
                match r.index(4) {
                    0 => {
                        b.remove(at);
                    }
                    1 => b.insert(at, junk[r.index(junk.len())]),
                    2 => b[at] = junk[r.index(junk.len())],
                    _ => {
                        // a copy of a stretch elsewhere: duplicate keys and entries
                        let len = r.index(40).min(b.len() - at);
                        let piece = b[at..at + len].to_vec();
                        let to = r.index(b.len());
                        b.splice(to..to, piece);
                    }
                }
            }
            let (got, want) = (State::decode(&b), State::decode_generic(&b));
            match (&got, &want) {
                (Ok(g), Ok(w)) => {
                    assert_eq!(g, w, "{}", String::from_utf8_lossy(&b));
                    differing_ok += 1;
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{got:?} vs {want:?} for {}", String::from_utf8_lossy(&b)),
            }
        }
        assert!(differing_ok > 100, "only {differing_ok} damaged files stayed valid");
    }
}
