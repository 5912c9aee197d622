//! Ferry IP address management.
//!
//! * [`pool`]: address pools (subnet, range, reserved addresses), pure arithmetic, IPv4 and IPv6.
//! * [`store`]: the per-network on-disk allocation store (flock + atomic `state.json` rewrite).
//! * [`state`]: the in-memory state, its strict `state.json` codec, and the allocator's decisions.
//! * [`config`]: the `ipam` config section of the `ferry-ipam` plugin.
//! * [`plugin`]: the `ferry-ipam` CNI IPAM plugin ([`plugin::IpamPlugin`]).
//!
//! The `ferry` plugin uses [`Pool`] and [`Store`] in-process; other CNI plugins (ptp, bridge) exec
//! the `ferry-ipam` binary.

pub mod config;
pub mod plugin;
pub mod pool;
pub mod state;
pub mod store;

pub use pool::{Pool, Range};
pub use state::Owner;
pub use store::Store;

#[cfg(test)]
mod plugin_tests;
#[cfg(test)]
mod store_tests;
