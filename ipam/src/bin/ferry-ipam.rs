//! `ferry-ipam`: the CNI IPAM plugin. All logic lives in `ferry_ipam::plugin`.
use ferry_ipam::plugin::{IpamPlugin, ABOUT};
use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if let Some(code) = ferry_cni::skel::cli_flags(&args, ABOUT, &mut std::io::stdout().lock()) {
        std::process::exit(code);
    }
    let get_env = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    // Without CNI_COMMAND only the "about" text is printed: do not wait on a terminal.
    if get_env("CNI_COMMAND").is_some_and(|c| !c.is_empty()) {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let code = ferry_cni::skel::run(
        &mut IpamPlugin,
        ABOUT,
        &get_env,
        &stdin,
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    std::process::exit(code);
}
