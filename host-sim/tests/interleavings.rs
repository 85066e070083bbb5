//! Every interleaving of the in-process ledger protocol (issue 17 part 3), on the real release
//! module: each worker's stream on its own thread and VM over one shared store, scheduled at
//! every host call that touches shared state, explored with DPOR and sleep sets
//! (`host_sim::explore`). Each test prints how many interleavings it explored; the figures are
//! in `host-sim/README.md` ("Every interleaving").

use std::sync::{Arc, OnceLock};

use host_sim::explore::{self, Action, Case, Observed, Options, Outcome, Points, Search};
use host_sim::tokens::{read_signing_key, Confirmation};
use host_sim::{Exchange, Request, Runtime, Upstream};
use retry_guard::ledger::WAYS;
use retry_guard::policy::Outcome as Recorded;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::from_file(&retry_guard::paths::filter_wasm())
            .expect("build the filter first: just build")
    })
}

/// A small ledger (one set per table with `max_entries: WAYS`) and two routes: the
/// sensitive token route (which records when an opaque bearer token is first seen) and a
/// non-sensitive idempotent write.
fn config(max_entries: u32) -> Vec<u8> {
    format!(
        r#"{{
  "max_entries": {max_entries},
  "window_seconds": 900,
  "principal": ["header:x-client-id"],
  "confirmation": {{
    "header": "retry-guard-confirmation",
    "max_ttl_seconds": 600,
    "keys": {{ "approvals-test": "uX8eW6DxEemuCaI/oNCq6KDo6Y8z5eww9v+3EFwvU0A=" }}
  }},
  "routes": [
    {{ "name": "oauth-token", "match": {{ "route_name": "token", "methods": ["POST"], "path": "/oauth/token" }},
       "class": "token_issuing", "owner": "team-iam", "escalation": "pagerduty:iam-primary",
       "token_max_age_seconds": 300 }},
    {{ "name": "orders", "match": {{ "methods": ["POST"], "path_prefix": "/v1/orders" }},
       "class": "idempotent_write", "owner": "team-shop", "escalation": "pagerduty:shop" }}
  ]
}}"#
    )
    .into_bytes()
}

fn token(body: &str) -> Request {
    Request::new("POST", "/oauth/token")
        .header("x-client-id", "ci-bot")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn order(n: u32) -> Request {
    Request::new("POST", "/v1/orders")
        .header("x-client-id", "shop-bot")
        .header("content-type", "application/json")
        .body(format!("{{\"order\":{n}}}"))
}

const GRANT: &str = "grant_type=client_credentials&client_id=ci-bot";

fn explore_case(case: &Case, opts: Options) -> explore::Report {
    match explore::explore(runtime(), case, opts) {
        Ok(r) => {
            println!("{r}");
            r
        }
        Err(f) => panic!("{f}"),
    }
}

fn forwarded<'a>(o: &'a Outcome<'_>, names: &[&str]) -> Vec<&'a str> {
    names
        .iter()
        .filter(|n| o.exchanges.get(**n).is_some_and(|e| e.upstream.is_some()))
        .map(|n| {
            o.exchanges
                .get_key_value(*n)
                .map_or("", |(k, _)| k.as_str())
        })
        .collect()
}

fn statuses(o: &Outcome<'_>, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n}={}", o.exchanges.get(*n).map_or(0, |e| e.status)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// No attempt entry is left in flight once every stream ended.
fn none_in_flight(o: &Outcome<'_>) -> Result<(), String> {
    match o
        .ledger
        .attempts
        .iter()
        .find(|e| e.outcome == Recorded::InFlight)
    {
        Some(e) => Err(format!(
            "an entry is left in_flight after every stream ended: attempts {}",
            e.attempts
        )),
        None => Ok(()),
    }
}

fn fingerprint(ex: &Exchange) -> Option<String> {
    host_sim::scenario::expect::audit_records(ex)
        .into_iter()
        .next()
        .and_then(|r| r["fingerprint"].as_str().map(str::to_string))
}

/// N workers send the same new token request at once: exactly one reaches the upstream, the
/// others are told it is in flight (409) or, once it succeeded, need a confirmation (428);
/// its outcome is recorded.
fn same_new_request(workers: usize) -> Case {
    let names: Vec<String> = (0..workers).map(|w| format!("r{w}")).collect();
    let names2 = names.clone();
    Case {
        name: format!("{workers} workers, same new request"),
        plugin_config: config(16),
        seed: 7,
        setup: Vec::new(),
        workers: names
            .iter()
            .map(|n| vec![Action::exchange(n, token(GRANT), Upstream::ok())])
            .collect(),
        check: Arc::new(move |o| {
            let names: Vec<&str> = names2.iter().map(String::as_str).collect();
            let fwd = forwarded(o, &names);
            if fwd.len() != 1 {
                return Err(format!(
                    "{} requests allowed, expected exactly one ({})",
                    fwd.len(),
                    statuses(o, &names)
                ));
            }
            for n in &names {
                let e = &o.exchanges[*n];
                // 409 while the allowed one is in flight, 428 once it succeeded.
                if e.upstream.is_none() && !matches!(e.status, 409 | 428) {
                    return Err(format!("{n}: got {}, expected 409 or 428", e.status));
                }
            }
            none_in_flight(o)?;
            let fp = fingerprint(&o.exchanges[fwd[0]]).ok_or("no fingerprint")?;
            match o.ledger.attempt(&fp) {
                Some(e) if e.attempts == 1 && e.outcome == Recorded::Succeeded => Ok(()),
                other => Err(format!(
                    "ledger entry: {other:?}, expected 1 attempt, succeeded"
                )),
            }
        }),
    }
}

#[test]
fn two_workers_same_new_request_exactly_one_allowed() {
    let r = explore_case(&same_new_request(2), Options::default());
    assert!(r.stats.complete >= 2, "{r}");
}

#[test]
fn three_workers_same_new_request_exactly_one_allowed() {
    let r = explore_case(&same_new_request(3), Options::default());
    assert!(r.stats.complete >= 6, "{r}");
}

/// The reduction is exact: scheduling at every host call explores the same interleavings as
/// scheduling at the visible ones, and every interleaving of the visible calls reaches no
/// other end result than DPOR's.
#[test]
fn the_reduction_loses_no_outcome() {
    let case = same_new_request(2);
    let visible = explore_case(&case, Options::default());
    let every = explore_case(
        &case,
        Options {
            points: Points::Every,
            ..Options::default()
        },
    );
    assert_eq!(visible.stats.complete, every.stats.complete);
    assert_eq!(visible.distinct_outcomes, every.distinct_outcomes);
    let all = explore_case(
        &case,
        Options {
            search: Search::Exhaustive,
            ..Options::default()
        },
    );
    assert!(
        all.stats.complete > visible.stats.complete,
        "{all} vs {visible}"
    );
    assert_eq!(all.distinct_outcomes, visible.distinct_outcomes);
}

/// A first attempt is in flight on worker 0; its response (the outcome write) races a replay
/// on worker 1. The replay never reaches the upstream (409 while in flight, 428 after), and
/// the outcome is never lost: the entry ends `upstream_outcome`, 1 attempt, with the replay's
/// challenge kept when it got one.
fn replay_races_outcome(upstream: Upstream, recorded: Recorded, label: &str) -> Case {
    Case {
        name: format!("replay racing the first attempt's outcome write ({label})"),
        plugin_config: config(16),
        seed: 11,
        setup: vec![(0, Action::begin("first", token(GRANT)))],
        workers: vec![
            vec![Action::complete("first", upstream)],
            vec![Action::exchange("replay", token(GRANT), Upstream::ok())],
        ],
        check: Arc::new(move |o| {
            let first = &o.exchanges["first"];
            let replay = &o.exchanges["replay"];
            if first.upstream.is_none() {
                return Err("the first attempt did not reach the upstream".into());
            }
            if replay.upstream.is_some() || !matches!(replay.status, 409 | 428) {
                return Err(format!(
                    "the replay got {} (forwarded: {}), expected 409 or 428",
                    replay.status,
                    replay.upstream.is_some()
                ));
            }
            none_in_flight(o)?;
            let fp = fingerprint(first).ok_or("no fingerprint")?;
            let e = o.ledger.attempt(&fp).ok_or("the entry is gone")?;
            if e.attempts != 1 || e.outcome != recorded {
                return Err(format!(
                    "lost outcome: the entry has {} attempt(s), {}; expected 1, {}",
                    e.attempts,
                    e.outcome.name(),
                    recorded.name()
                ));
            }
            if replay.status == 428 && e.challenge.is_none() {
                return Err("the replay's challenge is not in the ledger".into());
            }
            Ok(())
        }),
    }
}

#[test]
fn replay_racing_the_outcome_write_never_loses_it() {
    explore_case(
        &replay_races_outcome(Upstream::ok(), Recorded::Succeeded, "200"),
        Options::default(),
    );
    let unknown = Upstream::Reply {
        status: 503,
        headers: Vec::new(),
        body: Vec::new(),
        delay_ms: 0,
    };
    explore_case(
        &replay_races_outcome(unknown, Recorded::FailedUnknown, "503"),
        Options::default(),
    );
}

/// A connection failure is retry-safe: the replay may pass, but only after the outcome is
/// recorded, and then it is the entry's second attempt.
#[test]
fn replay_after_a_connection_failure_passes_only_once_it_is_recorded() {
    let case = Case {
        name: "replay racing a not_sent outcome write".into(),
        plugin_config: config(16),
        seed: 13,
        setup: vec![(0, Action::begin("first", token(GRANT)))],
        workers: vec![
            vec![Action::complete("first", Upstream::ConnectionRefused)],
            vec![Action::exchange("replay", token(GRANT), Upstream::ok())],
        ],
        check: Arc::new(|o| {
            let replay = &o.exchanges["replay"];
            none_in_flight(o)?;
            let fp = fingerprint(&o.exchanges["first"]).ok_or("no fingerprint")?;
            let e = o.ledger.attempt(&fp).ok_or("the entry is gone")?;
            match (replay.upstream.is_some(), replay.status) {
                (true, 200) if e.attempts == 2 && e.outcome == Recorded::Succeeded => Ok(()),
                (false, 409) if e.attempts == 1 && e.outcome == Recorded::NotSent => Ok(()),
                (f, s) => Err(format!(
                    "replay {s} (forwarded {f}) with the entry at {} attempt(s), {}",
                    e.attempts,
                    e.outcome.name()
                )),
            }
        }),
    };
    explore_case(&case, Options::default());
}

/// A signed confirmation for `from`'s 428.
fn confirmed(from: &'static str) -> explore::RequestSpec {
    explore::RequestSpec::Built(Arc::new(move |seen: &Observed<'_>| {
        let ex = seen.exchanges.get(from).ok_or("no 428 to confirm")?;
        let doc = ex.json().ok_or("the 428 is not JSON")?;
        let text = |k: &str| doc[k].as_str().map(str::to_string).ok_or(format!("no {k}"));
        let key = read_signing_key(
            &retry_guard::paths::repo_root().join("testdata/keys/approvals-test.key"),
        )?;
        let now = seen.now_unix as i64;
        let c = Confirmation {
            kid: "approvals-test".into(),
            chl: text("challenge")?,
            fp: text("fingerprint")?,
            sub: "alice@example.com".into(),
            iat: now,
            exp: now + 300,
        };
        Ok(token(GRANT).header("retry-guard-confirmation", c.sign(&key)))
    }))
}

/// Two workers present the same signed confirmation at once: exactly one is accepted and
/// reaches the upstream; the other is refused (409 in flight, or 428 already used).
#[test]
fn the_same_confirmation_is_accepted_once() {
    let case = Case {
        name: "two workers presenting the same confirmation".into(),
        plugin_config: config(16),
        seed: 17,
        setup: vec![
            (0, Action::exchange("first", token(GRANT), Upstream::ok())),
            (1, Action::exchange("replay", token(GRANT), Upstream::ok())),
        ],
        workers: vec![
            vec![Action::exchange(
                "confirm0",
                confirmed("replay"),
                Upstream::ok(),
            )],
            vec![Action::exchange(
                "confirm1",
                confirmed("replay"),
                Upstream::ok(),
            )],
        ],
        check: Arc::new(|o| {
            if o.exchanges["replay"].status != 428 {
                return Err("setup: the replay did not get its 428".into());
            }
            let names = ["confirm0", "confirm1"];
            let fwd = forwarded(o, &names);
            if fwd.len() != 1 {
                return Err(format!(
                    "{} confirmations accepted, expected one ({})",
                    fwd.len(),
                    statuses(o, &names)
                ));
            }
            let other = names.iter().find(|n| **n != fwd[0]).copied().unwrap_or("");
            let refused = &o.exchanges[other];
            if !matches!(refused.status, 409 | 428) {
                return Err(format!(
                    "{other}: got {}, expected 409 or 428",
                    refused.status
                ));
            }
            none_in_flight(o)?;
            let fp = fingerprint(&o.exchanges["first"]).ok_or("no fingerprint")?;
            let e = o.ledger.attempt(&fp).ok_or("the entry is gone")?;
            if e.attempts != 2 || e.outcome != Recorded::Succeeded || e.consumed.is_none() {
                return Err(format!(
                    "the entry has {} attempt(s), {}, consumed {:?}; expected 2, succeeded, the challenge",
                    e.attempts,
                    e.outcome.name(),
                    e.consumed
                ));
            }
            Ok(())
        }),
    };
    explore_case(&case, Options::default());
}

/// One set per table, full: an in-flight sensitive token call (worker 0) and WAYS - 1
/// completed orders. Worker 0 records the token call's outcome while worker 1 sends a new
/// request that needs room: it evicts the oldest order, never the token call, and the
/// outcome is never lost.
fn eviction_case(newcomer: Request, label: &str) -> Case {
    let mut setup = vec![(0, Action::begin("token", token(GRANT)))];
    for n in 1..WAYS as u32 {
        setup.push((1, Action::Advance { ms: 1_000 }));
        setup.push((
            1,
            Action::exchange(&format!("order{n}"), order(n), Upstream::ok()),
        ));
    }
    setup.push((1, Action::Advance { ms: 1_000 }));
    Case {
        name: format!("eviction in a full set while another worker updates an entry ({label})"),
        plugin_config: config(WAYS as u32),
        seed: 19,
        setup,
        workers: vec![
            vec![Action::complete("token", Upstream::ok())],
            vec![Action::exchange("newcomer", newcomer, Upstream::ok())],
        ],
        check: Arc::new(|o| {
            let newcomer = &o.exchanges["newcomer"];
            if newcomer.upstream.is_none() {
                return Err(format!(
                    "the newcomer was not let through: {}",
                    newcomer.status
                ));
            }
            none_in_flight(o)?;
            let fp = fingerprint(&o.exchanges["token"]).ok_or("no fingerprint")?;
            let e = o
                .ledger
                .attempt(&fp)
                .ok_or("the token call's entry was evicted")?;
            if e.outcome != Recorded::Succeeded || e.attempts != 1 {
                return Err(format!(
                    "lost outcome: the token entry has {} attempt(s), {}",
                    e.attempts,
                    e.outcome.name()
                ));
            }
            let order1 = fingerprint(&o.exchanges["order1"]).ok_or("no fingerprint")?;
            if o.ledger.attempt(&order1).is_some() {
                return Err("the oldest order was not the one evicted".into());
            }
            let nfp = fingerprint(newcomer).ok_or("no fingerprint")?;
            if o.ledger.attempt(&nfp).is_none() || o.ledger.attempts.len() != WAYS {
                return Err(format!(
                    "the set holds {} entries, the newcomer's {}",
                    o.ledger.attempts.len(),
                    if o.ledger.attempt(&nfp).is_some() {
                        "among them"
                    } else {
                        "missing"
                    }
                ));
            }
            if o.metrics.get("retry_guard.ledger.evicted") != Some(&1) {
                return Err(format!(
                    "evicted counter {:?}, expected 1",
                    o.metrics.get("retry_guard.ledger.evicted")
                ));
            }
            Ok(())
        }),
    }
}

#[test]
fn eviction_in_a_full_set_never_evicts_or_loses_a_live_entry() {
    explore_case(
        &eviction_case(order(WAYS as u32), "a new order"),
        Options::default(),
    );
    explore_case(
        &eviction_case(
            token("grant_type=client_credentials&client_id=other"),
            "a new token call",
        ),
        Options::default(),
    );
}

/// Two workers send the same new token request with the same opaque bearer token: both
/// record the token's first sighting (the token table) and race for the attempt (the
/// attempts table). Exactly one is allowed, and the token table holds one record.
#[test]
fn same_request_with_a_new_opaque_token_one_allowed_one_token_record() {
    let req = token(GRANT).header("authorization", "Bearer opaque-token-1");
    let case = Case {
        name: "2 workers, same new request with a new opaque token".into(),
        plugin_config: config(16),
        seed: 23,
        setup: Vec::new(),
        workers: vec![
            vec![Action::exchange("r0", req.clone(), Upstream::ok())],
            vec![Action::exchange("r1", req, Upstream::ok())],
        ],
        check: Arc::new(|o| {
            let names = ["r0", "r1"];
            let fwd = forwarded(o, &names);
            if fwd.len() != 1 {
                return Err(format!("{} allowed ({})", fwd.len(), statuses(o, &names)));
            }
            none_in_flight(o)?;
            if o.ledger.tokens.len() != 1 {
                return Err(format!(
                    "{} token records, expected one",
                    o.ledger.tokens.len()
                ));
            }
            Ok(())
        }),
    };
    explore_case(&case, Options::default());
}
