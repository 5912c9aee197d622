//! `ferryctl`: what Ferry holds on this node and in the cluster, read from the same places
//! ferryd uses (the subnet file, the lease store, the kernel's routes, ferry-ipam's state), with
//! ferryd's flags and `--config` file. Only `gc --apply` changes anything.

use crate::args::{self, Args, Parsed};
use ferry_ipam::Owner;

pub mod ipam;
pub mod leases;
pub mod routes;
pub mod table;

/// Nothing to report.
pub const EXIT_OK: i32 = 0;
/// Differences found (`routes`), something would be released (`gc`), no lease held (`lease`).
pub const EXIT_DIFFERENT: i32 = 1;
/// Unusable flags or config.
pub const EXIT_USAGE: i32 = 2;
/// Could not look: the store is unreachable, a file is unreadable or corrupt, netlink failed.
pub const EXIT_FAILED: i32 = 3;

pub const USAGE: &str = "\
ferryctl: look at Ferry on this node (lease, peers, routes, IP allocations)

USAGE: ferryctl COMMAND [--json] [FLAGS]

Commands:
  lease        this node's lease: subnet file and store (subnet, public IP, expiry)
  leases       every lease in the store: subnet, public IP, backend, expiry, and any entry
               ferryd ignores, with the reason
  routes       peer routes wanted (from the store) vs programmed (proto 113 in the kernel):
               missing, wrong gateway, stale; exit 1 when they differ
  ipam         IP allocations on this node: IP, container id, interface
               (<--cni-data-dir>/<--cni-network-name>/state.json)
  gc --valid ID/IFNAME [--valid ...] [--apply]
               release the allocations of attachments not named by --valid; lists what would
               be released (exit 1 if anything) unless --apply, which releases under the IPAM lock

Flags:
  --json                    machine-readable output
  --config FILE             ferryd's config file (`name = value` per line); the command line wins
  --store URL, --etcd-*     the lease store, as for ferryd [file:///var/lib/ferry/leases]
  --subnet-file PATH        [/run/ferry/subnet.env]
  --cni-data-dir DIR        [/run/ferry/ipam]     --cni-network-name NAME [ferry]
  --public-ip IP, --iface NAME                    this node's address (routes), as for ferryd
  Every other ferryd flag is accepted (so one config file serves both) and ignored.
  -h, --help                this text          --version
Exit codes: 0 ok, 1 differences found / would release something / no lease held,
2 unusable flags or config, 3 could not look (store unreachable, unreadable file, netlink).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lease,
    Leases,
    Routes,
    Ipam,
    Gc { valid: Vec<Owner>, apply: bool },
}

/// A parsed ferryctl command line.
#[derive(Debug)]
pub struct Ctl {
    pub command: Command,
    pub json: bool,
    /// ferryd's flags (store, paths, uplink).
    pub args: Args,
}

#[derive(Debug)]
pub enum CtlParsed {
    Run(Box<Ctl>),
    Help,
    Version,
}

/// ferryctl's own words, pulled out of the command line; the rest goes to ferryd's parser.
#[derive(Default)]
struct Own {
    command: Option<String>,
    json: bool,
    apply: bool,
    valid: Vec<String>,
    help: bool,
    version: bool,
}

/// Split ferryctl's command and flags from ferryd's (whose values are passed through untouched).
fn split(argv: Vec<String>) -> Result<(Own, Vec<String>), String> {
    let (mut own, mut rest) = (Own::default(), Vec::new());
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => own.help = true,
            "--version" => own.version = true,
            "--json" => own.json = true,
            "--apply" => own.apply = true,
            "--valid" => own.valid.push(it.next().ok_or("--valid needs ID/IFNAME")?),
            _ if a.starts_with("--valid=") => own.valid.push(a["--valid=".len()..].to_string()),
            _ if !a.starts_with('-') && own.command.is_none() => own.command = Some(a),
            _ if args::VALUE_FLAGS.contains(&a.as_str()) => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                rest.extend([a, v]);
            }
            _ => rest.push(a),
        }
    }
    Ok((own, rest))
}

/// `ID/IFNAME` (a container id and an interface name; neither holds a `/`).
pub fn parse_owner(v: &str) -> Result<Owner, String> {
    match v.split_once('/') {
        Some((id, ifname)) if !id.is_empty() && !ifname.is_empty() && !ifname.contains('/') => {
            Ok(Owner::new(id, ifname))
        }
        _ => Err(format!("--valid: {v:?} is not ID/IFNAME (a container id and an interface)")),
    }
}

fn command(own: &Own) -> Result<Command, String> {
    let name = own.command.as_deref().ok_or("no command given (see --help)")?;
    if name != "gc" && (own.apply || !own.valid.is_empty()) {
        return Err(format!("--valid and --apply belong to gc, not {name}"));
    }
    Ok(match name {
        "lease" => Command::Lease,
        "leases" => Command::Leases,
        "routes" => Command::Routes,
        "ipam" => Command::Ipam,
        "gc" => {
            let valid = own.valid.iter().map(|v| parse_owner(v)).collect::<Result<Vec<_>, _>>()?;
            if own.apply && valid.is_empty() {
                return Err("gc --apply needs the live attachments (--valid ID/IFNAME ...); \
                            without one it would release every allocation"
                    .into());
            }
            Command::Gc { valid, apply: own.apply }
        }
        other => return Err(format!("unknown command {other:?} (see --help)")),
    })
}

/// Parse ferryctl's command line; `ferry_log` is `FERRY_LOG` (accepted for symmetry).
pub fn parse(argv: Vec<String>, ferry_log: Option<&str>) -> Result<CtlParsed, String> {
    let (own, rest) = split(argv)?;
    if own.help {
        return Ok(CtlParsed::Help);
    }
    if own.version {
        return Ok(CtlParsed::Version);
    }
    let command = command(&own)?;
    match args::parse_with_env(rest, ferry_log)? {
        Parsed::Run(a) => Ok(CtlParsed::Run(Box::new(Ctl { command, json: own.json, args: *a }))),
        Parsed::Help => Ok(CtlParsed::Help),
        Parsed::Version => Ok(CtlParsed::Version),
    }
}

pub fn main(argv: Vec<String>) -> i32 {
    let ferry_log = std::env::var("FERRY_LOG").ok();
    let ctl = match parse(argv, ferry_log.as_deref()) {
        Ok(CtlParsed::Run(c)) => *c,
        Ok(CtlParsed::Help) => {
            println!("{USAGE}");
            return EXIT_OK;
        }
        Ok(CtlParsed::Version) => {
            println!("ferryctl {}", env!("CARGO_PKG_VERSION"));
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return EXIT_USAGE;
        }
    };
    crate::log::set_level(ctl.args.log_level.min(crate::log::WARN));
    run(&ctl)
}

fn run(ctl: &Ctl) -> i32 {
    let out = match &ctl.command {
        Command::Ipam => ipam::list(&ctl.args.files),
        Command::Gc { valid, apply } => ipam::gc(&ctl.args.files, valid, *apply),
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("tokio runtime: {e}")),
            };
            rt.block_on(async {
                match ctl.command {
                    Command::Lease => leases::lease(&ctl.args).await,
                    Command::Leases => leases::leases(&ctl.args).await,
                    _ => routes::routes(&ctl.args).await,
                }
            })
        }
    };
    match out {
        Ok(report) => report.print(ctl.json),
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> i32 {
    eprintln!("ferryctl: {e}");
    EXIT_FAILED
}

/// What a command found: its text and JSON forms, and the exit code.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
    pub code: i32,
}

impl Report {
    fn print(&self, json: bool) -> i32 {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json).expect("json"));
        } else {
            print!("{}", self.text);
        }
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl(v: &[&str]) -> Result<Ctl, String> {
        match parse(v.iter().map(|s| s.to_string()).collect(), None)? {
            CtlParsed::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_and_flags() {
        let c = ctl(&["leases", "--json", "--store", "file:///tmp/s", "--resync=2s"]).unwrap();
        assert_eq!((c.command, c.json), (Command::Leases, true));
        assert_eq!(c.args.store.url, crate::store::any::StoreUrl::File("/tmp/s".into()));
        let c = ctl(&["--subnet-file", "/x/subnet.env", "gc", "--valid", "c1/eth0", "--apply"]);
        let c = c.unwrap();
        let valid = vec![Owner::new("c1", "eth0")];
        assert_eq!(c.command, Command::Gc { valid, apply: true });
        assert_eq!(c.args.files.subnet_file.to_str(), Some("/x/subnet.env"));
        let c = ctl(&["gc", "--valid=a/eth0", "--valid", "b/net1"]).unwrap();
        assert!(matches!(c.command, Command::Gc { ref valid, apply: false } if valid.len() == 2));
        // A value that looks like a command is the flag's value.
        let c = ctl(&["--cni-network-name", "routes", "ipam"]).unwrap();
        assert_eq!((c.command, c.args.files.cni_network_name.as_str()), (Command::Ipam, "routes"));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["frobnicate"],
            &["lease", "--apply"],
            &["ipam", "--valid", "c1/eth0"],
            &["gc", "--apply"],
            &["gc", "--valid", "c1"],
            &["gc", "--valid", "/eth0"],
            &["gc", "--valid", "c1/"],
            &["gc", "--valid"],
            &["leases", "--bogus"],
            &["leases", "extra"],
            &["routes", "--store", "consul://x"],
        ] {
            assert!(ctl(bad).is_err(), "{bad:?} accepted");
        }
        let help = parse(vec!["routes".into(), "--help".into()], None).unwrap();
        assert!(matches!(help, CtlParsed::Help));
    }
}
