//! Where this workspace keeps what its tools and tests share: the repository root and the
//! release wasm modules. Native builds only (the filter itself never reads a path); defined
//! here, in the crate every tool already depends on, so that each is written once.

use std::path::{Path, PathBuf};

/// Where `cargo build --release --target wasm32-wasip1` puts the workspace's wasm modules,
/// relative to the repository root.
pub const WASM_RELEASE_DIR: &str = "target/wasm32-wasip1/release";

/// The release filter, relative to the repository root (`just build` makes it).
pub const FILTER_WASM: &str = "target/wasm32-wasip1/release/retry_guard.wasm";

/// The environment variable that points the tools and tests at another filter module.
pub const FILTER_WASM_ENV: &str = "RETRY_GUARD_WASM";

/// The repository root this crate was built in (the parent of `filter/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// A release wasm module of this workspace by its file stem (`noop_filter`, `hostcost_filter`,
/// `probe`, `retry_guard`): `<repo>/target/wasm32-wasip1/release/<stem>.wasm`.
pub fn release_wasm(stem: &str) -> PathBuf {
    repo_root()
        .join(WASM_RELEASE_DIR)
        .join(format!("{stem}.wasm"))
}

/// The filter module the tools use by default: `$RETRY_GUARD_WASM` when set and not empty,
/// else [`FILTER_WASM`] under the repository root.
pub fn filter_wasm() -> PathBuf {
    match std::env::var_os(FILTER_WASM_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(FILTER_WASM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_path_is_the_release_module_named_retry_guard() {
        assert_eq!(
            repo_root().join(FILTER_WASM),
            release_wasm("retry_guard"),
            "FILTER_WASM and release_wasm agree"
        );
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("filter").is_dir());
    }
}
