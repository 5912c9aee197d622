//! ferryd: the Ferry node daemon.
pub mod store;
