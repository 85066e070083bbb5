//! The bundled configurations as data: `envoy/envoy.yaml` (the local gateway) and the Istio
//! manifests under `envoy/istio/`, read with a YAML parser; and the bundled gateway made fit
//! for a test by [`TestGateway`].
//!
//! A test runs the *bundled* `envoy.yaml`, changed only where a test must differ: kernel-chosen
//! ports instead of 10000/9901, the test's backend instead of 127.0.0.1:18080, the access log in
//! the run folder instead of stdout, an absolute wasm path, optionally another plugin
//! configuration, and for each guarded route two test-only twins with the *same route name*
//! (so the filter treats them as that route):
//!
//! - `x-e2e-upstream: closed` routes to a cluster whose port is closed: a real connection
//!   failure (Envoy response flag `UF`), the `not_sent` outcome;
//! - `x-e2e-upstream: slow` has a 1 s route timeout: a real upstream timeout (`UT`) when the
//!   backend takes longer, a `failed_unknown` outcome.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::envoy::{ACCESS_LOG_PLACEHOLDER, WASM_PLACEHOLDER};
use crate::{bail, repo_root, Error, Result};

/// The request header that selects a test-only twin of a guarded route.
pub const UPSTREAM_HEADER: &str = "x-e2e-upstream";
/// Route timeout of the `slow` twins.
pub const SLOW_ROUTE_TIMEOUT: &str = "1s";
/// The catch-all route of `envoy.yaml`, not guarded by the filter.
pub const PASSTHROUGH_ROUTE: &str = "passthrough";
/// The upstream cluster of `envoy.yaml`.
pub const BACKEND_CLUSTER: &str = "identity-backend";
/// The listener port of `envoy.yaml`.
pub const LISTENER_PORT: u16 = 10000;
/// The admin port of `envoy.yaml`.
pub const ADMIN_PORT: u16 = 9901;

/// Path of a file under `envoy/`.
pub fn bundled_path(rel: &str) -> PathBuf {
    repo_root().join("envoy").join(rel)
}

/// Reads a YAML file (one document) as JSON.
pub fn load_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
    serde_yaml::from_str(&text).map_err(|e| Error(format!("{}: {e}", path.display())))
}

/// Reads every document of a YAML file (documents separated by `---`) as JSON; empty
/// documents are skipped.
pub fn load_yaml_documents(path: &Path) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| Error(format!("{}: {e}", path.display())))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// `envoy/envoy.yaml` as JSON.
pub fn envoy_yaml() -> Result<Value> {
    load_yaml(&bundled_path("envoy.yaml"))
}

fn at<'a>(v: &'a Value, pointer: &str) -> Result<&'a Value> {
    v.pointer(pointer)
        .ok_or_else(|| Error(format!("bootstrap has no {pointer}")))
}

fn at_mut<'a>(v: &'a mut Value, pointer: &str) -> Result<&'a mut Value> {
    v.pointer_mut(pointer)
        .ok_or_else(|| Error(format!("bootstrap has no {pointer}")))
}

const HCM: &str = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";

/// The HTTP connection manager of the (first) listener.
pub fn http_connection_manager(bootstrap: &Value) -> Result<&Value> {
    at(bootstrap, HCM)
}

/// The routes of the first virtual host.
pub fn routes(bootstrap: &Value) -> Result<&Vec<Value>> {
    at(
        bootstrap,
        &format!("{HCM}/route_config/virtual_hosts/0/routes"),
    )?
    .as_array()
    .ok_or_else(|| Error::new("routes is not a list"))
}

fn wasm_filter_index(bootstrap: &Value) -> Result<usize> {
    let filters = at(bootstrap, &format!("{HCM}/http_filters"))?
        .as_array()
        .ok_or_else(|| Error::new("http_filters is not a list"))?;
    filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.wasm")
        .ok_or_else(|| Error::new("no envoy.filters.http.wasm in http_filters"))
}

/// The wasm filter's `PluginConfig` (`typed_config.config`).
pub fn wasm_plugin_config(bootstrap: &Value) -> Result<&Value> {
    let i = wasm_filter_index(bootstrap)?;
    at(
        bootstrap,
        &format!("{HCM}/http_filters/{i}/typed_config/config"),
    )
}

/// [`wasm_plugin_config`], to change (a test's failure policy, say).
pub fn wasm_plugin_config_mut(bootstrap: &mut Value) -> Result<&mut Value> {
    let i = wasm_filter_index(bootstrap)?;
    at_mut(
        bootstrap,
        &format!("{HCM}/http_filters/{i}/typed_config/config"),
    )
}

/// The plugin configuration text (`configuration.value`) of the wasm filter.
pub fn plugin_config_text(bootstrap: &Value) -> Result<String> {
    wasm_plugin_config(bootstrap)?["configuration"]["value"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::new("the wasm filter has no configuration.value string"))
}

/// The plugin configuration of the wasm filter, parsed.
pub fn plugin_config(bootstrap: &Value) -> Result<Value> {
    let text = plugin_config_text(bootstrap)?;
    serde_json::from_str(&text)
        .map_err(|e| Error(format!("the wasm filter's configuration is not JSON: {e}")))
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Turns the bundled gateway into a bootstrap for a test (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct TestGateway {
    plugin_config: Option<Value>,
    twins: bool,
}

impl TestGateway {
    pub fn new() -> Self {
        TestGateway {
            plugin_config: None,
            twins: true,
        }
    }

    /// Replaces the plugin configuration.
    pub fn plugin_config(mut self, config: Value) -> Self {
        self.plugin_config = Some(config);
        self
    }

    /// Whether to add the `closed`/`slow` twins of the guarded routes (default yes).
    pub fn twins(mut self, on: bool) -> Self {
        self.twins = on;
        self
    }

    /// The test bootstrap: `bundled` with the changes of the module docs.
    pub fn build(&self, bundled: &Value, backend: SocketAddr) -> Result<Value> {
        let mut b = bundled.clone();
        *at_mut(&mut b, "/admin/address/socket_address/port_value")? = json!(0);
        *at_mut(
            &mut b,
            "/static_resources/listeners/0/address/socket_address/port_value",
        )? = json!(0);
        *at_mut(&mut b, &format!("{HCM}/access_log/0/typed_config/path"))? =
            json!(ACCESS_LOG_PLACEHOLDER);
        let wasm = wasm_filter_index(&b)?;
        let config = format!("{HCM}/http_filters/{wasm}/typed_config/config");
        *at_mut(&mut b, &format!("{config}/vm_config/code/local/filename"))? =
            json!(WASM_PLACEHOLDER);
        if let Some(pc) = &self.plugin_config {
            *at_mut(&mut b, &format!("{config}/configuration/value"))? = json!(pc.to_string());
        }
        let clusters = at_mut(&mut b, "/static_resources/clusters")?
            .as_array_mut()
            .ok_or_else(|| Error::new("clusters is not a list"))?;
        let Some(backend_cluster) = clusters.iter_mut().find(|c| c["name"] == BACKEND_CLUSTER)
        else {
            bail!("no cluster {BACKEND_CLUSTER}");
        };
        let port = "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value";
        *at_mut(backend_cluster, port)? = json!(backend.port());
        if self.twins {
            let mut closed = backend_cluster.clone();
            closed["name"] = json!("e2e-closed");
            closed["load_assignment"]["cluster_name"] = json!("e2e-closed");
            *at_mut(&mut closed, port)? = json!(closed_port()?);
            clusters.push(closed);
            let routes = at_mut(
                &mut b,
                &format!("{HCM}/route_config/virtual_hosts/0/routes"),
            )?
            .as_array_mut()
            .ok_or_else(|| Error::new("routes is not a list"))?;
            let mut with_twins = Vec::new();
            for route in routes.drain(..) {
                // Routes that forward, but the catch-all (not `identity-unrouted`, an Envoy
                // direct response).
                if route["name"] != PASSTHROUGH_ROUTE && route["route"].is_object() {
                    for (value, cluster, timeout) in [
                        ("closed", Some("e2e-closed"), None),
                        ("slow", None, Some(SLOW_ROUTE_TIMEOUT)),
                    ] {
                        let mut twin = route.clone();
                        let header =
                            json!({"name": UPSTREAM_HEADER, "string_match": {"exact": value}});
                        match twin["match"]["headers"].as_array_mut() {
                            Some(h) => h.push(header),
                            None => twin["match"]["headers"] = json!([header]),
                        }
                        if let Some(c) = cluster {
                            twin["route"]["cluster"] = json!(c);
                        }
                        if let Some(t) = timeout {
                            twin["route"]["timeout"] = json!(t);
                            if let Some(rp) = twin["route"]["retry_policy"].as_object_mut() {
                                rp.remove("per_try_timeout");
                            }
                        }
                        with_twins.push(twin);
                    }
                }
                with_twins.push(route);
            }
            *routes = with_twins;
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_gateway_becomes_a_test_bootstrap() {
        let bundled = envoy_yaml().expect("envoy/envoy.yaml parses");
        let backend = SocketAddr::from(([127, 0, 0, 1], 4321));
        let b = TestGateway::new()
            .plugin_config(json!({"routes": []}))
            .build(&bundled, backend)
            .expect("builds");
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 0);
        let hcm = http_connection_manager(&b).expect("hcm");
        assert_eq!(
            hcm["access_log"][0]["typed_config"]["path"],
            ACCESS_LOG_PLACEHOLDER
        );
        assert_eq!(plugin_config_text(&b).expect("config"), r#"{"routes":[]}"#);
        let names: Vec<&str> = routes(&b)
            .expect("routes")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        // Every route that forwards but the catch-all gets two twins with its name, placed
        // before it.
        assert_eq!(&names[..3], ["token", "token", "token"]);
        assert_eq!(names.last(), Some(&PASSTHROUGH_ROUTE));
        let bundled = routes(&bundled).expect("routes");
        let twinned = bundled
            .iter()
            .filter(|r| r["route"].is_object() && r["name"] != PASSTHROUGH_ROUTE)
            .count();
        assert_eq!(names.len(), bundled.len() + twinned * 2);
        let text = b.to_string();
        assert!(text.contains("\"port_value\":4321"), "{text}");
        assert!(text.contains("e2e-closed"));
    }
}
