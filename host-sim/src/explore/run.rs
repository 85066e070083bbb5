//! One execution of a [`Case`]: a thread per worker, each with its own single-worker
//! simulation over one shared store, and a controller that lets one thread run at a time.
//!
//! Protocol: the controller starts the threads one by one (each starts its VM: `main` with
//! worker 0, then `w0`, `w1`, … in order, as Envoy starts them), runs the setup actions one
//! at a time on their workers, then hands every worker its concurrent actions, again one at
//! a time: a thread runs until its first scheduling point, where it reports the host call it
//! is about to make and waits. From then on the controller asks the chooser which paused
//! thread goes on, lets exactly that one run to its next scheduling point (or its end), and so
//! on until every thread is done. At most one thread ever runs guest or host code at a time,
//! so an execution is a deterministic function of the choices.
//!
//! When the chooser stops an execution, or anything fails, the controller drops its ends of
//! the channels: every waiting thread then runs freely to its end and quits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use super::dpor::Chooser;
use super::{Action, Case, Failure, LedgerView, Observed, Outcome, Points, RequestSpec};
use crate::sched::HostCall;
use crate::shared::Shared;
use crate::sim::{Exchange, Pending, Sim, SimConfig, DEFAULT_START_UNIX};
use crate::upstream::Upstream;
use crate::vm::Runtime;

/// How long the controller waits for a thread to reach its next scheduling point.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

enum Event {
    Ready(Result<(), String>),
    Paused(usize, HostCall),
    Done(Result<Vec<(String, Exchange)>, String>),
}

enum Cmd {
    Run {
        actions: Vec<Action>,
        known: BTreeMap<String, Exchange>,
        go: Option<Receiver<bool>>,
    },
}

/// Checks a case before it runs: unique names, completions of earlier begins on the same
/// worker, workers that exist, and no concurrent action that would move the clock.
pub(super) fn validate(case: &Case) -> Result<(), String> {
    let n = case.workers.len();
    let mut names = BTreeSet::new();
    let mut begun: Vec<BTreeSet<String>> = vec![BTreeSet::new(); n];
    let all = case.setup.iter().map(|(w, a)| (*w, a, true)).chain(
        case.workers
            .iter()
            .enumerate()
            .flat_map(|(w, list)| list.iter().map(move |a| (w, a, false))),
    );
    for (w, a, setup) in all {
        if w >= n {
            return Err(format!(
                "setup names worker {w}; the case has {n} worker(s)"
            ));
        }
        let upstream = match a {
            Action::Exchange { name, upstream, .. } => {
                if !names.insert(name.clone()) {
                    return Err(format!("two exchanges are named {name:?}"));
                }
                Some(upstream)
            }
            Action::Begin { name, .. } => {
                if !names.insert(name.clone()) {
                    return Err(format!("two exchanges are named {name:?}"));
                }
                begun[w].insert(name.clone());
                None
            }
            Action::Complete { name, upstream } => {
                if !begun[w].remove(name) {
                    return Err(format!(
                        "complete {name:?} on worker {w} has no earlier begin on that worker"
                    ));
                }
                Some(upstream)
            }
            Action::Advance { .. } if !setup => {
                return Err(
                    "advance runs in the setup only: the clock must not move while streams \
                     run concurrently (its reads would no longer commute)"
                        .into(),
                )
            }
            Action::Advance { .. } => None,
        };
        let moves_clock = match upstream {
            Some(Upstream::Reply { delay_ms, .. } | Upstream::Reset { delay_ms }) => *delay_ms > 0,
            Some(Upstream::Timeout) => true,
            _ => false,
        };
        if moves_clock && !setup {
            return Err(
                "a concurrent exchange's upstream must answer at once (no delay, no timeout): \
                 the clock must not move while streams run concurrently"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Runs one execution; `Ok(Some(signature))` when it ran to its end and passed every check,
/// `Ok(None)` when the chooser stopped it.
pub(super) fn execute(
    rt: &Runtime,
    case: &Case,
    points: Points,
    chooser: &mut dyn Chooser<HostCall>,
) -> Result<Option<String>, Failure> {
    let fail = |message: String, schedule: &[String]| Failure {
        case: case.name.clone(),
        message,
        schedule: schedule.to_vec(),
    };
    let shared = Arc::new(Shared::new(
        "retry_guard",
        DEFAULT_START_UNIX * 1_000_000_000,
        case.seed,
    ));
    let n = case.workers.len();
    std::thread::scope(|s| {
        let (ev_tx, ev_rx) = channel::<Event>();
        let mut cmds = Vec::with_capacity(n);
        for t in 0..n {
            let (cmd_tx, cmd_rx) = channel::<Cmd>();
            let (events, shared) = (ev_tx.clone(), shared.clone());
            let cfg = SimConfig {
                plugin_config: case.plugin_config.clone(),
                workers: 1,
                main_vm: t == 0,
                seed: case.seed,
                ..SimConfig::default()
            };
            s.spawn(move || worker(rt, cfg, shared, t, points, &events, &cmd_rx));
            cmds.push(cmd_tx);
            match ev_rx.recv_timeout(STEP_TIMEOUT) {
                Ok(Event::Ready(Ok(()))) => {}
                Ok(Event::Ready(Err(e))) => return Err(fail(e, &[])),
                _ => return Err(fail(format!("worker {t} did not start"), &[])),
            }
        }
        drop(ev_tx);
        // Dropping `cmds` (and the go senders inside `drive`) on any return lets every thread
        // run to its end and quit; the scope then joins them.
        drive(case, chooser, &ev_rx, cmds, &shared).map_err(|(m, sched)| fail(m, &sched))
    })
}

type Schedule = Vec<String>;

type Results = Vec<Result<Vec<(String, Exchange)>, String>>;

fn on_event(e: Event, paused: &mut BTreeMap<usize, HostCall>, results: &mut Results) {
    match e {
        Event::Paused(t, call) => {
            paused.insert(t, call);
        }
        Event::Done(r) => results.push(r),
        Event::Ready(..) => {}
    }
}

fn recv(ev: &Receiver<Event>, what: &str) -> Result<Event, String> {
    ev.recv_timeout(STEP_TIMEOUT).map_err(|e| match e {
        RecvTimeoutError::Timeout => format!("no answer from {what} within {STEP_TIMEOUT:?}"),
        RecvTimeoutError::Disconnected => format!("{what} ended without an answer"),
    })
}

fn drive(
    case: &Case,
    chooser: &mut dyn Chooser<HostCall>,
    ev: &Receiver<Event>,
    cmds: Vec<Sender<Cmd>>,
    shared: &Shared,
) -> Result<Option<String>, (String, Schedule)> {
    let n = cmds.len();
    let none = |m: String| (m, Vec::new());
    let send = |t: usize, c: Cmd| {
        cmds[t]
            .send(c)
            .map_err(|_| none(format!("worker {t} is gone")))
    };
    // Setup, one action at a time.
    let mut known: BTreeMap<String, Exchange> = BTreeMap::new();
    for (w, a) in &case.setup {
        send(
            *w,
            Cmd::Run {
                actions: vec![a.clone()],
                known: known.clone(),
                go: None,
            },
        )?;
        match recv(ev, "a setup step").map_err(none)? {
            Event::Done(Ok(done)) => known.extend(done),
            Event::Done(Err(e)) => return Err(none(format!("setup: {e}"))),
            _ => return Err(none("setup: unexpected event".into())),
        }
    }
    // The concurrent part.
    let mut go: Vec<Sender<bool>> = Vec::with_capacity(n);
    let mut paused: BTreeMap<usize, HostCall> = BTreeMap::new();
    let mut results: Results = Vec::new();
    let mut schedule: Schedule = Vec::new();
    for (t, actions) in case.workers.iter().enumerate() {
        let (go_tx, go_rx) = channel();
        go.push(go_tx);
        send(
            t,
            Cmd::Run {
                actions: actions.clone(),
                known: known.clone(),
                go: Some(go_rx),
            },
        )?;
        let e = recv(ev, &format!("worker {t}")).map_err(none)?;
        on_event(e, &mut paused, &mut results);
    }
    while !paused.is_empty() {
        let enabled: Vec<(usize, HostCall)> = paused.iter().map(|(t, c)| (*t, c.clone())).collect();
        let choice = chooser
            .choose(&enabled)
            .map_err(|e| (e, schedule.clone()))?;
        let Some(t) = choice else {
            // Stopped: let everyone run to the end unscheduled; the result is not used.
            for (t, _) in std::mem::take(&mut paused) {
                let _ = go[t].send(false);
            }
            let mut left = n - results.len();
            while left > 0 {
                if let Event::Done(..) = recv(ev, "a stopped worker").map_err(none)? {
                    left -= 1;
                }
            }
            return Ok(None);
        };
        let call = paused.remove(&t).ok_or_else(|| {
            none(format!(
                "the chooser picked worker {t}, which is not paused"
            ))
        })?;
        schedule.push(format!("w{t} {call}"));
        go[t]
            .send(true)
            .map_err(|_| none(format!("worker {t} is gone")))?;
        let e = recv(ev, &format!("worker {t}")).map_err(|m| (m, schedule.clone()))?;
        on_event(e, &mut paused, &mut results);
    }
    for r in results {
        let done = r.map_err(|e| (e, schedule.clone()))?;
        known.extend(done);
    }
    let concurrent: Vec<&str> = case
        .workers
        .iter()
        .flatten()
        .filter_map(|a| match a {
            Action::Exchange { name, .. } | Action::Complete { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let ledger = LedgerView::read(shared);
    let metrics = shared.metric_values();
    check(case, &known, &ledger, &metrics).map_err(|m| (m, schedule.clone()))?;
    let mut sig: Vec<String> = concurrent
        .iter()
        .map(|name| format!("{name}={}", known.get(*name).map_or(0, |e| e.status)))
        .collect();
    let mut entries: Vec<String> = ledger
        .attempts
        .iter()
        .map(|e| {
            format!(
                "{}#{}:{}",
                &retry_guard::b64::url(&e.id)[..6],
                e.attempts,
                e.outcome.name()
            )
        })
        .collect();
    entries.sort();
    sig.extend(entries);
    Ok(Some(sig.join(" ")))
}

/// The checks every execution passes, then the case's own.
fn check(
    case: &Case,
    exchanges: &BTreeMap<String, Exchange>,
    ledger: &LedgerView,
    metrics: &BTreeMap<String, u64>,
) -> Result<(), String> {
    for (name, ex) in exchanges {
        if let Some(t) = &ex.trap {
            return Err(format!("{name}: the VM trapped: {t}"));
        }
        if let Some(s) = &ex.stalled {
            return Err(format!("{name}: the stream stalled: {s}"));
        }
        if let Some(m) = ex.misuse.first() {
            return Err(format!("{name}: host misuse: {m}"));
        }
        if ex.status == 0 && ex.upstream.is_none() {
            return Err(format!("{name}: neither answered nor forwarded"));
        }
    }
    if let Some(k) = ledger.undecodable.first() {
        return Err(format!("ledger key {k} does not decode as a ledger set"));
    }
    (case.check)(&Outcome {
        exchanges,
        ledger,
        metrics,
    })
}

fn worker(
    rt: &Runtime,
    cfg: SimConfig,
    shared: Arc<Shared>,
    t: usize,
    points: Points,
    events: &Sender<Event>,
    cmds: &Receiver<Cmd>,
) {
    let sim = match Sim::with_shared(rt, cfg, shared, t) {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(Event::Ready(Err(format!("worker {t}: {e}"))));
            return;
        }
    };
    if events.send(Event::Ready(Ok(()))).is_err() {
        return;
    }
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut known: BTreeMap<String, Exchange> = BTreeMap::new();
    while let Ok(Cmd::Run {
        actions,
        known: k,
        go,
    }) = cmds.recv()
    {
        known.extend(k);
        if let Some(go) = go {
            let ev = events.clone();
            let mut free = false;
            let scheduler = move |call: &HostCall| {
                if free || (points == Points::Visible && !call.access.is_visible()) {
                    return;
                }
                if ev.send(Event::Paused(t, call.clone())).is_err() || go.recv() != Ok(true) {
                    free = true;
                }
            };
            if let Err(e) = sim.set_scheduler(0, Some(Box::new(scheduler))) {
                let _ = events.send(Event::Done(Err(e.to_string())));
                continue;
            }
        }
        let result = run_actions(&sim, &actions, &mut pending, &mut known);
        let _ = sim.set_scheduler(0, None);
        let traps = sim.background_traps.borrow();
        let result = match (result, traps.first()) {
            (Ok(_), Some(trap)) => Err(format!("w{t}: a background callback trapped: {trap}")),
            (r, _) => r,
        };
        if events.send(Event::Done(result)).is_err() {
            return;
        }
    }
}

fn run_actions(
    sim: &Sim,
    actions: &[Action],
    pending: &mut HashMap<String, Pending>,
    known: &mut BTreeMap<String, Exchange>,
) -> Result<Vec<(String, Exchange)>, String> {
    let mut done = Vec::new();
    for a in actions {
        let finished = match a {
            Action::Exchange {
                name,
                request,
                upstream,
            } => {
                let req = build(sim, name, request, known)?;
                let ex = sim
                    .request(&req, upstream)
                    .map_err(|e| format!("{name}: {e}"))?;
                Some((name, ex))
            }
            Action::Begin { name, request } => {
                let req = build(sim, name, request, known)?;
                let p = sim.begin(&req, None).map_err(|e| format!("{name}: {e}"))?;
                pending.insert(name.clone(), p);
                None
            }
            Action::Complete { name, upstream } => {
                let p = pending
                    .remove(name)
                    .ok_or_else(|| format!("{name}: completed before it began"))?;
                let ex = sim
                    .complete(p, upstream)
                    .map_err(|e| format!("{name}: {e}"))?;
                Some((name, ex))
            }
            Action::Advance { ms } => {
                sim.advance_ms(*ms);
                None
            }
        };
        if let Some((name, ex)) = finished {
            known.insert(name.clone(), ex.clone());
            done.push((name.clone(), ex));
        }
    }
    Ok(done)
}

/// The request of an action, on this thread's one worker, with an `x-request-id` of its own
/// (Envoy would draw one from the shared random source: a hidden shared access).
fn build(
    sim: &Sim,
    name: &str,
    spec: &RequestSpec,
    known: &BTreeMap<String, Exchange>,
) -> Result<crate::sim::Request, String> {
    let mut req = match spec {
        RequestSpec::Fixed(r) => (**r).clone(),
        RequestSpec::Built(f) => f(&Observed {
            exchanges: known,
            now_unix: sim.now_unix(),
        })
        .map_err(|e| format!("{name}: {e}"))?,
    };
    req.worker = 0;
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
    {
        req.headers.push((
            "x-request-id".into(),
            format!("explore-{name}").into_bytes(),
        ));
    }
    Ok(req)
}
