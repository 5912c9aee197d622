//! Counters, gauges and a histogram the daemon keeps, served as Prometheus text on /metrics
//! ([`crate::http`]). Atomics: the event loop writes, a scrape reads, nobody waits.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $kind:ident $name:ident;)*) => {
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Bad leases currently ignored, by [`REASONS`] index.
            pub ignored: [AtomicU64; REASONS.len()],
            /// How long full reconciles take.
            pub reconcile_seconds: Histogram,
        }

        impl Metrics {
            /// Prometheus text exposition of every metric, names prefixed `ferryd_`.
            pub fn render(&self) -> String {
                let mut s = self.render_extra();
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
    /// Peers reached through the VXLAN device (vxlan backend; the others get direct routes).
    gauge peers_encapsulated;
    /// etcd: the member in use, as its 1-based position in --store (0: none answered yet).
    gauge etcd_member;
    /// etcd: lease watch streams open (2: on two members, so a partitioned one delays nothing).
    gauge etcd_watch_streams;
    /// Peer routes in the kernel as wanted (wanted minus unreachable or blocked peers).
    gauge routes_programmed;
    /// The last full reconcile left the kernel as wanted (1) or failed (0).
    gauge routes_in_sync;
    /// This node holds its lease (1) or is (re-)claiming it (0).
    gauge lease_held;
    /// When this node's lease expires, in Unix seconds (0: a permanent reservation).
    gauge lease_expiry_unix_seconds;
    /// The lease store answered its last request (1) or is unreachable (0).
    gauge store_reachable;
    /// The subnet file and CNI conflist are in place (1).
    gauge node_files_written;
    /// When the event loop last woke, Unix milliseconds (informational: an idle loop wakes only
    /// on events, sweeps and /healthz asks; /healthz asks the loop instead of reading this).
    gauge loop_heartbeat_unix_ms;
}

/// Why a lease is ignored, as the `reason` label of `ferryd_peers_ignored`.
pub const REASONS: [&str; 7] = [
    "invalid_json",
    "outside_network",
    "overlapping",
    "unreachable",
    "noncanonical_key",
    "wrong_length",
    "other",
];

/// The [`REASONS`] index for a bad lease's reason text (see `peers::evaluate`).
pub fn reason_index(why: &str) -> usize {
    let label = if why.starts_with(crate::store::NON_CANONICAL) {
        "noncanonical_key"
    } else if why.contains("lease JSON") || why.contains("unreadable") || why.contains("Expires") {
        "invalid_json"
    } else if why.contains("outside the cluster network")
        || why.contains("outside the IPv6 cluster network")
    {
        "outside_network"
    } else if why.contains("is not a /") {
        "wrong_length"
    } else if why.contains("overlaps") || why.contains("also leased") || why.contains("claims this")
    {
        "overlapping"
    } else {
        "other"
    };
    REASONS.iter().position(|r| *r == label).unwrap_or(REASONS.len() - 1)
}

/// Upper bounds (seconds) of the reconcile-duration histogram's buckets.
pub const BUCKETS: [f64; 8] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 2.0];

/// A Prometheus histogram of durations (cumulative buckets, sum in microseconds).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, name: &str, help: &str, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(s, "{name}_sum {sum}\n{name}_count {count}");
    }
}

impl Metrics {
    /// The labelled gauge, seconds to lease expiry and the histogram.
    fn render_extra(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        s.push_str("# HELP ferryd_peers_ignored Leases currently not routed, by reason.\n");
        s.push_str("# TYPE ferryd_peers_ignored gauge\n");
        for (i, r) in REASONS.iter().enumerate() {
            let n = if *r == "unreachable" {
                self.unreachable_peers.load(Relaxed)
            } else {
                self.ignored[i].load(Relaxed)
            };
            let _ = writeln!(s, "ferryd_peers_ignored{{reason=\"{r}\"}} {n}");
        }
        let exp = self.lease_expiry_unix_seconds.load(Relaxed);
        let left = if exp == 0 { -1 } else { exp as i64 - crate::log::unix_secs() as i64 };
        let name = "ferryd_lease_seconds_to_expiry";
        let _ = writeln!(s, "# HELP {name} Seconds until this node's lease expires (-1: never).");
        let _ = writeln!(s, "# TYPE {name} gauge\n{name} {left}");
        self.reconcile_seconds.render(
            "ferryd_reconcile_duration_seconds",
            "How long full route reconciles take.",
            &mut s,
        );
        s
    }
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
    fn ipv6_reasons_are_labelled_like_ipv4_ones() {
        let label = |why: &str| REASONS[reason_index(why)];
        assert_eq!(label("IPv6: IPv6 subnet fd00:99::/64 is outside the IPv6 cluster network fd00:10:244::/56"), "outside_network");
        assert_eq!(
            label("IPv6 subnet fd00:10:244::/60 is not a /64 (the network's IPv6 subnet length)"),
            "wrong_length"
        );
        assert_eq!(
            label("IPv6: claims this node's IPv6 subnet fd00:10:244:1::/64 for fd00::9"),
            "overlapping"
        );
        assert_eq!(
            label("IPv4: subnet 10.99.0.0/24 is outside the cluster network 10.244.0.0/16"),
            "outside_network"
        );
    }

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
