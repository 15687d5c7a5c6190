//! The `vmlease` command-line tool.
#![forbid(unsafe_code)]
fn main() {
    std::process::exit(vmlease::cli::main(std::env::args().collect()));
}
