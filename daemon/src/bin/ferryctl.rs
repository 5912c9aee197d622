//! `ferryctl`: a look at Ferry on this node (see `ferryctl --help`); the work is in
//! [`ferryd::ctl`].
fn main() {
    std::process::exit(ferryd::ctl::main(std::env::args().skip(1).collect()));
}
