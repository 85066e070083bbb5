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
    /// Client URLs over TLS with client certificates required ([`Etcd::start_tls`]).
    tls: Option<ServerTls>,
    /// A plaintext URL for `/health` and `/metrics` only (members started over TLS, whose
    /// client URL the harness's plaintext client cannot reach).
    metrics: Option<SocketAddr>,
}

/// The files an etcd member serves its client URLs over TLS with.
#[derive(Clone, Debug)]
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
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

    /// The member's plaintext `/health` and `/metrics` address, when it has one (members
    /// started over TLS).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    fn spawn(&mut self, initial_cluster: &str, state: &str) -> Result<()> {
        let bin = etcd_binary()?;
        // Appended, so that the log of a restarted member keeps what came before.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut command = Command::new(&bin);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        if let Some(m) = self.metrics {
            command
                .arg("--listen-metrics-urls")
                .arg(format!("http://{m}"));
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{}", self.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{}", self.client))
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
        Etcd::launch(name, n, None)
    }

    /// Starts a cluster of `n` members whose client URLs are `https://` and require a client
    /// certificate signed by `certs`' CA (`--cert-file --key-file --trusted-ca-file
    /// --client-cert-auth`; peers stay plaintext on loopback), and waits until it answers.
    ///
    /// The harness's own calls ([`Etcd::leader`], [`Etcd::count`], [`post`]) are plaintext
    /// and do not reach such members; readiness is read from each member's plaintext
    /// `/health` ([`Member::metrics_addr`], `--listen-metrics-urls`).
    pub fn start_tls(name: &str, n: usize, certs: &Certs) -> Result<Etcd> {
        Etcd::launch(
            name,
            n,
            Some(ServerTls {
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
                ca: certs.ca_cert.clone(),
            }),
        )
    }

    fn launch(name: &str, n: usize, tls: Option<ServerTls>) -> Result<Etcd> {
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
                metrics: if tls.is_some() {
                    Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
                } else {
                    None
                },
                tls: tls.clone(),
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
            if self.leader().is_some() || self.healthy_over_metrics() {
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

    /// Does some member with a plaintext metrics URL say `{"health":"true"}` (it has a leader
    /// and serves reads)?
    fn healthy_over_metrics(&self) -> bool {
        self.members.iter().filter_map(|m| m.metrics).any(|addr| {
            client::send_with_timeout(addr, "GET", "/health", &[], b"", Duration::from_secs(2))
                .is_ok_and(|r| r.status == 200 && r.text().contains("\"health\":\"true\""))
        })
    }

    /// The index of the member that is leader, if a running member says there is one.
    /// (Members over TLS are not asked: the harness's client is plaintext.)
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.tls.is_none()) {
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

/// A test PKI made with `openssl` at test time: a CA, a server certificate for etcd (SAN IP
/// 127.0.0.1; extended key usages serverAuth and clientAuth, because etcd 3.4's JSON gateway
/// dials etcd's own gRPC server with the server certificate when `--client-cert-auth` is on)
/// and a client certificate for Envoy (CN `retry-guard-envoy`, clientAuth). EC P-256 keys,
/// valid for one day; nothing is reused between runs.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The folder holding every file.
    pub dir: PathBuf,
    /// The CA certificate (PEM): etcd's `--trusted-ca-file`, Envoy's `trusted_ca`.
    pub ca_cert: PathBuf,
    /// etcd's certificate (PEM).
    pub server_cert: PathBuf,
    /// etcd's private key (PEM).
    pub server_key: PathBuf,
    /// Envoy's client certificate (PEM).
    pub client_cert: PathBuf,
    /// Envoy's client private key (PEM).
    pub client_key: PathBuf,
}

/// The environment variable naming an `openssl` binary to use.
pub const OPENSSL_ENV: &str = "RETRY_GUARD_OPENSSL";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let bin = std::env::var_os(OPENSSL_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("openssl"), PathBuf::from);
    let out = Command::new(&bin)
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error(format!(
                "cannot run {} ({e}): install it (`apt-get install -y openssl`) or set \
                 {OPENSSL_ENV}",
                bin.display()
            ))
        })?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Certs {
    /// Makes the CA, etcd's and Envoy's certificates in `dir` (created; files overwritten).
    pub fn make(dir: &Path) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&key);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=retry-guard test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &ca)?;
        for (name, cn, ext) in [
            (
                "server",
                "/CN=etcd",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n\
                 basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
            ),
            (
                "client",
                "/CN=retry-guard-envoy",
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n",
            ),
        ] {
            Certs::issue(dir, name, cn, ext)?;
        }
        Ok(Certs {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }
}

impl Certs {
    /// Issues `<name>.crt` / `<name>.key` in `dir`, signed by the CA that [`Certs::make`] made
    /// there: subject `subject`, extensions `ext` (an openssl extension file's lines). For
    /// example a workload's client certificate with `subjectAltName=URI:spiffe://...`.
    pub fn issue(dir: &Path, name: &str, subject: &str, ext: &str) -> Result<(PathBuf, PathBuf)> {
        let (k, csr, crt, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&extfile), ext)?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &k,
                "-out",
                &csr,
                "-subj",
                subject,
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &extfile,
            ],
        )?;
        Ok((dir.join(crt), dir.join(k)))
    }
}

/// The `transport_socket` of an Envoy cluster to etcd over TLS: etcd's certificate must chain
/// to `certs`' CA and carry the IP SAN 127.0.0.1; with `client_cert`, Envoy presents its client
/// certificate (what etcd's `--client-cert-auth` requires). No SNI: the members are reached by
/// IP address, and a name in SNI is for DNS names only (RFC 6066).
pub fn upstream_tls(certs: &Certs, client_cert: bool) -> Value {
    let path = |p: &Path| json!({"filename": p.to_string_lossy()});
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "validation_context": {
                "trusted_ca": path(&certs.ca_cert),
                "match_typed_subject_alt_names": [
                    {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
                ],
            },
        },
    });
    if client_cert {
        context["common_tls_context"]["tls_certificates"] = json!([{
            "certificate_chain": path(&certs.client_cert),
            "private_key": path(&certs.client_key),
        }]);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

/// [`envoy_cluster`] over TLS ([`upstream_tls`]).
pub fn envoy_cluster_tls(
    name: &str,
    clients: &[SocketAddr],
    certs: &Certs,
    client_cert: bool,
) -> Value {
    let mut cluster = envoy_cluster(name, clients);
    cluster["transport_socket"] = upstream_tls(certs, client_cert);
    cluster
}
