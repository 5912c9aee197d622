//! Start-up (validate → uplink → store config → lease → node files) and the three concurrent
//! loops: the store watcher, the lease keeper, the router. All on one current_thread runtime.

use crate::args::{self, Args, Parsed};
use crate::config::{self, Net};
use crate::lease::{self, ClaimError};
use crate::masq;
use crate::metrics::{self, Metrics};
use crate::node;
use crate::peers::Me;
use crate::route_applier::RouteApplier;
use crate::route_table::NetlinkRouteTable;
use crate::router::{Inputs, Router};
use crate::store::any::AnyStore;
use crate::store::{Lease, LeaseStore, StoreError, WatchEvent};
use ferry_netlink::Netlink;
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Exit code for flags or a network config this node cannot honour.
pub const EXIT_REFUSED: i32 = 2;

pub fn main(argv: Vec<String>) -> i32 {
    let a = match args::parse(argv) {
        Ok(Parsed::Run(a)) => *a,
        Ok(Parsed::Help) => {
            println!("{}", args::USAGE);
            return 0;
        }
        Ok(Parsed::Version) => {
            println!("ferryd {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            eprintln!("ferryd: {e}");
            return EXIT_REFUSED;
        }
    };
    crate::log::set_level(a.log_level);
    if a.uninstall {
        return uninstall(&a);
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
        tokio::select! {
            code = daemon(a) => code,
            _ = term.recv() => { info!("SIGTERM: exiting, routes and files stay in place"); 0 }
            _ = int.recv() => { info!("SIGINT: exiting, routes and files stay in place"); 0 }
        }
    })
}

fn refuse(msg: &str) -> i32 {
    error!("refusing to start: {msg}");
    EXIT_REFUSED
}

/// Exponential backoff 100 ms → 5 s for store trouble; warns once per outage.
pub struct Backoff {
    next: Duration,
    failing: bool,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: Duration::from_millis(100), failing: false }
    }
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        d
    }
    pub async fn fail(&mut self, what: &str, e: &dyn std::fmt::Display, m: &Metrics) {
        metrics::inc(&m.store_errors_total);
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
        *self = Backoff::new();
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

async fn daemon(a: Args) -> i32 {
    let a = Arc::new(a);
    let m = Arc::new(Metrics::default());
    // 1. Everything that can be checked without the store, before touching anything.
    let desired = config::from_args(&a);
    let net = match config::validate(&desired) {
        Ok(n) => n,
        Err(e) => return refuse(&e),
    };
    let mut nl = match Netlink::new() {
        Ok(n) => n,
        Err(e) => {
            error!("netlink socket: {e}");
            return 1;
        }
    };
    let up = match node::find_uplink(&mut nl, a.public_ip, a.iface.as_deref()) {
        Ok(u) => u,
        Err(e) => return refuse(&e),
    };
    if let Err(e) = config::check_node(&net, up.public_ip) {
        return refuse(&e);
    }
    let mtu = a.mtu.unwrap_or(up.mtu);
    info!(
        "ferryd {}: node {} on {} (mtu {mtu}), {}",
        env!("CARGO_PKG_VERSION"),
        up.public_ip,
        if up.iface.is_empty() { "?" } else { &up.iface },
        AnyStore::describe(&a)
    );

    // 2. The store and the network config everyone agrees on.
    let mut b = Backoff::new();
    let (mut store, mut wstore) = loop {
        match AnyStore::open_pair(&a).await {
            Ok(p) => break p,
            Err(e) => b.fail("open store", &e, &m).await,
        }
    };
    let stored = loop {
        match store.put_config_if_absent(&desired).await {
            Ok(c) => break c,
            Err(StoreError::Invalid(e)) => {
                return refuse(&format!("the stored network config is unusable: {e}"))
            }
            Err(e) => b.fail("read network config", &e, &m).await,
        }
    };
    b.ok("network config");
    let net = match config::validate(&stored) {
        Err(e) => return refuse(&format!("the stored network config cannot be honoured: {e}")),
        Ok(s) if s == net => net,
        Ok(s) => {
            if a.strict_network {
                return refuse(&format!(
                    "the store holds {}, the flags ask for {} (--strict-network)",
                    s.describe(),
                    net.describe()
                ));
            }
            if a.network_explicit {
                warn!(
                    "the store holds {}; using it instead of the flags' {}",
                    s.describe(),
                    net.describe()
                );
            }
            if let Err(e) = config::check_node(&s, up.public_ip) {
                return refuse(&e);
            }
            s
        }
    };
    info!("network: {}", net.describe());

    // 3. This node's lease.
    let remembered = node::remembered_subnet(&a.subnet_file, net.network);
    let lease = claim_until_done(&mut store, &net, up.public_ip, remembered, &a, &m).await;

    // 4. Node side: forwarding, subnet file, masquerade, conflist.
    if let Err(e) = node::enable_forwarding() {
        warn!("net.ipv4.ip_forward=1: {e}");
    }
    let me = Me {
        network: net.network,
        subnet_len: net.subnet_len,
        subnet: lease.subnet,
        public_ip: up.public_ip,
    };
    let mut router = Router::new(
        a.clone(),
        RouteApplier::new(NetlinkRouteTable::new(nl), m.clone()),
        me,
        mtu,
        m.clone(),
    );
    router.ensure_node(false);

    // 5. The loops.
    let (store_tx, store_rx) = mpsc::unbounded_channel();
    let (kernel_tx, kernel_rx) = mpsc::unbounded_channel();
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let (own_tx, own_rx) = watch::channel(lease.subnet);
    if let Err(e) = crate::events::spawn(kernel_tx) {
        warn!("netlink events unavailable ({e}); relying on the {:?} sweep", a.resync);
    }
    let inputs = Inputs { store: store_rx, kernel: kernel_rx, own: own_rx, lost: lost_tx };
    tokio::select! {
        _ = watcher(&mut wstore, store_tx, &m) => 1,
        _ = keeper(&mut store, &net, lease, &a, own_tx, lost_rx, &m) => 1,
        code = router.run(inputs) => code,
    }
}

async fn claim_until_done(
    store: &mut AnyStore,
    net: &Net,
    ip: Ipv4Addr,
    remembered: Option<Ipv4Network>,
    a: &Args,
    m: &Metrics,
) -> Lease {
    let mut b = Backoff::new();
    loop {
        match lease::claim(store, net, ip, remembered, a.lease_ttl).await {
            Ok(l) => {
                b.ok("claim lease");
                metrics::inc(&m.lease_claims_total);
                let exp = l
                    .expires
                    .map(crate::log::timestamp)
                    .unwrap_or_else(|| "never (reservation)".into());
                info!("lease {} for {} (expires {exp})", l.subnet, ip);
                return l;
            }
            Err(ClaimError::Store(e)) => b.fail("claim lease", &e, m).await,
            Err(e @ ClaimError::Exhausted(_)) => {
                metrics::inc(&m.store_errors_total);
                error!("claim lease: {e}; retrying in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Lists, then follows the store; any failure re-lists after a backoff (the router keeps every
/// route meanwhile, since it only ever acts on a successful listing).
async fn watcher(store: &mut AnyStore, tx: mpsc::UnboundedSender<Vec<WatchEvent>>, m: &Metrics) {
    let mut b = Backoff::new();
    loop {
        let (all, mut rev) = match store.list().await {
            Ok(x) => x,
            Err(e) => {
                b.fail("list leases", &e, m).await;
                continue;
            }
        };
        if tx.send(vec![WatchEvent::Resync(all)]).is_err() {
            return;
        }
        loop {
            match store.watch(rev).await {
                Ok((evs, r)) => {
                    b.ok("watch leases");
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

/// Renews this node's lease ahead of expiry and re-claims it when it is lost.
async fn keeper(
    store: &mut AnyStore,
    net: &Net,
    mut lease: Lease,
    a: &Args,
    own: watch::Sender<Ipv4Network>,
    mut lost: mpsc::UnboundedReceiver<()>,
    m: &Metrics,
) {
    let every = lease::renew_after(a.lease_ttl, a.renew_margin);
    let mut at = Instant::now() + every;
    let mut b = Backoff::new();
    loop {
        let mut reclaim = false;
        tokio::select! {
            _ = tokio::time::sleep_until(at), if lease.expires.is_some() => {
                match store.renew(lease.subnet, &lease.attrs, a.lease_ttl).await {
                    Ok(true) => {
                        b.ok("renew lease");
                        metrics::inc(&m.lease_renewals_total);
                        lease.expires = Some(SystemTime::now() + a.lease_ttl);
                        at = Instant::now() + every;
                        debug!("renewed lease {}", lease.subnet);
                    }
                    Ok(false) => reclaim = true,
                    Err(e) => {
                        if lease.expires.is_some_and(|t| t <= SystemTime::now()) {
                            debug!("lease {} expired during the store outage; will re-claim it", lease.subnet);
                        }
                        b.fail("renew lease", &e, m).await;
                        at = Instant::now();
                    }
                }
            }
            Some(()) = lost.recv() => reclaim = true,
        }
        if reclaim {
            let l =
                claim_until_done(store, net, lease.attrs.public_ip, Some(lease.subnet), a, m).await;
            while lost.try_recv().is_ok() {}
            if l.subnet != lease.subnet {
                warn!("lease {} was taken; this node now has {} (pods on the old subnet need restarting)", lease.subnet, l.subnet);
                let _ = own.send(l.subnet);
            }
            lease = l;
            at = Instant::now() + every;
        }
    }
}

/// `--uninstall`: remove Ferry's routes, its nft table and the conflist it wrote.
fn uninstall(a: &Args) -> i32 {
    let mut failed = false;
    match Netlink::new()
        .map(|nl| RouteApplier::new(NetlinkRouteTable::new(nl), Arc::new(Metrics::default())))
    {
        Ok(mut r) => match r.remove_all() {
            Ok(n) => info!("removed {n} Ferry routes (proto 113)"),
            Err(e) => {
                error!("remove routes: {e}");
                failed = true;
            }
        },
        Err(e) => {
            error!("netlink socket: {e}");
            failed = true;
        }
    }
    match masq::remove(&a.nft) {
        Ok(()) => info!("removed nft table ip {}", masq::TABLE),
        Err(e) => {
            error!("remove nft table: {e}");
            failed = true;
        }
    }
    let path = a.cni_conf_dir.join(&a.cni_conf_name);
    match node::remove_conflist(&path) {
        Ok(true) => info!("removed {}", path.display()),
        Ok(false) => {}
        Err(e) => {
            error!("remove {}: {e}", path.display());
            failed = true;
        }
    }
    i32::from(failed)
}
