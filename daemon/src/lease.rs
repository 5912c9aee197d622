//! Claiming and renewing this node's subnet lease, over any [`LeaseStore`].
//!
//! One lease key per node covers every enabled family (flannel's `10.244.1.0-24`,
//! `10.244.1.0-24&fd00::-64`, `0.0.0.0-0&fd00::-64`), claimed in one create: a node never holds
//! one family's subnet without the other.
//!
//! A node keeps the subnets its subnet file (and so its pods) use: with remembered subnets it
//! renews its lease there, creates it when the key is free or expired, and re-writes it when the
//! key holds an entry that is not a lease (garbage, a look-alike's debris); when another node
//! validly leases one of them, the claim fails ([`ClaimError::Taken`]) instead of renumbering
//! the node under its pods (a family the subnet file does not name yet, e.g. IPv6 newly turned
//! on, gets a free subnet). Without any (flannel's order): (1) a lease that already carries this
//! node's public IP and fits the config; (2) a random pick among up to 100 free subnets per
//! family in [SubnetMin, SubnetMax], created only if absent (a lost race retries with a fresh
//! listing).

use crate::config::{span, span6, Mode, Net, Net4, Net6};
use crate::overlay;
use crate::peers::{taken, taken6};
use crate::store::{Lease, LeaseAttrs, LeaseEntry, LeaseStore, StoreError, Subnets};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// A subnet this node's pods use is validly leased to another node.
    Taken {
        subnet: String,
        by: IpAddr,
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

/// This node's lease attrs: `PublicIP` (0.0.0.0 when IPv4 is off), with IPv6 on `PublicIPv6`,
/// and for the vxlan backend flannel's `BackendData` (`{"VNI":1,"VtepMAC":"0e:66:.."}`) that
/// peers need to reach it encapsulated.
pub fn my_attrs(
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    mode: Mode,
) -> LeaseAttrs {
    let public_ip = public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let backend_data = match mode {
        Mode::HostGw => serde_json::Value::Null,
        Mode::Vxlan(v) => overlay::backend_data(v.vni, overlay::vtep_mac(public_ip)),
    };
    LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: mode.backend_type().into(),
        backend_data,
        backend_v6_data: None,
    }
}

/// Whether a lease's subnets fit the config: each enabled family's subnet in its range, no
/// subnet of a disabled family (flannel's `isSubnetConfigCompat` / `isIPv6SubnetConfigCompat`).
pub fn fits(net: &Net, s: &Subnets) -> bool {
    let v4 = match (&net.v4, s.v4) {
        (Some(n), Some(x)) => n.in_range(x),
        (None, None) => true,
        _ => false,
    };
    let v6 = match (&net.v6, s.v6) {
        (Some(n), Some(x)) => n.in_range(x),
        (None, None) => true,
        _ => false,
    };
    v4 && v6
}

/// A lease in the store that already belongs to this node and fits the config.
pub fn existing(
    entries: &[LeaseEntry],
    net: &Net,
    me: &LeaseAttrs,
    remembered: Option<Subnets>,
    now: SystemTime,
) -> Option<Lease> {
    let mut mine: Vec<&Lease> = entries
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .filter(|l| {
            l.attrs.same_node(me) && fits(net, &l.subnets()) && l.expires.is_none_or(|t| t > now)
        })
        .collect();
    mine.sort_by_key(|l| (Some(l.subnets()) != remembered, l.subnets()));
    mine.first().map(|l| (*l).clone())
}

/// Merge address intervals (sorted, adjacent ones joined).
fn merge<T: Ord + Copy>(mut iv: Vec<(T, T)>, next: impl Fn(T) -> T) -> Vec<(T, T)> {
    iv.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(iv.len());
    for (a, b) in iv {
        match merged.last_mut() {
            Some(last) if a <= next(last.1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Up to `limit` free subnets of the range, in order. `taken` may overlap and be unsorted.
pub fn free_subnets(net: &Net4, taken: &[Ipv4Network], limit: usize) -> Vec<Ipv4Network> {
    let merged = merge(taken.iter().map(|&n| span(n)).collect(), |x| x.saturating_add(1));
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

/// Up to `limit` free IPv6 subnets of the range, in order: the walk jumps over each taken
/// interval, so a /48 with its 65,536 /64s costs O(taken + limit).
pub fn free_subnets6(net: &Net6, taken: &[Ipv6Network], limit: usize) -> Vec<Ipv6Network> {
    let merged = merge(taken.iter().map(|&n| span6(n)).collect(), |x| x.saturating_add(1));
    let size = net.subnet_size();
    let (lo, hi) = (u128::from(net.min), u128::from(net.max));
    let mut out = Vec::new();
    let (mut c, mut k) = (lo, 0);
    while c <= hi && out.len() < limit {
        let c1 = c + (size - 1);
        while k < merged.len() && merged[k].1 < c {
            k += 1;
        }
        if k < merged.len() && merged[k].0 <= c1 {
            // Jump to the first subnet after this taken interval.
            let past = merged[k].1;
            let Some(next) = past.checked_add(1) else { break };
            let aligned = lo + (next - lo).div_ceil(size) * size;
            if aligned <= c {
                c += size;
            } else {
                c = aligned;
            }
            continue;
        }
        out.push(Ipv6Network::new(c.into(), net.subnet_len).expect("prefix from config"));
        let Some(n) = c.checked_add(size) else { break };
        c = n;
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

/// Claim (or re-claim) this node's lease; `remembered` holds the subnets its subnet file names.
pub async fn claim<S: LeaseStore>(
    store: &mut S,
    net: &Net,
    attrs: &LeaseAttrs,
    remembered: Subnets,
    ttl: Duration,
) -> Result<Lease, ClaimError> {
    claim_listed(store, net, attrs, remembered, ttl, None).await.map(|c| c.lease)
}

/// A claimed lease and the listing the claim decided on.
#[derive(Debug)]
pub struct Claimed {
    pub lease: Lease,
    /// The store's entries at `revision`, before the claim's own writes (this node's lease as it
    /// was listed, or absent if the claim created it).
    pub entries: Vec<LeaseEntry>,
    /// The listing's revision: a watch from `revision + 1` delivers the claim's writes and every
    /// other change since, so the listing can seed a watcher (one listing at start-up, not two).
    pub revision: i64,
}

/// [`claim`], handing back the listing it decided on as well.
pub async fn claim_listed<S: LeaseStore>(
    store: &mut S,
    net: &Net,
    attrs: &LeaseAttrs,
    remembered: Subnets,
    ttl: Duration,
    mut first: Option<(Vec<LeaseEntry>, i64)>,
) -> Result<Claimed, ClaimError> {
    // Keep only what fits the config (a family turned off is forgotten).
    let remembered = Subnets {
        v4: remembered.v4.filter(|s| net.v4.is_some_and(|n| n.in_range(*s))),
        v6: remembered.v6.filter(|s| net.v6.is_some_and(|n| n.in_range(*s))),
    };
    let any = remembered.v4.is_some() || remembered.v6.is_some();
    for _ in 0..ATTEMPTS {
        let (entries, revision) = match first.take() {
            Some(listed) => listed,
            None => store.list().await?,
        };
        let got = if any {
            keep(store, &entries, net, remembered, attrs, ttl).await?
        } else {
            adopt_or_pick(store, &entries, net, attrs, ttl).await?
        };
        if let Some(lease) = got {
            return Ok(Claimed { lease, entries, revision });
        }
    }
    Err(ClaimError::Exhausted(format!("lost the race for a subnet {ATTEMPTS} times in a row")))
}

/// Who holds the key of subnets `r` in a listing.
#[derive(Debug, PartialEq)]
pub enum Holder {
    /// Nobody (or an expired lease).
    Free,
    /// This node (the lease as listed).
    Mine(Lease),
    /// Another node's live, valid lease of one of the subnets (its subnet and address).
    Other(String, IpAddr),
    /// An entry that is not a lease (why).
    Bad(String),
}

/// Who holds subnets `r`: their key, or another live lease naming another node that holds
/// one of them (under any key: plain, dual-stack or IPv6-only).
pub fn holder(entries: &[LeaseEntry], r: Subnets, me: &LeaseAttrs, now: SystemTime) -> Holder {
    let key = r.key();
    let live = |l: &&Lease| l.expires.is_none_or(|t| t > now);
    let ok = entries.iter().filter_map(|e| e.as_ref().ok()).filter(live);
    for l in ok.clone().filter(|l| !l.attrs.same_node(me)) {
        let s = l.subnets();
        if let Some(v4) = r.v4.filter(|v| s.v4 == Some(*v)) {
            return Holder::Other(v4.to_string(), l.attrs.node_ip());
        }
        if let Some(v6) = r.v6.filter(|v| s.v6 == Some(*v)) {
            return Holder::Other(v6.to_string(), l.attrs.node_ip());
        }
    }
    if let Some(l) = ok.clone().find(|l| l.key == key) {
        return Holder::Mine(l.clone());
    }
    match entries.iter().find_map(|e| e.as_ref().err().filter(|b| b.key == key)) {
        Some(b) => Holder::Bad(b.reason.clone()),
        None => Holder::Free,
    }
}

/// A family enabled in `net` that `r` lacks gets a free subnet. `None`: none left.
fn complete(
    entries: &[LeaseEntry],
    net: &Net,
    mut r: Subnets,
    now: SystemTime,
) -> Result<Subnets, ClaimError> {
    if let (Some(n), None) = (&net.v4, r.v4) {
        let free = free_subnets(n, &taken(entries, now), SAMPLE);
        r.v4 = Some(pick(&free).ok_or_else(|| exhausted(&n.describe()))?);
    }
    if let (Some(n), None) = (&net.v6, r.v6) {
        let free = free_subnets6(n, &taken6(entries, now), SAMPLE);
        r.v6 = Some(pick(&free).ok_or_else(|| exhausted(&n.describe()))?);
    }
    Ok(r)
}

fn exhausted(what: &str) -> ClaimError {
    ClaimError::Exhausted(format!("no free subnet left: {what}"))
}

fn pick<T: Copy>(free: &[T]) -> Option<T> {
    (!free.is_empty()).then(|| free[(random_u64() % free.len() as u64) as usize])
}

/// Keep subnets `r`: renew, create, or re-write over a bad entry. `None`: lost a race, retry.
async fn keep<S: LeaseStore>(
    store: &mut S,
    entries: &[LeaseEntry],
    net: &Net,
    r: Subnets,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Option<Lease>, ClaimError> {
    let now = SystemTime::now();
    // A family the subnet file does not name yet: this node's lease of it, else a free one.
    let r = match existing(entries, net, attrs, None, now) {
        Some(l)
            if (r.v4.is_none() || l.subnets().v4 == r.v4)
                && (r.v6.is_none() || l.subnets().v6 == r.v6) =>
        {
            l.subnets()
        }
        _ => complete(entries, net, r, now)?,
    };
    match holder(entries, r, attrs, now) {
        Holder::Other(subnet, by) => return Err(ClaimError::Taken { subnet, by }),
        Holder::Mine(l) => return renew_existing(store, l, attrs, ttl).await,
        Holder::Bad(why) => {
            warn!("the lease key of {r} holds an entry that is not a lease ({why}); this node's pods use {r}: re-writing its lease there");
            store.delete(r).await?;
        }
        Holder::Free => {}
    }
    create(store, entries, r, attrs, ttl).await
}

/// Create the lease of `r`; on success, this node's other leases (an IPv4-only key from before
/// IPv6 was turned on, ...) are deleted. `None`: someone else created the key first.
async fn create<S: LeaseStore>(
    store: &mut S,
    entries: &[LeaseEntry],
    r: Subnets,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Option<Lease>, ClaimError> {
    if !store.create(r, attrs, ttl).await? {
        return Ok(None);
    }
    let key = r.key();
    for old in entries.iter().filter_map(|e| e.as_ref().ok()) {
        if old.key != key && old.attrs.same_node(attrs) && old.expires.is_some() {
            info!("deleting this node's previous lease {} (now {key})", old.key);
            store.delete(old.subnets()).await?;
        }
    }
    let expires = Some(SystemTime::now() + ttl);
    Ok(Some(Lease { key, subnet: r.v4_or_empty(), subnet6: r.v6, attrs: attrs.clone(), expires }))
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
    if !store.renew(l.subnets(), attrs, ttl).await? {
        return Ok(None);
    }
    l.attrs = attrs.clone();
    l.expires = Some(SystemTime::now() + ttl);
    Ok(Some(l))
}

/// No remembered subnet: adopt a lease carrying this node's IP, else create a random free one
/// per enabled family, under one key.
async fn adopt_or_pick<S: LeaseStore>(
    store: &mut S,
    entries: &[LeaseEntry],
    net: &Net,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Option<Lease>, ClaimError> {
    let now = SystemTime::now();
    if let Some(l) = existing(entries, net, attrs, None, now) {
        return renew_existing(store, l, attrs, ttl).await;
    }
    let pick = complete(entries, net, Subnets { v4: None, v6: None }, now)?;
    create(store, entries, pick, attrs, ttl).await
}

/// When to renew a lease that expires `ttl` after it was written: `margin` before expiry, but at
/// the latest half-way, so short test TTLs still renew in time.
pub fn renew_after(ttl: Duration, margin: Duration) -> Duration {
    ttl.saturating_sub(margin.min(ttl / 2))
}

#[cfg(test)]
mod tests;
