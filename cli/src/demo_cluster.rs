//! `retry-guard demo-cluster` (`just demo-cluster`): two Envoy replicas of the bundled cluster
//! gateway (`envoy/envoy-cluster.yaml`) sharing one ledger on a 3-member etcd cluster, told
//! step by step.
//!
//! Starts 3 etcd members on loopback, the scripted backend, and replicas A and B of
//! `envoy-cluster.yaml` (kernel-chosen ports; the etcd cluster pointed at this run's members),
//! then: a token call through A passes; its replay through B gets 428; the approver's
//! confirmation through B passes once; the etcd leader is stopped and calls keep being decided
//! after the election; all of etcd is stopped and the token route answers 503
//! `ledger-unavailable` while an idempotent write passes with its audit line; etcd comes back
//! and guarding resumes. Every step checks what it expects; the first surprise ends the demo
//! with exit code 1. Prints what the client, the backend, the audit logs and the counters saw.
//!
//! On the etcd ledger an attempt's outcome is written just after the response (off the
//! response path), so the demo waits for the outcome's audit line before a replay it expects
//! to be 428 (a replay inside that window is 409, in flight).
//!
//! After the leader is stopped (and after etcd returns) the demo waits until both replicas'
//! admin `/clusters` shows the stopped member out and the others healthy. For up to about a
//! second more an etcd call may still go to the stopped member (seen on Envoy 1.40: during the
//! election the running members' `/health` times out too, and a worker's view of the members
//! lags the health flags the admin shows; with most members unhealthy Envoy spreads calls over
//! all of them). Such a call gets the fail policy (503 on the token route, nothing upstream),
//! or, for an outcome write, leaves its attempt in flight until its lease ends; the demo then
//! tries a new operation, and says so. At the end it checks that the backend executed each
//! operation at most once (the confirmed one twice).
//!
//! The release profile aborts on panic, which would skip the drops that stop Envoy and etcd:
//! this program never unwraps; every failure is an error returned from [`run`] (locals are
//! dropped, so every process is stopped by its PID, first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::client::Response;
use retry_guard_e2e::cluster::{Replica, ENVOY_CLUSTER_YAML, ETCD_CLUSTER};
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::etcd::Etcd;
use retry_guard_e2e::tokens::{test_confirmation, test_signing_key};
use retry_guard_e2e::{bail, Error, Result};
use serde_json::Value;

use crate::{take_opt, USAGE};

/// `retry-guard demo-cluster [--wasm <path>]`: 0 when every step behaved as expected, 1 when
/// one did not.
pub fn main(mut args: Vec<String>) -> std::result::Result<i32, String> {
    let wasm = take_opt(&mut args, "--wasm")?.map(PathBuf::from);
    if let Some(extra) = args.first() {
        return Err(format!("unexpected argument {extra}\n\n{USAGE}"));
    }
    let started = Instant::now();
    match run(wasm) {
        Ok(()) => {
            println!(
                "\nDemo finished in {:.1} s: every step behaved as expected.",
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("\ndemo-cluster failed: {e}");
            Ok(1)
        }
    }
}

use crate::demo_envoy::{expect, heading, print_counters};

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The client's view: status, a few headers, the problem document's telling members.
fn show(resp: &Response) {
    println!("client <- {}", resp.status);
    for h in ["retry-guard-challenge", "retry-after"] {
        if let Some(v) = resp.header(h) {
            println!("  {h}: {v}");
        }
    }
    match resp.json() {
        Ok(doc) if doc.get("type").is_some() => {
            for k in [
                "type",
                "detail",
                "route",
                "owner",
                "escalation",
                "attempt",
                "previous_outcome",
                "confirmation_error",
                "challenge",
            ] {
                if let Some(v) = doc.get(k).filter(|v| !v.is_null()) {
                    println!("  {k}: {v}");
                }
            }
        }
        _ => println!("{}", indent(&resp.text())),
    }
}

/// One replica of the demo, by its letter.
struct Replica2 {
    name: &'static str,
    envoy: Envoy,
}

impl Replica2 {
    fn send(
        &self,
        method: &str,
        path: &str,
        rid: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Result<Response> {
        let ct = if path == "/oauth/token" {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let mut headers = vec![("content-type", ct), ("x-request-id", rid)];
        headers.extend_from_slice(extra);
        println!(
            "client -> {} {method} {path}  x-request-id: {rid}",
            self.name
        );
        for (k, v) in extra {
            let shown: String = if v.chars().count() > 60 {
                format!("{}...", v.chars().take(60).collect::<String>())
            } else {
                v.to_string()
            };
            println!("          {k}: {shown}");
        }
        let t = Instant::now();
        let resp = self.envoy.send(method, path, &headers, body.as_bytes())?;
        println!("          (answered in {} ms)", t.elapsed().as_millis());
        Ok(resp)
    }

    fn token(&self, rid: &str, body: &str, extra: &[(&str, &str)]) -> Result<Response> {
        self.send("POST", "/oauth/token", rid, body, extra)
    }

    /// How many times this replica's log says an outcome was not recorded in the cluster
    /// ledger (the filter's warning).
    fn outcome_write_failures(&self) -> usize {
        self.envoy
            .log_text()
            .matches("outcome not recorded")
            .count()
    }

    /// Waits up to `timeout` for the audit line of `rid` that `pred` accepts; prints it.
    fn wait_audit(
        &self,
        rid: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .envoy
                .audit_records()
                .into_iter()
                .find(|r| r["request_id"] == rid && pred(r))
            {
                println!("{}'s audit: {}", self.name, short(&r));
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the audit line of `rid` that `pred` accepts; prints it.
    fn audit(&self, rid: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        self.wait_audit(rid, Duration::from_secs(10), pred)
            .ok_or_else(|| {
                Error(format!(
                    "no {what} audit line for {rid} in replica {}'s log",
                    self.name
                ))
            })
    }

    /// Waits for the audit line of `rid` that names its outcome (written when the stream
    /// ends; the outcome goes to etcd as the response passes).
    fn outcome(&self, rid: &str) -> Result<Value> {
        self.audit(rid, "outcome", |r| !r["outcome"].is_null())
    }

    fn decision(&self, rid: &str) -> Result<Value> {
        self.audit(rid, "decision", |r| r.get("decision").is_some())
    }

    /// Admin `/clusters`: the health flags of each etcd member (`healthy`, or the reasons it
    /// is out: `/failed_active_hc`, `/failed_outlier_check`, ...).
    fn member_flags(&self) -> Vec<(String, String)> {
        let prefix = format!("{ETCD_CLUSTER}::");
        let Ok(resp) = self.envoy.admin_get("/clusters") else {
            return Vec::new();
        };
        resp.text()
            .lines()
            .filter_map(|l| {
                let (addr, flags) = l.strip_prefix(&prefix)?.split_once("::health_flags::")?;
                Some((addr.to_string(), flags.trim().to_string()))
            })
            .collect()
    }
}

/// One audit record in a line: request id, decision, outcome, and the telling rest.
fn short(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let mut line = format!(
        "{} decision {} (route {}, attempt {}, reason {}",
        s("request_id"),
        s("decision"),
        s("route"),
        r["attempt"],
        s("reason")
    );
    for k in [
        "previous_outcome",
        "approver",
        "confirmation_error",
        "outcome",
    ] {
        if let Some(v) = r[k].as_str() {
            line.push_str(&format!(", {k} {v}"));
        }
    }
    line.push_str(&format!(", status {})", r["status"]));
    line
}

fn body(n: &str) -> String {
    format!("grant_type=client_credentials&scope=ledger.{n}")
}

/// Waits (bounded) until both replicas route to the running etcd members only: `stopped` out
/// of the rotation and every other member healthy again. (During an election every member's
/// `/health` fails; with all members out, Envoy spreads calls over all of them, the stopped one
/// included: its panic mode.)
fn wait_rotation(replicas: [&Replica2; 2], stopped: SocketAddr) -> Result<()> {
    let t = Instant::now();
    let settled = |r: &Replica2| {
        let flags = r.member_flags();
        !flags.is_empty()
            && flags.iter().all(|(addr, f)| {
                if *addr == stopped.to_string() {
                    f != "healthy"
                } else {
                    f == "healthy"
                }
            })
    };
    while !replicas.iter().all(|r| settled(r)) {
        if t.elapsed() > Duration::from_secs(10) {
            let flags: Vec<String> = replicas
                .iter()
                .map(|r| format!("{}: {:?}", r.name, r.member_flags()))
                .collect();
            bail!(
                "the replicas' etcd rotation did not settle within 10 s: {}",
                flags.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Sends new token calls through `replica` until one is allowed and its outcome is in the
/// ledger (bounded): after a call answered 503 `ledger-unavailable` (the fail policy: nothing
/// went upstream), or allowed but whose outcome write failed (the attempt then stays in flight
/// until its lease ends: its replays get 409), comes a new operation. Returns the allowed
/// call's request id and operation.
fn allowed_call(replica: &Replica2, rid: &str, op: &str) -> Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 1;
    loop {
        let (rid, op) = if n == 1 {
            (rid.to_string(), op.to_string())
        } else {
            (format!("{rid}.{n}"), format!("{op}.{n}"))
        };
        let failed_writes = replica.outcome_write_failures();
        let resp = replica.token(&rid, &body(&op), &[])?;
        show(&resp);
        match resp.status {
            200 => {
                // The line comes once the outcome is in etcd, or after the warning that it
                // could not be written (the calls here go one at a time, so a new warning is
                // this call's).
                if replica
                    .wait_audit(&rid, Duration::from_secs(3), |r| !r["outcome"].is_null())
                    .is_some()
                    && replica.outcome_write_failures() == failed_writes
                {
                    return Ok((rid, op));
                }
                println!(
                    "(its outcome was not written to etcd: the attempt stays in flight until its \
                     lease ends; a new operation)"
                );
            }
            503 => {
                println!("(the fail policy: etcd was not reachable for this call; a new operation)")
            }
            s => bail!("a token call through {} was answered {s}", replica.name),
        }
        if Instant::now() >= deadline {
            bail!(
                "no token call through {} was allowed within 20 s",
                replica.name
            );
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replays `op` through `replica` until it is answered 428 (bounded); a 503 on the way is the
/// fail policy (that replay was refused; nothing went upstream).
fn replay_is_428(replica: &Replica2, first: &str, rid: &str, op: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 1;
    loop {
        let rid = if n == 1 {
            rid.to_string()
        } else {
            format!("{rid}.{n}")
        };
        println!("(the replay of {first})");
        let resp = replica.token(&rid, &body(op), &[])?;
        show(&resp);
        match resp.status {
            428 => return Ok(()),
            503 if Instant::now() < deadline => {
                println!("(the fail policy: etcd was not reachable for this call; replayed again)");
            }
            s => bail!(
                "the replay of {first} through {} was answered {s}, not 428",
                replica.name
            ),
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(wasm: Option<PathBuf>) -> Result<()> {
    let key = test_signing_key()?;
    let mut etcd = Etcd::start("demo-cluster", 3)?;
    let leader = etcd.leader();
    println!("etcd 3.4: 3 members on loopback, JSON gateway on HTTP/1.1");
    for (i, m) in etcd.members.iter().enumerate() {
        println!(
            "  {} pid {} client {}{}",
            m.name,
            m.pid().unwrap_or(0),
            m.client,
            if leader == Some(i) { "  (leader)" } else { "" }
        );
    }
    let backend = Backend::start()?;
    let replica = Replica::new(&etcd.clients());
    let start = |name: &'static str| -> Result<Replica2> {
        let mut b = replica.builder(
            &format!("demo-cluster-{}", name.to_ascii_lowercase()),
            backend.addr(),
        )?;
        if let Some(w) = &wasm {
            b = b.wasm_file(w.clone());
        }
        Ok(Replica2 {
            name,
            envoy: b.start()?,
        })
    };
    let a = start("A")?;
    let b = start("B")?;
    for r in [&a, &b] {
        println!(
            "replica {}: Envoy pid {} (2 workers, V8) on {}, admin {}",
            r.name,
            r.envoy.pid().unwrap_or(0),
            r.envoy.listener_addr(),
            r.envoy.admin_addr()
        );
    }
    println!(
        "both run envoy/{ENVOY_CLUSTER_YAML} (ports, backend and etcd addresses set for this run): \
         plugin ledger on etcd, cluster {ETCD_CLUSTER}, key prefix retry-guard/identity-api/, \
         timeout 500 ms; backend {}",
        backend.addr()
    );

    heading("1. A token call through replica A: allowed, reaches the backend");
    let resp = a.token("cluster-1", &body("1"), &[])?;
    show(&resp);
    expect(
        resp.status == 200,
        "the first token call was not let through",
    )?;
    a.outcome("cluster-1")?;
    println!("backend has seen {} request(s)", backend.request_count());

    heading("2. Its automated replay through replica B: 428, B knows it from etcd");
    let replay = b.token("cluster-2", &body("1"), &[])?;
    show(&replay);
    let doc = replay.json()?;
    expect(
        replay.status == 428 && doc["previous_outcome"] == "succeeded",
        "the replay through the other replica was not answered 428 (previous outcome succeeded)",
    )?;
    println!("backend has seen {} request(s)", backend.request_count());
    expect(
        backend.request_count() == 1,
        "the replay reached the backend",
    )?;
    let (Some(chl), Some(fp)) = (doc["challenge"].as_str(), doc["fingerprint"].as_str()) else {
        return Err(Error::new("428 without challenge or fingerprint"));
    };

    heading("3. The approver confirms; the confirmed retry through B passes, once");
    let claims = test_confirmation(chl, fp, "alice@example.com", 300);
    println!("approver alice@example.com signs the challenge with the TEST key \"approvals-test\"");
    let token = claims.sign(&key);
    let confirmed = b.token(
        "cluster-3",
        &body("1"),
        &[("retry-guard-confirmation", &token)],
    )?;
    show(&confirmed);
    expect(
        confirmed.status == 200,
        "the confirmed retry was not let through",
    )?;
    b.outcome("cluster-3")?;
    let reused = a.token(
        "cluster-4",
        &body("1"),
        &[("retry-guard-confirmation", &token)],
    )?;
    show(&reused);
    expect(
        reused.status == 428 && reused.json()?["confirmation_error"] == "already_used",
        "the used confirmation was not refused through the other replica",
    )?;
    println!("backend has seen {} request(s)", backend.request_count());
    expect(
        backend.request_count() == 2,
        "the backend did not see exactly 2 token calls",
    )?;

    heading("4. The etcd leader is stopped: calls keep being decided after the election");
    let Some(old) = etcd.leader() else {
        bail!("etcd names no leader");
    };
    let stopped_at = Instant::now();
    let stopped = match etcd.members.get_mut(old) {
        Some(m) => {
            let (name, pid, client) = (m.name.clone(), m.pid().unwrap_or(0), m.client);
            m.stop();
            println!("stopped {name} (pid {pid}, client {client}), the leader, with SIGKILL");
            client
        }
        None => bail!("no member {old}"),
    };
    etcd.wait_ready(Duration::from_secs(15))?;
    let new = etcd.leader();
    println!(
        "new leader: {} after {} ms",
        new.and_then(|i| etcd.members.get(i))
            .map_or("?".to_string(), |m| m.name.clone()),
        stopped_at.elapsed().as_millis()
    );
    expect(new.is_some_and(|n| n != old), "no new leader was elected")?;
    wait_rotation([&a, &b], stopped)?;
    println!(
        "both replicas route to the two running members only (health checks on /health every \
         0.5 s), {} ms after the stop",
        stopped_at.elapsed().as_millis()
    );
    // For up to about a second more, a replica's workers may still send an etcd call to the
    // stopped member (their view of the members lags the health checks; see the module docs):
    // such a call gets the fail policy, and is tried again as a new operation.
    let (rid, op) = allowed_call(&a, "cluster-5", "5")?;
    replay_is_428(&b, &rid, "cluster-6", &op)?;

    heading("5. All of etcd is stopped: sensitive routes fail closed, idempotent writes pass");
    for m in &mut etcd.members {
        if m.is_running() {
            println!("stopped {} (pid {})", m.name, m.pid().unwrap_or(0));
        }
        m.stop();
    }
    let before = backend.request_count();
    let resp = a.token("cluster-7", &body("7"), &[])?;
    show(&resp);
    let text = resp.text();
    let doc = resp.json()?;
    expect(
        resp.status == 503
            && doc["type"] == "urn:retry-guard:problem:ledger-unavailable"
            && resp.header("retry-after").is_some(),
        "the token call without etcd was not answered 503 ledger-unavailable with retry-after",
    )?;
    let leaked: Vec<String> = etcd
        .clients()
        .iter()
        .map(|c| c.port().to_string())
        .chain(["127.0.0.1".to_string(), "etcd".to_string()])
        .filter(|n| text.contains(n.as_str()))
        .collect();
    expect(leaked.is_empty(), &format!("the 503 names {leaked:?}"))?;
    println!("the answer names no etcd address, port or error");
    a.decision("cluster-7")?;
    let resp = b.send(
        "PUT",
        "/v1/preferences",
        "cluster-8",
        "{\"theme\":\"dark\"}",
        &[],
    )?;
    show(&resp);
    expect(
        resp.status == 200,
        "the idempotent write did not pass without etcd",
    )?;
    let d = b.decision("cluster-8")?;
    expect(
        d["reason"] == "ledger_unavailable",
        "the idempotent write's audit line does not say ledger_unavailable",
    )?;
    println!(
        "backend has seen {} more request(s): the idempotent write only",
        backend.request_count() - before
    );
    expect(
        backend.request_count() == before + 1,
        "the backend did not see exactly the idempotent write",
    )?;
    if let Some(line) = a
        .envoy
        .log_text()
        .lines()
        .find(|l| l.contains("cluster ledger unavailable ("))
    {
        let at = line.find("retry-guard: route").unwrap_or(0);
        println!("A's operator log: {}", line.get(at..).unwrap_or(line));
    }

    heading("6. etcd comes back: guarding resumes, without restarting Envoy");
    let back_at = Instant::now();
    for i in 0..etcd.members.len() {
        etcd.restart(i)?;
    }
    etcd.wait_ready(Duration::from_secs(20))?;
    println!(
        "etcd members restarted with their data; a leader after {} ms",
        back_at.elapsed().as_millis()
    );
    // Until the replicas' health checks see the members again a call may still get the fail
    // policy; each try is a new operation.
    let (rid, op) = allowed_call(&a, "cluster-9", "9")?;
    replay_is_428(&b, &rid, "cluster-10", &op)?;

    let mut seen: Vec<(String, usize)> = Vec::new();
    for req in backend.requests() {
        let b = req.body_text();
        match seen.iter_mut().find(|(x, _)| *x == b) {
            Some((_, n)) => *n += 1,
            None => seen.push((b, 1)),
        }
    }
    for (b, n) in &seen {
        let allowed = if *b == body("1") { 2 } else { 1 };
        expect(
            *n <= allowed,
            &format!("the backend executed {b:?} {n} times"),
        )?;
    }
    println!(
        "\nThe backend executed each operation once (the confirmed one twice): {} requests.",
        backend.request_count()
    );

    heading("Audit logs (Envoy log lines `retry-guard audit {...}`)");
    for r in [&a, &b] {
        println!("replica {}:", r.name);
        for rec in r.envoy.audit_records() {
            println!("  {}", short(&rec));
        }
    }

    heading("Counters (admin /stats?filter=wasmcustom, non-zero)");
    for r in [&a, &b] {
        println!("replica {}:", r.name);
        print_counters(&r.envoy, "  ")?;
    }

    heading("Backend");
    for req in backend.requests() {
        println!(
            "  {} {} x-request-id: {}",
            req.method,
            req.path,
            req.header("x-request-id").unwrap_or("-")
        );
    }
    Ok(())
}
