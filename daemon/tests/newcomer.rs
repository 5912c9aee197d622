//! The README's operator path, end to end on a lab node: `ferryd install --root`, ferryd started
//! with the installed unit's own command line (`--config` file), `/readyz` and `/metrics`
//! scraped, `ferryctl` read, `ferryd uninstall --root`: nothing of Ferry's left.

mod common;

use common::{Lab, Store};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testlab::{bin, output_bounded, Proc};

const T: Duration = Duration::from_secs(15);

/// (exit code, stdout + stderr) of a bounded command.
fn run(cmd: Command) -> (Option<i32>, String) {
    let o = output_bounded(cmd, Duration::from_secs(30)).expect("still running after 30 s");
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code(), text)
}

/// The installed unit's ExecStart, with its absolute paths moved under `root`.
fn unit_command(root: &Path) -> Vec<PathBuf> {
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/ferryd.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    exec.split_whitespace()
        .map(|w| match w.strip_prefix('/') {
            Some(rel) => root.join(rel),
            None => PathBuf::from(w),
        })
        .collect()
}

/// The lab's flags for node `i` as a ferryd config file (`name = value` lines).
fn config_text(lab: &Lab, i: usize) -> String {
    let args = lab.args(i);
    let mut out = String::from("# written by the newcomer test\n");
    for pair in args.chunks(2) {
        out += &format!("{} = {}\n", pair[0].trim_start_matches("--"), pair[1]);
    }
    out
}

fn http_get(lab: &Lab, path: &str) -> (u16, String) {
    common::http_get(lab, 0, path)
}

#[test]
fn install_start_by_the_unit_scrape_inspect_uninstall() {
    let mut lab = Lab::new(Store::File, 2);
    let root = lab.dir.join("root");
    let r = root.to_string_lossy().into_owned();
    let (code, out) = run({
        let mut c = Command::new(bin("ferryd"));
        c.args(["install", "--root", &r]);
        c
    });
    assert_eq!(code, Some(0), "install: {out}");

    // The unit's command line: /usr/local/bin/ferryd --config /etc/ferry/ferryd.conf.
    let argv = unit_command(&root);
    assert!(argv[0].ends_with("usr/local/bin/ferryd") && argv.len() == 3, "{argv:?}");
    std::fs::create_dir_all(argv[2].parent().unwrap()).unwrap();
    std::fs::write(&argv[2], config_text(&lab, 0)).unwrap();
    let mut c = lab.nodes[0].ns.cmd(&argv[0]);
    c.args(&argv[1..]);
    let log = std::fs::File::create(lab.log_path(0)).unwrap();
    c.stdout(log.try_clone().unwrap()).stderr(log);
    lab.nodes[0].proc = Some(Proc::spawn("ferryd-by-unit", c));
    lab.start(1, &[]);
    lab.wait_subnets(&[0, 1]);
    lab.wait_routes(0, &lab.expected(0, &[0, 1]), T);

    let ready = testlab::wait_for(T, || http_get(&lab, "/readyz").0 == 200);
    assert!(ready, "/readyz: {:?}\n{}", http_get(&lab, "/readyz"), lab.log(0));
    let (code, metrics) = http_get(&lab, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("ferryd_lease_held 1"), "{metrics}");
    assert_eq!(http_get(&lab, "/healthz").0, 200);

    let conf = argv[2].to_string_lossy().into_owned();
    let ctl = root.join("usr/local/bin/ferryctl");
    for (what, want) in [("lease", lab.subnet(0).unwrap()), ("routes", "in sync".to_string())] {
        let mut c = lab.nodes[0].ns.cmd(&ctl);
        c.args(["--config", &conf, what]);
        let (code, out) = run(c);
        assert_eq!(code, Some(0), "ferryctl {what}: {out}");
        assert!(out.contains(&want), "ferryctl {what}: {out}");
    }

    assert!(lab.stop(0).unwrap().success());
    let mut c = lab.nodes[0].ns.cmd(&argv[0]);
    c.args(["uninstall", "--config", &conf, "--root", &r]);
    let (code, out) = run(c);
    assert_eq!(code, Some(0), "uninstall: {out}");
    assert!(lab.routes(0).is_empty(), "{:?}", lab.routes(0));
    assert!(!lab.conflist(0).exists() && !lab.nodes[0].dir.join("subnet.env").exists());
    for f in ["opt/cni/bin/ferry", "usr/local/bin/ferryd", "etc/systemd/system/ferryd.service"] {
        assert!(!root.join(f).exists(), "{f} left behind: {out}");
    }
}
