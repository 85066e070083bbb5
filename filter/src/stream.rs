//! The stream state machine: what the filter does in each callback of an HTTP stream — match
//! the route, gather the request facts, hold the headers until the body is complete, decide
//! through the ledger, answer locally or let the request go on (stripping a stale token),
//! record the attempt's outcome — and which state a stream keeps between callbacks.
//!
//! It talks to the host only through [`StreamHost`] and to the ledger only through
//! [`Ledger`], both type parameters, so it compiles natively and its tests run with a fake
//! host; the wasm shell (`shell`) passes its ABI-backed host and the shared-data ledger. No
//! policy lives here: decisions come from [`crate::engine`].
//!
//! The decision is made in the callback that completes the request (headers without a body,
//! the last body chunk, or trailers) and the stream's facts wait in [`Stream`] until then. An
//! asynchronous ledger (etcd through `dispatch_http_call`) fits the same shape: that callback
//! would start the ledger call and return [`Action::Pause`], and the call's response would
//! finish the decision and resume the stream.

use std::cell::{Cell, RefCell};

use sha2::{Digest, Sha256};

use crate::audit::{self, OutcomeRecord};
use crate::config::{Config, PrincipalSource, Route};
use crate::confirm::Challenge;
use crate::engine::{self, Decision, Facts, Verdict};
use crate::fingerprint::{parse_idempotency_key, Fingerprint, KeyCheck};
use crate::headers::HeaderPairs;
use crate::host::{Action, LogLevel, StreamHost};
use crate::jwt::{Claims, Credential};
use crate::ledger::Ledger;
use crate::matcher::{Fact, LazyFacts};
use crate::metrics::{Counter, Event};
use crate::policy::{ResponseFacts, RouteClass};
use crate::principal::{self, PrincipalInputs};
use crate::token::{BearerToken, StaleReason, TokenRules};

/// The property the decision is written to; Envoy keeps it as filter state, readable as
/// `%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%`.
pub const DECISION_PROPERTY: &str = "retry_guard.decision";

/// The request header that marks a request whose stale bearer token was stripped
/// (`stripped; reason=<reason>`).
pub const TOKEN_MARK_HEADER: &str = "retry-guard-token";

/// How long a stream may wait for its first body callback after the filter held its headers
/// before the VM logs the likely cause (a missing `allow_on_headers_stop_iteration`).
pub const HELD_WARN_SECONDS: u64 = 10;
/// At most one such log line per VM per this many seconds.
pub const HELD_WARN_EVERY_SECONDS: u64 = 60;

/// One configured plugin as its streams see it: the configuration, the ledger, and the streams
/// whose headers are held waiting for their body. One per root context of a VM, shared by the
/// VM's streams.
pub struct Plugin<L> {
    /// The accepted configuration.
    pub config: Config,
    /// The ledger decisions are made against.
    pub ledger: L,
    /// Streams whose headers are held waiting for the body: (context id, since).
    held: RefCell<Vec<(u32, u64)>>,
    /// When the held-stream warning was last logged.
    warned_at: Cell<u64>,
}

impl<L> Plugin<L> {
    /// A plugin with no stream held.
    pub fn new(config: Config, ledger: L) -> Plugin<L> {
        Plugin {
            config,
            ledger,
            held: RefCell::new(Vec::new()),
            warned_at: Cell::new(0),
        }
    }

    fn hold(&self, id: u32, now: u64) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.push((id, now));
        }
    }

    /// Stream `id` no longer waits for its body (it got a body callback, or it ended).
    pub fn release(&self, id: u32) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.retain(|(h, _)| *h != id);
        }
    }

    /// How many streams are held at the moment.
    pub fn held_count(&self) -> usize {
        self.held.try_borrow().map_or(0, |held| held.len())
    }

    /// Envoy without `allow_on_headers_stop_iteration: true` never delivers the body after a
    /// pause in the headers callback; the request would hang silently. The critical log line
    /// that says so, when a stream has been held for [`HELD_WARN_SECONDS`] at `now` and the
    /// last such line is [`HELD_WARN_EVERY_SECONDS`] old (then counts as logged).
    pub fn held_warning(&self, now: u64) -> Option<String> {
        let stuck = match self.held.try_borrow() {
            Ok(held) => held
                .iter()
                .filter(|(_, since)| now.saturating_sub(*since) >= HELD_WARN_SECONDS)
                .count(),
            Err(_) => 0,
        };
        if stuck == 0 || now.saturating_sub(self.warned_at.get()) < HELD_WARN_EVERY_SECONDS {
            return None;
        }
        self.warned_at.set(now);
        Some(format!(
            "retry-guard: {stuck} request(s) held for their body over {HELD_WARN_SECONDS} s without a body callback; \
             set `allow_on_headers_stop_iteration: true` in the wasm filter's config (envoy.extensions.wasm.v3.PluginConfig), \
             otherwise Envoy never delivers the body of guarded requests"
        ))
    }
}

fn now_seconds(host: &impl StreamHost) -> u64 {
    host.now_nanos().map_or(0, |n| n / 1_000_000_000)
}

fn property_text(host: &impl StreamHost, path: &[u8]) -> Option<String> {
    host.property(path).and_then(|b| String::from_utf8(b).ok())
}

/// Envoy encodes integer properties as 8 bytes little-endian.
fn property_u64(host: &impl StreamHost, path: &[u8]) -> Option<u64> {
    let bytes = host.property(path)?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

fn response_status(host: &impl StreamHost) -> u16 {
    host.response_header(":status")
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Reads the facts routes match on, for [`LazyFacts`]: the route name from the
/// `xds.route_name` property; headers one by one (no header-map copy for a request no route
/// can match) until the route name is one a guarded route names, and from then on from one
/// copy of all request headers, which the matched request needs anyway.
struct Fetcher<'a, H> {
    host: &'a H,
    config: &'a Config,
    blob: &'a mut Option<Vec<u8>>,
    bulk: bool,
}

impl<H: StreamHost> Fetcher<'_, H> {
    #[inline]
    fn fetch(&mut self, fact: Fact) -> Option<String> {
        let name = match fact {
            Fact::RouteName => {
                let value = property_text(self.host, b"xds\0route_name");
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
            return self
                .host
                .request_header(name)
                .and_then(|b| String::from_utf8(b).ok());
        }
        let host = self.host;
        let blob = self.blob.get_or_insert_with(|| host.request_headers());
        let value = HeaderPairs::lookup(blob, name)?;
        String::from_utf8(value.to_vec()).ok()
    }
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
    stale: Option<StaleReason>,
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

/// The state of one HTTP stream between its callbacks. Each callback method takes the
/// stream's [`Plugin`] and its host, does that callback's work and returns what the host is to
/// do next.
pub struct Stream {
    id: u32,
    route: usize,
    pending: Option<Pending>,
    tracked: Option<Tracked>,
    replied: bool,
}

/// The stream callbacks. Each has one call site, in the shell's dispatch, and is marked
/// `#[inline]` so that it is compiled into that callback as it was before the state machine
/// left the shell (fewer guest instructions per request, a smaller module).
impl Stream {
    /// A stream with context id `id`, before its request headers.
    pub fn new(id: u32) -> Stream {
        Stream {
            id,
            route: 0,
            pending: None,
            tracked: None,
            replied: false,
        }
    }

    /// Does the stream have anything left to do after its request headers (wait for its body,
    /// record its outcome, or stay answered)? Only a request on a matched route does; a stream
    /// without, its state can be dropped at once.
    pub fn needs_state(&self) -> bool {
        self.pending.is_some() || self.tracked.is_some() || self.replied
    }

    /// Request headers: match the route (reading no more than matching needs), gather the
    /// facts of a matched request, answer a bad key or a declared over-size body, and either
    /// hold the headers for the body or decide at once.
    #[inline]
    pub fn on_request_headers<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        end_of_stream: bool,
    ) -> Action {
        let config = &plugin.config;
        let mut blob: Option<Vec<u8>> = None;
        let (index, method, path) = {
            let mut fetcher = Fetcher {
                host,
                config,
                blob: &mut blob,
                bulk: false,
            };
            let mut facts = LazyFacts::new(|fact| fetcher.fetch(fact));
            let Some(index) = config.match_route_lazy(&mut facts) else {
                return Action::Continue;
            };
            (index, facts.take(Fact::Method), facts.take(Fact::Path))
        };
        let Some(route) = config.routes.get(index) else {
            return Action::Continue;
        };
        self.route = index;
        let blob = blob.unwrap_or_else(|| host.request_headers());
        let pending = Stream::gather(
            plugin,
            host,
            route,
            method.unwrap_or_default(),
            path.unwrap_or_default(),
            blob,
        );
        if let Some(d) = engine::check_key(route, &pending.key) {
            // Enforce: answered 400. Shadow: that is this request's one decision; it goes on.
            return self.apply(plugin, host, route, &pending.early_facts(), &d);
        }
        let reads_body = route.class != RouteClass::ReadOnly && !end_of_stream;
        if reads_body
            && pending
                .declared_length
                .is_some_and(|n| n > config.max_body_bytes as u64)
        {
            return self.body_too_large(plugin, host, pending);
        }
        if reads_body {
            // Withhold the headers until the body is complete and the decision made.
            plugin.hold(self.id, pending.now);
            self.pending = Some(pending);
            Action::Pause
        } else {
            self.pending = Some(pending);
            self.finish(plugin, host)
        }
    }

    /// Request body (`body_size` is the cumulative size buffered): hash what is new, answer
    /// 413 past `max_body_bytes`, decide at the end of the stream.
    #[inline]
    pub fn on_request_body<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        plugin.release(self.id);
        if self.replied {
            return Action::Pause;
        }
        let Some(pending) = self.pending.as_mut() else {
            return Action::Continue;
        };
        if body_size > plugin.config.max_body_bytes {
            let pending = self.pending.take();
            return match pending {
                Some(p) => self.body_too_large(plugin, host, p),
                None => Action::Continue,
            };
        }
        Stream::hash_body(host, pending, body_size);
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish(plugin, host)
    }

    /// Request trailers: the body is complete; decide.
    #[inline]
    pub fn on_request_trailers<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
    ) -> Action {
        plugin.release(self.id);
        if self.replied {
            return Action::Pause;
        }
        if self.pending.is_none() {
            return Action::Continue;
        }
        self.finish(plugin, host)
    }

    /// Response headers: record the outcome of the attempt this stream let through.
    #[inline]
    pub fn on_response_headers<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
    ) -> Action {
        if self.replied || self.tracked.is_none() {
            return Action::Continue;
        }
        let status = response_status(host);
        // Only a 5xx can be `unchanged`: skip the header lookup otherwise.
        let unchanged = (500..600).contains(&status)
            && host
                .response_header(&plugin.config.unchanged_state_header)
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"unchanged"));
        self.record(plugin, host, status, unchanged);
        Action::Continue
    }

    /// The stream ended: record the outcome of an attempt that got no response headers.
    #[inline]
    pub fn on_log<L: Ledger, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H) {
        plugin.release(self.id);
        if self.replied || self.tracked.as_ref().is_none_or(|t| t.recorded) {
            return;
        }
        // No response headers passed this filter: the stream ended without a response.
        let status = property_u64(host, b"response\0code")
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0);
        self.record(plugin, host, status, false);
    }
}

impl Stream {
    fn gather<L: Ledger, H: StreamHost>(
        plugin: &Plugin<L>,
        host: &H,
        route: &Route,
        method: String,
        path: String,
        blob: Vec<u8>,
    ) -> Pending {
        let config = &plugin.config;
        let now = now_seconds(host);
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
            property_text(host, b"connection\0uri_san_peer_certificate")
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
                    &plugin.ledger,
                    c.secret(),
                    now,
                    config.window_seconds,
                ) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        host.log(
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
            host.remove_request_header(&config.confirmation_header);
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
    fn hash_body(host: &impl StreamHost, pending: &mut Pending, body_size: usize) {
        if body_size <= pending.body_seen {
            return;
        }
        let len = body_size - pending.body_seen;
        if let Some(chunk) = host.request_body(pending.body_seen, len) {
            pending.hasher.update(&chunk);
            pending.body_seen += chunk.len();
        }
    }

    /// Decides with the complete body digest and applies the decision.
    fn finish<L: Ledger, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H) -> Action {
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        let Some(route) = plugin.config.routes.get(self.route) else {
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
        let mut challenge = fresh_challenge(host, &fingerprint);
        let settled = match engine::decide_with_ledger(
            &plugin.ledger,
            &plugin.config,
            route,
            &facts,
            &mut challenge,
        ) {
            Ok(s) => s,
            Err(e) => {
                // The shared-data store failed: fail open and say so (never seen in practice).
                host.log(
                    LogLevel::Error,
                    &format!("retry-guard: ledger unavailable, request passes unguarded: {e}"),
                );
                return Action::Continue;
            }
        };
        if settled.evicted {
            host.count(Counter::Event(Event::LedgerEvicted));
        }
        let decision = settled.decision;
        let action = self.apply(plugin, host, route, &facts, &decision);
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
    fn apply<L, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        route: &Route,
        facts: &Facts<'_>,
        d: &Decision,
    ) -> Action {
        host.count(Counter::Decision(d.verdict));
        if d.would_block {
            host.count(Counter::Event(Event::ShadowWouldBlock));
        }
        if d.confirmation_error.is_some() {
            host.count(Counter::Event(Event::ConfirmationInvalid));
        }
        host.log(LogLevel::Info, &audit::decision_line(route, facts, d));
        host.set_property(DECISION_PROPERTY, d.verdict.name().as_bytes());
        if let Some(reply) = d.reply(&plugin.config, route, facts) {
            if d.verdict == Verdict::StaleToken {
                host.count(Counter::Event(Event::TokenRejected));
            }
            let headers: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .collect();
            match host.send_local_reply(reply.status, &headers, reply.body.as_bytes()) {
                Ok(()) => self.replied = true,
                Err(status) => host.log(
                    LogLevel::Error,
                    &format!("retry-guard: local reply failed: status {}", status.0),
                ),
            }
            return Action::Pause;
        }
        if d.strips_token() {
            if let Some(reason) = d.token_reason {
                host.remove_request_header("authorization");
                host.set_request_header(
                    TOKEN_MARK_HEADER,
                    &format!("stripped; reason={}", reason.name()),
                );
                host.count(Counter::Event(Event::TokenStripped));
            }
        }
        Action::Continue
    }

    fn record<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        status: u16,
        unchanged_state: bool,
    ) {
        let Some(tracked) = self.tracked.as_mut() else {
            return;
        };
        if tracked.recorded {
            return;
        }
        tracked.recorded = true;
        let Some(route) = plugin.config.routes.get(self.route) else {
            return;
        };
        let flags = property_u64(host, b"response\0flags").unwrap_or(0);
        let response = ResponseFacts {
            status,
            flags,
            unchanged_state,
        };
        let now = now_seconds(host);
        match engine::record_with_ledger(
            &plugin.ledger,
            &tracked.fingerprint,
            tracked.attempt,
            response,
            now,
        ) {
            Ok(Some(outcome)) => host.log(
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
            Err(e) => host.log(LogLevel::Warn, &format!("retry-guard: {e}")),
        }
    }

    fn body_too_large<L, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        pending: Pending,
    ) -> Action {
        let Some(route) = plugin.config.routes.get(self.route) else {
            return Action::Continue;
        };
        let d = engine::too_large(route);
        self.apply(plugin, host, route, &pending.early_facts(), &d)
    }
}

/// 128 random bits from the host; if it cannot supply randomness, a digest of the fingerprint
/// and the clock (unique, though not unpredictable).
fn fresh_challenge<'a, H: StreamHost>(
    host: &'a H,
    fp: &'a Fingerprint,
) -> impl FnMut() -> Challenge + 'a {
    move || {
        let mut c = [0u8; 16];
        if host.random_bytes(&mut c) {
            return c;
        }
        host.log(
            LogLevel::Warn,
            "retry-guard: random_get failed; challenge derived from clock",
        );
        let nanos = host.now_nanos().unwrap_or(0);
        let d = Sha256::new()
            .chain_update(fp.0)
            .chain_update(nanos.to_le_bytes())
            .finalize();
        c.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
        c
    }
}

#[cfg(test)]
mod tests;
