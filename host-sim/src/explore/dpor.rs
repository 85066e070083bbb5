//! Stateless search over the interleavings of a few threads: dynamic partial-order reduction
//! with sleep sets (Flanagan and Godefroid, "Dynamic partial-order reduction for model
//! checking software", POPL 2005, figure 4 plus sleep sets), or every interleaving.
//!
//! The system under search is re-run from its initial state for each execution; at each state
//! it asks a [`Chooser`] which thread moves next, given every enabled thread and the operation
//! it will do. Determinism is required (the same choices give the same states) and checked:
//! a replayed prefix that offers other threads or operations is an error.
//!
//! **Why the reduction is sound.** Two executions that differ only by swapping adjacent
//! independent operations of different threads (a Mazurkiewicz trace) leave every thread
//! with the same observations and the system in the same state. DPOR explores at least one
//! execution of every trace that ends in a final state: at each new state, for each thread's
//! next operation, it finds the latest earlier operation it races with (dependent, another
//! thread, not ordered before it by happens-before) and schedules the thread there too. Sleep
//! sets then skip a thread whose next operation was already explored from an equivalent
//! state; an execution where every enabled thread sleeps is cut short ("sleep-blocked"): its
//! continuations are covered elsewhere. Both are proved sound for safety properties checked
//! on final states in the paper. Threads here are never disabled by another thread (they only
//! end), which the backtracking relies on; `dependent` must be symmetric and say "true" for
//! any two operations that may not commute.

use std::collections::BTreeSet;

/// How the search chooses which interleavings to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Dynamic partial-order reduction with sleep sets: one execution (or a few) per
    /// equivalence class of interleavings.
    Dpor,
    /// Every interleaving of the operations (no reduction): to cross-check [`Search::Dpor`]
    /// on small cases.
    Exhaustive,
}

/// What a running execution asks at every state.
pub trait Chooser<Op> {
    /// The thread to move next, among `enabled` (thread, next operation) pairs (sorted by
    /// thread, non-empty); `None` to stop this execution (it adds nothing new).
    fn choose(&mut self, enabled: &[(usize, Op)]) -> Result<Option<usize>, String>;
}

/// Counts of a finished search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Executions run in all.
    pub executions: u64,
    /// Executions that ran to their end (each a distinct interleaving).
    pub complete: u64,
    /// Executions cut short because every enabled thread was asleep.
    pub sleep_blocked: u64,
    /// The most operations one execution scheduled.
    pub longest: usize,
}

struct Node<Op> {
    enabled: Vec<(usize, Op)>,
    backtrack: BTreeSet<usize>,
    done: BTreeSet<usize>,
    sleep: Vec<(usize, Op)>,
    chosen: usize,
}

impl<Op> Node<Op> {
    fn op_of(&self, t: usize) -> Option<&Op> {
        self.enabled.iter().find(|(u, _)| *u == t).map(|(_, o)| o)
    }
}

/// The search state that persists across executions.
struct Tree<'d, Op> {
    dependent: &'d dyn Fn(&Op, &Op) -> bool,
    search: Search,
    stack: Vec<Node<Op>>,
    /// Position in the current execution.
    pos: usize,
    /// Vector clock of each executed step of the current execution.
    clocks: Vec<Vec<u32>>,
    /// Vector clock of each thread (its last step) in the current execution.
    thread_clock: Vec<Vec<u32>>,
    blocked: bool,
}

impl<Op: Clone + PartialEq + std::fmt::Debug> Tree<'_, Op> {
    fn begin(&mut self) {
        self.pos = 0;
        self.clocks.clear();
        self.thread_clock.clear();
        self.blocked = false;
    }

    fn clock_of(&mut self, t: usize) -> &mut Vec<u32> {
        if self.thread_clock.len() <= t {
            self.thread_clock.resize(t + 1, Vec::new());
        }
        &mut self.thread_clock[t]
    }

    /// Records step `pos` (thread `t` doing `op`) in the vector clocks.
    fn advance(&mut self, t: usize, op: &Op) {
        let mut c = self.clock_of(t).clone();
        for (k, node) in self.stack[..self.pos].iter().enumerate() {
            let u = node.chosen;
            if u != t && node.op_of(u).is_some_and(|o| (self.dependent)(o, op)) {
                let other = &self.clocks[k];
                if c.len() < other.len() {
                    c.resize(other.len(), 0);
                }
                for (a, b) in c.iter_mut().zip(other) {
                    *a = (*a).max(*b);
                }
            }
        }
        if c.len() <= t {
            c.resize(t + 1, 0);
        }
        c[t] += 1;
        self.clocks.push(c.clone());
        *self.clock_of(t) = c;
        self.pos += 1;
    }

    /// Step `i` happens before thread `t`'s next step.
    fn happens_before(&self, i: usize, t: usize) -> bool {
        let u = self.stack[i].chosen;
        let own = self.clocks[i].get(u).copied().unwrap_or(0);
        self.thread_clock
            .get(t)
            .and_then(|c| c.get(u))
            .is_some_and(|&seen| own <= seen)
    }

    /// FG05's race analysis at a newly reached state.
    fn add_backtracks(&mut self, enabled: &[(usize, Op)]) {
        for (p, op) in enabled {
            let race = (0..self.pos).rev().find(|&i| {
                let n = &self.stack[i];
                n.chosen != *p
                    && n.op_of(n.chosen).is_some_and(|o| (self.dependent)(o, op))
                    && !self.happens_before(i, *p)
            });
            if let Some(i) = race {
                let n = &mut self.stack[i];
                if n.op_of(*p).is_some() {
                    n.backtrack.insert(*p);
                } else {
                    let all: Vec<usize> = n.enabled.iter().map(|(u, _)| *u).collect();
                    n.backtrack.extend(all);
                }
            }
        }
    }

    /// Sets up the next execution; false when the search is over.
    fn next_branch(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            // The branch just explored goes to sleep for its siblings.
            if let Some(op) = top.op_of(top.chosen).cloned() {
                if !top.sleep.iter().any(|(u, _)| *u == top.chosen) {
                    top.sleep.push((top.chosen, op));
                }
            }
            let next = top
                .backtrack
                .iter()
                .copied()
                .find(|t| !top.done.contains(t) && !top.sleep.iter().any(|(u, _)| u == t));
            match next {
                Some(t) => {
                    top.done.insert(t);
                    top.chosen = t;
                    return true;
                }
                None => {
                    self.stack.pop();
                }
            }
        }
        false
    }
}

impl<Op: Clone + PartialEq + std::fmt::Debug> Chooser<Op> for Tree<'_, Op> {
    fn choose(&mut self, enabled: &[(usize, Op)]) -> Result<Option<usize>, String> {
        if self.pos < self.stack.len() {
            let node = &self.stack[self.pos];
            if node.enabled != enabled {
                return Err(format!(
                    "the system is not deterministic: at step {} a replay offered {enabled:?}, \
                     the first run {:?}",
                    self.pos, node.enabled
                ));
            }
            let t = node.chosen;
            let op = node.op_of(t).cloned().ok_or("chosen thread not enabled")?;
            self.advance(t, &op);
            return Ok(Some(t));
        }
        // A new state.
        let sleep: Vec<(usize, Op)> = match (self.search, self.stack.last()) {
            (Search::Dpor, Some(parent)) => {
                let op = parent
                    .op_of(parent.chosen)
                    .ok_or("chosen thread not enabled")?;
                parent
                    .sleep
                    .iter()
                    .filter(|(u, o)| *u != parent.chosen && !(self.dependent)(o, op))
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        let awake = enabled
            .iter()
            .find(|(t, _)| !sleep.iter().any(|(u, _)| u == t));
        let mut node = Node {
            enabled: enabled.to_vec(),
            backtrack: BTreeSet::new(),
            done: BTreeSet::new(),
            sleep,
            chosen: 0,
        };
        if self.search == Search::Exhaustive {
            node.backtrack = enabled.iter().map(|(t, _)| *t).collect();
        } else {
            self.add_backtracks(enabled);
        }
        let Some((t, op)) = awake.cloned() else {
            self.blocked = true;
            return Ok(None);
        };
        node.backtrack.insert(t);
        node.done.insert(t);
        node.chosen = t;
        self.stack.push(node);
        self.advance(t, &op);
        Ok(Some(t))
    }
}

/// Runs `execute` once per explored interleaving: each call must start the system afresh and
/// ask the chooser at every state until it ends (or the chooser says stop) and return
/// `Ok(true)` when it ran to its end, `Ok(false)` when the chooser stopped it; an `Err` (a
/// failed check, a broken system) ends the search. At most `max_executions` are run (an
/// error beyond).
pub fn search<Op, E>(
    search: Search,
    dependent: &dyn Fn(&Op, &Op) -> bool,
    max_executions: u64,
    mut execute: impl FnMut(&mut dyn Chooser<Op>) -> Result<bool, E>,
    too_many: impl Fn(u64) -> E,
) -> Result<Stats, E>
where
    Op: Clone + PartialEq + std::fmt::Debug,
{
    let mut tree = Tree {
        dependent,
        search,
        stack: Vec::new(),
        pos: 0,
        clocks: Vec::new(),
        thread_clock: Vec::new(),
        blocked: false,
    };
    let mut stats = Stats::default();
    loop {
        if stats.executions >= max_executions {
            return Err(too_many(stats.executions));
        }
        tree.begin();
        let finished = execute(&mut tree)?;
        stats.executions += 1;
        stats.longest = stats.longest.max(tree.pos);
        if finished && !tree.blocked {
            stats.complete += 1;
        } else {
            stats.sleep_blocked += 1;
        }
        if !tree.next_branch() {
            return Ok(stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A toy system: threads run straight-line programs of reads and writes on variables;
    /// a read's value goes into the thread's local sum. The final state is the variables plus
    /// every thread's sum.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Op {
        Read(usize),
        Write(usize, i64),
        Add(usize, i64),
        Local,
    }

    fn dep(a: &Op, b: &Op) -> bool {
        let var = |o: &Op| match o {
            Op::Read(v) | Op::Write(v, _) | Op::Add(v, _) => Some(*v),
            Op::Local => None,
        };
        match (var(a), var(b)) {
            (Some(x), Some(y)) if x == y => !matches!(
                (a, b),
                (Op::Read(_), Op::Read(_)) | (Op::Add(..), Op::Add(..))
            ),
            _ => false,
        }
    }

    fn run(
        progs: &[Vec<Op>],
        vars: usize,
        c: &mut dyn Chooser<Op>,
        seen: &mut BTreeSet<Vec<i64>>,
    ) -> Result<bool, String> {
        let mut pc = vec![0; progs.len()];
        let mut mem = vec![0i64; vars];
        let mut sums = vec![0i64; progs.len()];
        loop {
            let enabled: Vec<(usize, Op)> = progs
                .iter()
                .enumerate()
                .filter_map(|(t, p)| p.get(pc[t]).map(|o| (t, *o)))
                .collect();
            if enabled.is_empty() {
                let mut state = mem.clone();
                state.extend(&sums);
                seen.insert(state);
                return Ok(true);
            }
            let Some(t) = c.choose(&enabled)? else {
                return Ok(false);
            };
            match progs[t][pc[t]] {
                Op::Read(v) => sums[t] = sums[t] * 10 + mem[v],
                Op::Write(v, x) => mem[v] = x,
                Op::Add(v, x) => mem[v] += x,
                Op::Local => {}
            }
            pc[t] += 1;
        }
    }

    fn both(progs: &[Vec<Op>], vars: usize) -> (Stats, Stats, usize) {
        let mut all = BTreeSet::new();
        let ex = search(
            Search::Exhaustive,
            &dep,
            1_000_000,
            |c| run(progs, vars, c, &mut all),
            |n| format!("{n}"),
        )
        .expect("exhaustive");
        let mut reduced = BTreeSet::new();
        let dp = search(
            Search::Dpor,
            &dep,
            1_000_000,
            |c| run(progs, vars, c, &mut reduced),
            |n| format!("{n}"),
        )
        .expect("dpor");
        assert_eq!(all, reduced, "DPOR must reach every final state");
        (ex, dp, all.len())
    }

    #[test]
    fn independent_threads_need_one_interleaving() {
        let progs = vec![
            vec![Op::Write(0, 1), Op::Local, Op::Read(0)],
            vec![Op::Write(1, 2), Op::Read(1), Op::Local],
        ];
        let (ex, dp, states) = both(&progs, 2);
        assert_eq!(ex.complete, 20); // 6! / (3! 3!)
        assert_eq!((dp.complete, states), (1, 1));
    }

    #[test]
    fn a_check_then_write_race_is_found_in_every_outcome() {
        // Both threads read x then write it: the classic lost update.
        let t = |x| vec![Op::Read(0), Op::Local, Op::Write(0, x), Op::Read(0)];
        let (ex, dp, states) = both(&[t(1), t(2)], 1);
        assert!(dp.complete < ex.complete, "{dp:?} vs {ex:?}");
        assert!(states > 2);
    }

    #[test]
    fn three_threads_with_commuting_adds_and_conflicting_writes() {
        let progs = vec![
            vec![Op::Add(0, 1), Op::Read(1), Op::Write(1, 5)],
            vec![Op::Add(0, 2), Op::Write(1, 7), Op::Read(0)],
            vec![Op::Read(1), Op::Add(0, 3), Op::Read(2), Op::Write(2, 1)],
        ];
        let (ex, dp, _) = both(&progs, 3);
        assert!(dp.complete * 5 < ex.complete, "{dp:?} vs {ex:?}");
    }

    #[test]
    fn nondeterminism_is_reported() {
        let mut flip = false;
        let r = search(
            Search::Exhaustive,
            &dep,
            100,
            |c| {
                flip = !flip;
                let op = if flip { Op::Read(0) } else { Op::Write(0, 1) };
                let e = [(0, op), (1, Op::Read(0))];
                c.choose(&e)?;
                Ok::<bool, String>(true)
            },
            |n| format!("{n}"),
        );
        assert!(r.unwrap_err().contains("not deterministic"));
    }
}
