//! [`Plugin`]: one configured plugin as its streams see it, and the streams whose headers it
//! holds waiting for their body.

use std::cell::{Cell, RefCell};

use crate::config::{Config, EtcdLedger, LedgerBackend};
use crate::etcd::LeasePlan;
use crate::host::{LogLevel, Status, StreamHost};
use crate::metrics::{Counter, Event};

use super::remote::{Call, RecordJob};
use crate::remote::Next;

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
    /// The ledger decisions are made against (its attempt table).
    pub ledger: L,
    /// The in-process table of opaque-token sightings (apart from the attempts: a flood of
    /// new tokens cannot push attempts out).
    pub tokens: L,
    /// The in-process same-body table: which idempotency key each natural key was last sent
    /// with ([`crate::engine::note_keyed_attempt`]).
    pub bodies: L,
    /// Streams whose headers are held waiting for the body: (context id, since).
    held: RefCell<Vec<(u32, u64)>>,
    /// When the held-stream warning was last logged.
    warned_at: Cell<u64>,
    /// The cluster ledger, when the configuration names one.
    pub(super) remote: Option<Remote>,
    /// Calls to the cluster ledger in flight, by token (a handful at a time: a list).
    pub(super) calls: RefCell<Vec<(u32, Call)>>,
}

/// The cluster ledger as the plugin uses it: where it is, and its leases.
pub(super) struct Remote {
    pub(super) etcd: EtcdLedger,
    pub(super) plan: LeasePlan,
    /// Buckets whose lease this VM knows to exist (the last few).
    granted: RefCell<Vec<u64>>,
    /// Buckets whose grant is in flight.
    granting: RefCell<Vec<u64>>,
}

impl Remote {
    /// Does this VM know bucket `b`'s lease exists?
    pub(super) fn is_granted(&self, b: u64) -> bool {
        self.granted.try_borrow().is_ok_and(|g| g.contains(&b))
    }

    pub(super) fn mark_granted(&self, b: u64) {
        if let Ok(mut g) = self.granted.try_borrow_mut() {
            if !g.contains(&b) {
                g.push(b);
                if g.len() > 8 {
                    g.remove(0);
                }
            }
        }
    }
}

impl<L> Plugin<L> {
    /// A plugin with no stream held, deciding against the attempt table `ledger`, the token
    /// table `tokens` and the same-body table `bodies`.
    pub fn new(config: Config, ledger: L, tokens: L, bodies: L) -> Plugin<L> {
        let remote = match &config.ledger.backend {
            LedgerBackend::SharedData => None,
            LedgerBackend::Etcd(etcd) => Some(Remote {
                plan: LeasePlan::new(&etcd.key_prefix, config.longest_window_seconds()),
                etcd: etcd.clone(),
                granted: RefCell::new(Vec::new()),
                granting: RefCell::new(Vec::new()),
            }),
        };
        Plugin {
            config,
            ledger,
            tokens,
            bodies,
            held: RefCell::new(Vec::new()),
            warned_at: Cell::new(0),
            remote,
            calls: RefCell::new(Vec::new()),
        }
    }

    /// Sends a request to the cluster ledger and registers what its answer is for; when it
    /// cannot be sent, the host's status and the call are handed back.
    pub(super) fn call<H: StreamHost>(
        &self,
        host: &H,
        path: &str,
        body: &str,
        call: Call,
    ) -> Result<u32, (Status, Call)> {
        let Some(remote) = &self.remote else {
            return Err((Status(1), call));
        };
        let token = match host.http_call(
            &remote.etcd.cluster,
            &remote.etcd.authority,
            path,
            body.as_bytes(),
            remote.etcd.timeout_ms,
        ) {
            Ok(token) => token,
            Err(status) => return Err((status, call)),
        };
        if let Ok(mut calls) = self.calls.try_borrow_mut() {
            calls.push((token, call));
        }
        Ok(token)
    }

    /// Gives stream `stream`'s audit line to its outcome record still in flight, which writes
    /// it once the outcome is in etcd (or could not be written); hands the line back when the
    /// stream has no record in flight.
    pub(super) fn give_line(&self, stream: u32, line: String) -> Result<(), String> {
        let Ok(mut calls) = self.calls.try_borrow_mut() else {
            return Err(line);
        };
        let job = calls.iter_mut().rev().find_map(|(_, c)| match c {
            Call::Record(job) if job.stream == stream => Some(job),
            _ => None,
        });
        match job {
            Some(job) => {
                job.line = Some(line);
                Ok(())
            }
            None => Err(line),
        }
    }

    /// Calls to the cluster ledger in flight (for tests and the shell's bookkeeping).
    pub fn calls_in_flight(&self) -> usize {
        self.calls.try_borrow().map_or(0, |c| c.len())
    }

    /// The periodic work of the cluster ledger: grant the leases of this bucket and the next
    /// ahead of time, so requests find them (one grant per bucket per VM; granting a lease
    /// another VM or replica granted already is a success).
    pub fn on_tick<H: StreamHost>(&self, host: &H, now: u64) {
        let Some(remote) = &self.remote else {
            return;
        };
        let b = remote.plan.bucket(now);
        for bucket in [b, b + 1] {
            let busy = remote.is_granted(bucket)
                || remote
                    .granting
                    .try_borrow()
                    .is_ok_and(|g| g.contains(&bucket));
            if busy {
                continue;
            }
            let (path, body) = remote.plan.grant(bucket, now);
            match self.call(host, path, &body, Call::Grant(bucket)) {
                Ok(_) => {
                    if let Ok(mut g) = remote.granting.try_borrow_mut() {
                        g.push(bucket);
                    }
                }
                Err((status, _)) => host.log(
                    LogLevel::Warn,
                    &format!(
                        "retry-guard: cannot reach the cluster ledger (cluster {}): dispatch_http_call status {}",
                        remote.etcd.cluster, status.0
                    ),
                ),
            }
        }
    }

    /// The answer to a call to the cluster ledger (`status` `None`: no answer at all). A
    /// stream's own call returns its context id: the shell resumes that stream with the answer
    /// ([`Stream::on_ledger_answer`](super::Stream::on_ledger_answer)), or, when the stream is
    /// gone, passes it to [`Plugin::on_abandoned_answer`]. Other calls are finished here.
    pub fn on_call_answer<H: StreamHost>(
        &self,
        host: &H,
        token: u32,
        status: Option<u16>,
        body: &[u8],
    ) -> Option<u32> {
        let call = {
            let mut calls = self.calls.try_borrow_mut().ok()?;
            let i = calls.iter().position(|(t, _)| *t == token)?;
            calls.swap_remove(i).1
        };
        match call {
            Call::Stream(id) => Some(id),
            Call::Grant(bucket) => {
                if let Some(remote) = &self.remote {
                    if let Ok(mut g) = remote.granting.try_borrow_mut() {
                        g.retain(|b| *b != bucket);
                    }
                    match crate::etcd::parse_grant(status, body) {
                        Ok(()) => remote.mark_granted(bucket),
                        Err(e) => {
                            host.count(Counter::Event(Event::LedgerUnavailable));
                            host.log(
                                LogLevel::Warn,
                                &format!("retry-guard: cluster ledger lease grant failed: {e}"),
                            );
                        }
                    }
                }
                None
            }
            Call::Record(job) => {
                self.continue_record(host, *job, status, body);
                None
            }
            Call::Abandoned(job) => {
                self.on_abandoned_answer(host, *job, status, body);
                None
            }
        }
    }

    /// Sends the next request of an outcome record, or logs its audit line when done. A
    /// request etcd did not answer usably is sent once more (it compares the attempt's
    /// revision, so a first copy that went through after all makes the second a no-op);
    /// past that the outcome is given up, with a warning.
    pub(super) fn continue_record<H: StreamHost>(
        &self,
        host: &H,
        mut job: RecordJob,
        status: Option<u16>,
        body: &[u8],
    ) {
        let route = || {
            self.config
                .routes
                .get(job.route)
                .map_or("?", |r| r.name.as_str())
                .to_owned()
        };
        let next = match crate::etcd::parse_answer(&job.op, status, body) {
            Ok(result) => job.recording.on_result(result),
            // The same lease again cannot help; anything else may be passing (an election,
            // a dropped connection, a timeout).
            Err(e) if !job.resent && e != crate::etcd::EtcdError::LeaseNotFound => {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "retry-guard: route {}: outcome write to the cluster ledger failed \
                         ({e}); sending it once more",
                        route()
                    ),
                );
                job.resent = true;
                Next::Ask(job.op.clone())
            }
            Err(e) => {
                host.count(Counter::Event(Event::LedgerUnavailable));
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "retry-guard: route {}: outcome not recorded in the cluster ledger: {e}",
                        route()
                    ),
                );
                job.write_line(host);
                return;
            }
        };
        job.step(self, host, next);
    }
}

impl<L> Plugin<L> {
    pub(super) fn hold(&self, id: u32, now: u64) {
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
