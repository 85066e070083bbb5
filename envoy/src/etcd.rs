//! Real etcd for the cluster-ledger tests: members started on loopback ports with their own
//! data folders, reached over etcd's JSON gateway (`/v3/`, HTTP/1.1), stopped by PID.
//!
//! The binary is Debian's `etcd-server` (3.4): `bash envoy/install-etcd.sh` installs it when it
//! is missing, `RETRY_GUARD_ETCD` points at another one.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{bail, client, repo_root, Error, Result};

/// The environment variable naming an etcd binary to use.
pub const ETCD_ENV: &str = "RETRY_GUARD_ETCD";

/// The etcd binary: `$RETRY_GUARD_ETCD`, else `etcd` on the PATH.
pub fn etcd_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(ETCD_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "etcd not found on the PATH. Run `bash envoy/install-etcd.sh` (installs Debian's \
         etcd-server 3.4), or set {ETCD_ENV} to an etcd binary."
    )
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One etcd member.
pub struct Member {
    /// Its name in the cluster.
    pub name: String,
    /// Its client URL's address (the JSON gateway).
    pub client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// Is the member's process running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The member's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the member by its PID (SIGKILL: as abrupt as a crashed pod).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The member's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self, initial_cluster: &str, state: &str) -> Result<()> {
        let bin = etcd_binary()?;
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new(&bin)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(format!("http://{}", self.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", self.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg("retry-guard-test")
            .arg("--initial-cluster-state")
            .arg(state)
            .args([
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "1m",
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| Error(format!("cannot start {}: {e}", bin.display())))?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os(crate::envoy::KEEP_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    /// The members.
    pub members: Vec<Member>,
    initial_cluster: String,
    run_dir: PathBuf,
}

impl Etcd {
    /// Starts a cluster of `n` members (1 or 3, usually) and waits until it answers.
    pub fn start(name: &str, n: usize) -> Result<Etcd> {
        let run_dir = repo_root().join("target/e2e").join(format!(
            "etcd-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&run_dir)?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let member = format!("m{i}");
            members.push(Member {
                client: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                peer: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                data_dir: run_dir.join(&member),
                log: run_dir.join(format!("{member}.log")),
                name: member,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.spawn(&initial_cluster, "new")?;
        }
        let etcd = Etcd {
            members,
            initial_cluster,
            run_dir,
        };
        etcd.wait_ready(Duration::from_secs(20))?;
        Ok(etcd)
    }

    /// The first member's client address.
    pub fn client(&self) -> SocketAddr {
        self.members
            .first()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |m| m.client)
    }

    /// Every member's client address.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// The run folder (data folders and logs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Restarts a stopped member with its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let initial = self.initial_cluster.clone();
        let Some(m) = self.members.get_mut(i) else {
            bail!("no member {i}");
        };
        if !m.is_running() {
            m.spawn(&initial, "existing")?;
        }
        Ok(())
    }

    /// Waits until some running member answers a status request and the cluster has a leader.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.leader().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| {
                        let t = m.log_text();
                        let tail: Vec<&str> = t.lines().rev().take(5).collect();
                        format!("{}: {}", m.name, tail.join(" | "))
                    })
                    .collect();
                bail!(
                    "etcd did not become ready within {timeout:?} ({}); logs: {}",
                    self.run_dir.display(),
                    logs.join("; ")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the member that is leader, if a running member says there is one.
    pub fn leader(&self) -> Option<usize> {
        for m in &self.members {
            let Ok(v) = post(m.client, "/v3/maintenance/status", &json!({})) else {
                continue;
            };
            let leader = v["leader"].as_str()?;
            if leader == "0" {
                return None;
            }
            for (i, other) in self.members.iter().enumerate() {
                if let Ok(s) = post(other.client, "/v3/maintenance/status", &json!({})) {
                    if s["header"]["member_id"].as_str() == Some(leader) {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    /// How many keys start with `prefix`.
    pub fn count(&self, prefix: &str) -> Result<u64> {
        let v = self.range(prefix, true)?;
        Ok(v["count"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    /// Every key (as text) that starts with `prefix`.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let v = self.range(prefix, false)?;
        Ok(v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| kv["key"].as_str())
                    .filter_map(|k| STANDARD.decode(k).ok())
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn range(&self, prefix: &str, count_only: bool) -> Result<Value> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = json!({
            "key": STANDARD.encode(prefix),
            "range_end": STANDARD.encode(&end),
            "count_only": count_only,
        });
        let mut last = None;
        for m in &self.members {
            match post(m.client, "/v3/kv/range", &body) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new("no etcd member")))
    }
}

/// POSTs JSON to an etcd member's gateway and returns the JSON answer (an error for non-200).
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<Value> {
    let resp = client::send_with_timeout(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
        Duration::from_secs(2),
    )?;
    if resp.status != 200 {
        bail!("etcd {path}: HTTP {}: {}", resp.status, resp.text());
    }
    serde_json::from_str(&resp.text()).map_err(|e| Error(format!("etcd {path}: {e}")))
}

/// An Envoy cluster (bootstrap JSON) named `name` that reaches these etcd client addresses over
/// HTTP/1.1 (etcd's JSON gateway is HTTP/1.1 on a plaintext port), checking each member's
/// health.
pub fn envoy_cluster(name: &str, clients: &[SocketAddr]) -> Value {
    let endpoints: Vec<Value> = clients
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()}}}})
        })
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        // A member that is down leaves the rotation at once (active health checks on etcd's
        // `/health`, and outlier detection on failed calls), so only the calls of the first
        // moments after a member stops meet it.
        "health_checks": [{
            "timeout": "0.5s",
            "interval": "0.5s",
            "no_traffic_interval": "0.5s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/health"},
        }],
        // Only connection failures eject a member (an etcd answering errors during an
        // election is not a dead member), and never more than half of them.
        "outlier_detection": {
            "split_external_local_origin_errors": true,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "base_ejection_time": "2s",
            "max_ejection_percent": 50,
        },
    })
}
