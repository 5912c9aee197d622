//! Start-up (validate → uplink → store config → lease → node files) and the three concurrent
//! loops: the store watcher, the lease keeper, the event loop. All on one current_thread runtime.

use crate::args::{self, Args, Parsed, UplinkFlags};
use crate::config::{self, Mode, Net, NetworkRequest, VxlanConf, VXLAN_OVERHEAD};
use crate::event_loop::{EventLoop, Inputs, NodeSide, UplinkWatch};
use crate::install::Layout;
use crate::lease::{self, ClaimError, Claimed, LeaseTiming};
use crate::metrics::{self, Metrics};
use crate::node::{self, Uplink};
use crate::overlay::{Device, Overlay};
use crate::peers::{Me, Me4, Me6};
use crate::route_applier::RouteApplier;
use crate::route_table::NetlinkRouteTable;
use crate::store::any::{AnyStore, StoreSettings};
use crate::store::{Lease, LeaseAttrs, LeaseStore, NetworkConfig, StoreError, Subnets, WatchEvent};
use ferry_netlink::Netlink;
use ipnetwork::Ipv4Network;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Exit code for flags or a network config this node cannot honour.
pub const EXIT_REFUSED: i32 = 2;

pub fn main(mut argv: Vec<String>) -> i32 {
    match argv.first().map(String::as_str) {
        Some("install") => return crate::install::install_main(argv.split_off(1)),
        Some("uninstall") => argv[0] = "--uninstall".into(),
        _ => {}
    }
    let (a, layout) = match parse_main(argv) {
        Ok(x) => x,
        Err(code) => return code,
    };
    crate::log::set_level(a.log_level);
    if a.uninstall {
        return crate::install::uninstall(&layout, &a.files, &a.masq);
    }
    // One malloc arena for every thread: the event thread's and blocking tasks' allocations
    // are freed by the loop, and per-thread arenas kept those pages (0.6-1.3 MB at 5,000
    // leases) where `malloc_trim` in the loop did not hand them back. Nothing here contends.
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("tokio runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            error!("cannot install signal handlers");
            return 1;
        };
        // SIGUSR1/2 are the event loop's (metrics, sweep now); installed here already, so one
        // arriving during start-up is ignored rather than killing the daemon (the default).
        let _ = (signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2()));
        tokio::select! {
            code = daemon(a) => code,
            _ = term.recv() => { info!("SIGTERM: exiting, routes and files stay in place"); 0 }
            _ = int.recv() => { info!("SIGINT: exiting, routes and files stay in place"); 0 }
        }
    })
}

/// ferryd's flags (config file, `FERRY_LOG`, command line) and, for uninstall, where install
/// put its files; `Err` is the exit code (0 after --help or --version).
fn parse_main(argv: Vec<String>) -> Result<(Args, Layout), i32> {
    let usage = |e: &str| {
        eprintln!("ferryd: {e}");
        EXIT_REFUSED
    };
    let (layout, argv) = crate::install::layout_flags(argv).map_err(|e| usage(&e))?;
    let ferry_log = std::env::var("FERRY_LOG").ok();
    match args::parse_with_env(argv, ferry_log.as_deref()) {
        Ok(Parsed::Run(a)) if !a.uninstall && layout != Layout::default() => Err(usage(
            "--root, --cni-bin-dir, --bin-dir and --cni-only belong to install and uninstall",
        )),
        Ok(Parsed::Run(a)) => Ok((*a, layout)),
        Ok(Parsed::Help) => {
            println!("{}", args::USAGE);
            Err(0)
        }
        Ok(Parsed::Version) => {
            println!("ferryd {}", env!("CARGO_PKG_VERSION"));
            Err(0)
        }
        Err(e) => Err(usage(&e)),
    }
}

fn refuse(msg: &str) -> i32 {
    error!("refusing to start: {msg}");
    EXIT_REFUSED
}

/// Exponential backoff 100 ms → 5 s (or a lower cap) for store trouble; warns once per outage.
pub struct Backoff {
    next: Duration,
    max: Duration,
    failing: bool,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff::capped(Duration::from_secs(5))
    }
    /// Backing off at most `max` between tries.
    pub fn capped(max: Duration) -> Backoff {
        Backoff { next: Duration::from_millis(100), max, failing: false }
    }
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    pub async fn fail(&mut self, what: &str, e: &dyn std::fmt::Display, m: &Metrics) {
        metrics::inc(&m.store_errors_total);
        metrics::set(&m.store_reachable, 0);
        if !self.failing {
            warn!("{what}: {e}; retrying with backoff (routes stay in place)");
        } else {
            debug!("{what}: {e}");
        }
        self.failing = true;
        tokio::time::sleep(self.delay()).await;
    }
    pub fn ok(&mut self, what: &str) {
        if self.failing {
            info!("{what}: store reachable again");
        }
        *self = Backoff::capped(self.max);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

async fn daemon(a: Args) -> i32 {
    let m = Arc::new(Metrics::default());
    // 1. Everything that can be checked without the store, before touching anything.
    let Local { desired, net, nl, up } = match check_local(&a.network, &a.uplink) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mtu = a.uplink.mtu.unwrap_or(up.mtu);
    startup_lines(&a, &up, mtu);
    let answerer = match start_metrics(a.metrics_address, &m).await {
        Ok(a) => a,
        Err(code) => return code,
    };

    // 2. The store and the network config everyone agrees on.
    let (store, mut watch_store) = open_store(&a.store, &m).await;
    let attrs = lease::my_attrs(None, None, net.mode);
    let (public_ip, public_ipv6) = (up.public_ip, up.public_ipv6);
    let mut keeper = LeaseKeeper {
        store,
        net,
        public_ip,
        public_ipv6,
        attrs,
        timing: a.lease,
        metrics: m.clone(),
    };
    let net = match keeper.agree_network(&desired, &a.network).await {
        Ok(n) => n,
        Err(code) => return code,
    };
    info!("network: {}", net.describe());
    metrics::set(&m.store_reachable, 1);

    // 3. This node's lease: one key for every enabled family.
    let remembered = node::remembered_subnets(&a.files.subnet_file, &net);
    // One listing of every lease at start-up, not two: the claim's seeds the watcher. etcd's
    // watch continues the claim's listing from its revision; the file store's watcher lists
    // first (its inotify watch starts before that listing) and the claim decides on it.
    let first = match &mut watch_store {
        AnyStore::File(_) => watch_store.list().await.ok(),
        AnyStore::Etcd(_) => None,
    };
    let seeds = first.is_some() || matches!(watch_store, AnyStore::Etcd(_));
    let claimed = match keeper.claim_listed(remembered, first).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let lease = claimed.lease.clone();
    let seed = seeds.then_some(claimed);

    info!("subnet: {} (this node's pods)", lease.subnets());
    // 4. Node side: forwarding, subnet file, masquerade, conflist.
    let mtu = match net.mode {
        Mode::Vxlan(_) if a.uplink.mtu.is_none() => {
            let pods = up.mtu.saturating_sub(net.mode.mtu_overhead());
            info!(
                "MTU for pods: {pods} (the uplink's {} minus VXLAN's {})",
                up.mtu, VXLAN_OVERHEAD
            );
            pods
        }
        _ => mtu,
    };
    let Some(me) = me_of(&net, &lease) else {
        return refuse(&format!("the lease {} does not cover every enabled family", lease.key));
    };
    if me.v4.is_some() {
        if let Err(e) = node::enable_forwarding() {
            warn!("net.ipv4.ip_forward=1: {e}");
        }
    }
    if me.v6.is_some() {
        match node::keep_accepting_ra(&up.iface) {
            Ok(true) => info!("net.ipv6.conf.{}.accept_ra=2: router advertisements still accepted with forwarding on", up.iface),
            Ok(false) => {}
            Err(e) => warn!("net.ipv6.conf.{}.accept_ra=2: {e}", up.iface),
        }
        if let Err(e) = node::enable_forwarding6() {
            warn!("net.ipv6.conf.all.forwarding=1: {e}");
        }
    }
    let overlay = match (net.mode, me.v4) {
        (Mode::Vxlan(conf), Some(me4)) => match vxlan_overlay(conf, &up, me4.public_ip, me4.subnet)
        {
            Ok(o) => Some(o),
            Err(code) => return code,
        },
        _ => None,
    };
    let mut node = NodeSide::new(me, mtu, a.files, a.masq);
    metrics::set(&m.node_files_written, u64::from(node.ensure(false)));

    // 5. The loops.
    let routes = RouteApplier::new(NetlinkRouteTable::new(nl), m.clone());
    let mut event_loop = EventLoop::new(node, a.reconcile, routes, m);
    if let Some(o) = overlay {
        event_loop = event_loop.with_overlay(o);
    }
    if let Some(a) = answerer {
        event_loop = event_loop.with_liveness(a);
    }
    let (moved_tx, moved_rx) = mpsc::unbounded_channel();
    if a.uplink.public_ip.is_none() {
        match Netlink::new() {
            Ok(netlink) => {
                let iface = a.uplink.iface.clone();
                event_loop =
                    event_loop.with_uplink_watch(UplinkWatch { iface, netlink, moved: moved_tx });
            }
            Err(e) => warn!("netlink socket: {e}; a change of this node's address needs a restart"),
        }
    }
    let watching = (watch_store, seed);
    run_loops(event_loop, keeper, (lease, moved_rx), watching, a.reconcile.resync).await
}

/// The vxlan backend's device for this node: on the uplink, from its public IP, the uplink's
/// MTU minus the VXLAN header.
fn vxlan_overlay(
    conf: VxlanConf,
    up: &Uplink,
    public_ip: Ipv4Addr,
    subnet: Ipv4Network,
) -> Result<Overlay, i32> {
    let mut nl = Netlink::new().map_err(|e| {
        error!("netlink socket: {e}");
        1
    })?;
    let uplink = match nl.link_by_name(&up.iface) {
        Ok(Some(l)) => l.index,
        _ => 0, // no uplink device known (--public-ip on another host's NAT): unbound
    };
    let mtu = up.mtu.saturating_sub(VXLAN_OVERHEAD);
    let device = Device::new(conf, public_ip, uplink, mtu, subnet);
    info!(
        "backend vxlan: device {} VNI {} port {}, DirectRouting {}",
        device.name, conf.vni, conf.port, conf.direct_routing
    );
    Overlay::new(device, conf.direct_routing).map_err(|e| {
        error!("netlink socket: {e}");
        1
    })
}

/// This node as the peers code sees it: each enabled family's network with this node's subnet
/// and address; `None` if the lease lacks an enabled family's subnet (never claimed so).
pub fn me_of(net: &Net, lease: &Lease) -> Option<Me> {
    let s = lease.subnets();
    let v4 = match &net.v4 {
        Some(n) => Some(Me4 {
            network: n.network,
            subnet_len: n.subnet_len,
            subnet: s.v4?,
            public_ip: lease.attrs.public_ip,
        }),
        None => None,
    };
    let v6 = match &net.v6 {
        Some(n) => Some(Me6 {
            network: n.network,
            subnet_len: n.subnet_len,
            subnet: s.v6?,
            public_ip: lease.attrs.public_ipv6?,
        }),
        None => None,
    };
    Some(Me { v4, v6, mode: net.mode })
}

/// The store watcher, the lease keeper and the event loop, until one of them ends.
async fn run_loops(
    event_loop: EventLoop,
    keeper: LeaseKeeper,
    (lease, moved): (Lease, mpsc::UnboundedReceiver<Ipv4Addr>),
    (mut watch_store, seed): (AnyStore, Option<Claimed>),
    resync: Duration,
) -> i32 {
    let m = keeper.metrics.clone();
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let (kernel_tx, kernel_rx) = mpsc::channel(crate::events::QUEUE);
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    if let Err(e) = crate::events::spawn(kernel_tx) {
        warn!("netlink events unavailable ({e}); relying on the {resync:?} sweep");
    }
    let inputs = Inputs { store: store_rx, kernel: kernel_rx, lost: lost_tx };
    tokio::select! {
        _ = watcher(&mut watch_store, seed, store_tx, &m) => 1,
        code = keeper.run(lease, lost_rx, moved) => code,
        code = event_loop.run(inputs) => code,
    }
}

/// One plain line each for what start-up found and chose.
fn startup_lines(a: &Args, up: &Uplink, mtu: u32) {
    info!("ferryd {}", env!("CARGO_PKG_VERSION"));
    info!("store: {}", AnyStore::describe(&a.store));
    let opt = |ip: Option<std::net::IpAddr>| ip.map_or("none".to_string(), |i| i.to_string());
    info!("public IP: {}", opt(up.public_ip.map(Into::into)));
    if up.public_ipv6.is_some() || a.network.ipv6_enabled() {
        info!("public IPv6: {}", opt(up.public_ipv6.map(Into::into)));
    }
    info!("iface: {}", if up.iface.is_empty() { "? (none found)" } else { &up.iface });
    info!("MTU: {mtu}");
    match a.metrics_address {
        Some(addr) => info!("metrics address: http://{addr}/metrics (/healthz, /readyz)"),
        None => info!("metrics address: off"),
    }
}

/// Bind `--metrics-address` and serve it on this runtime; returns the event loop's side of
/// /healthz (`None`: metrics off). `Err` is the exit code.
async fn start_metrics(
    addr: Option<std::net::SocketAddr>,
    m: &Arc<Metrics>,
) -> Result<Option<crate::http::Answerer>, i32> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| refuse(&format!("--metrics-address {addr}: {e}")))?;
    let (liveness, answerer) = crate::http::liveness(crate::http::LIVENESS_DEADLINE);
    let health = crate::http::Health { metrics: m.clone(), liveness };
    tokio::spawn(crate::http::serve(listener, health));
    Ok(Some(answerer))
}

/// What start-up learns before it touches the store or the node.
struct Local {
    /// The network config the flags ask for.
    desired: NetworkConfig,
    /// `desired`, validated.
    net: Net,
    nl: Netlink,
    up: Uplink,
}

/// Validate the flags' network config and find the uplink; `Err` is the exit code.
fn check_local(req: &NetworkRequest, flags: &UplinkFlags) -> Result<Local, i32> {
    let desired = config::desired(req);
    let net = config::validate(&desired).map_err(|e| refuse(&e))?;
    let mut nl = Netlink::new().map_err(|e| {
        error!("netlink socket: {e}");
        1
    })?;
    let up = node::find_uplink(&mut nl, flags.public_ip, flags.public_ipv6, flags.iface.as_deref())
        .map_err(|e| refuse(&e))?;
    config::check_node(&net, up.public_ip, up.public_ipv6).map_err(|e| refuse(&e))?;
    Ok(Local { desired, net, nl, up })
}

/// Open the store (a claim/renew handle and a watch handle), retrying with backoff.
async fn open_store(settings: &StoreSettings, m: &Arc<Metrics>) -> (AnyStore, AnyStore) {
    let mut b = Backoff::new();
    loop {
        match AnyStore::open_pair(settings, m).await {
            Ok(p) => return p,
            Err(e) => b.fail("open store", &e, m).await,
        }
    }
}

/// Claims, renews and re-claims this node's lease.
struct LeaseKeeper {
    store: AnyStore,
    /// The network config as validated from the flags (until `agree_network` replaces it).
    net: Net,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    /// This node's lease attrs for the agreed network (set by `agree_network`).
    attrs: LeaseAttrs,
    timing: LeaseTiming,
    metrics: Arc<Metrics>,
}

impl LeaseKeeper {
    /// Store the flags' config unless one is stored, then settle on the stored one: `Err` is
    /// the exit code when it cannot be honoured (or differs, with `--strict-network`).
    async fn agree_network(
        &mut self,
        desired: &NetworkConfig,
        req: &NetworkRequest,
    ) -> Result<Net, i32> {
        let mut b = Backoff::new();
        let stored = loop {
            match self.store.put_config_if_absent(desired).await {
                Ok(c) => break c,
                Err(StoreError::Invalid(e)) => {
                    return Err(refuse(&format!("the stored network config is unusable: {e}")))
                }
                Err(e) => b.fail("read network config", &e, &self.metrics).await,
            }
        };
        b.ok("network config");
        let flags = self.net;
        let s = config::validate(&stored)
            .map_err(|e| refuse(&format!("the stored network config cannot be honoured: {e}")))?;
        self.attrs = lease::my_attrs(
            self.public_ip.filter(|_| s.v4.is_some()),
            self.public_ipv6.filter(|_| s.v6.is_some()),
            s.mode,
        );
        if s == flags {
            return Ok(flags);
        }
        if req.strict {
            return Err(refuse(&format!(
                "the store holds {}, the flags ask for {} (--strict-network)",
                s.describe(),
                flags.describe()
            )));
        }
        if req.explicit {
            warn!(
                "the store holds {}; using it instead of the flags' {}",
                s.describe(),
                flags.describe()
            );
        }
        config::check_node(&s, self.public_ip, self.public_ipv6).map_err(|e| refuse(&e))?;
        self.net = s;
        Ok(s)
    }

    /// This node's lease, retrying until one is claimed; `Err` (the exit code) when a subnet
    /// this node's pods use belongs to another node.
    async fn claim(&mut self, remembered: Subnets) -> Result<Lease, i32> {
        self.claim_listed(remembered, None).await.map(|c| c.lease)
    }

    /// [`LeaseKeeper::claim`], with the listing the claim decided on; its first try decides on
    /// `first` when given (a listing just taken).
    async fn claim_listed(
        &mut self,
        remembered: Subnets,
        mut first: Option<(Vec<crate::store::LeaseEntry>, i64)>,
    ) -> Result<Claimed, i32> {
        let mut b = Backoff::new();
        let ip = self.attrs.node_ip();
        loop {
            let ttl = self.timing.ttl;
            let (store, net, attrs) = (&mut self.store, &self.net, &self.attrs);
            match lease::claim_listed(store, net, attrs, remembered, ttl, first.take()).await {
                Ok(c) => {
                    let l = &c.lease;
                    b.ok("claim lease");
                    metrics::inc(&self.metrics.lease_claims_total);
                    let exp = l
                        .expires
                        .map(crate::log::timestamp)
                        .unwrap_or_else(|| "never (reservation)".into());
                    info!("lease {} for {} (expires {exp})", l.subnets(), ip);
                    self.held(l);
                    return Ok(c);
                }
                Err(e @ ClaimError::Taken { .. }) => return Err(refuse(&e.to_string())),
                Err(ClaimError::Store(e)) => b.fail("claim lease", &e, &self.metrics).await,
                Err(e @ ClaimError::Exhausted(_)) => {
                    metrics::inc(&self.metrics.store_errors_total);
                    error!("claim lease: {e}; retrying in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// Renews this node's lease ahead of expiry and re-claims it when it is lost. A re-claim
    /// asks for the same subnet (the pods use it): it gets that subnet or fails
    /// ([`ClaimError::Taken`]), so the node's subnet never changes while it runs. Returns the
    /// exit code when the node's subnet cannot be kept.
    async fn run(
        mut self,
        mut lease: Lease,
        mut lost: mpsc::UnboundedReceiver<()>,
        mut moved: mpsc::UnboundedReceiver<Ipv4Addr>,
    ) -> i32 {
        let every = lease::renew_after(self.timing.ttl, self.timing.renew_margin);
        let mut at = Instant::now() + every;
        let mut b = Backoff::new();
        loop {
            let reclaim = tokio::select! {
                biased;
                Some(ip) = moved.recv() => {
                    match self.readdress(&mut lease, ip, &mut b).await {
                        Ok(()) => {
                            while lost.try_recv().is_ok() {}
                            at = Instant::now() + every;
                            continue;
                        }
                        Err(code) => return code,
                    }
                }
                _ = tokio::time::sleep_until(at), if lease.expires.is_some() => {
                    match self.renew(&mut lease, &mut b).await {
                        Some(next) => {
                            at = next;
                            false
                        }
                        None => true,
                    }
                }
                Some(()) = lost.recv() => true,
            };
            if reclaim {
                metrics::set(&self.metrics.lease_held, 0);
                let l = match self.claim(lease.subnets()).await {
                    Ok(l) => l,
                    Err(code) => return code,
                };
                while lost.try_recv().is_ok() {}
                lease = l;
                at = Instant::now() + every;
            }
        }
    }

    /// This node's address changed: its lease (same subnet) is re-written with the new public
    /// IP (and VTEP MAC): the old entry is deleted, then the subnet claimed again.
    async fn readdress(
        &mut self,
        lease: &mut Lease,
        ip: Ipv4Addr,
        b: &mut Backoff,
    ) -> Result<(), i32> {
        if lease.attrs.public_ip == ip {
            return Ok(());
        }
        metrics::set(&self.metrics.lease_held, 0);
        while let Err(e) = self.store.delete(lease.subnets()).await {
            b.fail("re-publish lease (delete the old entry)", &e, &self.metrics).await;
        }
        self.public_ip = Some(ip);
        self.attrs = lease::my_attrs(Some(ip), self.attrs.public_ipv6, self.net.mode);
        *lease = self.claim(lease.subnets()).await?;
        info!("lease {} re-published for {ip}", lease.subnets());
        Ok(())
    }

    /// Publish the lease held (and its expiry) for /metrics and /readyz.
    fn held(&self, l: &Lease) {
        let m = &self.metrics;
        let exp = l.expires.map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default());
        metrics::set(&m.lease_expiry_unix_seconds, exp.map_or(0, |d| d.as_secs()));
        metrics::set(&m.lease_held, 1);
        metrics::set(&m.store_reachable, 1);
    }

    /// One renewal attempt: when to try next, or `None` if the lease is gone (re-claim it).
    async fn renew(&mut self, lease: &mut Lease, b: &mut Backoff) -> Option<Instant> {
        let ttl = self.timing.ttl;
        match self.store.renew(lease.subnets(), &lease.attrs, ttl).await {
            Ok(true) => {
                b.ok("renew lease");
                metrics::inc(&self.metrics.lease_renewals_total);
                lease.expires = Some(SystemTime::now() + ttl);
                self.held(lease);
                debug!("renewed lease {}", lease.subnets());
                Some(Instant::now() + lease::renew_after(ttl, self.timing.renew_margin))
            }
            Ok(false) => None,
            Err(e) => {
                if lease.expires.is_some_and(|t| t <= SystemTime::now()) {
                    debug!(
                        "lease {} expired during the store outage; will re-claim it",
                        lease.subnets()
                    );
                }
                b.fail("renew lease", &e, &self.metrics).await;
                Some(Instant::now())
            }
        }
    }
}

/// Lists, then follows the store; any failure re-lists after a backoff (the router keeps every
/// route meanwhile, since it only ever acts on a successful listing). A `seed` (the start-up
/// claim's listing) stands in for the first listing: the watch continues from its revision, so
/// it delivers the claim's own writes and every change since; until they arrive, this node's
/// lease is taken as claimed (the listing may predate it, which would read as the lease gone).
async fn watcher(
    store: &mut AnyStore,
    mut seed: Option<Claimed>,
    tx: mpsc::UnboundedSender<Vec<WatchEvent>>,
    m: &Metrics,
) {
    // At most 1 s between tries: a failed try already waited out the store's request timeout
    // (etcd: every member), so this costs little and sees the store back within about 1 s.
    let mut b = Backoff::capped(Duration::from_secs(1));
    loop {
        let (batch, mut rev) = match seed.take() {
            Some(c) => {
                let own = WatchEvent::Put(Ok(c.lease));
                (vec![WatchEvent::Resync(c.entries), own], c.revision)
            }
            None => match store.list().await {
                Ok((all, rev)) => (vec![WatchEvent::Resync(all)], rev),
                Err(e) => {
                    b.fail("list leases", &e, m).await;
                    continue;
                }
            },
        };
        metrics::set(&m.store_reachable, 1);
        if tx.send(batch).is_err() {
            return;
        }
        loop {
            match store.watch(rev).await {
                Ok((evs, r)) => {
                    b.ok("watch leases");
                    metrics::set(&m.store_reachable, 1);
                    rev = r;
                    if !evs.is_empty() && tx.send(evs).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    b.fail("watch leases", &e, m).await;
                    break;
                }
            }
        }
    }
}
