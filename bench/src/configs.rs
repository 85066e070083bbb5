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

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use retry_guard_e2e::envoy::{
    check_wasm, release_wasm_path, wasm_path, Bootstrap, Cluster, Envoy, EnvoyBuilder, HttpFilter,
    PathMatch, Route, WASM_FILTER,
};
use retry_guard_e2e::{bail, Result};

use crate::args::Options;
use crate::cases::{Case, Filter};
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

/// The upstream Envoy: the answers of configurations 1 to 5, each request read whole.
pub fn upstream_bootstrap() -> Bootstrap {
    answers(200)
        .iter()
        .fold(Bootstrap::new("bench"), |b, a| b.route(a.direct_route()))
        .http_filter(BUFFER)
}

/// The proxy Envoy of `case`: its wasm filter (retry-guard with `guard_config`), its routes
/// forwarded to `upstream` or (in direct mode, and Envoy's own 428) answered in the proxy.
pub fn proxy_bootstrap(
    case: &Case,
    backend: Backend,
    upstream: Option<SocketAddr>,
    guard_config: &str,
) -> Bootstrap {
    // Routes answered here: all in direct mode, and Envoy's own 428 (configuration 7).
    let local = |status: u16| backend == Backend::Direct || status == 428;
    let mut b = Bootstrap::new("bench");
    let plugin_config = match case.filter {
        Filter::None => None,
        Filter::Noop => Some(""),
        Filter::Guard => Some(guard_config),
        Filter::Probe(config) => Some(config),
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
    if case.filter == Filter::None && !case.body.is_empty() && local(case.token_status) {
        b = b.http_filter(BUFFER);
    }
    if let (Backend::Upstream, Some(addr)) = (backend, upstream) {
        b = b.cluster(
            Cluster::new(UPSTREAM, addr)
                .connect_timeout(Duration::from_secs(1))
                .circuit_breaker_limit(100_000),
        );
    }
    b
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
        Ok(Modules { guard, noop, probe })
    }

    /// The module `filter` loads, if any.
    pub fn of(&self, filter: Filter) -> Option<&Path> {
        match filter {
            Filter::None => None,
            Filter::Noop => Some(&self.noop),
            Filter::Guard => Some(&self.guard),
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

/// An Envoy of `bootstrap` pinned to `cpu` (`--concurrency 1`, `-l log_level`), loading `wasm`
/// if its bootstrap has a wasm filter; its run files go to `<dir>/envoy-<name>/`.
pub fn pinned_envoy(
    dir: &Path,
    name: &str,
    bootstrap: &Bootstrap,
    cpu: &str,
    log_level: &str,
    wasm: Option<&Path>,
) -> EnvoyBuilder {
    // Any address: a custom bootstrap names its own upstreams.
    let unused = SocketAddr::from(([127, 0, 0, 1], 0));
    let builder = Envoy::builder(&format!("bench-{name}"), unused)
        .bootstrap(bootstrap.to_json())
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
    upstream: Option<Envoy>,
}

impl Proxies {
    /// Finds the modules and, in upstream mode, starts the upstream Envoy (pinned to the load
    /// generator's CPU: the proxy keeps its own). Run files go to `dir`.
    pub fn new(o: &Options, dir: &Path) -> Result<Proxies> {
        let modules = Modules::find(o)?;
        let guard_config = o.plugin_config.clone().unwrap_or_else(|| {
            // host-sim's benchmark measures the same configuration per request path.
            String::from_utf8_lossy(&host_sim::bench::plugin_config(65_536)).into_owned()
        });
        let upstream = match o.backend {
            Backend::Upstream => Some(
                pinned_envoy(
                    dir,
                    "upstream",
                    &upstream_bootstrap(),
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
            upstream,
        })
    }

    /// The wasm modules.
    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    /// The Envoy configuration of `case` in this run.
    fn bootstrap(&self, case: &Case) -> Bootstrap {
        let upstream = self.upstream.as_ref().map(Envoy::listener_addr);
        proxy_bootstrap(case, self.backend, upstream, &self.guard_config)
    }

    /// Starts the proxy Envoy of `case` on [`PROXY_CPU`].
    pub fn start(&self, case: &Case) -> Result<Envoy> {
        pinned_envoy(
            &self.dir,
            &case.id.to_string(),
            &self.bootstrap(case),
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
    use crate::cases::CASES;
    use retry_guard_e2e::envoy::RouteAction;

    const MODES: [Backend; 2] = [Backend::Upstream, Backend::Direct];

    fn upstream_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4444))
    }

    fn bootstrap_of(case: &Case, backend: Backend) -> Bootstrap {
        let upstream = (backend == Backend::Upstream).then(upstream_addr);
        proxy_bootstrap(case, backend, upstream, "GUARD-CONFIG")
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
                    Filter::None => &[],
                    Filter::Noop => &[""],
                    Filter::Guard => &["GUARD-CONFIG"],
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
                let answers_body_itself = case.filter == Filter::None
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
        let buffered =
            |id: usize, backend| bootstrap_of(&CASES[id - 1], backend).http_filters == [BUFFER];
        assert!(buffered(7, Backend::Upstream) && buffered(7, Backend::Direct));
        assert!(!buffered(8, Backend::Upstream) && buffered(8, Backend::Direct));
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
        let guard_config =
            String::from_utf8_lossy(&host_sim::bench::plugin_config(65_536)).into_owned();
        let guard = wasm_path()?;
        let noop = release_wasm_path("noop_filter.wasm");
        let validate = |name: &str, b: &Bootstrap, wasm: Option<&Path>| -> Result<()> {
            let out = pinned_envoy(&dir, name, b, PROXY_CPU, "info", wasm).validate()?;
            assert!(out.contains("OK"), "{name}: {out}");
            Ok(())
        };
        validate("upstream", &upstream_bootstrap(), None)?;
        validate("pacing", &start_time_logging_bootstrap(), None)?;
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
                Filter::Guard => Some(guard.as_path()),
                Filter::None => None,
                Filter::Probe(_) => unreachable!("the nine cases have no probe"),
            };
            for backend in MODES {
                let upstream = (backend == Backend::Upstream).then(upstream_addr);
                let b = proxy_bootstrap(case, backend, upstream, &guard_config);
                validate(&format!("{}-{backend:?}", case.id), &b, wasm)?;
            }
        }
        Ok(())
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
