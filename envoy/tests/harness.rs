//! Proves the harness itself against a real Envoy without the wasm filter: the bootstrap
//! validates, requests go through Envoy to the scripted backend and are recorded as sent, and the
//! token route's retry policy re-sends only attempts the upstream never received.
//!
//! Needs the pinned Envoy (`just envoy-install`); fails with that hint when it is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use retry_guard_e2e::backend::{Backend, Reply};
use retry_guard_e2e::client;
use retry_guard_e2e::envoy::{check_envoy, check_wasm, Envoy};
use retry_guard_e2e::Result;

fn plain_envoy(name: &str, backend: SocketAddr) -> Result<Envoy> {
    Envoy::builder(name, backend).concurrency(1).start()
}

#[test]
fn filterless_bootstrap_validates() -> Result<()> {
    let backend = Backend::start()?;
    let out = Envoy::builder("validate-plain", backend.addr()).validate()?;
    assert!(out.contains("OK"), "validate output: {out}");
    Ok(())
}

#[test]
fn request_goes_through_envoy_to_the_backend() -> Result<()> {
    let backend = Backend::start()?;
    let envoy = plain_envoy("harness-basic", backend.addr())?;
    let resp = envoy.send(
        "POST",
        "/oauth/token?x=1",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-client-id", "ci-bot"),
            ("x-request-id", "harness-req-1"),
        ],
        b"grant_type=client_credentials",
    )?;
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.json()?, serde_json::json!({"ok": true, "seq": 1}));
    assert_eq!(resp.header("content-type"), Some("application/json"));

    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/oauth/token?x=1");
    assert_eq!(r.body_text(), "grant_type=client_credentials");
    assert_eq!(r.header("x-client-id"), Some("ci-bot"));
    assert_eq!(r.header("X-Client-Id"), Some("ci-bot"));
    // Envoy keeps a client-supplied x-request-id with this bootstrap (the filter's problem
    // documents echo it as request_id).
    assert_eq!(r.header("x-request-id"), Some("harness-req-1"));
    assert!(r.headers.iter().all(|(k, _)| *k == k.to_ascii_lowercase()));

    // The access log names the route; with no filter the decision is absent.
    let log = envoy.wait_for_access_log(1, Duration::from_secs(5))?;
    assert_eq!(log[0]["route"], "token", "{log:?}");
    assert_eq!(log[0]["path"], "/oauth/token?x=1");
    assert_eq!(log[0]["request_id"], "harness-req-1");
    assert!(log[0]["decision"].is_null(), "{log:?}");

    // Other paths take the catch-all route.
    let other = envoy.send("GET", "/health", &[], b"")?;
    assert_eq!(other.status, 200);
    let log = envoy.wait_for_access_log(2, Duration::from_secs(5))?;
    assert_eq!(log[1]["route"], "catch_all", "{log:?}");

    // Info logging reaches the log file while Envoy runs.
    envoy.wait_for_log(Duration::from_secs(5), |t| {
        t.contains("starting main dispatch loop")
    })?;
    Ok(())
}

#[test]
fn backend_scripts_and_chunked_bodies() -> Result<()> {
    let backend = Backend::start()?;
    backend.on_path(
        "/oauth/token",
        Reply::json(201, r#"{"access_token":"t"}"#).header("x-backend", "path"),
    );
    backend.push_for_path("/oauth/token", Reply::new(429).header("retry-after", "1"));
    backend.push(Reply::json(202, r#"{"queued":true}"#));
    backend.set_default(Reply::new(204));
    let envoy = plain_envoy("harness-script", backend.addr())?;

    // 1. path queue first
    let r1 = envoy.send("POST", "/oauth/token", &[], b"a=1")?;
    assert_eq!(r1.status, 429);
    assert_eq!(r1.header("retry-after"), Some("1"));
    // 2. then the global queue
    let r2 = envoy.send("POST", "/oauth/token", &[], b"a=2")?;
    assert_eq!((r2.status, r2.text().as_str()), (202, r#"{"queued":true}"#));
    // 3. then the standing per-path reply
    let r3 = envoy.send("POST", "/oauth/token", &[], b"a=3")?;
    assert_eq!(r3.status, 201);
    assert_eq!(r3.header("x-backend"), Some("path"));
    // 4. then the default
    let r4 = envoy.send("GET", "/elsewhere", &[], b"")?;
    assert_eq!(r4.status, 204);

    // A chunked request body is de-chunked and recorded whole.
    let chunked = envoy.send(
        "POST",
        "/oauth/token",
        &[("transfer-encoding", "chunked")],
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )?;
    assert_eq!(chunked.status, 201);

    let reqs = backend.wait_for_requests(5, Duration::from_secs(5))?;
    assert_eq!(reqs.len(), 5);
    assert_eq!(
        reqs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(reqs[2].body_text(), "a=3");
    assert_eq!(reqs[4].body_text(), "hello world");
    assert_eq!(backend.requests_for("/oauth/token").len(), 4);
    assert_eq!(backend.heads_seen(), 5);

    // A delayed reply arrives after its delay.
    backend.push(Reply::json(200, "{}").delay(Duration::from_millis(300)));
    let t0 = Instant::now();
    let delayed = envoy.send("GET", "/slow", &[], b"")?;
    assert_eq!(delayed.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[test]
fn backend_keeps_connections_alive() -> Result<()> {
    // Talk to the backend directly with two requests on one connection.
    use std::io::{Read, Write};
    let backend = Backend::start()?;
    let mut s = std::net::TcpStream::connect(backend.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")?;
    let mut all = String::new();
    s.read_to_string(&mut all)?;
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    assert!(all.contains(r#"{"ok":true,"seq":2}"#), "{all}");
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].body_text()),
        ("POST", "hi".into())
    );
    // The client helper reads the same backend directly.
    let direct = client::send(backend.addr(), "GET", "/c", &[], b"")?;
    assert_eq!(direct.json()?["seq"], 3);
    Ok(())
}

#[test]
fn token_route_does_not_resend_a_request_the_upstream_received() -> Result<()> {
    // The backend reads the request and closes without answering: the upstream got it, so the
    // token route (retry_on connect-failure,refused-stream) must not re-send it.
    let backend = Backend::start()?;
    backend.push(Reply::hang_up());
    let envoy = plain_envoy("harness-hangup", backend.addr())?;
    let resp = envoy.send(
        "POST",
        "/oauth/token",
        &[],
        b"grant_type=client_credentials",
    )?;
    assert_eq!(resp.status, 503, "body: {}", resp.text());
    // Give a (wrong) retry time to show up.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(backend.request_count(), 1);
    let log = envoy.wait_for_access_log(1, Duration::from_secs(5))?;
    assert_eq!(log[0]["flags"], "UC", "{log:?}");
    Ok(())
}

#[test]
fn token_route_retries_connect_failures() -> Result<()> {
    // A backend port with nothing listening: every attempt fails to connect, so Envoy tries
    // 1 + num_retries (2) times and answers 503 with flags URX,UF.
    let dead = Backend::start()?.addr(); // dropped at once: the port is closed
    let envoy = plain_envoy("harness-dead", dead)?;
    let resp = envoy.send("POST", "/oauth/token", &[], b"x")?;
    assert_eq!(resp.status, 503);
    let log = envoy.wait_for_access_log(1, Duration::from_secs(5))?;
    assert_eq!(log[0]["flags"], "URX,UF", "{log:?}");
    let stats = envoy.stats("cluster.backend.upstream_rq_retry$")?;
    assert!(
        stats.contains("cluster.backend.upstream_rq_retry: 2"),
        "{stats}"
    );
    Ok(())
}

#[test]
fn missing_binaries_say_what_to_run() {
    let nowhere = PathBuf::from("/nonexistent/retry-guard/envoy");
    let e = check_envoy(nowhere.clone(), false).expect_err("missing envoy is an error");
    assert!(e.0.contains("just envoy-install"), "{e}");
    let e = check_wasm(nowhere).expect_err("missing wasm is an error");
    assert!(e.0.contains("just build"), "{e}");
}

#[test]
fn envoys_run_side_by_side() -> Result<()> {
    let backend = Backend::start()?;
    let a = plain_envoy("harness-side-a", backend.addr())?;
    let b = plain_envoy("harness-side-b", backend.addr())?;
    assert_ne!(a.base_id(), b.base_id());
    assert_ne!(a.listener_addr(), b.listener_addr());
    assert_eq!(a.send("GET", "/a", &[], b"")?.status, 200);
    assert_eq!(b.send("GET", "/b", &[], b"")?.status, 200);
    assert_eq!(backend.request_count(), 2);
    let pid = a.pid().expect("running envoy has a pid");
    drop(a);
    // Stopped by PID: /proc/<pid> is gone (or a zombie reaped by wait()).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    Ok(())
}
