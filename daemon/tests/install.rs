//! `ferryd install` into a temp root (files, modes, content; twice is the same; --cni-only; a
//! missing source installs nothing) and `ferryd uninstall` on a lab node after ferryd ran (Ferry's
//! routes, nft table, conflist, subnet file and installed files go; a planted foreign file in each
//! directory and a foreign route stay). Run inside the sandbox:
//! `tests/sandbox.sh cargo test -p ferryd --offline --test install`.

mod common;

use common::{Lab, Store};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testlab::{bin, bin_dir, output_bounded, require_sandbox, workspace, TempDir};

const T: Duration = Duration::from_secs(10);

/// Run `cmd` bounded; (exit code, stdout + stderr).
fn run(cmd: Command) -> (Option<i32>, String) {
    let o: Output = output_bounded(cmd, Duration::from_secs(30)).expect("still running after 30 s");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code(), text)
}

/// `ferryd install ARGS` under umask 077 (install must set the modes itself).
fn install(ferryd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new("sh");
    c.args(["-c", "umask 077; exec \"$@\"", "sh"]).arg(ferryd).arg("install").args(args);
    run(c)
}

/// (path under root, source binary name or None for the unit, mode).
fn expected(root: &Path) -> Vec<(PathBuf, Option<&'static str>, u32)> {
    vec![
        (root.join("opt/cni/bin/ferry"), Some("ferry"), 0o755),
        (root.join("opt/cni/bin/ferry-ipam"), Some("ferry-ipam"), 0o755),
        (root.join("usr/local/bin/ferryd"), Some("ferryd"), 0o755),
        (root.join("usr/local/bin/ferryctl"), Some("ferryctl"), 0o755),
        (root.join("etc/systemd/system/ferryd.service"), None, 0o644),
    ]
}

fn check_installed(root: &Path) -> Vec<u64> {
    let unit = fs::read(workspace().join("conf-examples/ferryd.service")).unwrap();
    let mut inodes = Vec::new();
    for (path, src, mode) in expected(root) {
        let m = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(m.is_file(), "{}", path.display());
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{}", path.display());
        let want = src.map_or_else(|| unit.clone(), |s| fs::read(bin(s)).unwrap());
        assert!(fs::read(&path).unwrap() == want, "{} differs from its source", path.display());
        inodes.push(m.ino());
    }
    inodes
}

#[test]
fn install_into_a_temp_root_twice() {
    require_sandbox();
    let dir = TempDir::new("inst");
    let root = dir.join("root");
    let (code, out) = install(&bin("ferryd"), &["--root", &root.to_string_lossy()]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("installed ").count(), 5, "{out}");
    let first = check_installed(&root);
    let (code, out) = install(&bin("ferryd"), &["--root", &root.to_string_lossy()]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!((out.matches("unchanged ").count(), out.matches("installed ").count()), (5, 0));
    assert_eq!(check_installed(&root), first, "nothing rewritten the second time");
    // A file with the right content but the wrong mode gets its mode back.
    let plugin = root.join("opt/cni/bin/ferry");
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(install(&bin("ferryd"), &["--root", &root.to_string_lossy()]).0, Some(0));
    check_installed(&root);
}

#[test]
fn cni_only_and_custom_directories() {
    require_sandbox();
    let dir = TempDir::new("inst");
    let root = dir.join("root");
    let r = root.to_string_lossy().into_owned();
    let (code, out) = install(&bin("ferryd"), &["--cni-only", "--root", &r, "--cni-bin-dir=/cni"]);
    assert_eq!(code, Some(0), "{out}");
    let mut names: Vec<String> = fs::read_dir(root.join("cni"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ferry", "ferry-ipam"]);
    assert!(!root.join("usr").exists() && !root.join("etc").exists(), "--cni-only: {out}");
    let (code, out) = install(&bin("ferryd"), &["--root", &r, "--bin-dir", "/opt/ferry/bin"]);
    assert_eq!(code, Some(0), "{out}");
    let unit = fs::read_to_string(root.join("etc/systemd/system/ferryd.service")).unwrap();
    assert!(unit.contains("\nExecStart=/opt/ferry/bin/ferryd --config"), "{unit}");
    assert!(root.join("opt/ferry/bin/ferryctl").is_file());
}

#[test]
fn a_missing_source_installs_nothing() {
    require_sandbox();
    let dir = TempDir::new("inst");
    let alone = dir.join("alone");
    fs::create_dir_all(&alone).unwrap();
    fs::copy(bin("ferryd"), alone.join("ferryd")).unwrap();
    let root = dir.join("root");
    let (code, out) = install(&alone.join("ferryd"), &["--root", &root.to_string_lossy()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("ferry") && out.contains("nothing installed"), "{out}");
    assert!(!root.exists(), "nothing written");
    for bad in [&["--bogus"][..], &["--root"], &["stray"]] {
        assert_eq!(install(&bin("ferryd"), bad).0, Some(2), "{bad:?}");
    }
    let mut c = Command::new(bin("ferryd"));
    c.args(["--root", "/nonexistent", "--store=file:///nonexistent/x"]);
    assert_eq!(run(c).0, Some(2), "--root outside install/uninstall");
    assert!(bin_dir().join("ferryctl").exists());
}

/// Plant a file nobody installed in each directory uninstall touches; returns them.
fn plant(lab: &Lab, root: &Path) -> Vec<PathBuf> {
    let d = &lab.nodes[0].dir;
    let files = [
        root.join("opt/cni/bin/bridge"),
        root.join("usr/local/bin/kubelet"),
        root.join("etc/systemd/system/other.service"),
        d.join("net.d/20-other.conflist"),
        d.join("other.env"),
    ];
    for f in &files {
        fs::write(f, "not Ferry's\n").unwrap();
    }
    files.to_vec()
}

#[test]
fn uninstall_after_ferryd_ran() {
    let mut lab = Lab::new(Store::File, 2);
    lab.start(0, &[]);
    lab.start(1, &[]);
    lab.wait_subnets(&[0, 1]);
    lab.wait_routes(0, &lab.expected(0, &[0, 1]), T);
    assert!(lab.nft_table(0).is_some());
    let root = lab.dir.join("root");
    let r = root.to_string_lossy().into_owned();
    assert_eq!(install(&bin("ferryd"), &["--root", &r]).0, Some(0));
    let foreign = plant(&lab, &root);
    lab.nodes[0].ns.ip(&["route", "add", "10.77.0.0/24", "via", "198.18.0.12"]);
    let peer_routes = lab.routes(1);
    assert!(lab.stop(0).unwrap().success());
    let uninstall = || {
        let mut c = lab.nodes[0].ns.cmd(bin("ferryd"));
        c.arg("uninstall").args(lab.args(0)).args(["--root", &r]);
        run(c)
    };
    let (code, out) = uninstall();
    assert_eq!(code, Some(0), "{out}");
    assert!(lab.routes(0).is_empty(), "{:?}", lab.routes(0));
    assert!(lab.nft_table(0).is_none());
    assert!(!lab.conflist(0).exists());
    assert!(!lab.nodes[0].dir.join("subnet.env").exists());
    for (path, _, _) in expected(&root) {
        assert!(!path.exists(), "{} left behind: {out}", path.display());
    }
    for f in &foreign {
        assert_eq!(fs::read_to_string(f).unwrap(), "not Ferry's\n", "{}", f.display());
    }
    assert!(lab.nodes[0].ns.ip(&["route"]).contains("10.77.0.0/24 via 198.18.0.12"));
    assert!(root.join("opt/cni/bin").is_dir(), "directories stay");
    assert_eq!(lab.routes(1), peer_routes, "the other node is untouched");
    let (code, out) = uninstall();
    assert_eq!(code, Some(0), "a second uninstall finds nothing to do: {out}");
}
