//! The decision engine: pure functions of (configuration, request facts, ledger entry, now)
//! that return a [`Decision`]. The stream state machine ([`crate::stream`]) gathers the facts,
//! calls these (the `*_with_ledger` ones load and commit the entry) and applies the result;
//! nothing here touches the host.

use crate::b64;
use crate::config::{
    Anonymous, Config, Mode, OnUnavailable, Route, SharedCredential, StaleTokenAction,
};
use crate::confirm::{self, Challenge, ChallengeState, ConfirmationError};
use crate::fingerprint::{BodyDigest, Fingerprint, KeyCheck};
use crate::json::push_u64;
use crate::key;
use crate::ledger::{Commit, Entry, Ledger, LedgerError, Record};
use crate::policy::{classify, Outcome, Policy, ResponseFacts};
use crate::principal::{Ambiguous, ANONYMOUS};
use crate::problem::{LocalReply, ProblemType};
use crate::token::StaleReason;

named_enum! {
    /// The decision on one guarded request.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Verdict {
        /// Continue to the upstream.
        Allow => "allow",
        /// 428: a human must confirm.
        Confirm => "confirm",
        /// A valid confirmation came; continue as a new attempt.
        Confirmed => "confirmed",
        /// 409: the earlier attempt is in flight.
        Conflict => "conflict",
        /// 403: do not retry.
        Deny => "deny",
        /// 422: same key, different body.
        Mismatch => "mismatch",
        /// The request cannot be guarded as sent: 400 (idempotency key missing, invalid or
        /// repeated; an encoded slash in the path; a caller named twice) or 401 (an anonymous
        /// caller where the route rejects them). [`Decision::problem`] says which.
        BadRequest => "bad_request",
        /// 413: body over `max_body_bytes`.
        TooLarge => "too_large",
        /// 401: stale token with `stale_token_action: reject`.
        StaleToken => "stale_token",
        /// 503: the ledger could not answer in time and the route fails closed.
        Unavailable => "ledger_unavailable",
        /// 403: the bearer credential was presented by another workload identity first, and
        /// the route sets `shared_credential: deny`.
        CredentialShared => "credential_shared",
    }
}

impl Verdict {
    /// Does this verdict stop the request (in enforce mode)?
    pub fn blocks(self) -> bool {
        !matches!(self, Verdict::Allow | Verdict::Confirmed)
    }
}

/// What happens to the bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAction {
    /// Nothing (fresh, absent, or the request is blocked anyway).
    None,
    /// Removed before the upstream.
    Strip,
    /// Answered 401.
    Reject,
    /// Shadow mode: would have been stripped.
    WouldStrip,
    /// Shadow mode: would have been rejected.
    WouldReject,
}

impl TokenAction {
    /// The audit name.
    pub fn name(self) -> &'static str {
        match self {
            TokenAction::None => "none",
            TokenAction::Strip => "strip",
            TokenAction::Reject => "reject",
            TokenAction::WouldStrip => "would_strip",
            TokenAction::WouldReject => "would_reject",
        }
    }
}

/// The facts of one request on a matched route.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// Now, Unix milliseconds (the ledger's clock; [`Facts::now`] for seconds).
    pub now_ms: u64,
    /// `x-request-id`, if any.
    pub request_id: Option<&'a str>,
    /// The principal.
    pub principal: &'a str,
    /// The idempotency key header.
    pub key: &'a KeyCheck,
    /// The fingerprint; `None` before the body is known (400 and 413 answers).
    pub fingerprint: Option<Fingerprint>,
    /// SHA-256 of the body.
    pub body_digest: BodyDigest,
    /// Why the bearer token is stale, if it is.
    pub stale: Option<StaleReason>,
    /// The confirmation header value, if any.
    pub confirmation: Option<&'a [u8]>,
    /// The mTLS workload identity presenting the bearer credential, on a tracked route.
    pub credential_holder: Option<&'a str>,
    /// Another workload identity that presented the same credential first, within the window.
    pub credential_shared_with: Option<&'a str>,
    /// `x-envoy-attempt-count` as the request carries it (a mesh sidecar retrying on the
    /// caller's side sets it: more than 1 says the request is a retry).
    pub client_attempt: Option<u32>,
    /// Milliseconds since an attempt with this request's natural key under another
    /// idempotency key, within [`KEY_REGENERATION_SECONDS`] ([`note_keyed_attempt`]): the
    /// client made a new key for what looks like a retry.
    pub key_regenerated_ms: Option<u64>,
}

impl Facts<'_> {
    /// Now, Unix seconds (token and confirmation times).
    pub fn now(&self) -> u64 {
        self.now_ms / 1000
    }
}

/// A decision and everything needed to apply, answer and audit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The retry policy applied, when the ledger had a live entry.
    pub policy: Option<Policy>,
    /// Why, in a word or two (`first_attempt`, `previous_succeeded`, ...).
    pub reason: String,
    /// The attempt number this request is (1 for a first attempt).
    pub attempt: u32,
    /// Outcome and status of the earlier attempt.
    pub previous: Option<(Outcome, u16)>,
    /// First attempt of the window, when known.
    pub first_seen: Option<u64>,
    /// When the window ends, when known.
    pub window_ends: Option<u64>,
    /// The route's mode.
    pub mode: Mode,
    /// Shadow mode and the verdict would have blocked.
    pub would_block: bool,
    /// The ledger entry to commit (conditionally on the loaded snapshot).
    pub write: Option<Entry>,
    /// What happens to the bearer token.
    pub token_action: TokenAction,
    /// Why the token is stale.
    pub token_reason: Option<StaleReason>,
    /// Milliseconds since the latest earlier attempt of the same fingerprint, when the
    /// ledger had a live entry: how far apart a retry and its original are.
    pub since_previous_ms: Option<u64>,
    /// The approver of an accepted confirmation.
    pub approver: Option<String>,
    /// The challenge of a 428.
    pub challenge: Option<Challenge>,
    /// Why a sent confirmation was refused.
    pub confirmation_error: Option<ConfirmationError>,
    /// The specific problem of a `bad_request` answer (400, or 401 for an anonymous caller
    /// where the route rejects them).
    pub problem: Option<ProblemType>,
}

impl Decision {
    fn new(verdict: Verdict, route: &Route, reason: impl Into<String>) -> Decision {
        Decision {
            verdict,
            policy: None,
            reason: reason.into(),
            attempt: 1,
            previous: None,
            first_seen: None,
            window_ends: None,
            since_previous_ms: None,
            mode: route.mode,
            would_block: false,
            write: None,
            token_action: TokenAction::None,
            token_reason: None,
            approver: None,
            challenge: None,
            confirmation_error: None,
            problem: None,
        }
    }

    /// Is the request stopped with a local reply (enforce mode and a blocking verdict)?
    pub fn is_blocked(&self) -> bool {
        self.mode == Mode::Enforce && self.verdict.blocks()
    }

    /// The attempt number when this decision lets the request go on as a new attempt (its
    /// outcome is then recorded); `None` for a blocked request, whose write (if any) only
    /// stores a challenge.
    pub fn new_attempt(&self) -> Option<u32> {
        self.write
            .as_ref()
            .filter(|_| !self.is_blocked())
            .map(|w| w.attempts)
    }

    /// Is the token removed before the upstream?
    pub fn strips_token(&self) -> bool {
        self.token_action == TokenAction::Strip
    }

    fn problem_type(&self) -> Option<ProblemType> {
        Some(match self.verdict {
            Verdict::Allow | Verdict::Confirmed => return None,
            Verdict::Confirm => ProblemType::ConfirmationRequired,
            Verdict::Conflict => ProblemType::RequestInFlight,
            Verdict::Deny => ProblemType::DoNotRetry,
            Verdict::Mismatch => ProblemType::IdempotencyKeyMismatch,
            Verdict::BadRequest => self.problem.unwrap_or(ProblemType::IdempotencyKeyInvalid),
            Verdict::TooLarge => ProblemType::BodyTooLarge,
            Verdict::StaleToken => ProblemType::StaleToken,
            Verdict::Unavailable => ProblemType::LedgerUnavailable,
            Verdict::CredentialShared => ProblemType::CredentialShared,
        })
    }

    /// The local reply for a blocked request; `None` when the request continues.
    pub fn reply(&self, config: &Config, route: &Route, facts: &Facts<'_>) -> Option<LocalReply> {
        if !self.is_blocked() {
            return None;
        }
        let kind = self.problem_type()?;
        let mut m = LocalReply::document(kind);
        m.str(key!("detail"), &self.detail(config, route))
            .members(route.identity_json())
            .opt_b64url(
                key!("fingerprint"),
                facts.fingerprint.as_ref().map(|f| &f.0[..]),
            )
            .num(key!("attempt"), u64::from(self.attempt))
            .opt_str(key!("request_id"), facts.request_id);
        if let Some((outcome, status)) = self.previous {
            m.word(key!("previous_outcome"), outcome.name())
                .num(key!("previous_status"), u64::from(status));
        }
        if let Some(ms) = self.since_previous_ms {
            m.num(key!("since_previous_ms"), ms);
        }
        if let Some(reason) = self.token_reason {
            m.word(key!("token_reason"), reason.name());
        }
        let mut extra: Vec<(&'static str, String)> = Vec::new();
        match self.verdict {
            Verdict::Confirm => {
                if let Some(c) = self.challenge {
                    let id = b64::url(&c);
                    m.word(key!("challenge"), &id);
                    extra.push(("retry-guard-challenge", id));
                }
                if let Some(t) = self.first_seen {
                    m.time(key!("first_seen"), t);
                }
                if let Some(t) = self.window_ends {
                    m.time(key!("window_ends"), t);
                }
                m.str(key!("confirmation_header"), &config.confirmation_header);
                if let Some(e) = self.confirmation_error {
                    m.word(key!("confirmation_error"), e.name());
                }
            }
            Verdict::Unavailable => {
                extra.push(("retry-after", LEDGER_RETRY_AFTER.into()));
            }
            Verdict::StaleToken => {
                let reason = self.token_reason.map_or("stale", StaleReason::name);
                extra.push((
                    "www-authenticate",
                    format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
                ));
            }
            // RFC 9110 §15.5.2: a 401 names a scheme the caller can authenticate with.
            Verdict::BadRequest if kind == ProblemType::PrincipalRequired => {
                extra.push(("www-authenticate", "Bearer".to_string()));
            }
            _ => {}
        }
        let mut reply = LocalReply::problem(kind, m);
        reply.headers.extend(extra);
        Some(reply)
    }

    /// The problem document's `detail`: what happened and what to do, then who owns the
    /// route. Written piece by piece (the `format!` machinery cost more than the text on the
    /// 428 path).
    fn detail(&self, config: &Config, route: &Route) -> String {
        let mut s = String::with_capacity(384);
        let prev = |s: &mut String| {
            if let Some((o, st)) = self.previous {
                s.push_str(" The earlier attempt ended ");
                s.push_str(o.name());
                s.push_str(" (status ");
                push_u64(s, u64::from(st));
                s.push_str(").");
            }
        };
        let class = route.class.name();
        match self.verdict {
            Verdict::Confirm => {
                s.push_str("This ");
                s.push_str(class);
                s.push_str(" request repeats attempt ");
                push_u64(&mut s, u64::from(self.attempt.saturating_sub(1)));
                s.push_str(" of the same operation.");
                prev(&mut s);
                s.push_str(" A retry needs a signed confirmation from an approver in the ");
                s.push_str(&config.confirmation_header);
                s.push_str(" header, bound to the challenge and fingerprint. ");
            }
            Verdict::Conflict => {
                s.push_str("An identical ");
                s.push_str(class);
                s.push_str(" request is still in flight; wait for its result instead of retrying. ");
            }
            Verdict::Deny => {
                s.push_str("This ");
                s.push_str(class);
                s.push_str(" request must not be retried.");
                prev(&mut s);
                s.push_str(" Start a new operation (a new idempotency key) if that is intended. ");
            }
            Verdict::Mismatch => s.push_str(
                "The idempotency key was used with a different request body; use a new key for a new operation. ",
            ),
            Verdict::BadRequest => match self.problem {
                Some(ProblemType::IdempotencyKeyMissing) => {
                    s.push_str("This route requires the ");
                    s.push_str(&config.idempotency_key_header);
                    s.push_str(" header. ");
                }
                Some(ProblemType::PathInvalid) => s.push_str(
                    "The request path carries an encoded slash (%2F or %5C), which servers decode differently; send the path with plain slashes. ",
                ),
                Some(ProblemType::PrincipalAmbiguous) => {
                    s.push_str("The request names its caller twice with different values (");
                    s.push_str(&self.reason);
                    s.push_str("), and the upstream may take either; send it once. ");
                }
                Some(ProblemType::PrincipalRequired) => s.push_str(
                    "This route does not accept anonymous requests: send a credential the upstream verifies (the sources in the principal setting: a JWT a proxy filter verified, an mTLS client certificate, a bearer token, a session cookie). ",
                ),
                _ => {
                    s.push_str("The ");
                    s.push_str(&config.idempotency_key_header);
                    s.push_str(" header is invalid (");
                    s.push_str(&self.reason);
                    s.push_str("); send 1 to ");
                    push_u64(&mut s, config.max_key_length as u64);
                    s.push_str(" visible ASCII characters, bare or as a quoted string. ");
                }
            },
            Verdict::TooLarge => {
                s.push_str("The request body exceeds ");
                push_u64(&mut s, config.max_body_bytes as u64);
                s.push_str(" bytes, the most retry-guard buffers to fingerprint it. ");
            }
            Verdict::StaleToken => {
                s.push_str("The bearer token is stale (");
                s.push_str(self.token_reason.map_or("stale", StaleReason::name));
                s.push_str("); obtain a fresh token before retrying. ");
            }
            Verdict::CredentialShared => s.push_str(
                "This bearer credential was presented by another workload within the retry window; one credential used by two workloads is refused on this route. Use this workload's own credential. ",
            ),
            Verdict::Unavailable if self.reason == LEDGER_FULL => {
                s.push_str("retry-guard's ledger has no room to remember this ");
                s.push_str(class);
                s.push_str(" request without forgetting another live one, so it is refused rather than risk a second execution. Retry later. ");
            }
            Verdict::Unavailable => {
                s.push_str("retry-guard cannot reach its ledger, so it cannot tell whether this ");
                s.push_str(class);
                s.push_str(" request already ran; it is refused rather than risk a second execution. Retry later. ");
            }
            Verdict::Allow | Verdict::Confirmed => {}
        }
        s.push_str("Route ");
        s.push_str(&route.name);
        s.push_str(" is owned by ");
        s.push_str(&route.owner);
        s.push_str("; escalate via ");
        s.push_str(&route.escalation);
        s.push('.');
        s
    }
}

/// The decision after [`MAX_LEDGER_ROUNDS`] lost writes on one ledger key or set: persistent
/// contention is refused (409) rather than risk a duplicate.
pub fn contention(route: &Route) -> Decision {
    let mut d = Decision::new(Verdict::Conflict, route, "ledger_contention");
    d.would_block = route.mode == Mode::Shadow;
    d
}

/// The `retry-after` (seconds) of a 503 `ledger-unavailable`.
pub const LEDGER_RETRY_AFTER: &str = "5";

/// The decision when the ledger cannot answer in time: by the route's fail policy, 503
/// `ledger-unavailable` (fail closed) or allowed with reason `ledger_unavailable` (fail open).
/// Neither writes to the ledger. In shadow mode nothing is blocked.
pub fn ledger_unavailable(route: &Route, facts: &Facts<'_>) -> Decision {
    fail_policy(route, facts, "ledger_unavailable")
}

/// The decision when the in-process ledger has no room for the request's record without
/// forgetting a live attempt of a sensitive route ([`Commit::Full`]): the route's fail policy
/// as in [`ledger_unavailable`], with reason `ledger_full`.
pub fn ledger_full(route: &Route, facts: &Facts<'_>) -> Decision {
    fail_policy(route, facts, LEDGER_FULL)
}

/// The reason of a [`ledger_full`] decision.
pub const LEDGER_FULL: &str = "ledger_full";

fn fail_policy(route: &Route, facts: &Facts<'_>, reason: &str) -> Decision {
    let verdict = match route.on_ledger_unavailable {
        OnUnavailable::FailClosed => Verdict::Unavailable,
        OnUnavailable::FailOpen => Verdict::Allow,
    };
    let mut d = Decision::new(verdict, route, reason);
    d.first_seen = Some(facts.now());
    if route.mode == Mode::Shadow && verdict.blocks() {
        d.verdict = Verdict::Allow;
        d.would_block = true;
    }
    d
}

/// The 400 answer when the key is required and missing, or invalid; `None` otherwise.
/// Runs at request headers, before the body.
pub fn check_key(route: &Route, key: &KeyCheck) -> Option<Decision> {
    let (problem, reason) = match key {
        KeyCheck::Absent if route.require_idempotency_key => (
            ProblemType::IdempotencyKeyMissing,
            "idempotency_key_missing",
        ),
        KeyCheck::Invalid(why) => (ProblemType::IdempotencyKeyInvalid, *why),
        _ => return None,
    };
    Some(refuse(route, problem, reason))
}

/// What [`check_request`] looks at, known at request headers.
#[derive(Clone, Copy, Debug)]
pub struct EarlyFacts<'a> {
    /// The path carried an encoded slash.
    pub encoded_slash: bool,
    /// The idempotency key header.
    pub key: &'a KeyCheck,
    /// The principal, or the source that named the caller twice.
    pub principal: Result<&'a str, &'a Ambiguous>,
}

/// The answer at request headers, before the body, in this order: an encoded slash in the
/// path (400 `path-invalid`), a missing or invalid idempotency key (400), a caller named twice
/// (400 `principal-ambiguous`), an anonymous caller where the route rejects them (401
/// `principal-required`); `None` when the request may go on.
pub fn check_request(route: &Route, early: &EarlyFacts<'_>) -> Option<Decision> {
    if early.encoded_slash {
        return Some(refuse(route, ProblemType::PathInvalid, "encoded_slash"));
    }
    if let Some(d) = check_key(route, early.key) {
        return Some(d);
    }
    match early.principal {
        Err(a) => Some(refuse(
            route,
            ProblemType::PrincipalAmbiguous,
            &["ambiguous ", a.source.as_str()].concat(),
        )),
        Ok(p) if p == ANONYMOUS && route.anonymous == Anonymous::Reject => {
            Some(refuse(route, ProblemType::PrincipalRequired, "anonymous"))
        }
        Ok(_) => None,
    }
}

/// A `bad_request` decision answering `problem`.
fn refuse(route: &Route, problem: ProblemType, reason: &str) -> Decision {
    let mut d = Decision::new(Verdict::BadRequest, route, reason);
    d.problem = Some(problem);
    d.would_block = route.mode == Mode::Shadow;
    d
}

/// The 413 answer for a body over `max_body_bytes`.
pub fn too_large(route: &Route) -> Decision {
    let mut d = Decision::new(Verdict::TooLarge, route, "body_over_max_body_bytes");
    d.would_block = route.mode == Mode::Shadow;
    d
}

/// Decides a guarded request given the live ledger entry of its fingerprint (if any).
/// `new_challenge` supplies 128 random bits when a fresh challenge is needed.
pub fn decide(
    config: &Config,
    route: &Route,
    facts: &Facts<'_>,
    entry: Option<&Entry>,
    new_challenge: &mut dyn FnMut() -> Challenge,
) -> Decision {
    let mut d = decide_enforced(config, route, facts, entry, new_challenge);
    if route.mode == Mode::Shadow {
        // Nothing is blocked or stripped; the request goes on as a new attempt.
        if d.verdict.blocks() {
            d.would_block = true;
            d.challenge = None;
            d.write = facts
                .fingerprint
                .map(|fp| attempt_entry(fp, route, entry, facts, None));
        }
        d.token_action = match d.token_action {
            TokenAction::Strip => TokenAction::WouldStrip,
            TokenAction::Reject => TokenAction::WouldReject,
            other => other,
        };
    }
    if let Some(w) = &mut d.write {
        // A live attempt of a sensitive route is never evicted to make room (see `ledger`).
        w.sensitive = route.class.is_sensitive();
    }
    d
}

fn decide_enforced(
    config: &Config,
    route: &Route,
    facts: &Facts<'_>,
    entry: Option<&Entry>,
    new_challenge: &mut dyn FnMut() -> Challenge,
) -> Decision {
    let Some(fp) = facts.fingerprint else {
        return Decision::new(Verdict::Allow, route, "no_fingerprint");
    };
    let mut d = Decision::new(Verdict::Allow, route, "first_attempt");
    d.attempt = entry.map_or(1, |e| e.attempts.saturating_add(1));
    d.previous = entry.map(|e| (e.outcome, e.status));
    d.first_seen = Some(entry.map_or(facts.now_ms, |e| e.first_seen_ms) / 1000);
    d.window_ends = Some(
        entry
            .map_or(facts.now_ms, |e| e.last_attempt_ms)
            .saturating_add(route.window_seconds.saturating_mul(1000))
            / 1000,
    );
    d.since_previous_ms = entry.map(|e| facts.now_ms.saturating_sub(e.last_attempt_ms));
    d.token_reason = facts.stale;

    if facts.credential_shared_with.is_some() && route.shared_credential == SharedCredential::Deny {
        d.verdict = Verdict::CredentialShared;
        d.reason = "credential_shared".into();
        return d;
    }
    if let Some(reason) = facts.stale {
        if config.stale_token_action == StaleTokenAction::Reject {
            d.verdict = Verdict::StaleToken;
            d.reason = ["token_", reason.name()].concat();
            d.token_action = TokenAction::Reject;
            return d;
        }
    }
    let Some(e) = entry else {
        if !route.needs_ledger() {
            // Untracked route: every retry is safe, nothing to remember.
            d.reason = "untracked".into();
            let mut d = allow(d, route, fp, None, facts, None);
            d.write = None;
            return d;
        }
        return allow(d, route, fp, entry, facts, None);
    };
    if facts.key.key().is_some() && e.body_digest != facts.body_digest {
        d.verdict = Verdict::Mismatch;
        d.reason = "body_differs".into();
        return d;
    }
    let mut policy = route.policies.get(e.outcome);
    d.reason = ["previous_", e.outcome.name()].concat();
    if policy == Policy::RetrySafe && route.max_attempts.is_some_and(|max| d.attempt > max) {
        policy = Policy::RetryWithReview;
        d.reason = "max_attempts_exceeded".into();
    }
    d.policy = Some(policy);
    match policy {
        Policy::RetrySafe => allow(d, route, fp, entry, facts, None),
        Policy::DoNotRetry => {
            d.verdict = if e.outcome == Outcome::InFlight {
                Verdict::Conflict
            } else {
                Verdict::Deny
            };
            d
        }
        Policy::RetryWithReview => {
            if let Some(token) = facts.confirmation {
                let fp_text = fp.text();
                let state = ChallengeState {
                    fingerprint: &fp_text,
                    outstanding: e.challenge,
                    consumed: e.consumed,
                };
                match confirm::verify(
                    token,
                    config.confirmation.as_ref(),
                    state,
                    config.clock_skew_seconds,
                    facts.now(),
                ) {
                    Ok(approval) => {
                        d.verdict = Verdict::Confirmed;
                        d.reason = "confirmation_accepted".into();
                        d.approver = Some(approval.approver);
                        return allow(d, route, fp, entry, facts, Some(approval.challenge));
                    }
                    Err(err) => d.confirmation_error = Some(err),
                }
            }
            d.verdict = Verdict::Confirm;
            match e.challenge {
                Some(c) => d.challenge = Some(c),
                None => {
                    let c = new_challenge();
                    d.challenge = Some(c);
                    let mut updated = e.clone();
                    updated.challenge = Some(c);
                    d.write = Some(updated);
                }
            }
            d
        }
    }
}

fn allow(
    mut d: Decision,
    route: &Route,
    fp: Fingerprint,
    entry: Option<&Entry>,
    facts: &Facts<'_>,
    consumed: Option<Challenge>,
) -> Decision {
    if d.verdict != Verdict::Confirmed {
        d.verdict = Verdict::Allow;
    }
    if facts.stale.is_some() {
        d.token_action = TokenAction::Strip;
    }
    d.write = Some(attempt_entry(fp, route, entry, facts, consumed));
    d
}

/// The ledger entry for a new attempt of `fp` (in flight) on `route`, after the live `entry`
/// if any.
fn attempt_entry(
    fp: Fingerprint,
    route: &Route,
    entry: Option<&Entry>,
    facts: &Facts<'_>,
    consumed: Option<Challenge>,
) -> Entry {
    Entry {
        id: fp.0,
        first_seen_ms: entry.map_or(facts.now_ms, |e| e.first_seen_ms),
        last_attempt_ms: facts.now_ms,
        window_seconds: window_u32(route.window_seconds),
        attempts: entry.map_or(1, |e| e.attempts.saturating_add(1)),
        outcome: Outcome::InFlight,
        status: 0,
        body_digest: facts.body_digest,
        challenge: None,
        consumed: consumed.or(entry.and_then(|e| e.consumed)),
        sensitive: false,
    }
}

/// A window as an entry keeps it (the configuration bounds it far below `u32::MAX`).
fn window_u32(seconds: u64) -> u32 {
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// The entry after recording the outcome of attempt `attempt`; `None` when the entry belongs
/// to a later attempt (or is gone), so a stale response never overwrites a newer one, or when
/// the attempt's outcome is already recorded. The one exception: an attempt recorded as
/// `succeeded` or `failed_unknown` when its response headers passed becomes `undelivered`
/// when the stream ends with the client gone before the response was complete.
pub fn record_outcome(
    entry: Option<&Entry>,
    attempt: u32,
    response: ResponseFacts,
) -> Option<(Entry, Outcome)> {
    let e = entry?;
    let outcome = classify(response);
    let later_undelivered = outcome == Outcome::Undelivered
        && matches!(e.outcome, Outcome::Succeeded | Outcome::FailedUnknown);
    if e.attempts != attempt || (e.outcome != Outcome::InFlight && !later_undelivered) {
        return None;
    }
    let mut updated = e.clone();
    updated.outcome = outcome;
    updated.status = response.status;
    Some((updated, outcome))
}

/// The ledger id of the record that remembers when an opaque token was first seen.
pub fn token_record_id(credential_secret: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"retry-guard/token-seen/v1\0");
    h.update(credential_secret.as_bytes());
    h.finalize().into()
}

/// The credential record to write when a credential is seen at `now_ms` (presented by the
/// workload `holder`, when the request came over mTLS): a new record, or a refresh of the
/// existing one's window once a quarter of it has passed, or the first holder added to a
/// record that has none; `None` when nothing needs writing. The first holder is never
/// replaced.
pub fn token_seen_update(
    existing: Option<&Entry>,
    id: [u8; 32],
    now_ms: u64,
    window_seconds: u64,
    holder: Option<&str>,
) -> Option<Entry> {
    match existing {
        Some(e) => {
            let refresh =
                now_ms.saturating_sub(e.last_attempt_ms) >= window_seconds.saturating_mul(250);
            let add_holder = e.holder().is_none() && holder.is_some();
            if !refresh && !add_holder {
                return None;
            }
            let mut u = e.clone();
            if refresh {
                u.last_attempt_ms = now_ms;
                u.window_seconds = window_u32(window_seconds);
            }
            if let (true, Some(h)) = (add_holder, holder) {
                u.set_holder(h);
            }
            Some(u)
        }
        None => {
            let mut e = Entry {
                id,
                first_seen_ms: now_ms,
                last_attempt_ms: now_ms,
                window_seconds: window_u32(window_seconds),
                attempts: 0,
                outcome: Outcome::Succeeded,
                status: 0,
                body_digest: [0; 32],
                challenge: None,
                consumed: None,
                sensitive: false,
            };
            if let Some(h) = holder {
                e.set_holder(h);
            }
            Some(e)
        }
    }
}

/// What a request presenting a credential learns from its record ([`token_seen_update`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSeen {
    /// When the ledger first saw the credential, Unix seconds (now when this is the first
    /// sighting).
    pub first_seen: u64,
    /// The workload identity that presented the credential first, when it is not this
    /// request's `holder`: one credential used by two workloads.
    pub shared_with: Option<String>,
}

/// [`CredentialSeen`] from the live record (if any) at `now_ms` for a request of `holder`.
pub fn credential_seen(
    existing: Option<&Entry>,
    now_ms: u64,
    holder: Option<&str>,
) -> CredentialSeen {
    let shared_with = match (existing, holder) {
        (Some(e), Some(h)) => e.holder().filter(|_| !e.holder_is(h)),
        _ => None,
    };
    CredentialSeen {
        first_seen: existing.map_or(now_ms, |e| e.first_seen_ms) / 1000,
        shared_with,
    }
}

/// How long after a keyed attempt the same natural key under another idempotency key counts
/// as a regenerated key ([`note_keyed_attempt`]): retries come within a minute.
pub const KEY_REGENERATION_SECONDS: u32 = 60;

/// Notes a keyed attempt in the same-body table ([`crate::ledger::Table::SameBody`]): the
/// record of its `natural` fingerprint (the one it would have without its key) keeps the
/// latest `keyed` fingerprint for [`KEY_REGENERATION_SECONDS`]. Returns the milliseconds
/// since the latest attempt under another key, when there was one within that time. Evidence
/// only: it decides nothing, and one load and one conditional write are all it spends.
pub fn note_keyed_attempt<L: Ledger>(
    ledger: &L,
    natural: &Fingerprint,
    keyed: &Fingerprint,
    now_ms: u64,
) -> Result<Option<u64>, LedgerError> {
    let record = Entry {
        id: natural.0,
        first_seen_ms: now_ms,
        last_attempt_ms: now_ms,
        window_seconds: KEY_REGENERATION_SECONDS,
        attempts: 0,
        outcome: Outcome::Succeeded,
        status: 0,
        body_digest: keyed.0,
        challenge: None,
        consumed: None,
        sensitive: false,
    };
    let snapshot = ledger.load(&natural.0, now_ms)?;
    let regenerated = L::entry(&snapshot)
        .filter(|e| e.body_digest != keyed.0)
        .map(|e| now_ms.saturating_sub(e.last_attempt_ms));
    // A write lost to another worker's at the same moment is let go: the record then names
    // that worker's key, as good a latest key as this one.
    ledger.commit(&snapshot, &record, now_ms)?;
    Ok(regenerated)
}

/// How many times a decision is retried when another worker wrote the same ledger set first.
pub const MAX_LEDGER_ROUNDS: usize = 16;

/// A decision after its ledger write went through (or was refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The decision.
    pub decision: Decision,
    /// Committing it evicted another live entry.
    pub evicted: bool,
    /// The ledger refused the write ([`Commit::Full`]): the decision is [`ledger_full`].
    pub refused: bool,
}

impl Settled {
    fn new(decision: Decision) -> Settled {
        Settled {
            decision,
            evicted: false,
            refused: false,
        }
    }
}

/// Loads the entry, decides, and commits the decision's write conditionally; when another
/// worker wrote first, loads and decides again. This is how, of N identical requests at the
/// same time, exactly one is allowed and the rest see `in_flight`.
pub fn decide_with_ledger<L: Ledger>(
    ledger: &L,
    config: &Config,
    route: &Route,
    facts: &Facts<'_>,
    new_challenge: &mut dyn FnMut() -> Challenge,
) -> Result<Settled, LedgerError> {
    // Nothing to load or commit without a fingerprint, or on an untracked route.
    let Some(fp) = facts.fingerprint.filter(|_| route.needs_ledger()) else {
        return Ok(Settled::new(decide(
            config,
            route,
            facts,
            None,
            new_challenge,
        )));
    };
    for _ in 0..MAX_LEDGER_ROUNDS {
        let snapshot = ledger.load(&fp.0, facts.now_ms)?;
        let decision = decide(config, route, facts, L::entry(&snapshot), new_challenge);
        let Some(write) = &decision.write else {
            return Ok(Settled::new(decision));
        };
        match ledger.commit(&snapshot, write, facts.now_ms)? {
            Commit::Stored { evicted } => {
                return Ok(Settled {
                    decision,
                    evicted,
                    refused: false,
                })
            }
            Commit::Full => {
                return Ok(Settled {
                    decision: ledger_full(route, facts),
                    evicted: false,
                    refused: true,
                })
            }
            Commit::Conflict => continue,
        }
    }
    Ok(Settled::new(contention(route)))
}

/// Records the outcome of attempt `attempt` of `fp`, let through at `started` (its entry's
/// `last_attempt`); returns the outcome if it was written (`None` when a later attempt owns
/// the entry or the entry is gone). `started` matters when an attempt outlives the window:
/// its entry expires, the same request starts a new entry whose count is 1 again, and the
/// old attempt's response must not be written on it.
pub fn record_with_ledger<L: Ledger>(
    ledger: &L,
    fp: &Fingerprint,
    attempt: u32,
    started: u64,
    response: ResponseFacts,
    now_ms: u64,
) -> Result<Option<Outcome>, LedgerError> {
    for _ in 0..MAX_LEDGER_ROUNDS {
        let snapshot = ledger.load(&fp.0, now_ms)?;
        let entry = L::entry(&snapshot).filter(|e| e.last_attempt_ms == started);
        let Some((entry, outcome)) = record_outcome(entry, attempt, response) else {
            return Ok(None);
        };
        match ledger.commit(&snapshot, &entry, now_ms)? {
            Commit::Stored { .. } => return Ok(Some(outcome)),
            // The entry is in its set (it was just loaded), so rewriting it always has room.
            Commit::Full => return Ok(None),
            Commit::Conflict => {}
        }
    }
    Err(LedgerError::Contention {
        what: Record::Outcome,
    })
}

/// When the ledger first saw the credential `secret`, Unix seconds (recording it at `now_ms`
/// if it never did).
pub fn first_seen_with_ledger<L: Ledger>(
    ledger: &L,
    secret: &str,
    now_ms: u64,
    window_seconds: u64,
) -> Result<u64, LedgerError> {
    first_seen_by_id(
        ledger,
        token_record_id(secret),
        false,
        now_ms,
        window_seconds,
        None,
    )
    .map(|s| s.seen.first_seen)
}

/// What recording a credential sighting did ([`first_seen_by_id`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSighting {
    /// What the request learns of the credential.
    pub seen: CredentialSeen,
    /// Recording it evicted another live entry.
    pub evicted: bool,
    /// The ledger had no room for a new record ([`Commit::Full`]): the request gets the
    /// route's fail policy ([`ledger_full`]).
    pub refused: bool,
}

/// Records a sighting of the credential whose record id is `id` ([`token_record_id`]), on a
/// route that is `sensitive` or not (a live record of a sensitive route is never evicted),
/// presented by the workload `holder` if the request came over mTLS.
pub fn first_seen_by_id<L: Ledger>(
    ledger: &L,
    id: [u8; 32],
    sensitive: bool,
    now_ms: u64,
    window_seconds: u64,
    holder: Option<&str>,
) -> Result<TokenSighting, LedgerError> {
    for _ in 0..MAX_LEDGER_ROUNDS {
        let snapshot = ledger.load(&id, now_ms)?;
        let existing = L::entry(&snapshot);
        let mut sighting = TokenSighting {
            seen: credential_seen(existing, now_ms, holder),
            evicted: false,
            refused: false,
        };
        match token_seen_update(existing, id, now_ms, window_seconds, holder) {
            None => return Ok(sighting),
            Some(mut update) => {
                update.sensitive |= sensitive;
                match ledger.commit(&snapshot, &update, now_ms)? {
                    Commit::Stored { evicted } => {
                        sighting.evicted = evicted;
                        return Ok(sighting);
                    }
                    Commit::Full => {
                        sighting.refused = true;
                        return Ok(sighting);
                    }
                    Commit::Conflict => {}
                }
            }
        }
    }
    Err(LedgerError::Contention {
        what: Record::TokenAge,
    })
}

#[cfg(test)]
mod tests;
