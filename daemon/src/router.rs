//! The route side of the event loop: folds store events into the lease map, computes the wanted
//! routes, reacts to kernel drift, sweeps periodically, and keeps the node files in place.

use crate::args::Args;
use crate::events::{classify, Trigger};
use crate::masq;
use crate::metrics::{self, Metrics};
use crate::node;
use crate::peers::{apply_event, evaluate, Leases, Me};
use crate::route_applier::RouteApplier;
use crate::route_plan::Want;
use crate::store::WatchEvent;
use ferry_netlink::Event;
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};

pub struct Router {
    pub a: Arc<Args>,
    pub routes: RouteApplier,
    pub me: Me,
    pub mtu: u32,
    pub m: Arc<Metrics>,
    leases: Leases,
    want: Want,
    /// The first full listing arrived: until then nothing is reconciled (no listing ≠ no peers).
    listed: bool,
    reported_bad: BTreeMap<String, String>,
    own_missing: bool,
    /// Subnet the masquerade table was last written for.
    masq_for: Option<Ipv4Network>,
}

pub struct Inputs {
    pub store: mpsc::UnboundedReceiver<Vec<WatchEvent>>,
    pub kernel: mpsc::UnboundedReceiver<Vec<Event>>,
    pub own: watch::Receiver<Ipv4Network>,
    pub lost: mpsc::UnboundedSender<()>,
}

impl Router {
    pub fn new(a: Arc<Args>, routes: RouteApplier, me: Me, mtu: u32, m: Arc<Metrics>) -> Router {
        Router {
            a,
            routes,
            me,
            mtu,
            m,
            leases: Leases::new(),
            want: Want::new(),
            listed: false,
            reported_bad: BTreeMap::new(),
            own_missing: false,
            masq_for: None,
        }
    }

    /// Subnet file, masquerade table and conflist, in that order (the conflist last: a runtime
    /// that sees it can use the network). `force_masq` re-applies the nft table even if unchanged.
    pub fn ensure_node(&mut self, force_masq: bool) {
        let a = &self.a;
        let env = node::subnet_env(self.me.network, self.me.subnet, self.mtu, a.ip_masq);
        match node::write_if_changed(&a.subnet_file, &env) {
            Ok(true) => info!("wrote {} ({})", a.subnet_file.display(), self.me.subnet),
            Ok(false) => {}
            Err(e) => warn!("subnet file: {e}"),
        }
        if a.ip_masq && (force_masq || self.masq_for != Some(self.me.subnet)) {
            match masq::apply(&a.nft, self.me.network, self.me.subnet) {
                Ok(()) => {
                    if self.masq_for != Some(self.me.subnet) {
                        info!(
                            "masquerade: table ip {} for {} leaving {}",
                            masq::TABLE,
                            self.me.subnet,
                            self.me.network
                        );
                    }
                    self.masq_for = Some(self.me.subnet);
                }
                Err(e) => warn!("masquerade: {e}"),
            }
        } else if !a.ip_masq && self.masq_for.is_none() {
            if let Err(e) = masq::remove(&a.nft) {
                warn!("masquerade off, but removing table ip {}: {e}", masq::TABLE);
            }
            self.masq_for = Some(self.me.subnet);
        }
        let path = a.cni_conf_dir.join(&a.cni_conf_name);
        match node::write_if_changed(&path, &node::conflist(a)) {
            Ok(true) => info!("installed CNI config {}", path.display()),
            Ok(false) => {}
            Err(e) => warn!("CNI config: {e}"),
        }
    }

    fn recompute(&mut self, lost: &mpsc::UnboundedSender<()>) {
        let v = evaluate(&self.leases, &self.me, SystemTime::now());
        for (k, why) in &v.bad {
            if self.reported_bad.get(k) != Some(why) {
                metrics::inc(&self.m.bad_leases_total);
                warn!("ignoring lease {k}: {why}");
            }
        }
        metrics::set(&self.m.bad_leases, v.bad.len() as u64);
        self.reported_bad = v.bad;
        self.want = v.want;
        if self.listed && !v.own_present && !self.own_missing {
            warn!("this node's lease {} is gone from the store; re-claiming it", self.me.subnet);
            let _ = lost.send(());
        }
        self.own_missing = !v.own_present;
    }

    fn reconcile(&mut self, retry: bool, drift: bool) {
        if !self.listed {
            return;
        }
        match self.routes.reconcile(&self.want, retry) {
            Ok(n) => {
                if n > 0 && drift {
                    metrics::inc(&self.m.drift_repairs_total);
                }
            }
            Err(e) => {
                metrics::inc(&self.m.route_errors_total);
                warn!("route reconcile: {e}");
            }
        }
        // A full reconcile dumps and plans the whole table; hand the transient heap back so an
        // idle daemon with thousands of peers stays small (glibc keeps freed memory otherwise).
        // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    pub async fn run(mut self, mut inp: Inputs) -> i32 {
        let period = self.a.resync;
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
        loop {
            let (mut dirty, mut retry, mut drift) = (false, false, false);
            tokio::select! {
                biased;
                Ok(()) = inp.own.changed() => {
                    let s = *inp.own.borrow_and_update();
                    info!("this node's subnet is now {s}");
                    self.me.subnet = s;
                    self.ensure_node(false);
                    self.recompute(&inp.lost);
                    dirty = true;
                }
                Some(batch) = inp.store.recv() => {
                    let mut full = self.fold(batch);
                    while let Ok(b) = inp.store.try_recv() {
                        full |= self.fold(b);
                    }
                    let old = std::mem::take(&mut self.want);
                    self.recompute(&inp.lost);
                    // Single lease changes take the fast path (no table dump); a full listing,
                    // or a kernel that does not look as expected, gets a full reconcile.
                    dirty = full || !self.delta(&old);
                }
                Some(evs) = inp.kernel.recv() => {
                    let mut t = Trigger::None;
                    let mut take = |evs: Vec<Event>| for e in &evs { t = t.max(classify(e, &self.want)) };
                    take(evs);
                    while let Ok(more) = inp.kernel.try_recv() {
                        take(more);
                    }
                    match t {
                        Trigger::None => {}
                        Trigger::Connectivity => (dirty, retry) = (self.routes.has_blocked(), true),
                        Trigger::Drift => (dirty, drift) = (true, true),
                        Trigger::Link => (dirty, retry, drift) = (true, true, true),
                    }
                }
                _ = sweep.tick() => {
                    self.ensure_node(true);
                    (dirty, retry) = (true, true);
                }
                Some(()) = async { match usr1.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    info!("metrics:\n{}", self.m.render());
                }
            }
            if dirty {
                self.reconcile(retry, drift);
            }
        }
    }

    /// Fold store events into the lease map; true if a full listing was among them.
    fn fold(&mut self, batch: Vec<WatchEvent>) -> bool {
        let mut resync = false;
        for ev in batch {
            if matches!(ev, WatchEvent::Resync(_)) {
                self.listed = true;
                resync = true;
            }
            apply_event(&mut self.leases, ev);
        }
        resync
    }

    /// Apply `old → self.want` directly; false if a full reconcile is needed instead.
    fn delta(&mut self, old: &Want) -> bool {
        if !self.listed {
            return true;
        }
        match self.routes.apply_delta(old, &self.want) {
            Ok(in_sync) => in_sync,
            Err(e) => {
                warn!("route update: {e}");
                false
            }
        }
    }
}
