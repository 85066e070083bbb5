//! The proxy-wasm shell: gathers request facts from the host, drives the ledger in shared
//! data, calls the policy core and applies its decision. No policy lives here.
//!
//! Host calls go through [`crate::abi`], whose wrappers return the host's status and never
//! panic (a panic would kill the VM for every request on the worker). The callbacks `abi`
//! exports land in the `on_*` functions at the end of this file, which find the context's
//! state and call its methods.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::abi::{self, Action, BufferType, LogLevel, MapType, MetricType, Status};

use crate::audit::{self, OutcomeRecord};
use crate::config::{Config, PrincipalSource, Route};
use crate::confirm::Challenge;
use crate::engine::{self, Decision, Facts, Verdict};
use crate::fingerprint::{parse_idempotency_key, Fingerprint, KeyCheck};
use crate::headers::HeaderPairs;
use crate::jwt::{Claims, Credential};
use crate::ledger::{LedgerError, SharedStore, SlotLedger};
use crate::matcher::{Fact, LazyFacts};
use crate::metrics::{Counter, Event};
use crate::policy::{ResponseFacts, RouteClass};
use crate::principal::{self, PrincipalInputs};
use crate::token::{BearerToken, TokenRules};

/// Envoy filter-state key (readable as `%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%`).
const DECISION_PROPERTY: &str = "retry_guard.decision";
const TOKEN_MARK_HEADER: &str = "retry-guard-token";

use abi::log;

fn now_seconds() -> u64 {
    abi::now_nanos().map_or(0, |n| n / 1_000_000_000)
}

/// All request headers in the ABI's serialized form, in one host call and one allocation.
fn request_headers_blob() -> Vec<u8> {
    abi::header_pairs(MapType::RequestHeaders)
}

fn request_header_text(name: &str) -> Option<String> {
    abi::header(MapType::RequestHeaders, name).and_then(|b| String::from_utf8(b).ok())
}

fn property_text(path: &[u8]) -> Option<String> {
    abi::property(path).and_then(|b| String::from_utf8(b).ok())
}

/// Envoy encodes integer properties as 8 bytes little-endian.
fn property_u64(path: &[u8]) -> Option<u64> {
    let bytes = abi::property(path)?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// Reads the facts routes match on, for [`LazyFacts`]: the route name from the
/// `xds.route_name` property; headers one by one (no header-map copy for a request no route
/// can match) until the route name is one a guarded route names, and from then on from one
/// copy of all request headers, which the matched request needs anyway.
struct Fetcher<'a> {
    config: &'a Config,
    blob: &'a mut Option<Vec<u8>>,
    bulk: bool,
}

impl Fetcher<'_> {
    fn fetch(&mut self, fact: Fact) -> Option<String> {
        let name = match fact {
            Fact::RouteName => {
                let value = property_text(b"xds\0route_name");
                self.bulk = value.as_deref().is_some_and(|v| {
                    self.config
                        .routes
                        .iter()
                        .any(|r| r.matcher.route_name.as_deref() == Some(v))
                });
                return value;
            }
            Fact::Method => ":method",
            Fact::Authority => ":authority",
            Fact::Path => ":path",
        };
        if !self.bulk {
            return request_header_text(name);
        }
        let blob = self.blob.get_or_insert_with(request_headers_blob);
        let value = HeaderPairs::lookup(blob, name)?;
        String::from_utf8(value.to_vec()).ok()
    }
}

/// Envoy shared data through the host ABI.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, LedgerError> {
        match abi::shared_data(key) {
            // A key exists iff the host returns a CAS; an empty value comes back as no data.
            Ok((data, Some(cas))) => Ok(Some((data.unwrap_or_default(), cas))),
            Ok((Some(data), None)) => Ok(Some((data, 0))),
            Ok((None, None)) => Ok(None),
            Err(status) => Err(LedgerError::Get {
                key: key.to_string(),
                status: status.0,
            }),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), LedgerError> {
        let cas = (cas != 0).then_some(cas);
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CAS_MISMATCH) => Err(LedgerError::CasMismatch),
            Err(status) => Err(LedgerError::Set {
                key: key.to_string(),
                status: status.0,
            }),
        }
    }
}

/// How long a stream may wait for its first body callback after the filter held its headers
/// before the VM logs the likely cause (a missing `allow_on_headers_stop_iteration`).
const HELD_WARN_SECONDS: u64 = 10;
/// At most one such log line per VM per this many seconds.
const HELD_WARN_EVERY_SECONDS: u64 = 60;

/// Configuration and metric ids shared by the root and all streams of one VM.
struct Shared {
    config: Config,
    metrics: Vec<u32>,
    memory_gauge: Option<u32>,
    ledger: SlotLedger<HostStore>,
    /// Streams whose headers are held waiting for the body: (context id, since).
    held: RefCell<Vec<(u32, u64)>>,
    /// When the held-stream warning was last logged.
    warned_at: Cell<u64>,
}

impl Shared {
    fn hold(&self, id: u32, now: u64) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.push((id, now));
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

    fn release(&self, id: u32) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.retain(|(h, _)| *h != id);
        }
    }

    /// Envoy without `allow_on_headers_stop_iteration: true` never delivers the body after a
    /// pause in the headers callback; the request would hang silently. Say so in the log.
    fn check_held(&self, now: u64) {
        let stuck = match self.held.try_borrow() {
            Ok(held) => held
                .iter()
                .filter(|(_, since)| now.saturating_sub(*since) >= HELD_WARN_SECONDS)
                .count(),
            Err(_) => 0,
        };
        if stuck > 0 && now.saturating_sub(self.warned_at.get()) >= HELD_WARN_EVERY_SECONDS {
            self.warned_at.set(now);
            log(
                LogLevel::Critical,
                &format!(
                    "retry-guard: {stuck} request(s) held for their body over {HELD_WARN_SECONDS} s without a body callback; \
                     set `allow_on_headers_stop_iteration: true` in the wasm filter's config (envoy.extensions.wasm.v3.PluginConfig), \
                     otherwise Envoy never delivers the body of guarded requests"
                ),
            );
        }
    }

    fn count(&self, counter: Counter) {
        if let Some(id) = self.metrics.get(counter.index()) {
            abi::increment_metric(*id, 1);
        }
    }
}

/// Reads, checks and applies the plugin configuration: `None` (with a critical log line that
/// says what to change) if the plugin cannot work with it.
fn configure() -> Option<Rc<Shared>> {
    let bytes = abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default();
    let config = match Config::parse(&bytes) {
        Ok(c) => c,
        Err(e) => {
            log(
                LogLevel::Critical,
                &format!("retry-guard: invalid plugin configuration: {e}"),
            );
            return None;
        }
    };
    let mut metrics = Vec::with_capacity(Counter::ALL.len());
    for c in Counter::ALL {
        match abi::define_metric(MetricType::Counter, &c.name()) {
            Ok(id) => metrics.push(id),
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!(
                        "retry-guard: cannot define metric {}: status {}",
                        c.name(),
                        status.0
                    ),
                );
                return None;
            }
        }
    }
    let memory_gauge = abi::define_metric(MetricType::Gauge, crate::metrics::MEMORY_GAUGE).ok();
    let ledger = SlotLedger::new(HostStore, config.max_entries, config.window_seconds);
    match ledger.ensure_slots() {
        Ok(created) => log(
            LogLevel::Info,
            &format!(
                "retry-guard: configured {} route(s); ledger {} sets x {} entries ({} keys created by this VM)",
                config.routes.len(),
                ledger.sets(),
                crate::ledger::WAYS,
                created
            ),
        ),
        Err(e) => {
            log(
                LogLevel::Critical,
                &format!("retry-guard: cannot create the ledger table: {e}"),
            );
            return None;
        }
    }
    let shared = Rc::new(Shared {
        config,
        metrics,
        memory_gauge,
        ledger,
        held: RefCell::new(Vec::new()),
        warned_at: Cell::new(0),
    });
    shared.record_memory();
    abi::set_tick_period_ms(5_000);
    Some(shared)
}

/// Facts of a matched request gathered at request headers, waiting for the body.
struct Pending {
    now: u64,
    method: String,
    path: String,
    /// The `content-length` header, if any.
    declared_length: Option<u64>,
    request_id: Option<String>,
    principal: String,
    key: KeyCheck,
    stale: Option<crate::token::StaleReason>,
    confirmation: Option<Vec<u8>>,
    hasher: Sha256,
    body_seen: usize,
}

impl Pending {
    /// Facts for a decision made before the body is known (400, 413): no fingerprint yet.
    fn early_facts(&self) -> Facts<'_> {
        Facts {
            now: self.now,
            request_id: self.request_id.as_deref(),
            principal: &self.principal,
            key: &self.key,
            fingerprint: None,
            body_digest: [0; 32],
            stale: self.stale,
            confirmation: None,
        }
    }
}

/// The attempt whose outcome this stream records.
struct Tracked {
    fingerprint: Fingerprint,
    attempt: u32,
    request_id: Option<String>,
    recorded: bool,
}

struct Stream {
    id: u32,
    shared: Rc<Shared>,
    route: usize,
    pending: Option<Pending>,
    tracked: Option<Tracked>,
    replied: bool,
}

impl Stream {
    fn new(id: u32, shared: Rc<Shared>) -> Stream {
        Stream {
            id,
            shared,
            route: 0,
            pending: None,
            tracked: None,
            replied: false,
        }
    }

    fn gather(
        shared: &Shared,
        route: &Route,
        method: String,
        path: String,
        blob: Vec<u8>,
    ) -> Pending {
        let config = &shared.config;
        let now = now_seconds();
        let headers = HeaderPairs::parse(&blob).unwrap_or_default();
        let request_id = headers.text("x-request-id").map(str::to_string);
        let key = parse_idempotency_key(
            headers.get(&config.idempotency_key_header),
            config.max_key_length,
        );
        let declared_length = headers
            .text("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let credential = headers.text("authorization").and_then(Credential::parse);
        let claims = match credential {
            Some(Credential::Bearer(t)) => Claims::decode(t),
            _ => None,
        };
        let peer_identity = if config.principal.contains(&PrincipalSource::PeerIdentity) {
            property_text(b"connection\0uri_san_peer_certificate")
        } else {
            None
        };
        let inputs = PrincipalInputs {
            peer_identity: peer_identity.as_deref(),
            credential,
            claims: claims.as_ref(),
        };
        let principal = principal::derive(&config.principal, &inputs, &mut |name| {
            headers.text(name).map(str::to_string)
        });
        let token = match (credential, &claims) {
            (Some(Credential::Bearer(_)), Some(c)) => BearerToken::Jwt(c.times()),
            (Some(Credential::Bearer(_)), None) => BearerToken::Opaque,
            _ => BearerToken::None,
        };
        let rules = TokenRules {
            sensitive: route.class.is_sensitive(),
            max_age: route.token_max_age_seconds,
            skew: config.clock_skew_seconds,
        };
        let first_seen = match credential {
            Some(c) if rules.needs_first_seen(&token) => {
                match engine::first_seen_with_ledger(
                    &shared.ledger,
                    c.secret(),
                    now,
                    config.window_seconds,
                ) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log(
                            LogLevel::Warn,
                            &format!("retry-guard: token age unknown: {e}"),
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let stale = rules.assess(&token, now, first_seen);
        // Untracked routes never ask for a confirmation: nothing to read there.
        let confirmation = if route.needs_ledger() {
            headers.get(&config.confirmation_header).map(<[u8]>::to_vec)
        } else {
            None
        };
        if confirmation.is_some() {
            // Never forwarded upstream, whatever the decision.
            let _ = abi::remove_header(MapType::RequestHeaders, &config.confirmation_header);
        }
        Pending {
            now,
            method,
            path,
            declared_length,
            request_id,
            principal,
            key,
            stale,
            confirmation,
            hasher: Sha256::new(),
            body_seen: 0,
        }
    }

    /// Hashes body bytes not hashed yet (Envoy reports the cumulative buffered size).
    fn hash_body(pending: &mut Pending, body_size: usize) {
        if body_size <= pending.body_seen {
            return;
        }
        let len = body_size - pending.body_seen;
        if let Ok(Some(chunk)) = abi::buffer(BufferType::RequestBody, pending.body_seen, len) {
            pending.hasher.update(&chunk);
            pending.body_seen += chunk.len();
        }
    }

    /// Decides with the complete body digest and applies the decision.
    fn finish(&mut self, shared: &Shared) -> Action {
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        let Some(route) = shared.config.routes.get(self.route) else {
            return Action::Continue;
        };
        let body_digest: [u8; 32] = if pending.body_seen == 0 {
            crate::fingerprint::EMPTY_BODY_DIGEST
        } else {
            pending.hasher.clone().finalize().into()
        };
        let fingerprint = Fingerprint::compute(
            &route.name,
            &pending.principal,
            pending.key.key(),
            &pending.method,
            &pending.path,
            &body_digest,
        );
        let facts = Facts {
            now: pending.now,
            request_id: pending.request_id.as_deref(),
            principal: &pending.principal,
            key: &pending.key,
            fingerprint: Some(fingerprint),
            body_digest,
            stale: pending.stale,
            confirmation: pending.confirmation.as_deref(),
        };
        let mut challenge = fresh_challenge(&fingerprint);
        let settled = match engine::decide_with_ledger(
            &shared.ledger,
            &shared.config,
            route,
            &facts,
            &mut challenge,
        ) {
            Ok(s) => s,
            Err(e) => {
                // The shared-data store failed: fail open and say so (never seen in practice).
                log(
                    LogLevel::Error,
                    &format!("retry-guard: ledger unavailable, request passes unguarded: {e}"),
                );
                return Action::Continue;
            }
        };
        if settled.evicted {
            shared.count(Counter::Event(Event::LedgerEvicted));
        }
        let decision = settled.decision;
        let action = self.apply(shared, route, &facts, &decision);
        if let Some(attempt) = decision.new_attempt().filter(|_| !self.replied) {
            self.tracked = Some(Tracked {
                fingerprint,
                attempt,
                request_id: pending.request_id.clone(),
                recorded: false,
            });
        }
        action
    }

    /// Counts, logs and enforces a decision.
    fn apply(&mut self, shared: &Shared, route: &Route, facts: &Facts<'_>, d: &Decision) -> Action {
        shared.count(Counter::Decision(d.verdict));
        if d.would_block {
            shared.count(Counter::Event(Event::ShadowWouldBlock));
        }
        if d.confirmation_error.is_some() {
            shared.count(Counter::Event(Event::ConfirmationInvalid));
        }
        log(LogLevel::Info, &audit::decision_line(route, facts, d));
        let _ = abi::set_property(DECISION_PROPERTY, d.verdict.name().as_bytes());
        if let Some(reply) = d.reply(&shared.config, route, facts) {
            if d.verdict == Verdict::StaleToken {
                shared.count(Counter::Event(Event::TokenRejected));
            }
            let headers: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            match abi::send_local_response(reply.status, &headers, reply.body.as_bytes()) {
                Ok(()) => self.replied = true,
                Err(status) => log(
                    LogLevel::Error,
                    &format!("retry-guard: local reply failed: status {}", status.0),
                ),
            }
            return Action::Pause;
        }
        if d.strips_token() {
            if let Some(reason) = d.token_reason {
                let _ = abi::remove_header(MapType::RequestHeaders, "authorization");
                let _ = abi::set_header(
                    MapType::RequestHeaders,
                    TOKEN_MARK_HEADER,
                    &format!("stripped; reason={}", reason.name()),
                );
                shared.count(Counter::Event(Event::TokenStripped));
            }
        }
        Action::Continue
    }

    fn record(&mut self, status: u16, unchanged_state: bool) {
        let shared = self.shared.clone();
        let Some(tracked) = self.tracked.as_mut() else {
            return;
        };
        if tracked.recorded {
            return;
        }
        tracked.recorded = true;
        let Some(route) = shared.config.routes.get(self.route) else {
            return;
        };
        let flags = property_u64(b"response\0flags").unwrap_or(0);
        let response = ResponseFacts {
            status,
            flags,
            unchanged_state,
        };
        let now = now_seconds();
        match engine::record_with_ledger(
            &shared.ledger,
            &tracked.fingerprint,
            tracked.attempt,
            response,
            now,
        ) {
            Ok(Some(outcome)) => log(
                LogLevel::Info,
                &audit::outcome_line(
                    route,
                    &OutcomeRecord {
                        now,
                        request_id: tracked.request_id.as_deref(),
                        fingerprint: &tracked.fingerprint,
                        attempt: tracked.attempt,
                        outcome,
                        status,
                        response_flags: flags,
                    },
                ),
            ),
            Ok(None) => {}
            Err(e) => log(LogLevel::Warn, &format!("retry-guard: {e}")),
        }
    }
}

/// 128 random bits from WASI `random_get`; if the host cannot supply randomness, a digest of
/// the fingerprint, the clock and a per-VM counter (unique, though not unpredictable).
fn fresh_challenge(fp: &Fingerprint) -> impl FnMut() -> Challenge + '_ {
    move || {
        let mut c = [0u8; 16];
        if getrandom::getrandom(&mut c).is_ok() {
            return c;
        }
        log(
            LogLevel::Warn,
            "retry-guard: random_get failed; challenge derived from clock",
        );
        let nanos = abi::now_nanos().unwrap_or(0);
        let d = Sha256::new()
            .chain_update(fp.0)
            .chain_update(nanos.to_le_bytes())
            .finalize();
        c.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
        c
    }
}

/// The stream callbacks.
impl Stream {
    fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let shared = self.shared.clone();
        let mut blob: Option<Vec<u8>> = None;
        let (index, method, path) = {
            let mut fetcher = Fetcher {
                config: &shared.config,
                blob: &mut blob,
                bulk: false,
            };
            let mut facts = LazyFacts::new(|fact| fetcher.fetch(fact));
            let Some(index) = shared.config.match_route_lazy(&mut facts) else {
                return Action::Continue;
            };
            (index, facts.take(Fact::Method), facts.take(Fact::Path))
        };
        let Some(route) = shared.config.routes.get(index) else {
            return Action::Continue;
        };
        self.route = index;
        let blob = blob.unwrap_or_else(request_headers_blob);
        let pending = Stream::gather(
            &shared,
            route,
            method.unwrap_or_default(),
            path.unwrap_or_default(),
            blob,
        );
        if let Some(d) = engine::check_key(route, &pending.key) {
            // Enforce: answered 400. Shadow: that is this request's one decision; it goes on.
            return self.apply(&shared, route, &pending.early_facts(), &d);
        }
        let reads_body = route.class != RouteClass::ReadOnly && !end_of_stream;
        if reads_body
            && pending
                .declared_length
                .is_some_and(|n| n > shared.config.max_body_bytes as u64)
        {
            return self.body_too_large(&shared, pending);
        }
        if reads_body {
            // Withhold the headers until the body is complete and the decision made.
            shared.hold(self.id, pending.now);
            self.pending = Some(pending);
            Action::Pause
        } else {
            self.pending = Some(pending);
            self.finish(&shared)
        }
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let shared = self.shared.clone();
        shared.release(self.id);
        if self.replied {
            return Action::Pause;
        }
        let Some(pending) = self.pending.as_mut() else {
            return Action::Continue;
        };
        if body_size > shared.config.max_body_bytes {
            let pending = self.pending.take();
            return match pending {
                Some(p) => self.body_too_large(&shared, p),
                None => Action::Continue,
            };
        }
        Stream::hash_body(pending, body_size);
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish(&shared)
    }

    fn on_request_trailers(&mut self) -> Action {
        let shared = self.shared.clone();
        shared.release(self.id);
        if self.replied {
            return Action::Pause;
        }
        if self.pending.is_none() {
            return Action::Continue;
        }
        self.finish(&shared)
    }

    fn on_response_headers(&mut self) -> Action {
        if self.replied || self.tracked.is_none() {
            return Action::Continue;
        }
        let status = response_status();
        // Only a 5xx can be `unchanged`: skip the header lookup otherwise.
        let unchanged = (500..600).contains(&status)
            && abi::header(
                MapType::ResponseHeaders,
                &self.shared.config.unchanged_state_header,
            )
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"unchanged"));
        self.record(status, unchanged);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.shared.release(self.id);
        if self.replied || self.tracked.as_ref().is_none_or(|t| t.recorded) {
            return;
        }
        // No response headers passed this filter: the stream ended without a response.
        let status = property_u64(b"response\0code")
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0);
        self.record(status, false);
    }
}

impl Stream {
    fn body_too_large(&mut self, shared: &Shared, pending: Pending) -> Action {
        let Some(route) = shared.config.routes.get(self.route) else {
            return Action::Continue;
        };
        let d = engine::too_large(route);
        self.apply(shared, route, &pending.early_facts(), &d)
    }
}

fn response_status() -> u16 {
    abi::header(MapType::ResponseHeaders, ":status")
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

// ---- Context dispatch (from the callbacks `abi` exports) ---------------------------------

/// The contexts of one VM: its root contexts (one per plugin sharing the VM, with the
/// configuration once accepted) and the state of the streams that need one. A stream gets
/// state only when its request headers match a route that tracks it (or that must see its
/// body), so a request no route matches allocates nothing that outlives its callback.
struct Contexts {
    roots: Vec<(u32, Option<Rc<Shared>>)>,
    /// The root of each new stream whose root is not the first one (usually there is one
    /// root and this stays empty: no allocation per stream).
    parents: BTreeMap<u32, u32>,
    streams: BTreeMap<u32, Rc<RefCell<Stream>>>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = const {
        RefCell::new(Contexts {
            roots: Vec::new(),
            parents: BTreeMap::new(),
            streams: BTreeMap::new(),
        })
    };
}

/// Runs `f` on the contexts; `None` if they are borrowed already (a host call re-entered the
/// module, which proxy-wasm hosts do not do while a callback holds them).
fn with_contexts<R>(f: impl FnOnce(&mut Contexts) -> R) -> Option<R> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

impl Contexts {
    /// The accepted configuration of root context `root`.
    fn config_of(&self, root: u32) -> Option<Rc<Shared>> {
        self.roots
            .iter()
            .find(|(id, _)| *id == root)
            .and_then(|(_, s)| s.clone())
    }
}

/// Runs a stream callback on the stream's state; `otherwise` for a stream without state, or
/// one whose state is in use by an outer callback (a re-entrant callback, e.g. response
/// headers of a local reply sent synchronously).
fn on_stream(id: u32, otherwise: Action, f: impl FnOnce(&mut Stream) -> Action) -> Action {
    let Some(stream) = with_contexts(|c| c.streams.get(&id).cloned()).flatten() else {
        return otherwise;
    };
    let Ok(mut s) = stream.try_borrow_mut() else {
        return otherwise;
    };
    f(&mut s)
}

pub(crate) fn on_context_create(id: u32, parent: u32) {
    if parent == 0 {
        with_contexts(|c| {
            if !c.roots.iter().any(|(r, _)| *r == id) {
                c.roots.push((id, None));
            }
        });
        return;
    }
    with_contexts(|c| {
        if c.roots.first().is_none_or(|(first, _)| *first != parent) {
            c.parents.insert(id, parent);
        }
    });
}

pub(crate) fn on_configure(root: u32) -> bool {
    let shared = configure();
    let accepted = shared.is_some();
    with_contexts(|c| match c.roots.iter_mut().find(|(r, _)| *r == root) {
        Some((_, s)) => *s = shared,
        None => c.roots.push((root, shared)),
    });
    accepted
}

pub(crate) fn on_tick(root: u32) {
    if let Some(shared) = with_contexts(|c| c.config_of(root)).flatten() {
        shared.check_held(now_seconds());
        shared.record_memory();
    }
}

pub(crate) fn on_request_headers(id: u32, end_of_stream: bool) -> Action {
    // The stream's root: the one recorded at creation, else the first.
    let shared = with_contexts(|c| {
        let parent = match c.parents.remove(&id) {
            Some(p) => p,
            None => c.roots.first()?.0,
        };
        c.config_of(parent)
    })
    .flatten();
    // Under a root without an accepted configuration every callback continues.
    let Some(shared) = shared else {
        return Action::Continue;
    };
    let mut stream = Stream::new(id, shared);
    let action = stream.on_request_headers(end_of_stream);
    // Keep state only if something is left to do (which only a matched route leaves): the
    // stream waits for its body, will record its outcome, or was answered locally.
    if stream.pending.is_some() || stream.tracked.is_some() || stream.replied {
        let stream = Rc::new(RefCell::new(stream));
        with_contexts(|c| c.streams.insert(id, stream));
    }
    action
}

pub(crate) fn on_request_body(id: u32, body_size: usize, end_of_stream: bool) -> Action {
    on_stream(id, Action::Continue, |s| {
        s.on_request_body(body_size, end_of_stream)
    })
}

pub(crate) fn on_request_trailers(id: u32) -> Action {
    on_stream(id, Action::Continue, Stream::on_request_trailers)
}

pub(crate) fn on_response_headers(id: u32) -> Action {
    on_stream(id, Action::Continue, Stream::on_response_headers)
}

pub(crate) fn on_log(id: u32) {
    on_stream(id, Action::Continue, |s| {
        s.on_log();
        Action::Continue
    });
}

pub(crate) fn on_delete(id: u32) {
    let removed = with_contexts(|c| {
        let stream = c.streams.remove(&id);
        if stream.is_none() && c.parents.remove(&id).is_none() {
            c.roots.retain(|(r, _)| *r != id);
        }
        stream
    })
    .flatten();
    if let Some(stream) = removed {
        if let Ok(s) = stream.try_borrow() {
            s.shared.release(id);
        }
    }
}
