//! `ferry`: the CNI plugin binary. All logic lives in the library modules; this only wires the
//! process (arguments, env, stdin, stdout) to `ferry_cni::skel::run`.

use std::io::Read;

const ABOUT: &str = concat!("CNI ferry plugin ", env!("CARGO_PKG_VERSION"));

fn main() {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if let Some(code) = ferry_cni::skel::cli_flags(&args, ABOUT, &mut std::io::stdout().lock()) {
        std::process::exit(code);
    }
    ferry::log::arm(std::env::var("FERRY_FAILPOINT").ok());
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let mut plugin = ferry::FerryPlugin;
    let code = ferry_cni::skel::run(
        &mut plugin,
        ABOUT,
        &|k: &str| std::env::var(k).ok(),
        &stdin,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
