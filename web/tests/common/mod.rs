//! Test support shared by the comparison and browser tests: the filter module on host-sim and
//! the playground's session, fed the same calls, and what each decided.
#![allow(dead_code)] // Each test file uses a part.

use host_sim::{Exchange, Request, Runtime, Sim, SimConfig, Upstream};
use retry_guard_web::play::{Call, Session, Step, UpstreamSpec};
use serde_json::Value;

/// The release filter module (`just build`).
pub fn runtime() -> Runtime {
    let path = retry_guard::paths::release_wasm("retry_guard");
    Runtime::from_file(&path).unwrap_or_else(|e| panic!("{e} (build it: just build)"))
}

/// What one call came to, on either host: the facts that must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The client's status.
    pub status: u16,
    /// `wasm.retry_guard.decision`.
    pub decision: Option<String>,
    /// The decision line's members that do not depend on time or randomness.
    pub audit: Option<Value>,
    /// The outcome line's outcome and status.
    pub outcome: Option<Value>,
    /// The upstream received the call.
    pub upstream: bool,
}

const AUDIT_MEMBERS: &[&str] = &[
    "route",
    "class",
    "principal",
    "fingerprint",
    "key_present",
    "attempt",
    "previous_outcome",
    "previous_status",
    "decision",
    "policy",
    "reason",
    "token_action",
    "token_reason",
    "approver",
    "confirmation_error",
    "mode",
    "would_block",
];

fn pick(v: &Value, members: &[&str]) -> Value {
    Value::Object(
        members
            .iter()
            .map(|m| (m.to_string(), v.get(*m).cloned().unwrap_or(Value::Null)))
            .collect(),
    )
}

/// The request's one audit line; with `outcome`, only when it names an outcome.
fn lines<'a>(messages: impl Iterator<Item = &'a str>, outcome: bool) -> Option<Value> {
    messages
        .filter_map(|m| m.strip_prefix(retry_guard::audit::PREFIX))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .find(|v| !outcome || v.get("outcome").is_some_and(|o| !o.is_null()))
}

/// What host-sim's exchange came to.
pub fn decided_on_sim(ex: &Exchange) -> Decided {
    let messages = || ex.logs.iter().map(|l| l.message.as_str());
    Decided {
        status: ex.status,
        decision: ex
            .filter_state
            .iter()
            .find(|(k, _)| k.ends_with("retry_guard.decision"))
            .map(|(_, v)| v.clone()),
        audit: lines(messages(), false).map(|v| pick(&v, AUDIT_MEMBERS)),
        outcome: lines(messages(), true).map(|v| pick(&v, &["outcome", "status", "attempt"])),
        upstream: ex.upstream.is_some(),
    }
}

/// What the playground's step came to.
pub fn decided_in_play(s: &Step) -> Decided {
    Decided {
        status: s.answer.status.unwrap_or(0),
        decision: s.decision.clone(),
        audit: s.audit.as_ref().map(|v| pick(v, AUDIT_MEMBERS)),
        outcome: s
            .outcome
            .as_ref()
            .map(|v| pick(v, &["outcome", "status", "attempt"])),
        upstream: s.upstream.is_some(),
    }
}

/// A host-sim request and upstream as the playground's call.
pub fn call_of(req: &Request, up: &Upstream) -> Call {
    let upstream = match up {
        Upstream::Reply {
            status,
            headers,
            body,
            delay_ms,
        } => UpstreamSpec {
            status: Some(*status),
            headers: headers.clone(),
            body: String::from_utf8_lossy(body).into_owned(),
            delay_ms: *delay_ms,
            ..UpstreamSpec::default()
        },
        Upstream::ConnectionRefused => fail("connection_refused", 0),
        Upstream::NoHealthyUpstream => fail("no_healthy_upstream", 0),
        Upstream::Timeout => fail("timeout", 0),
        Upstream::Reset { delay_ms } => fail("reset", *delay_ms),
    };
    Call {
        method: req.method.clone(),
        path: req.path.clone(),
        authority: Some(req.authority.clone()),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&req.body.concat()).into_owned(),
        upstream,
        wait: 0,
        route_name: req.route_name.clone(),
        peer_identity: req.peer_identity.clone(),
        confirmation: None,
        note: None,
    }
}

fn fail(kind: &str, delay_ms: u64) -> UpstreamSpec {
    UpstreamSpec {
        fail: Some(kind.into()),
        delay_ms,
        ..UpstreamSpec::default()
    }
}

/// The playground's call as a host-sim request and upstream (no confirmation: sign it first).
pub fn request_of(c: &Call) -> (Request, Upstream) {
    let mut req = Request::new(&c.method, &c.path);
    if let Some(a) = &c.authority {
        req.authority = a.clone();
    }
    for (k, v) in &c.headers {
        req = req.header(k, v);
    }
    if !c.body.is_empty() {
        req = req.body(&c.body);
    }
    req.route_name = c.route_name.clone();
    req.peer_identity = c.peer_identity.clone();
    let u = &c.upstream;
    let upstream = match u.fail.as_deref() {
        Some("connection_refused") => Upstream::ConnectionRefused,
        Some("no_healthy_upstream") => Upstream::NoHealthyUpstream,
        Some("timeout") => Upstream::Timeout,
        Some(_) => Upstream::Reset {
            delay_ms: u.delay_ms,
        },
        None => {
            let mut headers = u.headers.clone();
            if u.unchanged {
                headers.push(("retry-guard-state".into(), "unchanged".into()));
            }
            Upstream::Reply {
                status: u.status.unwrap_or(200),
                headers,
                body: u.body.as_bytes().to_vec(),
                delay_ms: u.delay_ms,
            }
        }
    };
    (req, upstream)
}

/// A simulation of the filter with `config` from `start`.
pub fn sim(rt: &Runtime, config: &str, start: u64) -> Sim {
    Sim::new(
        rt,
        SimConfig {
            plugin_config: config.as_bytes().to_vec(),
            start_unix: start,
            ..SimConfig::default()
        },
    )
    .unwrap_or_else(|e| panic!("host-sim refused the configuration: {e}"))
}

/// Runs calls without confirmations on host-sim and in the playground; both results.
pub fn both(
    rt: &Runtime,
    config: &str,
    start: u64,
    calls: &[Call],
) -> (Vec<Decided>, Vec<Decided>) {
    let s = sim(rt, config, start);
    let session = Session::new(config, start).expect("the playground accepts the configuration");
    let mut on_sim = Vec::new();
    let mut in_play = Vec::new();
    for c in calls {
        assert!(c.confirmation.is_none(), "sign confirmations per host");
        s.advance_ms(c.wait * 1000);
        let (req, up) = request_of(c);
        on_sim.push(decided_on_sim(&s.request(&req, &up).expect("exchange")));
        in_play.push(decided_in_play(&session.call(c)));
    }
    (on_sim, in_play)
}
