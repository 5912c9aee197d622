//! The CNI protocol, as pure code: no file, socket or process I/O happens here.
//!
//! * [`env`]: the `CNI_*` environment, validated per command.
//! * [`config`]: the network configuration on stdin (single plugin object or a conflist entry).
//! * [`result`]: results in every spec version, and conversion between them.
//! * [`error`]: CNI errors with spec codes, rendered as the JSON runtimes read from stdout.
//! * [`requested`]: addresses the runtime asks for (`runtimeConfig.ips`, `args`, `CNI_ARGS`).
//! * [`skel`]: the dispatcher binaries call: env + stdin in, JSON + exit code out.
//! * [`subnet_env`]: the node subnet file (`subnet.env`, flannel's format).

pub mod config;
pub mod env;
pub mod error;
pub mod requested;
pub mod result;
pub mod skel;
pub mod subnet_env;
pub mod timefmt;
pub mod version;

pub use config::NetConf;
pub use env::{CniArgs, Command};
pub use error::{CniError, Code};
pub use result::CniResult;
pub use version::Version;
