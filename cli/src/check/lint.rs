//! The lints: pure functions from the [`Deployment`] to [`Finding`]s, each saying what is wrong,
//! where, and what to change.
//!
//! Errors: plugin configuration errors (the filter's parser), a fail-open filter, a missing or
//! false `allow_on_headers_stop_iteration` where a route reads the body, a WasmPlugin guarding
//! routes that read the body, a `route_name` that names no route, router or mesh retries beyond
//! never-sent attempts on a guarded route, the filter switched off on a guarded route, an Envoy
//! connection manager with the filter that does not normalize paths before routing.
//! Warnings: a route that looks sensitive by its path but is not guarded, the filter running on
//! a route it does not guard, a caller-chosen principal source (`header:`, `jwt:`), Istio
//! resources with no path normalization in the inputs, an etcd ledger whose Envoy cluster the
//! deployment does not have, a sensitive route without a required idempotency key whose window
//! is longer than [`LONG_WINDOW_SECONDS`].

use retry_guard::config::LedgerBackend;
use retry_guard::policy::RouteClass;

use super::matching::{covers, methods_cover, methods_overlap, overlaps, sensitive_word, PathCond};
use super::model::{
    join, Deployment, FilterKind, MeshKind, PluginSource, RetryOrigin, Route, RouteKind, Scope,
    Source, ISTIO_DEFAULT_RETRY_ON,
};
use retry_guard::config::PrincipalSource;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Must be fixed: exit code 1.
    Error,
    /// Worth a look; does not change the exit code.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem: where it is and what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The input file.
    pub file: String,
    /// The YAML/JSON path in the file (empty: the file itself).
    pub path: String,
    /// What is wrong and what to change.
    pub message: String,
}

/// The retry conditions a guarded route may have: attempts the upstream never received.
pub const NEVER_SENT: [&str; 2] = ["connect-failure", "refused-stream"];

/// A plugin route that guards a route.
#[derive(Clone, Debug)]
pub struct Guard<'a> {
    /// Index into `Deployment::configs`.
    pub config: usize,
    /// The plugin route's name.
    pub name: &'a str,
    /// Its class.
    pub class: RouteClass,
}

/// Every lint over the deployment; findings by file (in input order), errors first.
pub fn lint(dep: &Deployment) -> Vec<Finding> {
    let guards = guards(dep);
    let mut out = Vec::new();
    out.extend(config_errors(dep));
    out.extend(fail_open(dep));
    out.extend(headers_stop_iteration(dep));
    out.extend(wasmplugin_bodies(dep));
    out.extend(route_names(dep));
    out.extend(router_retries(dep, &guards));
    out.extend(filter_off_on_guarded(dep, &guards));
    out.extend(path_normalization(dep));
    out.extend(sensitive_unguarded(dep, &guards));
    out.extend(filter_on_unguarded(dep, &guards));
    out.extend(caller_chosen_principals(dep));
    out.extend(unwritten_verified_principals(dep));
    out.extend(ledger_cluster(dep));
    out.extend(long_windows(dep));
    out.sort_by_key(|f| (dep.files.iter().position(|n| *n == f.file), f.severity));
    out
}

fn finding(
    dep: &Deployment,
    severity: Severity,
    file: usize,
    path: String,
    message: String,
) -> Finding {
    Finding {
        severity,
        file: dep.files.get(file).cloned().unwrap_or_default(),
        path,
        message,
    }
}

/// Is some plugin configuration of this scope invalid? Then which routes it guards is unknown
/// and the route lints stay quiet there (its errors are reported).
fn scope_invalid(dep: &Deployment, scope: Scope) -> bool {
    dep.configs
        .iter()
        .any(|c| c.scope == scope && c.parsed.is_err())
}

/// For each route, the plugin routes that guard it: by `match.route_name` (every route of that
/// name in the configuration's scope), else by path and method (every route that can see some
/// of the plugin route's requests, in order, until one takes all of them).
pub fn guards(dep: &Deployment) -> Vec<Vec<Guard<'_>>> {
    let mut out: Vec<Vec<Guard<'_>>> = vec![Vec::new(); dep.routes.len()];
    for (c, cfg) in dep.configs.iter().enumerate() {
        let Ok(config) = &cfg.parsed else { continue };
        for pr in &config.routes {
            let guard = Guard {
                config: c,
                name: pr.name.as_str(),
                class: pr.class,
            };
            let in_scope = dep
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.scope == cfg.scope);
            match &pr.matcher.route_name {
                Some(rn) => {
                    for (ri, _) in in_scope.filter(|(_, r)| r.names.contains(rn)) {
                        if let Some(g) = out.get_mut(ri) {
                            g.push(guard.clone());
                        }
                    }
                }
                None => {
                    let pc = PathCond::of_plugin(&pr.matcher.path);
                    let methods = &pr.matcher.methods;
                    let mut taken: Vec<usize> = Vec::new();
                    for (ri, r) in in_scope {
                        if taken.contains(&r.group) {
                            continue;
                        }
                        if r.matches.iter().any(|m| {
                            overlaps(&m.path, &pc) && methods_overlap(methods, m.method.as_deref())
                        }) {
                            if let Some(g) = out.get_mut(ri) {
                                g.push(guard.clone());
                            }
                        }
                        if r.matches.iter().any(|m| {
                            !m.narrowed
                                && covers(&m.path, &pc)
                                && methods_cover(m.method.as_deref(), methods)
                        }) {
                            taken.push(r.group);
                        }
                    }
                }
            }
        }
    }
    out
}

fn describe_guards(gs: &[Guard<'_>]) -> String {
    let items: Vec<String> = gs
        .iter()
        .map(|g| format!("{:?} ({})", g.name, g.class.name()))
        .collect();
    let noun = if items.len() == 1 {
        "plugin route"
    } else {
        "plugin routes"
    };
    format!("{noun} {}", items.join(", "))
}

/// The plugin routes of a valid configuration that read the request body (every class but
/// `read_only`: the filter hashes the body before it decides).
fn body_routes(cfg: &PluginSource) -> Vec<String> {
    match &cfg.parsed {
        Ok(c) => c
            .routes
            .iter()
            .filter(|r| r.class != RouteClass::ReadOnly)
            .map(|r| format!("{:?} ({})", r.name, r.class.name()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The filter's own parser's errors, at the configuration's place in the file.
pub fn config_errors(dep: &Deployment) -> Vec<Finding> {
    dep.configs
        .iter()
        .filter_map(|cfg| {
            let e = cfg.parsed.as_ref().err()?;
            Some(finding(
                dep,
                Severity::Error,
                cfg.file,
                join(&cfg.path, &e.path),
                e.message.clone(),
            ))
        })
        .collect()
}

/// A filter that fails open: a broken filter would let every request pass unguarded.
pub fn fail_open(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Some(s) = &cfg.filter else { continue };
        let open = s.failure_policy.as_deref() == Some("FAIL_OPEN");
        match s.kind {
            FilterKind::EnvoyWasm => {
                if s.fail_open == Some(true) {
                    out.push(finding(
                        dep,
                        Severity::Error,
                        cfg.file,
                        s.field("fail_open"),
                        "fail_open: true lets every request pass unguarded when the filter fails \
                         (VM crash, module not loaded, invalid plugin configuration): the \
                         boundary opens exactly when it is broken; remove it and set \
                         failure_policy: FAIL_RELOAD (Envoy answers 503 and restarts the VM), or \
                         at least set fail_open: false (503 until Envoy restarts)"
                            .to_string(),
                    ));
                }
                if !open
                    && s.fail_open != Some(true)
                    && s.failure_policy.as_deref() != Some("FAIL_RELOAD")
                {
                    out.push(finding(
                        dep,
                        Severity::Warning,
                        cfg.file,
                        s.field("failure_policy"),
                        "without failure_policy: FAIL_RELOAD a VM that traps answers 503 to every \
                         request on its worker until Envoy restarts (FAIL_CLOSED, the default, \
                         and fail_open: false do that); FAIL_RELOAD fails closed as well and \
                         restarts the VM after its backoff, the ledger intact (README, \"When \
                         the filter fails\"; measured by envoy/tests/vm_failure.rs)"
                            .to_string(),
                    ));
                }
                if open {
                    out.push(finding(
                        dep,
                        Severity::Error,
                        cfg.file,
                        s.field("failure_policy"),
                        "failure_policy: FAIL_OPEN lets every request pass unguarded when the \
                         filter fails: the boundary opens exactly when it is broken; set \
                         failure_policy: FAIL_CLOSED (or FAIL_RELOAD)"
                            .to_string(),
                    ));
                }
            }
            FilterKind::WasmPlugin => {
                if open {
                    out.push(finding(
                        dep,
                        Severity::Error,
                        cfg.file,
                        s.field("failStrategy"),
                        "failStrategy: FAIL_OPEN lets every request pass unguarded when the \
                         module cannot be fetched or the VM fails: the boundary opens exactly \
                         when it is broken; set failStrategy: FAIL_CLOSE"
                            .to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// An Envoy wasm filter without `allow_on_headers_stop_iteration: true` whose configuration
/// has routes that read the body: those requests hang (README, "Loading it into Envoy").
pub fn headers_stop_iteration(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Some(s) = &cfg.filter else { continue };
        if s.kind != FilterKind::EnvoyWasm || s.allow_on_headers_stop_iteration == Some(true) {
            continue;
        }
        let routes = body_routes(cfg);
        if routes.is_empty() {
            continue;
        }
        let (state, fix) = match s.allow_on_headers_stop_iteration {
            None => (
                "missing",
                "add allow_on_headers_stop_iteration: true beside `configuration`",
            ),
            Some(_) => ("not true", "set allow_on_headers_stop_iteration: true"),
        };
        out.push(finding(
            dep,
            Severity::Error,
            cfg.file,
            s.field("allow_on_headers_stop_iteration"),
            format!(
                "{state}, and {} the request body before deciding: without \
                 allow_on_headers_stop_iteration: true (Envoy >= 1.35) Envoy never delivers the \
                 body to the filter and such requests hang until the route timeout; {fix}",
                routes_read(&routes)
            ),
        ));
    }
    out
}

/// `plugin route "a" (class) reads` or `plugin routes "a" (class), "b" (class) read`.
fn routes_read(routes: &[String]) -> String {
    match routes {
        [one] => format!("plugin route {one} reads"),
        many => format!("plugin routes {} read", many.join(", ")),
    }
}

/// A WasmPlugin whose configuration has routes that read the body: Istio's WasmPlugin cannot
/// set `allow_on_headers_stop_iteration` (envoy/PER-ROUTE.md).
pub fn wasmplugin_bodies(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Some(s) = &cfg.filter else { continue };
        if s.kind != FilterKind::WasmPlugin {
            continue;
        }
        let routes = body_routes(cfg);
        if routes.is_empty() {
            continue;
        }
        out.push(finding(
            dep,
            Severity::Error,
            cfg.file,
            join(&cfg.path, "routes"),
            format!(
                "a WasmPlugin cannot set allow_on_headers_stop_iteration, and {} the request body \
                 before deciding: on the proxy such requests hang until the route timeout; \
                 deploy retry-guard with an EnvoyFilter instead (envoy/istio/envoyfilter.yaml, \
                 see envoy/PER-ROUTE.md), or keep only read_only routes in this WasmPlugin",
                routes_read(&routes)
            ),
        ));
    }
    out
}

/// A `match.route_name` that names no route of the configuration's scope (checked only where
/// the routes are known: an inline `route_config`, or VirtualServices given with an Istio
/// configuration).
pub fn route_names(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Ok(config) = &cfg.parsed else { continue };
        let routes: Vec<&Route> = dep.routes.iter().filter(|r| r.scope == cfg.scope).collect();
        let known = match cfg.scope {
            Scope::Hcm(h) => dep.hcms.get(h).is_some_and(|h| h.routes_known),
            Scope::Detached => !routes.is_empty(),
        };
        if !known {
            continue;
        }
        let mut names: Vec<&str> = Vec::new();
        for n in routes.iter().flat_map(|r| r.names.iter()) {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        let where_ = match cfg.scope {
            Scope::Hcm(_) => "no route of this connection manager's route_config",
            Scope::Detached if routes.iter().all(|r| r.kind == RouteKind::VirtualService) => {
                "no VirtualService http route given"
            }
            Scope::Detached => "no route given",
        };
        let listed = if names.is_empty() {
            "none of them has a name".to_string()
        } else {
            format!("the names there: {}", names.join(", "))
        };
        for (i, pr) in config.routes.iter().enumerate() {
            let Some(rn) = &pr.matcher.route_name else {
                continue;
            };
            if names.contains(&rn.as_str()) {
                continue;
            }
            out.push(finding(
                dep,
                Severity::Error,
                cfg.file,
                join(&cfg.path, &format!("routes[{i}].match.route_name")),
                format!(
                    "{rn:?} names no route: {where_} is named so ({listed}); the filter \
                     compares it with xds.route_name, so plugin route {:?} never matches and \
                     its requests pass unguarded; use the route's name",
                    pr.name
                ),
            ));
        }
    }
    out
}

/// Router (Envoy `retry_policy`) or mesh (VirtualService `retries`, Istio's default when
/// absent) retries beyond never-sent attempts on a route a non-`read_only` plugin route
/// guards: the router re-sends behind every HTTP filter.
pub fn router_retries(dep: &Deployment, guards: &[Vec<Guard<'_>>]) -> Vec<Finding> {
    // Findings at one place (a virtual host's retry_policy) name every route it affects.
    let mut places: Vec<(usize, String, Vec<usize>)> = Vec::new();
    for (ri, r) in dep.routes.iter().enumerate() {
        let Some(rt) = &r.retry else { continue };
        if !r.forwards || rt.num_retries == 0 || beyond(&rt.retry_on).is_empty() {
            continue;
        }
        let writes = guards
            .get(ri)
            .is_some_and(|gs| gs.iter().any(|g| g.class != RouteClass::ReadOnly));
        if !writes {
            continue;
        }
        match places
            .iter_mut()
            .find(|(f, p, _)| *f == r.file && *p == rt.path)
        {
            Some((_, _, rs)) => rs.push(ri),
            None => places.push((r.file, rt.path.clone(), vec![ri])),
        }
    }
    let mut out = Vec::new();
    for (file, path, rs) in places {
        let Some(first) = rs.first().and_then(|i| dep.routes.get(*i)) else {
            continue;
        };
        let Some(rt) = &first.retry else { continue };
        let gs: Vec<Guard<'_>> = rs
            .iter()
            .flat_map(|i| guards.get(*i).into_iter().flatten())
            .filter(|g| g.class != RouteClass::ReadOnly)
            .cloned()
            .collect();
        let who = describe_guards(&gs);
        let on = rt.retry_on.join(",");
        let bad = beyond(&rt.retry_on).join(",");
        let n = rt.num_retries;
        let label = first.label();
        let message = match rt.origin {
            RetryOrigin::Route => format!(
                "the router re-sends {label} on {on:?} (num_retries {n}), and {who} guards it: \
                 Envoy's router retries behind every HTTP filter, so the filter sees one \
                 request while the upstream may get {}; {bad:?} can re-send an attempt the \
                 upstream already received; set retry_on: \"connect-failure,refused-stream\" \
                 (never-sent attempts only) or num_retries: 0",
                n.saturating_add(1)
            ),
            RetryOrigin::VirtualHost => format!(
                "this virtual host's retry_policy ({on:?}, num_retries {n}) applies to {} (no \
                 retry_policy of their own), which {who} guard: Envoy's router retries behind \
                 every HTTP filter, and {bad:?} can re-send an attempt the upstream already \
                 received; give each guarded route its own retry_policy {{ retry_on: \
                 \"connect-failure,refused-stream\" }} or narrow this one",
                rs.iter()
                    .filter_map(|i| dep.routes.get(*i))
                    .map(Route::label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            RetryOrigin::IstioDefault => format!(
                "missing on {label}, which {who} guards: Istio's default retry policy then \
                 re-sends up to 2 times on {ISTIO_DEFAULT_RETRY_ON} (503) behind the filter \
                 (istio issue 50506); set retries: {{attempts: 2, retryOn: \
                 \"connect-failure,refused-stream\"}} (or attempts: 0)"
            ),
            RetryOrigin::IstioRetries => format!(
                "{label} retries on {on:?} ({n} attempts), and {who} guards it: the proxy \
                 re-sends behind the filter, and {bad:?} can re-send an attempt the upstream \
                 already received; set retryOn: \"connect-failure,refused-stream\" (or \
                 attempts: 0)"
            ),
            RetryOrigin::IstioRetriesDefaultOn => format!(
                "{label} sets attempts {n} without retryOn, so Istio retries on its default \
                 conditions ({ISTIO_DEFAULT_RETRY_ON}, 503), and {who} guards it: the proxy \
                 re-sends behind the filter; add retryOn: \"connect-failure,refused-stream\" \
                 (or set attempts: 0)"
            ),
        };
        out.push(finding(dep, Severity::Error, file, path, message));
    }
    out
}

/// The retry conditions beyond [`NEVER_SENT`].
fn beyond(retry_on: &[String]) -> Vec<String> {
    retry_on
        .iter()
        .filter(|c| !NEVER_SENT.contains(&c.as_str()))
        .cloned()
        .collect()
}

/// Is the HTTP filter `name` running on this route (its `FilterConfig` switch, else the
/// filter's own `disabled`)? Returns the switch that decides, if any.
fn filter_state<'a>(
    r: &'a Route,
    name: &str,
    disabled_by_default: bool,
) -> (bool, Option<&'a super::model::FilterSwitch>) {
    match r.filter_switches.iter().find(|s| s.filter == name) {
        Some(s) => (!s.disabled, Some(s)),
        None => (!disabled_by_default, None),
    }
}

/// The retry-guard filter switched off on a route one of its plugin routes guards: those
/// requests pass unguarded.
pub fn filter_off_on_guarded(dep: &Deployment, guards: &[Vec<Guard<'_>>]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (ri, r) in dep.routes.iter().enumerate() {
        let mut seen: Vec<&str> = Vec::new();
        for g in guards.get(ri).into_iter().flatten() {
            let Some(s) = dep.configs.get(g.config).and_then(|c| c.filter.as_ref()) else {
                continue;
            };
            let Some(name) = s.http_filter_name.as_deref() else {
                continue;
            };
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let (on, switch) = filter_state(r, name, s.disabled_by_default);
            if on {
                continue;
            }
            let mine: Vec<Guard<'_>> = guards
                .get(ri)
                .into_iter()
                .flatten()
                .filter(|x| {
                    dep.configs
                        .get(x.config)
                        .and_then(|c| c.filter.as_ref())
                        .and_then(|f| f.http_filter_name.as_deref())
                        == Some(name)
                })
                .cloned()
                .collect();
            let who = describe_guards(&mine);
            let (path, message) = match switch {
                Some(sw) => (
                    sw.path.clone(),
                    format!(
                        "the retry-guard filter {name:?} is switched off on {} (FilterConfig \
                         disabled: true), which {who} guards: its requests pass unguarded; \
                         remove this typed_per_filter_config entry",
                        r.label()
                    ),
                ),
                None => (
                    r.path.clone(),
                    format!(
                        "the retry-guard filter {name:?} is disabled by default (disabled: true \
                         on the HTTP filter) and not enabled on {}, which {who} guards: its \
                         requests pass unguarded; enable it here with typed_per_filter_config: \
                         {{ {name}: {{ \"@type\": \
                         type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: false \
                         }} }}",
                        r.label()
                    ),
                ),
            };
            out.push(finding(dep, Severity::Error, r.file, path, message));
        }
    }
    out
}

/// The first sensitive word in a route's path conditions, with the path text.
fn sensitive(r: &Route) -> Option<(String, String)> {
    r.matches.iter().find_map(|m| {
        let text = m.path.text()?;
        sensitive_word(text).map(|w| (text.to_string(), w))
    })
}

/// The connection manager routes on the path as the caller spelled it: `//oauth/token`,
/// `/oauth/%74oken` or `/oauth%2Ftoken` then miss the route the filter guards and may take
/// another one (a catch-all forwarding them unguarded). An error for an Envoy connection
/// manager with a retry-guard filter; for Istio resources, where the mesh configuration (not
/// among the inputs) may normalize, a warning when no EnvoyFilter in the inputs does.
pub fn path_normalization(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, hcm) in dep.hcms.iter().enumerate() {
        if !dep.configs.iter().any(|c| c.scope == Scope::Hcm(i)) {
            continue;
        }
        let missing = hcm.paths.missing();
        if missing.is_empty() {
            continue;
        }
        out.push(finding(
            dep,
            Severity::Error,
            hcm.file,
            hcm.path.clone(),
            format!(
                "this connection manager runs retry-guard but routes on the path as the caller \
                 spelled it: `//oauth/token`, `/oauth/%74oken` or `/oauth%2Ftoken` miss the \
                 route the filter guards and take another (a catch-all forwards them \
                 unguarded); add {}",
                missing.join(", ")
            ),
        ));
    }
    let normalized = dep
        .detached_hcms
        .iter()
        .any(|h| h.paths.missing().is_empty());
    if normalized {
        return out;
    }
    for cfg in &dep.configs {
        if !matches!(cfg.source, Source::WasmPlugin | Source::EnvoyFilter) {
            continue;
        }
        let Some(s) = &cfg.filter else { continue };
        let partial = dep
            .detached_hcms
            .iter()
            .map(|h| h.paths.missing())
            .min_by_key(Vec::len)
            .unwrap_or_else(|| {
                vec![
                    "normalize_path: true",
                    "merge_slashes: true",
                    "path_with_escaped_slashes_action: REJECT_REQUEST",
                ]
            });
        out.push(finding(
            dep,
            Severity::Warning,
            cfg.file,
            s.path.clone(),
            format!(
                "no path normalization among the inputs: unless the mesh sets \
                 meshConfig.pathNormalization.normalization: DECODE_AND_MERGE_SLASHES, the \
                 gateway routes on the path as the caller spelled it and `//oauth/token` or \
                 `/oauth/%74oken` miss the VirtualService route the filter guards; set that, or \
                 merge {} into the gateway's connection manager with an EnvoyFilter \
                 NETWORK_FILTER patch (as envoy/istio/envoyfilter.yaml does)",
                partial.join(", ")
            ),
        ));
    }
    out
}

/// `header:` and `jwt:` principal sources: the caller chooses their value, so each retry can
/// name a new principal and so a new operation.
pub fn caller_chosen_principals(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Ok(config) = &cfg.parsed else { continue };
        for (i, source) in config.principal.iter().enumerate() {
            let why = match source {
                PrincipalSource::Header(name) => format!(
                    "\"header:{name}\" is caller-chosen: a caller can send any value in a \
                     request header, and each new value makes a retry a new operation; use \
                     peer_identity, token or cookie:<name>, or keep it only if a proxy in front \
                     sets {name} itself and drops the caller's"
                ),
                PrincipalSource::JwtClaim(claim) => format!(
                    "\"jwt:{claim}\" is caller-chosen: retry-guard reads it from a JWT it does \
                     not verify, so a caller can mint any {claim} and make each retry a new \
                     operation; use peer_identity, token or cookie:<name>, or keep it only where \
                     a filter before retry-guard (jwt_authn, an Istio RequestAuthentication) \
                     rejects unverified tokens"
                ),
                _ => continue,
            };
            out.push(finding(
                dep,
                Severity::Warning,
                cfg.file,
                join(&cfg.path, &format!("principal[{i}]")),
                why,
            ));
        }
    }
    out
}

/// The longest window [`long_windows`] lets a sensitive route without a required idempotency
/// key have quietly: retries come seconds to a minute apart, so ten minutes is generous.
pub const LONG_WINDOW_SECONDS: u64 = 600;

/// Sensitive routes that do not require an idempotency key and keep attempts longer than
/// [`LONG_WINDOW_SECONDS`]: their fingerprint is the natural key (method, path, principal,
/// body), so two legitimate calls with the same body inside the window (two runs of a CI job
/// asking for a token) are one operation, and the second is answered 428.
pub fn long_windows(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Ok(config) = &cfg.parsed else { continue };
        for (i, r) in config.routes.iter().enumerate() {
            if !r.class.is_sensitive()
                || r.require_idempotency_key
                || r.window_seconds <= LONG_WINDOW_SECONDS
            {
                continue;
            }
            let (path, from) = if r.window_seconds == config.window_seconds {
                (format!("routes[{i}]"), "the global window_seconds")
            } else {
                (format!("routes[{i}].window_seconds"), "its window_seconds")
            };
            out.push(finding(
                dep,
                Severity::Warning,
                cfg.file,
                join(&cfg.path, &path),
                format!(
                    "route \"{}\" ({}) keeps attempts {} s ({from}) and does not require an \
                     idempotency key, so two calls with the same body and principal within {} s \
                     are one operation: the second is answered 428 and a person is asked to \
                     confirm a legitimate new call. Retries come seconds to a minute apart; set \
                     routes[{i}].window_seconds to the gap that separates them (run in shadow \
                     mode and read the retry_guard.gap.* counters, see \"Rolling out\"), or \
                     set require_idempotency_key: true",
                    r.name,
                    r.class.name(),
                    r.window_seconds,
                    r.window_seconds
                ),
            ));
        }
    }
    out
}

/// The namespace Envoy's `jwt_authn` writes its verified payloads under.
const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// `metadata:envoy.filters.http.jwt_authn:<key>...` sources where the Envoy filter chain is
/// visible and no `jwt_authn` filter before retry-guard writes `<key>` (`payload_in_metadata`):
/// the source never has a value. Other namespaces are not checked (any filter may write them).
pub fn unwritten_verified_principals(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Ok(config) = &cfg.parsed else { continue };
        let Some(written) = cfg
            .filter
            .as_ref()
            .and_then(|f| f.jwt_payloads_before.as_ref())
        else {
            continue;
        };
        for (i, source) in config.principal.iter().enumerate() {
            let PrincipalSource::Metadata(m) = source else {
                continue;
            };
            let Some(key) = m.path.first() else { continue };
            if m.namespace != JWT_AUTHN_NAMESPACE || written.contains(key) {
                continue;
            }
            let what = if written.is_empty() {
                "there is no jwt_authn filter before retry-guard in this filter chain".to_string()
            } else {
                format!(
                    "the jwt_authn filter before retry-guard writes payload_in_metadata {}, not {key:?}",
                    written
                        .iter()
                        .map(|w| format!("{w:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let then = match config.on_missing_verified_principal {
                retry_guard::config::OnMissingVerified::Next => {
                    "every request falls through to the next principal source"
                }
                retry_guard::config::OnMissingVerified::Reject => {
                    "every request is refused 401 principal-required"
                }
            };
            out.push(finding(
                dep,
                Severity::Warning,
                cfg.file,
                join(&cfg.path, &format!("principal[{i}]")),
                format!(
                    "\"{m}\" never has a value: {what}, so {then}; put a jwt_authn filter with \
                     payload_in_metadata: {key} before retry-guard in http_filters"
                ),
            ));
        }
    }
    out
}

/// A route whose path looks sensitive (see [`super::matching::SENSITIVE_WORDS`]) that no plugin
/// route guards.
pub fn sensitive_unguarded(dep: &Deployment, guards: &[Vec<Guard<'_>>]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (ri, r) in dep.routes.iter().enumerate() {
        // A route that answers itself (a direct response, a redirect) executes nothing.
        if guards.get(ri).is_some_and(|g| !g.is_empty())
            || scope_invalid(dep, r.scope)
            || !r.forwards
        {
            continue;
        }
        let Some((text, word)) = sensitive(r) else {
            continue;
        };
        let filtered = dep.configs.iter().any(|c| c.scope == r.scope);
        let why = match (filtered, r.scope) {
            (true, _) => "no plugin route guards it",
            (false, Scope::Hcm(_)) => {
                "no plugin route guards it (no retry-guard filter runs in its connection manager)"
            }
            (false, Scope::Detached) => {
                "no plugin route guards it (no retry-guard configuration given for these routes)"
            }
        };
        let fix = match &r.name {
            Some(n) => format!(
                "add a plugin route with \"match\": {{\"route_name\": {n:?}}} and the class of \
                 what it does (token_issuing, secret_minting, session_extending, \
                 privilege_changing; read_only if it only reads)"
            ),
            None => "name the route and add a plugin route selecting it by match.route_name, \
                     with the class of what it does (read_only if it only reads)"
                .to_string(),
        };
        out.push(finding(
            dep,
            Severity::Warning,
            r.file,
            r.match_path.clone().unwrap_or_else(|| r.path.clone()),
            format!(
                "{} looks sensitive by its path ({text} has {word:?}) but {why}; {fix}",
                r.label()
            ),
        ));
    }
    out
}

/// An Envoy route in a connection manager with the retry-guard filter, that no plugin route
/// guards and that does not switch the filter off: each request pays for the filter's route
/// check for nothing. (Routes that look sensitive get the other warning instead.)
pub fn filter_on_unguarded(dep: &Deployment, guards: &[Vec<Guard<'_>>]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (ri, r) in dep.routes.iter().enumerate() {
        let Scope::Hcm(_) = r.scope else { continue };
        if guards.get(ri).is_some_and(|g| !g.is_empty())
            || scope_invalid(dep, r.scope)
            || sensitive(r).is_some()
        {
            continue;
        }
        let running = dep
            .configs
            .iter()
            .filter(|c| c.scope == r.scope)
            .filter_map(|c| c.filter.as_ref())
            .filter_map(|s| {
                let name = s.http_filter_name.as_deref()?;
                filter_state(r, name, s.disabled_by_default)
                    .0
                    .then_some(name)
            })
            .next();
        let Some(name) = running else { continue };
        out.push(finding(
            dep,
            Severity::Warning,
            r.file,
            r.path.clone(),
            format!(
                "the retry-guard filter runs on {} but no plugin route guards it: every request \
                 there pays for the filter's route check; switch it off on this route with \
                 typed_per_filter_config: {{ {name}: {{ \"@type\": \
                 type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }} }} \
                 (envoy/PER-ROUTE.md)",
                r.label()
            ),
        ));
    }
    out
}

/// `outbound|<port>|<subset>|<host>`, the name Istio gives a service port's Envoy cluster:
/// (port, host).
fn istio_cluster(name: &str) -> Option<(u64, &str)> {
    let mut parts = name.split('|');
    let (Some("outbound"), Some(port), Some(_subset), Some(host), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((port.parse().ok()?, host)).filter(|(_, h)| !h.is_empty())
}

/// What a request gets when the filter cannot reach the ledger's cluster.
const NO_LEDGER: &str = "the filter's calls to etcd fail, so routes that fail closed (the four \
                         sensitive classes by default) answer every request 503 \
                         ledger-unavailable and the others pass without the ledger";

/// An etcd ledger (`ledger.backend: etcd`) whose `ledger.cluster` the deployment does not
/// provide: not a cluster of the Envoy bootstrap the configuration is in; on Istio, a
/// generated name `outbound|<port>||<host>` whose host no ServiceEntry or DestinationRule in
/// the inputs names (or a ServiceEntry without that port), or another name no EnvoyFilter
/// CLUSTER patch adds. Plugin configuration JSON alone and Envoy fragments are not checked
/// (no clusters given).
pub fn ledger_cluster(dep: &Deployment) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &dep.configs {
        let Ok(config) = &cfg.parsed else { continue };
        let LedgerBackend::Etcd(etcd) = &config.ledger.backend else {
            continue;
        };
        let cluster = etcd.cluster.as_str();
        let path = join(&cfg.path, "ledger.cluster");
        let message = match (cfg.scope, cfg.source) {
            (Scope::Hcm(h), _) => {
                let Some(hcm) = dep.hcms.get(h) else { continue };
                let Some(b) = dep.bootstraps.iter().find(|b| b.holds(hcm)) else {
                    continue;
                };
                if b.dynamic || b.clusters.iter().any(|c| c == cluster) {
                    continue;
                }
                let theirs = if b.clusters.is_empty() {
                    "it has none".to_string()
                } else {
                    format!("its clusters: {}", b.clusters.join(", "))
                };
                format!(
                    "{cluster:?} is not a cluster of this Envoy bootstrap ({theirs}): {NO_LEDGER}; \
                     add the etcd cluster (HTTP/1.1 to etcd's client URLs, health-checked, as in \
                     envoy/envoy-cluster.yaml) or name an existing one"
                )
            }
            (Scope::Detached, Source::EnvoyFilter | Source::WasmPlugin) => {
                if dep.added_clusters.iter().any(|c| c == cluster) {
                    continue;
                }
                match istio_cluster(cluster) {
                    Some((port, host)) => {
                        let named: Vec<_> =
                            dep.mesh_hosts.iter().filter(|m| m.host == host).collect();
                        let entries: Vec<_> = named
                            .iter()
                            .filter(|m| m.kind == MeshKind::ServiceEntry)
                            .collect();
                        if !entries.is_empty() && !entries.iter().any(|m| m.ports.contains(&port)) {
                            let ports: Vec<String> = entries
                                .iter()
                                .flat_map(|m| m.ports.iter().map(u64::to_string))
                                .collect();
                            format!(
                                "{cluster:?} names port {port} of {host:?}, but the ServiceEntry \
                                 for {host:?} has port(s) {}: Istio makes no such cluster and \
                                 {NO_LEDGER}; use one of its ports in the cluster name, or add \
                                 port {port} to the ServiceEntry",
                                ports.join(", ")
                            )
                        } else if named.is_empty() {
                            format!(
                                "no ServiceEntry or DestinationRule given for {host:?}: Istio \
                                 makes the cluster {cluster:?} only for a service it knows (a \
                                 ServiceEntry or a Kubernetes Service), and without it \
                                 {NO_LEDGER}; give the etcd ServiceEntry (port {port}) and its \
                                 DestinationRule too (as envoy/istio/etcd.yaml), or check the \
                                 host"
                            )
                        } else {
                            continue;
                        }
                    }
                    None => format!(
                        "{cluster:?} is not a cluster name Istio makes for a service \
                         (outbound|<port>||<host>) and no EnvoyFilter CLUSTER patch given adds it: \
                         {NO_LEDGER}; name the etcd service's cluster, e.g. \
                         \"outbound|2379||etcd.ledger.example.internal\" (envoy/istio/etcd.yaml)"
                    ),
                }
            }
            (Scope::Detached, _) => continue,
        };
        out.push(finding(dep, Severity::Warning, cfg.file, path, message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::load;
    use super::*;

    fn deployment(files: &[(&str, &str)]) -> Deployment {
        load(
            &files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect::<Vec<_>>(),
        )
        .expect("loads")
    }

    /// (severity, path, message) of every finding.
    fn summary(f: &[Finding]) -> Vec<(Severity, &str, &str)> {
        f.iter()
            .map(|f| (f.severity, f.path.as_str(), f.message.as_str()))
            .collect()
    }

    const PLUGIN: &str = r#"{"routes":[
        {"name":"oauth-token","match":{"route_name":"token","methods":["POST"]},"class":"token_issuing","window_seconds":300,"owner":"o","escalation":"e"},
        {"name":"reads","match":{"route_name":"reads"},"class":"read_only","owner":"o","escalation":"e"}]}"#;

    fn bootstrap(filter_extra: &str, routes: &str, vh_extra: &str) -> String {
        // The bundled choice unless the test sets its own.
        let policy = if filter_extra.contains("failure_policy") {
            ""
        } else {
            "                failure_policy: FAIL_RELOAD\n"
        };
        let config = PLUGIN.replace('\n', " ");
        format!(
            r#"static_resources:
  listeners:
  - filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          route_config:
            virtual_hosts:
            - name: api
{vh_extra}
              routes:
{routes}
          http_filters:
          - name: rg
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
{policy}{filter_extra}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{config}'
"#
        )
    }

    const GOOD_ROUTES: &str = r#"              - name: token
                match: { path: /oauth/token }
                route: { cluster: c, retry_policy: { retry_on: "connect-failure,refused-stream", num_retries: 2 } }
              - name: reads
                match: { prefix: /v1/ }
                route: { cluster: c, retry_policy: { retry_on: "5xx", num_retries: 2 } }
              - name: rest
                match: { prefix: / }
                route: { cluster: c }
                typed_per_filter_config:
                  rg: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }"#;

    const ALLOW: &str = "                allow_on_headers_stop_iteration: true";

    #[test]
    fn a_clean_bootstrap_has_no_findings() {
        let d = deployment(&[("e.yaml", &bootstrap(ALLOW, GOOD_ROUTES, ""))]);
        assert_eq!(d.configs.len(), 1);
        assert_eq!(d.routes.len(), 3);
        assert_eq!(lint(&d), vec![]);
    }

    #[test]
    fn a_connection_manager_that_does_not_normalize_paths() {
        let yaml = bootstrap(ALLOW, GOOD_ROUTES, "")
            .replace("          merge_slashes: true\n", "")
            .replace("REJECT_REQUEST", "KEEP_UNCHANGED");
        let d = deployment(&[("e.yaml", &yaml)]);
        let f = lint(&d);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(
            f[0].path,
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
        );
        assert!(
            f[0].message.ends_with(
                "add merge_slashes: true, path_with_escaped_slashes_action: REJECT_REQUEST"
            ),
            "{}",
            f[0].message
        );
        // UNESCAPE_AND_FORWARD decodes %2F before routing: acceptable too.
        let yaml =
            bootstrap(ALLOW, GOOD_ROUTES, "").replace("REJECT_REQUEST", "UNESCAPE_AND_FORWARD");
        assert_eq!(lint(&deployment(&[("e.yaml", &yaml)])), vec![]);
    }

    #[test]
    fn long_windows_on_sensitive_routes_without_a_required_key_are_warned_about() {
        let warnings = |plugin: &str| -> Vec<(String, String)> {
            lint(&deployment(&[("p.json", plugin)]))
                .into_iter()
                .filter(|f| f.severity == Severity::Warning)
                .map(|f| (f.path, f.message))
                .collect()
        };
        assert_eq!(warnings(PLUGIN), []);
        // The global 900 s window, inherited.
        let inherited = PLUGIN.replace(r#""window_seconds":300,"#, "");
        let w = warnings(&inherited);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].0, "routes[0]");
        assert!(
            w[0].1.starts_with("route \"oauth-token\" (token_issuing) keeps attempts 900 s (the global window_seconds) and does not require an idempotency key"),
            "{}",
            w[0].1
        );
        assert!(w[0].1.contains("set routes[0].window_seconds to the gap"));
        // The route's own window.
        let own = PLUGIN.replace(r#""window_seconds":300"#, r#""window_seconds":3600"#);
        assert_eq!(warnings(&own)[0].0, "routes[0].window_seconds");
        // A required key tells retries from new calls: no warning.
        let keyed = inherited.replace(
            r#""class":"token_issuing","#,
            r#""class":"token_issuing","require_idempotency_key":true,"#,
        );
        assert_eq!(warnings(&keyed), []);
    }

    #[test]
    fn caller_chosen_principal_sources_are_warned_about() {
        let plugin = PLUGIN.replacen(
            "{\"routes\"",
            r#"{"principal":["peer_identity","header:x-client-id","token","jwt:sub","cookie:sid"],"routes""#,
            1,
        );
        let d = deployment(&[("p.json", &plugin)]);
        let f = lint(&d);
        let s = summary(&f);
        assert_eq!(s.len(), 2, "{f:#?}");
        assert_eq!((s[0].0, s[0].1), (Severity::Warning, "principal[1]"));
        assert!(s[0]
            .2
            .starts_with("\"header:x-client-id\" is caller-chosen"));
        assert_eq!((s[1].0, s[1].1), (Severity::Warning, "principal[3]"));
        assert!(s[1].2.starts_with("\"jwt:sub\" is caller-chosen"));
    }

    #[test]
    fn verified_principal_sources_need_jwt_authn_before_retry_guard() {
        let bundled = include_str!("../../../envoy/envoy.yaml");
        let warnings = |yaml: &str| -> Vec<String> {
            lint(&deployment(&[("envoy.yaml", yaml)]))
                .into_iter()
                .filter(|f| f.message.contains("never has a value"))
                .map(|f| format!("{}: {}", f.path, f.message))
                .collect()
        };
        assert_eq!(warnings(bundled), Vec::<String>::new());
        // The same plugin configuration without the jwt_authn filter in front.
        let start = bundled
            .find("          - name: envoy.filters.http.jwt_authn")
            .unwrap();
        let end = bundled
            .find("          - name: envoy.filters.http.wasm")
            .unwrap();
        let without = format!("{}{}", &bundled[..start], &bundled[end..]);
        let w = warnings(&without);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].contains("principal[0]: \"metadata:envoy.filters.http.jwt_authn:jwt_payload.sub\" never has a value: there is no jwt_authn filter before retry-guard"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("falls through to the next principal source"));
        // A jwt_authn that writes another key.
        let other = bundled.replace(
            "payload_in_metadata: jwt_payload",
            "payload_in_metadata: claims",
        );
        let w = warnings(&other);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].contains("writes payload_in_metadata \"claims\", not \"jwt_payload\""));
        // The filter after retry-guard writes too late.
        let wasm_end = bundled
            .find("          - name: envoy.filters.http.router")
            .unwrap();
        let after = format!(
            "{}{}{}",
            &bundled[..start],
            &bundled[end..wasm_end],
            &bundled[start..end]
        ) + &bundled[wasm_end..];
        assert_eq!(warnings(&after).len(), 1);
        // A plugin configuration alone shows no filter chain: nothing to say.
        let plugin = PLUGIN.replacen(
            "{\"routes\"",
            r#"{"principal":["metadata:envoy.filters.http.jwt_authn:jwt_payload.sub"],"routes""#,
            1,
        );
        assert_eq!(lint(&deployment(&[("p.json", &plugin)])), vec![]);
    }

    #[test]
    fn filter_settings() {
        let d = deployment(&[(
            "e.yaml",
            &bootstrap("                fail_open: true", GOOD_ROUTES, ""),
        )]);
        let f = lint(&d);
        let base = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config";
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[0].path, format!("{base}.fail_open"));
        assert!(f[0].message.contains("set fail_open: false"));
        assert_eq!(f[1].path, format!("{base}.allow_on_headers_stop_iteration"));
        assert!(f[1]
            .message
            .starts_with("missing, and plugin route \"oauth-token\" (token_issuing) read"));
        let d = deployment(&[(
            "e.yaml",
            &bootstrap(
                "                failure_policy: FAIL_OPEN\n                allow_on_headers_stop_iteration: { value: false }",
                GOOD_ROUTES,
                "",
            ),
        )]);
        let f = lint(&d);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f[0].path.ends_with(".failure_policy"));
        assert!(f[1].message.starts_with("not true, and"));
    }

    #[test]
    fn virtual_host_retries_apply_to_routes_without_their_own() {
        let routes = r#"              - name: token
                match: { path: /oauth/token }
                route: { cluster: c }
              - name: reads
                match: { prefix: /v1/ }
                route: { cluster: c }
              - name: rest
                match: { prefix: / }
                route: { cluster: c, retry_policy: { retry_on: "5xx", num_retries: 0 } }
                typed_per_filter_config:
                  rg: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }"#;
        let vh = r#"              retry_policy: { retry_on: "gateway-error,connect-failure" }"#;
        let d = deployment(&[("e.yaml", &bootstrap(ALLOW, routes, vh))]);
        let f = lint(&d);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0]
            .path
            .ends_with("virtual_hosts[0].retry_policy.retry_on"));
        assert!(
            f[0].message
                .contains("applies to route \"token\" (no retry_policy"),
            "{}",
            f[0].message
        );
        assert!(f[0].message.contains("\"gateway-error\""));
    }

    #[test]
    fn route_name_and_switches() {
        let routes = r#"              - name: tokens
                match: { path: /oauth/token }
                route: { cluster: c }
              - name: reads
                match: { prefix: /v1/ }
                route: { cluster: c }
                typed_per_filter_config:
                  rg: { "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }
              - name: other
                match: { prefix: /other }
                route: { cluster: c }"#;
        let d = deployment(&[("e.yaml", &bootstrap(ALLOW, routes, ""))]);
        let f = lint(&d);
        let s = summary(&f);
        assert_eq!(s.len(), 4, "{f:#?}");
        assert_eq!(s[0].0, Severity::Error);
        assert!(s[0]
            .1
            .ends_with("configuration.value.routes[0].match.route_name"));
        assert!(s[0].2.starts_with("\"token\" names no route"), "{}", s[0].2);
        assert!(s[0].2.contains("the names there: tokens, reads, other"));
        assert_eq!(s[1].0, Severity::Error);
        assert!(s[1].1.ends_with("routes[1].typed_per_filter_config.rg"));
        assert!(s[1].2.contains("switched off on route \"reads\""));
        assert_eq!(s[2].0, Severity::Warning);
        assert!(s[2].1.ends_with("routes[0].match"));
        assert!(s[2]
            .2
            .contains("route \"tokens\" looks sensitive by its path (/oauth/token has \"oauth\")"));
        assert_eq!(s[3].0, Severity::Warning);
        assert!(s[3].1.ends_with("routes[2]"));
        assert!(s[3]
            .2
            .contains("the retry-guard filter runs on route \"other\""));
    }

    #[test]
    fn path_matched_plugin_routes_guard_the_first_route_that_takes_them() {
        let plugin = r#"{"routes":[{"name":"t","match":{"methods":["POST"],"path":"/oauth/token"},"class":"token_issuing","window_seconds":60,"owner":"o","escalation":"e"}]}"#;
        let yaml = bootstrap(ALLOW, GOOD_ROUTES, "").replace(&PLUGIN.replace('\n', " "), plugin);
        let d = deployment(&[("e.yaml", &yaml)]);
        let g = guards(&d);
        assert_eq!(g[0].len(), 1, "the exact route");
        assert!(
            g[2].is_empty(),
            "the catch-all after it never sees /oauth/token"
        );
        // The catch-all alone takes it: then its retries matter and its switch is an error.
        let only_rest = GOOD_ROUTES
            .split("              - name: rest")
            .nth(1)
            .unwrap();
        let yaml = bootstrap(ALLOW, &format!("              - name: rest{only_rest}"), "")
            .replace(&PLUGIN.replace('\n', " "), plugin);
        let d = deployment(&[("e.yaml", &yaml)]);
        let f = lint(&d);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].message.contains("switched off on route \"rest\""));
    }

    const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: api }
spec:
  http:
  - name: token
    match: [{ uri: { exact: /oauth/token }, method: { exact: POST } }]
    route: [{ destination: { host: api } }]
  - name: reads
    match: [{ uri: { prefix: /v1/ } }]
    route: [{ destination: { host: api } }]
  - name: grants
    match: [{ uri: { prefix: /v1/grants } }]
    route: [{ destination: { host: api } }]
    retries: { attempts: 3 }
  - name: rest
    route: [{ destination: { host: api } }]
"#;

    #[test]
    fn virtualservice_without_retries_gets_istio_defaults() {
        let d = deployment(&[("p.json", PLUGIN), ("vs.yaml", VS)]);
        let f = lint(&d);
        let s = summary(&f);
        assert_eq!(s.len(), 2, "{f:#?}");
        assert_eq!(s[0].0, Severity::Error);
        assert_eq!(s[0].1, "spec.http[0].retries");
        assert!(s[0].2.starts_with(
            "missing on route \"token\", which plugin route \"oauth-token\" (token_issuing) guards"
        ));
        assert!(s[0]
            .2
            .contains("retries: {attempts: 2, retryOn: \"connect-failure,refused-stream\"}"));
        assert_eq!(s[1].0, Severity::Warning);
        assert_eq!(s[1].1, "spec.http[2].match");
        // The same VirtualService with the plugin configuration alone: no route lints.
        let d = deployment(&[("p.json", PLUGIN)]);
        assert_eq!(lint(&d), vec![]);
    }

    #[test]
    fn route_names_of_virtualservices_with_named_matches() {
        let vs = VS.replace(
            "match: [{ uri: { exact: /oauth/token }, method: { exact: POST } }]",
            "match: [{ name: post, uri: { exact: /oauth/token }, method: { exact: POST } }]\n    retries: { attempts: 0 }",
        );
        let d = deployment(&[("p.json", PLUGIN), ("vs.yaml", &vs)]);
        assert_eq!(d.routes[0].names, vec!["token.post".to_string()]);
        let f = lint(&d);
        assert!(f[0].message.starts_with("\"token\" names no route: no VirtualService http route given is named so (the names there: token.post, reads, grants, rest)"), "{f:#?}");
    }

    #[test]
    fn a_filter_that_does_not_reload_its_vm_is_warned_about() {
        for extra in [
            "                failure_policy: FAIL_CLOSED",
            "                failure_policy: FAIL_UNSPECIFIED",
        ] {
            let f = fail_open(&deployment(&[(
                "e.yaml",
                &bootstrap(extra, GOOD_ROUTES, ""),
            )]));
            assert_eq!(f.len(), 1, "{extra}: {f:?}");
            assert_eq!(f[0].severity, Severity::Warning);
            assert!(f[0].path.ends_with(".failure_policy"), "{}", f[0].path);
            assert!(f[0].message.contains("FAIL_RELOAD"), "{}", f[0].message);
        }
        assert_eq!(
            fail_open(&deployment(&[("e.yaml", &bootstrap("", GOOD_ROUTES, ""))])),
            Vec::<Finding>::new(),
            "FAIL_RELOAD: nothing to say"
        );
    }

    #[test]
    fn wasmplugin_with_body_routes_and_fail_open() {
        let wp = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: rg }
spec:
  failStrategy: FAIL_OPEN
  pluginConfig:
    routes:
    - { name: t, match: { path: /oauth/token }, class: token_issuing, window_seconds: 60, owner: o, escalation: e }
"#;
        let d = deployment(&[("wp.yaml", wp)]);
        let s = lint(&d);
        let s = summary(&s);
        assert_eq!(s.len(), 3, "{s:#?}");
        assert_eq!(s[0].1, "spec.failStrategy");
        assert_eq!(s[1].1, "spec.pluginConfig.routes");
        assert!(s[1]
            .2
            .starts_with("a WasmPlugin cannot set allow_on_headers_stop_iteration"));
        // Istio: the mesh configuration may normalize paths, so only a warning.
        assert_eq!((s[2].0, s[2].1), (Severity::Warning, "spec"));
        assert!(s[2].2.starts_with("no path normalization among the inputs"));
        let read_only = wp
            .replace("token_issuing", "read_only")
            .replace("FAIL_OPEN", "FAIL_CLOSE");
        let f = lint(&deployment(&[("wp.yaml", &read_only)]));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Warning);
    }

    #[test]
    fn invalid_configurations_silence_the_route_lints_of_their_scope() {
        let bad = PLUGIN.replace("token_issuing", "token_issueing");
        let d = deployment(&[("p.json", &bad), ("vs.yaml", VS)]);
        let f = lint(&d);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].path, "routes[0].class");
        assert!(f[0].message.starts_with("unknown class \"token_issueing\""));
    }

    #[test]
    fn an_etcd_ledger_needs_its_cluster() {
        let ledger = r#""ledger":{"backend":"etcd","cluster":"etcd","authority":"etcd"},"routes""#;
        let plugin = PLUGIN.replace('\n', " ").replacen("\"routes\"", ledger, 1);
        let yaml = bootstrap(ALLOW, GOOD_ROUTES, "").replace(&PLUGIN.replace('\n', " "), &plugin);
        // The bootstrap has no clusters at all: warned at the ledger's cluster.
        let f = lint(&deployment(&[("e.yaml", &yaml)]));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].path.ends_with("configuration.value.ledger.cluster"),
            "{}",
            f[0].path
        );
        assert!(f[0]
            .message
            .starts_with("\"etcd\" is not a cluster of this Envoy bootstrap (it has none)"));
        assert!(f[0].message.contains("503 ledger-unavailable"));
        // With a cluster of that name, or clusters from CDS: quiet.
        let clusters = "  clusters:\n  - name: c\n  - name: etcd\n";
        let with = format!("{yaml}{clusters}");
        assert_eq!(lint(&deployment(&[("e.yaml", &with)])), vec![]);
        let other = format!("{yaml}  clusters:\n  - name: c\n");
        let f = lint(&deployment(&[("e.yaml", &other)]));
        assert!(f[0].message.contains("(its clusters: c)"), "{f:#?}");
        let cds = format!("dynamic_resources: {{ cds_config: {{ ads: {{}} }} }}\n{other}");
        assert_eq!(lint(&deployment(&[("e.yaml", &cds)])), vec![]);
        // Plugin configuration JSON alone: no clusters given, nothing to say.
        let json = PLUGIN.replacen("\"routes\"", ledger, 1);
        assert_eq!(lint(&deployment(&[("p.json", &json)])), vec![]);
    }

    #[test]
    fn an_istio_etcd_ledger_needs_its_service() {
        let wp = |cluster: &str| {
            format!(
                r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: rg }}
spec:
  pluginConfig:
    ledger: {{ backend: etcd, cluster: "{cluster}", authority: etcd.example.internal }}
    routes:
    - {{ name: r, match: {{ path: /v1/x }}, class: read_only, owner: o, escalation: e }}
"#
            )
        };
        let se = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: etcd }
spec: { hosts: [etcd.example.internal], ports: [{ number: 2379, name: http, protocol: HTTP }] }
"#;
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: etcd }\nspec: { host: etcd.example.internal }\n";
        // Only the ledger's findings (an Istio WasmPlugin alone also draws the path
        // normalization warning).
        let lint = |d: &Deployment| -> Vec<Finding> {
            lint(d)
                .into_iter()
                .filter(|f| f.path.contains("ledger"))
                .collect()
        };
        let good = wp("outbound|2379||etcd.example.internal");
        let f = lint(&deployment(&[("wp.yaml", &good)]));
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].path, "spec.pluginConfig.ledger.cluster");
        assert!(f[0]
            .message
            .starts_with("no ServiceEntry or DestinationRule given for \"etcd.example.internal\""));
        assert_eq!(
            lint(&deployment(&[("wp.yaml", &good), ("se.yaml", se)])),
            vec![]
        );
        assert_eq!(
            lint(&deployment(&[("wp.yaml", &good), ("dr.yaml", dr)])),
            vec![]
        );
        let port = wp("outbound|2380||etcd.example.internal");
        let f = lint(&deployment(&[("wp.yaml", &port), ("se.yaml", se)]));
        assert!(f[0].message.contains("has port(s) 2379"), "{f:#?}");
        let custom = wp("etcd");
        let f = lint(&deployment(&[("wp.yaml", &custom), ("se.yaml", se)]));
        assert!(f[0]
            .message
            .starts_with("\"etcd\" is not a cluster name Istio makes"));
        let patch = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: { name: c }\nspec:\n  configPatches:\n  - applyTo: CLUSTER\n    patch: { operation: ADD, value: { name: etcd } }\n";
        assert_eq!(
            lint(&deployment(&[("wp.yaml", &custom), ("ef.yaml", patch)])),
            vec![]
        );
        assert_eq!(istio_cluster("outbound|2379|v1|h"), Some((2379, "h")));
        assert_eq!(istio_cluster("outbound|x||h"), None);
        assert_eq!(istio_cluster("inbound|2379||h"), None);
    }
}
