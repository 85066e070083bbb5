//! One proxy-wasm VM (an Envoy worker's, or the main thread's): a wasmtime `Store` and
//! `Instance` of the shared module, its root context and its streams.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use wasmtime::{Engine, Instance, Linker, Memory, Module, Store, TypedFunc, WasmBacktrace};

use crate::abi::MetricType;
use crate::error::{Result, SimError, TrapInfo};
use crate::properties::PluginFacts;
use crate::shared::Shared;
use crate::stream::StreamState;

/// A compiled module plus the linker with every host function: compile once, then start many
/// simulations (in parallel, on any thread) from it.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    module: Module,
    linker: Arc<Linker<HostState>>,
    /// Where the module came from (for messages).
    pub source: String,
    /// Profiling: wasmtime fuel is consumed (guest instructions) and host calls are counted
    /// per import name. Off for normal runs (no cost).
    profile: bool,
    /// Recording: every VM started keeps its callbacks and host calls for a replay (see
    /// [`crate::replay`]). Off for normal runs.
    record: bool,
}

/// Fuel given to each store of a profiling runtime (never runs out in practice).
const PROFILE_FUEL: u64 = u64::MAX / 2;

impl Runtime {
    /// Compiles a module from a `.wasm` file.
    pub fn from_file(path: &Path) -> Result<Runtime> {
        let bytes = std::fs::read(path).map_err(|e| {
            SimError::Load(format!(
                "cannot read the wasm module {}: {e}. Build it first (`just build`, i.e. \
                 `cargo build --release --target wasm32-wasip1 -p retry-guard-filter`) or pass \
                 --wasm <path>.",
                path.display()
            ))
        })?;
        Runtime::from_bytes(&bytes, &path.display().to_string())
    }

    /// Compiles a module from bytes (binary or WAT text).
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Runtime> {
        Runtime::build(bytes, source, false)
    }

    /// A profiling runtime for the benchmark: wasmtime fuel is on (one unit per guest wasm
    /// instruction, roughly) and every host call is counted per import name; read both with
    /// [`crate::Sim::profile`]. Slower than a normal runtime: time requests on a normal one.
    pub fn profiling(path: &Path) -> Result<Runtime> {
        let bytes = std::fs::read(path)
            .map_err(|e| SimError::Load(format!("cannot read {}: {e}", path.display())))?;
        Runtime::build(&bytes, &path.display().to_string(), true)
    }

    /// This runtime, recording: each VM started from it keeps its callbacks and host calls
    /// (see [`crate::replay`]; read them with [`crate::Sim::take_recordings`]).
    pub fn recording(mut self) -> Runtime {
        self.record = true;
        self
    }

    /// Whether this runtime profiles (see [`Runtime::profiling`]).
    pub fn is_profiling(&self) -> bool {
        self.profile
    }

    fn build(bytes: &[u8], source: &str, profile: bool) -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(profile);
        config.epoch_interruption(profile);
        // `RG_PERFMAP=1`: name the compiled guest functions in /tmp/perf-<pid>.map, so `perf
        // record` attributes native samples to guest functions (see `just profile-perf`).
        if std::env::var_os("RG_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)
            .map_err(|e| SimError::Load(format!("cannot create the wasmtime engine: {e}")))?;
        let module = Module::new(&engine, bytes)
            .map_err(|e| SimError::Load(format!("{source}: not a loadable wasm module: {e:?}")))?;
        let mut linker = Linker::new(&engine);
        let provided = crate::host::add_to_linker(&mut linker)
            .map_err(|e| SimError::Load(format!("cannot register host functions: {e}")))?;
        let missing: Vec<String> = module
            .imports()
            .filter(|i| {
                !provided
                    .iter()
                    .any(|(m, n)| *m == i.module() && *n == i.name())
            })
            .map(|i| format!("`{}.{}`", i.module(), i.name()))
            .collect();
        if !missing.is_empty() {
            return Err(SimError::Load(format!(
                "{source} imports {} that host-sim does not provide: {}. Envoy 1.40 refuses such \
                 a module too (\"Failed to load Wasm module due to a missing import\"); remove the \
                 import or build against a proxy-wasm ABI 0.2.1 SDK.",
                if missing.len() == 1 {
                    "a function"
                } else {
                    "functions"
                },
                missing.join(", ")
            )));
        }
        linker.instantiate_pre(&module).map_err(|e| {
            SimError::Load(format!(
                "{source}: an import does not match the host's signature: {e:?}"
            ))
        })?;
        let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
        let has = |n: &str| exports.iter().any(|e| e == n);
        if !has("proxy_abi_version_0_2_1") && !has("proxy_abi_version_0_2_0") {
            let found: Vec<&String> = exports
                .iter()
                .filter(|e| e.starts_with("proxy_abi_version"))
                .collect();
            return Err(SimError::Load(format!(
                "{source} does not export proxy_abi_version_0_2_1 (found: {found:?}); host-sim \
                 runs proxy-wasm ABI 0.2.x modules (Rust SDK 0.2, Go SDK, C++ SDK)."
            )));
        }
        if !has("memory") {
            return Err(SimError::Load(format!(
                "{source} does not export its memory as `memory`"
            )));
        }
        if !has("proxy_on_memory_allocate") && !has("malloc") {
            return Err(SimError::Load(format!(
                "{source} exports neither proxy_on_memory_allocate nor malloc; the host cannot \
                 hand it data"
            )));
        }
        Ok(Runtime {
            engine,
            module,
            linker: Arc::new(linker),
            source: source.to_string(),
            profile,
            record: false,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Samples the guest stack of every VM of this profiling runtime about every `interval`
    /// until the returned guard is dropped: a thread advances the engine's epoch, and each VM
    /// records its backtrace at the next epoch check (function entry or loop back-edge). Read
    /// the samples with [`crate::Sim::function_samples`]. Does nothing on a normal runtime.
    pub fn sample_every(&self, interval: std::time::Duration) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = self.profile.then(|| {
            let engine = self.engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                // A spin with a deadline: thread sleeps are too coarse for microsecond paths.
                let mut next = std::time::Instant::now() + interval;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if std::time::Instant::now() >= next {
                        engine.increment_epoch();
                        next += interval;
                    }
                    std::hint::spin_loop();
                }
            })
        });
        Sampler { stop, thread }
    }
}

/// Stops the sampling thread of [`Runtime::sample_every`] when dropped.
pub struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pending `proxy_http_call`.
#[derive(Clone, Debug)]
pub struct HttpCall {
    /// Token handed to the module.
    pub token: u32,
    /// Target cluster.
    pub cluster: String,
    /// Request headers (pseudo-headers included).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Timeout in milliseconds (0: none).
    pub timeout_ms: u32,
}

/// The answer to an `http_call`, visible during `proxy_on_http_call_response`.
#[derive(Clone, Debug, Default)]
pub struct HttpCallResponse {
    /// Headers, `:status` first.
    pub headers: crate::headers::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers.
    pub trailers: crate::headers::HeaderMap,
}

/// A hook fired at the first call of a host function from one context (used to interleave
/// concurrent requests at the shared-data level). Returns an error message on failure.
pub struct Hook {
    /// Host function name, e.g. `proxy_set_shared_data`.
    pub function: String,
    /// Context the call must come from.
    pub context_id: u32,
    /// What to run.
    pub run: Box<dyn FnOnce() -> std::result::Result<(), String>>,
}

/// The host-side state of one VM (the wasmtime `Store` data).
pub struct HostState {
    /// State shared with the other VMs.
    pub shared: Arc<Shared>,
    /// `main` or `w<N>`.
    pub label: String,
    /// Index used for queue owners.
    pub vm_index: usize,
    /// Plugin facts (properties).
    pub plugin: PluginFacts,
    /// The plugin configuration bytes.
    pub plugin_config: Vec<u8>,
    /// The VM configuration bytes.
    pub vm_config: Vec<u8>,
    /// `proxy_on_configure` is running (the plugin configuration buffer is readable).
    pub in_configure: bool,
    /// WASI environment variables.
    pub env: Vec<(String, String)>,
    /// Envoy's log level (`proxy_get_log_level`).
    pub log_level: u32,
    /// The root context id.
    pub root_id: u32,
    /// Next context id to hand out.
    pub next_context_id: u32,
    /// The context of the callback running now.
    pub current: u32,
    /// Set by `proxy_set_effective_context` (0: none).
    pub effective: u32,
    /// Live streams by context id.
    pub streams: HashMap<u32, StreamState>,
    /// Tick period (0: off).
    pub tick_period_ms: u64,
    /// Monotonic time of the next tick.
    pub next_tick_ns: u64,
    /// Metric ids handed to this VM: id → (type, name).
    pub metric_ids: HashMap<u32, (MetricType, String)>,
    /// Last id handed out per metric type.
    pub last_metric_id: [u32; 3],
    /// http_call targets known to this Envoy.
    pub clusters: Arc<crate::upstream::Clusters>,
    /// Calls made during the current callback, answered after it returns.
    pub pending_calls: Vec<HttpCall>,
    /// Last http_call token handed out.
    pub last_http_token: u32,
    /// The response being delivered, during `proxy_on_http_call_response`.
    pub http_response: Option<HttpCallResponse>,
    /// `proxy_get_status` value.
    pub status: (u32, Vec<u8>),
    /// The module's memory.
    pub memory: Option<Memory>,
    /// The module's allocator.
    pub alloc: Option<TypedFunc<i32, i32>>,
    /// An interleaving hook, see [`Hook`].
    pub hook: Option<Hook>,
    /// Error from a hook, reported by the caller.
    pub hook_error: Option<String>,
    /// Called before every host call (see [`crate::sched`]); `None`: run freely.
    pub scheduler: Option<crate::sched::Scheduler>,
    /// Count of host calls (for the benchmark's curiosity).
    pub host_calls: u64,
    /// Host calls per import name, when the runtime profiles (`None` otherwise).
    pub call_counts: Option<std::collections::BTreeMap<&'static str, u64>>,
    /// Fuel left at every callback entry and return and every host call, while a fuel trace
    /// is on ([`crate::Sim::trace_fuel`]; `None` otherwise): consecutive events bound the
    /// guest instructions run between them.
    pub fuel_trace: Option<Vec<FuelEvent>>,
    /// Guest stack samples per function name, when the runtime profiles (`None` otherwise):
    /// taken whenever the engine's epoch advances (see [`Runtime::sample_every`]).
    pub samples: Option<FunctionSamples>,
    /// The replay recording, when the runtime records ([`Runtime::recording`]).
    pub replay: Option<crate::replay::Recorder>,
}

/// One event of a fuel trace: where the guest was, and the fuel it had left there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuelEvent {
    /// `→ proxy_on_…` (the host enters a callback), `← proxy_on_…` (it returns) or the
    /// name of a host function the guest calls.
    pub at: String,
    /// Fuel left.
    pub fuel_left: u64,
}

/// Guest stack samples of a profiling VM, per function name (see [`Runtime::sample_every`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionSamples {
    /// Samples taken.
    pub total: u64,
    /// Per function: samples with the function anywhere on the stack ("inclusive").
    pub inclusive: std::collections::BTreeMap<String, u64>,
    /// Per (function on top of the stack, its caller): samples. A function's "self" samples
    /// are the sum over its callers.
    pub callers: std::collections::BTreeMap<(String, String), u64>,
}

impl FunctionSamples {
    /// Adds `other`'s samples to these.
    pub fn add(&mut self, other: &FunctionSamples) {
        self.total += other.total;
        for (k, v) in &other.inclusive {
            *self.inclusive.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.callers {
            *self.callers.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Records one backtrace (innermost frame first).
    fn record(&mut self, bt: &WasmBacktrace) {
        let mut frames = bt.frames().iter().map(|f| match f.func_name() {
            Some(n) => n.to_string(),
            None => format!("<wasm function {}>", f.func_index()),
        });
        let Some(top) = frames.next() else { return };
        self.total += 1;
        let mut seen = std::collections::BTreeSet::new();
        let mut frames = frames.peekable();
        let caller = frames.peek().cloned().unwrap_or_default();
        *self.callers.entry((top.clone(), caller)).or_insert(0) += 1;
        for name in std::iter::once(top).chain(frames) {
            if seen.insert(name.clone()) {
                *self.inclusive.entry(name).or_insert(0) += 1;
            }
        }
    }
}

impl HostState {
    /// The context host calls act on: the effective context if set and alive, else the
    /// current one.
    pub fn context(&self) -> u32 {
        if self.effective != 0
            && (self.effective == self.root_id || self.streams.contains_key(&self.effective))
        {
            self.effective
        } else {
            self.current
        }
    }

    /// The stream host calls act on, if the context is a stream.
    pub fn stream_mut(&mut self) -> Option<&mut StreamState> {
        let id = self.context();
        self.streams.get_mut(&id)
    }

    /// The stream host calls act on (shared).
    pub fn stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.context())
    }

    /// Logs a line from this VM.
    pub fn log(&self, level: u32, message: String) {
        self.shared.log(&self.label, self.context(), level, message);
    }
}

type F1 = TypedFunc<i32, ()>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Exported callbacks the host calls.
#[derive(Default)]
struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    on_context_create: Option<F2>,
    on_vm_start: Option<F2R>,
    on_configure: Option<F2R>,
    on_tick: Option<F1>,
    on_request_headers: Option<F3R>,
    on_request_body: Option<F3R>,
    on_request_trailers: Option<F2R>,
    on_response_headers: Option<F3R>,
    on_response_body: Option<F3R>,
    on_response_trailers: Option<F2R>,
    on_http_call_response: Option<F5>,
    on_queue_ready: Option<F2>,
    on_log: Option<F1>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<F1>,
}

/// Settings for one VM.
pub struct VmSettings {
    /// `main` or `w<N>`.
    pub label: String,
    /// Index (queue owner).
    pub vm_index: usize,
    /// Plugin facts.
    pub plugin: PluginFacts,
    /// Plugin configuration.
    pub plugin_config: Vec<u8>,
    /// VM configuration.
    pub vm_config: Vec<u8>,
    /// WASI environment.
    pub env: Vec<(String, String)>,
    /// Envoy log level.
    pub log_level: u32,
    /// http_call clusters.
    pub clusters: Arc<crate::upstream::Clusters>,
}

/// One VM.
pub struct Vm {
    /// The wasmtime store (host state inside).
    pub store: Store<HostState>,
    exports: Exports,
    /// Set when a callback trapped: Envoy marks the VM failed and answers every later stream
    /// with 503 `wasm_fail_stream` without calling into it.
    pub failed: Option<TrapInfo>,
}

fn typed<P, R>(
    store: &mut Store<HostState>,
    inst: &Instance,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    match inst.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|e| {
            SimError::Load(format!(
                "the module exports {name} with an unexpected signature ({e}); a proxy-wasm ABI \
                 0.2.1 module must use the SDK's signature"
            ))
        }),
    }
}

impl Vm {
    /// Instantiates the module and starts the plugin the way Envoy does: `_initialize`,
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn start(rt: &Runtime, shared: Arc<Shared>, s: VmSettings) -> Result<Vm> {
        let state = HostState {
            shared,
            label: s.label.clone(),
            vm_index: s.vm_index,
            plugin: s.plugin,
            plugin_config: s.plugin_config,
            vm_config: s.vm_config,
            in_configure: false,
            env: s.env,
            log_level: s.log_level,
            root_id: 1,
            next_context_id: 2,
            current: 0,
            effective: 0,
            streams: HashMap::new(),
            tick_period_ms: 0,
            next_tick_ns: 0,
            metric_ids: HashMap::new(),
            last_metric_id: [0, 1, 2],
            clusters: s.clusters,
            pending_calls: Vec::new(),
            last_http_token: 0,
            http_response: None,
            status: (0, Vec::new()),
            memory: None,
            alloc: None,
            hook: None,
            hook_error: None,
            scheduler: None,
            host_calls: 0,
            call_counts: rt.profile.then(Default::default),
            samples: rt.profile.then(Default::default),
            fuel_trace: None,
            replay: rt.record.then(Default::default),
        };
        let mut store = Store::new(&rt.engine, state);
        if rt.profile {
            store
                .set_fuel(PROFILE_FUEL)
                .map_err(|e| SimError::Load(format!("cannot set fuel: {e}")))?;
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut ctx| {
                let bt = WasmBacktrace::capture(&ctx);
                if let Some(s) = ctx.data_mut().samples.as_mut() {
                    s.record(&bt);
                }
                Ok(wasmtime::UpdateDeadline::Continue(1))
            });
            // Only ticks that arrive while the guest runs count: every entry into the guest
            // (a callback, or the return from a host function) restarts the deadline, so time
            // spent in the host is not charged to the next guest function entered.
            store.call_hook(|mut ctx, hook| {
                if matches!(
                    hook,
                    wasmtime::CallHook::CallingWasm | wasmtime::CallHook::ReturningFromHost
                ) {
                    ctx.set_epoch_deadline(1);
                }
                Ok(())
            });
        }
        let instance = rt
            .linker
            .instantiate(&mut store, &rt.module)
            .map_err(|e| SimError::Load(format!("{}: instantiation failed: {e:?}", rt.source)))?;
        let memory = instance.get_memory(&mut store, "memory");
        store.data_mut().memory = memory;
        let alloc = match typed::<i32, i32>(&mut store, &instance, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<i32, i32>(&mut store, &instance, "malloc")?,
        };
        store.data_mut().alloc = alloc;
        let exports = Exports {
            initialize: typed(&mut store, &instance, "_initialize")?,
            on_context_create: typed(&mut store, &instance, "proxy_on_context_create")?,
            on_vm_start: typed(&mut store, &instance, "proxy_on_vm_start")?,
            on_configure: typed(&mut store, &instance, "proxy_on_configure")?,
            on_tick: typed(&mut store, &instance, "proxy_on_tick")?,
            on_request_headers: typed(&mut store, &instance, "proxy_on_request_headers")?,
            on_request_body: typed(&mut store, &instance, "proxy_on_request_body")?,
            on_request_trailers: typed(&mut store, &instance, "proxy_on_request_trailers")?,
            on_response_headers: typed(&mut store, &instance, "proxy_on_response_headers")?,
            on_response_body: typed(&mut store, &instance, "proxy_on_response_body")?,
            on_response_trailers: typed(&mut store, &instance, "proxy_on_response_trailers")?,
            on_http_call_response: typed(&mut store, &instance, "proxy_on_http_call_response")?,
            on_queue_ready: typed(&mut store, &instance, "proxy_on_queue_ready")?,
            on_log: typed(&mut store, &instance, "proxy_on_log")?,
            on_done: typed(&mut store, &instance, "proxy_on_done")?,
            on_delete: typed(&mut store, &instance, "proxy_on_delete")?,
        };
        let mut vm = Vm {
            store,
            exports,
            failed: None,
        };
        let root = vm.store.data().root_id as i32;
        let label = s.label;
        if let Some(f) = vm.exports.initialize.clone() {
            vm.call("_initialize", 0, &[], |st| f.call(st, ()))
                .map_err(|t| SimError::Start(format!("the plugin did not start: {t}")))?;
        }
        if let Some(f) = vm.exports.on_context_create.clone() {
            vm.call(
                "proxy_on_context_create",
                root as u32,
                &[root.into(), 0],
                |st| f.call(st, (root, 0)),
            )
            .map_err(|t| SimError::Start(format!("the plugin did not start: {t}")))?;
        }
        if let Some(f) = vm.exports.on_vm_start.clone() {
            let size = vm.store.data().vm_config.len() as i32;
            let ok = vm
                .call(
                    "proxy_on_vm_start",
                    root as u32,
                    &[root.into(), size.into()],
                    |st| f.call(st, (root, size)),
                )
                .map_err(|t| SimError::Start(format!("the plugin did not start: {t}")))?;
            if ok == 0 {
                return Err(SimError::Start(format!(
                    "proxy_on_vm_start returned false on VM {label}: Envoy would fail the VM. {}",
                    vm.recent_problems()
                )));
            }
        }
        if let Some(f) = vm.exports.on_configure.clone() {
            let size = vm.store.data().plugin_config.len() as i32;
            vm.store.data_mut().in_configure = true;
            let ok = vm.call(
                "proxy_on_configure",
                root as u32,
                &[root.into(), size.into()],
                |st| f.call(st, (root, size)),
            );
            vm.store.data_mut().in_configure = false;
            let ok = ok.map_err(|t| SimError::Start(format!("the plugin did not start: {t}")))?;
            if ok == 0 {
                return Err(SimError::Start(format!(
                    "proxy_on_configure returned false on VM {label}: Envoy rejects the plugin \
                     configuration. {}",
                    vm.recent_problems()
                )));
            }
        }
        Ok(vm)
    }

    /// The VM's warning-or-worse log lines, for start-up errors.
    fn recent_problems(&self) -> String {
        let label = &self.store.data().label;
        let log = crate::shared::lock(&self.store.data().shared.log);
        let lines: Vec<String> = log
            .iter()
            .filter(|l| &l.vm == label && matches!(l.level, "warn" | "error" | "critical"))
            .map(|l| format!("[{}] {}", l.level, l.message))
            .collect();
        if lines.is_empty() {
            "The plugin logged nothing at warn level or above.".into()
        } else {
            format!("The plugin logged:\n  {}", lines.join("\n  "))
        }
    }

    /// Fuel consumed so far (guest instructions), 0 unless the runtime profiles.
    pub fn fuel_consumed(&self) -> u64 {
        self.store
            .get_fuel()
            .map(|left| PROFILE_FUEL.saturating_sub(left))
            .unwrap_or(0)
    }

    /// The VM label.
    pub fn label(&self) -> &str {
        &self.store.data().label
    }

    /// Records a fuel-trace event while a trace is on.
    fn trace_fuel_at(&mut self, at: impl FnOnce() -> String) {
        if self.store.data().fuel_trace.is_none() {
            return;
        }
        let fuel_left = self.store.get_fuel().unwrap_or(0);
        if let Some(t) = self.store.data_mut().fuel_trace.as_mut() {
            t.push(FuelEvent {
                at: at(),
                fuel_left,
            });
        }
    }

    /// Runs one callback with `ctx` as the current context; a trap marks the VM failed.
    fn call<R>(
        &mut self,
        name: &str,
        ctx: u32,
        args: &[i64],
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> std::result::Result<R, TrapInfo> {
        if let Some(t) = &self.failed {
            return Err(t.clone());
        }
        {
            let st = self.store.data_mut();
            st.current = ctx;
            st.effective = 0;
            if let Some(r) = st.replay.as_mut() {
                r.callback(name, args);
            }
        }
        self.trace_fuel_at(|| format!("→ {name}"));
        let result = f(&mut self.store);
        self.trace_fuel_at(|| format!("← {name}"));
        {
            let st = self.store.data_mut();
            st.current = 0;
            st.effective = 0;
        }
        result.map_err(|e| {
            let backtrace = e
                .downcast_ref::<WasmBacktrace>()
                .map(|b| b.to_string())
                .unwrap_or_default();
            let message = match e.downcast_ref::<wasmtime::Trap>() {
                Some(t) => t.to_string(),
                None => e.to_string(),
            };
            let info = TrapInfo {
                vm: self.store.data().label.clone(),
                callback: name.to_string(),
                context_id: ctx,
                message,
                backtrace,
            };
            self.failed = Some(info.clone());
            info
        })
    }

    /// Allocates a context id for a new stream and calls `proxy_on_context_create`.
    pub fn create_stream(&mut self, state: StreamState) -> std::result::Result<u32, TrapInfo> {
        let id = {
            let st = self.store.data_mut();
            let id = st.next_context_id;
            st.next_context_id += 1;
            st.streams.insert(id, state);
            id
        };
        let root = self.store.data().root_id as i32;
        if let Some(f) = self.exports.on_context_create.clone() {
            self.call(
                "proxy_on_context_create",
                id,
                &[id.into(), root.into()],
                |st| f.call(st, (id as i32, root)),
            )?;
        }
        Ok(id)
    }

    /// `proxy_on_request_headers` (Continue when not exported).
    pub fn on_request_headers(
        &mut self,
        id: u32,
        n: usize,
        eos: bool,
    ) -> std::result::Result<i32, TrapInfo> {
        match self.exports.on_request_headers.clone() {
            Some(f) => self.call(
                "proxy_on_request_headers",
                id,
                &[id.into(), n as i64, eos.into()],
                |st| f.call(st, (id as i32, n as i32, i32::from(eos))),
            ),
            None => Ok(0),
        }
    }

    /// `proxy_on_request_body`.
    pub fn on_request_body(
        &mut self,
        id: u32,
        size: usize,
        eos: bool,
    ) -> std::result::Result<i32, TrapInfo> {
        match self.exports.on_request_body.clone() {
            Some(f) => self.call(
                "proxy_on_request_body",
                id,
                &[id.into(), size as i64, eos.into()],
                |st| f.call(st, (id as i32, size as i32, i32::from(eos))),
            ),
            None => Ok(0),
        }
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(&mut self, id: u32, n: usize) -> std::result::Result<i32, TrapInfo> {
        match self.exports.on_request_trailers.clone() {
            Some(f) => self.call(
                "proxy_on_request_trailers",
                id,
                &[id.into(), n as i64],
                |st| f.call(st, (id as i32, n as i32)),
            ),
            None => Ok(0),
        }
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        id: u32,
        n: usize,
        eos: bool,
    ) -> std::result::Result<i32, TrapInfo> {
        match self.exports.on_response_headers.clone() {
            Some(f) => self.call(
                "proxy_on_response_headers",
                id,
                &[id.into(), n as i64, eos.into()],
                |st| f.call(st, (id as i32, n as i32, i32::from(eos))),
            ),
            None => Ok(0),
        }
    }

    /// `proxy_on_response_body`.
    pub fn on_response_body(
        &mut self,
        id: u32,
        size: usize,
        eos: bool,
    ) -> std::result::Result<i32, TrapInfo> {
        match self.exports.on_response_body.clone() {
            Some(f) => self.call(
                "proxy_on_response_body",
                id,
                &[id.into(), size as i64, eos.into()],
                |st| f.call(st, (id as i32, size as i32, i32::from(eos))),
            ),
            None => Ok(0),
        }
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(
        &mut self,
        id: u32,
        n: usize,
    ) -> std::result::Result<i32, TrapInfo> {
        match self.exports.on_response_trailers.clone() {
            Some(f) => self.call(
                "proxy_on_response_trailers",
                id,
                &[id.into(), n as i64],
                |st| f.call(st, (id as i32, n as i32)),
            ),
            None => Ok(0),
        }
    }

    /// `proxy_on_log`.
    pub fn on_log(&mut self, id: u32) -> std::result::Result<(), TrapInfo> {
        match self.exports.on_log.clone() {
            Some(f) => self.call("proxy_on_log", id, &[id.into()], |st| f.call(st, id as i32)),
            None => Ok(()),
        }
    }

    /// `proxy_on_done` then `proxy_on_delete`; forgets the stream.
    pub fn finish_stream(&mut self, id: u32) -> std::result::Result<(), TrapInfo> {
        let mut result = Ok(());
        if let Some(f) = self.exports.on_done.clone() {
            result = self
                .call("proxy_on_done", id, &[id.into()], |st| {
                    f.call(st, id as i32)
                })
                .map(|_| ());
        }
        if result.is_ok() {
            if let Some(f) = self.exports.on_delete.clone() {
                result = self.call("proxy_on_delete", id, &[id.into()], |st| {
                    f.call(st, id as i32)
                });
            }
        }
        self.store.data_mut().streams.remove(&id);
        result
    }

    /// `proxy_on_tick` on the root context.
    pub fn on_tick(&mut self) -> std::result::Result<(), TrapInfo> {
        let root = self.store.data().root_id;
        match self.exports.on_tick.clone() {
            Some(f) => self.call("proxy_on_tick", root, &[root.into()], |st| {
                f.call(st, root as i32)
            }),
            None => Ok(()),
        }
    }

    /// `proxy_on_queue_ready`.
    pub fn on_queue_ready(&mut self, ctx: u32, token: u32) -> std::result::Result<(), TrapInfo> {
        match self.exports.on_queue_ready.clone() {
            Some(f) => self.call(
                "proxy_on_queue_ready",
                ctx,
                &[ctx.into(), token.into()],
                |st| f.call(st, (ctx as i32, token as i32)),
            ),
            None => Ok(()),
        }
    }

    /// Answers the http_calls made during the last callback (Envoy answers them
    /// asynchronously, after the callback returned), each with `proxy_on_http_call_response`
    /// on the root context.
    pub fn deliver_http_calls(&mut self) -> std::result::Result<(), TrapInfo> {
        loop {
            let calls = std::mem::take(&mut self.store.data_mut().pending_calls);
            if calls.is_empty() {
                return Ok(());
            }
            for call in calls {
                let clusters = self.store.data().clusters.clone();
                let answer = clusters.answer(&call);
                let root = self.store.data().root_id;
                let (nh, nb, nt) = match &answer {
                    Ok(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
                    Err(_) => (0, 0, 0),
                };
                {
                    let st = self.store.data_mut();
                    match answer {
                        Ok(r) => {
                            st.status = (0, Vec::new());
                            st.http_response = Some(r);
                        }
                        Err(_) => {
                            // Envoy: onHttpCallFailure → BrokenConnection, "reset".
                            st.status = (11, b"reset".to_vec());
                            st.http_response = None;
                        }
                    }
                }
                let r = match self.exports.on_http_call_response.clone() {
                    Some(f) => self.call(
                        "proxy_on_http_call_response",
                        root,
                        &[
                            root.into(),
                            call.token.into(),
                            nh as i64,
                            nb as i64,
                            nt as i64,
                        ],
                        |st| {
                            f.call(
                                st,
                                (
                                    root as i32,
                                    call.token as i32,
                                    nh as i32,
                                    nb as i32,
                                    nt as i32,
                                ),
                            )
                        },
                    ),
                    None => Ok(()),
                };
                let st = self.store.data_mut();
                st.http_response = None;
                st.status = (0, Vec::new());
                r?;
            }
        }
    }
}
