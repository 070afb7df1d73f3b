//! The `vessel` binary: all the work is in the library.

fn main() {
    std::process::exit(vessel_cli::cli::main());
}
