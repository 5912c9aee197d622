//! `ferryd install` puts Ferry's files on a node: the CNI plugins `ferry` and `ferry-ipam`
//! (from the directory of the running ferryd) into the CNI bin directory and, unless
//! `--cni-only`, `ferryd`, `ferryctl` and the systemd unit. `ferryd uninstall` takes Ferry off a
//! node: its routes, nft table, conflist and subnet file, and exactly the files install puts
//! down. Both work under `--root` (a host mounted into a container, a test tree).

use crate::masq::{self, Masquerade};
use crate::metrics::Metrics;
use crate::node::{self, NodeFiles};
use crate::route_applier::RouteApplier;
use crate::route_table::NetlinkRouteTable;
use ferry_netlink::Netlink;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The systemd unit `install` writes (ExecStart follows `--bin-dir`).
pub const UNIT: &str = include_str!("../../conf-examples/ferryd.service");
/// The CNI plugins, installed into the CNI bin directory.
pub const CNI_PLUGINS: [&str; 2] = ["ferry", "ferry-ipam"];
/// The node programs, installed into the bin directory.
pub const PROGRAMS: [&str; 2] = ["ferryd", "ferryctl"];
const UNIT_PATH: &str = "etc/systemd/system/ferryd.service";
const DEFAULT_BIN_DIR: &str = "/usr/local/bin";

/// Where install puts things (and uninstall takes them from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Everything goes under this directory [/].
    pub root: PathBuf,
    /// The CNI bin directory as the node sees it [/opt/cni/bin].
    pub cni_bin_dir: PathBuf,
    /// ferryd's and ferryctl's directory as the node sees it [/usr/local/bin].
    pub bin_dir: PathBuf,
    /// Only the CNI plugins.
    pub cni_only: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            root: "/".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            bin_dir: DEFAULT_BIN_DIR.into(),
            cni_only: false,
        }
    }
}

/// `dir` (as the node sees it) inside `root`.
fn under(root: &Path, dir: &Path) -> PathBuf {
    root.join(dir.strip_prefix("/").unwrap_or(dir))
}

impl Layout {
    /// Every file install writes: (source name next to ferryd or `None` for the unit, target
    /// path, mode).
    pub fn files(&self) -> Vec<(Option<&'static str>, PathBuf, u32)> {
        let cni = under(&self.root, &self.cni_bin_dir);
        let mut v: Vec<_> = CNI_PLUGINS.iter().map(|n| (Some(*n), cni.join(n), 0o755)).collect();
        if !self.cni_only {
            let bin = under(&self.root, &self.bin_dir);
            v.extend(PROGRAMS.iter().map(|n| (Some(*n), bin.join(n), 0o755)));
            v.push((None, self.root.join(UNIT_PATH), 0o644));
        }
        v
    }

    /// The unit, its ExecStart pointing at ferryd in `--bin-dir`.
    pub fn unit(&self) -> String {
        let ferryd = self.bin_dir.join("ferryd");
        UNIT.replace(&format!("{DEFAULT_BIN_DIR}/ferryd"), &ferryd.to_string_lossy())
    }
}

/// Split `--root`, `--cni-bin-dir`, `--bin-dir` and `--cni-only` out of `argv`; the rest is
/// returned for ferryd's own parser.
pub fn layout_flags(argv: Vec<String>) -> Result<(Layout, Vec<String>), String> {
    let (mut l, mut rest) = (Layout::default(), Vec::new());
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let slot = match flag.as_str() {
            "--root" => &mut l.root,
            "--cni-bin-dir" => &mut l.cni_bin_dir,
            "--bin-dir" => &mut l.bin_dir,
            "--cni-only" if inline.is_none() => {
                l.cni_only = true;
                continue;
            }
            _ => {
                rest.push(a);
                continue;
            }
        };
        let v = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if v.is_empty() {
            return Err(format!("{flag} needs a directory"));
        }
        *slot = v.into();
    }
    Ok((l, rest))
}

/// `ferryd install`: exit 0, 1 if something could not be installed, 2 for unusable flags.
pub fn install_main(argv: Vec<String>) -> i32 {
    let (layout, rest) = match layout_flags(argv) {
        Ok(x) => x,
        Err(e) => return usage(&e),
    };
    if let Some(a) = rest.first() {
        if a == "-h" || a == "--help" {
            println!("{}", crate::args::USAGE);
            return 0;
        }
        return usage(&format!("install: unexpected {a:?} (see --help)"));
    }
    match install(&layout, &source_dir()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferryd install: {e}");
            1
        }
    }
}

fn usage(e: &str) -> i32 {
    eprintln!("ferryd: {e}");
    crate::run::EXIT_REFUSED
}

/// The running ferryd's directory (`/proc/self/exe`), where its siblings are.
pub fn source_dir() -> PathBuf {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| ".".into())
}

/// Install every file of `layout`, read from `from` (all read first: a missing source changes
/// nothing). Each is written atomically and only when its content differs; modes are set.
pub fn install(layout: &Layout, from: &Path) -> Result<(), String> {
    let mut contents = Vec::new();
    for (src, dst, mode) in layout.files() {
        let bytes = match src {
            Some(name) => {
                let p = from.join(name);
                std::fs::read(&p)
                    .map_err(|e| format!("{}: {e} (nothing installed)", p.display()))?
            }
            None => layout.unit().into_bytes(),
        };
        contents.push((dst, bytes, mode));
    }
    for (dst, bytes, mode) in &contents {
        let changed = put(dst, bytes, *mode).map_err(|e| format!("{}: {e}", dst.display()))?;
        let what = if changed { "installed" } else { "unchanged" };
        println!("{what} {} ({mode:04o})", dst.display());
    }
    if !layout.cni_only {
        println!("next: systemctl daemon-reload && systemctl enable --now ferryd");
    }
    Ok(())
}

/// Write `path` atomically (creating its directory, 0755) unless it holds `bytes`, then make
/// its mode `mode` whatever the umask was. Returns whether anything changed.
fn put(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    let mut changed = ferry_fs::write_if_changed(path, bytes, mode)?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        changed = true;
    }
    Ok(changed)
}

/// `ferryd uninstall`: Ferry's routes (proto 113), its nft table, its conflist, the subnet
/// file, and the files `install` puts under `layout.root`; nothing else. Exit 1 if any removal
/// failed (the others are still done).
pub fn uninstall(layout: &Layout, files: &NodeFiles, masq_flags: &Masquerade) -> i32 {
    let mut ok = remove_routes();
    match masq::remove(&masq_flags.nft) {
        Ok(()) => info!("removed nft tables ip and ip6 {}", masq::TABLE),
        Err(e) => {
            error!("remove nft table: {e}");
            ok = false;
        }
    }
    let conflist = files.conflist_path();
    ok &= report_removal(&conflist, node::remove_conflist(&conflist));
    ok &= report_removal(&files.subnet_file, remove_subnet_file(&files.subnet_file));
    let all = Layout { cni_only: false, ..layout.clone() };
    for (_, path, _) in all.files() {
        ok &= report_removal(&path, remove_file(&path));
    }
    let wants = layout.root.join("etc/systemd/system/multi-user.target.wants/ferryd.service");
    if std::fs::symlink_metadata(&wants).is_ok() {
        warn!("{} is still there: run `systemctl disable ferryd` (uninstall leaves systemd's links alone)", wants.display());
    }
    i32::from(!ok)
}

fn remove_routes() -> bool {
    let table = match Netlink::new() {
        Ok(nl) => NetlinkRouteTable::new(nl),
        Err(e) => {
            error!("netlink socket: {e}");
            return false;
        }
    };
    let routes_ok = match RouteApplier::new(table, Arc::new(Metrics::default())).remove_all() {
        Ok(n) => {
            info!("removed {n} Ferry routes (proto 113)");
            true
        }
        Err(e) => {
            error!("remove routes: {e}");
            false
        }
    };
    // The vxlan backend's device, and with it its neighbour and fdb entries.
    let devices = Netlink::new().and_then(|mut nl| crate::overlay::remove_devices(&mut nl));
    match devices {
        Ok(names) => {
            for n in names {
                info!("removed device {n}");
            }
            routes_ok
        }
        Err(e) => {
            error!("remove Ferry's VXLAN device: {e}");
            false
        }
    }
}

/// Log a removal's outcome; false if it failed.
fn report_removal(path: &Path, res: io::Result<bool>) -> bool {
    match res {
        Ok(true) => {
            info!("removed {}", path.display());
            true
        }
        Ok(false) => true,
        Err(e) => {
            error!("remove {}: {e}", path.display());
            false
        }
    }
}

/// Remove a file (or a symlink, never what it points to; never a directory). `Ok(false)` if
/// there was none.
fn remove_file(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => Err(io::Error::other("is a directory; leaving it")),
        Ok(_) => std::fs::remove_file(path).map(|()| true),
    }
}

/// Remove the subnet file if it is one (a regular file in the subnet file format).
fn remove_subnet_file(path: &Path) -> io::Result<bool> {
    let text = match ferry_fs::read_to_string_capped(path, 64 << 10) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            warn!("{e}: not a subnet file; leaving it");
            return Ok(false);
        }
        r => r?,
    };
    let parsed = ferry_cni::subnet_env::SubnetEnv::parse(&text);
    if !parsed.is_ok_and(|env| env.subnet.is_some()) {
        warn!("{} is not a subnet file; leaving it", path.display());
        return Ok(false);
    }
    remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn layout_flags_and_paths() {
        let (l, rest) =
            layout_flags(s(&["--root", "/host", "--cni-only", "--subnet-file=/x", "--bin-dir=/b"]))
                .unwrap();
        assert_eq!(rest, ["--subnet-file=/x"]);
        assert_eq!(
            (l.root.to_str(), l.bin_dir.to_str(), l.cni_only),
            (Some("/host"), Some("/b"), true)
        );
        let paths: Vec<PathBuf> = l.files().into_iter().map(|f| f.1).collect();
        assert_eq!(
            paths,
            [PathBuf::from("/host/opt/cni/bin/ferry"), "/host/opt/cni/bin/ferry-ipam".into()]
        );
        let full = Layout { cni_only: false, ..l };
        let paths: Vec<PathBuf> = full.files().into_iter().map(|f| f.1).collect();
        assert_eq!(
            paths[2..],
            [
                PathBuf::from("/host/b/ferryd"),
                "/host/b/ferryctl".into(),
                "/host/etc/systemd/system/ferryd.service".into()
            ]
        );
        assert!(full.unit().contains("ExecStart=/b/ferryd --config"), "{}", full.unit());
        assert!(Layout::default().unit() == UNIT);
        assert!(layout_flags(s(&["--root"])).is_err());
        assert!(layout_flags(s(&["--root="])).is_err());
    }
}
