//! Decisions and records against a ledger that answers later (the cluster ledger on etcd).
//!
//! Each is a small, pure state machine: it asks for one [`LedgerOp`], is given the
//! [`OpResult`], and either asks again or is done — the same load / decide / conditional-write
//! loop as [`engine::decide_with_ledger`], cut where the request waits for the network. A first
//! attempt costs one round trip: the decision for "no earlier attempt" is made before anything
//! is read and written insert-if-absent; only when the key exists does the transaction's read
//! come back and the request decide again, conditional on the revision it read. Of N identical
//! requests on any number of replicas, exactly one insert succeeds.

use crate::config::{Config, Route};
use crate::confirm::Challenge;
use crate::engine::{self, Decision, Facts, MAX_LEDGER_ROUNDS};
use crate::etcd::{Current, LedgerOp, OpResult};
use crate::ledger::Entry;
use crate::policy::{flags, Outcome, ResponseFacts};

/// What a conversation wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Send this request and call back with its result.
    Ask(LedgerOp),
    /// Finished.
    Done(T),
}

/// A decision whose ledger write (if any) went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSettled {
    /// The decision.
    pub decision: Decision,
    /// The entry written and its revision, when the decision wrote one.
    pub written: Option<(Entry, i64)>,
}

/// One request's decision against the remote ledger.
#[derive(Clone, Debug)]
pub struct Deciding {
    key: String,
    lease: i64,
    rounds: usize,
    /// The decision whose write is in flight.
    proposed: Option<(Decision, Entry)>,
}

impl Deciding {
    /// Starts: decides as if no earlier attempt exists and asks to write that insert-if-absent
    /// (or, when that decision writes nothing, asks to read the key).
    pub fn start(
        config: &Config,
        route: &Route,
        facts: &Facts<'_>,
        key: String,
        lease: i64,
        new_challenge: &mut dyn FnMut() -> Challenge,
    ) -> (Deciding, Next<RemoteSettled>) {
        let mut d = Deciding {
            key,
            lease,
            rounds: 0,
            proposed: None,
        };
        let next = d.propose(config, route, facts, &Current::default(), new_challenge);
        (d, next)
    }

    /// The key this decision is about.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the write uses.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Continues with the answer to the last request.
    pub fn on_result(
        &mut self,
        config: &Config,
        route: &Route,
        facts: &Facts<'_>,
        result: OpResult,
        new_challenge: &mut dyn FnMut() -> Challenge,
    ) -> Next<RemoteSettled> {
        match result {
            OpResult::Written { revision } => match self.proposed.take() {
                Some((decision, entry)) => Next::Done(RemoteSettled {
                    decision,
                    written: Some((entry, revision)),
                }),
                // A write nobody proposed: decide from scratch on a read.
                None => Next::Ask(LedgerOp::Read {
                    key: self.key.clone(),
                }),
            },
            OpResult::Current(current) => {
                self.rounds += 1;
                if self.rounds > MAX_LEDGER_ROUNDS {
                    return Next::Done(RemoteSettled {
                        decision: engine::contention(route),
                        written: None,
                    });
                }
                self.propose(config, route, facts, &current, new_challenge)
            }
        }
    }

    fn propose(
        &mut self,
        config: &Config,
        route: &Route,
        facts: &Facts<'_>,
        current: &Current,
        new_challenge: &mut dyn FnMut() -> Challenge,
    ) -> Next<RemoteSettled> {
        let live = current
            .entry
            .as_ref()
            .filter(|e| e.is_live(facts.now_ms, config.window_seconds))
            .filter(|e| facts.fingerprint.is_some_and(|fp| fp.0 == e.id));
        let decision = engine::decide(config, route, facts, live, new_challenge);
        match decision.write.clone() {
            Some(entry) => {
                let op = LedgerOp::Put {
                    key: self.key.clone(),
                    expect: current.expect(),
                    entry: entry.clone(),
                    lease: self.lease,
                };
                self.proposed = Some((decision, entry));
                Next::Ask(op)
            }
            // The first round decided without reading: read before deciding for real.
            None if self.rounds == 0 => {
                self.proposed = None;
                Next::Ask(LedgerOp::Read {
                    key: self.key.clone(),
                })
            }
            None => Next::Done(RemoteSettled {
                decision,
                written: None,
            }),
        }
    }
}

/// An attempt's outcome, written to the remote ledger after the response (off the response's
/// path: the client does not wait for it).
#[derive(Clone, Debug)]
pub struct Recording {
    key: String,
    lease: i64,
    attempt: u32,
    response: ResponseFacts,
    rounds: usize,
    outcome: Option<Outcome>,
}

impl Recording {
    /// Starts from the entry this stream wrote and its revision: asks to write the outcome
    /// conditional on that revision; `Done(None)` when there is nothing to record.
    pub fn start(
        key: String,
        lease: i64,
        written: &Entry,
        revision: i64,
        attempt: u32,
        response: ResponseFacts,
    ) -> (Recording, Next<Option<Outcome>>) {
        let mut r = Recording {
            key,
            lease,
            attempt,
            response,
            rounds: 0,
            outcome: None,
        };
        let next = r.propose(&Current {
            entry: Some(written.clone()),
            revision: Some(revision),
        });
        (r, next)
    }

    /// The outcome this records (once proposed).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The response it records.
    pub fn response(&self) -> ResponseFacts {
        self.response
    }

    /// The attempt it records.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Continues with the answer to the last request: `Done(Some(outcome))` once written,
    /// `Done(None)` when the entry moved on (a later attempt, or it expired) or contention
    /// persisted.
    pub fn on_result(&mut self, result: OpResult) -> Next<Option<Outcome>> {
        match result {
            OpResult::Written { .. } => Next::Done(self.outcome),
            OpResult::Current(current) => {
                self.rounds += 1;
                if self.rounds > MAX_LEDGER_ROUNDS {
                    return Next::Done(None);
                }
                self.propose(&current)
            }
        }
    }

    fn propose(&mut self, current: &Current) -> Next<Option<Outcome>> {
        match engine::record_outcome(current.entry.as_ref(), self.attempt, self.response) {
            None => {
                self.outcome = None;
                Next::Done(None)
            }
            Some((entry, outcome)) => {
                self.outcome = Some(outcome);
                Next::Ask(LedgerOp::Put {
                    key: self.key.clone(),
                    expect: current.expect(),
                    entry,
                    lease: self.lease,
                })
            }
        }
    }
}

/// What the remote ledger remembers of a bearer credential: when it was first seen (its age
/// for `token_max_age_seconds`, the same on every replica) and which workload presented it
/// first: an insert-if-absent of a credential record, whose failure branch reads the record
/// that exists.
#[derive(Clone, Debug)]
pub struct Sighting {
    key: String,
    lease: i64,
    id: [u8; 32],
    /// Unix milliseconds.
    now_ms: u64,
    window_seconds: u64,
    holder: Option<String>,
    rounds: usize,
    seen: engine::CredentialSeen,
}

impl Sighting {
    /// Starts: asks to record the credential as first seen `now_ms` (by `holder`) unless a
    /// record exists.
    pub fn start(
        key: String,
        lease: i64,
        id: [u8; 32],
        now_ms: u64,
        window_seconds: u64,
        holder: Option<String>,
    ) -> (Sighting, Next<engine::CredentialSeen>) {
        let mut s = Sighting {
            key,
            lease,
            id,
            now_ms,
            window_seconds,
            holder,
            rounds: 0,
            seen: engine::CredentialSeen {
                first_seen: now_ms / 1000,
                shared_with: None,
            },
        };
        let next = s.propose(&Current::default());
        (s, next)
    }

    /// Continues with the answer: `Done(what the record says)`.
    pub fn on_result(&mut self, result: OpResult) -> Next<engine::CredentialSeen> {
        match result {
            OpResult::Written { .. } => Next::Done(self.seen.clone()),
            OpResult::Current(current) => {
                self.rounds += 1;
                if self.rounds > MAX_LEDGER_ROUNDS {
                    return Next::Done(self.seen.clone());
                }
                self.propose(&current)
            }
        }
    }

    fn propose(&mut self, current: &Current) -> Next<engine::CredentialSeen> {
        let live = current
            .entry
            .as_ref()
            .filter(|e| e.id == self.id && e.is_live(self.now_ms, self.window_seconds));
        self.seen = engine::credential_seen(live, self.now_ms, self.holder.as_deref());
        match engine::token_seen_update(
            live,
            self.id,
            self.now_ms,
            self.window_seconds,
            self.holder.as_deref(),
        ) {
            None => Next::Done(self.seen.clone()),
            Some(entry) => Next::Ask(LedgerOp::Put {
                key: self.key.clone(),
                expect: current.expect(),
                entry,
                lease: self.lease,
            }),
        }
    }
}

/// The response facts of an attempt that never went upstream because its stream ended while
/// it waited for the ledger (the client went away): recorded as `not_sent`.
pub const ABANDONED: ResponseFacts = ResponseFacts {
    status: 0,
    flags: flags::NOT_SENT,
    unchanged_state: false,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Verdict;
    use crate::etcd::Expect;
    use crate::fingerprint::{Fingerprint, KeyCheck};
    use serde_json::json;

    fn config() -> Config {
        Config::from_value(&json!({"routes": [{
            "name": "t", "match": {"path": "/t"}, "class": "token_issuing",
            "owner": "o", "escalation": "e"}]}))
        .unwrap()
    }

    struct Req {
        key: KeyCheck,
        fp: Fingerprint,
    }

    impl Req {
        fn new() -> Req {
            Req {
                key: KeyCheck::Absent,
                fp: Fingerprint([5; 32]),
            }
        }
        fn facts(&self, now: u64) -> Facts<'_> {
            Facts {
                now_ms: now * 1000,
                request_id: Some("r"),
                principal: "p",
                key: &self.key,
                fingerprint: Some(self.fp),
                body_digest: [1; 32],
                stale: None,
                confirmation: None,
                credential_holder: None,
                credential_shared_with: None,
                client_attempt: None,
                key_regenerated_ms: None,
            }
        }
    }

    fn chl() -> Challenge {
        [9; 16]
    }

    #[test]
    fn a_first_attempt_is_one_insert_if_absent() {
        let (cfg, req) = (config(), Req::new());
        let route = &cfg.routes[0];
        let (mut d, next) = Deciding::start(&cfg, route, &req.facts(1000), "k".into(), 7, &mut chl);
        let Next::Ask(LedgerOp::Put {
            expect,
            entry,
            lease,
            ..
        }) = next
        else {
            panic!("{next:?}")
        };
        assert_eq!((expect, lease, entry.attempts), (Expect::Absent, 7, 1));
        match d.on_result(
            &cfg,
            route,
            &req.facts(1000),
            OpResult::Written { revision: 3 },
            &mut chl,
        ) {
            Next::Done(s) => {
                assert_eq!(s.decision.verdict, Verdict::Allow);
                assert_eq!(
                    s.written.map(|(e, r)| (e.outcome, r)),
                    Some((Outcome::InFlight, 3))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_insert_decides_again_on_what_won() {
        let (cfg, req) = (config(), Req::new());
        let route = &cfg.routes[0];
        let (mut d, _) = Deciding::start(&cfg, route, &req.facts(1000), "k".into(), 7, &mut chl);
        // Another replica's attempt is in flight: 409, nothing written.
        let mut winner = engine::decide(&cfg, route, &req.facts(999), None, &mut chl)
            .write
            .unwrap();
        let current = Current {
            entry: Some(winner.clone()),
            revision: Some(11),
        };
        match d.on_result(
            &cfg,
            route,
            &req.facts(1000),
            OpResult::Current(current),
            &mut chl,
        ) {
            Next::Done(s) => {
                assert_eq!(s.decision.verdict, Verdict::Conflict);
                assert_eq!(s.written, None);
            }
            other => panic!("{other:?}"),
        }
        // It succeeded: a replay needs review: the 428's challenge is written conditional on
        // the revision read.
        winner.outcome = Outcome::Succeeded;
        winner.status = 200;
        let (mut d, _) = Deciding::start(&cfg, route, &req.facts(1001), "k".into(), 7, &mut chl);
        let next = d.on_result(
            &cfg,
            route,
            &req.facts(1001),
            OpResult::Current(Current {
                entry: Some(winner),
                revision: Some(12),
            }),
            &mut chl,
        );
        let Next::Ask(LedgerOp::Put { expect, entry, .. }) = next else {
            panic!("{next:?}")
        };
        assert_eq!(expect, Expect::Revision(12));
        assert_eq!(entry.challenge, Some([9; 16]));
        match d.on_result(
            &cfg,
            route,
            &req.facts(1001),
            OpResult::Written { revision: 13 },
            &mut chl,
        ) {
            Next::Done(s) => assert_eq!(s.decision.verdict, Verdict::Confirm),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_entry_counts_as_none_but_its_revision_is_the_condition() {
        let (cfg, req) = (config(), Req::new());
        let route = &cfg.routes[0];
        let old = engine::decide(&cfg, route, &req.facts(10), None, &mut chl)
            .write
            .unwrap();
        let (mut d, _) = Deciding::start(&cfg, route, &req.facts(5000), "k".into(), 7, &mut chl);
        let next = d.on_result(
            &cfg,
            route,
            &req.facts(5000),
            OpResult::Current(Current {
                entry: Some(old),
                revision: Some(4),
            }),
            &mut chl,
        );
        let Next::Ask(LedgerOp::Put { expect, entry, .. }) = next else {
            panic!("{next:?}")
        };
        assert_eq!((expect, entry.attempts), (Expect::Revision(4), 1));
    }

    #[test]
    fn persistent_contention_refuses_rather_than_risk_a_duplicate() {
        let (cfg, req) = (config(), Req::new());
        let route = &cfg.routes[0];
        let (mut d, _) = Deciding::start(&cfg, route, &req.facts(1000), "k".into(), 7, &mut chl);
        let mut last = None;
        for i in 0..=MAX_LEDGER_ROUNDS {
            // Each round the key vanished again (a racing delete): the write never lands.
            last = Some(d.on_result(
                &cfg,
                route,
                &req.facts(1000),
                OpResult::Current(Current {
                    entry: None,
                    revision: Some(i as i64 + 1),
                }),
                &mut chl,
            ));
        }
        match last {
            Some(Next::Done(s)) => assert_eq!(s.decision.reason, "ledger_contention"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_credential_is_first_seen_once_across_replicas() {
        let seen_at = |first_seen| engine::CredentialSeen {
            first_seen,
            shared_with: None,
        };
        // Nobody saw it: recorded now, with the workload that presented it.
        let wl = |s: &str| Some(format!("spiffe://test/{s}"));
        let (mut s, next) = Sighting::start("t".into(), 7, [8; 32], 1_000_000, 900, wl("a"));
        let Next::Ask(LedgerOp::Put { expect, entry, .. }) = next else {
            panic!("{next:?}")
        };
        assert_eq!((expect, entry.first_seen_ms), (Expect::Absent, 1_000_000));
        assert_eq!(entry.holder(), wl("a"));
        assert_eq!(
            s.on_result(OpResult::Written { revision: 2 }),
            Next::Done(seen_at(1000))
        );
        // Another replica saw it at 400: that is its first sighting, nothing to write (a
        // refresh only once a quarter of the window has passed since).
        let current = |seen: &Entry| {
            OpResult::Current(Current {
                entry: Some(seen.clone()),
                revision: Some(3),
            })
        };
        let mut seen = entry.clone();
        seen.first_seen_ms = 400_000;
        seen.last_attempt_ms = 450_000;
        let (mut s, _) = Sighting::start("t".into(), 7, [8; 32], 500_000, 900, wl("a"));
        assert_eq!(s.on_result(current(&seen)), Next::Done(seen_at(400)));
        // Another workload presents it: it learns who did first; the record keeps them.
        let (mut s, _) = Sighting::start("t".into(), 7, [8; 32], 500_000, 900, wl("b"));
        assert_eq!(
            s.on_result(current(&seen)),
            Next::Done(engine::CredentialSeen {
                first_seen: 400,
                shared_with: wl("a"),
            })
        );
        // A record without a holder (written over plain HTTP) gets this one's.
        let mut bare = seen.clone();
        bare.status = 0;
        let (mut s, _) = Sighting::start("t".into(), 7, [8; 32], 500_000, 900, wl("c"));
        let Next::Ask(LedgerOp::Put { entry, .. }) = s.on_result(current(&bare)) else {
            panic!("the holder is added")
        };
        assert_eq!(entry.holder(), wl("c"));
    }

    #[test]
    fn an_outcome_is_written_on_the_revision_of_the_attempt() {
        let (cfg, req) = (config(), Req::new());
        let route = &cfg.routes[0];
        let written = engine::decide(&cfg, route, &req.facts(10), None, &mut chl)
            .write
            .unwrap();
        let response = ResponseFacts {
            status: 503,
            flags: 0,
            unchanged_state: false,
        };
        let (mut r, next) = Recording::start("k".into(), 7, &written, 21, 1, response);
        let Next::Ask(LedgerOp::Put { expect, entry, .. }) = next else {
            panic!("{next:?}")
        };
        assert_eq!(
            (expect, entry.outcome),
            (Expect::Revision(21), Outcome::FailedUnknown)
        );
        assert_eq!(
            r.on_result(OpResult::Written { revision: 22 }),
            Next::Done(Some(Outcome::FailedUnknown))
        );
        // Another attempt took the entry over: nothing to record.
        let (mut r, _) = Recording::start("k".into(), 7, &written, 21, 1, response);
        let mut later = written.clone();
        later.attempts = 2;
        assert_eq!(
            r.on_result(OpResult::Current(Current {
                entry: Some(later),
                revision: Some(30)
            })),
            Next::Done(None)
        );
        // An abandoned attempt is recorded not_sent.
        let (r, _) = Recording::start("k".into(), 7, &written, 21, 1, ABANDONED);
        assert_eq!(r.outcome(), Some(Outcome::NotSent));
    }
}
