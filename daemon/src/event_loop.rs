//! The daemon's event loop: folds store events into the lease map, computes the wanted routes,
//! reacts to kernel drift, sweeps periodically, and keeps the node files in place.

use crate::events::{classify, Trigger};
use crate::masq::{self, Masquerade};
use crate::metrics::{self, Metrics};
use crate::node::{self, NodeFiles};
use crate::overlay::Overlay;
use crate::peers::{Me, PeerSet};
use crate::route_applier::{Encap, RouteApplier};
use crate::store::WatchEvent;
use ferry_netlink::Event;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// How often the loop re-checks everything on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Full route sweep (retrying blocked peers) and node-file check period.
    pub resync: Duration,
}

/// This node, and the subnet file, masquerade table and conflist kept in place for it.
pub struct NodeSide {
    pub me: Me,
    pub mtu: u32,
    files: NodeFiles,
    masq: Masquerade,
    /// What the masquerade tables were last written for.
    masq_for: Option<masq::Scope>,
    /// nftables' generation id right after that write, if nothing else committed meanwhile.
    masq_gen: Option<u32>,
}

impl NodeSide {
    pub fn new(me: Me, mtu: u32, files: NodeFiles, masq: Masquerade) -> NodeSide {
        NodeSide { me, mtu, files, masq, masq_for: None, masq_gen: None }
    }

    /// Subnet file, masquerade table and conflist, in that order (the conflist last: a runtime
    /// that sees it can use the network). `force_masq` re-applies the nft tables unless neither
    /// their scope nor anything in nftables changed since the last apply.
    /// Returns whether the subnet file and conflist are in place.
    pub fn ensure(&mut self, force_masq: bool) -> bool {
        let subnet_ok = self.write_subnet_file();
        self.ensure_masquerade(force_masq);
        let path = self.files.conflist_path();
        let dir = self.files.cni_exclude_host_local.as_deref();
        let exclude = crate::takeover::excludes(dir, self.me.subnets());
        let text = node::conflist_excluding(&self.files, &exclude);
        let conf_ok = match node::write_if_changed(&path, &text) {
            Ok(true) => {
                info!("installed CNI config {}", path.display());
                true
            }
            Ok(false) => true,
            Err(e) => {
                warn!("CNI config: {e}");
                false
            }
        };
        subnet_ok && conf_ok
    }

    fn write_subnet_file(&self) -> bool {
        let me = &self.me;
        let env = node::subnet_env(me, self.mtu, self.masq.enabled);
        match node::write_if_changed(&self.files.subnet_file, &env) {
            Ok(true) => info!("wrote {} ({})", self.files.subnet_file.display(), me.subnets()),
            Ok(false) => {}
            Err(e) => {
                warn!("subnet file: {e}");
                return false;
            }
        }
        true
    }

    fn ensure_masquerade(&mut self, force: bool) {
        let me = &self.me;
        let scope = masq::Scope {
            v4: me.v4.map(|m| (m.network, m.subnet)).filter(|_| self.masq.enabled),
            v6: me.v6.map(|m| (m.network, m.subnet)).filter(|_| self.masq.ipv6()),
        };
        let any = scope.v4.is_some() || scope.v6.is_some();
        let changed = self.masq_for != Some(scope);
        if any && (force || changed) {
            let gen = masq::generation();
            if !changed && gen.is_some() && gen == self.masq_gen {
                return; // nothing in nftables changed since our apply
            }
            match masq::apply(&self.masq.nft, &scope) {
                Ok(()) => {
                    // Our transaction is one bump; if another commit came between (it may have
                    // changed our tables), nothing is recorded and the next check applies again.
                    let after = masq::generation();
                    self.masq_gen = after.filter(|&a| gen.map(|g| g.wrapping_add(1)) == Some(a));
                    if changed {
                        if let Some((network, subnet)) = scope.v4 {
                            info!(
                                "masquerade: table ip {} for {subnet} leaving {network}",
                                masq::TABLE
                            );
                        }
                        if let Some((network, subnet)) = scope.v6 {
                            info!(
                                "masquerade: table ip6 {} for {subnet} leaving {network}",
                                masq::TABLE
                            );
                        }
                    }
                    self.masq_for = Some(scope);
                }
                Err(e) => {
                    self.masq_gen = None;
                    warn!("masquerade: {e}");
                }
            }
        } else if !any && self.masq_for.is_none() {
            if let Err(e) = masq::remove(&self.masq.nft) {
                warn!("masquerade off, but removing tables ip/ip6 {}: {e}", masq::TABLE);
            }
            self.masq_for = Some(scope);
        }
    }
}

pub struct EventLoop {
    pub node: NodeSide,
    pub routes: RouteApplier,
    settings: ReconcileSettings,
    metrics: Arc<Metrics>,
    /// The store's entries and the routes they make, updated one event at a time.
    peers: PeerSet,
    /// The first full listing arrived: until then nothing is reconciled (no listing ≠ no peers).
    listed: bool,
    own_missing: bool,
    /// The first full reconcile (the start-up bulk programming) has run.
    started: bool,
    /// vxlan backend: the device, kept as wanted before every full reconcile.
    overlay: Option<Overlay>,
    /// The public IP follows the uplink's address (no `--public-ip`).
    uplink: Option<UplinkWatch>,
    /// Asks the sweep's dump thread (host-gw; `None`: the sweep dumps on the loop).
    dump_ask: Option<std::sync::mpsc::Sender<u64>>,
    /// The dump asked for and not yet back (its number); `None` also once a full reconcile ran
    /// meanwhile (its answer is then stale and dropped).
    dump_pending: Option<u64>,
    dumps: u64,
    /// Subnets whose routes deltas changed since the pending dump was asked for.
    settled: std::collections::BTreeSet<ipnetwork::IpNetwork>,
    /// /healthz's asks, answered by the loop itself (`--metrics-address off`: none).
    liveness: Option<crate::http::Answerer>,
}

/// Following the uplink's address: a node re-addressed (moved to another segment) re-publishes
/// its lease with the new address, without a restart.
pub struct UplinkWatch {
    pub iface: Option<String>,
    pub netlink: ferry_netlink::Netlink,
    /// Tells the lease keeper the new address.
    pub moved: mpsc::UnboundedSender<std::net::Ipv4Addr>,
}

pub struct Inputs {
    pub store: mpsc::UnboundedReceiver<Vec<WatchEvent>>,
    pub kernel: mpsc::Receiver<Vec<Event>>,
    pub lost: mpsc::UnboundedSender<()>,
}

/// A full route reconcile one wake-up asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pass {
    /// Try peers known to be blocked (unreachable, foreign route) again.
    retry: bool,
    /// Kernel drift caused it: a pass that changes something counts as a repair.
    drift: bool,
}

impl EventLoop {
    pub fn new(
        node: NodeSide,
        settings: ReconcileSettings,
        routes: RouteApplier,
        metrics: Arc<Metrics>,
    ) -> EventLoop {
        EventLoop {
            node,
            routes,
            settings,
            metrics,
            peers: PeerSet::new(),
            listed: false,
            own_missing: false,
            started: false,
            overlay: None,
            uplink: None,
            dump_ask: None,
            dump_pending: None,
            dumps: 0,
            settled: Default::default(),
            liveness: None,
        }
    }

    /// Answer /healthz's liveness asks.
    pub fn with_liveness(mut self, a: crate::http::Answerer) -> EventLoop {
        self.liveness = Some(a);
        self
    }

    /// Follow the uplink's address.
    pub fn with_uplink_watch(mut self, w: UplinkWatch) -> EventLoop {
        self.uplink = Some(w);
        self
    }

    /// After an address or link change: if the uplink's address is no longer this node's public
    /// IP, take the new one (the lease keeper re-publishes the lease, the VXLAN device follows).
    fn check_uplink(&mut self) {
        let Some(w) = &mut self.uplink else { return };
        let Some(me4) = self.node.me.v4.as_mut() else { return };
        let up = match node::find_uplink(&mut w.netlink, None, None, w.iface.as_deref()) {
            Ok(u) => u,
            Err(e) => {
                debug!("uplink: {e}");
                return;
            }
        };
        let Some(new) = up.public_ip else { return };
        let old = me4.public_ip;
        if new == old {
            return;
        }
        warn!(
            "this node's address changed: {old} -> {new} on {}; re-publishing lease {}",
            up.iface, me4.subnet
        );
        me4.public_ip = new;
        if let Some(o) = &mut self.overlay {
            o.readdress(new);
        }
        let _ = w.moved.send(new);
    }

    /// Run the vxlan backend's device too.
    pub fn with_overlay(mut self, o: Overlay) -> EventLoop {
        self.overlay = Some(o);
        self
    }

    /// Keep the VXLAN device as wanted and tell the route applier where it is.
    fn ensure_overlay(&mut self) {
        let Some(o) = &mut self.overlay else { return };
        match o.ensure() {
            Ok((ifindex, _)) => self.routes.set_encap(Some(Encap {
                ifindex,
                direct_routing: o.direct_routing,
                vteps: self.peers.verdict().vteps.clone(),
            })),
            Err(e) => {
                metrics::inc(&self.metrics.route_errors_total);
                warn!("VXLAN device {}: {e}", o.device.name);
                if let Some(enc) = self.routes.encap_mut() {
                    enc.vteps.clone_from(&self.peers.verdict().vteps); // the last device, the current leases
                }
            }
        }
    }

    pub async fn run(mut self, mut inp: Inputs) -> i32 {
        /// How long the loop must be quiet after start-up before its code pages are released.
        const RELEASE_AFTER_QUIET: Duration = Duration::from_millis(500);
        let period = self.settings.resync;
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1()).ok();
        // SIGUSR2: sweep now (benchmarks time one sweep; an operator need not wait --resync).
        let mut usr2 = signal(SignalKind::user_defined2()).ok();
        let mut liveness = self.liveness.take();
        if let Some(l) = &liveness {
            l.start();
        }
        // host-gw: the sweep's dump off the loop (vxlan plans paths and neighbours from the whole
        // snapshot and keeps dumping on the loop).
        let mut dumped = match self.overlay {
            None => match crate::route_table::Dumper::spawn() {
                Ok(d) => {
                    self.dump_ask = Some(d.ask);
                    Some(d.done)
                }
                Err(e) => {
                    warn!("sweep dump thread: {e}; sweeping on the event loop");
                    None
                }
            },
            Some(_) => None,
        };
        // Start-up code (and free heap) is let go of once the loop has been quiet for a moment
        // after the start-up programming (see `memory`): the claim, the watch's set-up and the
        // node files run after that programming, and what runs after the quiet moment is what
        // a steady daemon runs.
        let mut code_kept = true;
        let mut release_at = None;
        loop {
            metrics::set(&self.metrics.loop_heartbeat_unix_ms, crate::log::unix_ms());
            if code_kept && self.started {
                release_at = Some(tokio::time::Instant::now() + RELEASE_AFTER_QUIET);
            }
            let pass = tokio::select! {
                biased;
                // First: a loop that gets here answers, however busy its other inputs are.
                ask = async { match liveness.as_mut() { Some(l) => l.next().await, None => std::future::pending().await } } => {
                    if let Some(l) = liveness.as_mut() {
                        l.answer(ask);
                    }
                    None
                }
                Some(batch) = inp.store.recv() => self.on_store(batch, &mut inp.store, &inp.lost),
                Some(evs) = inp.kernel.recv() => self.on_kernel(evs, &mut inp.kernel),
                _ = sweep.tick() => self.sweep(),
                Some((n, snap)) = async { match dumped.as_mut() { Some(d) => d.recv().await, None => std::future::pending().await } } => {
                    self.on_dump(n, snap)
                }
                Some(()) = async { match usr1.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    info!("metrics:\n{}", self.metrics.render());
                    None
                }
                Some(()) = async { match usr2.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    info!("sweep requested (SIGUSR2)");
                    self.sweep()
                }
                _ = async { match release_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    (code_kept, release_at) = (false, None);
                    let kib = crate::memory::release_code();
                    // And the heap start-up left free (the claim, the watch's set-up, the node
                    // files came after the start-up reconcile's own trim).
                    // SAFETY: malloc_trim only releases free heap pages; it touches no live
                    // allocation.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    debug!("start-up over: advised the kernel to reclaim {kib} KiB of ferryd's code pages");
                    None
                }
            };
            if let Some(p) = pass {
                self.reconcile(p);
            }
        }
    }

    /// The periodic sweep (also on SIGUSR2): uplink, node files and masquerade checked, then a
    /// full route reconcile retrying blocked peers (host-gw: from the dump thread's snapshot,
    /// planned when it is back). Leases are re-judged on store events only: with the store
    /// unreachable nothing runs out here (the datapath stays as it is).
    fn sweep(&mut self) -> Option<Pass> {
        self.check_uplink();
        let ok = self.node.ensure(true);
        metrics::set(&self.metrics.node_files_written, u64::from(ok));
        (!self.ask_dump()).then_some(Pass { retry: true, drift: false })
    }

    /// Single lease changes take the fast path (no table dump); a full listing, or a kernel that
    /// does not look as expected, gets a full reconcile.
    fn on_store(
        &mut self,
        batch: Vec<WatchEvent>,
        more: &mut mpsc::UnboundedReceiver<Vec<WatchEvent>>,
        lost: &mpsc::UnboundedSender<()>,
    ) -> Option<Pass> {
        let now = SystemTime::now();
        let mut full = self.fold(batch, now);
        while let Ok(b) = more.try_recv() {
            full |= self.fold(b, now);
        }
        self.report(lost);
        let changes = self.peers.take_changes();
        (full || !self.delta(&changes)).then_some(Pass::default())
    }

    fn on_kernel(
        &mut self,
        evs: Vec<Event>,
        more: &mut mpsc::Receiver<Vec<Event>>,
    ) -> Option<Pass> {
        let mut t = Trigger::None;
        let mut take = |evs: Vec<Event>| {
            for e in &evs {
                t = t.max(classify(e, self.peers.want()));
            }
        };
        take(evs);
        while let Ok(evs) = more.try_recv() {
            take(evs);
        }
        if t == Trigger::Link {
            self.check_uplink();
        }
        match t {
            Trigger::None => None,
            Trigger::Connectivity => {
                self.routes.has_blocked().then_some(Pass { retry: true, drift: false })
            }
            Trigger::Drift => Some(Pass { retry: false, drift: true }),
            Trigger::Link => Some(Pass { retry: true, drift: true }),
        }
    }

    /// Warn about leases newly ignored (or newly sent only directly), keep the counts, and ask
    /// for a re-claim when this node's own lease is gone from the store.
    fn report(&mut self, lost: &mpsc::UnboundedSender<()>) {
        let changed = self.peers.take_reported();
        let v = self.peers.verdict();
        for k in &changed.bad {
            if let Some(why) = v.bad.get(k) {
                metrics::inc(&self.metrics.bad_leases_total);
                warn!("ignoring lease {k}: {why}");
            }
        }
        for k in &changed.unencapsulated {
            if let Some(why) = v.unencapsulated.get(k) {
                warn!("lease {k}: never sent VXLAN ({why}); routed directly when on-link");
            }
        }
        if !changed.bad.is_empty() {
            metrics::set(&self.metrics.bad_leases, v.bad.len() as u64);
            let mut by_reason = [0u64; metrics::REASONS.len()];
            for why in v.bad.values() {
                by_reason[metrics::reason_index(why)] += 1;
            }
            for (g, n) in self.metrics.ignored.iter().zip(by_reason) {
                metrics::set(g, n);
            }
        }
        if self.listed && !v.own_present && !self.own_missing {
            let subnet = self.node.me.subnets();
            warn!("this node's lease {subnet} is gone from the store; re-claiming it");
            let _ = lost.send(());
        }
        self.own_missing = !v.own_present;
    }

    /// Ask the dump thread for the sweep's snapshot; false if the sweep must dump here instead.
    fn ask_dump(&mut self) -> bool {
        let Some(ask) = &self.dump_ask else { return false };
        if !self.listed || !self.started {
            return false;
        }
        if self.dump_pending.is_some() {
            return true; // the last one is still being taken
        }
        self.dumps += 1;
        if ask.send(self.dumps).is_err() {
            self.dump_ask = None;
            return false;
        }
        self.dump_pending = Some(self.dumps);
        self.settled.clear();
        true
    }

    /// The sweep's snapshot is back: plan from it, unless a full reconcile ran meanwhile.
    fn on_dump(
        &mut self,
        n: u64,
        snap: std::io::Result<crate::route_table::Snapshot>,
    ) -> Option<Pass> {
        if self.dump_pending != Some(n) {
            return None;
        }
        self.dump_pending = None;
        match snap {
            Ok(snap) => {
                self.reconcile_with(Pass { retry: true, drift: false }, Some(snap));
                None
            }
            Err(e) => {
                warn!("sweep dump: {e}; sweeping on the event loop");
                Some(Pass { retry: true, drift: false })
            }
        }
    }

    fn reconcile(&mut self, pass: Pass) {
        self.reconcile_with(pass, None)
    }

    /// A full reconcile: from the kernel's table dumped now, or from the sweep's `snap` (taken
    /// on the dump thread, with the subnets deltas changed since left out).
    fn reconcile_with(&mut self, pass: Pass, snap: Option<crate::route_table::Snapshot>) {
        if !self.listed {
            return;
        }
        self.ensure_overlay();
        let t0 = std::time::Instant::now();
        let res = if let Some(snap) = snap {
            let settled = std::mem::take(&mut self.settled);
            self.routes.reconcile_snapshot(snap, self.peers.want(), pass.retry, &settled)
        } else if self.started {
            self.dump_pending = None; // a dump asked for before this is stale now
            self.routes.reconcile(self.peers.want(), pass.retry)
        } else {
            // Start-up programs every peer at once: its per-route lines go to DEBUG and one
            // summary line is logged instead (a 5,000-peer start must not print 5,000 lines).
            let want = self.peers.want();
            let res = crate::log::info_as_debug(|| self.routes.reconcile(want, pass.retry));
            self.started = true;
            self.startup_summary(&res, t0.elapsed());
            res
        };
        self.metrics.reconcile_seconds.observe(t0.elapsed());
        metrics::set(&self.metrics.routes_in_sync, u64::from(res.is_ok()));
        match res {
            Ok(n) => {
                if n > 0 && pass.drift {
                    metrics::inc(&self.metrics.drift_repairs_total);
                }
            }
            Err(e) => {
                metrics::inc(&self.metrics.route_errors_total);
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

    /// The one INFO line for the start-up programming.
    fn startup_summary(&self, res: &std::io::Result<usize>, took: Duration) {
        let m = &self.metrics;
        let routed = m.routes_programmed.load(std::sync::atomic::Ordering::Relaxed);
        let unreachable = m.unreachable_peers.load(std::sync::atomic::Ordering::Relaxed);
        match res {
            Ok(changed) => info!(
                "routes programmed at start-up: {} peers, {routed} routed, {unreachable} unreachable, {changed} route changes in {took:.0?} (per-route lines at debug)",
                self.peers.want().len()
            ),
            Err(_) => info!("start-up route programming failed after {took:.0?}; retrying"),
        }
    }

    /// Fold store events into the lease map; true if a full listing was among them.
    fn fold(&mut self, batch: Vec<WatchEvent>, now: SystemTime) -> bool {
        let mut resync = false;
        for ev in batch {
            if matches!(ev, WatchEvent::Resync(_)) {
                self.listed = true;
                resync = true;
            }
            self.peers.apply(ev, &self.node.me, now);
        }
        resync
    }

    /// Apply the changed routes directly; false if a full reconcile is needed instead.
    fn delta(&mut self, changes: &[crate::peers::Change]) -> bool {
        if !self.listed || changes.is_empty() {
            return true;
        }
        if self.dump_pending.is_some() {
            self.settled.extend(changes.iter().map(|c| c.0));
        }
        match self.routes.apply_changes(changes, self.peers.want()) {
            Ok(in_sync) => in_sync,
            Err(e) => {
                warn!("route update: {e}");
                false
            }
        }
    }
}
