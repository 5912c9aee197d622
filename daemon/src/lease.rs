//! Claiming and renewing this node's subnet lease, over any [`LeaseStore`].
//!
//! A node keeps the subnet its subnet file (and so its pods) use: with a remembered subnet it
//! renews its lease there, creates it when the key is free or expired, and re-writes it when the
//! key holds an entry that is not a lease (garbage, a look-alike's debris); when another node
//! validly leases it, the claim fails ([`ClaimError::Taken`]) instead of renumbering the node
//! under its pods. Without one (flannel's order): (1) a lease that already carries this node's
//! public IP; (2) a random pick among up to 100 free subnets in [SubnetMin, SubnetMax], created
//! only if absent (a lost race retries with a fresh listing).

use crate::config::{span, Mode, Net};
use crate::overlay;
use crate::peers::taken;
use crate::store::{subnet_key, Lease, LeaseAttrs, LeaseEntry, LeaseStore, StoreError};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// How long leases last and how early they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_margin: Duration,
}

const ATTEMPTS: usize = 10;
const SAMPLE: usize = 100;

#[derive(Debug)]
pub enum ClaimError {
    Store(StoreError),
    /// Every subnet in the range is taken (or the races were all lost).
    Exhausted(String),
    /// The subnet this node's pods use is validly leased to another node.
    Taken {
        subnet: Ipv4Network,
        by: Ipv4Addr,
    },
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Store(e) => e.fmt(f),
            ClaimError::Exhausted(m) => f.write_str(m),
            ClaimError::Taken { subnet, by } => write!(
                f,
                "this node's pods use {subnet}, which is now leased to {by}; refusing to move \
                 the node to another subnet under them (remove the subnet file to accept a new \
                 subnet, then restart the pods)"
            ),
        }
    }
}

impl From<StoreError> for ClaimError {
    fn from(e: StoreError) -> Self {
        ClaimError::Store(e)
    }
}

/// What this node's lease says about it: its public IP and, for the vxlan backend, flannel's
/// `BackendData` (`{"VNI":1,"VtepMAC":"0e:66:.."}`) that peers need to reach it encapsulated.
pub fn my_attrs(public_ip: Ipv4Addr, mode: Mode) -> LeaseAttrs {
    let backend_data = match mode {
        Mode::HostGw => serde_json::Value::Null,
        Mode::Vxlan(v) => overlay::backend_data(v.vni, overlay::vtep_mac(public_ip)),
    };
    LeaseAttrs { public_ip, backend_type: mode.backend_type().into(), backend_data }
}

/// A lease in the store that already belongs to this node and fits the config.
pub fn existing(
    entries: &[LeaseEntry],
    net: &Net,
    me: Ipv4Addr,
    remembered: Option<Ipv4Network>,
    now: SystemTime,
) -> Option<Lease> {
    let mut mine: Vec<&Lease> = entries
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .filter(|l| {
            l.attrs.public_ip == me && net.in_range(l.subnet) && l.expires.is_none_or(|t| t > now)
        })
        .collect();
    mine.sort_by_key(|l| (Some(l.subnet) != remembered, l.subnet));
    mine.first().map(|l| (*l).clone())
}

/// Up to `limit` free subnets of the range, in order. `taken` may overlap and be unsorted.
pub fn free_subnets(net: &Net, taken: &[Ipv4Network], limit: usize) -> Vec<Ipv4Network> {
    // Merge the taken address intervals, then walk candidates and intervals together.
    let mut iv: Vec<(u32, u32)> = taken.iter().map(|&n| span(n)).collect();
    iv.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(iv.len());
    for (a, b) in iv {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut out = Vec::new();
    let mut k = 0;
    for c in net.candidates() {
        let (c0, c1) = span(c);
        while k < merged.len() && merged[k].1 < c0 {
            k += 1;
        }
        if k < merged.len() && merged[k].0 <= c1 {
            continue;
        }
        out.push(c);
        if out.len() >= limit {
            break;
        }
    }
    out
}

/// A random u64 from the kernel (falls back to the clock).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
            as u64
            ^ std::process::id() as u64
    }
}

/// Claim (or re-claim) this node's lease; `remembered` is the subnet its subnet file names.
pub async fn claim<S: LeaseStore>(
    store: &mut S,
    net: &Net,
    public_ip: Ipv4Addr,
    remembered: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<Lease, ClaimError> {
    let attrs = my_attrs(public_ip, net.mode);
    let remembered = remembered.filter(|s| net.in_range(*s));
    for _ in 0..ATTEMPTS {
        let (entries, _) = store.list().await?;
        let got = match remembered {
            Some(r) => keep(store, &entries, r, &attrs, ttl).await?,
            None => adopt_or_pick(store, &entries, net, &attrs, ttl).await?,
        };
        if let Some(l) = got {
            return Ok(l);
        }
    }
    Err(ClaimError::Exhausted(format!("lost the race for a subnet {ATTEMPTS} times in a row")))
}

/// Who holds the key of subnet `r` in a listing.
#[derive(Debug, PartialEq)]
pub enum Holder {
    /// Nobody (or an expired lease).
    Free,
    /// This node (the lease as listed).
    Mine(Lease),
    /// Another node's live, valid lease (its public IP).
    Other(Ipv4Addr),
    /// An entry that is not a lease (why).
    Bad(String),
}

/// Who holds subnet `r`: its canonical key, or another live lease of the same subnet (a
/// dual-stack key) naming another node.
pub fn holder(entries: &[LeaseEntry], r: Ipv4Network, me: Ipv4Addr, now: SystemTime) -> Holder {
    let key = subnet_key(r);
    let live = |l: &&Lease| l.expires.is_none_or(|t| t > now);
    let ok = entries.iter().filter_map(|e| e.as_ref().ok()).filter(live);
    if let Some(l) = ok.clone().find(|l| l.subnet == r && l.attrs.public_ip != me) {
        return Holder::Other(l.attrs.public_ip);
    }
    if let Some(l) = ok.clone().find(|l| l.key == key) {
        return Holder::Mine(l.clone());
    }
    match entries.iter().find_map(|e| e.as_ref().err().filter(|b| b.key == key)) {
        Some(b) => Holder::Bad(b.reason.clone()),
        None => Holder::Free,
    }
}

/// Keep subnet `r`: renew, create, or re-write over a bad entry. `None`: lost a race, retry.
async fn keep<S: LeaseStore>(
    store: &mut S,
    entries: &[LeaseEntry],
    r: Ipv4Network,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Option<Lease>, ClaimError> {
    match holder(entries, r, attrs.public_ip, SystemTime::now()) {
        Holder::Other(by) => return Err(ClaimError::Taken { subnet: r, by }),
        Holder::Mine(l) => return renew_existing(store, l, attrs, ttl).await,
        Holder::Bad(why) => {
            warn!("the lease key of {r} holds an entry that is not a lease ({why}); this node's pods use {r}: re-writing its lease there");
            store.delete(r).await?;
        }
        Holder::Free => {}
    }
    if store.create(r, attrs, ttl).await? {
        let expires = Some(SystemTime::now() + ttl);
        return Ok(Some(Lease { key: subnet_key(r), subnet: r, attrs: attrs.clone(), expires }));
    }
    Ok(None)
}

/// Renew a lease this node holds (a permanent reservation stays as it is).
async fn renew_existing<S: LeaseStore>(
    store: &mut S,
    mut l: Lease,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Option<Lease>, ClaimError> {
    if l.expires.is_none() {
        return Ok(Some(l));
    }
    if !store.renew(l.subnet, attrs, ttl).await? {
        return Ok(None);
    }
    l.attrs = attrs.clone();
    l.expires = Some(SystemTime::now() + ttl);
    Ok(Some(l))
}

/// No remembered subnet: adopt a lease carrying this node's IP, else create a random free one.
async fn adopt_or_pick<S: LeaseStore>(
    store: &mut S,
    entries: &[LeaseEntry],
    net: &Net,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Option<Lease>, ClaimError> {
    let now = SystemTime::now();
    if let Some(l) = existing(entries, net, attrs.public_ip, None, now) {
        return renew_existing(store, l, attrs, ttl).await;
    }
    let free = free_subnets(net, &taken(entries, now), SAMPLE);
    if free.is_empty() {
        return Err(ClaimError::Exhausted(format!("no free subnet left: {}", net.describe())));
    }
    let pick = free[(random_u64() % free.len() as u64) as usize];
    if store.create(pick, attrs, ttl).await? {
        let expires = Some(SystemTime::now() + ttl);
        return Ok(Some(Lease {
            key: subnet_key(pick),
            subnet: pick,
            attrs: attrs.clone(),
            expires,
        }));
    }
    Ok(None)
}

/// When to renew a lease that expires `ttl` after it was written: `margin` before expiry, but at
/// the latest half-way, so short test TTLs still renew in time.
pub fn renew_after(ttl: Duration, margin: Duration) -> Duration {
    ttl.saturating_sub(margin.min(ttl / 2))
}

#[cfg(test)]
mod tests;
