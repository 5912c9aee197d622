//! Netlink effects for Ferry, behind one small synchronous API.
//!
//! A [`Netlink`] handle wraps one `NETLINK_ROUTE` socket. A netlink socket stays bound to the
//! network namespace it was created in, so [`Netlink::in_netns`] opens a socket inside another
//! namespace (setns on the calling thread, socket(), setns back) and every later call on that handle
//! acts in that namespace without switching threads again.
//!
//! Errors are `std::io::Error`. A kernel refusal is `io::Error::from_raw_os_error(errno)`, so
//! `raw_os_error()` and `kind()` (EEXIST → `AlreadyExists`) work; the caller adds the context (which
//! operation on what). Replies that cannot be parsed are `ErrorKind::InvalidData` with a message.
//! "Not there" outcomes are not errors: `Ok(None)` / `Ok(false)`.

use ipnetwork::IpNetwork;
use std::net::IpAddr;

pub mod addr;
pub mod batch;
pub mod events;
mod frame;
pub mod link;
pub mod neigh;
pub mod netns;
pub mod nexthop;
pub mod nftgen;
pub mod ready;
pub mod route;
mod socket;
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
    /// `IFLA_OPERSTATE` is `IF_OPER_UP` (carrier on, and the kernel's linkwatch has seen it).
    pub oper_up: bool,
    /// `IFLA_QDISC`: `noop` until linkwatch attaches the real queueing discipline.
    pub qdisc: Option<String>,
}

impl Link {
    /// Whether a packet sent out of this link now leaves it: administratively and operationally
    /// up, with a queueing discipline attached. After carrier comes on the kernel does the latter
    /// two asynchronously (the linkwatch work item); until then the `noop` qdisc drops what is
    /// sent. A single RTM_GETLINK of the link runs its pending linkwatch work first (since Linux
    /// 5.15, `rtnl_getlink`), so [`Netlink::link_by_index`] reports the settled state.
    pub fn can_send(&self) -> bool {
        self.up && self.oper_up && self.qdisc.as_deref().is_some_and(|q| q != "noop")
    }
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
    /// `RTA_NH_ID`: the route uses this nexthop object. When set, a route message carries the id
    /// and no gateway or oif (the kernel refuses both at once); in dumps the kernel may add the
    /// nexthop's gateway and oif (`net.ipv4.nexthop_compat_mode`, on by default).
    pub nh_id: Option<u32>,
}

/// A nexthop object (Linux 5.3+), see `nexthop.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexthop {
    /// The kernel's key: unique in the namespace.
    pub id: u32,
    /// Family (with no gateway, the only sign of it).
    pub v6: bool,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// `nh_protocol`: who installed it.
    pub protocol: u8,
    pub onlink: bool,
    /// A group of nexthops (read from dumps; never built here).
    pub group: bool,
    /// A blackhole nexthop (read from dumps; never built here).
    pub blackhole: bool,
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
            nh_id: None,
        }
    }
}

/// A synchronous rtnetlink socket bound to one network namespace. Its operations live in
/// `socket.rs` (new, in_netns), `link.rs`, `addr.rs` and `route.rs`.
pub struct Netlink {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Multicast subscription to link and IPv4/IPv6 route and address changes, for the daemon's drift
/// detection. `recv` blocks; run it on a dedicated thread. See `events.rs`.
pub struct EventSocket {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RouteAdded(Route),
    RouteDeleted(Route),
    LinkChanged {
        index: u32,
        name: String,
        up: bool,
    },
    LinkDeleted {
        index: u32,
        name: String,
    },
    AddressChanged,
    /// A nexthop object was added or replaced.
    NexthopChanged(Nexthop),
    /// A nexthop object was deleted, and with it (silently: no route event) its routes.
    NexthopDeleted(Nexthop),
    /// The kernel dropped events (ENOBUFS): do a full resync.
    Overrun,
}

/// `aa:bb:cc:00:11:22` (lowercase, colon-separated), as `ip link` prints it.
pub fn mac_to_string(mac: [u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_to_string_is_lowercase_colon_hex() {
        assert_eq!(mac_to_string([0x0a, 0xBC, 0, 1, 0xff, 0x10]), "0a:bc:00:01:ff:10");
    }

    #[test]
    fn route_new_defaults() {
        let r = Route::new("10.0.0.0/8".parse().unwrap());
        assert_eq!(
            (r.protocol, r.table, r.scope, r.onlink),
            (3, RT_TABLE_MAIN, Scope::Universe, false)
        );
    }
}
