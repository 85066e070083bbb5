//! [`Plugin`]: one configured plugin as its streams see it, and the streams whose headers it
//! holds waiting for their body.

use std::cell::{Cell, RefCell};

use crate::config::Config;

/// How long a stream may wait for its first body callback after the filter held its headers
/// before the VM logs the likely cause (a missing `allow_on_headers_stop_iteration`).
pub const HELD_WARN_SECONDS: u64 = 10;
/// At most one such log line per VM per this many seconds.
pub const HELD_WARN_EVERY_SECONDS: u64 = 60;

/// One configured plugin as its streams see it: the configuration, the ledger, and the streams
/// whose headers are held waiting for their body. One per root context of a VM, shared by the
/// VM's streams.
pub struct Plugin<L> {
    /// The accepted configuration.
    pub config: Config,
    /// The ledger decisions are made against.
    pub ledger: L,
    /// Streams whose headers are held waiting for the body: (context id, since).
    held: RefCell<Vec<(u32, u64)>>,
    /// When the held-stream warning was last logged.
    warned_at: Cell<u64>,
}

impl<L> Plugin<L> {
    /// A plugin with no stream held.
    pub fn new(config: Config, ledger: L) -> Plugin<L> {
        Plugin {
            config,
            ledger,
            held: RefCell::new(Vec::new()),
            warned_at: Cell::new(0),
        }
    }

    pub(super) fn hold(&self, id: u32, now: u64) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.push((id, now));
        }
    }

    /// Stream `id` no longer waits for its body (it got a body callback, or it ended).
    pub fn release(&self, id: u32) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.retain(|(h, _)| *h != id);
        }
    }

    /// How many streams are held at the moment.
    pub fn held_count(&self) -> usize {
        self.held.try_borrow().map_or(0, |held| held.len())
    }

    /// Envoy without `allow_on_headers_stop_iteration: true` never delivers the body after a
    /// pause in the headers callback; the request would hang silently. The critical log line
    /// that says so, when a stream has been held for [`HELD_WARN_SECONDS`] at `now` and the
    /// last such line is [`HELD_WARN_EVERY_SECONDS`] old (then counts as logged).
    pub fn held_warning(&self, now: u64) -> Option<String> {
        let stuck = match self.held.try_borrow() {
            Ok(held) => held
                .iter()
                .filter(|(_, since)| now.saturating_sub(*since) >= HELD_WARN_SECONDS)
                .count(),
            Err(_) => 0,
        };
        if stuck == 0 || now.saturating_sub(self.warned_at.get()) < HELD_WARN_EVERY_SECONDS {
            return None;
        }
        self.warned_at.set(now);
        Some(format!(
            "retry-guard: {stuck} request(s) held for their body over {HELD_WARN_SECONDS} s without a body callback; \
             set `allow_on_headers_stop_iteration: true` in the wasm filter's config (envoy.extensions.wasm.v3.PluginConfig), \
             otherwise Envoy never delivers the body of guarded requests"
        ))
    }
}
