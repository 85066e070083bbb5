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
//! the last body chunk, or trailers) and the stream's facts wait in [`Stream`] until then. The
//! cluster ledger (etcd through `dispatch_http_call`) fits the same shape: that callback starts
//! the ledger call and returns [`Action::Pause`], and the call's response finishes the
//! decision and resumes the stream.
//!
//! [`Stream`] (here) is one stream's state and callbacks; [`Plugin`] (`plugin.rs`) is what a
//! VM's streams share; `request.rs` reads what route matching needs and gathers a matched
//! request's facts and body digest; `remote.rs` decides and records against the cluster
//! ledger, whose answers come later.

mod plugin;
mod remote;
mod request;

use sha2::{Digest, Sha256};

use crate::audit::{self, Ending};
use crate::canonical::{canonical_path, BodyForm};
use crate::config::{AuditUntracked, Mode, Route};
use crate::confirm::Challenge;
use crate::engine::{self, Decision, Facts, TokenAction, Verdict};
use crate::fingerprint::{BodyDigester, Fingerprint, NaturalKey};
use crate::host::{Action, LogLevel, StreamHost};
use crate::ledger::Ledger;
use crate::matcher::{Fact, LazyFacts};
use crate::metrics::{Counter, Event, RouteCounter};
use crate::policy::{ResponseFacts, RouteClass};

pub use plugin::{Plugin, HELD_WARN_EVERY_SECONDS, HELD_WARN_SECONDS};
use remote::{RemoteAttempt, Waiting};
use request::{now_millis, Fetcher, Pending};

/// The property the decision is written to; Envoy keeps it as filter state, readable as
/// `%FILTER_STATE(wasm.retry_guard.decision:PLAIN)%`.
pub const DECISION_PROPERTY: &str = "retry_guard.decision";

/// The request header that marks a request whose stale bearer token was stripped
/// (`stripped; reason=<reason>`).
pub const TOKEN_MARK_HEADER: &str = "retry-guard-token";

/// The request header Envoy's router reads for a request's retry budget. Present when the
/// router reads the request, it takes precedence over the route's `num_retries` (Envoy's
/// `RetryStateImpl`), and the router removes it before forwarding. Set to `0` on every request
/// the filter lets through on a tracked route in enforce mode, so a route's `retry_policy` (or
/// an Istio VirtualService's `retries`) cannot send it upstream a second time behind the
/// filter. The connection manager strips `x-envoy-*` headers a client sends from outside
/// before any filter runs, and the filter replaces the value, so a client cannot raise it.
pub const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";

/// Envoy encodes integer properties as 8 bytes little-endian.
fn property_u64(host: &impl StreamHost, path: &[u8]) -> Option<u64> {
    let bytes = host.property(path)?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// The response's `:status` (0 if absent or not a number).
fn response_status(host: &impl StreamHost) -> u16 {
    host.response_header(":status")
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// The attempt whose outcome this stream records.
struct Tracked {
    fingerprint: Fingerprint,
    attempt: u32,
    /// When the attempt was let through (its entry's `last_attempt_ms`): with `attempt`, what
    /// tells this attempt's entry from a later one's after the window restarted the count.
    started: u64,
    request_id: Option<String>,
    /// The response recorded so far (status, unchanged-state header), once it is.
    recorded: Option<(u16, bool)>,
    /// The attempt as written to the cluster ledger (`None` on shared data).
    remote: Option<RemoteAttempt>,
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
    /// A decision waiting for the cluster ledger.
    waiting: Option<Box<Waiting>>,
    /// The request's audit line, written when the stream ends.
    audit: Option<audit::Record>,
    /// What the audit line will say of the stream's end, gathered as it goes.
    ending: Ending,
    /// When the decided request's headers arrived, Unix milliseconds.
    started_ms: u64,
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
            waiting: None,
            audit: None,
            ending: Ending::default(),
            started_ms: 0,
        }
    }

    /// Does the stream have anything left to do after its request headers (wait for its body,
    /// record its outcome, stay answered, or write its audit line)? Only a request on a
    /// matched route does; a stream without, its state can be dropped at once.
    pub fn needs_state(&self) -> bool {
        self.pending.is_some()
            || self.tracked.is_some()
            || self.replied
            || self.waiting.is_some()
            || self.audit.is_some()
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
            let mut fetcher = Fetcher::new(host, config, &mut blob);
            let mut facts = LazyFacts::new(|fact| fetcher.fetch(fact));
            let Some(index) = config.match_route_lazy(&mut facts) else {
                return Action::Continue;
            };
            (index, facts.take(Fact::Method), facts.take_canonical_path())
        };
        let Some(route) = config.routes.get(index) else {
            return Action::Continue;
        };
        self.route = index;
        let blob = blob.unwrap_or_else(|| host.request_headers());
        let path = path.unwrap_or_else(|| canonical_path(""));
        let pending = Pending::gather(plugin, host, route, method.unwrap_or_default(), path, blob);
        if let Some(d) = engine::check_request(route, &pending.early()) {
            // Enforce: answered 400 or 401. Shadow: that is this request's one decision; it
            // goes on.
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
            plugin.hold(self.id, pending.now_ms / 1000);
            self.pending = Some(pending);
            Action::Pause
        } else {
            self.pending = Some(pending);
            self.finish(plugin, host)
        }
    }

    /// Request body (`body_size` is the cumulative size buffered): take in what is new, answer
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
        pending.read_body(host, body_size);
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
        if self.replied || self.tracked.as_ref().is_none_or(|t| t.recorded.is_some()) {
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

    /// The stream ended: record the outcome of an attempt that got no response headers, or
    /// mark one whose response did not reach the client `undelivered`; then write the
    /// request's audit line.
    #[inline]
    pub fn on_log<L: Ledger, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H) {
        plugin.release(self.id);
        self.abandon(plugin);
        if !self.replied {
            match self.tracked.as_ref().map(|t| t.recorded) {
                None => {}
                Some(None) => {
                    // No response headers passed this filter: the stream ended without a
                    // response.
                    let status = property_u64(host, b"response\0code")
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(0);
                    self.record(plugin, host, status, false);
                }
                Some(Some((status, unchanged))) => {
                    // The response headers passed; did the whole response reach the client?
                    let flags = property_u64(host, b"response\0flags").unwrap_or(0);
                    self.ending.response_flags = Some(flags);
                    if flags & crate::policy::flags::DOWNSTREAM_GONE != 0 {
                        self.record(plugin, host, status, unchanged);
                    }
                }
            }
        }
        self.write_audit(plugin, host, true);
    }
}

impl Stream {
    /// The stream's state is dropped (the host deleted its context): a decision still waiting
    /// for the cluster ledger becomes the plugin's, and an audit line not written yet is
    /// written with what is known ([`Stream::on_log`] does both when the host calls it first,
    /// as Envoy does).
    pub fn on_delete<L, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H) {
        self.abandon(plugin);
        self.write_audit(plugin, host, false);
    }

    /// Writes the request's audit line, if it has one not written yet, with how the stream
    /// ended: what is not known yet is read from the stream's properties when `read` (at
    /// `on_log`; a deleted stream's properties are gone). On the cluster ledger, an outcome
    /// still on its way to etcd takes the line with it: it is written once the outcome is in
    /// etcd, so the line says what etcd holds.
    fn write_audit<L, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H, read: bool) {
        let Some(record) = self.audit.take() else {
            return;
        };
        let mut end = self.ending;
        if read {
            if end.status.is_none() {
                end.status = property_u64(host, b"response\0code")
                    .and_then(|c| u16::try_from(c).ok())
                    .filter(|&c| c != 0);
            }
            // A local reply's flags say only that it was one.
            if end.response_flags.is_none() && !self.replied {
                end.response_flags = property_u64(host, b"response\0flags");
            }
        }
        end.duration_ms = host
            .now_nanos()
            .map(|n| (n / 1_000_000).saturating_sub(self.started_ms));
        let line = record.line(&end);
        let line = match self.tracked.as_ref().and_then(|t| t.remote.as_ref()) {
            Some(_) => match plugin.give_line(self.id, line) {
                Ok(()) => return,
                Err(line) => line,
            },
            None => line,
        };
        host.log(LogLevel::Info, &line);
    }

    /// Decides with the complete body digest and applies the decision.
    fn finish<L: Ledger, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H) -> Action {
        let Some(mut pending) = self.pending.take() else {
            return Action::Continue;
        };
        let Some(route) = plugin.config.routes.get(self.route) else {
            return Action::Continue;
        };
        if plugin.remote.is_none() {
            // Before the fingerprint: a token that turns out stale names no one.
            pending.sight_locally(plugin, host);
        }
        let body_digest =
            std::mem::replace(&mut pending.body, BodyDigester::new(BodyForm::Raw)).finish();
        let fingerprint = Fingerprint::compute(
            &route.name,
            pending.principal_text(),
            pending.key.key(),
            &NaturalKey {
                method: &pending.method,
                path: &pending.path,
                query: &pending.query,
                body: &body_digest,
            },
        );
        pending.note_key(plugin, host, route, &fingerprint, &body_digest);
        if plugin.remote.is_some() && (route.needs_ledger() || pending.sighting.is_some()) {
            return self.decide_remote(plugin, host, pending, fingerprint, body_digest);
        }
        let facts = Facts {
            now_ms: pending.now_ms,
            request_id: pending.request_id.as_deref(),
            principal: pending.principal_text(),
            key: &pending.key,
            fingerprint: Some(fingerprint),
            body_digest,
            stale: pending.stale,
            confirmation: pending.confirmation.as_deref(),
            credential_holder: pending.holder.as_deref(),
            credential_shared_with: pending.shared_with.as_deref(),
            client_attempt: pending.client_attempt,
            key_regenerated_ms: pending.key_regenerated_ms,
        };
        let mut challenge = fresh_challenge(host, &fingerprint);
        let decided = if pending.ledger_full {
            // The token's sighting was refused (already counted): nothing is written.
            Ok(engine::Settled {
                decision: engine::ledger_full(route, &facts),
                evicted: false,
                refused: false,
            })
        } else {
            engine::decide_with_ledger(
                &plugin.ledger,
                &plugin.config,
                route,
                &facts,
                &mut challenge,
            )
        };
        let settled = match decided {
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
        if settled.refused {
            host.count(Counter::Event(Event::LedgerFull));
        }
        let decision = settled.decision;
        let action = self.apply(plugin, host, route, &facts, &decision);
        if let Some(attempt) = decision.new_attempt().filter(|_| !self.replied) {
            if decision.mode == Mode::Enforce {
                host.set_request_header(MAX_RETRIES_HEADER, "0");
            }
            self.tracked = Some(Tracked {
                fingerprint,
                attempt,
                started: decision
                    .write
                    .as_ref()
                    .map_or(facts.now_ms, |w| w.last_attempt_ms),
                request_id: pending.request_id.clone(),
                recorded: None,
                remote: None,
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
        if facts.credential_shared_with.is_some() {
            host.count(Counter::Event(Event::CredentialShared));
        }
        // The evidence that tells retries from new calls on this route (shadow mode too).
        if let Some(ms) = d.since_previous_ms {
            host.count(Counter::Route(self.route, RouteCounter::gap(ms)));
        }
        if facts.key_regenerated_ms.is_some() {
            host.count(Counter::Route(self.route, RouteCounter::KeyRegenerated));
        }
        // On an untracked route a plain allow is counted and nothing more (`audit.untracked`):
        // a line only when something happened there.
        let quiet = plugin.config.audit_untracked == AuditUntracked::Events
            && !route.needs_ledger()
            && d.verdict == Verdict::Allow
            && d.token_action == TokenAction::None
            && !d.would_block
            && facts.client_attempt.is_none_or(|n| n <= 1);
        if !quiet {
            // Written when the stream ends, with its outcome.
            self.audit = Some(audit::record(route, facts, d));
            self.started_ms = facts.now_ms;
            host.set_property(DECISION_PROPERTY, d.verdict.name().as_bytes());
        }
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
                Ok(()) => {
                    self.replied = true;
                    self.ending.status = Some(reply.status);
                }
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
        // A second record is the stream's end finding the client gone (`undelivered`).
        let first = tracked.recorded.is_none();
        tracked.recorded = Some((status, unchanged_state));
        let Some(route) = plugin.config.routes.get(self.route) else {
            return;
        };
        let flags = property_u64(host, b"response\0flags").unwrap_or(0);
        let upstream_attempts = property_u64(host, b"upstream\0request_attempt_count");
        self.ending.status = Some(status).filter(|&s| s != 0);
        self.ending.response_flags = Some(flags);
        if first {
            self.ending.router_attempts = upstream_attempts;
        }
        if first && upstream_attempts.is_some_and(|n| n > 1) {
            host.count(Counter::Event(Event::RouterRetried));
            host.log(
                LogLevel::Warn,
                &format!(
                    "retry-guard: route {}: Envoy's router sent this request upstream {} times \
                     (request_id {}); the route's retry_policy (or VirtualService retries) \
                     re-sends it behind the filter: retry only on connect-failure,refused-stream",
                    route.name,
                    upstream_attempts.unwrap_or(0),
                    tracked.request_id.as_deref().unwrap_or("-"),
                ),
            );
        }
        let response = ResponseFacts {
            status,
            flags,
            unchanged_state,
        };
        if let Some(attempt) = &tracked.remote {
            if let Some(outcome) = Stream::record_remote(
                plugin, host, self.id, self.route, tracked, attempt, response,
            ) {
                self.ending.outcome = Some(outcome);
            }
            return;
        }
        match engine::record_with_ledger(
            &plugin.ledger,
            &tracked.fingerprint,
            tracked.attempt,
            tracked.started,
            response,
            now_millis(host),
        ) {
            Ok(Some(outcome)) => self.ending.outcome = Some(outcome),
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
pub(super) fn fresh_challenge<'a, H: StreamHost>(
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
