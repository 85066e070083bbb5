//! The bundled cluster gateway, `envoy/envoy-cluster.yaml` (one replica of the gateway whose
//! replicas share a ledger on etcd), as data; and a replica of it made fit for a test or a
//! demo by [`Replica`]: the changes of [`crate::gateway::TestGateway`] (kernel-chosen ports, the
//! run's backend, access log in the run folder, absolute wasm path) plus the running etcd's
//! client addresses in the etcd cluster, optionally over TLS.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::envoy::{Envoy, EnvoyBuilder};
use crate::etcd::{upstream_tls, Certs};
use crate::gateway::{
    bundled_path, load_yaml, plugin_config, TestGateway, ADMIN_PORT, LISTENER_PORT,
};
use crate::{bail, Error, Result};

/// The bundled file, relative to `envoy/`.
pub const ENVOY_CLUSTER_YAML: &str = "envoy-cluster.yaml";
/// The etcd cluster of `envoy-cluster.yaml` (its plugin's `ledger.cluster`).
pub const ETCD_CLUSTER: &str = "retry-guard-etcd";
/// Replica B's listener port when two replicas run on one machine (the file's header).
pub const REPLICA_B_LISTENER_PORT: u16 = 10001;
/// Replica B's admin port when two replicas run on one machine (the file's header).
pub const REPLICA_B_ADMIN_PORT: u16 = 9902;

/// `envoy/envoy-cluster.yaml` as JSON.
pub fn envoy_cluster_yaml() -> Result<Value> {
    load_yaml(&bundled_path(ENVOY_CLUSTER_YAML))
}

/// Replica B's file made from the text of replica A's, as the file's header says: the
/// `sed` that moves the listener to [`REPLICA_B_LISTENER_PORT`] and the admin API to
/// [`REPLICA_B_ADMIN_PORT`]. Each setting must occur exactly once outside comments.
pub fn replica_b_text(text: &str) -> Result<String> {
    let mut out = text.to_string();
    for (from, to) in [
        (LISTENER_PORT, REPLICA_B_LISTENER_PORT),
        (ADMIN_PORT, REPLICA_B_ADMIN_PORT),
    ] {
        let (from, to) = (format!("port_value: {from}"), format!("port_value: {to}"));
        let settings = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains(&from))
            .count();
        if settings != 1 {
            bail!("`{from}` is set {settings} times in {ENVOY_CLUSTER_YAML}; the header's sed expects once");
        }
        out = out.replace(&from, &to);
    }
    Ok(out)
}

/// The etcd cluster the plugin configuration's `ledger.cluster` names, in a bootstrap.
pub fn ledger_cluster_mut(bootstrap: &mut Value) -> Result<&mut Value> {
    let config = plugin_config(bootstrap)?;
    let Some(name) = config["ledger"]["cluster"].as_str().map(str::to_string) else {
        bail!("the plugin configuration has no ledger.cluster");
    };
    bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == name.as_str()))
        .ok_or_else(|| {
            Error(format!(
                "the bootstrap has no cluster {name:?} (ledger.cluster)"
            ))
        })
}

/// A replica of `envoy-cluster.yaml` for a run: see the module docs.
#[derive(Clone, Debug)]
pub struct Replica {
    etcd: Vec<SocketAddr>,
    tls: Option<(Certs, bool)>,
    plugin_config: Option<Value>,
}

impl Replica {
    /// A replica whose etcd cluster reaches these client addresses.
    pub fn new(etcd_clients: &[SocketAddr]) -> Replica {
        Replica {
            etcd: etcd_clients.to_vec(),
            tls: None,
            plugin_config: None,
        }
    }

    /// Reaches etcd over TLS ([`upstream_tls`]): with `client_cert`, presenting Envoy's client
    /// certificate; without, only checking etcd's.
    pub fn tls(mut self, certs: &Certs, client_cert: bool) -> Replica {
        self.tls = Some((certs.clone(), client_cert));
        self
    }

    /// Another plugin configuration (e.g. the file's with another key prefix).
    pub fn plugin_config(mut self, config: Value) -> Replica {
        self.plugin_config = Some(config);
        self
    }

    /// The bootstrap: `bundled` (the parsed `envoy-cluster.yaml`) changed for this run.
    pub fn build(&self, bundled: &Value, backend: SocketAddr) -> Result<Value> {
        let mut tg = TestGateway::new().twins(false);
        if let Some(pc) = &self.plugin_config {
            tg = tg.plugin_config(pc.clone());
        }
        let mut b = tg.build(bundled, backend)?;
        let cluster = ledger_cluster_mut(&mut b)?;
        let endpoints: Vec<Value> = self
            .etcd
            .iter()
            .map(|a| {
                json!({"endpoint": {"address": {"socket_address": {
                    "address": a.ip().to_string(), "port_value": a.port()}}}})
            })
            .collect();
        cluster["load_assignment"]["endpoints"] = json!([{ "lb_endpoints": endpoints }]);
        if let Some((certs, client_cert)) = &self.tls {
            cluster["transport_socket"] = upstream_tls(certs, *client_cert);
        }
        Ok(b)
    }

    /// An Envoy builder for this replica of `envoy-cluster.yaml` in front of `backend`
    /// (2 workers).
    pub fn builder(&self, name: &str, backend: SocketAddr) -> Result<EnvoyBuilder> {
        let bootstrap = self.build(&envoy_cluster_yaml()?, backend)?;
        Ok(Envoy::builder(name, backend)
            .bootstrap(bootstrap)
            .concurrency(2))
    }

    /// Starts this replica in front of `backend`.
    pub fn start(&self, name: &str, backend: SocketAddr) -> Result<Envoy> {
        self.builder(name, backend)?.start()
    }
}
