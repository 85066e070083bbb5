//! `retry-guard gateway` (`just envoy`): the bundled gateway (`envoy/envoy.yaml`) on the real
//! Envoy 1.40 for a person to try by hand.
//!
//! Validates envoy/envoy.yaml, starts the backend on 127.0.0.1:18080 and Envoy (listener
//! 127.0.0.1:10000, admin 127.0.0.1:9901), prints a curl session, echoes access-log and audit
//! lines; Ctrl-C stops both.
//!
//! Envoy is started by the harness's launcher (`retry_guard_e2e::envoy`), the one place that
//! starts Envoy, on the file as shipped: run from anywhere, it runs Envoy in the repository
//! root (the wasm path in `envoy.yaml` is relative to it). Envoy runs in its own process group,
//! so the terminal's Ctrl-C reaches only this program, which then stops Envoy by its PID (admin
//! `/quitquitquit`, then SIGKILL) and the backend. Envoy is started from `main`, which lives
//! until the end: Envoy 1.40 quits when the thread that started it ends. The program never
//! panics (the release profile aborts on panic, which would skip the clean-up).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::envoy::{check_wasm, envoy_binary, Envoy};
use retry_guard_e2e::gateway::{
    bundled_path, envoy_yaml, ADMIN_PORT, BACKEND_CLUSTER, LISTENER_PORT,
};
use retry_guard_e2e::{bail, repo_root, Error, Result};
use serde_json::Value;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn signal(signum: std::os::raw::c_int, handler: usize) -> usize;
}

extern "C" fn on_signal(_: std::os::raw::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    const SIGINT: std::os::raw::c_int = 2;
    const SIGTERM: std::os::raw::c_int = 15;
    // SAFETY: installs a handler that only stores to an atomic, for SIGINT and SIGTERM.
    #[allow(unsafe_code)]
    unsafe {
        signal(
            SIGINT,
            on_signal as extern "C" fn(std::os::raw::c_int) as usize,
        );
        signal(
            SIGTERM,
            on_signal as extern "C" fn(std::os::raw::c_int) as usize,
        );
    }
}

/// `retry-guard gateway`: runs until Ctrl-C; exit code 0 after a clean stop.
pub fn main(args: Vec<String>) -> std::result::Result<i32, String> {
    if let Some(extra) = args.first() {
        return Err(format!("unexpected argument {extra}\n\n{}", crate::USAGE));
    }
    run().map(|()| 0).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// run

fn backend_port(bootstrap: &Value) -> Result<u16> {
    bootstrap["static_resources"]["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == BACKEND_CLUSTER))
        .and_then(|c| {
            c.pointer(
                "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value",
            )
        })
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| Error(format!("envoy/envoy.yaml has no cluster {BACKEND_CLUSTER} port")))
}

fn run() -> Result<()> {
    let root = repo_root();
    // Say what to install before anything else: Envoy first, then the wasm.
    envoy_binary()?;
    check_wasm(retry_guard::paths::filter_wasm())?;
    let backend_port = backend_port(&envoy_yaml()?)?;
    let launcher = Envoy::builder("gateway", SocketAddr::from(([127, 0, 0, 1], backend_port)))
        .config_file(bundled_path("envoy.yaml"))
        .current_dir(&root)
        .run_dir(root.join("target/envoy-local"))
        .concurrency(2)
        .disable_hot_restart()
        .own_process_group()
        .pipe_stdout()
        .stop_timeout(Duration::from_secs(5))
        .cancel_start_on(&STOP);

    print!("Validating envoy/envoy.yaml ... ");
    launcher.validate()?;
    println!("OK");

    let backend = Backend::start_on(backend_port)
        .map_err(|e| Error(format!("{e} (is another `just envoy` running?)")))?;
    backend.obey_request_directives(true);

    install_signal_handlers();
    let mut envoy = launcher.start().map_err(|e| {
        if STOP.load(Ordering::SeqCst) {
            Error::new("interrupted while Envoy was starting")
        } else {
            Error(format!(
                "Envoy did not start. Is port {LISTENER_PORT} or {ADMIN_PORT} in use (another \
                 `just envoy`)?\n{e}"
            ))
        }
    })?;
    if let Some(stdout) = envoy.take_stdout() {
        thread::spawn(move || echo_access_log(stdout));
    }
    let log = envoy.log_path();
    {
        let log = log.clone();
        thread::spawn(move || echo_envoy_log(&log));
    }
    print_session(&envoy, backend_port, &log);

    while !STOP.load(Ordering::SeqCst) {
        if let Some(status) = envoy.exited() {
            drop(backend);
            bail!("Envoy exited ({status}); see {}", log.display());
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "\nStopping Envoy (pid {}) and the backend ...",
        envoy.pid().unwrap_or_default()
    );
    envoy.stop();
    drop(backend);
    println!("Stopped.");
    Ok(())
}

/// Envoy's access log goes to its stdout (`/dev/stdout` in envoy.yaml): one line per request.
fn echo_access_log(stdout: impl Read) {
    for line in BufReader::new(stdout)
        .lines()
        .map_while(std::result::Result::ok)
    {
        match serde_json::from_str::<Value>(&line) {
            Ok(e) => println!(
                "access  {} {} -> {} {} route={} retry_guard={}",
                e["method"].as_str().unwrap_or("-"),
                e["path"].as_str().unwrap_or("-"),
                e["status"],
                e["flags"].as_str().unwrap_or("-"),
                e["route"].as_str().unwrap_or("-"),
                e["retry_guard_decision"].as_str().unwrap_or("-"),
            ),
            Err(_) => println!("access  {line}"),
        }
    }
}

/// Follows Envoy's log file and echoes the filter's audit lines and any warning/error.
fn echo_envoy_log(path: &Path) {
    let mut pos = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut pending = String::new();
    loop {
        thread::sleep(Duration::from_millis(200));
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        if f.seek(SeekFrom::Start(pos)).is_err() {
            continue;
        }
        let mut chunk = String::new();
        if let Ok(n) = f.read_to_string(&mut chunk) {
            pos += n as u64;
        }
        pending.push_str(&chunk);
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            if let Some(at) = line.find("retry-guard audit ") {
                let json = line[at + "retry-guard audit ".len()..].trim();
                match serde_json::from_str::<Value>(json) {
                    Ok(r) => println!("audit   {}", compact_audit(&r)),
                    Err(_) => println!("audit   {json}"),
                }
            } else if line.contains("][critical][")
                || line.contains("][error][")
                || (line.contains("retry-guard") && line.contains("][warning]["))
            {
                println!("envoy   {}", line.trim());
            }
        }
    }
}

/// One audit record in a line a human can read; the full JSON is in the Envoy log.
fn compact_audit(r: &Value) -> String {
    let s = |k: &str| match &r[k] {
        Value::Null => "-".to_string(),
        Value::String(v) => v.clone(),
        other => other.to_string(),
    };
    let mut line = format!(
        "decision={} route={} attempt={} previous={} policy={} reason={} principal={}",
        s("decision"),
        s("route"),
        s("attempt"),
        s("previous_outcome"),
        s("policy"),
        s("reason"),
        s("principal")
    );
    for k in ["token_reason", "approver", "confirmation_error"] {
        if !r[k].is_null() {
            line.push_str(&format!(" {k}={}", s(k)));
        }
    }
    if r["mode"] == "shadow" {
        line.push_str(&format!(" mode=shadow would_block={}", s("would_block")));
    }
    // How the stream ended (the same line, written then).
    if !r["outcome"].is_null() {
        line.push_str(&format!(" outcome={}", s("outcome")));
    }
    line.push_str(&format!(" status={}", s("status")));
    if !r["response_flags"].is_null() {
        line.push_str(&format!(" flags={}", s("response_flags")));
    }
    line
}

fn print_session(envoy: &Envoy, backend_port: u16, log: &Path) {
    // "version": "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let version = envoy
        .admin_get("/server_info")
        .ok()
        .and_then(|r| r.json().ok())
        .and_then(|v| {
            v["version"]
                .as_str()
                .and_then(|s| s.split('/').nth(1))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".to_string());
    println!(
        "\nEnvoy {version} (pid {}, 2 workers, V8) with envoy/envoy.yaml:\n  \
         listener http://127.0.0.1:{LISTENER_PORT}   admin http://127.0.0.1:{ADMIN_PORT}   \
         backend 127.0.0.1:{backend_port}\n  Envoy log: {}\n",
        envoy.pid().unwrap_or_default(),
        log.display()
    );
    println!(
        r#"Try it from another terminal (the backend answers 200; ask it for anything else with
request headers x-backend-status: 503, x-backend-state: unchanged, x-backend-delay-ms: 2000,
x-backend-hang-up: 1):

  # 1. A first token call reaches the upstream
  curl -s -i -X POST http://127.0.0.1:{LISTENER_PORT}/oauth/token -d 'grant_type=client_credentials&client_id=ci-bot'

  # 2. Its automated replay: 428, naming the owner and escalation, with a challenge
  curl -s -X POST http://127.0.0.1:{LISTENER_PORT}/oauth/token -d 'grant_type=client_credentials&client_id=ci-bot' | tee /tmp/428.json

  # 3. An approver signs the challenge (TEST key testdata/keys/approvals-test.key)
  TOKEN=$(just approve < /tmp/428.json)

  # 4. The confirmed retry goes through once ...
  curl -s -i -X POST http://127.0.0.1:{LISTENER_PORT}/oauth/token -H "retry-guard-confirmation: $TOKEN" -d 'grant_type=client_credentials&client_id=ci-bot'

  # 5. ... and the same confirmation again is refused: 428 with confirmation_error already_used
  curl -s -X POST http://127.0.0.1:{LISTENER_PORT}/oauth/token -H "retry-guard-confirmation: $TOKEN" -d 'grant_type=client_credentials&client_id=ci-bot'

  # More: a secret needs an Idempotency-Key (400 without), a role grant replay is 428 too
  curl -s -X POST http://127.0.0.1:{LISTENER_PORT}/v1/secrets -d '{{"name":"db"}}'
  curl -s -X POST http://127.0.0.1:{LISTENER_PORT}/v1/roles/admin/members -H 'x-backend-status: 503' -d '{{"member":"bob"}}'
  curl -s -X POST http://127.0.0.1:{LISTENER_PORT}/v1/roles/admin/members -d '{{"member":"bob"}}'

  # The counters
  curl -s 'http://127.0.0.1:{ADMIN_PORT}/stats?filter=wasmcustom'

Access-log and audit lines appear below. Ctrl-C stops Envoy and the backend.
"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_backend_port() {
        let b = envoy_yaml().expect("envoy.yaml");
        assert_eq!(backend_port(&b).ok(), Some(18080));
    }
}
