//! ferryd: the Ferry node daemon.
#[macro_use]
pub mod log;
pub mod args;
pub mod config;
pub mod events;
pub mod lease;
pub mod masq;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod router;
pub mod routes;
pub mod run;
pub mod store;
