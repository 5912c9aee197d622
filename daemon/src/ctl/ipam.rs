//! `ferryctl ipam` (this node's IP allocations, read from ferry-ipam's
//! `<cni-data-dir>/<cni-network-name>/state.json`) and `ferryctl gc` (release the allocations of
//! attachments that no longer exist, through ferry-ipam's own store and lock).

use super::table::{count, render};
use super::{Report, EXIT_DIFFERENT, EXIT_OK};
use crate::node::NodeFiles;
use ferry_ipam::state::State;
use ferry_ipam::{Owner, Store};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;

/// The network's state directory, after checking the network name as ferry-ipam does.
fn state_dir(files: &NodeFiles) -> Result<PathBuf, String> {
    ferry_cni::config::validate_name(&files.cni_network_name)
        .map_err(|e| format!("--cni-network-name: {e}"))?;
    Ok(files.cni_data_dir.join(&files.cni_network_name))
}

/// Every allocation, sorted by address (lock-free: `state.json` is replaced atomically). No
/// file: no allocations. A file that is not valid state is an error naming it.
pub fn read(files: &NodeFiles) -> Result<(PathBuf, Vec<(IpAddr, Owner)>), String> {
    let path = state_dir(files)?.join("state.json");
    let bytes = ferry_fs::read_optional(&path, ferry_fs::DEFAULT_CAP)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    let st = match bytes {
        Some(b) => State::decode(&b).map_err(|e| format!("{} is corrupt: {e}", path.display()))?,
        None => State::default(),
    };
    Ok((path, st.allocations.into_iter().collect()))
}

fn rows(allocs: &[(IpAddr, Owner)]) -> Vec<Vec<String>> {
    allocs
        .iter()
        .map(|(ip, o)| vec![ip.to_string(), o.container_id.clone(), o.ifname.clone()])
        .collect()
}

fn json_list(allocs: &[(IpAddr, Owner)]) -> Vec<serde_json::Value> {
    allocs
        .iter()
        .map(|(ip, o)| json!({"ip": ip.to_string(), "container_id": o.container_id, "ifname": o.ifname}))
        .collect()
}

/// `ferryctl ipam`.
pub fn list(files: &NodeFiles) -> Result<Report, String> {
    let (path, allocs) = read(files)?;
    let mut text = render(&["IP", "CONTAINER ID", "IFNAME"], &rows(&allocs));
    text.push_str(&format!("\n{} in {}\n", count(allocs.len(), "allocation"), path.display()));
    let json = json!({
        "network": files.cni_network_name,
        "state_file": path.display().to_string(),
        "allocations": json_list(&allocs),
    });
    Ok(Report { text, json, code: EXIT_OK })
}

/// `ferryctl gc`: without `apply`, what would be released (exit 1 if anything); with it, release
/// under ferry-ipam's lock (the allocations are re-read there, so a concurrent ADD or DEL is
/// never lost or undone) and say what was released.
pub fn gc(files: &NodeFiles, valid: &[Owner], apply: bool) -> Result<Report, String> {
    let (path, allocs) = read(files)?;
    let (released, verb) = if apply && state_dir(files)?.is_dir() {
        let mut store = Store::open(&files.cni_data_dir, &files.cni_network_name)
            .map_err(|e| format!("ferry-ipam store: {e}"))?;
        (store.gc(valid).map_err(|e| e.to_string())?, "released")
    } else if apply {
        (Vec::new(), "released")
    } else {
        let stale = allocs.into_iter().filter(|(_, o)| !valid.contains(o)).collect();
        (stale, "would release")
    };
    let mut text = render(&["IP", "CONTAINER ID", "IFNAME"], &rows(&released));
    text.push_str(&format!(
        "\n{verb} {} of attachments not named by --valid ({} valid) in {}\n",
        count(released.len(), "allocation"),
        valid.len(),
        path.display()
    ));
    let json = json!({
        "applied": apply,
        "state_file": path.display().to_string(),
        "released": if apply { json_list(&released) } else { Vec::new() },
        "would_release": if apply { Vec::new() } else { json_list(&released) },
    });
    let code = if !apply && !released.is_empty() { EXIT_DIFFERENT } else { EXIT_OK };
    Ok(Report { text, json, code })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> NodeFiles {
        NodeFiles { cni_data_dir: dir.into(), ..crate::args::Args::default().files }
    }

    #[test]
    fn lists_and_collects() {
        let d = std::env::temp_dir().join(format!("ferryctl-ipam-{}", std::process::id()));
        let f = files(&d);
        assert_eq!(list(&f).unwrap().json["allocations"], json!([]), "no state: none");
        std::fs::create_dir_all(d.join("ferry")).unwrap();
        let st = br#"{"version":1,"last":{},"allocations":{"10.244.1.2":{"id":"c1","ifname":"eth0"},"10.244.1.3":{"id":"c2","ifname":"eth0"}}}"#;
        std::fs::write(d.join("ferry/state.json"), st).unwrap();
        let l = list(&f).unwrap();
        assert!(
            l.text.starts_with("IP          CONTAINER ID  IFNAME\n10.244.1.2  c1"),
            "{}",
            l.text
        );
        let keep = [Owner::new("c1", "eth0")];
        let dry = gc(&f, &keep, false).unwrap();
        assert_eq!(
            (dry.code, dry.json["would_release"][0]["container_id"].as_str()),
            (1, Some("c2"))
        );
        assert_eq!(
            std::fs::read(d.join("ferry/state.json")).unwrap(),
            st,
            "dry run changes nothing"
        );
        let done = gc(&f, &keep, true).unwrap();
        assert_eq!((done.code, done.json["released"][0]["ip"].as_str()), (0, Some("10.244.1.3")));
        assert_eq!(gc(&f, &keep, false).unwrap().code, 0, "nothing left to release");
        std::fs::write(d.join("ferry/state.json"), b"{garbage").unwrap();
        assert!(list(&f).unwrap_err().contains("state.json is corrupt"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
