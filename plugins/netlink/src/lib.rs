//! Netlink effects for Ferry, behind one small synchronous API.
//!
//! A [`Netlink`] handle wraps one `NETLINK_ROUTE` socket. A netlink socket stays bound to the
//! network namespace it was created in, so [`Netlink::in_netns`] opens a socket inside another
//! namespace (setns on the calling thread, socket(), setns back) and every later call on that handle
//! acts in that namespace without switching threads again.
//!
//! Errors are `std::io::Error` carrying the kernel errno (`raw_os_error()`), with context in the message.

use ipnetwork::IpNetwork;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::Path;

pub mod netns;
pub mod sysctl;

/// Ferry's own route protocol id (`rtm_protocol`), so the daemon removes only routes it made.
/// Must not collide with /etc/iproute2/rt_protos (kernel 0-4, bird 12, zebra 11, babel 42, ...).
pub const RTPROT_FERRY: u8 = 113;

/// The plugin's own route protocol (host /32 routes to pods), distinct from the daemon's.
pub const RTPROT_FERRY_POD: u8 = 114;

pub const RT_TABLE_MAIN: u32 = 254;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// IFF_UP is set.
    pub up: bool,
    /// `IFLA_INFO_KIND`, e.g. `"veth"`, `"bridge"`.
    pub kind: Option<String>,
    /// `IFLA_IFALIAS`.
    pub alias: Option<String>,
    /// For a veth: the ifindex of the peer (in the peer's namespace), from IFLA_LINK.
    pub peer_index: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Universe,
    Link,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub scope: Scope,
    /// `rtm_protocol`: who installed it.
    pub protocol: u8,
    pub table: u32,
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
    /// RTNH_F_ONLINK: gateway need not be on a connected subnet.
    pub onlink: bool,
}

impl Route {
    /// A main-table universe-scope route with protocol `boot`, no gateway, no oif.
    pub fn new(dst: IpNetwork) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            scope: Scope::Universe,
            protocol: 3,
            table: RT_TABLE_MAIN,
            src: None,
            metric: None,
            onlink: false,
        }
    }
}

/// A synchronous rtnetlink socket bound to one network namespace.
pub struct Netlink {
    _private: (),
}

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Netlink> {
        todo!()
    }

    /// A socket inside the namespace `ns` (an open `/run/netns/x` or `/proc/PID/ns/net`).
    /// The calling thread is back in its own namespace when this returns, also on error.
    pub fn in_netns(ns: &File) -> io::Result<Netlink> {
        let _ = ns;
        todo!()
    }

    /// Create a veth pair in one RTM_NEWLINK: `host` in this handle's namespace (set UP),
    /// `peer` created directly inside `peer_ns` (left DOWN: bring it up from inside).
    /// `mtu` applies to both ends. `alias`, if given, is set as IFLA_IFALIAS on the host end.
    /// EEXIST surfaces as `io::ErrorKind::AlreadyExists`.
    pub fn create_veth(&mut self, host: &str, peer: &str, peer_ns: &File, mtu: Option<u32>, alias: Option<&str>) -> io::Result<()> {
        let _ = (host, peer, peer_ns, mtu, alias);
        todo!()
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let _ = name;
        todo!()
    }

    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let _ = index;
        todo!()
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        todo!()
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let _ = index;
        todo!()
    }

    /// Delete a link. `Ok(false)` if it did not exist.
    pub fn del_link(&mut self, index: u32) -> io::Result<bool> {
        let _ = index;
        todo!()
    }

    /// Delete a link by name. `Ok(false)` if it did not exist.
    pub fn del_link_by_name(&mut self, name: &str) -> io::Result<bool> {
        let _ = name;
        todo!()
    }

    /// Add `addr` (address with prefix length) to `index`. With `noprefixroute` the kernel adds no
    /// connected-subnet route. EEXIST surfaces as `AlreadyExists`.
    pub fn add_address(&mut self, index: u32, addr: IpNetwork, noprefixroute: bool) -> io::Result<()> {
        let _ = (index, addr, noprefixroute);
        todo!()
    }

    /// Addresses on `index` (all links when `None`): (ifindex, address/prefix).
    pub fn addresses(&mut self, index: Option<u32>) -> io::Result<Vec<(u32, IpNetwork)>> {
        let _ = index;
        todo!()
    }

    /// Delete an address. `Ok(false)` if it was not there.
    pub fn del_address(&mut self, index: u32, addr: IpNetwork) -> io::Result<bool> {
        let _ = (index, addr);
        todo!()
    }

    /// RTM_NEWROUTE with NLM_F_CREATE|NLM_F_EXCL (EEXIST → `AlreadyExists`).
    pub fn add_route(&mut self, r: &Route) -> io::Result<()> {
        let _ = r;
        todo!()
    }

    /// RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE: atomic add-or-replace.
    pub fn replace_route(&mut self, r: &Route) -> io::Result<()> {
        let _ = r;
        todo!()
    }

    /// Delete a route (matched on dst, table, and gateway/oif/protocol when set). `Ok(false)` if absent.
    pub fn del_route(&mut self, r: &Route) -> io::Result<bool> {
        let _ = r;
        todo!()
    }

    /// Dump routes of one family (`v6 == false`: IPv4) in `table`, optionally only those with `protocol`.
    /// Only unicast routes (`RTN_UNICAST`) are returned.
    pub fn routes(&mut self, v6: bool, table: u32, protocol: Option<u8>) -> io::Result<Vec<Route>> {
        let _ = (v6, table, protocol);
        todo!()
    }

    /// The route the kernel would use to reach `dst` (RTM_GETROUTE), for "is this gateway directly
    /// reachable" checks: returns (oif, gateway if any).
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        let _ = dst;
        todo!()
    }
}

/// Multicast subscription to link and IPv4/IPv6 route and address changes, for the daemon's drift
/// detection. `recv` blocks; run it on a dedicated thread.
pub struct EventSocket {
    _private: (),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RouteAdded(Route),
    RouteDeleted(Route),
    LinkChanged { index: u32, name: String, up: bool },
    LinkDeleted { index: u32, name: String },
    AddressChanged,
    /// The kernel dropped events (ENOBUFS): do a full resync.
    Overrun,
}

impl EventSocket {
    pub fn new() -> io::Result<EventSocket> {
        todo!()
    }
    /// Block until at least one event arrives.
    pub fn recv(&mut self) -> io::Result<Vec<Event>> {
        todo!()
    }
}

/// Convenience: open a namespace path (`/run/netns/x`, `/proc/PID/ns/net`).
pub fn open_netns(path: &Path) -> io::Result<File> {
    File::open(path)
}
