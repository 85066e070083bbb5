//! The plugin configuration: the one source of truth for its schema, defaults and validation.
//!
//! [`Config::parse`] turns the plugin configuration (JSON) into a validated [`Config`] or a
//! [`ConfigError`] that names the field path and what to change, e.g.
//! `routes[2].class: unknown class "token_issueing"; expected one of read_only, ...`.
//! Unknown fields are errors. [`SCHEMA`] lists every field for the documentation.

use crate::key;
use std::fmt;

use crate::json::{Map, Value};
use ed25519_dalek::VerifyingKey;

use crate::b64;
use crate::matcher::{Fact, LazyFacts, PathMatch, RouteMatch};
use crate::policy::{Outcome, Policy, PolicyTable, RouteClass};

/// Enforce decisions or only log and count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Block, strip and answer as decided.
    Enforce,
    /// Compute, count and audit every decision as enforce would; block and strip nothing.
    Shadow,
}

impl Mode {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// What to do with a stale bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleTokenAction {
    /// Remove `authorization` before the upstream and mark the request.
    Strip,
    /// Answer 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    Reject,
}

impl StaleTokenAction {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            StaleTokenAction::Strip => "strip",
            StaleTokenAction::Reject => "reject",
        }
    }
}

/// Where the principal of a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalSource {
    /// The mTLS peer URI SAN (the SPIFFE id in a mesh).
    PeerIdentity,
    /// A request header (lower-case name).
    Header(String),
    /// A claim of the bearer JWT, decoded without verification.
    JwtClaim(String),
    /// SHA-256 of the `Authorization` credential (bearer or basic), as forwarded upstream.
    Token,
    /// SHA-256 of the value of a cookie (its name; case-sensitive), e.g. a session cookie.
    Cookie(String),
    /// A value another Envoy filter verified and wrote into the stream's dynamic metadata
    /// (`metadata:<namespace>:<path>`), e.g. the `sub` of the JWT payload `jwt_authn` writes.
    Metadata(MetadataSource),
}

/// Where in Envoy's dynamic metadata a [`PrincipalSource::Metadata`] reads: the filter
/// namespace, then the keys down the payload (`jwt_payload`, `sub`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataSource {
    /// The filter namespace (`envoy.filters.http.jwt_authn`).
    pub namespace: String,
    /// The keys from the namespace's struct down to the value (at least one); a key that is a
    /// decimal number also indexes a list.
    pub path: Vec<String>,
}

impl MetadataSource {
    /// Parses the text after `metadata:`: `<namespace>:<path>`, the path's keys separated by
    /// dots, a key with dots (an issuer URL) written in square brackets:
    /// `envoy.filters.http.jwt_authn:jwt_payload.sub`,
    /// `envoy.filters.http.jwt_authn:[https://issuer.example].sub`.
    pub fn parse(text: &str) -> Result<MetadataSource, String> {
        const EXAMPLE: &str = "e.g. metadata:envoy.filters.http.jwt_authn:jwt_payload.sub";
        let Some((namespace, path)) = text.split_once(':') else {
            return Err(format!(
                "metadata: needs a filter namespace and a path, {EXAMPLE}"
            ));
        };
        if namespace.is_empty()
            || namespace
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{} is not a filter namespace, {EXAMPLE}",
                q(namespace)
            ));
        }
        let mut keys = Vec::new();
        let mut rest = path;
        loop {
            let (key, after) = if let Some(inner) = rest.strip_prefix('[') {
                let Some(end) = inner.find(']') else {
                    return Err(format!("{} has a [ without its ]", q(path)));
                };
                (
                    inner.get(..end).unwrap_or(""),
                    inner.get(end + 1..).unwrap_or(""),
                )
            } else {
                match rest.find('.') {
                    Some(at) => (rest.get(..at).unwrap_or(""), rest.get(at..).unwrap_or("")),
                    None => (rest, ""),
                }
            };
            if key.is_empty() || key.chars().any(char::is_control) {
                return Err(format!(
                    "{} is not a metadata path (keys separated by dots, none empty; a key with dots in [brackets]), {EXAMPLE}",
                    q(path)
                ));
            }
            keys.push(key.to_string());
            if after.is_empty() {
                break;
            }
            rest = match after.strip_prefix('.') {
                Some(r) => r,
                None => {
                    return Err(format!(
                        "{} is not a metadata path: a key in [brackets] must end the path or be followed by a dot",
                        q(path)
                    ))
                }
            };
        }
        if keys.len() > 16 {
            return Err(format!("{} is deeper than 16 keys", q(path)));
        }
        Ok(MetadataSource {
            namespace: namespace.to_string(),
            path: keys,
        })
    }
}

impl fmt::Display for MetadataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata:{}:", self.namespace)?;
        for (i, k) in self.path.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if k.contains('.') {
                write!(f, "[{k}]")?;
            } else {
                f.write_str(k)?;
            }
        }
        Ok(())
    }
}

impl PrincipalSource {
    /// Can the caller choose this source's value freely, so that each retry may name a new
    /// principal? True for `header:<name>` and `jwt:<claim>` (read from a JWT nobody verified
    /// here); `retry-guard check` warns about them. Not `metadata:`: another filter verified it.
    pub fn caller_chosen(&self) -> bool {
        matches!(
            self,
            PrincipalSource::Header(_) | PrincipalSource::JwtClaim(_)
        )
    }
}

/// What the natural key takes of the query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKey {
    /// Nothing: `/oauth/token?x=1` is the same operation as `/oauth/token`.
    Ignore,
    /// Its parameters, decoded and sorted (as a form body).
    Sorted,
}

impl QueryKey {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            QueryKey::Ignore => "ignore",
            QueryKey::Sorted => "sorted",
        }
    }
}

/// What a route does with a request no principal source names (`anonymous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anonymous {
    /// Guard it under the shared principal `anonymous`.
    Allow,
    /// Answer 401 (`principal-required`).
    Reject,
}

/// What a route does when a bearer credential comes from a second workload identity
/// (`shared_credential`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedCredential {
    /// Count it (`retry_guard.credential.shared`) and audit both identities; decide as usual.
    Record,
    /// Also answer 403 `credential-shared`.
    Deny,
}

/// What a request gets when a `metadata:` (verified) principal source has no value, that is,
/// the request was not authenticated by the filter that writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissingVerified {
    /// Try the next source.
    Next,
    /// Stop there: the request is anonymous, and every route refuses anonymous requests (401
    /// `principal-required`).
    Reject,
}

impl OnMissingVerified {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            OnMissingVerified::Next => "next",
            OnMissingVerified::Reject => "reject",
        }
    }
}

/// Which requests on untracked routes (a `read_only` route by default) write an audit line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditUntracked {
    /// Only those where something happened: a token stripped or rejected, a shadow-mode
    /// would-block, or a request that says it is a retry (`x-envoy-attempt-count` > 1). A
    /// plain allow is counted and writes nothing.
    Events,
    /// Every request.
    All,
}

/// What a request gets when the ledger cannot answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Answer 503 `ledger-unavailable`: no execution without the ledger.
    FailClosed,
    /// Let the request through and audit `reason: ledger_unavailable`.
    FailOpen,
}

impl OnUnavailable {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            OnUnavailable::FailClosed => "fail_closed",
            OnUnavailable::FailOpen => "fail_open",
        }
    }

    /// The default of a class: closed for the four sensitive classes, open otherwise.
    pub fn default_for(class: RouteClass) -> OnUnavailable {
        if class.is_sensitive() {
            OnUnavailable::FailClosed
        } else {
            OnUnavailable::FailOpen
        }
    }

    fn parse(s: &str) -> Option<OnUnavailable> {
        match s {
            "fail_closed" => Some(OnUnavailable::FailClosed),
            "fail_open" => Some(OnUnavailable::FailOpen),
            _ => None,
        }
    }
}

/// The cluster-wide ledger on etcd v3, reached through an Envoy cluster to etcd's JSON gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdLedger {
    /// The Envoy cluster that reaches etcd's client URL (HTTP/1.1, JSON gateway `/v3/`).
    pub cluster: String,
    /// `:authority` of the calls.
    pub authority: String,
    /// Prefix of every key the filter writes.
    pub key_prefix: String,
    /// How long a request waits for etcd before the route's fail policy applies.
    pub timeout_ms: u64,
}

/// Where the ledger lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerBackend {
    /// Envoy shared data: one ledger per Envoy process (per `vm_id`).
    SharedData,
    /// etcd v3: one ledger for every replica that points at the same etcd and key prefix.
    Etcd(EtcdLedger),
}

/// The `ledger` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The backend.
    pub backend: LedgerBackend,
    /// The fail policy of every route that sets none; `None`: by class
    /// ([`OnUnavailable::default_for`]).
    pub on_unavailable: Option<OnUnavailable>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            backend: LedgerBackend::SharedData,
            on_unavailable: None,
        }
    }
}

/// Human-confirmation settings.
#[derive(Clone, Debug)]
pub struct Confirmation {
    /// Request header that carries the confirmation token (lower-case).
    pub header: String,
    /// Longest accepted lifetime (`exp` − `iat`) of a confirmation.
    pub max_ttl_seconds: u64,
    /// Approver public keys by key id.
    pub keys: Vec<(String, VerifyingKey)>,
}

/// One guarded route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Route name used in answers, audit lines and fingerprints.
    pub name: String,
    /// Match conditions.
    pub matcher: RouteMatch,
    /// Action class.
    pub class: RouteClass,
    /// Owning team.
    pub owner: String,
    /// Escalation path.
    pub escalation: String,
    /// Answer 400 when the idempotency key is missing.
    pub require_idempotency_key: bool,
    /// Tokens older than this are stale on this route.
    pub token_max_age_seconds: Option<u64>,
    /// Attempts beyond this need review.
    pub max_attempts: Option<u32>,
    /// Effective mode (the route's, else the global one).
    pub mode: Mode,
    /// What to do with an anonymous request.
    pub anonymous: Anonymous,
    /// What the natural key takes of the query string (the route's, else the global one).
    pub query: QueryKey,
    /// Policy per outcome of the earlier attempt.
    pub policies: PolicyTable,
    /// What a request gets when the ledger cannot answer in time.
    pub on_ledger_unavailable: OnUnavailable,
    /// What a bearer credential presented by a second workload identity gets.
    pub shared_credential: SharedCredential,
    /// How long this route's ledger entries live after their latest attempt (the route's
    /// `window_seconds`, else the global one).
    pub window_seconds: u64,
    /// The members every problem document and audit line of the route carries, written once
    /// when the configuration is read ([`Route::identity_json`]).
    identity: String,
}

impl Route {
    /// The JSON members `route`, `class`, `owner` and `escalation` of a route, without braces
    /// (for [`crate::json::Obj::members`]).
    fn identity_members(name: &str, class: RouteClass, owner: &str, escalation: &str) -> String {
        let mut o = crate::json::Obj::new();
        o.str(key!("route"), name)
            .word(key!("class"), class.name())
            .str(key!("owner"), owner)
            .str(key!("escalation"), escalation);
        o.finish_members()
    }

    /// This route's `"route":…,"class":…,"owner":…,"escalation":…`, written when the
    /// configuration was read (or by [`Route::refresh_identity`]). Debug builds check it
    /// against the fields.
    pub fn identity_json(&self) -> &str {
        debug_assert_eq!(
            self.identity,
            Route::identity_members(&self.name, self.class, &self.owner, &self.escalation),
            "route {:?} changed its name, class, owner or escalation without refresh_identity",
            self.name
        );
        &self.identity
    }

    /// Writes [`Route::identity_json`] again after a change of the route's name, class, owner
    /// or escalation (tools and tests that change a parsed route).
    pub fn refresh_identity(&mut self) {
        self.identity =
            Route::identity_members(&self.name, self.class, &self.owner, &self.escalation);
    }

    /// Can the ledger change a decision on this route? Not on a route whose every policy is
    /// `retry_safe` and that has no `max_attempts` (a `read_only` route by default): such a
    /// route is *untracked* — no ledger reads or writes, no outcome recording.
    pub fn needs_ledger(&self) -> bool {
        self.max_attempts.is_some()
            || crate::policy::Outcome::ALL
                .iter()
                .any(|o| self.policies.get(*o) != Policy::RetrySafe)
    }
}

/// The validated plugin configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Global mode.
    pub mode: Mode,
    /// How long a ledger entry lives after its latest attempt.
    pub window_seconds: u64,
    /// Tolerated clock skew for token and confirmation times.
    pub clock_skew_seconds: u64,
    /// Ledger capacity in entries.
    pub max_entries: u32,
    /// Idempotency key header (lower-case).
    pub idempotency_key_header: String,
    /// Longest accepted idempotency key.
    pub max_key_length: usize,
    /// Largest request body buffered on guarded routes.
    pub max_body_bytes: usize,
    /// Principal sources, tried in order.
    pub principal: Vec<PrincipalSource>,
    /// What an absent `metadata:` source does: fall through to the next source, or refuse.
    pub on_missing_verified_principal: OnMissingVerified,
    /// Response header by which an upstream proves a 5xx changed nothing (lower-case).
    pub unchanged_state_header: String,
    /// What to do with stale bearer tokens.
    pub stale_token_action: StaleTokenAction,
    /// Confirmation header name (lower-case); present even without `confirmation`, so the
    /// header is never forwarded.
    pub confirmation_header: String,
    /// Confirmation settings; `None` means no confirmation can be accepted.
    pub confirmation: Option<Confirmation>,
    /// Where the ledger lives.
    pub ledger: LedgerConfig,
    /// Guarded routes, first match wins.
    pub routes: Vec<Route>,
    /// Which allowed requests on untracked routes get an audit line (`audit.untracked`).
    pub audit_untracked: AuditUntracked,
    /// What the natural key takes of the query string, unless a route says otherwise.
    pub query: QueryKey,
}

/// A configuration error: the field path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, e.g. `routes[2].class`; empty for the document itself.
    pub path: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "configuration: {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// One documented configuration field.
pub struct FieldDoc {
    /// Field path (`routes[].match.path`).
    pub path: &'static str,
    /// Type and default.
    pub kind: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every configuration field; the README's configuration reference is checked against it.
pub const SCHEMA: &[FieldDoc] = &[
    FieldDoc { path: "mode", kind: "\"enforce\" | \"shadow\", default \"enforce\"", doc: "shadow computes, counts and audits every decision as enforce would but blocks and strips nothing" },
    FieldDoc { path: "window_seconds", kind: "integer 1..=2592000, default 900", doc: "how long a ledger entry lives after its latest attempt" },
    FieldDoc { path: "clock_skew_seconds", kind: "integer 0..=3600, default 30", doc: "tolerance for token exp/nbf and confirmation iat" },
    FieldDoc { path: "max_entries", kind: "integer 4..=16777216, default 65536", doc: "capacity of each in-process ledger table (attempts, opaque-token sightings), rounded up to whole sets of 8 entries; a full set evicts its oldest entry that is not a live one of a sensitive route, else refuses the new one (see The ledger)" },
    FieldDoc { path: "idempotency_key_header", kind: "header name, default \"idempotency-key\"", doc: "where clients put the idempotency key" },
    FieldDoc { path: "max_key_length", kind: "integer 1..=8192, default 255", doc: "longer keys are answered 400" },
    FieldDoc { path: "max_body_bytes", kind: "integer 0..=16777216, default 65536", doc: "largest body buffered on a guarded non-read_only route; larger is 413" },
    FieldDoc { path: "principal", kind: "list of sources, default [\"peer_identity\", \"token\"]", doc: "peer_identity, token, cookie:<name>, header:<name>, jwt:<claim>, metadata:<namespace>:<path>; the first that yields a value wins, none gives \"anonymous\"; header: and jwt: are caller-chosen, metadata: is verified by the Envoy filter that writes it (see Who the caller is)" },
    FieldDoc { path: "on_missing_verified_principal", kind: "\"next\" | \"reject\", default \"next\"", doc: "what a request gets when a metadata: source has no value (not authenticated): next tries the next source; reject stops there and answers 401 principal-required on every route (no route may then set anonymous: allow)" },
    FieldDoc { path: "unchanged_state_header", kind: "header name, default \"retry-guard-state\"", doc: "a 5xx with this header set to \"unchanged\" is outcome unchanged" },
    FieldDoc { path: "stale_token_action", kind: "\"strip\" | \"reject\", default \"strip\"", doc: "strip removes authorization before the upstream; reject answers 401" },
    FieldDoc { path: "audit", kind: "object, optional", doc: "what the audit log records" },
    FieldDoc { path: "audit.untracked", kind: "\"events\" | \"all\", default \"events\"", doc: "on untracked routes (read_only by default) a plain allow is counted but writes no audit line and sets no filter state; events: a line only for a token stripped or rejected, a shadow would-block, or a request that says it is a retry (x-envoy-attempt-count > 1); all: a line for every request" },
    FieldDoc { path: "natural_key", kind: "object, optional", doc: "what the natural key takes of the request" },
    FieldDoc { path: "natural_key.query", kind: "\"ignore\" | \"sorted\", default \"ignore\"", doc: "ignore: the query string is no part of the operation; sorted: its parameters, decoded and sorted" },
    FieldDoc { path: "confirmation", kind: "object, optional", doc: "absent: no confirmation can be accepted" },
    FieldDoc { path: "confirmation.header", kind: "header name, default \"retry-guard-confirmation\"", doc: "request header carrying the signed confirmation; never forwarded upstream" },
    FieldDoc { path: "confirmation.max_ttl_seconds", kind: "integer 1..=86400, default 600", doc: "longest accepted exp - iat of a confirmation" },
    FieldDoc { path: "confirmation.keys", kind: "object key id -> standard base64 Ed25519 public key (32 bytes)", doc: "approver keys; several ids allow rotation" },
    FieldDoc { path: "ledger", kind: "object, default {\"backend\": \"shared_data\"}", doc: "where the ledger lives (see \"Cluster ledger\")" },
    FieldDoc { path: "ledger.backend", kind: "\"shared_data\" | \"etcd\", default \"shared_data\"", doc: "shared_data: one ledger per Envoy process; etcd: one ledger for every replica on the same etcd and key_prefix" },
    FieldDoc { path: "ledger.cluster", kind: "Envoy cluster name, required for etcd", doc: "the cluster that reaches etcd's client URL (HTTP/1.1, JSON gateway /v3/)" },
    FieldDoc { path: "ledger.authority", kind: "host, required for etcd", doc: ":authority of the calls to etcd" },
    FieldDoc { path: "ledger.key_prefix", kind: "string, default \"retry-guard/v1/\"", doc: "prefix of every etcd key the filter writes; replicas that share a ledger share it" },
    FieldDoc { path: "ledger.timeout_ms", kind: "integer 10..=10000, default 250", doc: "how long a request waits for etcd before its route's fail policy applies" },
    FieldDoc { path: "ledger.on_unavailable", kind: "\"fail_closed\" | \"fail_open\", default by class", doc: "what a request gets when the ledger cannot answer in time; default fail_closed for the sensitive classes, fail_open otherwise" },
    FieldDoc { path: "routes", kind: "list, required, at least one", doc: "guarded routes; first match wins" },
    FieldDoc { path: "routes[].name", kind: "string, required, unique", doc: "route name in answers, audit lines and fingerprints" },
    FieldDoc { path: "routes[].match", kind: "object, required, at least one condition", doc: "all given conditions must hold" },
    FieldDoc { path: "routes[].match.route_name", kind: "string", doc: "Envoy's route name (xds.route_name)" },
    FieldDoc { path: "routes[].match.methods", kind: "list of upper-case methods", doc: "request method is one of these" },
    FieldDoc { path: "routes[].match.authority", kind: "string", doc: ":authority, case-insensitive" },
    FieldDoc { path: "routes[].match.path", kind: "string", doc: "exact path, query ignored (one of path, path_prefix, path_template)" },
    FieldDoc { path: "routes[].match.path_prefix", kind: "string", doc: "path prefix" },
    FieldDoc { path: "routes[].match.path_template", kind: "string", doc: "segments; * is one segment, a trailing ** any rest" },
    FieldDoc { path: "routes[].class", kind: "read_only | idempotent_write | token_issuing | secret_minting | session_extending | privilege_changing", doc: "the last four are sensitive" },
    FieldDoc { path: "routes[].owner", kind: "string, required", doc: "owning team, in every answer and audit line" },
    FieldDoc { path: "routes[].escalation", kind: "string, required", doc: "escalation path, in every answer and audit line" },
    FieldDoc { path: "routes[].require_idempotency_key", kind: "bool, default false", doc: "missing key is 400" },
    FieldDoc { path: "routes[].token_max_age_seconds", kind: "integer >= 1, optional", doc: "bearer tokens older than this are stale (too_old)" },
    FieldDoc { path: "routes[].max_attempts", kind: "integer >= 1, optional", doc: "an attempt beyond this turns retry_safe into retry_with_review" },
    FieldDoc { path: "routes[].mode", kind: "\"enforce\" | \"shadow\", default: the global mode", doc: "per-route mode" },
    FieldDoc { path: "routes[].on", kind: "object outcome -> policy", doc: "overrides the class default for an outcome" },
    FieldDoc { path: "routes[].on_ledger_unavailable", kind: "\"fail_closed\" | \"fail_open\", default: ledger.on_unavailable, else by class", doc: "this route's fail policy when the ledger cannot answer in time" },
    FieldDoc { path: "routes[].shared_credential", kind: "\"record\" | \"deny\", default \"record\"", doc: "a bearer credential presented by a second mTLS workload identity within the window is counted and audited; deny also answers 403 credential-shared" },
    FieldDoc { path: "routes[].window_seconds", kind: "integer 1..=2592000, default: the global window_seconds", doc: "how long this route's ledger entries live after their latest attempt: a repeat within it is a retry, after it a new call (see Rolling out)" },
    FieldDoc { path: "routes[].anonymous", kind: "\"allow\" | \"reject\", default \"allow\"", doc: "reject answers 401 when no principal source names the caller" },
    FieldDoc { path: "routes[].natural_key", kind: "object, optional", doc: "the route's own natural_key settings" },
    FieldDoc { path: "routes[].natural_key.query", kind: "\"ignore\" | \"sorted\", default: the global natural_key.query", doc: "what the natural key takes of the query string on this route" },
];

const TOP_FIELDS: &[&str] = &[
    "mode",
    "window_seconds",
    "clock_skew_seconds",
    "max_entries",
    "idempotency_key_header",
    "max_key_length",
    "max_body_bytes",
    "principal",
    "on_missing_verified_principal",
    "unchanged_state_header",
    "stale_token_action",
    "confirmation",
    "ledger",
    "routes",
    "natural_key",
    "audit",
];
const AUDIT_FIELDS: &[&str] = &["untracked"];
const LEDGER_FIELDS: &[&str] = &[
    "backend",
    "cluster",
    "authority",
    "key_prefix",
    "timeout_ms",
    "on_unavailable",
];
const NATURAL_KEY_FIELDS: &[&str] = &["query"];
const CONFIRMATION_FIELDS: &[&str] = &["header", "max_ttl_seconds", "keys"];
const ROUTE_FIELDS: &[&str] = &[
    "name",
    "match",
    "class",
    "owner",
    "escalation",
    "require_idempotency_key",
    "token_max_age_seconds",
    "max_attempts",
    "mode",
    "on",
    "on_ledger_unavailable",
    "anonymous",
    "natural_key",
    "shared_credential",
    "window_seconds",
];
const MATCH_FIELDS: &[&str] = &[
    "route_name",
    "methods",
    "authority",
    "path",
    "path_prefix",
    "path_template",
];

/// A JSON object being read, with its field path, that rejects unknown fields.
struct Obj<'a> {
    path: String,
    map: &'a Map,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => format!("number {u}"),
            (None, Some(i)) => format!("number {i}"),
            _ => "a fractional number".into(),
        },
        Value::String(s) => format!("string {}", q(s)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// A value quoted for an error message (JSON string syntax, at most 64 characters).
fn q(s: &str) -> String {
    crate::json::quoted(truncate(s))
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

impl<'a> Obj<'a> {
    fn new(path: String, value: &'a Value, allowed: &[&str]) -> Result<Obj<'a>, ConfigError> {
        let Value::Object(map) = value else {
            let what = if path.is_empty() {
                "the configuration"
            } else {
                "this field"
            };
            return Err(err(
                path,
                format!("{what} must be a JSON object, found {}", describe(value)),
            ));
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(err(
                    join(&path, key),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                ));
            }
        }
        Ok(Obj { path, map })
    }

    fn field(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(err(
                self.field(name),
                format!("expected a string, found {}", describe(v)),
            )),
        }
    }

    fn required_string(&self, name: &str) -> Result<&'a str, ConfigError> {
        match self.string(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(err(self.field(name), "must not be empty")),
            None => Err(err(self.field(name), "required field is missing")),
        }
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(err(
                self.field(name),
                format!("expected true or false, found {}", describe(v)),
            )),
        }
    }

    fn int(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                Some(n) => Err(err(
                    self.field(name),
                    format!("{n} is out of range; expected an integer from {min} to {max}"),
                )),
                None => Err(err(
                    self.field(name),
                    format!(
                        "expected an integer from {min} to {max}, found {}",
                        describe(v)
                    ),
                )),
            },
        }
    }

    fn header_name(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        match self.string(name)? {
            None => Ok(default.to_string()),
            Some(h) => valid_header_name(h).map_err(|m| err(self.field(name), m)),
        }
    }

    /// A string field that must be one of `options` (name, value); `what` says what each
    /// means, for the error.
    fn choice<T: Copy>(
        &self,
        name: &str,
        options: &[(&str, T)],
        what: &str,
    ) -> Result<Option<T>, ConfigError> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        match options.iter().find(|(n, _)| *n == text) {
            Some((_, v)) => Ok(Some(*v)),
            None => Err(err(
                self.field(name),
                format!("unknown value {}; expected {what}", q(text)),
            )),
        }
    }

    fn mode(&self, name: &str) -> Result<Option<Mode>, ConfigError> {
        match self.string(name)? {
            None => Ok(None),
            Some("enforce") => Ok(Some(Mode::Enforce)),
            Some("shadow") => Ok(Some(Mode::Shadow)),
            Some(other) => Err(err(
                self.field(name),
                format!("unknown mode {}; expected enforce or shadow", q(other)),
            )),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn valid_header_name(h: &str) -> Result<String, String> {
    if h.is_empty() {
        return Err("header name must not be empty".into());
    }
    if !h.bytes().all(is_tchar) {
        return Err(format!(
            "{} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            q(h)
        ));
    }
    Ok(h.to_ascii_lowercase())
}

const MAX_WINDOW: u64 = 30 * 86_400;

/// A path condition is compared with the canonical path (no query string): it must be
/// canonical itself, or it could never match.
fn check_canonical(text: &str) -> Result<(), String> {
    if text.contains(['?', '#']) {
        return Err(format!(
            "{} has a query string or fragment; paths are matched without the query string, so write only the path",
            q(text)
        ));
    }
    let c = crate::canonical::canonical_path(text);
    if c.encoded_slash {
        return Err(format!(
            "{} has an encoded slash (%2F or %5C); requests with one are refused, so write the path with plain slashes",
            q(text)
        ));
    }
    if c.path != text {
        return Err(format!(
            "{} is not in canonical form, and requests are matched by their canonical path (escapes of unreserved characters decoded, slashes merged, dot segments resolved); write {}",
            q(text),
            q(&c.path)
        ));
    }
    Ok(())
}

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(err(
                "",
                "the plugin configuration is empty; it must be a JSON object with at least \"routes\"",
            ));
        }
        let value =
            crate::json::parse(bytes).map_err(|e| err("", format!("not valid JSON: {e}")))?;
        Config::from_json(&value)
    }

    /// The longest window of any route (or the global one): how long the cluster ledger's
    /// leases keep an entry's key after its latest attempt.
    pub fn longest_window_seconds(&self) -> u64 {
        self.routes
            .iter()
            .map(|r| r.window_seconds)
            .fold(self.window_seconds, u64::max)
    }

    /// Validates a document built with `serde_json` (for tests and tools): its text, read as
    /// [`Config::parse`] reads it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_value(value: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(value.to_string().as_bytes())
    }

    /// Validates an already parsed JSON document.
    pub fn from_json(value: &Value) -> Result<Config, ConfigError> {
        let top = Obj::new(String::new(), value, TOP_FIELDS)?;
        let mode = top.mode("mode")?.unwrap_or(Mode::Enforce);
        let window_seconds = top.int("window_seconds", 1, MAX_WINDOW)?.unwrap_or(900);
        let clock_skew_seconds = top.int("clock_skew_seconds", 0, 3600)?.unwrap_or(30);
        let max_entries = top.int("max_entries", 4, 1 << 24)?.unwrap_or(65_536);
        let idempotency_key_header =
            top.header_name("idempotency_key_header", "idempotency-key")?;
        let max_key_length = top.int("max_key_length", 1, 8192)?.unwrap_or(255);
        let max_body_bytes = top.int("max_body_bytes", 0, 1 << 24)?.unwrap_or(65_536);
        let principal = parse_principal(&top)?;
        let on_missing_verified_principal = top
            .choice(
                "on_missing_verified_principal",
                &[
                    ("next", OnMissingVerified::Next),
                    ("reject", OnMissingVerified::Reject),
                ],
                "\"next\" (try the next principal source) or \"reject\" (answer 401 principal-required)",
            )?
            .unwrap_or(OnMissingVerified::Next);
        if on_missing_verified_principal == OnMissingVerified::Reject
            && !principal
                .iter()
                .any(|p| matches!(p, PrincipalSource::Metadata(_)))
        {
            return Err(err(
                "on_missing_verified_principal",
                "\"reject\" needs a metadata:<namespace>:<path> source in principal (only such a source can be missing)",
            ));
        }
        let unchanged_state_header =
            top.header_name("unchanged_state_header", "retry-guard-state")?;
        let stale_token_action = match top.string("stale_token_action")? {
            None | Some("strip") => StaleTokenAction::Strip,
            Some("reject") => StaleTokenAction::Reject,
            Some(other) => {
                return Err(err(
                    "stale_token_action",
                    format!("unknown action {}; expected strip or reject", q(other)),
                ))
            }
        };
        let (confirmation_header, confirmation) = match top.get("confirmation") {
            None => ("retry-guard-confirmation".to_string(), None),
            Some(v) => {
                let c = parse_confirmation(v)?;
                (c.header.clone(), Some(c))
            }
        };
        let ledger = match top.get("ledger") {
            None => LedgerConfig::default(),
            Some(v) => parse_ledger(v)?,
        };
        let query = parse_natural_key(&top, "natural_key")?.unwrap_or(QueryKey::Ignore);
        let audit_untracked = match top.get("audit") {
            None => AuditUntracked::Events,
            Some(v) => Obj::new(top.field("audit"), v, AUDIT_FIELDS)?
                .choice(
                    "untracked",
                    &[("events", AuditUntracked::Events), ("all", AuditUntracked::All)],
                    "\"events\" (a line only when something happened) or \"all\" (a line for every request)",
                )?
                .unwrap_or(AuditUntracked::Events),
        };
        let routes = parse_routes(
            &top,
            mode,
            window_seconds,
            ledger.on_unavailable,
            query,
            on_missing_verified_principal,
        )?;
        Ok(Config {
            mode,
            window_seconds,
            clock_skew_seconds,
            max_entries: u32::try_from(max_entries).unwrap_or(1 << 24),
            idempotency_key_header,
            max_key_length: usize::try_from(max_key_length).unwrap_or(8192),
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(1 << 24),
            principal,
            on_missing_verified_principal,
            unchanged_state_header,
            stale_token_action,
            confirmation_header,
            confirmation,
            ledger,
            routes,
            query,
            audit_untracked,
        })
    }

    /// Index of the first matching route, reading facts lazily (see [`LazyFacts`]).
    pub fn match_route_lazy<F: FnMut(Fact) -> Option<String>>(
        &self,
        facts: &mut LazyFacts<F>,
    ) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matcher.matches_lazy(facts))
    }
}

fn parse_principal(top: &Obj<'_>) -> Result<Vec<PrincipalSource>, ConfigError> {
    let Some(v) = top.get("principal") else {
        // Only sources the caller cannot choose freely: see PrincipalSource::caller_chosen.
        return Ok(vec![PrincipalSource::PeerIdentity, PrincipalSource::Token]);
    };
    let Value::Array(items) = v else {
        return Err(err(
            "principal",
            format!("expected a list of sources, found {}", describe(v)),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("principal[{i}]");
        let Value::String(s) = item else {
            return Err(err(
                path,
                format!("expected a string, found {}", describe(item)),
            ));
        };
        let source = if s == "peer_identity" {
            PrincipalSource::PeerIdentity
        } else if s == "token" {
            PrincipalSource::Token
        } else if let Some(h) = s.strip_prefix("header:") {
            PrincipalSource::Header(valid_header_name(h).map_err(|m| err(&path, m))?)
        } else if let Some(c) = s.strip_prefix("jwt:") {
            if c.is_empty() {
                return Err(err(path, "jwt: needs a claim name, e.g. jwt:sub"));
            }
            PrincipalSource::JwtClaim(c.to_string())
        } else if let Some(m) = s.strip_prefix("metadata:") {
            PrincipalSource::Metadata(MetadataSource::parse(m).map_err(|m| err(&path, m))?)
        } else if let Some(c) = s.strip_prefix("cookie:") {
            if c.is_empty() || !c.bytes().all(is_tchar) {
                return Err(err(
                    path,
                    format!(
                        "{} is not a cookie name (a token: letters, digits and !#$%&'*+-.^_`|~), e.g. cookie:session",
                        q(c)
                    ),
                ));
            }
            PrincipalSource::Cookie(c.to_string())
        } else {
            return Err(err(
                path,
                format!(
                    "unknown principal source {}; expected peer_identity, token, cookie:<name>, header:<name>, jwt:<claim> or metadata:<namespace>:<path>",
                    q(s)
                ),
            ));
        };
        out.push(source);
    }
    Ok(out)
}

fn on_unavailable(o: &Obj<'_>, name: &str) -> Result<Option<OnUnavailable>, ConfigError> {
    match o.string(name)? {
        None => Ok(None),
        Some(s) => OnUnavailable::parse(s).map(Some).ok_or_else(|| {
            err(
                o.field(name),
                format!("unknown policy {}; expected fail_closed or fail_open", q(s)),
            )
        }),
    }
}

fn parse_ledger(v: &Value) -> Result<LedgerConfig, ConfigError> {
    let l = Obj::new("ledger".into(), v, LEDGER_FIELDS)?;
    let on_unavailable = on_unavailable(&l, "on_unavailable")?;
    let backend = match l.string("backend")?.unwrap_or("shared_data") {
        "shared_data" => {
            for f in ["cluster", "authority", "key_prefix", "timeout_ms"] {
                if l.get(f).is_some() {
                    return Err(err(
                        l.field(f),
                        "only the etcd backend takes this field; set \"backend\": \"etcd\" or remove it",
                    ));
                }
            }
            LedgerBackend::SharedData
        }
        "etcd" => {
            let key_prefix = l.string("key_prefix")?.unwrap_or("retry-guard/v1/");
            if key_prefix.is_empty() || key_prefix.len() > 128 {
                return Err(err(
                    l.field("key_prefix"),
                    "must be 1 to 128 characters, e.g. \"retry-guard/v1/\"",
                ));
            }
            LedgerBackend::Etcd(EtcdLedger {
                cluster: l.required_string("cluster")?.to_string(),
                authority: l.required_string("authority")?.to_string(),
                key_prefix: key_prefix.to_string(),
                timeout_ms: l.int("timeout_ms", 10, 10_000)?.unwrap_or(250),
            })
        }
        other => {
            return Err(err(
                l.field("backend"),
                format!("unknown backend {}; expected shared_data or etcd", q(other)),
            ))
        }
    };
    Ok(LedgerConfig {
        backend,
        on_unavailable,
    })
}

fn parse_confirmation(v: &Value) -> Result<Confirmation, ConfigError> {
    let c = Obj::new("confirmation".into(), v, CONFIRMATION_FIELDS)?;
    let header = c.header_name("header", "retry-guard-confirmation")?;
    let max_ttl_seconds = c.int("max_ttl_seconds", 1, 86_400)?.unwrap_or(600);
    let mut keys = Vec::new();
    match c.get("keys") {
        None => {}
        Some(Value::Object(map)) => {
            for (kid, key) in map {
                let path = format!("confirmation.keys.{kid}");
                if kid.is_empty() {
                    return Err(err(path, "key id must not be empty"));
                }
                let Value::String(text) = key else {
                    return Err(err(
                        path,
                        format!(
                            "expected standard base64 of a 32-byte Ed25519 public key, found {}",
                            describe(key)
                        ),
                    ));
                };
                let bytes = b64::decode_standard(text.trim()).ok_or_else(|| {
                    err(
                        &path,
                        "not valid standard base64; expected the 32-byte Ed25519 public key from `retry-guard keygen`",
                    )
                })?;
                let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    err(
                        &path,
                        format!(
                            "decodes to {} bytes; an Ed25519 public key is 32 bytes",
                            bytes.len()
                        ),
                    )
                })?;
                let vk = VerifyingKey::from_bytes(&arr).map_err(|_| {
                    err(
                        &path,
                        "not a valid Ed25519 public key (point does not decode)",
                    )
                })?;
                keys.push((kid.clone(), vk));
            }
        }
        Some(other) => {
            return Err(err(
                "confirmation.keys",
                format!(
                    "expected an object of key id -> public key, found {}",
                    describe(other)
                ),
            ))
        }
    }
    Ok(Confirmation {
        header,
        max_ttl_seconds,
        keys,
    })
}

/// The `query` of a `natural_key` object at `field` of `obj`, if given.
fn parse_natural_key(obj: &Obj<'_>, field: &str) -> Result<Option<QueryKey>, ConfigError> {
    let Some(v) = obj.get(field) else {
        return Ok(None);
    };
    let nk = Obj::new(obj.field(field), v, NATURAL_KEY_FIELDS)?;
    nk.choice(
        "query",
        &[("ignore", QueryKey::Ignore), ("sorted", QueryKey::Sorted)],
        "\"ignore\" (the query string is no part of the operation) or \"sorted\" (its parameters, decoded and sorted)",
    )
}

fn parse_routes(
    top: &Obj<'_>,
    global_mode: Mode,
    global_window: u64,
    global_on_unavailable: Option<OnUnavailable>,
    global_query: QueryKey,
    on_missing_verified: OnMissingVerified,
) -> Result<Vec<Route>, ConfigError> {
    let items = match top.get("routes") {
        None => {
            return Err(err(
                "routes",
                "required field is missing; list at least one guarded route",
            ))
        }
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(err(
                "routes",
                format!("expected a list of routes, found {}", describe(v)),
            ))
        }
    };
    if items.is_empty() {
        return Err(err("routes", "must list at least one guarded route"));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let r = Obj::new(format!("routes[{i}]"), item, ROUTE_FIELDS)?;
        let name = r.required_string("name")?.to_string();
        if let Some(j) = routes.iter().position(|x| x.name == name) {
            return Err(err(
                r.field("name"),
                format!(
                    "duplicate route name {} (also routes[{j}].name); names must be unique",
                    q(&name)
                ),
            ));
        }
        let matcher = match r.get("match") {
            None => return Err(err(r.field("match"), "required field is missing")),
            Some(m) => parse_match(r.field("match"), m)?,
        };
        let class_name = r.required_string("class")?;
        let class = RouteClass::parse(class_name).ok_or_else(|| {
            err(
                r.field("class"),
                format!(
                    "unknown class {}; expected one of {}",
                    q(class_name),
                    RouteClass::names()
                ),
            )
        })?;
        let owner = r.required_string("owner")?.to_string();
        let escalation = r.required_string("escalation")?.to_string();
        let require_idempotency_key = r.bool("require_idempotency_key", false)?;
        let token_max_age_seconds = r.int("token_max_age_seconds", 1, 365 * 86_400)?;
        let max_attempts = r
            .int("max_attempts", 1, 1_000_000)?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let mode = r.mode("mode")?.unwrap_or(global_mode);
        let window_seconds = r
            .int("window_seconds", 1, MAX_WINDOW)?
            .unwrap_or(global_window);
        let on_ledger_unavailable = on_unavailable(&r, "on_ledger_unavailable")?
            .or(global_on_unavailable)
            .unwrap_or_else(|| OnUnavailable::default_for(class));
        let anonymous = r
            .choice(
                "anonymous",
                &[("allow", Anonymous::Allow), ("reject", Anonymous::Reject)],
                "\"allow\" (guard anonymous requests together under the principal \"anonymous\") or \"reject\" (answer them 401)",
            )?
            .unwrap_or(match on_missing_verified {
                OnMissingVerified::Next => Anonymous::Allow,
                OnMissingVerified::Reject => Anonymous::Reject,
            });
        if on_missing_verified == OnMissingVerified::Reject && anonymous == Anonymous::Allow {
            return Err(err(
                r.field("anonymous"),
                "on_missing_verified_principal is \"reject\", which refuses unauthenticated requests on every route; remove \"anonymous\": \"allow\" here, or set on_missing_verified_principal to \"next\"",
            ));
        }
        let shared_credential = r
            .choice(
                "shared_credential",
                &[("record", SharedCredential::Record), ("deny", SharedCredential::Deny)],
                "\"record\" (count and audit a credential presented by two workload identities) or \"deny\" (also answer 403)",
            )?
            .unwrap_or(SharedCredential::Record);
        let query = parse_natural_key(&r, "natural_key")?.unwrap_or(global_query);
        let mut policies = PolicyTable::for_class(class);
        match r.get("on") {
            None => {}
            Some(Value::Object(map)) => {
                for (outcome, policy) in map {
                    let path = format!("{}.{outcome}", r.field("on"));
                    let o = Outcome::parse(outcome).ok_or_else(|| {
                        err(
                            &path,
                            format!("unknown outcome; expected one of {}", Outcome::names()),
                        )
                    })?;
                    let p = match policy {
                        Value::String(s) => Policy::parse(s),
                        _ => None,
                    }
                    .ok_or_else(|| {
                        err(
                            &path,
                            format!(
                                "unknown policy {}; expected one of retry_safe, retry_with_review, do_not_retry",
                                describe(policy)
                            ),
                        )
                    })?;
                    policies.set(o, p);
                }
            }
            Some(v) => {
                return Err(err(
                    r.field("on"),
                    format!(
                        "expected an object of outcome -> policy, found {}",
                        describe(v)
                    ),
                ))
            }
        }
        let identity = Route::identity_members(&name, class, &owner, &escalation);
        routes.push(Route {
            identity,
            name,
            matcher,
            class,
            owner,
            escalation,
            require_idempotency_key,
            token_max_age_seconds,
            max_attempts,
            mode,
            anonymous,
            query,
            policies,
            on_ledger_unavailable,
            shared_credential,
            window_seconds,
        });
    }
    Ok(routes)
}

fn parse_match(path: String, v: &Value) -> Result<RouteMatch, ConfigError> {
    let m = Obj::new(path, v, MATCH_FIELDS)?;
    let route_name = m.string("route_name")?.map(str::to_string);
    if route_name.as_deref() == Some("") {
        return Err(err(m.field("route_name"), "must not be empty"));
    }
    let methods = match m.get("methods") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(err(
                    m.field("methods"),
                    "must list at least one method (leave the field out to match any method)",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = format!("{}[{i}]", m.field("methods"));
                let Value::String(s) = item else {
                    return Err(err(
                        p,
                        format!("expected a string, found {}", describe(item)),
                    ));
                };
                if s.is_empty() || !s.bytes().all(is_tchar) {
                    return Err(err(p, format!("{} is not an HTTP method", q(s))));
                }
                if s.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(err(
                        p,
                        format!(
                            "methods are case-sensitive and Envoy compares them as sent; write {}",
                            q(&s.to_ascii_uppercase())
                        ),
                    ));
                }
                out.push(s.clone());
            }
            out
        }
        Some(other) => {
            return Err(err(
                m.field("methods"),
                format!("expected a list of methods, found {}", describe(other)),
            ))
        }
    };
    let authority = m.string("authority")?.map(str::to_string);
    let mut path_match = PathMatch::Any;
    let mut chosen: Option<&str> = None;
    for kind in ["path", "path_prefix", "path_template"] {
        let Some(text) = m.string(kind)? else {
            continue;
        };
        if let Some(first) = chosen {
            return Err(err(
                m.field(kind),
                format!("give only one of path, path_prefix, path_template (also {first})"),
            ));
        }
        chosen = Some(kind);
        if !text.starts_with('/') {
            return Err(err(
                m.field(kind),
                format!("{} must start with '/'", q(text)),
            ));
        }
        check_canonical(text).map_err(|e| err(m.field(kind), e))?;
        path_match = match kind {
            "path" => PathMatch::Exact(text.to_string()),
            "path_prefix" => PathMatch::Prefix(text.to_string()),
            _ => PathMatch::template(text).map_err(|e| err(m.field(kind), e))?,
        };
    }
    let matcher = RouteMatch {
        route_name,
        methods,
        authority,
        path: path_match,
    };
    if matcher.route_name.is_none()
        && matcher.methods.is_empty()
        && matcher.authority.is_none()
        && matcher.path == PathMatch::Any
    {
        return Err(err(
            m.path,
            "give at least one condition: route_name, methods, authority, path, path_prefix or path_template",
        ));
    }
    Ok(matcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text.as_bytes())
    }

    fn route(extra: &str) -> String {
        format!(
            r#"{{"routes":[{{"name":"t","match":{{"path":"/oauth/token"}},"class":"token_issuing","owner":"team-iam","escalation":"pd:iam"{extra}}}]}}"#
        )
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_routes_identity_members_are_written_once_and_refreshed_on_change() {
        let c = parse(&route("")).unwrap();
        let mut r = c.routes[0].clone();
        assert_eq!(
            r.identity_json(),
            r#""route":"t","class":"token_issuing","owner":"team-iam","escalation":"pd:iam""#
        );
        r.owner = "team \"b\"".into();
        r.refresh_identity();
        assert!(r.identity_json().contains(r#""owner":"team \"b\"""#));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "without refresh_identity")]
    fn a_route_changed_without_refresh_is_caught_in_debug_builds() {
        let mut r = parse(&route("")).unwrap().routes[0].clone();
        r.escalation = "pd:other".into();
        let _ = r.identity_json();
    }

    #[test]
    fn defaults_apply() {
        let c = parse(&route("")).unwrap();
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.window_seconds, 900);
        assert_eq!(c.clock_skew_seconds, 30);
        assert_eq!(c.max_entries, 65_536);
        assert_eq!(c.idempotency_key_header, "idempotency-key");
        assert_eq!(c.max_key_length, 255);
        assert_eq!(c.max_body_bytes, 65_536);
        assert_eq!(
            c.principal,
            vec![PrincipalSource::PeerIdentity, PrincipalSource::Token]
        );
        assert_eq!(c.query, QueryKey::Ignore);
        assert_eq!(c.routes[0].query, QueryKey::Ignore);
        assert_eq!(c.routes[0].anonymous, Anonymous::Allow);
        assert_eq!(c.unchanged_state_header, "retry-guard-state");
        assert_eq!(c.stale_token_action, StaleTokenAction::Strip);
        assert_eq!(c.confirmation_header, "retry-guard-confirmation");
        assert!(c.confirmation.is_none());
        let m = &c.routes[0].matcher;
        assert!(m.path != PathMatch::Any && m.route_name.is_none() && m.methods.is_empty());
        assert_eq!(c.routes[0].mode, Mode::Enforce);
    }

    #[test]
    fn the_issue_example_parses() {
        let text = include_str!("../../testdata/configs/issue-example.json");
        let c = parse(text).unwrap();
        let r = &c.routes[0];
        assert_eq!(r.class, RouteClass::TokenIssuing);
        assert_eq!(r.policies.get(Outcome::Succeeded), Policy::RetryWithReview);
        assert_eq!(r.max_attempts, Some(5));
        assert_eq!(r.token_max_age_seconds, Some(300));
        assert_eq!(c.confirmation.as_ref().unwrap().keys.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let bad_class = route("").replace("token_issuing", "token_issueing");
        assert_eq!(
            error_of(&bad_class),
            "routes[0].class: unknown class \"token_issueing\"; expected one of read_only, idempotent_write, token_issuing, secret_minting, session_extending, privilege_changing"
        );
        assert!(error_of(r#"{"routes":[],"windw_seconds":1}"#)
            .starts_with("windw_seconds: unknown field; expected one of mode, "));
        assert_eq!(
            error_of(&route(r#","max_attempts":"5""#)),
            "routes[0].max_attempts: expected an integer from 1 to 1000000, found string \"5\""
        );
        assert!(error_of(&route(r#","on":{"suceeded":"retry_safe"}"#))
            .starts_with("routes[0].on.suceeded: unknown outcome"));
        assert!(error_of(&route(r#","on":{"succeeded":"allow"}"#))
            .starts_with("routes[0].on.succeeded: unknown policy string \"allow\""));
        assert_eq!(
            error_of(&route("").replace(r#","owner":"team-iam""#, "")),
            "routes[0].owner: required field is missing"
        );
        assert!(error_of(r#"{"routes":[]}"#).starts_with("routes: must list at least one"));
        assert!(error_of(r#"{}"#).starts_with("routes: required field is missing"));
        assert!(error_of("").starts_with("configuration: the plugin configuration is empty"));
        assert!(error_of("{").starts_with("configuration: not valid JSON"));
        assert!(
            error_of("[]").starts_with("configuration: the configuration must be a JSON object")
        );
        assert!(
            error_of(&route("").replace(r#""path":"/oauth/token""#, r#""pth":"/x""#))
                .starts_with("routes[0].match.pth: unknown field")
        );
        assert!(
            error_of(&route("").replace(r#"{"path":"/oauth/token"}"#, "{}"))
                .starts_with("routes[0].match: give at least one condition")
        );
        assert!(error_of(&route("").replace(
            r#""path":"/oauth/token""#,
            r#""path":"/a","path_prefix":"/b""#
        ))
        .starts_with("routes[0].match.path_prefix: give only one of"));
        assert!(
            error_of(&route("").replace(r#""path":"/oauth/token""#, r#""methods":["post"]"#))
                .contains("write \"POST\"")
        );
        assert!(error_of(
            &route("").replace(r#""path":"/oauth/token""#, r#""path_template":"/a/**/b""#)
        )
        .starts_with("routes[0].match.path_template:"));
        assert!(error_of(&route(r#","mode":"audit""#)).starts_with("routes[0].mode: unknown mode"));
        let dup = r#"{"routes":[{"name":"a","match":{"path":"/x"},"class":"read_only","owner":"o","escalation":"e"},{"name":"a","match":{"path":"/y"},"class":"read_only","owner":"o","escalation":"e"}]}"#;
        assert!(error_of(dup).starts_with("routes[1].name: duplicate route name"));
        let mut with_top = route("");
        with_top.insert_str(1, r#""principal":["jwt:sub","cookie"],"#);
        assert!(error_of(&with_top).starts_with("principal[1]: unknown principal source"));
        let mut with_top = route("");
        with_top.insert_str(1, r#""principal":["cookie:a b"],"#);
        assert!(error_of(&with_top).starts_with("principal[0]: \"a b\" is not a cookie name"));
        assert!(error_of(&route(r#","anonymous":"deny""#))
            .starts_with("routes[0].anonymous: unknown value \"deny\"; expected \"allow\""));
        assert!(error_of(&route(r#","natural_key":{"query":"keep"}"#))
            .starts_with("routes[0].natural_key.query: unknown value \"keep\""));
        assert!(error_of(&route(r#","natural_key":{"body":"raw"}"#))
            .starts_with("routes[0].natural_key.body: unknown field; expected one of query"));
        for (bad, msg) in [
            ("/oauth//token", "write \"/oauth/token\""),
            ("/oauth/%74oken", "write \"/oauth/token\""),
            ("/oauth/./token", "write \"/oauth/token\""),
            ("/oauth/token?x=1", "has a query string"),
            ("/oauth%2Ftoken", "has an encoded slash"),
        ] {
            let text = route("").replace("/oauth/token", bad);
            let e = error_of(&text);
            assert!(
                e.starts_with("routes[0].match.path: ") && e.contains(msg),
                "{bad}: {e}"
            );
        }
        let mut big = route("");
        big.insert_str(1, r#""max_entries":2,"#);
        assert!(error_of(&big).starts_with("max_entries: 2 is out of range"));
        let mut key = route("");
        key.insert_str(1, r#""confirmation":{"keys":{"k1":"AAAA"}},"#);
        assert_eq!(
            error_of(&key),
            "confirmation.keys.k1: decodes to 3 bytes; an Ed25519 public key is 32 bytes"
        );
        let mut key = route("");
        key.insert_str(1, r#""confirmation":{"keys":{"k1":"!!"}},"#);
        assert!(error_of(&key).starts_with("confirmation.keys.k1: not valid standard base64"));
        let mut hdr = route("");
        hdr.insert_str(1, r#""idempotency_key_header":"bad header","#);
        assert!(error_of(&hdr).starts_with("idempotency_key_header: \"bad header\" is not a valid"));
    }

    #[test]
    fn new_principal_sources_and_route_settings() {
        let mut text = route(r#","anonymous":"reject","natural_key":{"query":"ignore"}"#);
        text.insert_str(
            1,
            r#""principal":["cookie:session","header:x-client-id","jwt:sub","token"],"natural_key":{"query":"sorted"},"#,
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.principal,
            vec![
                PrincipalSource::Cookie("session".into()),
                PrincipalSource::Header("x-client-id".into()),
                PrincipalSource::JwtClaim("sub".into()),
                PrincipalSource::Token,
            ]
        );
        let chosen: Vec<bool> = c
            .principal
            .iter()
            .map(PrincipalSource::caller_chosen)
            .collect();
        assert_eq!(chosen, [false, true, true, false]);
        assert_eq!(c.query, QueryKey::Sorted);
        assert_eq!(c.routes[0].query, QueryKey::Ignore, "the route's own");
        assert_eq!(c.routes[0].anonymous, Anonymous::Reject);
        let mut text = route("");
        text.insert_str(1, r#""natural_key":{"query":"sorted"},"#);
        assert_eq!(
            parse(&text).unwrap().routes[0].query,
            QueryKey::Sorted,
            "the global one"
        );
    }

    #[test]
    fn verified_principal_sources_and_what_their_absence_does() {
        let mut text = route("");
        text.insert_str(
            1,
            r#""principal":["metadata:envoy.filters.http.jwt_authn:jwt_payload.sub","token"],"#,
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.principal[0],
            PrincipalSource::Metadata(MetadataSource {
                namespace: "envoy.filters.http.jwt_authn".into(),
                path: vec!["jwt_payload".into(), "sub".into()],
            })
        );
        assert!(!c.principal[0].caller_chosen());
        assert_eq!(c.on_missing_verified_principal, OnMissingVerified::Next);
        assert_eq!(c.routes[0].anonymous, Anonymous::Allow);
        // reject: every route refuses anonymous requests, by default ...
        let rejecting = text.replacen('{', r#"{"on_missing_verified_principal":"reject","#, 1);
        let c = parse(&rejecting).unwrap();
        assert_eq!(c.on_missing_verified_principal, OnMissingVerified::Reject);
        assert_eq!(c.routes[0].anonymous, Anonymous::Reject);
        // ... and a route cannot say otherwise.
        let mut allow = route(r#","anonymous":"allow""#);
        allow.insert_str(
            1,
            r#""principal":["metadata:ns:sub"],"on_missing_verified_principal":"reject","#,
        );
        assert!(error_of(&allow)
            .starts_with("routes[0].anonymous: on_missing_verified_principal is \"reject\""));
        let mut no_source = route("");
        no_source.insert_str(1, r#""on_missing_verified_principal":"reject","#);
        assert!(error_of(&no_source)
            .starts_with("on_missing_verified_principal: \"reject\" needs a metadata:"));
        let mut bad = route("");
        bad.insert_str(1, r#""on_missing_verified_principal":"fallthrough","#);
        assert!(error_of(&bad).starts_with("on_missing_verified_principal: unknown value"));
        let mut bad = route("");
        bad.insert_str(
            1,
            r#""principal":["metadata:envoy.filters.http.jwt_authn"],"#,
        );
        assert!(error_of(&bad).starts_with("principal[0]: metadata: needs a filter namespace"));
        let mut bad = route("");
        bad.insert_str(1, r#""principal":["metadata:ns:a..b"],"#);
        assert!(error_of(&bad).starts_with("principal[0]: \"a..b\" is not a metadata path"));
    }

    #[test]
    fn route_mode_overrides_global() {
        let mut text = route(r#","mode":"enforce""#);
        text.insert_str(1, r#""mode":"shadow","#);
        let c = parse(&text).unwrap();
        assert_eq!(c.mode, Mode::Shadow);
        assert_eq!(c.routes[0].mode, Mode::Enforce);
        let mut text = route("");
        text.insert_str(1, r#""mode":"shadow","#);
        assert_eq!(parse(&text).unwrap().routes[0].mode, Mode::Shadow);
    }

    #[test]
    fn schema_lists_every_accepted_field() {
        for f in TOP_FIELDS {
            assert!(SCHEMA.iter().any(|d| d.path == *f), "{f}");
        }
        for f in ROUTE_FIELDS {
            let p = format!("routes[].{f}");
            assert!(SCHEMA.iter().any(|d| d.path == p), "{p}");
        }
        for f in MATCH_FIELDS {
            let p = format!("routes[].match.{f}");
            assert!(SCHEMA.iter().any(|d| d.path == p), "{p}");
        }
        for f in CONFIRMATION_FIELDS {
            let p = format!("confirmation.{f}");
            assert!(SCHEMA.iter().any(|d| d.path == p), "{p}");
        }
        for f in NATURAL_KEY_FIELDS {
            for p in [
                format!("natural_key.{f}"),
                format!("routes[].natural_key.{f}"),
            ] {
                assert!(SCHEMA.iter().any(|d| d.path == p), "{p}");
            }
        }
    }
}
