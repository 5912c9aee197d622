//! The store's entries and the verdict on them, kept up to date one entry at a time.
//!
//! [`evaluate`] judges every lease: O(n log n), 8 ms for 5,000 leases, which at 100 lease changes
//! a second was most of a core. A lease change touches at most two subnets (its old and new
//! ones per family) and the few keys that offer a route to them, so [`PeerSet`] re-judges only
//! those: the lease map is ordered by key and every well-formed lease's key starts with its
//! IPv4 subnet's key (`10.244.1.0-24`, `10.244.1.0-24&fd00::-64`: only canonical keys parse), so
//! the keys that may hold an IPv4 subnet are one range of the map; IPv6 subnets have a small
//! index of their own. The result is, after every change, exactly what [`evaluate`] would say
//! (property-tested against it); a full listing, a changed [`Me`] or a lease running out
//! re-evaluates everything.

use super::{entry, evaluate, judge, live, vtep, Entry, Judged, Leases, Me, Verdict};
use crate::route_plan::Want;
use crate::store::{subnet_key, WatchEvent};
use ipnetwork::{IpNetwork, Ipv6Network};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Bound;
use std::time::SystemTime;

pub use crate::route_plan::WantChange as Change;

/// Verdict keys that changed, per map.
#[derive(Debug, Default, PartialEq)]
pub struct Reported {
    pub bad: BTreeSet<String>,
    pub unencapsulated: BTreeSet<String>,
}

#[derive(Default)]
pub struct PeerSet {
    leases: Leases,
    verdict: Verdict,
    /// What `verdict` was worked out for (`None`: never evaluated).
    me: Option<Me>,
    /// Live keys whose every family is this node's own.
    own: usize,
    /// Well-formed leases with an IPv6 subnet, by that subnet.
    v6: BTreeSet<(Ipv6Network, Box<str>)>,
    /// The earliest expiry of a lease live when judged: past it, everything is re-judged.
    next_expiry: Option<SystemTime>,
    /// Wanted routes changed since [`PeerSet::take_changes`]: subnet → (before, now).
    pending: BTreeMap<IpNetwork, (Option<IpAddr>, Option<IpAddr>)>,
    /// Keys whose entry in `bad` or `unencapsulated` changed since [`PeerSet::take_reported`].
    reported: Reported,
}

impl PeerSet {
    pub fn new() -> PeerSet {
        PeerSet::default()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    pub fn want(&self) -> &Want {
        &self.verdict.want
    }

    /// Fold one store event in, judged for `me` at `now`.
    pub fn apply(&mut self, ev: WatchEvent, me: &Me, now: SystemTime) {
        self.refresh(me, now);
        match ev {
            WatchEvent::Resync(_) => {
                super::apply_event(&mut self.leases, ev);
                self.rebuild(me, now);
            }
            WatchEvent::Put(e) => {
                let (key, e) = entry(e);
                if matches!(&e, Ok(l) if *l.subnets().key() != *key) {
                    // Only canonical keys parse, so this is not a store's lease: be exact anyway.
                    self.put_raw(key, Some(e));
                    return self.rebuild(me, now);
                }
                self.set(key, Some(e), me, now);
            }
            WatchEvent::Removed { key, .. } => self.set(key.into_boxed_str(), None, me, now),
        }
    }

    /// Re-judge everything if `me` changed or a lease ran out since; true if it did.
    fn refresh(&mut self, me: &Me, now: SystemTime) -> bool {
        let stale = self.me.as_ref() != Some(me) || self.next_expiry.is_some_and(|t| t <= now);
        if stale {
            self.rebuild(me, now);
        }
        stale
    }

    /// Re-judge everything (a full listing, a changed `me`, a lease ran out).
    fn rebuild(&mut self, me: &Me, now: SystemTime) {
        let v = evaluate(&self.leases, me, now);
        for (d, was, now) in crate::route_plan::diff(&self.verdict.want, &v.want) {
            self.note(d, was, now);
        }
        self.reported.bad.extend(changed_keys(&self.verdict.bad, &v.bad));
        self.reported
            .unencapsulated
            .extend(changed_keys(&self.verdict.unencapsulated, &v.unencapsulated));
        self.verdict = v;
        self.me = Some(*me);
        self.v6 = self
            .leases
            .iter()
            .filter_map(|(k, e)| Some((e.as_ref().ok()?.subnet6?, k.clone())))
            .collect();
        self.own = self.leases.values().filter(|e| is_own(e, me, now)).count();
        self.next_expiry = self.leases.values().filter_map(|e| later(e, now)).min();
    }

    /// The wanted routes that changed since the last call, by subnet.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|(_, (was, now))| was != now)
            .map(|(d, (was, now))| (d, was, now))
            .collect()
    }

    /// The keys whose entry in the verdict's `bad` and `unencapsulated` changed (appeared, took
    /// another reason, went) since the last call.
    pub fn take_reported(&mut self) -> Reported {
        std::mem::take(&mut self.reported)
    }

    fn note(&mut self, d: IpNetwork, was: Option<IpAddr>, now: Option<IpAddr>) {
        self.pending.entry(d).and_modify(|p| p.1 = now).or_insert((was, now));
    }

    /// Replace (or remove) one key's entry and re-judge what it touches.
    fn set(&mut self, key: Box<str>, new: Option<Entry>, me: &Me, now: SystemTime) {
        let mut subnets = self.leases.get(&key).map(subnets_of).unwrap_or_default();
        self.own -= usize::from(self.leases.get(&key).is_some_and(|e| is_own(e, me, now)));
        if let Some(e) = new.as_ref().and_then(|e| later(e, now)) {
            self.next_expiry = Some(self.next_expiry.map_or(e, |t| t.min(e)));
        }
        subnets.extend(new.as_ref().map(subnets_of).unwrap_or_default());
        self.put_raw(key.clone(), new);
        self.own += usize::from(self.leases.get(&key).is_some_and(|e| is_own(e, me, now)));
        self.verdict.own_present = self.own > 0;
        subnets.sort();
        subnets.dedup();
        let mut touched: BTreeSet<Box<str>> = BTreeSet::from([key.clone()]);
        // unencapsulated entries taken out, to tell which really changed.
        let mut unencap: BTreeMap<String, String> = BTreeMap::new();
        unencap.extend(self.verdict.unencapsulated.remove_entry(&*key));
        for s in subnets {
            let cands = self.candidates(s, me, now);
            let winner = cands.iter().min_by_key(|(k, _)| (k.contains('&'), &**k));
            let gw = winner.map(|(_, g)| *g);
            let was = self.verdict.want.get(&s).copied();
            if was != gw {
                self.note(s, was, gw);
                match gw {
                    Some(g) => self.verdict.want.insert(s, g),
                    None => self.verdict.want.remove(&s),
                };
            }
            if let IpNetwork::V4(s4) = s {
                for (k, _) in &cands {
                    unencap.extend(self.verdict.unencapsulated.remove_entry(&**k));
                }
                self.verdict.vteps.remove(&s4);
                let vx = winner.and_then(|(k, _)| match self.leases.get(k) {
                    Some(Ok(l)) => vtep(l, me).map(|r| (k, r)),
                    _ => None,
                });
                match vx {
                    Some((_, Ok(mac))) => {
                        self.verdict.vteps.insert(s4, mac);
                    }
                    Some((k, Err(why))) => {
                        if unencap.get(&**k) == Some(&why) {
                            unencap.remove(&**k); // unchanged
                        } else {
                            self.reported.unencapsulated.insert(k.to_string());
                        }
                        self.verdict.unencapsulated.insert(k.to_string(), why);
                    }
                    None => {}
                }
            }
            touched.extend(cands.into_iter().map(|(k, _)| k));
        }
        for k in touched {
            let reason = self.bad_reason(&k, me, now);
            let had = match reason {
                Some(r) => self.verdict.bad.insert(k.to_string(), r.clone()) != Some(r),
                None => self.verdict.bad.remove(&*k).is_some(),
            };
            if had {
                self.reported.bad.insert(k.into());
            }
        }
        // Taken out and not put back.
        let gone = unencap.into_keys().filter(|k| !self.verdict.unencapsulated.contains_key(k));
        self.reported.unencapsulated.extend(gone);
    }

    fn put_raw(&mut self, key: Box<str>, new: Option<Entry>) {
        if let Some(Ok(l)) = self.leases.get(&key) {
            if let Some(s6) = l.subnet6 {
                self.v6.remove(&(s6, key.clone()));
            }
        }
        match new {
            Some(e) => {
                if let Ok(l) = &e {
                    if let Some(s6) = l.subnet6 {
                        self.v6.insert((s6, key.clone()));
                    }
                }
                self.leases.insert(key, e);
            }
            None => {
                self.leases.remove(&key);
            }
        }
    }

    /// The keys whose live lease offers a route to peer subnet `s`, with its gateway.
    fn candidates(&self, s: IpNetwork, me: &Me, now: SystemTime) -> Vec<(Box<str>, IpAddr)> {
        let keys: Vec<&Box<str>> = match s {
            IpNetwork::V4(s4) => {
                let p = subnet_key(s4);
                self.leases
                    .range::<str, _>((Bound::Included(p.as_str()), Bound::Unbounded))
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(&p))
                    .filter(|k| k.len() == p.len() || k.as_bytes()[p.len()] == b'&')
                    .collect()
            }
            IpNetwork::V6(s6) => self
                .v6
                .range((s6, Box::<str>::from(""))..)
                .take_while(|(n, _)| *n == s6)
                .map(|(_, k)| k)
                .collect(),
        };
        keys.into_iter()
            .filter_map(|k| {
                let l = self.leases.get(k)?.as_ref().ok().filter(|l| live(l, now))?;
                judge(l, me).into_iter().find_map(|(_, j)| match j {
                    Judged::Peer(d, gw) if d == s => Some((k.clone(), gw)),
                    _ => None,
                })
            })
            .collect()
    }

    /// `key`'s entry in the verdict's `bad`, as [`evaluate`] words it.
    fn bad_reason(&self, key: &str, me: &Me, now: SystemTime) -> Option<String> {
        let l = match self.leases.get(key)? {
            Err(b) => return Some(b.to_string()),
            Ok(l) if !live(l, now) => return None,
            Ok(l) => l,
        };
        let parts = judge(l, me);
        if parts.iter().all(|(_, j)| matches!(j, Judged::Own)) {
            return None;
        }
        let dual = me.v4.is_some() && me.v6.is_some();
        let mut reasons = Vec::new();
        let mut peers = Vec::new();
        for (family, j) in parts {
            match j {
                Judged::Peer(d, _) => peers.push(d),
                other => reasons.push(super::reason(family, other, dual)),
            }
        }
        peers.sort();
        for d in peers {
            let cands = self.candidates(d, me, now);
            let winner = cands.iter().map(|(k, _)| k).min_by_key(|k| (k.contains('&'), &***k));
            if let Some(w) = winner.filter(|w| &***w != key) {
                reasons.push(format!("subnet {d} is also leased as {w}"));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// The peer subnets a well-formed lease names (whether or not they are routed).
/// Keys whose entry differs between two verdict maps (a key may come twice).
fn changed_keys(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let all = old.keys().chain(new.keys());
    all.filter(|k| old.get(*k) != new.get(*k)).cloned().collect()
}

fn subnets_of(e: &Entry) -> Vec<IpNetwork> {
    let Ok(l) = e else { return Vec::new() };
    let s = l.subnets();
    s.v4.map(IpNetwork::V4).into_iter().chain(s.v6.map(IpNetwork::V6)).collect()
}

fn is_own(e: &Entry, me: &Me, now: SystemTime) -> bool {
    matches!(e, Ok(l) if live(l, now) && judge(l, me).iter().all(|(_, j)| matches!(j, Judged::Own)))
}

/// The entry's expiry if it is still to come.
fn later(e: &Entry, now: SystemTime) -> Option<SystemTime> {
    e.as_ref().ok()?.expires.filter(|t| *t > now)
}

#[cfg(test)]
mod tests;
