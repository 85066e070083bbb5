//! `retry-guard`: the operator's tool (see `retry-guard --help`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(retry_guard_cli::main(args));
}
