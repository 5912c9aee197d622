//! ferryd: the Ferry node daemon.
#[macro_use]
pub mod log;
pub mod args;
pub mod config;
pub mod ctl;
pub mod event_loop;
pub mod events;
pub mod http;
pub mod install;
pub mod lease;
pub mod masq;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod overlay;
pub mod peers;
pub mod route_applier;
pub mod route_plan;
pub mod route_table;
pub mod run;
pub mod store;
pub mod takeover;
