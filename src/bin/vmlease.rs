//! The `vmlease` command-line tool.
fn main() {
    std::process::exit(vmlease::cli::main(std::env::args().collect()));
}
