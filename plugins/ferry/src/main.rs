//! `ferry`: the CNI plugin binary. All logic lives in the library modules; this only wires the
//! process (env, stdin, stdout) to `ferry_cni::skel::run`.

use std::io::Read;

fn main() {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let mut plugin = ferry::FerryPlugin;
    let code = ferry_cni::skel::run(
        &mut plugin,
        concat!("CNI ferry plugin ", env!("CARGO_PKG_VERSION")),
        &|k: &str| std::env::var(k).ok(),
        &stdin,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
