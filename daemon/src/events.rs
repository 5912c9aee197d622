//! Kernel events: a dedicated thread blocks on the netlink multicast socket and feeds the event
//! loop; `classify` decides which events mean drift. Ferry's own route changes echo back as events
//! too; those that match the wanted state are ignored, so repairs never loop.

use crate::route_plan::{nh_id_in, nh_peer, Want};
use ferry_netlink::{Event, EventSocket, RTPROT_FERRY, RT_TABLE_MAIN};
use ipnetwork::IpNetwork;
use std::net::IpAddr;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Nothing to do.
    None,
    /// Something changed that may make an unreachable peer reachable (a route/address/link
    /// appeared): reconcile, retrying known-unreachable peers, only if there are any.
    Connectivity,
    /// A wanted route vanished or a foreign/stale one appeared: reconcile now.
    Drift,
    /// A link or address changed (flap): reconcile and retry every peer.
    Link,
}

pub fn classify(ev: &Event, want: &Want) -> Trigger {
    match ev {
        Event::RouteDeleted(r) => match (r.dst, r.table) {
            (d, RT_TABLE_MAIN) if want.contains_key(&d) => Trigger::Drift,
            _ => Trigger::None,
        },
        Event::RouteAdded(r) => match (r.dst, r.table) {
            (d, RT_TABLE_MAIN) if is_unicast_dst(d) => {
                if r.protocol == RTPROT_FERRY {
                    if is_own_echo(r, d, want) {
                        Trigger::None // our own change echoing back
                    } else {
                        Trigger::Drift
                    }
                } else if want.contains_key(&d) {
                    Trigger::Drift
                } else {
                    Trigger::Connectivity
                }
            }
            _ => Trigger::None,
        },
        // Deleting a peer's nexthop takes its route along without a route event.
        Event::NexthopDeleted(n) => match nh_peer(n.id, want) {
            Some(_) if n.protocol == RTPROT_FERRY => Trigger::Drift,
            _ => Trigger::None,
        },
        Event::NexthopChanged(n) => match nh_peer(n.id, want) {
            Some(d) if n.protocol == RTPROT_FERRY && is_wanted_hop(want, d, n.gateway) => {
                Trigger::None
            }
            Some(_) => Trigger::Drift,
            None if n.protocol == RTPROT_FERRY => Trigger::Drift, // a stale one of ours
            None => Trigger::None,
        },
        Event::LinkChanged { .. }
        | Event::LinkDeleted { .. }
        | Event::AddressChanged
        | Event::Overrun => Trigger::Link,
    }
}

fn want_gw(want: &Want, d: IpNetwork) -> Option<IpAddr> {
    want.get(&d).copied()
}

/// `gw` is a gateway Ferry uses for wanted peer `d`: its public address (direct route), or the
/// peer subnet's own network address, its VTEP on the VXLAN device (vxlan backend).
fn is_wanted_hop(want: &Want, d: IpNetwork, gw: Option<IpAddr>) -> bool {
    gw.is_some() && (want_gw(want, d) == gw || (d.is_ipv4() && gw == Some(d.network())))
}

/// Routes that can bear on a peer's reachability: IPv4 ones, and IPv6 ones other than the
/// link-local and multicast routes every link gets.
fn is_unicast_dst(d: IpNetwork) -> bool {
    match d {
        IpNetwork::V4(_) => true,
        IpNetwork::V6(n) => (n.ip().segments()[0] & 0xffc0) != 0xfe80 && !n.ip().is_multicast(),
    }
}

/// A proto-113 route for `d` as Ferry makes it: the wanted gateway (shown on a route on a
/// nexthop object too, unless `net.ipv4.nexthop_compat_mode` is off), or the peer's nexthop.
fn is_own_echo(r: &ferry_netlink::Route, d: IpNetwork, want: &Want) -> bool {
    if r.metric.unwrap_or(0) != 0 || !want.contains_key(&d) {
        return false;
    }
    match (r.gateway, r.nh_id) {
        (Some(g), _) => is_wanted_hop(want, d, Some(g)),
        (None, Some(id)) => nh_id_in(d, want) == Some(id),
        (None, None) => false,
    }
}

/// Event batches (one per netlink datagram, mostly one event each) waiting for the event loop.
/// Past this the thread drops events and owes the loop one [`Event::Overrun`] (a full
/// reconcile), exactly as if the kernel's socket buffer had overrun. Bounded because the loop
/// does not read while it programs routes: a 50,000-peer start-up echoes 100,000 route and
/// nexthop events, which queued unbounded doubled ferryd's peak RSS (72 MB against 35 MB) and
/// cost CPU parsing them while the routes were being programmed.
pub const QUEUE: usize = 4096;

/// Start the event thread. The socket is opened on the new thread, which shares this process's
/// network namespace. Errors opening it are returned; later receive errors become `Overrun`.
pub fn spawn(tx: Sender<Vec<Event>>) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("netlink-events".into()).stack_size(256 * 1024).spawn(
        move || {
            let mut sock = match EventSocket::new() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Events were dropped on a full queue: the loop is owed an Overrun.
            let mut dropped = false;
            loop {
                if dropped {
                    // Waits for room (the kernel's buffer takes what comes meanwhile).
                    if tx.blocking_send(vec![Event::Overrun]).is_err() {
                        return;
                    }
                    dropped = false;
                }
                let batch = match sock.recv() {
                    Ok(b) => b,
                    Err(e) => {
                        warn!("netlink event socket: {e}; resyncing");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        vec![Event::Overrun]
                    }
                };
                if batch.is_empty() {
                    continue;
                }
                match tx.try_send(batch) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => dropped = true,
                    Err(TrySendError::Closed(_)) => return, // the event loop is gone
                }
            }
        },
    )?;
    ready_rx.recv().map_err(|_| std::io::Error::other("netlink event thread died"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_plan::{nh_id, peer_route};
    use ferry_netlink::Route;

    fn want() -> Want {
        [("10.244.2.0/24".parse().unwrap(), "198.18.0.12".parse().unwrap())].into_iter().collect()
    }

    #[test]
    fn own_echoes_are_ignored_and_drift_is_seen() {
        let w = want();
        let ours = peer_route("10.244.2.0/24".parse().unwrap(), "198.18.0.12".parse().unwrap(), 2);
        assert_eq!(classify(&Event::RouteAdded(ours.clone()), &w), Trigger::None);
        assert_eq!(classify(&Event::RouteDeleted(ours.clone()), &w), Trigger::Drift);
        // Deleting a route we no longer want (our own cleanup) is not drift.
        let stale = peer_route("10.244.9.0/24".parse().unwrap(), "198.18.0.19".parse().unwrap(), 2);
        assert_eq!(classify(&Event::RouteDeleted(stale.clone()), &w), Trigger::None);
        // Someone adds a proto-113 route we do not want.
        assert_eq!(classify(&Event::RouteAdded(stale), &w), Trigger::Drift);
        // A foreign route for a peer's subnet.
        let mut foreign = Route::new("10.244.2.0/24".parse().unwrap());
        foreign.protocol = 4;
        assert_eq!(classify(&Event::RouteAdded(foreign), &w), Trigger::Drift);
        // A connected route coming back (link up): maybe someone is reachable now.
        let conn = Route::new("198.18.0.0/24".parse().unwrap());
        assert_eq!(classify(&Event::RouteAdded(conn), &w), Trigger::Connectivity);
        assert_eq!(
            classify(&Event::LinkChanged { index: 2, name: "eth0".into(), up: true }, &w),
            Trigger::Link
        );
        assert_eq!(classify(&Event::Overrun, &w), Trigger::Link);
        let mut other_table = ours;
        other_table.table = 100;
        assert_eq!(classify(&Event::RouteDeleted(other_table), &w), Trigger::None);
    }

    #[test]
    fn ipv6_routes_and_nexthops_are_classified_like_ipv4_ones() {
        use crate::route_plan::{nexthop_route, peer_nexthop};
        let d: IpNetwork = "fd00:10:244:2::/64".parse().unwrap();
        let gw: IpAddr = "fd00:198:18::12".parse().unwrap();
        let w: Want = [(d, gw)].into_iter().collect();
        let id = nh_id(d).unwrap();
        let on_nh = nexthop_route(d, id);
        assert_eq!(classify(&Event::RouteAdded(on_nh.clone()), &w), Trigger::None, "own echo");
        assert_eq!(classify(&Event::RouteDeleted(on_nh), &w), Trigger::Drift);
        let wrong = peer_route(d, "fd00:198:18::99".parse().unwrap(), 2);
        assert_eq!(classify(&Event::RouteAdded(wrong), &w), Trigger::Drift);
        let nh = peer_nexthop(id, gw, 2);
        assert_eq!(classify(&Event::NexthopDeleted(nh.clone()), &w), Trigger::Drift);
        assert_eq!(classify(&Event::NexthopChanged(nh), &w), Trigger::None);
        // A global IPv6 connected route may make a peer reachable; link-local and multicast
        // routes (every link has them) do not.
        let conn = Route::new("fd00:198:18::/64".parse().unwrap());
        assert_eq!(classify(&Event::RouteAdded(conn), &w), Trigger::Connectivity);
        for noise in ["fe80::/64", "ff00::/8"] {
            let r = Route::new(noise.parse().unwrap());
            assert_eq!(classify(&Event::RouteAdded(r), &w), Trigger::None, "{noise}");
        }
    }

    #[test]
    fn nexthop_routes_and_nexthop_events() {
        use crate::route_plan::{nexthop_route, peer_nexthop};
        let w = want();
        let d: IpNetwork = "10.244.2.0/24".parse().unwrap();
        let id = nh_id(d).unwrap();
        let gw: IpAddr = "198.18.0.12".parse().unwrap();
        // A route on the peer's nexthop, with or without the gateway shown: our echo.
        let on_nh = nexthop_route(d, id);
        assert_eq!(classify(&Event::RouteAdded(on_nh.clone()), &w), Trigger::None);
        let shown = Route { gateway: Some(gw), ..on_nh.clone() };
        assert_eq!(classify(&Event::RouteAdded(shown), &w), Trigger::None);
        let other_nh = Route { nh_id: Some(id + 1), ..on_nh };
        assert_eq!(classify(&Event::RouteAdded(other_nh), &w), Trigger::Drift);
        // Deleting the peer's nexthop (its route goes silently) is drift; a stale one's is not.
        let nh = peer_nexthop(id, gw, 2);
        assert_eq!(classify(&Event::NexthopDeleted(nh.clone()), &w), Trigger::Drift);
        let stale = peer_nexthop(nh_id("10.244.9.0/24".parse().unwrap()).unwrap(), gw, 2);
        assert_eq!(classify(&Event::NexthopDeleted(stale.clone()), &w), Trigger::None);
        // Our own nexthop echoing back is nothing; a wrong gateway or a stray one is drift.
        assert_eq!(classify(&Event::NexthopChanged(nh.clone()), &w), Trigger::None);
        let moved = peer_nexthop(id, "198.18.0.99".parse().unwrap(), 2);
        assert_eq!(classify(&Event::NexthopChanged(moved), &w), Trigger::Drift);
        assert_eq!(classify(&Event::NexthopChanged(stale), &w), Trigger::Drift);
        let mut theirs = peer_nexthop(77, gw, 2);
        theirs.protocol = 4;
        assert_eq!(classify(&Event::NexthopChanged(theirs.clone()), &w), Trigger::None);
        assert_eq!(classify(&Event::NexthopDeleted(theirs), &w), Trigger::None);
        // vxlan backend: the peer via its VTEP (its subnet's network address) is ours too.
        let vtep: IpAddr = "10.244.2.0".parse().unwrap();
        let mut vx = peer_nexthop(id, vtep, 9);
        vx.onlink = true;
        assert_eq!(classify(&Event::NexthopChanged(vx), &w), Trigger::None);
        let shown = Route { gateway: Some(vtep), ..nexthop_route(d, id) };
        assert_eq!(classify(&Event::RouteAdded(shown), &w), Trigger::None);
        let elsewhere =
            Route { gateway: Some("10.244.7.0".parse().unwrap()), ..nexthop_route(d, id) };
        assert_eq!(classify(&Event::RouteAdded(elsewhere), &w), Trigger::Drift);
    }
}
