//! The deployment `check` lints, read from the texts of its input files: the plugin
//! configurations (each with where it came from and the wasm filter settings around it), the
//! Envoy routes (by virtual host, with their match, retry policy and per-route filter switches)
//! and the VirtualService HTTP routes (with their match and retries); for the cluster ledger,
//! the clusters of each Envoy bootstrap and the services Istio resources make known
//! (ServiceEntry, DestinationRule, EnvoyFilter CLUSTER patches).
//!
//! Pure: [`load`] takes file names and texts and returns the model, or every reason an input
//! cannot be read (exit code 2). Nothing here decides what is wrong; the lints do.

use retry_guard::config::{Config, ConfigError};
use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::matching::PathCond;

/// Everything the input files say about one deployment.
#[derive(Debug, Default)]
pub struct Deployment {
    /// The input files, in the order given.
    pub files: Vec<String>,
    /// Every retry-guard plugin configuration found.
    pub configs: Vec<PluginSource>,
    /// Every route found (Envoy routes and VirtualService HTTP routes), in document order.
    pub routes: Vec<Route>,
    /// Envoy HTTP connection managers: a wasm filter inside one applies to its routes only.
    pub hcms: Vec<Hcm>,
    /// Connection manager settings found outside a connection manager with routes: in Istio
    /// EnvoyFilter patches (`NETWORK_FILTER` / `MERGE`), which apply to the gateway's own.
    pub detached_hcms: Vec<Hcm>,
    /// Envoy bootstraps (documents with `static_resources`) and the clusters they define.
    pub bootstraps: Vec<BootstrapClusters>,
    /// Service hosts of Istio ServiceEntries and DestinationRules.
    pub mesh_hosts: Vec<MeshHost>,
    /// Cluster names Istio EnvoyFilters add (`applyTo: CLUSTER` patches).
    pub added_clusters: Vec<String>,
}

/// The clusters of one Envoy bootstrap document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapClusters {
    /// Index into `Deployment::files`.
    pub file: usize,
    /// The document's path in its file (empty: the whole file); its connection managers'
    /// paths start with it.
    pub path: String,
    /// `static_resources.clusters[].name`.
    pub clusters: Vec<String>,
    /// Clusters may also come from elsewhere (`dynamic_resources.cds_config`).
    pub dynamic: bool,
}

impl BootstrapClusters {
    /// Does the connection manager `hcm` belong to this bootstrap?
    pub fn holds(&self, hcm: &Hcm) -> bool {
        hcm.file == self.file
            && (self.path.is_empty()
                || hcm.path == self.path
                || hcm.path.starts_with(&format!("{}.", self.path)))
    }
}

/// Which Istio resource names a service host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshKind {
    /// A ServiceEntry (`spec.hosts`, with its `spec.ports`).
    ServiceEntry,
    /// A DestinationRule (`spec.host`).
    DestinationRule,
}

/// A service host an Istio resource in the inputs names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshHost {
    /// Index into `Deployment::files`.
    pub file: usize,
    /// The resource's path in its file.
    pub path: String,
    /// ServiceEntry or DestinationRule.
    pub kind: MeshKind,
    /// The host.
    pub host: String,
    /// A ServiceEntry's port numbers (empty for a DestinationRule).
    pub ports: Vec<u64>,
}

/// Which routes a plugin configuration applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The routes of one HTTP connection manager (`Deployment::hcms[i]`).
    Hcm(usize),
    /// Not bound to a connection manager in the inputs: Istio resources (WasmPlugin,
    /// EnvoyFilter, VirtualService), plugin configuration JSON, Envoy fragments. Detached
    /// configurations apply to detached routes.
    Detached,
}

/// Where a plugin configuration was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A JSON file that is the plugin configuration itself.
    Json,
    /// An Istio WasmPlugin's `spec.pluginConfig`.
    WasmPlugin,
    /// An Envoy wasm filter's `configuration` (bootstrap, listener or fragment).
    Envoy,
    /// An Envoy wasm filter inside an Istio EnvoyFilter patch.
    EnvoyFilter,
}

impl Source {
    /// Short name for output.
    pub fn name(self) -> &'static str {
        match self {
            Source::Json => "json",
            Source::WasmPlugin => "wasmplugin",
            Source::Envoy => "envoy",
            Source::EnvoyFilter => "envoyfilter",
        }
    }
}

/// One plugin configuration.
#[derive(Debug)]
pub struct PluginSource {
    /// Index into `Deployment::files`.
    pub file: usize,
    /// Where the configuration is in its file (empty: the whole file). Error paths of the
    /// configuration continue it: `...configuration.value.routes[2].class` is `routes[2].class`
    /// inside the JSON text at `...configuration.value`.
    pub path: String,
    /// What kind of place it came from.
    pub source: Source,
    /// The configuration as JSON text.
    pub text: String,
    /// The filter's own parser's verdict.
    pub parsed: Result<Config, ConfigError>,
    /// The wasm filter (or WasmPlugin) settings around it; `None` for a bare JSON file.
    pub filter: Option<FilterSettings>,
    /// The routes it applies to.
    pub scope: Scope,
}

/// The kind of filter carrying a plugin configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    /// Envoy's `envoy.extensions.filters.http.wasm.v3.Wasm` (bootstrap or EnvoyFilter).
    EnvoyWasm,
    /// An Istio WasmPlugin.
    WasmPlugin,
}

/// Settings of the filter around a plugin configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSettings {
    /// Envoy wasm filter or WasmPlugin.
    pub kind: FilterKind,
    /// Envoy: the `PluginConfig` (`...typed_config.config`); WasmPlugin: its `spec`.
    pub path: String,
    /// The HTTP filter's `name` (the key of `typed_per_filter_config`), when known.
    pub http_filter_name: Option<String>,
    /// `disabled: true` on the HTTP filter entry: off unless a route enables it.
    pub disabled_by_default: bool,
    /// Envoy `fail_open`.
    pub fail_open: Option<bool>,
    /// Envoy `failure_policy`, or the WasmPlugin's `failStrategy`.
    pub failure_policy: Option<String>,
    /// Envoy `allow_on_headers_stop_iteration` (a bool or a `BoolValue`); `Some(false)` also
    /// for a value that is not a boolean.
    pub allow_on_headers_stop_iteration: Option<bool>,
    /// Where the filter chain before it is visible (an Envoy connection manager's
    /// `http_filters`): the `payload_in_metadata` keys that `jwt_authn` filters before it write
    /// under `envoy.filters.http.jwt_authn`. `None` when the chain is not visible (WasmPlugin,
    /// EnvoyFilter patches).
    pub jwt_payloads_before: Option<Vec<String>>,
}

impl FilterSettings {
    /// The path of one of the filter's fields.
    pub fn field(&self, name: &str) -> String {
        key(&self.path, name)
    }
}

/// Envoy route or VirtualService HTTP route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// An Envoy route (`virtual_hosts[].routes[]`).
    Envoy,
    /// An Istio VirtualService HTTP route (`spec.http[]`).
    VirtualService,
}

/// One route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Index into `Deployment::files`.
    pub file: usize,
    /// The route object's path in its file.
    pub path: String,
    /// Envoy or VirtualService.
    pub kind: RouteKind,
    /// The route's own name (Envoy `name`, VirtualService HTTP route `name`).
    pub name: Option<String>,
    /// The names `xds.route_name` has on this route (Istio: `<name>` or `<name>.<match name>`).
    pub names: Vec<String>,
    /// Routes of one group (a virtual host, a VirtualService) are tried in order.
    pub group: usize,
    /// Alternative match conditions (VirtualService match entries; one for Envoy).
    pub matches: Vec<MatchCond>,
    /// The path of the match (`...match`), when there is one.
    pub match_path: Option<String>,
    /// Forwards to an upstream (not a redirect or direct response).
    pub forwards: bool,
    /// The retry policy in effect, if the router retries at all.
    pub retry: Option<Retry>,
    /// The routes' scope: the connection manager it belongs to, or detached.
    pub scope: Scope,
    /// Per-route `FilterConfig` switches in effect (route over virtual host over route
    /// configuration), by HTTP filter name.
    pub filter_switches: Vec<FilterSwitch>,
}

impl Route {
    /// How to call the route in a message.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("route {n:?}"),
            None => "this unnamed route".to_string(),
        }
    }
}

/// One alternative match condition of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchCond {
    /// The path condition.
    pub path: PathCond,
    /// An exact `:method` condition.
    pub method: Option<String>,
    /// Further conditions (other headers, query parameters, a non-exact method, ...): the
    /// route then admits only some requests of its path and method.
    pub narrowed: bool,
}

/// Where a retry policy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOrigin {
    /// The Envoy route's own `route.retry_policy`.
    Route,
    /// The Envoy virtual host's `retry_policy` (the route has none of its own).
    VirtualHost,
    /// A VirtualService HTTP route without `retries`: Istio's default policy.
    IstioDefault,
    /// A VirtualService HTTP route's `retries` with `retryOn`.
    IstioRetries,
    /// A VirtualService HTTP route's `retries` with `attempts` but without `retryOn`: Istio's
    /// default conditions.
    IstioRetriesDefaultOn,
}

/// Istio's default retry conditions (`pilot/pkg/networking/core/route/retry/retry.go`,
/// `defaultPolicy`; `retriable-status-codes` means 503).
pub const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The retry policy in effect on a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Where to point a finding about it.
    pub path: String,
    /// Where it comes from.
    pub origin: RetryOrigin,
    /// The retry conditions (Envoy `retry_on`, Istio `retryOn`), one per item.
    pub retry_on: Vec<String>,
    /// How many times the router may re-send.
    pub num_retries: u64,
}

/// A `typed_per_filter_config` entry of type `envoy.config.route.v3.FilterConfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSwitch {
    /// The HTTP filter name it applies to.
    pub filter: String,
    /// `disabled: true`.
    pub disabled: bool,
    /// Its path.
    pub path: String,
}

/// An Envoy HTTP connection manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hcm {
    /// Index into `Deployment::files`.
    pub file: usize,
    /// Its path.
    pub path: String,
    /// It has an inline `route_config` (not `rds`): its routes are all known.
    pub routes_known: bool,
    /// How it normalizes request paths before routing.
    pub paths: PathNormalization,
}

/// A connection manager's path normalization: what Envoy does to `:path` before any filter
/// and before route matching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathNormalization {
    /// `normalize_path` (RFC 3986 normalization).
    pub normalize_path: Option<bool>,
    /// `merge_slashes`.
    pub merge_slashes: Option<bool>,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: Option<String>,
}

/// The `path_with_escaped_slashes_action` values that keep `%2F` and `%5C` from reaching a
/// route unseen: refused, or decoded before routing.
pub const ESCAPED_SLASH_ACTIONS: [&str; 3] = [
    "REJECT_REQUEST",
    "UNESCAPE_AND_REDIRECT",
    "UNESCAPE_AND_FORWARD",
];

impl PathNormalization {
    fn of(m: &Map<String, Value>) -> PathNormalization {
        PathNormalization {
            normalize_path: bool_value(m.get("normalize_path")),
            merge_slashes: bool_value(m.get("merge_slashes")),
            escaped_slashes: m
                .get("path_with_escaped_slashes_action")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    /// The settings missing for retry-guard, as they should be written; empty when none is.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.normalize_path != Some(true) {
            out.push("normalize_path: true");
        }
        if self.merge_slashes != Some(true) {
            out.push("merge_slashes: true");
        }
        if !self
            .escaped_slashes
            .as_deref()
            .is_some_and(|a| ESCAPED_SLASH_ACTIONS.contains(&a))
        {
            out.push("path_with_escaped_slashes_action: REJECT_REQUEST");
        }
        out
    }
}

/// `path.name`, or `path["name"]` when the name is not a plain identifier.
pub fn key(path: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => name.to_string(),
        (false, true) => format!("{path}.{name}"),
        (_, false) => format!("{path}[{name:?}]"),
    }
}

/// `path[i]`.
pub fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A configuration error's path continued from where the configuration is.
pub fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (_, true) => base.to_string(),
        _ if rest.starts_with('[') => format!("{base}{rest}"),
        _ => format!("{base}.{rest}"),
    }
}

/// Reads every input; `Err` lists every input that cannot be read, or says that none holds a
/// plugin configuration (exit code 2).
pub fn load(inputs: &[(String, String)]) -> Result<Deployment, Vec<String>> {
    let (dep, mut errors) = read(inputs);
    if errors.is_empty() && dep.configs.is_empty() {
        errors.push(no_configuration(
            &inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ));
    }
    if errors.is_empty() {
        Ok(dep)
    } else {
        Err(errors)
    }
}

/// Reads every input as far as it can: the deployment, and why each input that cannot be read
/// cannot (empty when all can).
pub fn read(inputs: &[(String, String)]) -> (Deployment, Vec<String>) {
    let mut l = Loader::default();
    for (name, text) in inputs {
        l.file(name, text);
    }
    (l.dep, l.errors)
}

/// The reason for exit code 2 when no input holds a plugin configuration.
pub fn no_configuration(files: &[&str]) -> String {
    format!(
        "no retry-guard plugin configuration in {}: give the plugin configuration JSON, the \
         Envoy bootstrap with the wasm filter, or the Istio WasmPlugin or EnvoyFilter too",
        files.join(", ")
    )
}

#[derive(Default)]
struct Loader {
    dep: Deployment,
    errors: Vec<String>,
    groups: usize,
}

/// How a walk over an Envoy structure files what it finds.
struct Ctx {
    file: usize,
    source: Source,
    /// Everything found is detached (inside an EnvoyFilter patch).
    detached: bool,
}

fn str_at<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn type_ends(v: &Value, suffix: &str) -> bool {
    str_at(v, "@type").is_some_and(|t| t.ends_with(suffix))
}

fn is_wasm(v: &Value) -> bool {
    type_ends(v, "envoy.extensions.filters.http.wasm.v3.Wasm")
}

fn is_hcm(v: &Value) -> bool {
    type_ends(v, "HttpConnectionManager")
        || (v.get("http_filters").is_some_and(Value::is_array)
            && (v.get("route_config").is_some() || v.get("rds").is_some()))
}

/// A protobuf `BoolValue` or bool: `Some(false)` for anything that is not true.
fn bool_value(v: Option<&Value>) -> Option<bool> {
    let v = v?;
    Some(match v {
        Value::Bool(b) => *b,
        Value::Object(m) => m.get("value").and_then(Value::as_bool).unwrap_or(false),
        _ => false,
    })
}

/// A protobuf `UInt32Value` or integer (also as a string).
fn uint_value(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Object(m) => m.get("value").and_then(uint_value),
        _ => None,
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

impl Loader {
    fn file(&mut self, name: &str, text: &str) {
        let file = self.dep.files.len();
        self.dep.files.push(name.to_string());
        let trimmed = text.trim_start();
        let json = trimmed.starts_with('{') || trimmed.starts_with('[');
        let docs: Vec<Value> = if json {
            match serde_json::from_str(text) {
                Ok(v) => vec![v],
                Err(e) => {
                    self.errors.push(format!("{name}: not JSON: {e}"));
                    return;
                }
            }
        } else {
            let mut docs = Vec::new();
            for d in serde_yaml::Deserializer::from_str(text) {
                match Value::deserialize(d) {
                    Ok(v) => docs.push(v),
                    Err(e) => {
                        self.errors.push(format!("{name}: not YAML: {e}"));
                        return;
                    }
                }
            }
            docs
        };
        let several = docs.len() > 1;
        let mut read = false;
        let mut other_kinds = Vec::new();
        for (d, doc) in docs.iter().enumerate() {
            let base = if several {
                format!("doc[{d}]")
            } else {
                String::new()
            };
            match self.doc(file, &base, doc, json.then_some(text)) {
                Ok(true) => read = true,
                Ok(false) => {}
                Err(kind) => other_kinds.push(kind),
            }
        }
        if !read {
            let seen = if other_kinds.is_empty() {
                String::new()
            } else {
                format!(" (found kind {})", other_kinds.join(", "))
            };
            self.errors.push(format!(
                "{name}: nothing `check` reads{seen}: expected a plugin configuration (JSON), an \
                 Envoy bootstrap (or listener, connection manager or route configuration), or \
                 Istio WasmPlugin, EnvoyFilter or VirtualService documents"
            ));
        }
    }

    /// Files one document; `Ok(true)` when it was recognised, `Err(kind)` for an unread kind.
    fn doc(
        &mut self,
        file: usize,
        base: &str,
        doc: &Value,
        json_text: Option<&str>,
    ) -> Result<bool, String> {
        if doc.is_null() {
            return Ok(false);
        }
        match str_at(doc, "kind") {
            Some("WasmPlugin") => {
                self.wasm_plugin(file, base, doc);
                return Ok(true);
            }
            Some("EnvoyFilter") => {
                self.envoy_filter(file, base, doc);
                return Ok(true);
            }
            Some("VirtualService") => {
                self.virtual_service(file, base, doc);
                return Ok(true);
            }
            // The verifier of `metadata:` principal sources (Istio's jwt_authn): nothing in it
            // for `check` to hold against the plugin configuration yet.
            Some("RequestAuthentication") => return Ok(true),
            Some("ServiceEntry") | Some("DestinationRule") => {
                self.mesh_host(file, base, doc);
                return Ok(true);
            }
            Some(other) if doc.get("apiVersion").is_some() => return Err(other.to_string()),
            _ => {}
        }
        let ctx = Ctx {
            file,
            source: Source::Envoy,
            detached: false,
        };
        if let Some(sr) = doc.get("static_resources") {
            self.dep.bootstraps.push(BootstrapClusters {
                file,
                path: base.to_string(),
                clusters: sr
                    .get("clusters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| str_at(c, "name").map(str::to_string))
                    .collect(),
                dynamic: doc
                    .get("dynamic_resources")
                    .is_some_and(|d| d.get("cds_config").is_some()),
            });
        }
        if self.walk(doc, base, &ctx, None) || doc.get("static_resources").is_some() {
            return Ok(true);
        }
        // Not Envoy: a plugin configuration if it is a JSON file, or a document with `routes`.
        if json_text.is_some() || doc.get("routes").is_some() {
            let text = match json_text {
                Some(t) => t.to_string(),
                None => doc.to_string(),
            };
            let parsed = Config::parse(text.as_bytes());
            self.dep.configs.push(PluginSource {
                file,
                path: base.to_string(),
                source: Source::Json,
                text,
                parsed,
                filter: None,
                scope: Scope::Detached,
            });
            return Ok(true);
        }
        Ok(false)
    }

    /// Walks an Envoy structure for connection managers, route configurations and wasm
    /// filters; `true` when it found any.
    fn walk(&mut self, v: &Value, path: &str, ctx: &Ctx, parent_name: Option<&str>) -> bool {
        match v {
            Value::Object(m) => {
                if is_hcm(v) {
                    self.hcm(m, path, ctx);
                    return true;
                }
                if is_wasm(v) {
                    self.wasm_filter(v, path, ctx, parent_name, Scope::Detached, false);
                    return true;
                }
                if m.get("virtual_hosts").is_some_and(Value::is_array) {
                    self.route_config(v, path, ctx, Scope::Detached);
                    return true;
                }
                let name = str_at(v, "name");
                let mut found = false;
                for (k, x) in m {
                    found |= self.walk(x, &key(path, k), ctx, name);
                }
                found
            }
            Value::Array(items) => {
                let mut found = false;
                for (i, x) in items.iter().enumerate() {
                    found |= self.walk(x, &idx(path, i), ctx, None);
                }
                found
            }
            _ => false,
        }
    }

    fn hcm(&mut self, m: &Map<String, Value>, path: &str, ctx: &Ctx) {
        let scope = if ctx.detached {
            Scope::Detached
        } else {
            Scope::Hcm(self.dep.hcms.len())
        };
        let route_config = m.get("route_config").filter(|r| r.is_object());
        let hcm = Hcm {
            file: ctx.file,
            path: path.to_string(),
            routes_known: route_config.is_some(),
            paths: PathNormalization::of(m),
        };
        if ctx.detached {
            self.dep.detached_hcms.push(hcm);
        } else {
            self.dep.hcms.push(hcm);
        }
        let filters_path = key(path, "http_filters");
        let mut jwt_payloads: Vec<String> = Vec::new();
        for (k, f) in m
            .get("http_filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let fpath = idx(&filters_path, k);
            if let Some(tc) = f.get("typed_config").filter(|tc| is_wasm(tc)) {
                let disabled = f.get("disabled").and_then(Value::as_bool).unwrap_or(false);
                let before = self.dep.configs.len();
                self.wasm_filter(
                    tc,
                    &key(&fpath, "typed_config"),
                    ctx,
                    str_at(f, "name"),
                    scope,
                    disabled,
                );
                // The chain before it is visible here.
                if let Some(fs) = self
                    .dep
                    .configs
                    .get_mut(before..)
                    .into_iter()
                    .flatten()
                    .find_map(|c| c.filter.as_mut())
                {
                    fs.jwt_payloads_before = Some(jwt_payloads.clone());
                }
            }
            if let Some(tc) = f.get("typed_config").filter(|tc| {
                type_ends(
                    tc,
                    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                )
            }) {
                for p in tc
                    .get("providers")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|p| p.values())
                {
                    jwt_payloads.extend(str_at(p, "payload_in_metadata").map(str::to_string));
                }
            }
        }
        if let Some(rc) = route_config {
            self.route_config(rc, &key(path, "route_config"), ctx, scope);
        }
    }

    fn wasm_filter(
        &mut self,
        tc: &Value,
        path: &str,
        ctx: &Ctx,
        filter_name: Option<&str>,
        scope: Scope,
        disabled_by_default: bool,
    ) {
        let null = Value::Null;
        let config = tc.get("config").unwrap_or(&null);
        let cpath = key(path, "config");
        let configuration = config.get("configuration");
        let text = configuration
            .filter(|c| type_ends(c, "google.protobuf.StringValue"))
            .and_then(|c| str_at(c, "value"));
        let vm = config.get("vm_config").unwrap_or(&null);
        let code = vm.get("code").unwrap_or(&null);
        let names = [
            filter_name,
            str_at(config, "name"),
            str_at(config, "root_id"),
            str_at(vm, "vm_id"),
            code.get("local").and_then(|l| str_at(l, "filename")),
            code.get("remote")
                .and_then(|r| r.get("http_uri"))
                .and_then(|h| str_at(h, "uri")),
        ];
        let named = names.iter().flatten().any(|n| {
            let n = n.to_ascii_lowercase();
            n.contains("retry_guard") || n.contains("retry-guard")
        });
        let has_routes = text
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .is_some_and(|v| v.get("routes").is_some());
        if !named && !has_routes {
            return; // another wasm filter
        }
        let (config_path, text, parsed) = match text {
            Some(t) => (
                key(&key(&cpath, "configuration"), "value"),
                t.to_string(),
                Config::parse(t.as_bytes()),
            ),
            None => (
                key(&cpath, "configuration"),
                String::new(),
                Err(ConfigError {
                    path: String::new(),
                    message: "no plugin configuration: give the wasm filter `configuration: \
                              {\"@type\": type.googleapis.com/google.protobuf.StringValue, \
                              value: '<the plugin configuration JSON>'}`"
                        .to_string(),
                }),
            ),
        };
        self.dep.configs.push(PluginSource {
            file: ctx.file,
            path: config_path,
            source: ctx.source,
            text,
            parsed,
            filter: Some(FilterSettings {
                kind: FilterKind::EnvoyWasm,
                path: cpath,
                http_filter_name: filter_name.map(str::to_string),
                disabled_by_default,
                fail_open: config.get("fail_open").and_then(Value::as_bool),
                failure_policy: str_at(config, "failure_policy").map(str::to_string),
                allow_on_headers_stop_iteration: bool_value(
                    config.get("allow_on_headers_stop_iteration"),
                ),
                jwt_payloads_before: None,
            }),
            scope: if ctx.detached { Scope::Detached } else { scope },
        });
    }

    fn route_config(&mut self, rc: &Value, path: &str, ctx: &Ctx, scope: Scope) {
        let scope = if ctx.detached { Scope::Detached } else { scope };
        let rc_switches = switches(rc, path);
        let vhosts_path = key(path, "virtual_hosts");
        for (v, vh) in rc
            .get("virtual_hosts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let group = self.next_group();
            let vpath = idx(&vhosts_path, v);
            let vh_switches = merge(&rc_switches, switches(vh, &vpath));
            let vh_retry = vh.get("retry_policy");
            let routes_path = key(&vpath, "routes");
            for (r, route) in vh
                .get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let rpath = idx(&routes_path, r);
                let action = route.get("route").filter(|a| a.is_object());
                let retry = match (action, vh_retry) {
                    (None, _) => None,
                    (Some(a), vh_retry) => match (a.get("retry_policy"), vh_retry) {
                        (Some(rp), _) => envoy_retry(
                            rp,
                            &key(&key(&rpath, "route"), "retry_policy"),
                            RetryOrigin::Route,
                        ),
                        (None, Some(rp)) => {
                            envoy_retry(rp, &key(&vpath, "retry_policy"), RetryOrigin::VirtualHost)
                        }
                        (None, None) => None,
                    },
                };
                let name = str_at(route, "name").map(str::to_string);
                self.dep.routes.push(Route {
                    file: ctx.file,
                    path: rpath.clone(),
                    kind: RouteKind::Envoy,
                    names: name.iter().cloned().collect(),
                    name,
                    group,
                    matches: vec![envoy_match(route.get("match"))],
                    match_path: route.get("match").map(|_| key(&rpath, "match")),
                    forwards: action.is_some(),
                    retry,
                    scope,
                    filter_switches: merge(&vh_switches, switches(route, &rpath)),
                });
            }
        }
    }

    fn next_group(&mut self) -> usize {
        self.groups += 1;
        self.groups
    }

    fn wasm_plugin(&mut self, file: usize, base: &str, doc: &Value) {
        let null = Value::Null;
        let spec = doc.get("spec").unwrap_or(&null);
        let spec_path = key(base, "spec");
        let pc_path = key(&spec_path, "pluginConfig");
        let (text, parsed) = match spec.get("pluginConfig") {
            Some(Value::String(s)) => (s.clone(), Config::parse(s.as_bytes())),
            Some(v) => {
                let t = v.to_string();
                let parsed = Config::parse(t.as_bytes());
                (t, parsed)
            }
            None => (
                String::new(),
                Err(ConfigError {
                    path: String::new(),
                    message: "missing: the WasmPlugin carries no plugin configuration; add \
                              `pluginConfig:` with at least `routes`"
                        .to_string(),
                }),
            ),
        };
        self.dep.configs.push(PluginSource {
            file,
            path: pc_path,
            source: Source::WasmPlugin,
            text,
            parsed,
            filter: Some(FilterSettings {
                kind: FilterKind::WasmPlugin,
                path: spec_path,
                http_filter_name: None,
                disabled_by_default: false,
                fail_open: None,
                failure_policy: str_at(spec, "failStrategy").map(str::to_string),
                allow_on_headers_stop_iteration: None,
                jwt_payloads_before: None,
            }),
            scope: Scope::Detached,
        });
    }

    fn envoy_filter(&mut self, file: usize, base: &str, doc: &Value) {
        let ctx = Ctx {
            file,
            source: Source::EnvoyFilter,
            detached: true,
        };
        let patches_path = key(&key(base, "spec"), "configPatches");
        let patches = doc
            .get("spec")
            .and_then(|s| s.get("configPatches"))
            .and_then(Value::as_array);
        for (i, p) in patches.into_iter().flatten().enumerate() {
            if let Some(value) = p.get("patch").and_then(|p| p.get("value")) {
                let vpath = key(&key(&idx(&patches_path, i), "patch"), "value");
                self.walk(value, &vpath, &ctx, None);
                if str_at(p, "applyTo") == Some("CLUSTER") {
                    if let Some(name) = str_at(value, "name") {
                        self.dep.added_clusters.push(name.to_string());
                    }
                }
            }
        }
    }

    fn mesh_host(&mut self, file: usize, base: &str, doc: &Value) {
        let null = Value::Null;
        let spec = doc.get("spec").unwrap_or(&null);
        if str_at(doc, "kind") == Some("DestinationRule") {
            if let Some(host) = str_at(spec, "host") {
                self.dep.mesh_hosts.push(MeshHost {
                    file,
                    path: base.to_string(),
                    kind: MeshKind::DestinationRule,
                    host: host.to_string(),
                    ports: Vec::new(),
                });
            }
            return;
        }
        let ports: Vec<u64> = spec
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("number").and_then(uint_value))
            .collect();
        for host in spec
            .get("hosts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            self.dep.mesh_hosts.push(MeshHost {
                file,
                path: base.to_string(),
                kind: MeshKind::ServiceEntry,
                host: host.to_string(),
                ports: ports.clone(),
            });
        }
    }

    fn virtual_service(&mut self, file: usize, base: &str, doc: &Value) {
        let group = self.next_group();
        let http_path = key(&key(base, "spec"), "http");
        let http = doc
            .get("spec")
            .and_then(|s| s.get("http"))
            .and_then(Value::as_array);
        for (i, h) in http.into_iter().flatten().enumerate() {
            let hpath = idx(&http_path, i);
            let name = str_at(h, "name").map(str::to_string);
            let entries: Vec<&Value> = h
                .get("match")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let mut names = Vec::new();
            let mut matches = Vec::new();
            for e in &entries {
                matches.push(istio_match(e));
                if let Some(n) = &name {
                    let full = match str_at(e, "name") {
                        Some(m) => format!("{n}.{m}"),
                        None => n.clone(),
                    };
                    if !names.contains(&full) {
                        names.push(full);
                    }
                }
            }
            if entries.is_empty() {
                matches.push(MatchCond {
                    path: PathCond::Any,
                    method: None,
                    narrowed: false,
                });
                names.extend(name.iter().cloned());
            }
            let forwards = h.get("route").is_some_and(Value::is_array)
                && h.get("redirect").is_none()
                && h.get("directResponse").is_none();
            let retry = if forwards {
                istio_retry(h.get("retries"), &key(&hpath, "retries"))
            } else {
                None
            };
            self.dep.routes.push(Route {
                file,
                path: hpath.clone(),
                kind: RouteKind::VirtualService,
                name,
                names,
                group,
                matches,
                match_path: h.get("match").map(|_| key(&hpath, "match")),
                forwards,
                retry,
                scope: Scope::Detached,
                filter_switches: Vec::new(),
            });
        }
    }
}

/// The `FilterConfig` entries of an object's `typed_per_filter_config`.
fn switches(v: &Value, path: &str) -> Vec<FilterSwitch> {
    let tpfc_path = key(path, "typed_per_filter_config");
    v.get("typed_per_filter_config")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, c)| type_ends(c, "envoy.config.route.v3.FilterConfig"))
        .map(|(name, c)| FilterSwitch {
            filter: name.clone(),
            disabled: c.get("disabled").and_then(Value::as_bool).unwrap_or(false),
            path: key(&tpfc_path, name),
        })
        .collect()
}

/// `outer` with the entries of `inner` (the more specific level) replacing those of the same
/// filter.
fn merge(outer: &[FilterSwitch], inner: Vec<FilterSwitch>) -> Vec<FilterSwitch> {
    let mut out: Vec<FilterSwitch> = outer
        .iter()
        .filter(|o| !inner.iter().any(|i| i.filter == o.filter))
        .cloned()
        .collect();
    out.extend(inner);
    out
}

fn envoy_retry(rp: &Value, path: &str, origin: RetryOrigin) -> Option<Retry> {
    let retry_on = str_at(rp, "retry_on").map(split_list).unwrap_or_default();
    // Envoy's default num_retries is 1.
    let num_retries = rp.get("num_retries").and_then(uint_value).unwrap_or(1);
    Some(Retry {
        path: if rp.get("retry_on").is_some() {
            key(path, "retry_on")
        } else {
            path.to_string()
        },
        origin,
        retry_on,
        num_retries,
    })
}

/// Istio's conversion of `retries` (retry.go, `ConvertPolicy`): absent → the default policy
/// (2 retries on [`ISTIO_DEFAULT_RETRY_ON`] and 503); `attempts` 0 or absent → no retries;
/// `retryOn` absent → the default conditions.
fn istio_retry(retries: Option<&Value>, path: &str) -> Option<Retry> {
    let Some(r) = retries else {
        return Some(Retry {
            path: path.to_string(),
            origin: RetryOrigin::IstioDefault,
            retry_on: split_list(ISTIO_DEFAULT_RETRY_ON),
            num_retries: 2,
        });
    };
    let attempts = r.get("attempts").and_then(uint_value).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    Some(
        match str_at(r, "retryOn").filter(|s| !s.trim().is_empty()) {
            Some(on) => Retry {
                path: key(path, "retryOn"),
                origin: RetryOrigin::IstioRetries,
                retry_on: split_list(on),
                num_retries: attempts,
            },
            None => Retry {
                path: path.to_string(),
                origin: RetryOrigin::IstioRetriesDefaultOn,
                retry_on: split_list(ISTIO_DEFAULT_RETRY_ON),
                num_retries: attempts,
            },
        },
    )
}

/// An Envoy route's `match`.
fn envoy_match(m: Option<&Value>) -> MatchCond {
    let Some(m) = m else {
        return MatchCond {
            path: PathCond::Unknown,
            method: None,
            narrowed: false,
        };
    };
    let path = if let Some(p) = str_at(m, "path") {
        PathCond::Exact(p.to_string())
    } else if let Some(p) = str_at(m, "prefix").or_else(|| str_at(m, "path_separated_prefix")) {
        PathCond::Prefix(p.to_string())
    } else if let Some(r) = m.get("safe_regex").and_then(|r| str_at(r, "regex")) {
        PathCond::Regex(r.to_string())
    } else if let Some(t) = m
        .get("path_match_policy")
        .and_then(|p| p.get("typed_config"))
        .and_then(|t| str_at(t, "path_template"))
    {
        PathCond::of_envoy_template(t)
    } else {
        PathCond::Unknown
    };
    let mut method = None;
    let mut narrowed = false;
    for h in m
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let exact = h
            .get("string_match")
            .and_then(|s| str_at(s, "exact"))
            .or_else(|| str_at(h, "exact_match"));
        match (str_at(h, "name"), exact) {
            (Some(":method"), Some(e)) if h.get("invert_match").is_none() => {
                method = Some(e.to_string())
            }
            _ => narrowed = true,
        }
    }
    for k in [
        "query_parameters",
        "runtime_fraction",
        "grpc",
        "tls_context",
        "dynamic_metadata",
        "filter_state",
    ] {
        narrowed |= m.get(k).is_some();
    }
    MatchCond {
        path,
        method,
        narrowed,
    }
}

/// One entry of a VirtualService HTTP route's `match`.
fn istio_match(e: &Value) -> MatchCond {
    let path = match e.get("uri") {
        None => PathCond::Any,
        Some(u) => {
            if let Some(p) = str_at(u, "exact") {
                PathCond::Exact(p.to_string())
            } else if let Some(p) = str_at(u, "prefix") {
                PathCond::Prefix(p.to_string())
            } else if let Some(r) = str_at(u, "regex") {
                PathCond::Regex(r.to_string())
            } else {
                PathCond::Unknown
            }
        }
    };
    let method = e.get("method").and_then(|m| str_at(m, "exact"));
    let narrowed = e.as_object().is_some_and(|o| {
        o.keys()
            .any(|k| !matches!(k.as_str(), "uri" | "method" | "name"))
            || (o.contains_key("method") && method.is_none())
    });
    MatchCond {
        path,
        method: method.map(str::to_string),
        narrowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled(rel: &str) -> (String, String) {
        let path = retry_guard::paths::repo_root().join(rel);
        (
            rel.to_string(),
            std::fs::read_to_string(path).expect("bundled file"),
        )
    }

    #[test]
    fn the_bundled_gateway() {
        let d = load(&[bundled("envoy/envoy.yaml")]).expect("loads");
        assert_eq!(d.hcms.len(), 1);
        assert!(d.hcms[0].routes_known);
        assert_eq!(d.hcms[0].paths.missing(), Vec::<&str>::new());
        assert_eq!(d.configs.len(), 1);
        let c = &d.configs[0];
        assert_eq!(c.scope, Scope::Hcm(0));
        assert_eq!(c.source, Source::Envoy);
        assert!(c.parsed.is_ok());
        assert!(c
            .path
            .ends_with("http_filters[1].typed_config.config.configuration.value"));
        let f = c.filter.as_ref().expect("filter settings");
        assert_eq!(
            f.http_filter_name.as_deref(),
            Some("envoy.filters.http.wasm")
        );
        // jwt_authn, before it, writes the verified payload under jwt_payload.
        assert_eq!(
            f.jwt_payloads_before.as_deref(),
            Some(&["jwt_payload".to_string()][..])
        );
        assert_eq!(f.fail_open, None);
        assert_eq!(f.failure_policy.as_deref(), Some("FAIL_RELOAD"));
        assert_eq!(f.allow_on_headers_stop_iteration, Some(true));
        let names: Vec<&str> = d.routes.iter().filter_map(|r| r.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                "token",
                "role-grant",
                "secrets",
                "session-refresh",
                "preferences",
                "reads",
                "identity-unrouted",
                "passthrough"
            ]
        );
        assert!(!d.routes[6].forwards, "identity-unrouted answers itself");
        let token = &d.routes[0];
        assert_eq!(
            token.matches[0].path,
            PathCond::Exact("/oauth/token".into())
        );
        assert_eq!(token.matches[0].method.as_deref(), Some("POST"));
        let retry = token.retry.as_ref().expect("retry policy");
        assert_eq!(retry.origin, RetryOrigin::Route);
        assert_eq!(retry.retry_on, ["connect-failure", "refused-stream"]);
        assert_eq!(retry.num_retries, 2);
        assert_eq!(
            d.routes[1].matches[0].path,
            PathCond::Template("/v1/roles/*/members".into())
        );
        let passthrough = &d.routes[7];
        assert!(passthrough.retry.is_none());
        assert_eq!(passthrough.filter_switches.len(), 1);
        assert!(passthrough.filter_switches[0].disabled);
        assert!(passthrough.filter_switches[0]
            .path
            .ends_with("routes[7].typed_per_filter_config[\"envoy.filters.http.wasm\"]"));
    }

    #[test]
    fn the_bundled_istio_manifests() {
        let d = load(&[
            bundled("envoy/istio/envoyfilter.yaml"),
            bundled("envoy/istio/virtualservice.yaml"),
            bundled("envoy/istio/wasmplugin.yaml"),
        ])
        .expect("loads");
        assert!(d.hcms.is_empty());
        assert_eq!(d.detached_hcms.len(), 1, "the NETWORK_FILTER patch");
        assert_eq!(d.detached_hcms[0].paths.missing(), Vec::<&str>::new());
        let sources: Vec<Source> = d.configs.iter().map(|c| c.source).collect();
        assert_eq!(sources, [Source::EnvoyFilter, Source::WasmPlugin]);
        assert!(d
            .configs
            .iter()
            .all(|c| c.scope == Scope::Detached && c.parsed.is_ok()));
        let ef = d.configs[0].filter.as_ref().expect("settings");
        assert_eq!(
            ef.http_filter_name.as_deref(),
            Some("istio-ingress.retry-guard")
        );
        assert_eq!(
            ef.path,
            "spec.configPatches[0].patch.value.typed_config.config"
        );
        let wp = d.configs[1].filter.as_ref().expect("settings");
        assert_eq!(wp.kind, FilterKind::WasmPlugin);
        assert_eq!(wp.failure_policy.as_deref(), Some("FAIL_CLOSE"));
        assert_eq!(d.routes.len(), 8);
        assert_eq!(d.routes[0].names, ["token"]);
        assert!(!d.routes[6].forwards, "identity-unrouted answers itself");
        assert_eq!(
            d.routes[1].matches[0].path,
            PathCond::Regex("^/v1/roles/[^/]+/members$".into())
        );
        // The catch-all has no `retries`: Istio's default policy.
        let passthrough = d.routes[7].retry.as_ref().expect("Istio's default");
        assert_eq!(passthrough.origin, RetryOrigin::IstioDefault);
        assert_eq!(passthrough.path, "spec.http[7].retries");
        assert_eq!(d.routes[7].matches[0].path, PathCond::Any);
    }

    #[test]
    fn bootstrap_clusters_and_mesh_hosts() {
        let istio = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: etcd }
spec:
  hosts: [etcd.example.internal]
  ports: [{ number: 2379, name: http, protocol: HTTP }, { number: "2380", name: peer }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: etcd }
spec: { host: etcd.example.internal }
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: cluster }
spec:
  configPatches:
  - applyTo: CLUSTER
    patch: { operation: ADD, value: { name: my-etcd, type: STRICT_DNS } }
"#;
        let d = load(&[
            bundled("envoy/envoy-cluster.yaml"),
            ("istio.yaml".to_string(), istio.to_string()),
        ])
        .expect("loads");
        assert_eq!(d.bootstraps.len(), 1);
        let b = &d.bootstraps[0];
        assert_eq!(b.clusters, ["identity-backend", "retry-guard-etcd"]);
        assert!(!b.dynamic);
        assert!(b.holds(&d.hcms[0]));
        let hosts: Vec<(MeshKind, &str, &[u64], &str)> = d
            .mesh_hosts
            .iter()
            .map(|h| (h.kind, h.host.as_str(), h.ports.as_slice(), h.path.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                (
                    MeshKind::ServiceEntry,
                    "etcd.example.internal",
                    &[2379, 2380][..],
                    "doc[0]"
                ),
                (
                    MeshKind::DestinationRule,
                    "etcd.example.internal",
                    &[][..],
                    "doc[1]"
                ),
            ]
        );
        assert_eq!(d.added_clusters, ["my-etcd"]);
    }

    #[test]
    fn unreadable_inputs_are_all_reported() {
        let inputs = [
            ("a.yaml".to_string(), "kind: [".to_string()),
            ("b.json".to_string(), "{".to_string()),
            ("c.yaml".to_string(), "just: text".to_string()),
            ("d.yaml".to_string(), String::new()),
        ];
        let errors = load(&inputs).expect_err("unreadable");
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("a.yaml: not YAML"));
        assert!(errors[1].starts_with("b.json: not JSON"));
        assert!(errors[2].starts_with("c.yaml: nothing `check` reads:"));
        assert!(errors[3].starts_with("d.yaml: nothing `check` reads:"));
        let vs = [bundled("envoy/istio/virtualservice.yaml")];
        let errors = load(&vs).expect_err("no plugin configuration");
        assert!(errors[0]
            .starts_with("no retry-guard plugin configuration in envoy/istio/virtualservice.yaml"));
    }

    #[test]
    fn paths() {
        assert_eq!(key("", "spec"), "spec");
        assert_eq!(key("a", "b_c"), "a.b_c");
        assert_eq!(
            key("a", "envoy.filters.http.wasm"),
            "a[\"envoy.filters.http.wasm\"]"
        );
        assert_eq!(
            join("spec.pluginConfig", "routes[0].class"),
            "spec.pluginConfig.routes[0].class"
        );
        assert_eq!(join("", "routes[0]"), "routes[0]");
        assert_eq!(join("x", ""), "x");
        assert_eq!(join("x", "[0]"), "x[0]");
    }
}
