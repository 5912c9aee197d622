fn main() {
    std::process::exit(ferryd::run::main(std::env::args().skip(1).collect()));
}
