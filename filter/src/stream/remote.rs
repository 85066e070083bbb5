//! A stream's decision against the cluster ledger (etcd), and the calls that outlive it.
//!
//! The stream holds its request while [`Deciding`] talks to etcd: every request the
//! conversation asks for goes out through [`StreamHost::http_call`] (owned by the root
//! context), the answer comes back through [`Plugin::on_call_answer`], and the stream decides
//! and resumes. An outcome is written after the response, by a [`RecordJob`] the plugin owns,
//! so neither the client nor the stream waits for it (the request's audit line names the
//! outcome it records; a write that fails is logged). When the stream ends while its decision
//! is in flight (the client went away), the call becomes an [`AbandonedJob`]: if the attempt
//! was written it is recorded `not_sent` — it never reached the upstream — so the next
//! retry is not refused as "in flight" for the whole window.

use crate::engine::{self, Facts};
use crate::etcd::{self, EtcdError, KeyKind, LedgerOp};
use crate::fingerprint::Fingerprint;
use crate::host::{Action, LogLevel, StreamHost};
use crate::ledger::{Entry, Ledger};
use crate::metrics::{Counter, Event};
use crate::remote::{Deciding, Next, Recording, RemoteSettled, Sighting, ABANDONED};

use super::request::Pending;
use super::{fresh_challenge, Plugin, Stream, Tracked};

/// What the answer to a call to the cluster ledger is for.
pub(crate) enum Call {
    /// A stream's decision: the stream's context id.
    Stream(u32),
    /// A lease grant for a time bucket.
    Grant(u64),
    /// An outcome record.
    Record(Box<RecordJob>),
    /// A decision whose stream ended before the answer came.
    Abandoned(Box<AbandonedJob>),
}

/// The request a decision is about: its facts, fingerprint and body digest.
pub(super) struct Asking {
    pending: Pending,
    fingerprint: Fingerprint,
    body_digest: [u8; 32],
}

impl Asking {
    /// The token's first sighting came back: assess the token again, and when it turned out
    /// stale (it names no one then) compute the fingerprint with the principal that is left.
    fn seen(&mut self, route: &crate::config::Route, seen: Option<engine::CredentialSeen>) {
        if self.pending.seen(seen) {
            let p = &self.pending;
            self.fingerprint = Fingerprint::compute(
                &route.name,
                p.principal_text(),
                p.key.key(),
                &crate::fingerprint::NaturalKey {
                    method: &p.method,
                    path: &p.path,
                    query: &p.query,
                    body: &self.body_digest,
                },
            );
        }
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            now_ms: self.pending.now_ms,
            request_id: self.pending.request_id.as_deref(),
            principal: self.pending.principal_text(),
            key: &self.pending.key,
            fingerprint: Some(self.fingerprint),
            body_digest: self.body_digest,
            stale: self.pending.stale,
            confirmation: self.pending.confirmation.as_deref(),
            credential_holder: self.pending.holder.as_deref(),
            credential_shared_with: self.pending.shared_with.as_deref(),
            client_attempt: self.pending.client_attempt,
            key_regenerated_ms: self.pending.key_regenerated_ms,
        }
    }
}

/// What a waiting stream asks the cluster ledger.
// One per waiting stream, inside the boxed `Waiting`: boxing the larger variant again would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// When its opaque token was first seen (before the decision).
    Sighting(Sighting),
    /// Its decision.
    Deciding(Deciding),
}

/// A stream's decision waiting for the cluster ledger.
pub(super) struct Waiting {
    asking: Asking,
    phase: Phase,
    /// The request in flight.
    op: LedgerOp,
    /// A grant of the lease the request names is in flight first.
    granting: bool,
    /// The lease was granted once for this decision already (a second "lease not found" is
    /// an error, not a loop).
    regranted: bool,
    /// The token of the call in flight.
    token: u32,
}

/// A tracked attempt written to the cluster ledger: what its outcome record starts from.
#[derive(Clone, Debug)]
pub(super) struct RemoteAttempt {
    key: String,
    lease: i64,
    written: Entry,
    revision: i64,
}

/// An outcome record in flight, owned by the plugin (it outlives the stream).
pub(crate) struct RecordJob {
    pub(super) recording: Recording,
    pub(super) op: LedgerOp,
    pub(super) route: usize,
    request_id: Option<String>,
    /// The record of a request whose stream ended before its decision (it wrote no audit
    /// line): its outcome is logged when written.
    abandoned: bool,
    /// The context id of the stream whose attempt this records (0: abandoned).
    pub(super) stream: u32,
    /// The stream's audit line, given to the record when the stream ended before the outcome
    /// was in etcd: written once it is (or could not be), so the line says what etcd holds.
    pub(super) line: Option<String>,
    /// The request in flight is the second copy of one etcd did not answer usably.
    pub(super) resent: bool,
}

impl RecordJob {
    /// Sends the next request; once done, writes the audit line the stream gave it, or for an
    /// abandoned request logs the outcome written.
    pub(super) fn step<L, H: StreamHost>(
        mut self,
        plugin: &Plugin<L>,
        host: &H,
        next: Next<Option<crate::policy::Outcome>>,
    ) {
        match next {
            Next::Ask(op) => {
                let (path, body) = op.request();
                self.op = op;
                if let Err((status, call)) =
                    plugin.call(host, path, &body, Call::Record(Box::new(self)))
                {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "retry-guard: outcome not recorded: dispatch_http_call status {}",
                            status.0
                        ),
                    );
                    if let Call::Record(mut job) = call {
                        job.write_line(host);
                    }
                }
            }
            Next::Done(_) if self.line.is_some() => self.write_line(host),
            Next::Done(Some(outcome)) if self.abandoned => {
                let route = plugin.config.routes.get(self.route);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "retry-guard: route {}: request {} ended before its decision; its \
                         attempt is recorded {} in the cluster ledger",
                        route.map_or("?", |r| r.name.as_str()),
                        self.request_id.as_deref().unwrap_or("-"),
                        outcome.name(),
                    ),
                );
            }
            Next::Done(_) => {}
        }
    }

    /// Writes the audit line it was given, if any.
    pub(super) fn write_line<H: StreamHost>(&mut self, host: &H) {
        if let Some(line) = self.line.take() {
            host.log(LogLevel::Info, &line);
        }
    }
}

/// A decision whose stream is gone, waiting for the answer that tells whether its attempt was
/// written.
pub(crate) struct AbandonedJob {
    waiting: Waiting,
    route: usize,
}

impl<L> Plugin<L> {
    /// The answer to a decision whose stream ended while it waited: an attempt that was
    /// written is recorded `not_sent` (it never went upstream).
    pub(super) fn on_abandoned_answer<H: StreamHost>(
        &self,
        host: &H,
        job: AbandonedJob,
        status: Option<u16>,
        body: &[u8],
    ) {
        if job.waiting.granting || matches!(job.waiting.phase, Phase::Sighting(_)) {
            return;
        }
        let Ok(crate::etcd::OpResult::Written { revision }) =
            etcd::parse_answer(&job.waiting.op, status, body)
        else {
            return;
        };
        let LedgerOp::Put {
            key, entry, lease, ..
        } = &job.waiting.op
        else {
            return;
        };
        let (recording, next) = Recording::start(
            key.clone(),
            *lease,
            entry,
            revision,
            entry.attempts,
            ABANDONED,
        );
        let record = RecordJob {
            recording,
            op: job.waiting.op.clone(),
            route: job.route,
            request_id: job.waiting.asking.pending.request_id.clone(),
            abandoned: true,
            stream: 0,
            line: None,
            resent: false,
        };
        record.step(self, host, next);
    }
}

impl Stream {
    /// Starts the decision against the cluster ledger (after the token's first sighting, when
    /// its age must be known); the stream waits (paused) for it.
    pub(super) fn decide_remote<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        pending: Pending,
        fingerprint: Fingerprint,
        body_digest: [u8; 32],
    ) -> Action {
        let Some(remote) = &plugin.remote else {
            return Action::Continue;
        };
        let lease = remote
            .plan
            .lease_id(remote.plan.bucket(pending.now_ms / 1000));
        if let Some((id, holder)) = pending.sighting.as_ref().map(|d| (d.id, d.holder.clone())) {
            let key = etcd::key(&remote.etcd.key_prefix, KeyKind::TokenSeen, &id);
            let (sighting, next) = Sighting::start(
                key,
                lease,
                id,
                pending.now_ms,
                plugin.config.window_seconds,
                holder,
            );
            match next {
                Next::Done(first_seen) => {
                    let mut asking = Asking {
                        pending,
                        fingerprint,
                        body_digest,
                    };
                    if let Some(route) = plugin.config.routes.get(self.route) {
                        asking.seen(route, Some(first_seen));
                    }
                    return self.start_deciding(plugin, host, asking);
                }
                Next::Ask(op) => {
                    let waiting = Waiting {
                        asking: Asking {
                            pending,
                            fingerprint,
                            body_digest,
                        },
                        phase: Phase::Sighting(sighting),
                        op,
                        granting: false,
                        regranted: false,
                        token: 0,
                    };
                    return self.send_first(plugin, host, waiting);
                }
            }
        }
        self.start_deciding(
            plugin,
            host,
            Asking {
                pending,
                fingerprint,
                body_digest,
            },
        )
    }

    /// Decides: against the cluster ledger on a tracked route, at once on an untracked one
    /// (whose token age was all it needed the ledger for).
    fn start_deciding<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        asking: Asking,
    ) -> Action {
        let (Some(remote), Some(route)) = (&plugin.remote, plugin.config.routes.get(self.route))
        else {
            return Action::Continue;
        };
        let fingerprint = asking.fingerprint;
        let mut challenge = fresh_challenge(host, &fingerprint);
        if !route.needs_ledger() {
            let d = engine::decide(&plugin.config, route, &asking.facts(), None, &mut challenge);
            return self.apply(plugin, host, route, &asking.facts(), &d);
        }
        let key = etcd::key(
            &remote.etcd.key_prefix,
            KeyKind::Attempt,
            &asking.fingerprint.0,
        );
        let lease = remote
            .plan
            .lease_id(remote.plan.bucket(asking.pending.now_ms / 1000));
        let (deciding, next) = Deciding::start(
            &plugin.config,
            route,
            &asking.facts(),
            key,
            lease,
            &mut challenge,
        );
        match next {
            Next::Done(settled) => self.settle_remote(plugin, host, &asking.facts(), settled, None),
            Next::Ask(op) => {
                let waiting = Waiting {
                    asking,
                    phase: Phase::Deciding(deciding),
                    op,
                    granting: false,
                    regranted: false,
                    token: 0,
                };
                self.send_first(plugin, host, waiting)
            }
        }
    }

    /// Sends a new conversation's first request: the lease grant first when this VM has not
    /// seen the bucket's lease granted yet (the first seconds after start, or a failed tick).
    fn send_first<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        mut waiting: Waiting,
    ) -> Action {
        if let Some(remote) = &plugin.remote {
            if !remote.is_granted(remote.plan.bucket(waiting.asking.pending.now_ms / 1000)) {
                waiting.granting = true;
                waiting.regranted = true;
            }
        }
        self.send(plugin, host, waiting)
    }

    /// Sends the waiting decision's next request (the lease grant first when one is due);
    /// the stream stays paused. A request that cannot even be dispatched is decided by the
    /// route's fail policy at once.
    fn send<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        mut waiting: Waiting,
    ) -> Action {
        let (path, body) = if waiting.granting {
            match &plugin.remote {
                Some(r) => r.plan.grant(
                    r.plan.bucket(waiting.asking.pending.now_ms / 1000),
                    waiting.asking.pending.now_ms / 1000,
                ),
                None => return Action::Continue,
            }
        } else {
            waiting.op.request()
        };
        match plugin.call(host, path, &body, Call::Stream(self.id)) {
            Ok(token) => {
                waiting.token = token;
                self.waiting = Some(Box::new(waiting));
                Action::Pause
            }
            Err((status, _)) => self.unavailable(
                plugin,
                host,
                waiting,
                &format!(
                    "dispatch_http_call to cluster {} failed with status {} (is the cluster in Envoy's configuration?)",
                    plugin.remote.as_ref().map_or("?", |r| r.etcd.cluster.as_str()),
                    status.0
                ),
            ),
        }
    }

    /// The cluster ledger answered this stream's request: decide, or ask again. Returns
    /// [`Action::Continue`] when the stream is to be resumed.
    pub fn on_ledger_answer<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        status: Option<u16>,
        body: &[u8],
    ) -> Action {
        let Some(mut waiting) = self.waiting.take().map(|w| *w) else {
            return Action::Continue;
        };
        let Some(route) = plugin.config.routes.get(self.route) else {
            return Action::Continue;
        };
        if waiting.granting {
            waiting.granting = false;
            return match etcd::parse_grant(status, body) {
                Ok(()) => {
                    if let Some(r) = &plugin.remote {
                        r.mark_granted(r.plan.bucket(waiting.asking.pending.now_ms / 1000));
                    }
                    self.send(plugin, host, waiting)
                }
                Err(e) => self.unavailable(plugin, host, waiting, &e.to_string()),
            };
        }
        let result = match etcd::parse_answer(&waiting.op, status, body) {
            Ok(r) => r,
            Err(EtcdError::LeaseNotFound) if !waiting.regranted => {
                waiting.regranted = true;
                waiting.granting = true;
                return self.send(plugin, host, waiting);
            }
            Err(e) => {
                if let Phase::Sighting(_) = waiting.phase {
                    // The token's age is unknown: decide without it (the decision then meets
                    // the same ledger and its fail policy).
                    host.log(
                        LogLevel::Warn,
                        &format!("retry-guard: token age unknown: {e}"),
                    );
                    waiting.asking.seen(route, None);
                    return self.start_deciding(plugin, host, waiting.asking);
                }
                return self.unavailable(plugin, host, waiting, &e.to_string());
            }
        };
        match &mut waiting.phase {
            Phase::Sighting(sighting) => match sighting.on_result(result) {
                Next::Ask(op) => {
                    waiting.op = op;
                    self.send(plugin, host, waiting)
                }
                Next::Done(first_seen) => {
                    waiting.asking.seen(route, Some(first_seen));
                    self.start_deciding(plugin, host, waiting.asking)
                }
            },
            Phase::Deciding(deciding) => {
                let next = {
                    let mut challenge = fresh_challenge(host, &waiting.asking.fingerprint);
                    deciding.on_result(
                        &plugin.config,
                        route,
                        &waiting.asking.facts(),
                        result,
                        &mut challenge,
                    )
                };
                match next {
                    Next::Ask(op) => {
                        waiting.op = op;
                        self.send(plugin, host, waiting)
                    }
                    Next::Done(settled) => {
                        let key = (deciding.key().to_string(), deciding.lease());
                        self.settle_remote(
                            plugin,
                            host,
                            &waiting.asking.facts(),
                            settled,
                            Some(key),
                        )
                    }
                }
            }
        }
    }

    /// Applies a decision the cluster ledger settled, and remembers a new attempt for its
    /// outcome record.
    fn settle_remote<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        facts: &Facts<'_>,
        settled: RemoteSettled,
        key: Option<(String, i64)>,
    ) -> Action {
        let Some(route) = plugin.config.routes.get(self.route) else {
            return Action::Continue;
        };
        let decision = settled.decision;
        let action = self.apply(plugin, host, route, facts, &decision);
        if let (Some(attempt), Some(fp)) = (
            decision.new_attempt().filter(|_| !self.replied),
            facts.fingerprint,
        ) {
            if decision.mode == crate::config::Mode::Enforce {
                host.set_request_header(super::MAX_RETRIES_HEADER, "0");
            }
            let remote = match (settled.written, key) {
                (Some((written, revision)), Some((key, lease))) => Some(RemoteAttempt {
                    key,
                    lease,
                    written,
                    revision,
                }),
                _ => None,
            };
            self.tracked = Some(Tracked {
                fingerprint: fp,
                attempt,
                started: decision
                    .write
                    .as_ref()
                    .map_or(facts.now_ms, |w| w.last_attempt_ms),
                request_id: facts.request_id.map(str::to_string),
                recorded: None,
                remote,
            });
        }
        action
    }

    /// The cluster ledger cannot answer: the route's fail policy decides, counted and logged
    /// with what failed (the operator's log only; the answer and the audit line say
    /// `ledger_unavailable`).
    fn unavailable<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        waiting: Waiting,
        what: &str,
    ) -> Action {
        let Some(route) = plugin.config.routes.get(self.route) else {
            return Action::Continue;
        };
        host.count(Counter::Event(Event::LedgerUnavailable));
        host.log(
            LogLevel::Warn,
            &format!(
                "retry-guard: route {}: cluster ledger unavailable ({what}); {} applies",
                route.name,
                route.on_ledger_unavailable.name()
            ),
        );
        let facts = waiting.asking.facts();
        let d = engine::ledger_unavailable(route, &facts);
        self.apply(plugin, host, route, &facts, &d)
    }

    /// The stream ends: a decision still waiting for the cluster ledger becomes the plugin's,
    /// so an attempt it wrote gets its `not_sent` outcome.
    pub(super) fn abandon<L>(&mut self, plugin: &Plugin<L>) {
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        let token = waiting.token;
        let job = AbandonedJob {
            waiting: *waiting,
            route: self.route,
        };
        if let Ok(mut calls) = plugin.calls.try_borrow_mut() {
            if let Some((_, call)) = calls.iter_mut().find(|(t, _)| *t == token) {
                *call = Call::Abandoned(Box::new(job));
            }
        }
    }

    /// Starts the outcome record of an attempt written to the cluster ledger (after the
    /// response: nothing waits for it); returns the outcome it records, if any.
    pub(super) fn record_remote<L, H: StreamHost>(
        plugin: &Plugin<L>,
        host: &H,
        stream: u32,
        route: usize,
        tracked: &Tracked,
        attempt: &RemoteAttempt,
        response: crate::policy::ResponseFacts,
    ) -> Option<crate::policy::Outcome> {
        let (recording, next) = Recording::start(
            attempt.key.clone(),
            attempt.lease,
            &attempt.written,
            attempt.revision,
            tracked.attempt,
            response,
        );
        let job = RecordJob {
            recording,
            op: LedgerOp::Read {
                key: attempt.key.clone(),
            },
            route,
            request_id: tracked.request_id.clone(),
            abandoned: false,
            stream,
            line: None,
            resent: false,
        };
        let outcome = match &next {
            Next::Done(outcome) => *outcome,
            Next::Ask(_) => job.recording.outcome(),
        };
        job.step(plugin, host, next);
        outcome
    }
}
