//! ferryd's command line as an operator meets it: flags that cannot be honoured exit 2 with a
//! message naming the flag, before anything is touched. Run inside the sandbox all the same (an
//! old binary that accepted a flag would start running), pointed at paths that do not exist.

use std::process::{Command, Stdio};
use std::time::Duration;
use testlab::{bin, output_bounded, require_sandbox};

/// Flags that keep a ferryd that gets past its flags harmless: a store that does not exist.
const NOWHERE: &[&str] = &[
    "--store=file:///nonexistent/ferry-cli",
    "--subnet-file=/nonexistent/ferry-cli/subnet.env",
    "--cni-conf-dir=/nonexistent/ferry-cli",
];

/// Run `ferryd args...` (bounded: a flag parser that hangs fails the test); (exit code, output).
fn ferryd(args: &[&str]) -> (Option<i32>, String) {
    require_sandbox();
    let mut c = Command::new(bin("ferryd"));
    c.args(NOWHERE).args(args).stdin(Stdio::null());
    let Some(out) = output_bounded(c, Duration::from_secs(5)) else {
        return (None, "still running after 5 s".into());
    };
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), text + &String::from_utf8_lossy(&out.stdout))
}

#[test]
fn out_of_range_durations_exit_2_not_panic() {
    for (flag, v) in [
        ("--resync", "18446744073709551616"),
        ("--lease-ttl", "1e19"),
        ("--lease-ttl", "10000000000000000000"),
        ("--renew-margin", "1e20"),
        ("--renew-margin", "100000000000000000000"),
        ("--etcd-dial-timeout", "10000000000000000000"),
        ("--etcd-request-timeout", "10000000000000000000000d"),
        ("--resync", "0"),
    ] {
        let (code, out) = ferryd(&[flag, v]);
        assert_eq!(code, Some(2), "{flag} {v}: {out}");
        assert!(out.contains(flag) && !out.contains("panicked"), "{flag} {v}: {out}");
    }
}
