//! `retry-guard`: the operator CLI (see `retry-guard --help`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(host_sim::cli::main(args));
}
