//! Real-Envoy end-to-end harness for the retry-guard proxy-wasm filter.
//!
//! Everything here is std-only and synchronous (threads, no async runtime):
//!
//! - [`backend`]: a scripted HTTP/1.1 upstream on loopback that records every request.
//! - [`envoy`]: finds the pinned Envoy binary, renders a bootstrap (optionally with the wasm
//!   filter), starts Envoy with its own base id and ports, and stops it by PID on drop.
//! - [`client`]: a tiny HTTP/1.1 client for the tests; [`h2`]: a minimal HTTP/2 (h2c) client.
//! - [`tokens`]: confirmation tokens signed with the test key, unsigned JWTs.
//! - [`rfc3339`]: parses the timestamps of the problem documents.
//! - [`gateway`]: the bundled `envoy/envoy.yaml` and Istio manifests as data; the bundled gateway
//!   made fit for a test.
//! - [`fixture`]: one Envoy shared by the tests of a file, stopped at process exit.
//! - [`etcd`]: real etcd members on loopback (plaintext or mutual TLS, certificates made at
//!   test time); [`cluster`]: the bundled cluster gateway `envoy/envoy-cluster.yaml` as data,
//!   and replicas of it made fit for a test or a demo.
//!
//! Every server binds to 127.0.0.1 only.

pub mod backend;
pub mod client;
pub mod cluster;
pub mod envoy;
pub mod etcd;
pub mod fixture;
pub mod gateway;
pub mod h2;
pub mod rfc3339;
pub mod tokens;

use std::fmt;
use std::path::PathBuf;

/// The harness error: a message meant for a human reading a failed test.
///
/// `Debug` prints the message as is, so `fn test() -> Result<()>` failures and `expect` show it
/// readably (with its hints on what to run).
pub struct Error(pub String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(format!("I/O error: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("JSON error: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error(format!($($arg)*)))
    };
}

/// The repository root (one definition for the workspace: [`retry_guard::paths::repo_root`]).
pub use retry_guard::paths::repo_root;

/// Path of a file under `testdata/`.
pub fn testdata_path(rel: &str) -> PathBuf {
    repo_root().join("testdata").join(rel)
}

/// Reads a file under `testdata/` as text.
pub fn read_testdata(rel: &str) -> Result<String> {
    let path = testdata_path(rel);
    std::fs::read_to_string(&path)
        .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))
}

/// Reads `testdata/configs/<name>` and checks that it is JSON.
pub fn plugin_config(name: &str) -> Result<serde_json::Value> {
    let text = read_testdata(&format!("configs/{name}"))?;
    serde_json::from_str(&text).map_err(|e| Error(format!("testdata/configs/{name}: {e}")))
}

/// The values of a header in a list of lower-cased (name, value) pairs, name case-insensitive,
/// in arrival order (what the backend recorded and what the client received).
pub(crate) fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &str,
) -> impl Iterator<Item = &'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}
