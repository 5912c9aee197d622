//! host-gw routes as data: what this node wants, what Ferry has in the kernel, and the plan
//! between the two. Pure; [`crate::route_applier`] carries plans out.
//!
//! Ferry owns exactly the main-table IPv4 and IPv6 routes tagged `proto 113` ([`RTPROT_FERRY`]) and the
//! nexthop objects tagged `proto 113`; it adds, replaces (atomically, NLM_F_REPLACE) and deletes
//! only those, and never touches anything else.
//!
//! Each peer's route points at a nexthop object of its own ([`nh_id`]: derived from the peer's
//! subnet) holding the gateway: the kernel inserts such routes in O(1), where N plain gateway
//! routes out of one device cost it O(N²) (their `fib_info`s all hash to one bucket). A kernel
//! without nexthop objects, or a peer whose id another program's nexthop holds, gets a plain
//! gateway route.

use ferry_netlink::{Nexthop, Route, Scope, RTPROT_FERRY, RT_TABLE_MAIN};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Nexthop ids Ferry gives IPv4 peers all have these top four bits: `0xF0000000..=0xFFFFFFFF`.
pub const NH_ID_TAG: u32 = 0xF000_0000;
/// Nexthop ids Ferry gives IPv6 peers: `0xE0000000..=0xEFFFFFFF`.
pub const NH_ID_TAG6: u32 = 0xE000_0000;
const NH_ID_BITS: u32 = 0x0FFF_FFFF;

/// The nexthop id of peer subnet `dst`, either family ([`nh_id4`], [`nh_id6`]).
pub fn nh_id(dst: IpNetwork) -> Option<u32> {
    match dst {
        IpNetwork::V4(d) => nh_id4(d),
        IpNetwork::V6(d) => nh_id6(d),
    }
}

/// The nexthop id of the IPv6 peer subnet `dst`: [`NH_ID_TAG6`] over the low 28 bits of the
/// subnet's number (its address shifted right by its host bits). Two wanted subnets can share
/// one only when the network holds more than 2^28 subnets; the later one (in order) then gets a
/// plain gateway route ([`nh_id_in`]). `None` for a /0 or a /128.
pub fn nh_id6(dst: Ipv6Network) -> Option<u32> {
    let host = 128 - u32::from(dst.prefix());
    if !(1..=127).contains(&host) {
        return None;
    }
    let number = u128::from(dst.network()) >> host;
    Some(NH_ID_TAG6 | (number as u32 & NH_ID_BITS))
}

/// `dst`'s nexthop id unless an earlier wanted subnet has the same one (IPv6 only: IPv4 ids are
/// distinct by construction).
pub fn nh_id_in(dst: IpNetwork, want: &Want) -> Option<u32> {
    let id = nh_id(dst)?;
    match dst {
        IpNetwork::V4(_) => Some(id),
        IpNetwork::V6(_) => {
            let lo = IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0"));
            let clash = want.range(lo..dst).any(|(d, _)| d.is_ipv6() && nh_id(*d) == Some(id));
            (!clash).then_some(id)
        }
    }
}

/// [`nh_id_in`] of `dst` in the wanted set as it was before `changes` (subnet, gateway before,
/// gateway now; sorted by subnet) turned it into `new`, without building that set.
pub fn nh_id_before(dst: IpNetwork, new: &Want, changes: &[WantChange]) -> Option<u32> {
    let id = nh_id(dst)?;
    if dst.is_ipv4() {
        return Some(id);
    }
    let was = |d: &IpNetwork| match changes.binary_search_by(|c| c.0.cmp(d)) {
        Ok(i) => changes[i].1.is_some(),
        Err(_) => new.contains_key(d),
    };
    let lo = IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0"));
    let clash = new
        .range(lo..dst)
        .map(|(d, _)| d)
        .chain(changes.iter().map(|c| &c.0).filter(|d| d.is_ipv6() && **d < dst))
        .any(|d| was(d) && nh_id(*d) == Some(id));
    (!clash).then_some(id)
}

/// A wanted route that changed: subnet, gateway before, gateway now (`None`: no route).
pub type WantChange = (IpNetwork, Option<IpAddr>, Option<IpAddr>);

/// The nexthop id of the peer subnet `dst`: [`NH_ID_TAG`] over the low 28 bits of the subnet
/// address with its host part written as `01…1` (which encodes the prefix length), so distinct
/// subnets of any one /4 get distinct ids and [`nh_peer`] can read the subnet back.
/// `10.244.2.0/24` → `0xFAF4027F`. `None` for prefixes shorter than /4 or a /32.
pub fn nh_id4(dst: Ipv4Network) -> Option<u32> {
    let host = 32 - u32::from(dst.prefix());
    if !(1..=28).contains(&host) {
        return None;
    }
    let code = u32::from(dst.network()) | ((1 << (host - 1)) - 1);
    Some(NH_ID_TAG | (code & NH_ID_BITS))
}

/// The wanted peer subnet whose nexthop id is `id`, if any (the inverse of [`nh_id`] within
/// `want`; IPv4: at most 16 lookups, for the address bits the id leaves out; IPv6: a walk over
/// the wanted IPv6 subnets).
pub fn nh_peer(id: u32, want: &Want) -> Option<IpNetwork> {
    if id & !NH_ID_BITS == NH_ID_TAG6 {
        // The first IPv6 subnet in order with this id is the one that holds it ([`nh_id_in`]):
        // one pass, not a clash check per subnet.
        let lo = IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0"));
        return want.range(lo..).map(|(d, _)| *d).find(|d| nh_id(*d) == Some(id));
    }
    if id & !NH_ID_BITS != NH_ID_TAG {
        return None;
    }
    let low = id & NH_ID_BITS;
    let host = low.trailing_ones() + 1;
    if host > 28 {
        return None;
    }
    let base = low & !((1 << host) - 1);
    (0..16u32).find_map(|top| {
        let net = Ipv4Network::new(Ipv4Addr::from((top << 28) | base), (32 - host) as u8).ok()?;
        let net = IpNetwork::V4(net);
        want.contains_key(&net).then_some(net)
    })
}

/// Peer subnet → gateway (the peer's public address of the subnet's family).
pub type Want = BTreeMap<IpNetwork, IpAddr>;

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub add: Vec<(IpNetwork, IpAddr)>,
    /// Our route for the subnet exists with a wrong gateway.
    pub replace: Vec<(IpNetwork, IpAddr)>,
    /// Our routes that are not wanted (peer gone, duplicates, a metric we never set).
    pub del: Vec<Route>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many kernel changes the plan asks for.
    pub fn len(&self) -> usize {
        self.add.len() + self.replace.len() + self.del.len()
    }
}

/// Compare wanted routes with the ones Ferry owns in the kernel. `have` must contain only Ferry's
/// routes (protocol 113, main table). O(n log n).
pub fn plan(want: &Want, have: &[Route]) -> Plan {
    let mut p = Plan::default();
    let mut seen: HashSet<IpNetwork> = HashSet::with_capacity(have.len());
    for r in have {
        let dst = r.dst;
        let gw = r.gateway;
        match want.get(&dst) {
            Some(&w) if r.metric.unwrap_or(0) == 0 && seen.insert(dst) => {
                if gw != Some(w) {
                    p.replace.push((dst, w));
                }
            }
            _ => p.del.push(r.clone()),
        }
    }
    p.add = want.iter().filter(|(d, _)| !seen.contains(*d)).map(|(d, g)| (*d, *g)).collect();
    p
}

/// What one kernel object (a peer's route or its nexthop) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Keep,
    Add,
    /// It exists and is Ferry's, but wrong: replace it atomically.
    Replace,
}

/// A wanted peer whose route or nexthop needs a change.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStep {
    pub dst: IpNetwork,
    pub gw: IpAddr,
    /// The nexthop object the route is to use and what it needs; `None`: a plain gateway route.
    pub nexthop: Option<(u32, Step)>,
    pub route: Step,
    /// Ferry's route for `dst` as it is now (deleted if the peer cannot be routed).
    pub old: Option<Route>,
}

impl PeerStep {
    /// Ferry's nexthop for this peer exists (to delete if the peer cannot be routed).
    pub fn old_nexthop(&self) -> Option<u32> {
        self.nexthop.filter(|(_, s)| *s != Step::Add).map(|(id, _)| id)
    }
}

/// Everything a full reconcile changes, in the order to do it: stale routes out, peers in,
/// then stale nexthops out (deleting a nexthop takes any route still on it along).
#[derive(Debug, Default, PartialEq)]
pub struct Steps {
    pub del_routes: Vec<Route>,
    pub peers: Vec<PeerStep>,
    pub del_nexthops: Vec<u32>,
}

/// Peer route and nexthop changes from `have` (Ferry's routes: protocol 113, main table) and
/// `nexthops` (every nexthop object in the kernel, anyone's; `None`: plain gateway routes
/// only). A peer's nexthop is its own ([`nh_id`]) unless another program's nexthop holds that
/// id. Routes are judged as by [`plan`]; Ferry's nexthops no wanted peer uses are stale. O(n).
pub fn steps(want: &Want, have: &[Route], nexthops: Option<&[Nexthop]>) -> Steps {
    let mut out = Steps::default();
    // `have` in destination order (ties in their dump order), walked beside `want` (a sorted
    // map): a merge, not a lookup per route. Of several wanted-destination routes with metric 0
    // the first dumped is Ferry's; every other route goes, in dump order.
    let mut order: Vec<usize> = (0..have.len()).collect();
    order.sort_by(|&a, &b| have[a].dst.cmp(&have[b].dst).then(a.cmp(&b)));
    let mut keep = vec![false; have.len()];
    let mut ours: Vec<(IpNetwork, &Route)> = Vec::with_capacity(want.len().min(have.len()));
    let mut wanted = want.keys().peekable();
    for &i in &order {
        let r = &have[i];
        while wanted.next_if(|d| **d < r.dst).is_some() {}
        let is_wanted = wanted.peek().is_some_and(|d| **d == r.dst);
        let first = ours.last().is_none_or(|(d, _)| *d != r.dst);
        if is_wanted && r.metric.unwrap_or(0) == 0 && first {
            keep[i] = true;
            ours.push((r.dst, r));
        }
    }
    out.del_routes = have.iter().zip(&keep).filter(|(_, k)| !**k).map(|(r, _)| r.clone()).collect();
    let use_nh = nexthops.is_some();
    let nexthops = nexthops.unwrap_or_default();
    let mine: HashMap<u32, &Nexthop, Ids> =
        nexthops.iter().filter(|n| n.protocol == RTPROT_FERRY).map(|n| (n.id, n)).collect();
    let taken: HashSet<u32, Ids> =
        nexthops.iter().filter(|n| n.protocol != RTPROT_FERRY).map(|n| n.id).collect();
    let mut used: HashSet<u32, Ids> = HashSet::with_capacity_and_hasher(want.len(), Ids);
    let mut ours = ours.into_iter().peekable();
    for (&dst, &gw) in want {
        // [`nh_id_in`] without its scan: an IPv6 subnet whose id an earlier one has finds it in
        // `used` (or taken, as the earlier one did), so it gets a plain route all the same.
        let id = nh_id(dst).filter(|id| use_nh && !taken.contains(id) && used.insert(*id));
        while ours.next_if(|(d, _)| *d < dst).is_some() {}
        let old = ours.next_if(|(d, _)| *d == dst).map(|(_, r)| r);
        let step = peer_step(dst, gw, id, old, &mine);
        out.peers.extend(step);
    }
    out.del_nexthops = mine.keys().filter(|id| !used.contains(id)).copied().collect();
    out.del_nexthops.sort_unstable();
    out
}

/// Hashing for nexthop ids (plain `u32`s from the kernel or [`nh_id`]): one multiply, where the
/// default SipHash was a tenth of a 50,000-peer sweep.
#[derive(Clone, Copy, Default)]
struct Ids;

impl std::hash::BuildHasher for Ids {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

fn peer_step(
    dst: IpNetwork,
    gw: IpAddr,
    id: Option<u32>,
    old: Option<&Route>,
    mine: &HashMap<u32, &Nexthop, Ids>,
) -> Option<PeerStep> {
    let nexthop = id.map(|id| {
        let step = match mine.get(&id) {
            Some(n) if is_hop_via(n, gw) => Step::Keep,
            Some(_) => Step::Replace,
            None => Step::Add,
        };
        (id, step)
    });
    let route = match old {
        None => Step::Add,
        Some(r) if r.nh_id == id && (id.is_some() || r.gateway == Some(gw)) => Step::Keep,
        Some(_) => Step::Replace,
    };
    let nh_ok = nexthop.is_none_or(|(_, s)| s == Step::Keep);
    (!nh_ok || route != Step::Keep).then(|| PeerStep { dst, gw, nexthop, route, old: old.cloned() })
}

/// `n` is a plain hop via `gw` (of `gw`'s family).
fn is_hop_via(n: &Nexthop, gw: IpAddr) -> bool {
    n.gateway == Some(gw) && n.v6 == gw.is_ipv6() && !n.group && !n.blackhole
}

/// The route Ferry installs for a peer on its nexthop object `id`.
pub fn nexthop_route(dst: IpNetwork, id: u32) -> Route {
    let any = if dst.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    Route { gateway: None, oif: None, nh_id: Some(id), ..peer_route(dst, any, 0) }
}

/// The nexthop object Ferry makes for a peer: `id` via `gw` out of `oif`.
pub fn peer_nexthop(id: u32, gw: IpAddr, oif: u32) -> Nexthop {
    Nexthop::via(id, gw, oif, RTPROT_FERRY)
}

/// The route Ferry installs for a peer.
pub fn peer_route(dst: IpNetwork, gw: IpAddr, oif: u32) -> Route {
    Route {
        dst,
        gateway: Some(gw),
        oif: Some(oif),
        scope: Scope::Universe,
        protocol: RTPROT_FERRY,
        table: RT_TABLE_MAIN,
        src: None,
        metric: None,
        onlink: false,
        nh_id: None,
    }
}

/// Destinations whose gateway differs between two wanted sets: (dst, old gw, new gw). O(n).
pub fn diff(old: &Want, new: &Want) -> Vec<WantChange> {
    let mut out = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(&(d, g)), None) => {
                out.push((*d, Some(*g), None));
                a.next();
            }
            (None, Some(&(d, g))) => {
                out.push((*d, None, Some(*g)));
                b.next();
            }
            (Some(&(da, ga)), Some(&(db, gb))) => {
                if da < db {
                    out.push((*da, Some(*ga), None));
                    a.next();
                } else if db < da {
                    out.push((*db, None, Some(*gb)));
                    b.next();
                } else {
                    if ga != gb {
                        out.push((*da, Some(*ga), Some(*gb)));
                    }
                    a.next();
                    b.next();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
