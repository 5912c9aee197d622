//! Claiming and renewing this node's subnet lease, over any [`LeaseStore`].
//!
//! Claim order (flannel's): (1) a lease that already carries this node's public IP, preferring the
//! subnet remembered in the subnet file; (2) the remembered subnet if it is free; (3) a random pick
//! among up to 100 free subnets in [SubnetMin, SubnetMax], created only if absent (a lost race
//! retries with a fresh listing).

use crate::config::{span, Net};
use crate::peers::taken;
use crate::store::{Lease, LeaseAttrs, LeaseEntry, LeaseStore, StoreError};
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
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Store(e) => e.fmt(f),
            ClaimError::Exhausted(m) => f.write_str(m),
        }
    }
}

impl From<StoreError> for ClaimError {
    fn from(e: StoreError) -> Self {
        ClaimError::Store(e)
    }
}

pub fn my_attrs(public_ip: Ipv4Addr) -> LeaseAttrs {
    LeaseAttrs { public_ip, backend_type: "host-gw".into(), backend_data: serde_json::Value::Null }
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

/// Claim (or re-claim) this node's lease.
pub async fn claim<S: LeaseStore>(
    store: &mut S,
    net: &Net,
    public_ip: Ipv4Addr,
    remembered: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<Lease, ClaimError> {
    let attrs = my_attrs(public_ip);
    let remembered = remembered.filter(|s| net.in_range(*s));
    for _ in 0..ATTEMPTS {
        let (entries, _) = store.list().await?;
        let now = SystemTime::now();
        if let Some(mut l) = existing(&entries, net, public_ip, remembered, now) {
            if l.expires.is_none() {
                return Ok(l); // a permanent reservation stays permanent
            }
            if store.renew(l.subnet, &attrs, ttl).await? {
                l.attrs = attrs;
                l.expires = Some(SystemTime::now() + ttl);
                return Ok(l);
            }
            continue;
        }
        let taken = taken(&entries, now);
        let pick = match remembered.filter(|r| free_subnets(&single(net, *r), &taken, 1).len() == 1)
        {
            Some(r) => r,
            None => {
                let free = free_subnets(net, &taken, SAMPLE);
                if free.is_empty() {
                    return Err(ClaimError::Exhausted(format!(
                        "no free subnet left: {}",
                        net.describe()
                    )));
                }
                free[(random_u64() % free.len() as u64) as usize]
            }
        };
        if store.create(pick, &attrs, ttl).await? {
            return Ok(Lease { subnet: pick, attrs, expires: Some(SystemTime::now() + ttl) });
        }
    }
    Err(ClaimError::Exhausted(format!("lost the race for a subnet {ATTEMPTS} times in a row")))
}

/// A one-subnet range, to ask "is this subnet free".
fn single(net: &Net, s: Ipv4Network) -> Net {
    Net { min: s.network(), max: s.network(), ..*net }
}

/// When to renew a lease that expires `ttl` after it was written: `margin` before expiry, but at
/// the latest half-way, so short test TTLs still renew in time.
pub fn renew_after(ttl: Duration, margin: Duration) -> Duration {
    ttl.saturating_sub(margin.min(ttl / 2))
}

#[cfg(test)]
mod tests;
