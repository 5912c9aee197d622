//! Counters and gauges the daemon keeps for a future Prometheus endpoint. Atomics, so an HTTP
//! thread could read them while the event loop writes; [`Metrics::render`] gives the text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $kind:ident $name:ident;)*) => {
        #[derive(Debug, Default)]
        pub struct Metrics { $($(#[doc = $doc])* pub $name: AtomicU64,)* }

        impl Metrics {
            /// Prometheus text exposition of every metric, names prefixed `ferryd_`.
            pub fn render(&self) -> String {
                let mut s = String::new();
                $(
                    let help = concat!($($doc),*).trim();
                    s.push_str(&format!("# HELP ferryd_{} {}\n# TYPE ferryd_{} {}\nferryd_{} {}\n",
                        stringify!($name), help, stringify!($name), stringify!($kind),
                        stringify!($name), self.$name.load(Relaxed)));
                )*
                s
            }
        }
    };
}

metrics! {
    /// Routes added.
    counter routes_added_total;
    /// Routes whose gateway was replaced.
    counter routes_replaced_total;
    /// Stale routes deleted.
    counter routes_deleted_total;
    /// Netlink route operations that failed.
    counter route_errors_total;
    /// Full reconciles run (events and sweeps).
    counter reconciles_total;
    /// Reconciles triggered by a kernel event (route deleted by hand, link flap).
    counter drift_repairs_total;
    /// Store entries ignored as bad leases (garbage, outside the network, overlapping, own IP).
    counter bad_leases_total;
    /// Peers whose public IP is not directly reachable (reported once per occurrence).
    counter unreachable_peers_total;
    /// A foreign route already holds a peer's destination.
    counter route_conflicts_total;
    /// Store operations that failed (then retried with backoff).
    counter store_errors_total;
    /// Lease renewals that succeeded.
    counter lease_renewals_total;
    /// Times this node (re-)claimed a lease.
    counter lease_claims_total;
    /// etcd: requests or watches that moved to another member (the one in use failed).
    counter etcd_failovers_total;
    /// etcd: member failures seen (refused, reset, no leader, no answer within the deadline).
    counter etcd_member_failures_total;
    /// etcd: watch streams resumed on another member (broke, went silent, cancelled).
    counter etcd_watch_restarts_total;
    /// etcd: watches that had to re-list because their revision was compacted away.
    counter etcd_watch_relists_total;
    /// Peer routes currently wanted.
    gauge peers;
    /// Leases currently ignored as bad.
    gauge bad_leases;
    /// Peers currently unreachable.
    gauge unreachable_peers;
    /// etcd: the member in use, as its 1-based position in --store (0: none answered yet).
    gauge etcd_member;
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        inc(&m.routes_added_total);
        set(&m.peers, 7);
        let t = m.render();
        assert!(
            t.contains("# TYPE ferryd_routes_added_total counter\nferryd_routes_added_total 1\n"),
            "{t}"
        );
        assert!(t.contains("# HELP ferryd_peers Peer routes currently wanted.\n"), "{t}");
        assert!(t.contains("ferryd_peers 7\n"));
    }
}
