//! Every interleaving of a few concurrent streams, at the host-call level.
//!
//! A [`Case`] names a plugin configuration, a sequential `setup` (requests run one after the
//! other, e.g. a first attempt, its 428) and one list of [`Action`]s per worker that run
//! *concurrently*. [`explore`] runs each worker on its own thread, with its own VM over one
//! shared store ([`crate::Sim::with_shared`]), and lets exactly one thread run at a time: every
//! host call a VM makes is a scheduling point ([`crate::sched`]), where the thread stops and
//! the explorer picks which thread moves next. The search ([`dpor`]) re-runs the case from a
//! fresh Envoy for every interleaving it explores.
//!
//! **The reduction, and why it is sound.** Only host calls that touch state another VM can
//! observe are scheduling points by default ([`Points::Visible`]: shared data, metrics, the
//! random source, queues, http calls; see [`crate::sched::Access`]): everything a VM does
//! between two of them only reads or writes its own memory and streams, so it commutes with
//! every other thread's steps and can run right after the preceding visible call without
//! losing a state (Godefroid's "visible operations"). [`Points::Every`] stops at every host
//! call instead and gives the same count (the DPOR never needs to reorder a local call);
//! a test checks that. On top, dynamic partial-order reduction with sleep sets explores one
//! interleaving per class of equivalent ones: two shared-data calls conflict only on the same
//! key with one of them a `set`; metric additions commute. [`Search::Exhaustive`] runs every
//! interleaving of the visible calls instead, to cross-check on small cases.
//!
//! Every execution is checked: no trap, no stalled stream, no host misuse, every stream
//! answered or forwarded, the ledger decodable; then the case's own check (exactly one
//! allowed, ...) on the [`Outcome`]. The first violation stops the search with the schedule
//! that produced it.

pub mod dpor;
pub mod ledger;
mod run;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use dpor::{Search, Stats};
pub use ledger::LedgerView;

use crate::sim::{Exchange, Request};
use crate::upstream::Upstream;
use crate::vm::Runtime;

/// Which host calls are scheduling points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Points {
    /// Calls that touch state other VMs observe ([`crate::sched::Access::is_visible`]).
    Visible,
    /// Every host call.
    Every,
}

/// What a [`RequestSpec::Built`] request may be built from.
pub struct Observed<'a> {
    /// Exchanges finished so far that this thread knows of (the setup's, then its own).
    pub exchanges: &'a BTreeMap<String, Exchange>,
    /// The virtual clock, Unix seconds.
    pub now_unix: u64,
}

/// Builds a request from what came before (e.g. a confirmation for an earlier 428).
pub type BuildRequest = Arc<dyn Fn(&Observed<'_>) -> Result<Request, String> + Send + Sync>;

/// A request of an action.
#[derive(Clone)]
pub enum RequestSpec {
    /// This request.
    Fixed(Box<Request>),
    /// Built when the action runs.
    Built(BuildRequest),
}

impl From<Request> for RequestSpec {
    fn from(r: Request) -> RequestSpec {
        RequestSpec::Fixed(Box::new(r))
    }
}

/// One thing a worker does. Exchanges are named; names are unique within a case.
#[derive(Clone)]
pub enum Action {
    /// A whole exchange.
    Exchange {
        /// Its name.
        name: String,
        /// The request.
        request: RequestSpec,
        /// What the upstream does.
        upstream: Upstream,
    },
    /// The request side of an exchange (until forwarded or answered).
    Begin {
        /// Its name.
        name: String,
        /// The request.
        request: RequestSpec,
    },
    /// The rest of an exchange begun earlier on the same worker.
    Complete {
        /// The name given to [`Action::Begin`].
        name: String,
        /// What the upstream does.
        upstream: Upstream,
    },
    /// Moves the virtual clock (setup only: no stream may run meanwhile).
    Advance {
        /// Milliseconds.
        ms: u64,
    },
}

impl Action {
    /// A whole exchange.
    pub fn exchange(name: &str, request: impl Into<RequestSpec>, upstream: Upstream) -> Action {
        Action::Exchange {
            name: name.into(),
            request: request.into(),
            upstream,
        }
    }

    /// The request side of an exchange.
    pub fn begin(name: &str, request: impl Into<RequestSpec>) -> Action {
        Action::Begin {
            name: name.into(),
            request: request.into(),
        }
    }

    /// The rest of an exchange.
    pub fn complete(name: &str, upstream: Upstream) -> Action {
        Action::Complete {
            name: name.into(),
            upstream,
        }
    }
}

/// What every execution of a case ends with, for its check.
pub struct Outcome<'a> {
    /// Every exchange by name (setup and concurrent).
    pub exchanges: &'a BTreeMap<String, Exchange>,
    /// The ledger after every stream ended.
    pub ledger: &'a LedgerView,
    /// Metric values.
    pub metrics: &'a BTreeMap<String, u64>,
}

/// A case's own check of an execution's [`Outcome`]: `Err` says what is wrong.
pub type Check = Arc<dyn Fn(&Outcome<'_>) -> Result<(), String> + Send + Sync>;

/// Concurrent streams to explore.
#[derive(Clone)]
pub struct Case {
    /// Name (for reports).
    pub name: String,
    /// The plugin configuration.
    pub plugin_config: Vec<u8>,
    /// Seed of the random source.
    pub seed: u64,
    /// Run first, one after the other: (worker, action).
    pub setup: Vec<(usize, Action)>,
    /// Per worker, the actions it runs concurrently with the others (one thread and one VM
    /// per entry; at most 8).
    pub workers: Vec<Vec<Action>>,
    /// The case's check.
    pub check: Check,
}

/// How to explore.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// DPOR or every interleaving.
    pub search: Search,
    /// Scheduling points.
    pub points: Points,
    /// Give up beyond this many executions.
    pub max_executions: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            search: Search::Dpor,
            points: Points::Visible,
            max_executions: 100_000,
        }
    }
}

/// What an exploration did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The case.
    pub case: String,
    /// Workers running concurrently.
    pub workers: usize,
    /// The options.
    pub search: Search,
    /// The options.
    pub points: Points,
    /// Executions and interleavings.
    pub stats: Stats,
    /// Distinct end results (statuses of the concurrent exchanges and the ledger's attempt
    /// entries).
    pub distinct_outcomes: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} workers, {} interleavings explored ({} executions, {} sleep-blocked; \
             {:?} search at {:?} host calls, up to {} scheduled calls), {} distinct outcomes, {:.2} s",
            self.case,
            self.workers,
            self.stats.complete,
            self.stats.executions,
            self.stats.sleep_blocked,
            self.search,
            self.points,
            self.stats.longest,
            self.distinct_outcomes,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A violated check, with the interleaving that violates it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The case.
    pub case: String,
    /// What is wrong.
    pub message: String,
    /// The schedule: each scheduled host call as `w<N> <call>`, in order.
    pub schedule: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {}", self.case, self.message)?;
        if !self.schedule.is_empty() {
            writeln!(
                f,
                "interleaving ({} scheduled host calls):",
                self.schedule.len()
            )?;
            for (i, s) in self.schedule.iter().enumerate() {
                writeln!(f, "  {i:3} {s}")?;
            }
        }
        Ok(())
    }
}

/// Explores `case`: runs it once per interleaving the search chooses, checking each.
pub fn explore(rt: &Runtime, case: &Case, opts: Options) -> Result<Report, Failure> {
    let fail = |message: String| Failure {
        case: case.name.clone(),
        message,
        schedule: Vec::new(),
    };
    if case.workers.is_empty() || case.workers.len() > 8 {
        return Err(fail(format!(
            "a case needs 1 to 8 concurrent workers, not {}",
            case.workers.len()
        )));
    }
    run::validate(case).map_err(fail)?;
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeSet::new();
    let dependent =
        |a: &crate::sched::HostCall, b: &crate::sched::HostCall| a.access.dependent(&b.access);
    let stats = dpor::search(
        opts.search,
        &dependent,
        opts.max_executions,
        |chooser| {
            let r = run::execute(rt, case, opts.points, chooser)?;
            if let Some(sig) = r {
                outcomes.insert(sig);
                Ok(true)
            } else {
                Ok(false)
            }
        },
        |n| {
            fail(format!(
                "more than {n} executions: a smaller case, or raise max_executions"
            ))
        },
    )?;
    Ok(Report {
        case: case.name.clone(),
        workers: case.workers.len(),
        search: opts.search,
        points: opts.points,
        stats,
        distinct_outcomes: outcomes.len(),
        elapsed: started.elapsed(),
    })
}
