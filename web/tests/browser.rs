//! End to end in headless Chromium (Debian's `chromium` and `chromedriver`, `web/setup.sh
//! --browser`), on the pages `web/build.sh` built, served by Python's static server on
//! loopback: an approver pastes a 428 the filter produced on host-sim, loads the TEST approver
//! key, signs; the filter on host-sim accepts the token once and refuses it the second time.
//! The playground decides a sequence of calls as host-sim does and names the field path of a
//! misspelt class. Neither page requests anything but its own files. Screenshots go to
//! `target/web/`; the time a decision takes in the page to `target/web/timing.json`.
//!
//! The WebDriver client is a few lines of HTTP/1.1 and JSON over `std::net`. Every wait is
//! bounded; the server and chromedriver are started here and stopped by their PIDs.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use retry_guard_web::play::Call;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn root() -> PathBuf {
    retry_guard::paths::repo_root()
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

/// A child process stopped (by its PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 exchange with chromedriver: (status, JSON body).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("WebDriver answer within 60 s");
        assert!(n > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("chromedriver answers with Content-Length");
    while raw.len() < head_end + length {
        let n = s.read(&mut buf).expect("WebDriver answer within 60 s");
        assert!(n > 0, "chromedriver closed the connection mid-answer");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A WebDriver session.
struct Driver {
    port: u16,
    session: String,
    _chromedriver: Proc,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let chromedriver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (install it: bash web/setup.sh --browser)"),
        );
        wait_port(port, "chromedriver");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1300",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync"]
            }
        }}});
        let (status, v) = http(port, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "new WebDriver session: {v}");
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        let d = Driver {
            port,
            session,
            _chromedriver: chromedriver,
        };
        d.cmd(
            "POST",
            "timeouts",
            json!({"script": 30_000, "pageLoad": 30_000}),
        );
        d
    }

    fn cmd(&self, method: &str, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let body = (method != "GET").then_some(&body);
        let (status, v) = http(self.port, method, &path, body);
        assert_eq!(status, 200, "{method} {what}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "url", json!({ "url": url }));
        self.wait(
            "document.body && document.body.dataset.ready === 'true'",
            "the page to load its policy core",
        );
    }

    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    fn js_async(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "execute/async",
            json!({"script": script, "args": []}),
        )
    }

    /// Polls `expr` (a JS expression) until truthy, at most 20 s.
    fn wait(&self, expr: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(&format!("return {expr};"), json!([]));
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited 20 s for {what} ({expr})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().expect("element id").to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.cmd(
            "POST",
            &format!("element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("element/{e}/click"), json!({}));
    }

    /// Sets a text area's value as a paste does, and tells the page.
    fn paste(&self, css: &str, text: &str) {
        self.js(
            "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
             el.dispatchEvent(new Event('input', {bubbles: true}));",
            json!([css, text]),
        );
    }

    fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "window/rect",
            json!({"width": width, "height": height}),
        );
    }

    fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "screenshot", Value::Null);
        let png = retry_guard::b64::decode_standard(v.as_str().expect("base64 png")).expect("png");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Every URL the page loaded (navigation and resources).
    fn loaded_urls(&self) -> Vec<String> {
        let v = self.js(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).map(e => e.name);",
            json!([]),
        );
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect()
    }

    /// The page is no wider than the window (nothing to scroll sideways).
    fn fits_width(&self) -> (i64, i64, Value) {
        let v = self.js(
            "const w = window.innerWidth; \
             const wide = [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 1).slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)); \
             return [document.documentElement.scrollWidth, w, wide];",
            json!([]),
        );
        (
            v[0].as_i64().unwrap_or(0),
            v[1].as_i64().unwrap_or(0),
            v[2].clone(),
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token_call(body: &str) -> Call {
    Call {
        headers: vec![("x-client-id".into(), "ci-bot".into())],
        body: body.into(),
        ..Call::default()
    }
}

fn assert_own_files(urls: &[String], origin: &str, page: &str) {
    assert!(!urls.is_empty(), "{page}: no resource timing entries");
    for u in urls {
        assert!(
            u.starts_with(origin),
            "{page} requested {u}, outside {origin}"
        );
    }
}

#[test]
fn approve_in_the_console_and_play_in_the_playground() {
    let www = root().join("web/www");
    assert!(
        www.join("pkg/retry_guard_web_bg.wasm").exists(),
        "web/www/pkg is not built: run `bash web/build.sh` (or `just web`)"
    );
    let shots = root().join("target/web");
    std::fs::create_dir_all(&shots).expect("target/web");
    let t0 = Instant::now();

    // The static server, its request log kept to check what the pages asked for.
    let port = free_port();
    let log_path = shots.join("server.log");
    let log = std::fs::File::create(&log_path).expect("server log");
    let _server = Proc(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&www)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 -m http.server"),
    );
    wait_port(port, "the static server");
    let origin = format!("http://127.0.0.1:{port}/");
    let d = Driver::start();

    // The filter on host-sim answers a replay with 428; the approver gets the `curl -i` text.
    let smoke = std::fs::read_to_string(root().join("testdata/configs/smoke.json")).expect("smoke");
    let rt = common::runtime();
    let sim = common::sim(&rt, &smoke, now_unix());
    let op = token_call("grant_type=client_credentials&client_id=ci-bot");
    let send = |c: &Call| {
        let (req, up) = common::request_of(c);
        sim.request(&req, &up).expect("exchange")
    };
    assert_eq!(send(&op).status, 200);
    let replay = send(&op);
    assert_eq!(replay.status, 428, "the replay needs a confirmation");
    let mut curl_i = String::from("HTTP/1.1 428 Precondition Required\r\n");
    for (k, v) in replay.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        curl_i.push_str(&format!("{k}: {v}\r\n"));
    }
    curl_i.push_str("\r\n");
    curl_i.push_str(&String::from_utf8_lossy(&replay.body));

    // The approver's console.
    d.go(&format!("{origin}approve.html"));
    d.paste("#problem", &curl_i);
    let summary = d.wait("document.querySelector('#problem-view .big') && document.querySelector('#problem-view').textContent", "the 428 in plain words");
    let summary = summary.as_str().unwrap_or_default();
    assert!(
        summary.contains("oauth-token")
            && summary.contains("team-iam")
            && summary.contains("pagerduty:iam-primary"),
        "{summary}"
    );
    d.type_into("#approver", "alice@example.com");
    let key = root().join("testdata/keys/approvals-test.key");
    d.type_into("#keyfile", &key.to_string_lossy());
    d.wait(
        "document.querySelector('#key-status .status.ok')",
        "the key to load",
    );
    assert_eq!(
        d.js("return document.getElementById('kid').value;", json!([])),
        json!("approvals-test")
    );
    let ttls = d.js(
        "return [...document.querySelectorAll('#ttl option')].map(o => Number(o.value));",
        json!([]),
    );
    assert_eq!(
        ttls,
        json!([60, 120, 300, 600]),
        "expiries bounded by max_ttl_seconds 600"
    );
    d.click("#sign");
    d.wait("document.getElementById('token')", "the signed token");
    let token = d.text("#token");
    assert!(
        token.starts_with("v1.") && token.matches('.').count() == 2,
        "{token}"
    );
    assert!(d
        .text("#header-line")
        .starts_with("retry-guard-confirmation: v1."));
    assert!(d.text("#curl").contains(&token));
    // Verify mode with the configuration's keys: the filter's own check accepts it.
    d.paste("#verify-keys", &smoke);
    d.click("#verify");
    d.wait(
        "document.querySelector('#verdict[data-accepted]')",
        "verify mode to accept the token",
    );
    d.size(1280, 1900);
    d.js("window.scrollTo(0, 0);", json!([]));
    d.screenshot(&shots.join("approve.png"));
    d.size(1280, 1300);

    // The filter on host-sim accepts the page's token once, and refuses it the second time.
    let confirmed = Call {
        headers: vec![
            ("x-client-id".into(), "ci-bot".into()),
            ("retry-guard-confirmation".into(), token.clone()),
        ],
        ..op.clone()
    };
    let first = send(&confirmed);
    let decided = common::decided_on_sim(&first);
    assert_eq!(
        (first.status, decided.decision.as_deref()),
        (200, Some("confirmed")),
        "{decided:?}"
    );
    assert_eq!(
        decided.audit.as_ref().and_then(|a| a["approver"].as_str()),
        Some("alice@example.com")
    );
    let again = send(&confirmed);
    let body: Value = serde_json::from_slice(&again.body).unwrap_or(Value::Null);
    assert_eq!(
        (again.status, body["confirmation_error"].as_str()),
        (428, Some("already_used"))
    );

    // Verify mode names the filter's refusal for a token signed for another request.
    let other = d.js(
        "return document.getElementById('verify-token').value.replace(/.$/, c => c === 'A' ? 'Q' : 'A');",
        json!([]),
    );
    d.paste("#verify-token", other.as_str().unwrap_or_default());
    d.click("#verify");
    let refusal = d.wait("document.querySelector('#verdict[data-refusal]') && document.querySelector('#verdict').dataset.refusal", "a refusal");
    assert_eq!(refusal, json!("bad_signature"));
    d.size(1280, 900);
    d.js(
        "document.getElementById('h-verify').scrollIntoView();",
        json!([]),
    );
    d.screenshot(&shots.join("approve-verify.png"));
    assert_own_files(&d.loaded_urls(), &origin, "approve.html");

    // Readable at 320 px: nothing wider than the window.
    d.size(320, 900);
    d.js("window.scrollTo(0, 0);", json!([]));
    d.screenshot(&shots.join("approve-320.png"));
    let (scroll, inner, wide) = d.fits_width();
    assert!(
        scroll <= inner,
        "approve.html is {scroll} px wide in a {inner} px window: {wide}"
    );
    d.size(1280, 1300);

    // The playground: a case in the URL fragment, decided as host-sim decides it.
    let calls = vec![
        op.clone(),
        Call {
            wait: 5,
            ..op.clone()
        },
        Call {
            upstream: retry_guard_web::play::UpstreamSpec {
                fail: Some("connection_refused".into()),
                ..Default::default()
            },
            ..token_call("grant_type=client_credentials&client_id=ci-bot&scope=b")
        },
        Call {
            wait: 2,
            ..token_call("grant_type=client_credentials&client_id=ci-bot&scope=b")
        },
        Call {
            upstream: retry_guard_web::play::UpstreamSpec {
                status: Some(503),
                ..Default::default()
            },
            ..token_call("grant_type=client_credentials&client_id=ci-bot&scope=c")
        },
        Call {
            wait: 901,
            ..token_call("grant_type=client_credentials&client_id=ci-bot&scope=c")
        },
    ];
    let start = retry_guard_web::play::DEFAULT_START;
    let (on_sim, _) = common::both(&rt, &smoke, start, &calls);
    let state = json!({ "config": smoke, "calls": calls });
    let fragment = retry_guard::b64::url(state.to_string().as_bytes());
    d.go(&format!("{origin}playground.html#s={fragment}"));
    d.wait(
        &format!(
            "document.querySelectorAll('#steps .step').length === {}",
            calls.len()
        ),
        "every call decided",
    );
    let page = d.js(
        "return [...document.querySelectorAll('#steps .step')].map(s => [s.dataset.decision, Number(s.dataset.status)]);",
        json!([]),
    );
    let sim_said: Vec<Value> = on_sim
        .iter()
        .map(|x| {
            json!([
                x.decision.clone().unwrap_or_else(|| "none".into()),
                x.status
            ])
        })
        .collect();
    assert_eq!(page, json!(sim_said), "the page decides as host-sim");
    let decided_cell = d.text("#steps .step[data-decision='confirm'] td.decided");
    assert!(
        decided_cell.contains("succeeded") && decided_cell.contains("retry with review"),
        "{decided_cell}"
    );
    d.js("window.scrollTo(0, 0);", json!([]));
    d.screenshot(&shots.join("playground.png"));

    // The time a decision takes in the page: 1,000 calls (first attempts and replays).
    let timing = d.js_async(
        "const done = arguments[arguments.length - 1];
         import('./pkg/retry_guard_web.js').then(async (m) => {
           await m.default();
           const config = document.getElementById('config').value;
           const calls = [];
           for (let i = 0; i < 1000; i++) calls.push({headers: [['x-client-id', 'ci-bot']], body: 'n=' + (i >> 1)});
           const runs = [];
           for (let r = 0; r < 5; r++) {
             const t = performance.now();
             const out = JSON.parse(m.play(JSON.stringify({config, calls})));
             runs.push(performance.now() - t);
             if (out.steps.length !== 1000) { done({error: 'steps ' + out.steps.length}); return; }
           }
           runs.sort((a, b) => a - b);
           done({runs_ms: runs, median_ms: runs[2], per_decision_us: runs[2]});
         }).catch((e) => done({error: String(e)}));",
    );
    assert!(timing.get("error").is_none(), "{timing}");
    std::fs::write(shots.join("timing.json"), timing.to_string()).expect("timing.json");
    eprintln!("1,000 decisions in the page: {timing}");

    // A misspelt class names the field path, as the filter's critical log line does.
    d.paste(
        "#config",
        &smoke.replace("\"token_issuing\"", "\"token_issueing\""),
    );
    let path = d.wait("document.getElementById('config-path') && document.getElementById('config-path').textContent", "the field path");
    assert_eq!(path, json!("routes[0].class"));
    assert!(d
        .text("#config-error")
        .contains("retry-guard: invalid plugin configuration: routes[0].class"));
    d.click("#show-path");
    let selected = d.js(
        "const t = document.getElementById('config'); return t.value.slice(t.selectionStart, t.selectionEnd);",
        json!([]),
    );
    let selected = selected.as_str().unwrap_or_default().to_string();
    assert!(selected.contains("token_issueing"), "{selected}");
    d.js("window.scrollTo(0, 0);", json!([]));
    d.screenshot(&shots.join("playground-error.png"));
    assert_own_files(&d.loaded_urls(), &origin, "playground.html");
    d.size(320, 900);
    d.screenshot(&shots.join("playground-320.png"));
    let (scroll, inner, wide) = d.fits_width();
    assert!(
        scroll <= inner,
        "playground.html is {scroll} px wide in a {inner} px window: {wide}"
    );

    // What the server was asked for: the pages' own files only.
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let own = [
        "/approve.html",
        "/playground.html",
        "/style.css",
        "/common.js",
        "/approve.js",
        "/playground.js",
        "/pkg/retry_guard_web.js",
        "/pkg/retry_guard_web_bg.wasm",
    ];
    let asked: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split('"').nth(1))
        .filter_map(|r| r.split_whitespace().nth(1))
        .collect();
    assert!(!asked.is_empty(), "the server logged no request");
    for p in &asked {
        let p = p.split(['?', '#']).next().unwrap_or(p);
        assert!(
            own.contains(&p),
            "a page asked the server for {p}: {asked:?}"
        );
    }
    eprintln!("browser test: {:.1} s", t0.elapsed().as_secs_f64());
}
