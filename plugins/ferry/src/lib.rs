//! The `ferry` CNI plugin: a routed point-to-point veth per pod, no bridge.
//!
//! ADD creates a veth pair (host end `fry<12 hex>`, pod end `CNI_IFNAME` inside `CNI_NETNS`),
//! gives the pod one address per family the node has (IPv4, IPv6 or both: the subnet file's
//! `FLANNEL_SUBNET` / `FLANNEL_IPV6_SUBNET`) from the in-process allocator, or a delegated IPAM
//! plugin when the config has `ipam`; per family it puts the node gateway address on the host end
//! and a `/32` (`/128`) route to the pod via it, and in the pod a default route via the gateway.
//! It returns once the pair can carry traffic (no IPv6 DAD wait: see `add.rs`).

mod add;
mod check;
pub mod conf;
mod del;
mod delegate;
mod gc;
pub mod ipam;
pub mod log;
pub mod names;

use ferry_cni::error::{CniError, Code, Result, NETLINK};
use ferry_cni::skel::{Plugin, Request};
use ferry_cni::CniResult;

pub struct FerryPlugin;

/// Each verb runs between [`log::start`] and [`log::finish`] (no-ops unless `logFile` is set).
impl Plugin for FerryPlugin {
    fn add(&mut self, req: &Request) -> Result<CniResult> {
        log::start(req);
        log::finish(add::add(req), |r| {
            let ips: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
            format!("ip={}", ips.join(","))
        })
    }
    fn del(&mut self, req: &Request) -> Result<()> {
        log::start(req);
        log::finish(del::del(req), |_| String::new())
    }
    fn check(&mut self, req: &Request) -> Result<()> {
        log::start(req);
        log::finish(check::check(req), |_| String::new())
    }
    fn gc(&mut self, req: &Request) -> Result<()> {
        log::start(req);
        log::finish(gc::gc(req), |_| String::new())
    }
    fn status(&mut self, req: &Request) -> Result<()> {
        log::start(req);
        log::finish(gc::status(req), |_| String::new())
    }
}

/// The failures of a verb that tries every step (DEL, GC) before it reports.
#[derive(Default)]
pub(crate) struct Failures(Vec<CniError>);

impl Failures {
    /// Keep `r`'s error, if any; its value otherwise.
    pub fn note<T>(&mut self, r: Result<T>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    /// Nothing failed: `Ok`. One failure: that error. More: the first, with every message in
    /// the details.
    pub fn finish(mut self) -> Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => {
                let details: Vec<String> = self.0.iter().map(|e| e.msg.clone()).collect();
                Err(CniError { details: details.join("; "), ..self.0.remove(0) })
            }
        }
    }
}

/// Netlink / kernel failures: plugin code 100, with what was being done.
pub(crate) fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::new(NETLINK, format!("{what}: {e}"))
}

/// Open the pod's network namespace. Missing → code 3 (container unknown): nothing was changed.
pub(crate) fn open_netns(path: &str) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            Code::UnknownContainer
        } else {
            Code::Io
        };
        CniError::new(code, format!("cannot open network namespace {path:?}: {e}"))
    })
}

/// Step timings on stderr when `FERRY_TIMING=1` (for profiling the ADD path; off by default).
pub(crate) mod timing {
    use std::cell::RefCell;
    use std::time::Instant;

    thread_local! {
        static T: RefCell<Option<(Instant, Instant)>> = RefCell::new(
            std::env::var_os("FERRY_TIMING").map(|_| (Instant::now(), Instant::now()))
        );
    }

    pub fn mark(label: &str) {
        T.with(|t| {
            if let Some((start, last)) = t.borrow_mut().as_mut() {
                let now = Instant::now();
                eprintln!(
                    "ferry timing: {label:<24} +{:>6} us  (total {:>6} us)",
                    (now - *last).as_micros(),
                    (now - *start).as_micros()
                );
                *last = now;
            }
        });
    }
}
