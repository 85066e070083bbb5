//! The simulated Envoy: N worker VMs (plus the main-thread VM) over one shared store, a
//! virtual clock that fires ticks, and the HTTP stream lifecycle with an upstream model.
//!
//! The stream lifecycle follows Envoy 1.40 with the wasm filter as the only HTTP filter before
//! the router (see `host-sim/README.md`, "What host-sim reproduces"):
//!
//! 1. `proxy_on_context_create`, request headers (the filter sees `:authority :path :method
//!    :scheme`, the client's headers, `x-forwarded-proto` and an `x-request-id` Envoy generates
//!    when the client sent none);
//! 2. body chunks: after `Pause` in the headers callback the headers are held and the body
//!    callbacks still arrive when `allow_on_headers_stop_iteration` is true (the default here,
//!    and required by retry-guard); when false, a pause withholds the body and the request
//!    stalls. `Pause` in a body callback buffers; the next callback reports the cumulative size;
//! 3. the upstream (or the filter's local reply, which stops it);
//! 4. response headers and body callbacks — also for local replies, the filter's own and the
//!    router's (`UF`, `UH`, `UT`, `UC`, with Envoy's flags and details);
//! 5. `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Result, SimError, TrapInfo};
use crate::headers::HeaderMap;
use crate::properties::PluginFacts;
use crate::shared::{lock, LogLine, Shared};
use crate::stream::{StreamFacts, StreamState};
use crate::upstream::{router_reply, Clusters, Upstream};
use crate::vm::{Hook, Runtime, Vm, VmSettings};

/// 2026-01-01T00:00:00Z, the default start of the virtual clock.
pub const DEFAULT_START_UNIX: u64 = 1_767_225_600;

/// An Envoy route of the simulated listener (how `xds.route_name` is chosen).
#[derive(Clone, Debug)]
pub struct RouteRule {
    /// Route name.
    pub name: String,
    /// Exact path (query ignored).
    pub path: Option<String>,
    /// Path prefix.
    pub prefix: Option<String>,
    /// Cluster (`xds.cluster_name`).
    pub cluster: String,
}

/// The routes of the harness bootstrap (`retry_guard_e2e::envoy::Bootstrap::harness`): `token` for `/oauth/token`, `catch_all`.
pub fn default_routes() -> Vec<RouteRule> {
    vec![
        RouteRule {
            name: "token".into(),
            path: Some("/oauth/token".into()),
            prefix: None,
            cluster: "backend".into(),
        },
        RouteRule {
            name: "catch_all".into(),
            path: None,
            prefix: Some("/".into()),
            cluster: "backend".into(),
        },
    ]
}

/// Settings of a simulated Envoy.
#[derive(Debug)]
pub struct SimConfig {
    /// The plugin configuration (`configuration` of the wasm filter).
    pub plugin_config: Vec<u8>,
    /// The VM configuration (`vm_config.configuration`).
    pub vm_config: Vec<u8>,
    /// Worker threads, one VM each (Envoy `--concurrency`). Default 2.
    pub workers: usize,
    /// Also run the main-thread VM (configured and ticked like Envoy's, serves no requests).
    pub main_vm: bool,
    /// The wasm filter's `allow_on_headers_stop_iteration` (retry-guard requires true).
    pub allow_on_headers_stop_iteration: bool,
    /// Seed of the random source (`random_get`, generated request ids).
    pub seed: u64,
    /// Virtual wall clock at start, seconds since the epoch.
    pub start_unix: u64,
    /// `plugin_name` (`config.name`).
    pub plugin_name: String,
    /// `plugin_root_id` (`config.root_id`).
    pub root_id: String,
    /// `vm_id` (one shared-data store per vm_id).
    pub vm_id: String,
    /// Envoy's log level for `proxy_get_log_level` (2 = info).
    pub log_level: u32,
    /// Route timeout in milliseconds (the bootstrap's 30 s).
    pub route_timeout_ms: u64,
    /// The route retries `connect-failure` (so a refused connection also sets `URX`).
    pub retry_connect_failure: bool,
    /// Listener routes.
    pub routes: Vec<RouteRule>,
    /// `http_call` clusters.
    pub clusters: Clusters,
    /// WASI environment variables.
    pub env: Vec<(String, String)>,
    /// Echo log lines at or above this level to stderr.
    pub echo_log: Option<u32>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            workers: 2,
            main_vm: true,
            allow_on_headers_stop_iteration: true,
            seed: 1,
            start_unix: DEFAULT_START_UNIX,
            plugin_name: "retry_guard".into(),
            root_id: String::new(),
            vm_id: "retry_guard".into(),
            log_level: 2,
            route_timeout_ms: 30_000,
            retry_connect_failure: true,
            routes: default_routes(),
            clusters: Clusters::default(),
            env: Vec::new(),
            echo_log: None,
        }
    }
}

/// Profiling counters of a simulation (see [`Sim::profile`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Profile {
    /// Host calls per import name.
    pub host_calls: BTreeMap<String, u64>,
    /// Fuel consumed (about one unit per guest wasm instruction).
    pub fuel: u64,
}

impl Profile {
    /// `self - earlier`, for one measured stretch.
    pub fn since(&self, earlier: &Profile) -> Profile {
        let host_calls = self
            .host_calls
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v - earlier.host_calls.get(k).copied().unwrap_or(0),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect();
        Profile {
            host_calls,
            fuel: self.fuel - earlier.fuel,
        }
    }
}

/// A client request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Worker (VM) that handles it.
    pub worker: usize,
    /// Method.
    pub method: String,
    /// `:path` (with query).
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// `:scheme`.
    pub scheme: String,
    /// Client headers, in order (names are lower-cased by the host).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body chunks as Envoy's codec delivers them (empty: no body).
    pub body: Vec<Vec<u8>>,
    /// Request trailers.
    pub trailers: Vec<(String, String)>,
    /// Force `xds.route_name` (default: from the listener routes).
    pub route_name: Option<String>,
    /// mTLS peer URI SAN (`connection.uri_san_peer_certificate`).
    pub peer_identity: Option<String>,
    /// Dynamic metadata filters before the plugin wrote (namespace -> JSON object), e.g.
    /// `jwt_authn`'s verified payload; the `metadata` property.
    pub dynamic_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The client goes away before the whole response reached it (`None`: it reads it all).
    pub disconnect: Option<Disconnect>,
}

/// When a client closes its connection before the response is complete. Envoy then resets
/// the upstream request (if any), sets the response flag `DC` and still runs `proxy_on_log`
/// (checked on Envoy 1.40 by `envoy/tests/undelivered.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// After the upstream received the request, before any response headers: no response
    /// callback runs, `response.code` is absent.
    BeforeResponse,
    /// After the response headers passed the filter, while the body was on its way: the
    /// response body callback does not run.
    DuringResponseBody,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            worker: 0,
            method: method.into(),
            path: path.into(),
            authority: "retry-guard.test".into(),
            scheme: "http".into(),
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            route_name: None,
            peer_identity: None,
            disconnect: None,
            dynamic_metadata: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body (one chunk).
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.body = vec![body.as_ref().to_vec()];
        self
    }

    /// Sets the worker.
    pub fn on_worker(mut self, w: usize) -> Request {
        self.worker = w;
        self
    }
}

/// What the upstream received.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers as forwarded (after the filter's changes; lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    #[serde(serialize_with = "ser_lossy")]
    pub body: Vec<u8>,
}

fn ser_lossy<S: serde::Serializer>(b: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

impl Received {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One finished (or stalled) exchange.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exchange {
    /// Worker index.
    pub worker: usize,
    /// The stream's context id in its VM.
    pub context_id: u32,
    /// Virtual time the request arrived (ns since the epoch).
    pub started_ns: u64,
    /// Virtual time the exchange ended.
    pub finished_ns: u64,
    /// Status the client got (0: none, the request stalled).
    pub status: u16,
    /// Response headers the client got.
    pub headers: Vec<(String, String)>,
    /// Response body the client got.
    #[serde(serialize_with = "ser_lossy")]
    pub body: Vec<u8>,
    /// The filter answered with a local reply.
    pub local_reply: bool,
    /// What the upstream received (`None`: it never got the request).
    pub upstream: Option<Received>,
    /// `response.flags`.
    pub response_flags: u64,
    /// `response.code_details`.
    pub code_details: String,
    /// Filter state written with `set_property` (`wasm.<path>` → value, lossy text).
    pub filter_state: BTreeMap<String, String>,
    /// Log lines written for this stream.
    pub logs: Vec<LogLine>,
    /// A trap in one of this stream's callbacks.
    pub trap: Option<TrapInfo>,
    /// Why the stream hangs, if it does (Envoy would time it out much later).
    pub stalled: Option<String>,
    /// Host-side misuse (a second local reply, …).
    pub misuse: Vec<String>,
}

impl Exchange {
    /// First value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The response body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

enum End {
    Forwarded { headers: HeaderMap, body: Vec<u8> },
    LocalReply,
    Failed,
    Stalled(String),
}

/// A request whose request side has run; [`Sim::complete`] runs the rest.
pub struct Pending {
    worker: usize,
    context_id: u32,
    log_start: usize,
    started_ns: u64,
    end: End,
    trap: Option<TrapInfo>,
    disconnect: Option<Disconnect>,
}

impl Pending {
    /// The worker.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Whether the request reached the upstream stage (not answered locally, not stalled).
    pub fn forwarded(&self) -> bool {
        matches!(self.end, End::Forwarded { .. })
    }
}

/// A simulated Envoy process with one wasm filter. See the module docs.
pub struct Sim {
    cfg: SimConfig,
    shared: Arc<Shared>,
    workers: Vec<RefCell<Vm>>,
    main: Option<RefCell<Vm>>,
    /// Index of the first worker ([`Sim::with_shared`]; 0 for [`Sim::new`]).
    first_worker: usize,
    seq: std::cell::Cell<u64>,
    /// Traps in ticks and queue callbacks, in order.
    pub background_traps: RefCell<Vec<TrapInfo>>,
}

const STOP_ALL_MSG: &str = "on_http_request_headers returned Pause and \
    allow_on_headers_stop_iteration is false: proxy-wasm-cpp-host turns the pause into \
    StopAllIterationAndWatermark and Envoy never delivers the body callbacks, so the request \
    hangs until the stream times out. Set `allow_on_headers_stop_iteration: true` in the wasm \
    filter's config (scenario field \"allow_on_headers_stop_iteration\")";

impl Sim {
    /// Starts the VMs (main first, then the workers) and configures the plugin in each.
    pub fn new(rt: &Runtime, cfg: SimConfig) -> Result<Sim> {
        let mut shared = Shared::new(&cfg.vm_id, cfg.start_unix * 1_000_000_000, cfg.seed);
        shared.echo_level = cfg.echo_log;
        Sim::start(rt, cfg, Arc::new(shared), 0)
    }

    /// More workers of an Envoy whose shared state (shared data, metrics, log, clock, random
    /// source) already exists, e.g. [`Sim::shared_arc`] of another simulation: its VMs are
    /// labelled `w<first_worker>`, `w<first_worker + 1>`, …, and start (and configure) like
    /// Envoy's later workers, over the shared data the earlier VMs wrote. Each such simulation
    /// is driven on its own (it may live on another thread: the interleaving explorer runs one
    /// per thread). `cfg.seed`, `cfg.start_unix` and `cfg.echo_log` are the shared state's
    /// already; shared queues notify only VMs of the simulation that registered the queue.
    pub fn with_shared(
        rt: &Runtime,
        cfg: SimConfig,
        shared: Arc<Shared>,
        first_worker: usize,
    ) -> Result<Sim> {
        Sim::start(rt, cfg, shared, first_worker)
    }

    fn start(
        rt: &Runtime,
        cfg: SimConfig,
        shared: Arc<Shared>,
        first_worker: usize,
    ) -> Result<Sim> {
        if cfg.workers == 0 {
            return Err(SimError::Usage(
                "a simulation needs at least one worker".into(),
            ));
        }
        let clusters = Arc::new(cfg.clusters_take());
        let settings = |label: String, vm_index: usize| VmSettings {
            label,
            vm_index,
            plugin: PluginFacts {
                name: cfg.plugin_name.clone(),
                root_id: cfg.root_id.clone(),
                vm_id: cfg.vm_id.clone(),
            },
            plugin_config: cfg.plugin_config.clone(),
            vm_config: cfg.vm_config.clone(),
            env: cfg.env.clone(),
            log_level: cfg.log_level,
            clusters: clusters.clone(),
        };
        let main = if cfg.main_vm {
            Some(RefCell::new(Vm::start(
                rt,
                shared.clone(),
                settings("main".into(), first_worker + cfg.workers),
            )?))
        } else {
            None
        };
        let mut workers = Vec::with_capacity(cfg.workers);
        for w in first_worker..first_worker + cfg.workers {
            workers.push(RefCell::new(Vm::start(
                rt,
                shared.clone(),
                settings(format!("w{w}"), w),
            )?));
        }
        let sim = Sim {
            cfg,
            shared,
            workers,
            main,
            first_worker,
            // Connection ids apart from other simulations over the same shared state.
            seq: std::cell::Cell::new(first_worker as u64 * 1_000_000),
            background_traps: RefCell::new(Vec::new()),
        };
        sim.deliver_queue_ready();
        Ok(sim)
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Shared state (shared data, metrics, log, clock).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The shared state, to start more workers over it ([`Sim::with_shared`]).
    pub fn shared_arc(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Installs (or, with `None`, removes) a scheduler in worker `w`'s VM: it is called before
    /// every host call the VM makes and may block until the call may proceed (see
    /// [`crate::sched`]). An error if the worker does not exist or is inside a callback.
    pub fn set_scheduler(
        &self,
        w: usize,
        scheduler: Option<crate::sched::Scheduler>,
    ) -> Result<()> {
        let vm = self
            .workers
            .get(w)
            .ok_or_else(|| SimError::Usage(format!("worker {w} does not exist")))?;
        let mut vm = vm.try_borrow_mut().map_err(|_| {
            SimError::Usage(format!(
                "worker {w} is inside a callback: no scheduler change"
            ))
        })?;
        vm.store.data_mut().scheduler = scheduler;
        Ok(())
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Virtual wall-clock time in seconds.
    pub fn now_unix(&self) -> u64 {
        self.shared.now().realtime_ns / 1_000_000_000
    }

    /// Current metric values by name.
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        self.shared.metric_values()
    }

    /// The whole log so far.
    pub fn log(&self) -> Vec<LogLine> {
        lock(&self.shared.log).clone()
    }

    /// Profiling counters summed over every VM (main and workers): host calls per import name
    /// and fuel consumed. Empty and 0 unless the runtime is [`Runtime::profiling`].
    pub fn profile(&self) -> Profile {
        let mut p = Profile::default();
        for vm in self.all_vms() {
            let v = vm.borrow();
            p.fuel += v.fuel_consumed();
            if let Some(counts) = &v.store.data().call_counts {
                for (name, n) in counts {
                    *p.host_calls.entry((*name).to_string()).or_insert(0) += n;
                }
            }
        }
        p
    }

    /// Starts (`true`) or stops a fuel trace in every VM: the fuel left at each callback entry
    /// and return and each host call, read with [`Sim::take_fuel_trace`]. Only a
    /// [`Runtime::profiling`] runtime counts fuel; elsewhere no trace starts.
    pub fn trace_fuel(&self, on: bool) {
        for vm in self.all_vms() {
            let mut v = vm.borrow_mut();
            let st = v.store.data_mut();
            // `call_counts` is kept exactly when the runtime profiles.
            st.fuel_trace = (on && st.call_counts.is_some()).then(Vec::new);
        }
    }

    /// The fuel-trace events since the last call, per VM (main first, then the workers).
    pub fn take_fuel_trace(&self) -> Vec<Vec<crate::vm::FuelEvent>> {
        self.all_vms()
            .map(|vm| {
                let mut v = vm.borrow_mut();
                v.store
                    .data_mut()
                    .fuel_trace
                    .as_mut()
                    .map(std::mem::take)
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The replay recordings since the last call, per VM (main first, then the workers),
    /// when the runtime records ([`crate::Runtime::recording`]; empty otherwise). An error
    /// names a host write the recording could not place (it could not be replayed).
    pub fn take_recordings(
        &self,
    ) -> std::result::Result<Vec<Vec<crate::replay::Callback>>, String> {
        let mut out = Vec::new();
        for vm in self.all_vms() {
            let mut v = vm.borrow_mut();
            let Some(r) = v.store.data_mut().replay.as_mut() else {
                out.push(Vec::new());
                continue;
            };
            if let Some(first) = r.unplaced.first() {
                return Err(format!(
                    "the recording cannot be replayed: {first} ({} such writes)",
                    r.unplaced.len()
                ));
            }
            out.push(std::mem::take(&mut r.callbacks));
        }
        Ok(out)
    }

    /// Guest stack samples summed over every VM, while a [`Runtime::sample_every`] guard
    /// lives; empty unless the runtime is [`Runtime::profiling`].
    pub fn function_samples(&self) -> crate::vm::FunctionSamples {
        let mut all = crate::vm::FunctionSamples::default();
        for vm in self.all_vms() {
            if let Some(s) = &vm.borrow().store.data().samples {
                all.add(s);
            }
        }
        all
    }

    /// Whether a worker's VM has failed (trapped), and why.
    pub fn worker_failure(&self, w: usize) -> Option<TrapInfo> {
        self.workers
            .get(w)
            .and_then(|vm| vm.borrow().failed.clone())
    }

    fn all_vms(&self) -> impl Iterator<Item = &RefCell<Vm>> {
        self.main.iter().chain(self.workers.iter())
    }

    /// Moves the virtual clock forward by `ms`, firing every tick that falls due, in time
    /// order, in every VM (Envoy ticks the main thread and each worker).
    pub fn advance_ms(&self, ms: u64) {
        let target = self.shared.now().monotonic_ns + ms * 1_000_000;
        loop {
            let mut due: Option<(u64, &RefCell<Vm>)> = None;
            for vm in self.all_vms() {
                let v = vm.borrow();
                let st = v.store.data();
                if v.failed.is_none()
                    && st.tick_period_ms > 0
                    && st.next_tick_ns <= target
                    && due.is_none_or(|(t, _)| st.next_tick_ns < t)
                {
                    due = Some((st.next_tick_ns, vm));
                }
            }
            let Some((at, vm)) = due else { break };
            let now = self.shared.now().monotonic_ns;
            self.shared.advance_ns(at.saturating_sub(now));
            let mut v = vm.borrow_mut();
            {
                let st = v.store.data_mut();
                st.next_tick_ns += st.tick_period_ms * 1_000_000;
            }
            if let Err(t) = v.on_tick().and_then(|()| v.deliver_http_calls()) {
                self.background_traps.borrow_mut().push(t);
            }
            drop(v);
            self.deliver_queue_ready();
        }
        let now = self.shared.now().monotonic_ns;
        self.shared.advance_ns(target.saturating_sub(now));
    }

    /// Delivers `proxy_on_queue_ready` for items enqueued since the last call.
    fn deliver_queue_ready(&self) {
        loop {
            let ready = std::mem::take(&mut *lock(&self.shared.queue_ready));
            if ready.is_empty() {
                return;
            }
            for (vm_index, ctx, token) in ready {
                // Indices of another simulation over the same shared state match nothing.
                let Some(i) = vm_index.checked_sub(self.first_worker) else {
                    continue;
                };
                let vm = if i == self.workers.len() {
                    self.main.as_ref()
                } else {
                    self.workers.get(i)
                };
                if let Some(vm) = vm {
                    let Ok(mut v) = vm.try_borrow_mut() else {
                        continue;
                    };
                    if let Err(t) = v.on_queue_ready(ctx, token) {
                        self.background_traps.borrow_mut().push(t);
                    }
                }
            }
        }
    }

    fn route_for(&self, req: &Request) -> (Option<String>, Option<String>) {
        let path = req.path.split('?').next().unwrap_or("");
        let rule = self.cfg.routes.iter().find(|r| {
            r.path.as_deref().is_some_and(|p| p == path)
                || r.prefix.as_deref().is_some_and(|p| path.starts_with(p))
        });
        match (&req.route_name, rule) {
            (Some(name), r) => (
                Some(name.clone()),
                r.map(|r| r.cluster.clone())
                    .or_else(|| Some("backend".into())),
            ),
            (None, Some(r)) => (Some(r.name.clone()), Some(r.cluster.clone())),
            (None, None) => (None, None),
        }
    }

    fn request_id(&self) -> String {
        let mut b = [0u8; 16];
        lock(&self.shared.rng).fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// The request headers as the filter sees them (what Envoy's HTTP/1 codec and connection
    /// manager produce from the client's request).
    fn request_headers(&self, req: &Request) -> HeaderMap {
        let mut m = HeaderMap::new();
        let host = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        m.add(
            b":authority",
            host.unwrap_or_else(|| req.authority.clone()).as_bytes(),
        );
        m.add(b":path", req.path.as_bytes());
        m.add(b":method", req.method.as_bytes());
        m.add(b":scheme", req.scheme.as_bytes());
        for (k, v) in &req.headers {
            if k.eq_ignore_ascii_case("host") || k.eq_ignore_ascii_case("connection") {
                continue;
            }
            m.add(k.as_bytes(), v);
        }
        let body_len: usize = req.body.iter().map(Vec::len).sum();
        let has_body_method = matches!(req.method.as_str(), "POST" | "PUT" | "PATCH");
        if (body_len > 0 || has_body_method)
            && m.get(b"content-length").is_none()
            && m.get(b"transfer-encoding").is_none()
        {
            m.add(b"content-length", body_len.to_string().as_bytes());
        }
        if m.get(b"x-forwarded-proto").is_none() {
            m.add(b"x-forwarded-proto", req.scheme.as_bytes());
        }
        if m.get(b"x-request-id").is_none() {
            let id = self.request_id();
            m.add(b"x-request-id", id.as_bytes());
        }
        m
    }

    /// Runs a whole exchange: request side, upstream, response side, log, done, delete.
    pub fn request(&self, req: &Request, upstream: &Upstream) -> Result<Exchange> {
        let p = self.begin(req, None)?;
        self.complete(p, upstream)
    }

    /// Runs the request side of a stream: context creation, request headers, body chunks and
    /// trailers, until the request is forwarded, answered locally, failed or stalled. `hook`
    /// (optional) fires inside one of this stream's host calls, to interleave another stream.
    pub fn begin(&self, req: &Request, hook: Option<Hook>) -> Result<Pending> {
        let w = req.worker;
        let vm_cell = self.workers.get(w).ok_or_else(|| {
            SimError::Usage(format!(
                "worker {w} does not exist: this simulation has {} worker(s) (0..={})",
                self.workers.len(),
                self.workers.len() - 1
            ))
        })?;
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let log_start = lock(&self.shared.log).len();
        let started_ns = self.shared.now().realtime_ns;
        let headers = self.request_headers(req);
        let (route_name, cluster_name) = self.route_for(req);
        let port = 40_000 + (seq % 20_000);
        let state = StreamState {
            request_headers: headers,
            request_headers_available: true,
            facts: StreamFacts {
                route_name,
                cluster_name,
                source_address: format!("127.0.0.1:{port}"),
                source_port: port,
                destination_address: "127.0.0.1:10000".into(),
                destination_port: 10_000,
                peer_uri_san: req.peer_identity.clone(),
                dynamic_metadata: req.dynamic_metadata.clone(),
                connection_id: seq,
                request_time_ns: started_ns,
                protocol: "HTTP/1.1".into(),
                ..StreamFacts::default()
            },
            ..StreamState::default()
        };
        let mut pending = Pending {
            worker: w,
            context_id: 0,
            log_start,
            started_ns,
            end: End::Failed,
            trap: None,
            disconnect: req.disconnect,
        };
        let mut vm = vm_cell.try_borrow_mut().map_err(|_| {
            SimError::Usage(format!(
                "worker {w} is busy inside another callback: requests that interleave at the \
                 host-call level must run on different workers"
            ))
        })?;
        if vm.failed.is_some() {
            // Envoy answers every stream of a failed VM with 503 wasm_fail_stream.
            return Ok(pending);
        }
        let id = match vm.create_stream(state) {
            Ok(id) => id,
            Err(t) => {
                pending.trap = Some(t);
                return Ok(pending);
            }
        };
        pending.context_id = id;
        if let Some(mut h) = hook {
            h.context_id = id;
            vm.store.data_mut().hook = Some(h);
        }
        let end = self.request_phase(&mut vm, id, req);
        let st = vm.store.data_mut();
        if let Some(h) = st.hook.take() {
            return Err(SimError::Usage(format!(
                "the interleaving point `until {}` never came: the request on worker {w} did not \
                 call {} during its request phase",
                h.function, h.function
            )));
        }
        if let Some(e) = st.hook_error.take() {
            return Err(SimError::Usage(e));
        }
        drop(vm);
        self.deliver_queue_ready();
        match end {
            Ok(end) => pending.end = end,
            Err(t) => pending.trap = Some(t),
        }
        Ok(pending)
    }

    fn stream(vm: &mut Vm, id: u32) -> &mut StreamState {
        vm.store.data_mut().streams.entry(id).or_default()
    }

    fn request_phase(
        &self,
        vm: &mut Vm,
        id: u32,
        req: &Request,
    ) -> std::result::Result<End, TrapInfo> {
        let has_trailers = !req.trailers.is_empty();
        let eos = req.body.is_empty() && !has_trailers;
        let n = Self::stream(vm, id).request_headers.len();
        let r = vm.on_request_headers(id, n, eos)?;
        vm.deliver_http_calls()?;
        if Self::stream(vm, id).local_reply.is_some() {
            return Ok(End::LocalReply);
        }
        let mut sent: Option<HeaderMap> = None;
        let mut stop_all = false;
        let take_continue =
            |vm: &mut Vm| std::mem::take(&mut Self::stream(vm, id).continue_request);
        let resumed = take_continue(vm);
        if r == 0 || r == 2 || resumed {
            let s = Self::stream(vm, id);
            sent = Some(s.request_headers.clone());
            s.request_headers_available = false;
        } else if r != 1 || !self.cfg.allow_on_headers_stop_iteration {
            stop_all = true;
        }
        let mut buffer: Vec<u8> = Vec::new();
        let mut buffering = false;
        let mut forwarded: Vec<u8> = Vec::new();
        let chunks = req.body.len();
        for (i, chunk) in req.body.iter().enumerate() {
            if stop_all {
                return Ok(End::Stalled(STOP_ALL_MSG.into()));
            }
            let last = i + 1 == chunks && !has_trailers;
            if buffering {
                buffer.extend_from_slice(chunk);
            } else {
                buffer = chunk.clone();
            }
            {
                let s = Self::stream(vm, id);
                s.request_body = buffer.clone();
                s.request_body_available = true;
                s.facts.request_size += chunk.len() as u64;
            }
            let r = vm.on_request_body(id, buffer.len(), last)?;
            vm.deliver_http_calls()?;
            let s = Self::stream(vm, id);
            buffer = s.request_body.clone();
            if s.local_reply.is_some() {
                return Ok(End::LocalReply);
            }
            let resumed = take_continue(vm);
            if r == 0 || resumed {
                let s = Self::stream(vm, id);
                s.request_body_available = false;
                if sent.is_none() {
                    sent = Some(s.request_headers.clone());
                }
                forwarded.append(&mut buffer);
                buffering = false;
            } else {
                buffering = true;
            }
        }
        if has_trailers {
            if stop_all {
                return Ok(End::Stalled(STOP_ALL_MSG.into()));
            }
            let map = HeaderMap::from_pairs(&req.trailers);
            let n = map.len();
            Self::stream(vm, id).request_trailers = Some(map);
            let r = vm.on_request_trailers(id, n)?;
            vm.deliver_http_calls()?;
            if Self::stream(vm, id).local_reply.is_some() {
                return Ok(End::LocalReply);
            }
            if r == 0 || take_continue(vm) {
                let s = Self::stream(vm, id);
                if sent.is_none() {
                    sent = Some(s.request_headers.clone());
                }
                forwarded.append(&mut buffer);
                buffering = false;
            }
        }
        if stop_all {
            return Ok(End::Stalled(STOP_ALL_MSG.into()));
        }
        if buffering || sent.is_none() {
            let what = if buffering {
                "on_http_request_body returned Pause at the end of the body"
            } else {
                "on_http_request_headers returned Pause for a request without a body"
            };
            return Ok(End::Stalled(format!(
                "{what} and nothing called continue_stream: Envoy holds the request until the \
                 stream times out and the upstream never sees it"
            )));
        }
        Ok(End::Forwarded {
            headers: sent.unwrap_or_default(),
            body: forwarded,
        })
    }

    /// Runs the rest of a stream: the upstream (per `upstream`), the response callbacks,
    /// `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    pub fn complete(&self, p: Pending, upstream: &Upstream) -> Result<Exchange> {
        let vm_cell = &self.workers[p.worker];
        let id = p.context_id;
        let mut ex = Exchange {
            worker: p.worker,
            context_id: id,
            started_ns: p.started_ns,
            finished_ns: 0,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            local_reply: false,
            upstream: None,
            response_flags: 0,
            code_details: String::new(),
            filter_state: BTreeMap::new(),
            logs: Vec::new(),
            trap: p.trap.clone(),
            stalled: None,
            misuse: Vec::new(),
        };
        let mut response = HeaderMap::new();
        let mut body: Vec<u8> = Vec::new();
        match (&p.end, &p.trap) {
            (_, Some(_)) | (End::Failed, None) => {
                ex.status = 503;
                ex.code_details = "wasm_fail_stream".into();
                ex.headers = vec![
                    (":status".into(), "503".into()),
                    ("content-length".into(), "0".into()),
                ];
                self.finish_exchange(&mut ex, p.log_start);
                return Ok(ex);
            }
            (End::Stalled(msg), None) => {
                ex.stalled = Some(msg.clone());
                self.finish_exchange(&mut ex, p.log_start);
                return Ok(ex);
            }
            (End::LocalReply, None) => {
                let mut vm = vm_cell.borrow_mut();
                let s = Self::stream(&mut vm, id);
                let lr = s.local_reply.clone().unwrap_or_else(unreachable_reply);
                response = local_reply_headers_sized(lr.status as u16, &lr.headers, &lr.body);
                body = lr.body.clone();
                s.facts.response_code = Some(u64::from(lr.status));
                s.facts.response_code_details = Some(lr.details.clone());
                ex.local_reply = true;
            }
            (
                End::Forwarded {
                    headers,
                    body: sent_body,
                },
                None,
            ) => {
                let received = crate::sim::Received {
                    method: headers.get_str(":method").unwrap_or_default(),
                    path: headers.get_str(":path").unwrap_or_default(),
                    headers: upstream_headers(headers, self.cfg.route_timeout_ms),
                    body: sent_body.clone(),
                };
                if upstream.receives() {
                    ex.upstream = Some(received);
                }
                let timeout = self.cfg.route_timeout_ms;
                let effective = match upstream {
                    Upstream::Reply { delay_ms, .. } if *delay_ms >= timeout => Upstream::Timeout,
                    u => u.clone(),
                };
                match &effective {
                    Upstream::Reply { delay_ms, .. } | Upstream::Reset { delay_ms } => {
                        self.advance_ms(*delay_ms)
                    }
                    Upstream::Timeout => self.advance_ms(timeout),
                    _ => {}
                }
                let mut vm = vm_cell.borrow_mut();
                let s = Self::stream(&mut vm, id);
                // The route's retry policy re-sends a refused connection twice, unless the
                // request carries `x-envoy-max-retries: 0` (which takes precedence over the
                // route's `num_retries`; the flags stay `UF|URX` either way, checked on Envoy
                // 1.40).
                let no_retries = headers.get(b"x-envoy-max-retries") == Some(b"0".as_slice());
                s.facts.upstream_attempts = Some(
                    if matches!(effective, Upstream::ConnectionRefused)
                        && self.cfg.retry_connect_failure
                        && !no_retries
                    {
                        3
                    } else {
                        1
                    },
                );
                match (
                    &effective,
                    router_reply(&effective, self.cfg.retry_connect_failure),
                ) {
                    (
                        Upstream::Reply {
                            status,
                            headers,
                            body: b,
                            delay_ms,
                        },
                        _,
                    ) => {
                        response.add(b":status", status.to_string().as_bytes());
                        for (k, v) in headers {
                            response.add(k.as_bytes(), v.as_bytes());
                        }
                        if response.get(b"content-length").is_none() && !matches!(status, 204 | 304)
                        {
                            response.add(b"content-length", b.len().to_string().as_bytes());
                        }
                        response.add(
                            b"x-envoy-upstream-service-time",
                            delay_ms.to_string().as_bytes(),
                        );
                        body = b.clone();
                        s.facts.response_code = Some(u64::from(*status));
                        s.facts.response_code_details = Some("via_upstream".into());
                    }
                    (_, Some(rr)) => {
                        response = local_reply_headers_sized(rr.status, &[], rr.body.as_bytes());
                        body = rr.body.as_bytes().to_vec();
                        s.facts.response_code = Some(u64::from(rr.status));
                        s.facts.response_code_details = Some(rr.details.into());
                        s.facts.response_flags = rr.flags;
                    }
                    _ => {}
                }
            }
        }
        // A client gone before any response: Envoy resets the upstream request and logs the
        // stream with `DC` and no response code.
        let gone_early = p.disconnect == Some(Disconnect::BeforeResponse)
            && matches!(p.end, End::Forwarded { .. });
        if gone_early {
            let mut vm = vm_cell.borrow_mut();
            let s = Self::stream(&mut vm, id);
            s.facts.response_code = None;
            s.facts.response_code_details = Some("downstream_remote_disconnect".into());
            s.facts.response_flags |= crate::upstream::flags::DC;
            response = HeaderMap::new();
            body.clear();
        }
        // Response path through the filter.
        let result = if gone_early {
            let mut vm = vm_cell.borrow_mut();
            Self::log_phase(&mut vm, id, &response, &body, &mut ex)
        } else {
            self.response_phase(vm_cell, id, &mut response, &mut body, &mut ex, p.disconnect)
        };
        if let Err(t) = result {
            ex.trap = Some(t);
            ex.status = 503;
            ex.code_details = "wasm_fail_stream".into();
            ex.headers = vec![(":status".into(), "503".into())];
            ex.body.clear();
            self.finish_exchange(&mut ex, p.log_start);
            return Ok(ex);
        }
        self.finish_exchange(&mut ex, p.log_start);
        Ok(ex)
    }

    fn response_phase(
        &self,
        vm_cell: &RefCell<Vm>,
        id: u32,
        response: &mut HeaderMap,
        body: &mut Vec<u8>,
        ex: &mut Exchange,
        disconnect: Option<Disconnect>,
    ) -> std::result::Result<(), TrapInfo> {
        let mut vm = vm_cell.borrow_mut();
        {
            let s = Self::stream(&mut vm, id);
            s.response_headers = response.clone();
            s.response_headers_available = true;
            s.facts.response_size = body.len() as u64;
        }
        let eos = body.is_empty();
        let r = vm.on_response_headers(id, response.len(), eos)?;
        vm.deliver_http_calls()?;
        let mut stalled = None;
        {
            let allow = self.cfg.allow_on_headers_stop_iteration;
            let s = Self::stream(&mut vm, id);
            let resumed = std::mem::take(&mut s.continue_response);
            if let (Some(lr), false) = (s.local_reply.clone(), ex.local_reply) {
                // A local reply from the response headers callback replaces the response.
                *response = local_reply_headers_sized(lr.status as u16, &lr.headers, &lr.body);
                *body = lr.body.clone();
                s.facts.response_code = Some(u64::from(lr.status));
                s.facts.response_code_details = Some(lr.details.clone());
                s.response_headers = response.clone();
                ex.local_reply = true;
            } else {
                *response = s.response_headers.clone();
            }
            if r != 0 && r != 2 && !resumed {
                if !allow || r != 1 {
                    stalled = Some("on_http_response_headers returned Pause and allow_on_headers_stop_iteration is false: the response hangs".to_string());
                } else if eos {
                    stalled = Some("on_http_response_headers returned Pause for a response without a body and nothing called continue_stream: the response hangs".to_string());
                }
            }
            s.response_headers_available = r == 1 && !resumed;
            s.response_started = true;
        }
        if disconnect == Some(Disconnect::DuringResponseBody) && stalled.is_none() {
            // The client closed the connection while the body was on its way.
            let s = Self::stream(&mut vm, id);
            s.facts.response_flags |= crate::upstream::flags::DC;
            s.facts.response_code_details = Some("downstream_remote_disconnect".into());
            body.clear();
        }
        if stalled.is_none() && !body.is_empty() {
            {
                let s = Self::stream(&mut vm, id);
                s.response_body = body.clone();
                s.response_body_available = true;
            }
            let r = vm.on_response_body(id, body.len(), true)?;
            vm.deliver_http_calls()?;
            let s = Self::stream(&mut vm, id);
            *body = s.response_body.clone();
            let resumed = std::mem::take(&mut s.continue_response);
            s.response_body_available = false;
            if r != 0 && !resumed {
                stalled = Some("on_http_response_body returned Pause at the end of the body and nothing called continue_stream: the response hangs".to_string());
            }
        }
        if let Some(m) = stalled {
            ex.stalled = Some(m);
            return Ok(());
        }
        Self::log_phase(&mut vm, id, response, body, ex)
    }

    /// The stream's end: what the client got, then `proxy_on_log` and the stream's teardown.
    fn log_phase(
        vm: &mut Vm,
        id: u32,
        response: &HeaderMap,
        body: &[u8],
        ex: &mut Exchange,
    ) -> std::result::Result<(), TrapInfo> {
        ex.status = response
            .get_str(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        ex.headers = response.text_pairs();
        ex.body = body.to_vec();
        {
            let s = Self::stream(vm, id);
            ex.response_flags = s.facts.response_flags;
            ex.code_details = s.facts.response_code_details.clone().unwrap_or_default();
            s.access_log_phase = true;
            s.log_request_headers_writable = s.request_headers_available;
            s.log_response_headers_writable = s.response_headers_available;
            s.log_request_headers = s.request_headers.clone();
            s.log_response_headers = Some(response.clone());
            s.response_headers_available = false;
            s.request_headers_available = false;
        }
        vm.on_log(id)?;
        let s = Self::stream(vm, id);
        ex.filter_state = s
            .filter_state
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        ex.misuse = s.misuse.clone();
        vm.finish_stream(id)?;
        Ok(())
    }

    fn finish_exchange(&self, ex: &mut Exchange, log_start: usize) {
        self.deliver_queue_ready();
        ex.finished_ns = self.shared.now().realtime_ns;
        let label = format!("w{}", self.first_worker + ex.worker);
        let root_id = self.workers[ex.worker]
            .try_borrow()
            .map_or(0, |vm| vm.store.data().root_id);
        let log = lock(&self.shared.log);
        let window = log.get(log_start..).unwrap_or_default();
        let own =
            |l: &&LogLine| l.vm == label && l.context_id == ex.context_id && ex.context_id != 0;
        // Lines the root context wrote about this request while it ran (the outcome of an
        // attempt on the cluster ledger is written when etcd answers, in a callback of the root
        // context), found as Envoy's log is read: by the request's id.
        let rid = window.iter().filter(own).find_map(|l| {
            let at = l.message.find("\"request_id\":\"")? + 14;
            let rest = l.message.get(at..)?;
            Some(format!(
                "\"request_id\":\"{}\"",
                rest.get(..rest.find('"')?)?
            ))
        });
        ex.logs = window
            .iter()
            .filter(|l| {
                own(l)
                    || (l.vm == label
                        && l.context_id == root_id
                        && rid.as_deref().is_some_and(|r| l.message.contains(r)))
            })
            .cloned()
            .collect();
        if ex.filter_state.is_empty() {
            if let Ok(vm) = self.workers[ex.worker].try_borrow() {
                if let Some(s) = vm.store.data().streams.get(&ex.context_id) {
                    ex.filter_state = s
                        .filter_state
                        .iter()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect();
                    ex.misuse = s.misuse.clone();
                }
            }
        }
    }
}

fn unreachable_reply() -> crate::stream::LocalReply {
    crate::stream::LocalReply {
        status: 500,
        details: String::new(),
        body: Vec::new(),
        headers: Vec::new(),
        grpc_status: -1,
    }
}

/// Headers of a local reply as Envoy builds them: `:status`, the filter's headers, then
/// `content-length` and, for a non-empty body without a content type, `text/plain`.
fn local_reply_headers(status: u16, extra: &[(Vec<u8>, Vec<u8>)], has_body: bool) -> HeaderMap {
    let mut m = HeaderMap::new();
    m.add(b":status", status.to_string().as_bytes());
    for (k, v) in extra {
        m.add(k, v);
    }
    if has_body && m.get(b"content-type").is_none() {
        m.add(b"content-type", b"text/plain");
    }
    m
}

/// [`local_reply_headers`] plus the `content-length` Envoy's local reply sets before the
/// encoder filters run (the filter sees it; checked with the probe against Envoy 1.40).
fn local_reply_headers_sized(status: u16, extra: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> HeaderMap {
    let mut m = local_reply_headers(status, extra, !body.is_empty());
    if m.get(b"content-length").is_none() {
        m.add(b"content-length", body.len().to_string().as_bytes());
    }
    m
}

/// The headers the upstream receives: the (filter-modified) request headers in HTTP/1 form
/// plus what Envoy's router adds.
fn upstream_headers(h: &HeaderMap, timeout_ms: u64) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in h.text_pairs() {
        // The router consumes its retry headers; the upstream never sees them.
        if k == "x-envoy-max-retries" || k == "x-envoy-retry-on" {
            continue;
        }
        if k == ":authority" {
            out.push(("host".into(), v));
        } else if !k.starts_with(':') {
            out.push((k, v));
        }
    }
    out.push((
        "x-envoy-expected-rq-timeout-ms".into(),
        timeout_ms.to_string(),
    ));
    out
}

impl SimConfig {
    fn clusters_take(&self) -> Clusters {
        Clusters {
            by_name: self
                .clusters
                .by_name
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            crate::upstream::Cluster::Scripted { queue, standing } => {
                                crate::upstream::Cluster::Scripted {
                                    queue: std::sync::Mutex::new(lock(queue).clone()),
                                    standing: standing.clone(),
                                }
                            }
                            crate::upstream::Cluster::Forward(a) => {
                                crate::upstream::Cluster::Forward(*a)
                            }
                        },
                    )
                })
                .collect(),
            calls: std::sync::Mutex::new(Vec::new()),
        }
    }
}
