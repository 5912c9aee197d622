//! Hostile entries in Ferry's files: `<dataDir>/<net>/state.json` or the subnet file replaced by a
//! symlink (to a file, a directory, itself, /dev/zero), a FIFO, a socket, a directory, a 100 MB
//! file or a mode-000 file. ADD fails fast with an error naming the file, never follows the link
//! or writes through it, changes nothing outside, and another network keeps working. And with
//! symlinks planted at every name Ferry might write (`state.json.tmp`, `.state.json.*.tmp`,
//! `lock`), ADD/CHECK/DEL/GC never change a victim file outside.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use testlab::Netns;

/// What a victim outside Ferry's files looked like: content and mtime.
fn snapshot(p: &Path) -> (Vec<u8>, SystemTime) {
    let m = std::fs::metadata(p).unwrap();
    (std::fs::read(p).unwrap(), m.modified().unwrap())
}

/// Victims outside the data dir: a file, and a directory holding one.
struct Victims {
    file: PathBuf,
    dir: PathBuf,
    before: Vec<(PathBuf, (Vec<u8>, SystemTime))>,
}

impl Victims {
    fn new(node: &Node) -> Victims {
        let (file, dir) = (node.dir.join("victim.txt"), node.dir.join("victim-dir"));
        std::fs::write(&file, "FLANNEL_SUBNET=10.1.2.1/24\n").unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inside"), "keep").unwrap();
        let before = [file.clone(), dir.join("inside")].map(|p| (p.clone(), snapshot(&p))).into();
        Victims { file, dir, before }
    }

    fn assert_unchanged(&self, when: &str) {
        for (p, snap) in &self.before {
            assert_eq!(&snapshot(p), snap, "{when}: {} changed", p.display());
        }
        let entries = std::fs::read_dir(&self.dir).unwrap().count();
        assert_eq!(entries, 1, "{when}: something was created in {}", self.dir.display());
    }
}

/// Make `path` one hostile kind of entry. The returned guard keeps a socket bound.
fn plant(kind: &str, path: &Path, v: &Victims) -> Option<std::os::unix::net::UnixListener> {
    let link = |to: &Path| std::os::unix::fs::symlink(to, path).unwrap();
    match kind {
        "symlink to a file" => link(&v.file),
        "symlink to a dir" => link(&v.dir),
        "symlink to itself" => link(Path::new(path.file_name().unwrap())),
        "symlink to /dev/zero" => link(Path::new("/dev/zero")),
        "FIFO" => drop(testlab::ok("mkfifo", [path])),
        "socket" => return Some(std::os::unix::net::UnixListener::bind(path).unwrap()),
        "directory" => std::fs::create_dir(path).unwrap(),
        "100 MB file" => std::fs::File::create(path).unwrap().set_len(100 << 20).unwrap(),
        "mode 000" => {
            std::fs::write(path, "garbage").unwrap();
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o000))
                .unwrap();
        }
        other => panic!("unknown kind {other}"),
    }
    None
}

const KINDS: &[&str] = &[
    "symlink to a file",
    "symlink to a dir",
    "symlink to itself",
    "symlink to /dev/zero",
    "FIFO",
    "socket",
    "directory",
    "100 MB file",
    "mode 000",
];

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// ADD with `conf` fails within 2 s with `code`, an error naming `path`; nothing is left.
fn assert_fails_fast(node: &Node, pod: &Netns, conf: &str, code: u64, path: &Path, kind: &str) {
    let t0 = Instant::now();
    let out = node
        .call_bounded("ADD", ("hostile", Some(pod), "eth0"), conf, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{kind}: ADD hung"));
    let took = t0.elapsed();
    assert_eq!(out.code(), code, "{kind}: {}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains(&path.display().to_string()), "{kind}: error names the file: {msg}");
    assert!(took < Duration::from_secs(2), "{kind}: took {took:?}");
    assert_eq!((host_ends(node), pod_routes(node)), (0, 0), "{kind}: nothing left");
    println!("{kind}: code {code} in {} ms: {msg}", took.as_millis());
}

/// The other network on the same node and data dir works, then is torn down.
fn other_network_works(node: &Node, pod: &Netns, kind: &str) {
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"other","type":"ferry","subnet":"10.79.0.0/24","dataDir":"{}"}}"#,
        node.dir.path_str("ipam")
    );
    let r = node.add("fine", pod, &conf);
    assert!(node.ns.ping(&pod_ip(&r)), "{kind}: the other network's pod is reachable");
    node.call("DEL", "fine", Some(pod), "eth0", &conf).assert_ok();
}

#[test]
fn hostile_state_json_fails_add_fast_and_changes_nothing() {
    let node = Node::new();
    let (pod, other) = (Netns::new("fp"), Netns::new("fp"));
    let v = Victims::new(&node);
    let conf = node.conf("1.1.0", "10.78.0.0/24", "");
    let dir = node.dir.join("ipam/t");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let root = unsafe { libc::geteuid() } == 0;
    for kind in KINDS {
        let _socket = plant(kind, &state, &v);
        // Root reads a mode-000 file like any other: then it is judged by its content (corrupt).
        let code = match *kind {
            "mode 000" if !root => 5,
            _ => 101,
        };
        assert_fails_fast(&node, &pod, &conf, code, &state, kind);
        v.assert_unchanged(kind);
        let still = std::fs::symlink_metadata(&state).unwrap();
        assert_eq!(still.file_type().is_symlink(), kind.starts_with("symlink"), "{kind}: kept");
        if *kind == "100 MB file" {
            assert_eq!(still.size(), 100 << 20, "not rewritten");
        }
        other_network_works(&node, &other, kind);
        remove(&state);
    }
    node.add("after", &pod, &conf);
    node.call("DEL", "after", Some(&pod), "eth0", &conf).assert_ok();
    assert_clean(&node, "after every hostile state.json");
}

#[test]
fn hostile_subnet_file_fails_add_fast_and_changes_nothing() {
    let node = Node::new();
    let (pod, other) = (Netns::new("fp"), Netns::new("fp"));
    let v = Victims::new(&node);
    let subnet = node.dir.join("subnet.env");
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"t","type":"ferry","subnetFile":"{}","dataDir":"{}"}}"#,
        subnet.display(),
        node.dir.path_str("ipam")
    );
    for kind in KINDS {
        let _socket = plant(kind, &subnet, &v);
        // A mode-000 file holds garbage: code 7 whether or not it can be read.
        assert_fails_fast(&node, &pod, &conf, 7, &subnet, kind);
        v.assert_unchanged(kind);
        assert!(node.allocated().is_empty(), "{kind}: no allocation");
        other_network_works(&node, &other, kind);
        remove(&subnet);
    }
    std::fs::write(&subnet, "FLANNEL_SUBNET=10.78.1.1/24\n").unwrap();
    node.add("after", &pod, &conf);
    node.call("DEL", "after", Some(&pod), "eth0", &conf).assert_ok();
    assert_clean(&node, "after every hostile subnet file");
}

/// Plant symlinks to victims at every name Ferry might write in the store directory.
fn plant_decoys(dir: &Path, victims: &[PathBuf], with_lock: bool) {
    let pid_like = format!(".state.json.{}.0123456789abcdef.tmp", std::process::id());
    let mut names = vec!["state.json.tmp".to_string(), ".state.json.tmp".into(), pid_like];
    names.extend((1..6).map(|n| format!(".state.json.{n}.{n:016x}.tmp")));
    if with_lock {
        names.push("lock".into());
    }
    for (i, n) in names.iter().enumerate() {
        let _ = std::fs::remove_file(dir.join(n));
        std::os::unix::fs::symlink(&victims[i % victims.len()], dir.join(n)).unwrap();
    }
}

#[test]
fn writes_stay_inside_ferrys_own_files() {
    let node = Node::new();
    let pod = Netns::new("fp");
    let conf = node.conf("1.1.0", "10.78.2.0/24", "");
    let dir = node.dir.join("ipam/t");
    std::fs::create_dir_all(&dir).unwrap();
    let victims: Vec<PathBuf> = (0..3).map(|i| node.dir.join(&format!("victim{i}"))).collect();
    for v in &victims {
        std::fs::write(v, "precious").unwrap();
    }
    let before: Vec<_> = victims.iter().map(|p| snapshot(p)).collect();
    // Round 1: `lock` is a symlink too: every store operation refuses it (code 5), nothing else.
    plant_decoys(&dir, &victims, true);
    let out = node.call("ADD", "w", Some(&pod), "eth0", &conf);
    assert_eq!(out.code(), 5, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains("symbolic link"), "{}", out.stdout);
    assert_eq!(node.call("DEL", "w", Some(&pod), "eth0", &conf).code(), 5);
    assert_eq!(node.call("GC", "", None, "", &conf).code(), 5);
    std::fs::remove_file(dir.join("lock")).unwrap();
    // Round 2: only the temp-name decoys: every verb works and writes only its own files.
    plant_decoys(&dir, &victims, false);
    let r = node.add("w", &pod, &conf);
    node.call("CHECK", "w", Some(&pod), "eth0", &with_prev(&conf, &r)).assert_ok();
    node.call("DEL", "w", Some(&pod), "eth0", &conf).assert_ok();
    node.add("w2", &pod, &conf);
    node.call("GC", "", None, "", &conf).assert_ok();
    assert_clean(&node, "after ADD/CHECK/DEL/GC among decoys");
    let after: Vec<_> = victims.iter().map(|p| snapshot(p)).collect();
    assert_eq!(after, before, "a victim outside Ferry's files changed");
    let decoys =
        std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_type().unwrap().is_symlink());
    assert_eq!(decoys.count(), 8, "every decoy is still a symlink, none replaced");
}
