//! Errors of the simulator, each phrased to tell the user what happened and what to change.

use std::fmt;

/// A wasm trap (or host-requested abort) inside a callback.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrapInfo {
    /// The VM (`main`, `w0`, …).
    pub vm: String,
    /// The callback that trapped, e.g. `proxy_on_request_headers`.
    pub callback: String,
    /// The context id the callback ran for.
    pub context_id: u32,
    /// The trap message.
    pub message: String,
    /// The wasm backtrace (function names where the module has a name section).
    pub backtrace: String,
}

impl fmt::Display for TrapInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wasm trap in {} (VM {}, context {}): {}",
            self.callback, self.vm, self.context_id, self.message
        )?;
        if !self.backtrace.trim().is_empty() {
            write!(f, "\nwasm backtrace:\n{}", self.backtrace.trim_end())?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in the simulator.
#[derive(Clone, Debug)]
pub enum SimError {
    /// The module could not be read, compiled or linked.
    Load(String),
    /// The plugin did not start (`proxy_on_vm_start` / `proxy_on_configure` returned false).
    Start(String),
    /// A callback trapped.
    Trap(Box<TrapInfo>),
    /// The simulator was used wrongly (bad worker index, bad scenario value, …).
    Usage(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Load(m) | SimError::Start(m) | SimError::Usage(m) => f.write_str(m),
            SimError::Trap(t) => t.fmt(f),
        }
    }
}

impl std::error::Error for SimError {}

/// Result alias.
pub type Result<T> = std::result::Result<T, SimError>;
