//! The root context's work: reading and accepting the plugin configuration (metrics defined,
//! ledger table created) and the periodic tick (held-stream warning, memory gauge).

use std::rc::Rc;

use crate::abi::{self, BufferType, LogLevel, MetricType};
use crate::config::Config;
use crate::ledger::{IndexKey, SlotLedger, Table};
use crate::metrics::{route_counter_name, Counter, RouteCounter};
use crate::stream::Plugin;

use super::host::{AbiHost, HostStore};

/// An accepted configuration of one root context, shared by the root and its streams.
pub(crate) struct Root {
    /// What the streams decide with.
    pub(crate) plugin: Plugin<SlotLedger<HostStore>>,
    /// The counters' metric ids, indexed by [`Counter::index`] (the plugin's, then each
    /// route's).
    metrics: Vec<u32>,
    /// The memory gauge's metric id, if the host defined it.
    memory_gauge: Option<u32>,
    /// The root context's id.
    root_id: u32,
}

impl Root {
    /// The host of one of this root's streams (`stream_id`), or of the root itself (0).
    pub(crate) fn host(&self, stream_id: u32) -> AbiHost<'_> {
        AbiHost {
            metrics: &self.metrics,
            root_id: self.root_id,
            stream_id,
        }
    }

    /// Raises the memory gauge to this VM's linear memory size if that is larger.
    fn record_memory(&self) {
        let Some(id) = self.memory_gauge else {
            return;
        };
        let bytes = (core::arch::wasm32::memory_size(0) as u64).saturating_mul(65_536);
        if abi::metric(id).map_or(true, |current| bytes > current) {
            abi::record_metric(id, bytes);
        }
    }

    /// The periodic work: warn about streams held without a body callback, update the gauge.
    pub(crate) fn tick(&self) {
        let now = abi::now_nanos().map_or(0, |n| n / 1_000_000_000);
        if let Some(warning) = self.plugin.held_warning(now) {
            abi::log(LogLevel::Critical, &warning);
        }
        self.plugin.on_tick(&self.host(0), now);
        self.record_memory();
    }
}

/// Defines the counter `name`; `None` (with a critical log line) if the host refuses.
fn define_counter(name: &str) -> Option<u32> {
    match abi::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            abi::log(
                LogLevel::Critical,
                &format!(
                    "retry-guard: cannot define metric {name}: status {}",
                    status.0
                ),
            );
            None
        }
    }
}

/// Reads, checks and applies the plugin configuration: `None` (with a critical log line that
/// says what to change) if the plugin cannot work with it.
pub(crate) fn configure(root_id: u32) -> Option<Rc<Root>> {
    let bytes = abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default();
    let config = match Config::parse(&bytes) {
        Ok(c) => c,
        Err(e) => {
            abi::log(
                LogLevel::Critical,
                &format!("retry-guard: invalid plugin configuration: {e}"),
            );
            return None;
        }
    };
    let mut metrics = Vec::with_capacity(Counter::ALL.len());
    for c in Counter::ALL {
        metrics.push(define_counter(&c.name())?);
    }
    for r in &config.routes {
        for c in RouteCounter::ALL {
            metrics.push(define_counter(&route_counter_name(c, &r.name))?);
        }
    }
    let memory_gauge = abi::define_metric(MetricType::Gauge, crate::metrics::MEMORY_GAUGE).ok();
    // On the cluster ledger every tracked decision and token sighting goes to etcd; the
    // shared-data table is never read, so it gets one set instead of `max_entries / WAYS` keys
    // created at start.
    let entries = match config.ledger.backend {
        crate::config::LedgerBackend::SharedData => config.max_entries,
        crate::config::LedgerBackend::Etcd(_) => crate::ledger::WAYS as u32,
    };
    let (index_key, made) = match IndexKey::shared(&HostStore, || {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).ok().map(|()| bytes)
    }) {
        Ok(k) => k,
        Err(e) => {
            abi::log(
                LogLevel::Critical,
                &format!("retry-guard: cannot set up the ledger: {e}"),
            );
            return None;
        }
    };
    let table = |t, n| SlotLedger::new(HostStore, t, n, config.window_seconds, index_key);
    let (ledger, tokens) = (
        table(Table::Attempts, entries),
        table(Table::Tokens, entries),
    );
    // Same-body records live a minute: a quarter of the attempt table's size, on either backend.
    let bodies = table(Table::SameBody, (config.max_entries / 4).max(64));
    let created = [&ledger, &tokens, &bodies].iter().try_fold(0, |n, t| {
        Ok::<u32, crate::ledger::LedgerError>(n + t.ensure_slots()?)
    });
    match created {
        Ok(created) => abi::log(
            LogLevel::Info,
            &format!(
                "retry-guard: configured {} route(s); ledger 2 tables x {} sets x {} entries, same-body table {} sets ({} keys created by this VM; set-index secret {})",
                config.routes.len(),
                ledger.sets(),
                crate::ledger::WAYS,
                bodies.sets(),
                created,
                if made { "made by this VM" } else { "read from shared data" }
            ),
        ),
        Err(e) => {
            abi::log(
                LogLevel::Critical,
                &format!("retry-guard: cannot create the ledger table: {e}"),
            );
            return None;
        }
    }
    let root = Rc::new(Root {
        plugin: Plugin::new(config, ledger, tokens, bodies),
        metrics,
        memory_gauge,
        root_id,
    });
    root.record_memory();
    abi::set_tick_period_ms(5_000);
    Some(root)
}
