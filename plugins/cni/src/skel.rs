//! The dispatcher every Ferry binary calls from `main`: environment and stdin in, JSON and an exit
//! code out. Everything is passed in, so unit tests drive it from a map.

use crate::config::NetConf;
use crate::env::{self, CniArgs, Command};
use crate::error::{CniError, Code, Result};
use crate::result::CniResult;
use crate::version::{Version, SUPPORTED};
use serde_json::json;
use std::io::Write;

/// One validated invocation.
#[derive(Debug, Clone)]
pub struct Request {
    pub args: CniArgs,
    pub conf: NetConf,
    /// The raw stdin bytes (what a delegated plugin gets unchanged).
    pub stdin: Vec<u8>,
}

/// What a plugin implements. DEL, CHECK, GC and STATUS print nothing on success.
pub trait Plugin {
    fn add(&mut self, req: &Request) -> Result<CniResult>;
    fn del(&mut self, req: &Request) -> Result<()>;
    fn check(&mut self, req: &Request) -> Result<()>;
    fn gc(&mut self, req: &Request) -> Result<()>;
    fn status(&mut self, req: &Request) -> Result<()>;
}

/// Run one invocation; returns the process exit code (0 or 1).
pub fn run(
    plugin: &mut dyn Plugin,
    about: &str,
    get_env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let args = match env::from_env(get_env) {
        Ok(Some(a)) => a,
        Ok(None) => {
            let _ = writeln!(
                stderr,
                "{about}\nCNI protocol versions supported: {}",
                SUPPORTED.join(", ")
            );
            return 0;
        }
        Err(e) => return fail(out(stdout, stderr), &e, request_version(stdin).as_deref()),
    };
    if args.command == Command::Version {
        return emit(stdout, &version_reply(stdin).to_string());
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(out(stdout, stderr), &e, request_version(stdin).as_deref()),
    };
    let ver = conf.cni_version.clone();
    if let Err(e) = version_gate(args.command, &conf) {
        return fail(out(stdout, stderr), &e, Some(&ver));
    }
    let version = conf.version;
    let req = Request { args, conf, stdin: stdin.to_vec() };
    let outcome = match req.args.command {
        Command::Add => plugin.add(&req).and_then(|r| r.to_json(version)).map(Some),
        Command::Del => plugin.del(&req).map(|_| None),
        Command::Check => plugin.check(&req).map(|_| None),
        Command::Gc => plugin.gc(&req).map(|_| None),
        Command::Status => plugin.status(&req).map(|_| None),
        Command::Version => unreachable!("handled above"),
    };
    match outcome {
        Ok(Some(v)) => emit(stdout, &v.to_string()),
        Ok(None) => 0,
        Err(e) => fail(out(stdout, stderr), &e, Some(&ver)),
    }
}

/// Where a failure goes: the error object on stdout (for the runtime), the reason on stderr (for
/// whoever reads the runtime's or the terminal's log).
struct Out<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
}

fn out<'a>(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Out<'a> {
    Out { stdout, stderr }
}

/// `--help` / `-h` and `--version` / `-V` as the first argument: the text on `stdout` and
/// `Some(0)`. Anything else: `None` (a CNI plugin ignores its arguments).
pub fn cli_flags(args: &[String], about: &str, stdout: &mut dyn Write) -> Option<i32> {
    let versions = SUPPORTED.join(", ");
    let text = match args.get(1).map(String::as_str) {
        Some("--version" | "-V") => format!("{about}\nCNI protocol versions supported: {versions}"),
        Some("--help" | "-h") => format!(
            "{about}\nCNI protocol versions supported: {versions}\n\n\
             A CNI plugin: run by a container runtime with CNI_COMMAND (ADD, DEL, CHECK, GC, \
             STATUS, VERSION),\nCNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and CNI_PATH \
             in the environment and the\nnetwork configuration (JSON) on stdin; it prints the \
             result or a CNI error object on stdout.\n\nOptions: --help, --version"
        ),
        _ => return None,
    };
    let _ = writeln!(stdout, "{text}");
    Some(0)
}

/// VERSION's answer. Echo the request's version when we speak it; libcni sends one, cnitool may
/// not.
fn version_reply(stdin: &[u8]) -> serde_json::Value {
    let ver = request_version(stdin)
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| Version::V110.as_str().to_string());
    json!({ "cniVersion": ver, "supportedVersions": SUPPORTED })
}

/// CHECK needs 0.4.0, GC and STATUS 1.1.0: older configs get code 1.
fn version_gate(cmd: Command, conf: &NetConf) -> Result<()> {
    let need = match cmd {
        Command::Check if !conf.version.supports_check() => "0.4.0",
        Command::Gc | Command::Status if !conf.version.supports_gc_status() => "1.1.0",
        _ => return Ok(()),
    };
    Err(CniError::incompatible("incompatible CNI versions").with_details(format!(
        "{} needs cniVersion {need} or later, config is {:?}",
        cmd.as_str(),
        conf.cni_version
    )))
}

/// The `cniVersion` string in stdin, if stdin is a JSON object that has one.
fn request_version(stdin: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(String::from)
}

fn emit(stdout: &mut dyn Write, s: &str) -> i32 {
    match writeln!(stdout, "{s}").and_then(|_| stdout.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn fail(o: Out, e: &CniError, ver: Option<&str>) -> i32 {
    // An unknown version cannot be echoed as if it were spoken; leave it out then.
    let ver = ver.filter(|v| SUPPORTED.contains(v) || e.code != Code::IncompatibleVersion);
    let _ = emit(o.stdout, &e.to_json(ver).to_string());
    let _ = writeln!(o.stderr, "error (code {}): {e}", e.code.as_u32());
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        calls: Vec<&'static str>,
        fail_with: Option<CniError>,
    }

    impl Plugin for Fake {
        fn add(&mut self, _r: &Request) -> Result<CniResult> {
            self.calls.push("add");
            if let Some(e) = self.fail_with.clone() {
                return Err(e);
            }
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&mut self, _r: &Request) -> Result<()> {
            self.calls.push("del");
            Ok(())
        }
        fn check(&mut self, _r: &Request) -> Result<()> {
            self.calls.push("check");
            Ok(())
        }
        fn gc(&mut self, _r: &Request) -> Result<()> {
            self.calls.push("gc");
            Ok(())
        }
        fn status(&mut self, _r: &Request) -> Result<()> {
            self.calls.push("status");
            Err(CniError::new(Code::NotAvailable, "subnet unknown"))
        }
    }

    fn call(p: &mut Fake, env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
        let m: HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let rc = run(
            p,
            "CNI test plugin",
            &move |k: &str| m.get(k).cloned(),
            stdin.as_bytes(),
            &mut out,
            &mut err,
        );
        (rc, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    fn add_env(cmd: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]
    }

    fn conf(ver: &str) -> String {
        format!(r#"{{"cniVersion":"{ver}","name":"n","type":"ferry"}}"#)
    }

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s.trim()).unwrap()
    }

    #[test]
    fn add_echoes_request_version_in_every_version() {
        for v in SUPPORTED {
            let (rc, out, _) = call(&mut Fake::default(), &add_env("ADD"), &conf(v));
            assert_eq!(rc, 0, "{v}: {out}");
            assert_eq!(parse(&out)["cniVersion"], *v);
        }
    }

    #[test]
    fn version_answers_without_validating_env() {
        let env = [
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
            ("CNI_CONTAINERID", ""),
        ];
        let (rc, out, _) = call(&mut Fake::default(), &env, r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(rc, 0);
        let v = parse(&out);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), SUPPORTED.len());
        let (rc, out, _) = call(&mut Fake::default(), &env, "");
        assert_eq!(rc, 0);
        assert_eq!(parse(&out)["cniVersion"], "1.1.0");
    }

    #[test]
    fn about_goes_to_stderr() {
        let (rc, out, err) = call(&mut Fake::default(), &[], "");
        assert_eq!(rc, 0);
        assert!(out.is_empty());
        assert!(err.contains("CNI test plugin"));
    }

    #[test]
    fn silent_verbs_print_nothing() {
        let mut p = Fake::default();
        assert_eq!(
            call(&mut p, &add_env("DEL"), &conf("1.0.0")),
            (0, String::new(), String::new())
        );
        assert_eq!(
            call(&mut p, &add_env("CHECK"), &conf("1.0.0")),
            (0, String::new(), String::new())
        );
        assert_eq!(
            call(&mut p, &[("CNI_COMMAND", "GC")], &conf("1.1.0")),
            (0, String::new(), String::new())
        );
        assert_eq!(p.calls, vec!["del", "check", "gc"]);
    }

    #[test]
    fn status_error_code_50() {
        let (rc, out, _) = call(&mut Fake::default(), &[("CNI_COMMAND", "STATUS")], &conf("1.1.0"));
        assert_eq!(rc, 1);
        assert_eq!(parse(&out)["code"], 50);
        assert_eq!(parse(&out)["cniVersion"], "1.1.0");
    }

    #[test]
    fn version_gates() {
        let mut p = Fake::default();
        let (rc, out, _) = call(&mut p, &add_env("CHECK"), &conf("0.3.1"));
        assert_eq!((rc, parse(&out)["code"].as_u64()), (1, Some(1)));
        let (rc, out, _) = call(&mut p, &[("CNI_COMMAND", "GC")], &conf("1.0.0"));
        assert_eq!((rc, parse(&out)["code"].as_u64()), (1, Some(1)));
        let (rc, out, _) = call(&mut p, &add_env("ADD"), &conf("9.9.9"));
        assert_eq!((rc, parse(&out)["code"].as_u64()), (1, Some(1)));
        assert!(parse(&out).get("cniVersion").is_none());
        assert!(p.calls.is_empty());
    }

    #[test]
    fn errors_are_one_json_object_on_stdout() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, String, u64);
        let cases: Vec<Case> = vec![
            (vec![("CNI_COMMAND", "FOO")], conf("1.0.0"), 4),
            (vec![("CNI_COMMAND", "ADD")], conf("1.0.0"), 4),
            (add_env("ADD"), "{".into(), 6),
            (add_env("ADD"), r#"{"cniVersion":"1.0.0","type":"ferry"}"#.into(), 7),
        ];
        for (env, stdin, code) in cases {
            let (rc, out, _) = call(&mut Fake::default(), &env, &stdin);
            assert_eq!(rc, 1);
            assert_eq!(out.lines().count(), 1);
            let v = parse(&out);
            assert_eq!(v["code"], code, "{stdin}");
            assert!(v["msg"].is_string());
        }
    }

    #[test]
    fn failures_say_why_on_stderr_too() {
        let (rc, _, err) = call(&mut Fake::default(), &add_env("ADD"), "{");
        assert_eq!(rc, 1);
        assert!(err.contains("code 6") && err.contains("decoding"), "{err}");
    }

    #[test]
    fn help_and_version_flags() {
        let args = |a: &str| vec!["ferry".to_string(), a.to_string()];
        for flag in ["--help", "-h", "--version", "-V"] {
            let mut out = Vec::new();
            assert_eq!(cli_flags(&args(flag), "CNI x 1.0", &mut out), Some(0));
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("CNI x 1.0") && text.contains("1.1.0"), "{text}");
        }
        assert_eq!(cli_flags(&["ferry".into()], "x", &mut Vec::new()), None);
        assert_eq!(cli_flags(&args("other"), "x", &mut Vec::new()), None);
    }

    #[test]
    fn plugin_error_carries_request_version() {
        let mut p =
            Fake { fail_with: Some(CniError::try_again("no subnet yet")), ..Default::default() };
        let (rc, out, _) = call(&mut p, &add_env("ADD"), &conf("0.4.0"));
        assert_eq!(rc, 1);
        let v = parse(&out);
        assert_eq!(v["code"], 11);
        assert_eq!(v["cniVersion"], "0.4.0");
    }
}
