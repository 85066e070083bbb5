//! The Envoy configurations of the cases, built with the harness's [`Bootstrap`], and the
//! pinned Envoys that run them (started by the harness's launcher, their run files in
//! `target/bench/envoy-<name>/`).
//!
//! By default (upstream mode) routes 1–5 and 8 are forwarded to a real upstream, a second Envoy
//! pinned to CPU 1 that reads each request whole and answers it, as in front of an identity
//! API. `--direct` makes every route a `direct_response` in the proxy itself: no upstream, so
//! the filter's share of a much cheaper request is larger. A configuration that answers a
//! body-carrying request itself without retry-guard (7, and 8 in direct mode) carries Envoy's
//! buffer filter: without it Envoy answers before the body arrives and closes the connection
//! after every answer, which would measure connection setup instead (see [`BUFFER`]).
//!
//! Configuration 10 (`--etcd`) is retry-guard with its ledger on etcd: the same plugin
//! configuration with a `ledger` section naming the Envoy cluster [`ETCD_CLUSTER`], which
//! reaches the benchmark's etcd member ([`EtcdLedger`]). Configurations 11 and 12 have no wasm
//! filter but Envoy's own `jwt_authn` ([`crate::jwt_authn`]), first in the chain: the harness's
//! [`Bootstrap`] does not describe it, so [`proxy_config`] adds it to the bootstrap's JSON.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use retry_guard_e2e::envoy::{
    check_wasm, release_wasm_path, wasm_path, Bootstrap, Cluster, Envoy, EnvoyBuilder, HttpFilter,
    PathMatch, Route, WASM_FILTER,
};
use retry_guard_e2e::etcd::envoy_cluster;
use retry_guard_e2e::{bail, Error, Result};
use serde_json::{json, Value};

use crate::args::Options;
use crate::cases::{Case, Filter, Load};
use crate::jwt_authn::Issuer;
use crate::load::{wrk, LOAD_CPU};

/// The CPU of the proxy Envoy (`--concurrency 1`); the load generator and the upstream share
/// the other ([`LOAD_CPU`]).
pub const PROXY_CPU: &str = "0";

/// Where the routes' answers come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    /// A real upstream: a second Envoy (pinned to the load generator's core) that reads each
    /// request whole and answers it; the proxy Envoy forwards over pooled HTTP/1.1 connections,
    /// as in front of an identity API.
    Upstream,
    /// Every route is an Envoy `direct_response` in the proxy itself: no upstream at all, so
    /// the filter's share of a much cheaper request is larger.
    Direct,
}

/// The proxy's cluster of the upstream Envoy.
const UPSTREAM: &str = "upstream";

/// The name of the wasm plugin and VM in every configuration.
const PLUGIN_NAME: &str = "bench";

/// The proxy's cluster of etcd (configuration 10).
pub const ETCD_CLUSTER: &str = "retry-guard-etcd";

/// The etcd ledger's key prefix in the benchmark.
pub const ETCD_KEY_PREFIX: &str = "retry-guard-bench/";

/// The etcd ledger's `timeout_ms` in the benchmark: long enough that a slow answer under load
/// is measured as latency rather than turned into the fail policy's 503 (which would refuse
/// the run), as in a deployment sized for its load.
pub const ETCD_TIMEOUT_MS: u64 = 1000;

/// Where configuration 10 finds etcd, and its plugin configuration.
#[derive(Clone, Debug)]
pub struct EtcdLedger {
    /// The etcd member's client address (its JSON gateway).
    pub client: SocketAddr,
    /// retry-guard's plugin configuration with the `ledger` section for etcd.
    pub plugin_config: String,
}

impl EtcdLedger {
    /// The etcd ledger at `client`: `guard_config` (a JSON object) with its `ledger` set to
    /// etcd through [`ETCD_CLUSTER`], under [`ETCD_KEY_PREFIX`], timing out after
    /// [`ETCD_TIMEOUT_MS`].
    pub fn new(client: SocketAddr, guard_config: &str) -> Result<EtcdLedger> {
        let mut config: Value = serde_json::from_str(guard_config)
            .map_err(|e| Error(format!("retry-guard's plugin configuration: {e}")))?;
        let Some(object) = config.as_object_mut() else {
            bail!("retry-guard's plugin configuration is not a JSON object");
        };
        object.insert(
            "ledger".into(),
            json!({
                "backend": "etcd",
                "cluster": ETCD_CLUSTER,
                "authority": "etcd",
                "key_prefix": ETCD_KEY_PREFIX,
                "timeout_ms": ETCD_TIMEOUT_MS,
            }),
        );
        Ok(EtcdLedger {
            client,
            plugin_config: config.to_string(),
        })
    }
}

/// Envoy's buffer filter: the request is read whole before the route answers. A
/// `direct_response` to a request whose body has not arrived makes Envoy close the connection
/// after answering (`connection: close`, a new connection per request), which is not what an
/// upstream or retry-guard (which reads the body first) does; the configurations that answer
/// a body-carrying request themselves carry it so they are measured on kept-alive connections.
const BUFFER: HttpFilter = HttpFilter::Buffer {
    max_request_bytes: 65536,
};

/// One route's answer, wherever it is given (the upstream, or the proxy itself).
struct Answer {
    route: &'static str,
    path: PathMatch,
    status: u16,
    body: String,
}

impl Answer {
    /// A route answering itself, with a JSON content type.
    fn direct_route(&self) -> Route {
        Route::direct(self.route, self.path.clone(), self.status, &self.body)
            .response_header("content-type", "application/json")
    }
}

/// The routes' answers, in route order: `token` (`/oauth/token`, answering `token_status`),
/// `reads` (`/v1/`) and `other` (`/`).
fn answers(token_status: u16) -> [Answer; 3] {
    let token_body = if token_status == 428 {
        // About the size of retry-guard's own 428 problem document, for a fair comparison.
        let detail = "x".repeat(700);
        format!(
            r#"{{"type":"urn:retry-guard:problem:confirmation-required","title":"Human confirmation required","status":428,"detail":"{detail}"}}"#
        )
    } else {
        r#"{"access_token":"bench","token_type":"Bearer"}"#.to_string()
    };
    [
        Answer {
            route: "token",
            path: PathMatch::Exact("/oauth/token".into()),
            status: token_status,
            body: token_body,
        },
        Answer {
            route: "reads",
            path: PathMatch::Prefix("/v1/".into()),
            status: 200,
            body: r#"{"items":[]}"#.into(),
        },
        Answer {
            route: "other",
            path: PathMatch::Prefix("/".into()),
            status: 200,
            body: "ok".into(),
        },
    ]
}

/// retry-guard's plugin configuration in the benchmark: host-sim's benchmark configuration
/// (which it measures per request path), with the token route's natural key taking the query
/// string (`natural_key.query: "sorted"`).
///
/// oha can vary only the URL from request to request (a random query string, see
/// `oha_command` in [`crate::load`]), and since fingerprint v2 a route ignores the query by
/// default: every paced request after the first was then a replay answered 428, and the run
/// was refused. With an Idempotency-Key (wrk) the query takes no part in the fingerprint.
pub fn bench_plugin_config() -> String {
    let text = host_sim::bench::plugin_config(65_536);
    let mut config: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(_) => return String::from_utf8_lossy(&text).into_owned(),
    };
    if let Some(routes) = config["routes"].as_array_mut() {
        for route in routes
            .iter_mut()
            .filter(|r| r["match"]["route_name"] == "token")
        {
            route["natural_key"] = json!({"query": "sorted"});
        }
    }
    config.to_string()
}

/// The token route's window (`routes[].window_seconds`) in case 5's configuration, whose every
/// request is a first attempt ([`first_attempts_config`]).
pub const FIRST_ATTEMPTS_WINDOW_SECONDS: u32 = 1;

/// The ledger's capacity (`max_entries`) in case 5's configuration ([`first_attempts_config`]).
pub const FIRST_ATTEMPTS_MAX_ENTRIES: u32 = 524_288;

/// retry-guard's plugin configuration for case 5, whose every request is a first attempt on
/// the token route (and for the memory run, which floods that route): `config` with the token
/// route's window at [`FIRST_ATTEMPTS_WINDOW_SECONDS`] and `max_entries` at
/// [`FIRST_ATTEMPTS_MAX_ENTRIES`].
///
/// The ledger never evicts a live entry of a sensitive route: a set whose entries are all
/// live refuses the new attempt (503, `ledger_full`). With the benchmark's day-long window and
/// 65,536 entries, saturating first attempts fill the table within seconds, and refusals begin
/// long before, as sets fill at random (1% of the answers with the table a third full, seen
/// in a one-second run): case 5 would measure refusals. An entry is live for the window after
/// its attempt, so the live entries are the rate times the window; one second at 30,000
/// requests a second keeps them near 6% of 524,288 entries, where a new attempt finds its set
/// full about once in 10,000 (the rare refusals a run allows, [`crate::load::UNEXPECTED_ALLOWED`],
/// counted in the report). Every other configuration keeps the day-long window: case 6's
/// replays must still find their first attempt after the other configurations' runs.
pub fn first_attempts_config(config: &str) -> String {
    let Ok(mut config) = serde_json::from_str::<Value>(config) else {
        return config.to_string();
    };
    config["max_entries"] = json!(FIRST_ATTEMPTS_MAX_ENTRIES);
    if let Some(routes) = config["routes"].as_array_mut() {
        for route in routes
            .iter_mut()
            .filter(|r| r["match"]["route_name"] == "token")
        {
            route["window_seconds"] = json!(FIRST_ATTEMPTS_WINDOW_SECONDS);
        }
    }
    config.to_string()
}

/// What the report says of a plugin configuration's ledger on the token route: its capacity
/// and the route's window.
pub fn token_ledger_text(config: &str) -> String {
    let Ok(config) = serde_json::from_str::<Value>(config) else {
        return "the given plugin configuration".into();
    };
    let max_entries = config["max_entries"].as_u64().unwrap_or(65_536);
    let window = config["routes"]
        .as_array()
        .and_then(|routes| {
            routes
                .iter()
                .find(|r| r["match"]["route_name"] == "token")
                .and_then(|r| r["window_seconds"].as_u64())
        })
        .or_else(|| config["window_seconds"].as_u64())
        .unwrap_or(900);
    format!("`max_entries` {max_entries}, the token route's window {window} s")
}

/// Whether `case` runs with [`first_attempts_config`]: retry-guard on the shared-data ledger,
/// every request a first attempt (case 5).
pub fn runs_first_attempts(case: &Case) -> bool {
    matches!(case.filter, Filter::Guard | Filter::GuardCompared) && case.load == Load::Unique
}

/// The upstream Envoy: the answers of configurations 1 to 5, each request read whole.
pub fn upstream_bootstrap() -> Bootstrap {
    answers(200)
        .iter()
        .fold(Bootstrap::new("bench"), |b, a| b.route(a.direct_route()))
        .http_filter(BUFFER)
}

/// The proxy Envoy of `case`: its wasm filter (retry-guard with `guard_config`, or with
/// `etcd`'s configuration and a cluster to its member for [`Filter::GuardEtcd`]), its routes
/// forwarded to `upstream` or (in direct mode, and Envoy's own 428) answered in the proxy.
/// ([`Proxies::start`] refuses [`Filter::GuardEtcd`] without `etcd`; given none, this
/// configures plain retry-guard.) The `jwt_authn` filter of [`Filter::JwtAuthn`] is not here:
/// [`proxy_config`] adds it.
pub fn proxy_bootstrap(
    case: &Case,
    backend: Backend,
    upstream: Option<SocketAddr>,
    guard_config: &str,
    etcd: Option<&EtcdLedger>,
) -> Bootstrap {
    // Routes answered here: all in direct mode, and Envoy's own 428 (configuration 7).
    let local = |status: u16| backend == Backend::Direct || status == 428;
    let mut b = Bootstrap::new("bench");
    let plugin_config = match case.filter {
        Filter::None => None,
        Filter::Noop => Some(""),
        Filter::Guard | Filter::GuardCompared => Some(guard_config),
        Filter::GuardEtcd => Some(etcd.map_or(guard_config, |e| e.plugin_config.as_str())),
        Filter::Probe(config) => Some(config),
        Filter::JwtAuthn(_) => None,
    };
    if let Some(config) = plugin_config {
        b = b.http_filter(HttpFilter::Wasm {
            name: PLUGIN_NAME.into(),
            plugin_config: config.into(),
        });
    }
    for a in answers(case.token_status) {
        let mut route = if local(a.status) {
            a.direct_route()
        } else {
            Route::forward(a.route, a.path.clone(), UPSTREAM)
        };
        if case.off_on_other && a.route == "other" {
            route = route.disable_filter(WASM_FILTER);
        }
        b = b.route(route);
    }
    if !case.filter.reads_body() && !case.body.is_empty() && local(case.token_status) {
        b = b.http_filter(BUFFER);
    }
    if let (Backend::Upstream, Some(addr)) = (backend, upstream) {
        b = b.cluster(
            Cluster::new(UPSTREAM, addr)
                .connect_timeout(Duration::from_secs(1))
                .circuit_breaker_limit(100_000),
        );
    }
    if let (true, Some(etcd)) = (case.filter.calls_etcd(), etcd) {
        b = b.raw_cluster(envoy_cluster(ETCD_CLUSTER, &[etcd.client]));
    }
    b
}

/// The proxy Envoy of `case` as Envoy's JSON: [`proxy_bootstrap`], with Envoy's `jwt_authn`
/// filter first in the chain for [`Filter::JwtAuthn`] (before the buffer filter of direct
/// mode, as it would stand before any other filter of case 8's chain).
pub fn proxy_config(
    case: &Case,
    backend: Backend,
    upstream: Option<SocketAddr>,
    guard_config: &str,
    etcd: Option<&EtcdLedger>,
) -> Result<Value> {
    let mut json = proxy_bootstrap(case, backend, upstream, guard_config, etcd).to_json();
    if let Filter::JwtAuthn(alg) = case.filter {
        let filter = Issuer::load(alg)?.filter();
        let Some(chain) = json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"]
            .as_array_mut()
        else {
            bail!("the bootstrap has no HTTP filter chain to put jwt_authn in");
        };
        chain.insert(0, filter);
    }
    Ok(json)
}

/// An Envoy answering every request itself with 200 and logging each request's start time
/// (`%START_TIME(%s.%6f)%`, one a line) to its access log: the pacing check's.
pub fn start_time_logging_bootstrap() -> Bootstrap {
    Bootstrap::new("bench")
        .route(
            Route::direct("other", PathMatch::Prefix("/".into()), 200, "ok")
                .response_header("content-type", "application/json"),
        )
        .access_log_text("%START_TIME(%s.%6f)%\n")
}

/// The wasm modules the configurations load.
pub struct Modules {
    /// retry-guard.
    pub guard: PathBuf,
    /// The no-op floor.
    pub noop: PathBuf,
    /// The host-call probe (only `--host-costs` needs it).
    pub probe: PathBuf,
    /// The other build of retry-guard that `--compare-wasm` measures beside [`Modules::guard`].
    pub compared: Option<PathBuf>,
}

impl Modules {
    /// The modules of the run `o`, each checked to be built (the probe only for
    /// `--host-costs`).
    pub fn find(o: &Options) -> Result<Modules> {
        let guard = match &o.wasm {
            Some(path) => check_wasm(path.clone())?,
            None => wasm_path()?,
        };
        let noop = built(
            release_wasm_path("noop_filter.wasm"),
            "run `just bench` (it builds the no-op filter)",
        )?;
        let probe = release_wasm_path("hostcost_filter.wasm");
        if o.host_costs {
            built(
                probe.clone(),
                "run `just bench --host-costs` (it builds the probe)",
            )?;
        }
        let compared = o.compare_wasm.clone().map(check_wasm).transpose()?;
        Ok(Modules {
            guard,
            noop,
            probe,
            compared,
        })
    }

    /// The module `filter` loads, if any.
    pub fn of(&self, filter: Filter) -> Option<&Path> {
        match filter {
            Filter::None | Filter::JwtAuthn(_) => None,
            Filter::Noop => Some(&self.noop),
            Filter::Guard | Filter::GuardEtcd => Some(&self.guard),
            Filter::GuardCompared => self.compared.as_deref(),
            Filter::Probe(_) => Some(&self.probe),
        }
    }
}

/// `path` if it is there, else an error with `hint`.
fn built(path: PathBuf, hint: &str) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{} is missing; {hint}", path.display());
    }
    Ok(path)
}

/// An Envoy of `bootstrap` (Envoy's JSON, e.g. a [`Bootstrap::to_json`] or a
/// [`proxy_config`]) pinned to `cpu` (`--concurrency 1`, `-l log_level`), loading `wasm` if its
/// bootstrap has a wasm filter; its run files go to `<dir>/envoy-<name>/`.
pub fn pinned_envoy(
    dir: &Path,
    name: &str,
    bootstrap: Value,
    cpu: &str,
    log_level: &str,
    wasm: Option<&Path>,
) -> EnvoyBuilder {
    // Any address: a custom bootstrap names its own upstreams.
    let unused = SocketAddr::from(([127, 0, 0, 1], 0));
    let builder = Envoy::builder(&format!("bench-{name}"), unused)
        .bootstrap(bootstrap)
        .concurrency(1)
        .wrapper(["taskset", "-c", cpu])
        .log_level(log_level)
        .run_dir(dir.join(format!("envoy-{name}")))
        .startup_timeout(Duration::from_secs(30));
    match wasm {
        Some(wasm) => builder.wasm_file(wasm),
        None => builder,
    }
}

/// The Envoys of a run: the upstream (upstream mode), and a proxy per case on demand.
pub struct Proxies {
    dir: PathBuf,
    backend: Backend,
    log_level: String,
    modules: Modules,
    /// retry-guard's plugin configuration.
    guard_config: String,
    /// Case 5's: [`first_attempts_config`] of the benchmark's, or the one given with
    /// `--plugin-config` as it is.
    first_attempts_config: String,
    upstream: Option<Envoy>,
    /// The etcd ledger of configuration 10, once set ([`Proxies::use_etcd`]).
    etcd: Option<EtcdLedger>,
}

impl Proxies {
    /// Finds the modules and, in upstream mode, starts the upstream Envoy (pinned to the load
    /// generator's CPU: the proxy keeps its own). Run files go to `dir`.
    pub fn new(o: &Options, dir: &Path) -> Result<Proxies> {
        let modules = Modules::find(o)?;
        let guard_config = o.plugin_config.clone().unwrap_or_else(bench_plugin_config);
        let first_attempts_config = match &o.plugin_config {
            Some(given) => given.clone(),
            None => first_attempts_config(&guard_config),
        };
        let upstream = match o.backend {
            Backend::Upstream => Some(
                pinned_envoy(
                    dir,
                    "upstream",
                    upstream_bootstrap().to_json(),
                    LOAD_CPU,
                    "warning",
                    None,
                )
                .start()?,
            ),
            Backend::Direct => None,
        };
        Ok(Proxies {
            dir: dir.to_path_buf(),
            backend: o.backend,
            log_level: o.log_level.clone(),
            modules,
            guard_config,
            first_attempts_config,
            upstream,
            etcd: None,
        })
    }

    /// Points configuration 10 (retry-guard's ledger on etcd) at the etcd member `client`.
    pub fn use_etcd(&mut self, client: SocketAddr) -> Result<()> {
        self.etcd = Some(EtcdLedger::new(client, &self.guard_config)?);
        Ok(())
    }

    /// The wasm modules.
    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    /// retry-guard's plugin configuration for `case` ([`runs_first_attempts`]).
    pub fn guard_config(&self, case: &Case) -> &str {
        if runs_first_attempts(case) {
            &self.first_attempts_config
        } else {
            &self.guard_config
        }
    }

    /// The Envoy configuration of `case` in this run.
    fn config(&self, case: &Case) -> Result<Value> {
        let upstream = self.upstream.as_ref().map(Envoy::listener_addr);
        proxy_config(
            case,
            self.backend,
            upstream,
            self.guard_config(case),
            self.etcd.as_ref(),
        )
    }

    /// Starts the proxy Envoy of `case` on [`PROXY_CPU`].
    pub fn start(&self, case: &Case) -> Result<Envoy> {
        if case.filter.calls_etcd() && self.etcd.is_none() {
            bail!("configuration {} needs etcd (Proxies::use_etcd)", case.id);
        }
        pinned_envoy(
            &self.dir,
            &case.id.to_string(),
            self.config(case)?,
            PROXY_CPU,
            &self.log_level,
            self.modules.of(case.filter),
        )
        .start()
    }

    /// Starts a proxy Envoy of `case` named `name` on [`PROXY_CPU`], its routes forwarded to
    /// `upstream` whatever the run's mode.
    pub fn start_named(&self, case: &Case, name: &str, upstream: SocketAddr) -> Result<Envoy> {
        if case.filter.calls_etcd() && self.etcd.is_none() {
            bail!("configuration {} needs etcd (Proxies::use_etcd)", case.id);
        }
        let config = proxy_config(
            case,
            Backend::Upstream,
            Some(upstream),
            self.guard_config(case),
            self.etcd.as_ref(),
        )?;
        pinned_envoy(
            &self.dir,
            name,
            config,
            PROXY_CPU,
            &self.log_level,
            self.modules.of(case.filter),
        )
        .start()
    }

    /// Starts the proxies of `cases`, side by side, and warms each up with a second of wrk on
    /// 4 connections (for case 6 that is also its succeeded first attempt, so every later
    /// request replays).
    pub fn start_warmed<'c>(
        &self,
        cases: impl IntoIterator<Item = &'c Case>,
    ) -> Result<Vec<Envoy>> {
        let cases: Vec<&Case> = cases.into_iter().collect();
        let envoys: Vec<Envoy> = cases.iter().map(|c| self.start(c)).collect::<Result<_>>()?;
        for (case, envoy) in cases.iter().zip(&envoys) {
            wrk(envoy, case, 1, 4)?;
        }
        Ok(envoys)
    }
}

/// Removes the Envoys' logs (`envoy-*/envoy.log`) of a run that succeeded: at `-l info` they
/// hold every audit line (several gigabytes per run on the token route), and the report holds
/// what was measured. A failed run keeps them for the diagnosis.
pub fn remove_envoy_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut bytes = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("envoy-") {
            continue;
        }
        let log = e.path().join("envoy.log");
        if let Ok(meta) = fs::metadata(&log) {
            bytes += meta.len();
            let _ = fs::remove_file(log);
        }
    }
    if bytes > 0 {
        eprintln!(
            "removed the Envoys' logs ({:.1} MB of audit lines) from {}",
            bytes as f64 / 1e6,
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{CASES, TOKEN_ALLOW, TOKEN_ETCD};
    use retry_guard_e2e::envoy::RouteAction;

    const MODES: [Backend; 2] = [Backend::Upstream, Backend::Direct];

    fn upstream_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4444))
    }

    fn bootstrap_of(case: &Case, backend: Backend) -> Bootstrap {
        let upstream = (backend == Backend::Upstream).then(upstream_addr);
        proxy_bootstrap(case, backend, upstream, "GUARD-CONFIG", None)
    }

    #[test]
    fn each_case_has_its_filters_routes_and_answers() {
        for case in &CASES {
            for backend in MODES {
                let b = bootstrap_of(case, backend);
                let what = format!("case {} in {backend:?} mode", case.id);
                // The wasm filter, with the case's module's configuration, or none.
                let wasm: Vec<&str> = b
                    .http_filters
                    .iter()
                    .filter_map(|f| match f {
                        HttpFilter::Wasm {
                            name,
                            plugin_config,
                        } => {
                            assert_eq!(name, PLUGIN_NAME, "{what}");
                            Some(plugin_config.as_str())
                        }
                        HttpFilter::Buffer { .. } => None,
                    })
                    .collect();
                let expected: &[&str] = match case.filter {
                    Filter::None | Filter::JwtAuthn(_) => &[],
                    Filter::Noop => &[""],
                    Filter::Guard | Filter::GuardCompared | Filter::GuardEtcd => &["GUARD-CONFIG"],
                    Filter::Probe(c) => &[c],
                };
                assert_eq!(wasm, expected, "{what}");
                // The routes, in order, and who answers them.
                let names: Vec<&str> = b.routes.iter().map(|r| r.name.as_str()).collect();
                assert_eq!(names, ["token", "reads", "other"], "{what}");
                assert_eq!(b.routes[0].path, PathMatch::Exact("/oauth/token".into()));
                assert_eq!(b.routes[2].path, PathMatch::Prefix("/".into()));
                let statuses: Vec<Option<u16>> = b
                    .routes
                    .iter()
                    .map(|r| match &r.action {
                        RouteAction::Direct { status, .. } => Some(*status),
                        RouteAction::Forward { cluster } => {
                            assert_eq!(cluster, UPSTREAM, "{what}");
                            None
                        }
                    })
                    .collect();
                let expected = match (backend, case.token_status) {
                    (Backend::Direct, token) => [Some(token), Some(200), Some(200)],
                    (Backend::Upstream, 428) => [Some(428), None, None],
                    (Backend::Upstream, _) => [None, None, None],
                };
                assert_eq!(statuses, expected, "{what}");
                // The filter switched off on `other` in case 9 only.
                let off: Vec<&str> = b
                    .routes
                    .iter()
                    .filter(|r| r.disabled_filters.iter().any(|f| f == WASM_FILTER))
                    .map(|r| r.name.as_str())
                    .collect();
                let expected: &[&str] = if case.id == 9 { &["other"] } else { &[] };
                assert_eq!(off, expected, "{what}");
                // The buffer filter where Envoy answers a body-carrying request itself.
                let buffered = b.http_filters.contains(&BUFFER);
                let answers_body_itself = !case.filter.reads_body()
                    && !case.body.is_empty()
                    && (backend == Backend::Direct || case.token_status == 428);
                assert_eq!(buffered, answers_body_itself, "{what}");
                // The upstream cluster in upstream mode only.
                let clusters: Vec<(&str, SocketAddr)> = b
                    .clusters
                    .iter()
                    .map(|c| (c.name.as_str(), c.endpoint))
                    .collect();
                match backend {
                    Backend::Upstream => {
                        assert_eq!(clusters, [(UPSTREAM, upstream_addr())], "{what}")
                    }
                    Backend::Direct => assert!(clusters.is_empty(), "{what}"),
                }
            }
        }
        // Buffered: 7 in both modes, 8 in direct mode.
        let buffered = |id: usize, backend| {
            bootstrap_of(crate::cases::case(id), backend).http_filters == [BUFFER]
        };
        assert!(buffered(7, Backend::Upstream) && buffered(7, Backend::Direct));
        assert!(!buffered(8, Backend::Upstream) && buffered(8, Backend::Direct));
        for id in [11, 12] {
            assert!(!buffered(id, Backend::Upstream) && buffered(id, Backend::Direct));
        }
    }

    /// The HTTP filters' names of `case`'s Envoy configuration, in order.
    fn chain(case: &Case, backend: Backend) -> Vec<String> {
        let upstream = (backend == Backend::Upstream).then(upstream_addr);
        let json = proxy_config(case, backend, upstream, "GUARD-CONFIG", None).unwrap();
        json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_jwt_authn_configurations_put_envoys_filter_first_and_no_wasm() {
        let router = "envoy.filters.http.router";
        let buffer = "envoy.filters.http.buffer";
        for c in &CASES {
            let jwt = matches!(c.filter, Filter::JwtAuthn(_));
            for backend in MODES {
                let names = chain(c, backend);
                assert_eq!(names.last().map(String::as_str), Some(router));
                assert_eq!(
                    names.first().map(String::as_str) == Some(crate::jwt_authn::JWT_AUTHN_FILTER),
                    jwt,
                    "case {}: {names:?}",
                    c.id
                );
                if jwt {
                    assert!(!names.iter().any(|n| n == WASM_FILTER), "{names:?}");
                    let expected: &[&str] = match backend {
                        Backend::Upstream => &[crate::jwt_authn::JWT_AUTHN_FILTER, router],
                        Backend::Direct => &[crate::jwt_authn::JWT_AUTHN_FILTER, buffer, router],
                    };
                    assert_eq!(names, expected, "case {} {backend:?}", c.id);
                }
            }
        }
    }

    #[test]
    fn envoys_own_428_answers_the_probes_reply_body() {
        // `--host-costs` prices retry-guard's own answer against Envoy's (configuration 7)
        // with the probe's `reply_428`: the same body.
        assert_eq!(answers(428)[0].body, hostcost_filter::reply_body());
    }

    #[test]
    fn the_upstream_and_the_pacing_envoy_answer_themselves() {
        let up = upstream_bootstrap();
        assert_eq!(up.http_filters, [BUFFER]);
        assert!(up.clusters.is_empty() && up.access_log_format.is_none());
        assert!(up
            .routes
            .iter()
            .all(|r| matches!(r.action, RouteAction::Direct { status: 200, .. })));
        let pacing = start_time_logging_bootstrap();
        assert!(pacing.http_filters.is_empty());
        assert_eq!(
            pacing.access_log_format.as_deref(),
            Some("%START_TIME(%s.%6f)%\n")
        );
        assert!(matches!(
            pacing.routes[..],
            [Route {
                action: RouteAction::Direct { status: 200, .. },
                ..
            }]
        ));
    }

    /// Every configuration passes `envoy --mode validate` (which loads its wasm module and
    /// configures the plugin). Needs the pinned Envoy and retry-guard's release wasm, as the
    /// harness's own tests do; a configuration of the no-op filter is skipped, with a note,
    /// while that module is not built (`just bench` builds it).
    #[test]
    fn each_configuration_passes_envoy_validation() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("rg-bench-validate-{}", std::process::id()));
        let guard_config = bench_plugin_config();
        let guard = wasm_path()?;
        let noop = release_wasm_path("noop_filter.wasm");
        let validate = |name: &str, b: Value, wasm: Option<&Path>| -> Result<()> {
            let out = pinned_envoy(&dir, name, b, PROXY_CPU, "info", wasm).validate()?;
            assert!(out.contains("OK"), "{name}: {out}");
            Ok(())
        };
        validate("upstream", upstream_bootstrap().to_json(), None)?;
        validate("pacing", start_time_logging_bootstrap().to_json(), None)?;
        for case in &CASES {
            let wasm = match case.filter {
                Filter::Noop if !noop.is_file() => {
                    eprintln!(
                        "case {}: not validated, {} is not built",
                        case.id,
                        noop.display()
                    );
                    continue;
                }
                Filter::Noop => Some(noop.as_path()),
                Filter::Guard | Filter::GuardCompared | Filter::GuardEtcd => Some(guard.as_path()),
                Filter::None | Filter::JwtAuthn(_) => None,
                Filter::Probe(_) => unreachable!("the benchmark's cases have no probe"),
            };
            let config = if runs_first_attempts(case) {
                first_attempts_config(&guard_config)
            } else {
                guard_config.clone()
            };
            for backend in MODES {
                let upstream = (backend == Backend::Upstream).then(upstream_addr);
                let b = proxy_config(case, backend, upstream, &config, None)?;
                validate(&format!("{}-{backend:?}", case.id), b, wasm)?;
            }
        }
        // Configuration 10: the ledger on etcd (validation does not reach etcd).
        let etcd = EtcdLedger::new(SocketAddr::from(([127, 0, 0, 1], 2379)), &guard_config)?;
        for backend in MODES {
            let upstream = (backend == Backend::Upstream).then(upstream_addr);
            let b = proxy_config(&TOKEN_ETCD, backend, upstream, &guard_config, Some(&etcd))?;
            validate(&format!("10-{backend:?}"), b, Some(guard.as_path()))?;
        }
        Ok(())
    }

    #[test]
    fn the_token_routes_natural_key_takes_the_query_string() {
        let config: Value = serde_json::from_str(&bench_plugin_config()).unwrap();
        let routes = config["routes"].as_array().unwrap();
        let token: Vec<&Value> = routes
            .iter()
            .filter(|r| r["match"]["route_name"] == "token")
            .collect();
        assert_eq!(token.len(), 1, "{config}");
        assert_eq!(token[0]["natural_key"]["query"], "sorted");
        assert!(routes
            .iter()
            .filter(|r| r["match"]["route_name"] != "token")
            .all(|r| r.get("natural_key").is_none()));
        // The filter's own parser accepts it.
        assert!(
            retry_guard::config::Config::parse(bench_plugin_config().as_bytes()).is_ok(),
            "{config}"
        );
    }

    #[test]
    fn case_5_alone_runs_with_a_short_token_window_and_a_larger_ledger() {
        let ids: Vec<usize> = CASES
            .iter()
            .filter(|c| runs_first_attempts(c))
            .map(|c| c.id)
            .collect();
        assert_eq!(
            ids,
            [5],
            "every request a first attempt on the shared-data ledger"
        );
        assert!(!runs_first_attempts(&TOKEN_ETCD));
        let base: Value = serde_json::from_str(&bench_plugin_config()).unwrap();
        let text = first_attempts_config(&bench_plugin_config());
        let config: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(config["max_entries"], FIRST_ATTEMPTS_MAX_ENTRIES);
        for (route, was) in config["routes"]
            .as_array()
            .unwrap()
            .iter()
            .zip(base["routes"].as_array().unwrap())
        {
            if route["match"]["route_name"] == "token" {
                assert_eq!(route["window_seconds"], FIRST_ATTEMPTS_WINDOW_SECONDS);
                let mut rest = route.clone();
                rest.as_object_mut().unwrap().remove("window_seconds");
                assert_eq!(&rest, was, "only the window changes");
            } else {
                assert_eq!(route, was);
            }
        }
        assert_eq!(config["window_seconds"], base["window_seconds"]);
        assert!(
            retry_guard::config::Config::parse(text.as_bytes()).is_ok(),
            "{config}"
        );
        assert_eq!(
            token_ledger_text(&text),
            "`max_entries` 524288, the token route's window 1 s"
        );
        assert_eq!(
            token_ledger_text(&bench_plugin_config()),
            "`max_entries` 65536, the token route's window 86400 s"
        );
        // Live entries at 30,000 first attempts a second stay near 6% of the table.
        let live = 30_000.0 * f64::from(FIRST_ATTEMPTS_WINDOW_SECONDS);
        assert!(live / f64::from(FIRST_ATTEMPTS_MAX_ENTRIES) < 0.06);
    }

    #[test]
    fn the_etcd_probe_calls_configuration_10s_cluster() {
        assert_eq!(ETCD_CLUSTER, hostcost_filter::ETCD_CLUSTER);
        assert_eq!(
            hostcost_filter::ENTRY_BYTES,
            retry_guard::ledger::ENTRY_BYTES
        );
        // The probe cannot link the filter (both export the proxy-wasm ABI): its transaction
        // is checked against the ledger's own, byte for byte.
        let value = [b'e'; retry_guard::ledger::ENTRY_BYTES];
        assert_eq!(
            hostcost_filter::txn_body("retry-guard-bench-probe/1-2-0"),
            retry_guard::etcd::txn_body(
                "retry-guard-bench-probe/1-2-0",
                retry_guard::etcd::Expect::Absent,
                &value,
                0
            )
        );
        assert_eq!(hostcost_filter::TXN_PATH, retry_guard::etcd::TXN_PATH);
        for case in [crate::cases::PROBE_HOLD, crate::cases::PROBE_ETCD_TXN] {
            let Filter::Probe(config) = case.filter else {
                panic!("{} is a probe", case.id);
            };
            hostcost_filter::parse(config).unwrap();
        }
        let etcd = EtcdLedger::new(
            SocketAddr::from(([127, 0, 0, 1], 2379)),
            r#"{"window_seconds":60,"routes":[]}"#,
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        for (case, calls) in [
            (crate::cases::PROBE_ETCD_TXN, true),
            (crate::cases::PROBE_HOLD, false),
        ] {
            let b = proxy_config(&case, Backend::Upstream, Some(addr), "", Some(&etcd)).unwrap();
            assert_eq!(b.to_string().contains(ETCD_CLUSTER), calls, "{}", case.id);
        }
    }

    #[test]
    fn configuration_10_puts_the_ledger_on_etcd_through_its_cluster() {
        let client = SocketAddr::from(([127, 0, 0, 1], 2379));
        let etcd = EtcdLedger::new(client, r#"{"window_seconds":60,"routes":[]}"#).unwrap();
        let config: Value = serde_json::from_str(&etcd.plugin_config).unwrap();
        assert_eq!(config["window_seconds"], 60, "the rest is kept");
        assert_eq!(config["ledger"]["backend"], "etcd");
        assert_eq!(config["ledger"]["cluster"], ETCD_CLUSTER);
        assert_eq!(config["ledger"]["timeout_ms"], ETCD_TIMEOUT_MS);
        let b = proxy_bootstrap(
            &TOKEN_ETCD,
            Backend::Upstream,
            Some(upstream_addr()),
            "GUARD-CONFIG",
            Some(&etcd),
        );
        let wasm: Vec<&str> = b
            .http_filters
            .iter()
            .filter_map(|f| match f {
                HttpFilter::Wasm { plugin_config, .. } => Some(plugin_config.as_str()),
                HttpFilter::Buffer { .. } => None,
            })
            .collect();
        assert_eq!(wasm, [etcd.plugin_config.as_str()]);
        assert_eq!(b.raw_clusters.len(), 1);
        assert_eq!(b.raw_clusters[0]["name"], ETCD_CLUSTER);
        let port = &b.raw_clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            ["endpoint"]["address"]["socket_address"]["port_value"];
        assert_eq!(port, 2379);
        // The shared-data configurations have no etcd cluster, even when etcd is set.
        let five = proxy_bootstrap(
            &TOKEN_ALLOW,
            Backend::Upstream,
            Some(upstream_addr()),
            "GUARD-CONFIG",
            Some(&etcd),
        );
        assert!(five.raw_clusters.is_empty());
        assert!(EtcdLedger::new(client, "[1]").is_err());
        // The benchmark's configuration with the etcd ledger is one the filter accepts.
        let bench = EtcdLedger::new(client, &bench_plugin_config()).unwrap();
        let parsed = retry_guard::config::Config::parse(bench.plugin_config.as_bytes());
        assert!(parsed.is_ok(), "{}", bench.plugin_config);
    }

    #[test]
    fn a_finished_run_removes_the_envoy_logs_only() {
        let dir = std::env::temp_dir().join(format!("rg-bench-logs-{}", std::process::id()));
        for f in [
            "envoy-5/envoy.log",
            "envoy-upstream/envoy.log",
            "envoy-5/envoy.yaml",
            "report.md",
        ] {
            let path = dir.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "x").unwrap();
        }
        remove_envoy_logs(&dir);
        let mut left: Vec<String> = ["", "envoy-5", "envoy-upstream"]
            .iter()
            .flat_map(|sub| {
                fs::read_dir(dir.join(sub))
                    .unwrap()
                    .map(|e| e.unwrap())
                    .filter(|e| e.file_type().unwrap().is_file())
                    .map(move |e| format!("{sub}/{}", e.file_name().to_string_lossy()))
            })
            .collect();
        left.sort();
        assert_eq!(left, ["/report.md", "envoy-5/envoy.yaml"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
