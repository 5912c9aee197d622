//! Timing route changes in a lab namespace (the benches): a netlink event socket in the
//! namespace, events timestamped on arrival, and percentile formatting.

use ferry_netlink::{netns, Event, EventSocket, RTPROT_FERRY};
use ipnetwork::IpNetwork;
use std::fs::File;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Route (and link, address, nexthop) events of one namespace, timestamped on arrival, from a
/// thread inside it.
pub fn watch_routes(ns_path: &str) -> mpsc::Receiver<(Instant, Event)> {
    let (tx, rx) = mpsc::channel();
    let ns = File::open(ns_path).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let g = netns::enter(&ns).unwrap();
        let mut es = EventSocket::new().unwrap();
        drop(g);
        ready_tx.send(()).unwrap();
        loop {
            let Ok(evs) = es.recv() else { continue };
            let now = Instant::now();
            for e in evs {
                if tx.send((now, e)).is_err() {
                    return;
                }
            }
        }
    });
    ready_rx.recv().unwrap();
    rx
}

/// Wait (3 s at most) for a proto-113 route event for `dst` (added or deleted); its arrival.
pub fn wait_route_event(
    rx: &mpsc::Receiver<(Instant, Event)>,
    dst: IpNetwork,
    added: bool,
) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((t, Event::RouteAdded(r)))
                if added && r.dst == dst && r.protocol == RTPROT_FERRY =>
            {
                return Some(t)
            }
            Ok((t, Event::RouteDeleted(r)))
                if !added && r.dst == dst && r.protocol == RTPROT_FERRY =>
            {
                return Some(t)
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Samples in milliseconds, shown as p50 p99 max.
pub struct Stats(pub Vec<f64>);

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = self.0.clone();
        if v.is_empty() {
            return write!(f, "{:>9} {:>9} {:>9}", "-", "-", "-");
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        write!(f, "{:>9.3} {:>9.3} {:>9.3}", q(0.5), q(0.99), v[v.len() - 1])
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
