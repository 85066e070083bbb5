//! The whole-filter fuzzer: seeded random sequences of client requests, upstream answers,
//! resets, client disconnects, clock steps and confirmations, over several workers, driven
//! into a real module on host-sim, with the filter's invariants checked after every step.
//!
//! One *sequence* is one simulated Envoy (2 to 4 workers, a random small configuration)
//! and 10 to 80 *steps*. A step begins a stream (a new request, a replay of an earlier one on
//! any worker, or a retry carrying a signed confirmation for an earlier 428 — valid, reused or
//! tampered), completes a stream begun earlier (streams stay open across steps, so several
//! attempts are in flight at once), or moves the clock. After every step:
//!
//! 1. no VM trapped (in a stream, a tick or a queue callback);
//! 2. every finished stream was answered or forwarded (not stalled), with no host misuse;
//! 3. no fingerprint of a tracked route is allowed while an earlier allowed attempt of it is
//!    still in flight (within its window; an entry in flight is never evicted);
//! 4. no confirmation challenge is accepted twice;
//! 5. shared data stays within its bound: no key beyond those made at start (the set tables
//!    and the index key), no value beyond a full set, every set decodes and holds at most
//!    its 4 ways.
//!
//! When a sequence ends, its open streams are completed and no attempt entry may be left
//! `in_flight`. Everything derives from the sequence's seed: [`run_sequence`] with the seed of
//! a failure replays it exactly (a failing seed becomes a regression test).

pub mod gen;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::explore::LedgerView;
use crate::scenario::expect::audit_records;
use crate::sim::{Exchange, Pending, Request, Sim, SimConfig};
use crate::vm::Runtime;
use gen::Gen;

/// The seed of sequence `i` of a run started with `base`.
pub fn sequence_seed(base: u64, i: u64) -> u64 {
    base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A violated invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The sequence's seed: `run_sequence(rt, seed)` replays it.
    pub seed: u64,
    /// The step that broke it (0-based).
    pub step: usize,
    /// What is wrong.
    pub message: String,
    /// The steps up to it, one line each.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fuzz sequence seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(
            f,
            "replay: host_sim::fuzz::run_sequence(&rt, {}) (add it to host-sim/tests/fuzz_sim.rs)",
            self.seed
        )?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Sequences run.
    pub sequences: u64,
    /// Steps run.
    pub steps: u64,
    /// Streams run to their end.
    pub exchanges: u64,
    /// Exchanges per status the client got (0: the client went away first).
    pub statuses: BTreeMap<u16, u64>,
    /// Decisions per audit `decision` value (`none`: no audit line).
    pub decisions: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// Adds `other`'s counts (not its elapsed time) to these.
    pub fn merge(&mut self, other: &Summary) {
        self.sequences += other.sequences;
        self.steps += other.steps;
        self.exchanges += other.exchanges;
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &other.decisions {
            *self.decisions.entry(k.clone()).or_insert(0) += v;
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "{} sequences, {} steps, {} exchanges in {:.1} s ({:.0} sequences/s, {:.0} steps/s)",
            self.sequences,
            self.steps,
            self.exchanges,
            secs,
            self.sequences as f64 / secs,
            self.steps as f64 / secs
        )?;
        let list = |m: &mut dyn Iterator<Item = String>| m.collect::<Vec<_>>().join(" ");
        writeln!(
            f,
            "statuses: {}",
            list(&mut self.statuses.iter().map(|(k, v)| format!("{k}:{v}")))
        )?;
        write!(
            f,
            "decisions: {}",
            list(&mut self.decisions.iter().map(|(k, v)| format!("{k}:{v}")))
        )
    }
}

/// Runs sequences from `base_seed` until `budget` has passed or `max_sequences` ran; stops at
/// the first failure.
pub fn run_for(
    rt: &Runtime,
    base_seed: u64,
    budget: Duration,
    max_sequences: u64,
) -> Result<Summary, Failure> {
    let started = Instant::now();
    let mut total = Summary::default();
    let mut i = 0;
    while i < max_sequences && started.elapsed() < budget {
        let s = run_sequence(rt, sequence_seed(base_seed, i))?;
        total.merge(&s);
        i += 1;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// A stream begun and not yet completed.
struct Open {
    name: String,
    request: Request,
    pending: Pending,
    /// When the request began: its place in the sequence's events and Unix seconds.
    began: (u64, u64),
}

/// An attempt a tracked route let through, once its stream ended (its audit line, written
/// then, says so).
struct Allowed {
    name: String,
    fingerprint: String,
    /// When it began: its place in the sequence's events and Unix seconds.
    began: (u64, u64),
    /// When its stream ended: its place in the sequence's events.
    ended: u64,
}

/// A 428 seen, to build confirmations from.
struct Challenge {
    request: Request,
    challenge: String,
    fingerprint: String,
}

struct Sequence {
    seed: u64,
    sim: Sim,
    gen: Gen,
    window: u64,
    key_count: usize,
    sent: Vec<Request>,
    open: Vec<Open>,
    challenges: Vec<Challenge>,
    /// Confirmation token → its challenge.
    tokens: HashMap<String, String>,
    /// Tokens issued, for reuse.
    issued: Vec<(Request, String)>,
    consumed: BTreeSet<String>,
    trace: Vec<String>,
    summary: Summary,
    next_id: u64,
    /// The sequence's events so far (begins and ends), to order streams by.
    events: u64,
    /// Every attempt let through on a tracked route whose stream ended.
    allowed: Vec<Allowed>,
}

/// Runs the sequence of `seed`.
pub fn run_sequence(rt: &Runtime, seed: u64) -> Result<Summary, Failure> {
    let started = Instant::now();
    let mut gen = Gen::new(seed);
    let (plugin_config, _max_entries, window) = gen.config();
    let workers = 2 + gen.below(3);
    let steps = 10 + gen.below(71);
    let fail0 = |message: String| Failure {
        seed,
        step: 0,
        message,
        trace: Vec::new(),
    };
    let sim = Sim::new(
        rt,
        SimConfig {
            plugin_config,
            workers,
            seed,
            ..SimConfig::default()
        },
    )
    .map_err(|e| fail0(format!("the simulation did not start: {e}")))?;
    let key_count = crate::shared::lock(&sim.shared().data).len();
    let mut s = Sequence {
        seed,
        sim,
        gen,
        window,
        key_count,
        sent: Vec::new(),
        open: Vec::new(),
        challenges: Vec::new(),
        tokens: HashMap::new(),
        issued: Vec::new(),
        consumed: BTreeSet::new(),
        trace: vec![format!(
            "{workers} workers, {steps} steps, window {window} s"
        )],
        summary: Summary::default(),
        next_id: 0,
        events: 0,
        allowed: Vec::new(),
    };
    for step in 0..steps {
        s.step().map_err(|m| s.failure(step, m))?;
        s.invariants().map_err(|m| s.failure(step, m))?;
        s.summary.steps += 1;
    }
    // Every stream ends.
    while !s.open.is_empty() {
        s.complete(0).map_err(|m| s.failure(steps, m))?;
        s.invariants().map_err(|m| s.failure(steps, m))?;
    }
    // Entries past their window are dead (the next write of their set drops them): an
    // attempt that outlived its window has its outcome dropped by design.
    let view = LedgerView::read(s.sim.shared());
    let now_ms = s.sim.shared().now().realtime_ns / 1_000_000;
    if let Some(e) = view.attempts.iter().find(|e| {
        e.outcome == retry_guard::policy::Outcome::InFlight && e.is_live(now_ms, s.window)
    }) {
        return Err(s.failure(
            steps,
            format!(
                "every stream ended but an entry is still in_flight (attempt {}, last at {} ms)",
                e.attempts, e.last_attempt_ms
            ),
        ));
    }
    s.summary.sequences = 1;
    s.summary.elapsed = started.elapsed();
    Ok(s.summary)
}

impl Sequence {
    fn failure(&self, step: usize, message: String) -> Failure {
        Failure {
            seed: self.seed,
            step,
            message,
            trace: self.trace.clone(),
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let roll = self.gen.below(100);
        if roll < 30 || (self.sent.is_empty() && self.open.is_empty()) {
            let now = self.sim.now_unix();
            let req = self.gen.request(self.sim.workers(), now);
            self.begin(req, "new")
        } else if let Some(req) = (roll < 52)
            .then(|| self.gen.choose(&self.sent).cloned())
            .flatten()
        {
            let mut req = req;
            req.worker = self.gen.below(self.sim.workers());
            self.begin(req, "replay")
        } else if roll < 62 && !self.challenges.is_empty() {
            self.confirmation()
        } else if roll < 90 && !self.open.is_empty() {
            let i = self.gen.below(self.open.len());
            self.complete(i)
        } else {
            let ms = self.gen.clock_step();
            self.trace.push(format!("advance {ms} ms"));
            self.sim.advance_ms(ms);
            Ok(())
        }
    }

    /// A retry carrying a confirmation: valid for an earlier 428, reused, or tampered.
    fn confirmation(&mut self) -> Result<(), String> {
        let pick = self.gen.below(10);
        if let Some((mut req, _)) = (pick < 3)
            .then(|| self.gen.choose(&self.issued).cloned())
            .flatten()
        {
            req.worker = self.gen.below(self.sim.workers());
            return self.begin(req, "reused confirmation");
        }
        let i = self.gen.below(self.challenges.len());
        let c = &self.challenges[i];
        let key = crate::tokens::read_signing_key(
            &retry_guard::paths::repo_root().join("testdata/keys/approvals-test.key"),
        )?;
        let now = self.sim.now_unix() as i64;
        let claims = crate::tokens::Confirmation {
            kid: "approvals-test".into(),
            chl: c.challenge.clone(),
            fp: c.fingerprint.clone(),
            sub: "alice@example.com".into(),
            iat: now - self.gen.below(2) as i64 * 700,
            exp: now + 300,
        };
        let mut token = claims.sign(&key);
        if pick == 9 {
            token.pop();
            token.push('A');
        }
        let mut req = c.request.clone();
        req.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("retry-guard-confirmation"));
        req.headers.push((
            "retry-guard-confirmation".into(),
            token.clone().into_bytes(),
        ));
        req.worker = self.gen.below(self.sim.workers());
        self.tokens.insert(token.clone(), c.challenge.clone());
        self.issued.push((req.clone(), token));
        self.begin(req, "confirmation")
    }

    fn begin(&mut self, mut req: Request, what: &str) -> Result<(), String> {
        self.next_id += 1;
        let name = format!("s{}", self.next_id);
        req.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("x-request-id"));
        req.headers
            .push(("x-request-id".into(), name.clone().into_bytes()));
        self.trace.push(format!(
            "{name}: {what} on w{}: {} {} ({} body chunks, {} headers, disconnect {:?})",
            req.worker,
            req.method,
            req.path.escape_debug(),
            req.body.len(),
            req.headers.len(),
            req.disconnect
        ));
        let pending = self.sim.begin(&req, None).map_err(|e| e.to_string())?;
        // Replays come from requests that went through, and some that did not.
        if pending.forwarded() || self.gen.chance(30) {
            self.sent.push(req.clone());
        }
        self.events += 1;
        let began = (self.events, self.sim.now_unix());
        self.open.push(Open {
            name,
            request: req,
            pending,
            began,
        });
        Ok(())
    }

    fn complete(&mut self, i: usize) -> Result<(), String> {
        let open = self.open.remove(i);
        let upstream = self.gen.upstream();
        let ex = self
            .sim
            .complete(open.pending, &upstream)
            .map_err(|e| e.to_string())?;
        self.trace.push(format!(
            "{}: completed, upstream {upstream:?} -> {}{}",
            open.name,
            ex.status,
            if ex.local_reply { " (local reply)" } else { "" }
        ));
        self.finished(&open.name, &open.request, &ex)?;
        self.events += 1;
        self.decided(&open.name, &open.request, open.began, &ex, self.events)
    }

    /// Checks a request's decision once its stream ended (its audit line is written then):
    /// on a tracked route no two attempts of a fingerprint are let through while both are in
    /// flight within the window, and a confirmation is accepted once.
    fn decided(
        &mut self,
        name: &str,
        request: &Request,
        began: (u64, u64),
        ex: &Exchange,
        ended: u64,
    ) -> Result<(), String> {
        let records = audit_records(ex);
        let Some(d) = records.first() else {
            return Ok(());
        };
        let verdict = d["decision"].as_str().unwrap_or("");
        // Tracked routes: an attempt in flight is never evicted, so no second allow while it
        // is in flight, on any tracked route.
        let tracked = d["class"].as_str().unwrap_or("") != "read_only";
        // A request the ledger could not record (full set, contention) and the route's
        // fail_open policy let through has no entry to be in flight in.
        let recorded = !d["reason"].as_str().unwrap_or("").starts_with("ledger_");
        if let (true, true, Some(fp)) = (
            ex.upstream.is_some() && tracked && recorded,
            matches!(verdict, "allow" | "confirmed"),
            d["fingerprint"].as_str(),
        ) {
            let this = Allowed {
                name: name.to_string(),
                fingerprint: fp.to_string(),
                began,
                ended,
            };
            for other in self.allowed.iter().filter(|a| a.fingerprint == fp) {
                let (first, second) = if other.began.0 < this.began.0 {
                    (other, &this)
                } else {
                    (&this, other)
                };
                if second.began.0 < first.ended && second.began.1 < first.began.1 + self.window {
                    return Err(format!(
                        "{} was allowed while {} of the same fingerprint was in flight; \
                         {name}'s audit line: {d}",
                        second.name, first.name
                    ));
                }
            }
            self.allowed.push(this);
        }
        if verdict == "confirmed" {
            let token = request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-guard-confirmation"))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let chl = self.tokens.get(&token).cloned().unwrap_or(token);
            if !self.consumed.insert(chl.clone()) {
                return Err(format!(
                    "{name}: confirmation for challenge {chl} accepted a second time"
                ));
            }
        }
        self.trace
            .push(format!("{name}: decision {verdict} ({})", d["reason"]));
        Ok(())
    }

    fn finished(&mut self, name: &str, request: &Request, ex: &Exchange) -> Result<(), String> {
        if let Some(t) = &ex.trap {
            return Err(format!("{name}: the VM trapped: {t}"));
        }
        if let Some(s) = &ex.stalled {
            return Err(format!("{name}: the stream stalled: {s}"));
        }
        if let Some(m) = ex.misuse.first() {
            return Err(format!("{name}: host misuse: {m}"));
        }
        // A client that went away ends its stream too.
        if ex.status == 0 && ex.upstream.is_none() && request.disconnect.is_none() {
            return Err(format!("{name}: neither answered nor forwarded"));
        }
        self.summary.exchanges += 1;
        *self.summary.statuses.entry(ex.status).or_insert(0) += 1;
        let records = audit_records(ex);
        let decision = records
            .first()
            .and_then(|r| r["decision"].as_str())
            .unwrap_or("none")
            .to_string();
        *self.summary.decisions.entry(decision).or_insert(0) += 1;
        if ex.status == 428 {
            if let Some(doc) = ex.json() {
                if let (Some(c), Some(f)) = (doc["challenge"].as_str(), doc["fingerprint"].as_str())
                {
                    self.challenges.push(Challenge {
                        request: request.clone(),
                        challenge: c.to_string(),
                        fingerprint: f.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn invariants(&self) -> Result<(), String> {
        for w in 0..self.sim.workers() {
            if let Some(t) = self.sim.worker_failure(w) {
                return Err(format!("worker {w} failed: {t}"));
            }
        }
        if let Some(t) = self.sim.background_traps.borrow().first() {
            return Err(format!("a background callback trapped: {t}"));
        }
        let view = LedgerView::read(self.sim.shared());
        if view.keys != self.key_count {
            return Err(format!(
                "shared data grew from {} to {} keys",
                self.key_count, view.keys
            ));
        }
        let full_set = 2 + retry_guard::ledger::WAYS * retry_guard::ledger::ENTRY_BYTES;
        if view.largest_value > full_set {
            return Err(format!(
                "a shared-data value of {} bytes, more than a full set ({full_set})",
                view.largest_value
            ));
        }
        if let Some(k) = view.undecodable.first() {
            return Err(format!("ledger key {k} does not decode"));
        }
        Ok(())
    }
}
