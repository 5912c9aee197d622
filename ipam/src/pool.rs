//! Address pools: a subnet, an inclusive allocation range and the addresses never handed out
//! (network address, IPv4 broadcast, gateway, excluded ranges). Pure arithmetic over `u128`, so one
//! code path serves IPv4 and IPv6.

use ferry_cni::CniError;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One family's pool. Build it with [`Pool::new`], which validates and fills in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The subnet in network-address form (`10.244.1.0/24`).
    pub subnet: IpNetwork,
    /// First address of the allocation range (inclusive).
    pub start: IpAddr,
    /// Last address of the allocation range (inclusive).
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
    /// Inclusive ranges never allocated.
    pub exclude: Vec<(IpAddr, IpAddr)>,
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// What a config may say about one family's pool besides its subnet. Every field is optional:
/// [`Pool::new`] fills in the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    pub gateway: Option<IpAddr>,
    /// First allocatable address (inclusive).
    pub start: Option<IpAddr>,
    /// Last allocatable address (inclusive).
    pub end: Option<IpAddr>,
    /// Inclusive ranges never allocated.
    pub exclude: Vec<(IpAddr, IpAddr)>,
}

/// A subnet's bounds, for validating the addresses a [`Range`] names.
struct Bounds {
    subnet: IpNetwork,
    v4: bool,
    net: u128,
    top: u128,
}

impl Bounds {
    fn new(subnet: IpNetwork) -> Result<Bounds, CniError> {
        let v4 = subnet.is_ipv4();
        let bits: u8 = if v4 { 32 } else { 128 };
        let prefix = subnet.prefix();
        if bits - prefix < 2 {
            return Err(CniError::config(format!(
                "subnet {subnet} is too small to allocate from: an {} subnet needs at least 2 host bits (/{} or shorter)",
                family(subnet.ip()),
                bits - 2
            )));
        }
        let subnet = IpNetwork::new(subnet.network(), prefix)
            .map_err(|e| CniError::config(format!("subnet {subnet}: {e}")))?;
        let (net, top) = (to_u128(subnet.network()), to_u128(subnet.broadcast()));
        Ok(Bounds { subnet, v4, net, top })
    }

    fn first(&self) -> IpAddr {
        from_u128(self.net + 1, self.v4)
    }

    fn last(&self) -> IpAddr {
        from_u128(if self.v4 { self.top - 1 } else { self.top }, self.v4)
    }

    /// `ip`, if it is of the subnet's family and inside it.
    fn check(&self, what: &str, ip: IpAddr) -> Result<IpAddr, CniError> {
        let subnet = self.subnet;
        if ip.is_ipv4() != self.v4 {
            return Err(CniError::config(format!(
                "{what} {ip} is {} but subnet {subnet} is {}",
                family(ip),
                family(subnet.ip())
            )));
        }
        if !subnet.contains(ip) {
            return Err(CniError::config(format!("{what} {ip} is outside subnet {subnet}")));
        }
        Ok(ip)
    }

    fn gateway(&self, gw: Option<IpAddr>) -> Result<IpAddr, CniError> {
        let Some(gw) = gw else { return Ok(self.first()) };
        let n = to_u128(self.check("gateway", gw)?);
        if n == self.net || (self.v4 && n == self.top) {
            return Err(CniError::config(format!(
                "gateway {gw} is the {} address of subnet {}",
                if n == self.net { "network" } else { "broadcast" },
                self.subnet
            )));
        }
        Ok(gw)
    }

    fn exclude(&self, exclude: &[(IpAddr, IpAddr)]) -> Result<(), CniError> {
        for &(a, b) in exclude {
            self.check("exclude start", a)?;
            self.check("exclude end", b)?;
            if to_u128(a) > to_u128(b) {
                return Err(CniError::config(format!("exclude range {a}-{b} is reversed")));
            }
        }
        Ok(())
    }
}

impl Pool {
    /// Validate and complete a pool. `subnet` may carry host bits (`10.244.1.1/24`, flannel's
    /// spelling): they are masked off. Defaults: gateway = first host, start = first host,
    /// end = last host (IPv4: broadcast - 1; IPv6: the last address). Every error is code 7.
    pub fn new(subnet: IpNetwork, range: Range) -> Result<Pool, CniError> {
        let b = Bounds::new(subnet)?;
        let gateway = b.gateway(range.gateway)?;
        let start = b.check("rangeStart", range.start.unwrap_or(b.first()))?;
        let end = b.check("rangeEnd", range.end.unwrap_or(b.last()))?;
        if to_u128(start) > to_u128(end) {
            return Err(CniError::config(format!("rangeStart {start} is after rangeEnd {end}")));
        }
        b.exclude(&range.exclude)?;
        let subnet = b.subnet;
        let pool = Pool { subnet, start, end, gateway: Some(gateway), exclude: range.exclude };
        if pool.size() == 0 {
            return Err(CniError::config(format!(
                "range {start}-{end} of subnet {subnet} has no allocatable address (gateway {gateway}, exclusions {:?})",
                pool.exclude
            )));
        }
        Ok(pool)
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// `start-end`, as error messages name the range.
    pub fn range_str(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }

    /// Addresses never allocated, as sorted, merged, inclusive `u128` intervals.
    pub(crate) fn reserved(&self) -> Vec<(u128, u128)> {
        let mut r: Vec<(u128, u128)> = Vec::with_capacity(self.exclude.len() + 3);
        let net = to_u128(self.subnet.network());
        r.push((net, net));
        if self.is_ipv4() {
            let b = to_u128(self.subnet.broadcast());
            r.push((b, b));
        }
        if let Some(gw) = self.gateway {
            r.push((to_u128(gw), to_u128(gw)));
        }
        for &(a, b) in &self.exclude {
            r.push((to_u128(a), to_u128(b)));
        }
        r.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(r.len());
        for (a, b) in r {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// `contains` with the reserved list precomputed (hot loops).
    pub(crate) fn contains_with(&self, reserved: &[(u128, u128)], ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.is_ipv4() {
            return false;
        }
        let n = to_u128(ip);
        n >= to_u128(self.start)
            && n <= to_u128(self.end)
            && !reserved.iter().any(|&(a, b)| a <= n && n <= b)
    }

    /// Whether `ip` may be allocated: in the range and not the gateway, network, broadcast or
    /// excluded.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_with(&self.reserved(), ip)
    }

    /// Why `ip` is not allocatable, or `None` when it is.
    pub fn reject_reason(&self, ip: IpAddr) -> Option<String> {
        if ip.is_ipv4() != self.is_ipv4() {
            return Some(format!("{ip} is not an {} address", family(self.subnet.ip())));
        }
        if !self.subnet.contains(ip) {
            return Some(format!("{ip} is outside subnet {}", self.subnet));
        }
        let n = to_u128(ip);
        if n < to_u128(self.start) || n > to_u128(self.end) {
            return Some(format!("{ip} is outside range {}", self.range_str()));
        }
        if Some(ip) == self.gateway {
            return Some(format!("{ip} is the gateway"));
        }
        if n == to_u128(self.subnet.network()) {
            return Some(format!("{ip} is the network address"));
        }
        if self.is_ipv4() && n == to_u128(self.subnet.broadcast()) {
            return Some(format!("{ip} is the broadcast address"));
        }
        if !self.contains(ip) {
            return Some(format!("{ip} is in an excluded range"));
        }
        None
    }

    /// Number of allocatable addresses.
    pub fn size(&self) -> u128 {
        let (s, e) = (to_u128(self.start), to_u128(self.end));
        if s > e {
            return 0;
        }
        let mut n = (e - s).saturating_add(1);
        for (a, b) in self.reserved() {
            let (a, b) = (a.max(s), b.min(e));
            if a <= b {
                n -= (b - a).saturating_add(1).min(n);
            }
        }
        n
    }

    /// The next allocatable address after `after` (round robin, wrapping to `start`) for which
    /// `taken` is false. `None` when every allocatable address is taken. Cost grows with the
    /// number of taken and reserved addresses skipped, never with the pool size.
    pub(crate) fn next_free(
        &self,
        after: Option<IpAddr>,
        taken: &dyn Fn(IpAddr) -> bool,
    ) -> Option<IpAddr> {
        let reserved = self.reserved();
        let (s, e) = (to_u128(self.start), to_u128(self.end));
        let from = match after.filter(|a| a.is_ipv4() == self.is_ipv4()).map(to_u128) {
            Some(a) if a >= s && a < e => a + 1,
            _ => s,
        };
        let v4 = self.is_ipv4();
        let scan = |lo: u128, hi: u128| -> Option<IpAddr> {
            let mut c = lo;
            loop {
                if let Some(&(_, re)) = reserved.iter().find(|&&(a, b)| a <= c && c <= b) {
                    if re >= hi {
                        return None;
                    }
                    c = re + 1;
                    continue;
                }
                let ip = from_u128(c, v4);
                if !taken(ip) {
                    return Some(ip);
                }
                if c >= hi {
                    return None;
                }
                c += 1;
            }
        };
        scan(from, e).or_else(|| if from > s { scan(s, from - 1) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn pool(s: &str) -> Pool {
        Pool::new(net(s), Range::default()).unwrap()
    }

    #[test]
    fn v4_defaults() {
        let p = pool("10.244.1.0/24");
        assert_eq!(p.gateway, Some(ip("10.244.1.1")));
        assert_eq!((p.start, p.end), (ip("10.244.1.1"), ip("10.244.1.254")));
        assert_eq!(p.size(), 253);
        assert!(!p.contains(ip("10.244.1.1")));
        assert!(p.contains(ip("10.244.1.2")));
        assert!(p.contains(ip("10.244.1.254")));
        assert!(!p.contains(ip("10.244.1.255")));
        assert!(!p.contains(ip("10.244.1.0")));
        assert!(!p.contains(ip("10.244.2.2")));
        assert!(!p.contains(ip("fd00::2")));
    }

    #[test]
    fn host_bits_are_masked() {
        let p = pool("10.244.1.1/24");
        assert_eq!(p.subnet, net("10.244.1.0/24"));
        assert_eq!(p.gateway, Some(ip("10.244.1.1")));
    }

    #[test]
    fn small_subnets() {
        let p = pool("10.0.0.0/30");
        assert_eq!(p.size(), 1);
        assert!(p.contains(ip("10.0.0.2")));
        assert_eq!(pool("10.0.0.0/29").size(), 5);
        for bad in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            let e = Pool::new(net(bad), Range::default()).unwrap_err();
            assert_eq!(e.code.as_u32(), 7, "{bad}");
            assert!(e.msg.contains("too small"), "{}", e.msg);
        }
        // /30 whose only host is the gateway: nothing allocatable.
        let only_gw = Range {
            gateway: Some(ip("10.0.0.2")),
            start: Some(ip("10.0.0.2")),
            ..Range::default()
        };
        let e = Pool::new(net("10.0.0.0/30"), only_gw).unwrap_err();
        assert_eq!(e.code.as_u32(), 7);
    }

    #[test]
    fn bad_input_is_code_7() {
        let n = net("10.0.0.0/24");
        type Case<'a> =
            (Option<&'a str>, Option<&'a str>, Option<&'a str>, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (Some("10.0.1.1"), None, None, vec![]),
            (Some("10.0.0.0"), None, None, vec![]),
            (Some("10.0.0.255"), None, None, vec![]),
            (Some("fd00::1"), None, None, vec![]),
            (None, Some("10.0.1.5"), None, vec![]),
            (None, None, Some("10.0.1.5"), vec![]),
            (None, Some("10.0.0.9"), Some("10.0.0.5"), vec![]),
            (None, None, None, vec![("10.0.0.9", "10.0.0.5")]),
            (None, None, None, vec![("10.0.0.9", "10.1.0.5")]),
        ];
        for (gw, s, e, ex) in cases {
            let ex = ex.into_iter().map(|(a, b)| (ip(a), ip(b))).collect();
            let range =
                Range { gateway: gw.map(ip), start: s.map(ip), end: e.map(ip), exclude: ex };
            let r = Pool::new(n, range);
            assert_eq!(r.unwrap_err().code.as_u32(), 7, "{gw:?} {s:?} {e:?}");
        }
    }

    #[test]
    fn range_and_exclusions() {
        let range = Range {
            gateway: Some(ip("10.0.0.10")),
            start: Some(ip("10.0.0.5")),
            end: Some(ip("10.0.0.20")),
            exclude: vec![(ip("10.0.0.12"), ip("10.0.0.14")), (ip("10.0.0.14"), ip("10.0.0.15"))],
        };
        let p = Pool::new(net("10.0.0.0/24"), range).unwrap();
        // 16 addresses, minus the gateway, minus .12-.15.
        assert_eq!(p.size(), 11);
        assert!(p.contains(ip("10.0.0.5")) && p.contains(ip("10.0.0.20")));
        assert!(!p.contains(ip("10.0.0.4")) && !p.contains(ip("10.0.0.21")));
        assert!(!p.contains(ip("10.0.0.13")) && !p.contains(ip("10.0.0.10")));
        assert!(p.reject_reason(ip("10.0.0.10")).unwrap().contains("gateway"));
        assert!(p.reject_reason(ip("10.0.0.13")).unwrap().contains("excluded"));
        assert!(p.reject_reason(ip("10.0.0.30")).unwrap().contains("outside range"));
        assert!(p.reject_reason(ip("10.0.1.3")).unwrap().contains("outside subnet"));
        assert_eq!(p.reject_reason(ip("10.0.0.11")), None);
    }

    #[test]
    fn next_free_round_robin_and_skips() {
        let exclude = vec![(ip("10.0.0.3"), ip("10.0.0.4"))];
        let p = Pool::new(net("10.0.0.0/29"), Range { exclude, ..Range::default() }).unwrap();
        let none = |_: IpAddr| false;
        assert_eq!(p.next_free(None, &none), Some(ip("10.0.0.2")));
        assert_eq!(p.next_free(Some(ip("10.0.0.2")), &none), Some(ip("10.0.0.5")));
        assert_eq!(p.next_free(Some(ip("10.0.0.6")), &none), Some(ip("10.0.0.2")));
        let taken = |i: IpAddr| i == ip("10.0.0.2") || i == ip("10.0.0.5");
        assert_eq!(p.next_free(Some(ip("10.0.0.6")), &taken), Some(ip("10.0.0.6")));
        let all = |_: IpAddr| true;
        assert_eq!(p.next_free(Some(ip("10.0.0.5")), &all), None);
        // a "last" from another subnet or family restarts at the range start
        assert_eq!(p.next_free(Some(ip("192.168.0.9")), &none), Some(ip("10.0.0.2")));
        assert_eq!(p.next_free(Some(ip("fd00::9")), &none), Some(ip("10.0.0.2")));
    }

    #[test]
    fn v6_pools() {
        let p = pool("fd00:10:244:1::/64");
        assert_eq!(p.gateway, Some(ip("fd00:10:244:1::1")));
        assert_eq!(p.end, ip("fd00:10:244:1:ffff:ffff:ffff:ffff"));
        assert_eq!(p.size(), (1u128 << 64) - 2);
        assert!(p.contains(p.end), "no broadcast reservation for v6");
        assert_eq!(p.next_free(None, &|_| false), Some(ip("fd00:10:244:1::2")));
        let q = pool("fd00::/126");
        assert_eq!(q.size(), 2);
        let wide = pool("::/0");
        assert_eq!(wide.size(), u128::MAX - 1);
        assert_eq!(wide.next_free(Some(wide.end), &|_| false), Some(ip("::2")));
    }

    #[test]
    fn v4_slash_zero_does_not_overflow() {
        let p = pool("0.0.0.0/0");
        assert_eq!(p.size(), (1u128 << 32) - 3);
    }
}
