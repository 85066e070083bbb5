//! The lost response (issue 19, part 2) on the real Envoy 1.40: a token call whose client goes
//! away before the whole response reached it is recorded `undelivered` (Envoy's response flag
//! `DC`, downstream connection termination), and its retry's 428 says so, so the approver
//! knows the token that was minted never reached the caller (and can revoke it).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use retry_guard::policy::flags::DOWNSTREAM_CONNECTION_TERMINATION;
use retry_guard_e2e::backend::Reply;
use retry_guard_e2e::client::request_head;
use serde_json::Value;

const CONFIRMATION_REQUIRED: &str = "urn:retry-guard:problem:confirmation-required";

/// Sends `req` on a raw connection and returns it, without reading the answer.
fn open(gw: &Gateway, req: &Req) -> TcpStream {
    let head = request_head(&req.method, &req.path, &headers_of(req), req.body.len());
    let mut conn = TcpStream::connect(gw.envoy.listener_addr()).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    conn.write_all(head.as_bytes()).expect("write head");
    conn.write_all(req.body.as_bytes()).expect("write body");
    conn
}

/// The audit line of `request_id` once it says `outcome`, waiting (bounded).
fn outcome_line(gw: &Gateway, request_id: &str, outcome: &str) -> Value {
    let recs = gw
        .audit_for(request_id, |r| r.iter().any(|x| x["outcome"] == outcome))
        .unwrap_or_else(|e| panic!("{e}"));
    recs.into_iter()
        .find(|x| x["outcome"] == outcome)
        .unwrap_or_default()
}

/// The retry of `req` is answered 428 naming the earlier attempt `undelivered`, and the
/// backend executed the call once.
fn assert_retry_says_undelivered(gw: &Gateway, req: &Req) {
    let retry = req.again("retry");
    let resp = gw.send(&retry).unwrap_or_else(|e| panic!("{e}"));
    let doc = check_problem(&resp, 428, CONFIRMATION_REQUIRED, &TOKEN, &retry.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doc["previous_outcome"], "undelivered", "{doc}");
    let d = gw
        .decision(&retry.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["reason"], "previous_undelivered", "{d}");
    assert_eq!(gw.upstream(&req.case).len(), 1, "executed once");
}

/// The client disconnects while the backend is still working on the token call.
#[test]
fn a_client_gone_before_the_answer_leaves_an_undelivered_attempt() {
    let gw = Gateway::start("undelivered-early", None, 2).unwrap_or_else(|e| panic!("{e}"));
    let case = "gone-early";
    gw.backend.on_case(
        case,
        Some(
            Reply::json(200, r#"{"access_token":"minted-but-lost"}"#)
                .delay(Duration::from_millis(1500)),
        ),
    );
    let req = TOKEN.request(case);
    let conn = open(&gw, &req);
    gw.backend
        .wait_for_case(case, 1, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    conn.shutdown(Shutdown::Both).ok();
    drop(conn);
    let line = outcome_line(&gw, &req.request_id, "undelivered");
    assert!(line["status"].is_null(), "no status was sent: {line}");
    let flags = line["response_flags"].as_u64().unwrap_or(0);
    assert_ne!(flags & DOWNSTREAM_CONNECTION_TERMINATION, 0, "DC: {line}");
    assert_retry_says_undelivered(&gw, &req);
}

/// The response headers reached the filter (the attempt is `succeeded`), then the client
/// closed the connection while a large body was still on its way: `undelivered`.
#[test]
fn a_client_gone_during_the_body_turns_succeeded_into_undelivered() {
    let gw = Gateway::start("undelivered-late", None, 2).unwrap_or_else(|e| panic!("{e}"));
    let case = "gone-late";
    gw.backend
        .on_case(case, Some(Reply::new(200).body(vec![b'x'; 16 << 20])));
    let req = TOKEN.request(case);
    let mut conn = open(&gw, &req);
    let mut head = Vec::new();
    let mut byte = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut byte).expect("read the response head");
        assert!(n > 0, "connection closed before the response head");
        head.extend_from_slice(&byte[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The head reached the client, so it passed the filter's response-headers step, which
    // recorded `succeeded`; the one audit line comes only when the stream ends.
    conn.shutdown(Shutdown::Both).ok();
    drop(conn);
    let line = outcome_line(&gw, &req.request_id, "undelivered");
    assert_eq!(line["status"], 200, "{line}");
    let lines = gw
        .audit_for(&req.request_id, |_| true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lines.len(), 1, "one audit line per request: {lines:?}");
    assert_retry_says_undelivered(&gw, &req);
}

/// A client that reads the whole answer leaves a `succeeded` attempt (the control case).
#[test]
fn a_client_that_reads_the_answer_leaves_a_succeeded_attempt() {
    let gw = Gateway::start("undelivered-control", None, 2).unwrap_or_else(|e| panic!("{e}"));
    let req = TOKEN.request("delivered");
    let resp = gw.send(&req).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 200);
    let retry = req.again("retry");
    let resp = gw.send(&retry).unwrap_or_else(|e| panic!("{e}"));
    let doc = check_problem(&resp, 428, CONFIRMATION_REQUIRED, &TOKEN, &retry.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doc["previous_outcome"], "succeeded", "{doc}");
}
