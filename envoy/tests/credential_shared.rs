//! One credential, two workloads (issue 19, part 3) on the real Envoy 1.40: the bundled
//! gateway behind an mTLS listener that requires client certificates, reached by two
//! workloads whose certificates (made at test time) carry different SPIFFE ids. Each workload
//! is a plain-HTTP listener of the same Envoy that forwards to the gateway over TLS with its
//! own client certificate, so the test client itself needs no TLS.
//!
//! The deployer's token presented by the reporter is counted, audited with both identities,
//! and refused 403 `credential-shared` on the token route (`shared_credential: "deny"`);
//! on the role route (the default, `record`) it is counted and audited but decided as usual.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use retry_guard_e2e::backend::Backend;
use retry_guard_e2e::client::Response;
use retry_guard_e2e::envoy::Envoy;
use retry_guard_e2e::etcd::Certs;
use retry_guard_e2e::gateway::{closed_port, envoy_yaml, plugin_config, TestGateway};
use retry_guard_e2e::Result;
use serde_json::{json, Value};

const DEPLOYER: &str = "spiffe://cluster.local/ns/ci/sa/deployer";
const REPORTER: &str = "spiffe://cluster.local/ns/batch/sa/reporter";

fn file(p: &Path) -> Value {
    json!({ "filename": p.to_string_lossy() })
}

/// A plain-HTTP listener named `name` that forwards everything to the gateway at `gateway`
/// over TLS, presenting the client certificate `cert`/`key`.
fn workload(name: &str, gateway: u16, certs: &Certs, cert: &Path, key: &Path) -> (Value, Value) {
    let cluster = format!("to-gateway-as-{name}");
    let listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }]
            }
        }]}]
    });
    let cluster = json!({
        "name": cluster,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway}}
        }}]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": file(cert), "private_key": file(key)}],
                    "validation_context": {"trusted_ca": file(&certs.ca_cert)}
                }
            }
        }
    });
    (listener, cluster)
}

struct Mesh {
    gw: Gateway,
    deployer: SocketAddr,
    reporter: SocketAddr,
    /// The certificates, removed when the test ends.
    dir: std::path::PathBuf,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn start() -> Result<Mesh> {
    let backend = Backend::start()?;
    let dir = std::env::temp_dir().join(format!("retry-guard-nhi9-{}", std::process::id()));
    let certs = Certs::make(&dir)?;
    let client_ext = |uri: &str| {
        format!(
            "subjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\n"
        )
    };
    let (d_cert, d_key) = Certs::issue(&dir, "deployer", "/CN=deployer", &client_ext(DEPLOYER))?;
    let (r_cert, r_key) = Certs::issue(&dir, "reporter", "/CN=reporter", &client_ext(REPORTER))?;

    let mut pc = plugin_config(&envoy_yaml()?)?;
    pc["routes"][0]["shared_credential"] = json!("deny");
    let mut b = TestGateway::new()
        .plugin_config(pc)
        .build(&envoy_yaml()?, backend.addr())?;
    let port = closed_port()?;
    let gw_listener = &mut b["static_resources"]["listeners"][0];
    gw_listener["address"]["socket_address"]["port_value"] = json!(port);
    gw_listener["filter_chains"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": file(&certs.server_cert),
                    "private_key": file(&certs.server_key)
                }],
                "validation_context": {"trusted_ca": file(&certs.ca_cert)}
            }
        }
    });
    for (name, cert, key) in [("deployer", &d_cert, &d_key), ("reporter", &r_cert, &r_key)] {
        let (l, c) = workload(name, port, &certs, cert, key);
        if let Some(ls) = b["static_resources"]["listeners"].as_array_mut() {
            ls.push(l);
        }
        if let Some(cs) = b["static_resources"]["clusters"].as_array_mut() {
            cs.push(c);
        }
    }
    let envoy = Envoy::builder("credential-shared", backend.addr())
        .bootstrap(b)
        .concurrency(2)
        .start()?;
    let listeners = envoy.admin_get("/listeners?format=json")?.json()?;
    let addr = |name: &str| -> Result<SocketAddr> {
        listeners["listener_statuses"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p as u16)))
            .ok_or_else(|| retry_guard_e2e::Error(format!("no listener {name} in {listeners}")))
    };
    let (deployer, reporter) = (addr("deployer")?, addr("reporter")?);
    Ok(Mesh {
        gw: Gateway { envoy, backend },
        deployer,
        reporter,
        dir,
    })
}

/// Sends `req` as the workload listening at `via`.
fn send_as(via: SocketAddr, req: &Req) -> Response {
    let headers = headers_of(req);
    retry_guard_e2e::client::send(via, &req.method, &req.path, &headers, req.body.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", req.request_id))
}

#[test]
fn one_token_presented_by_two_workloads_is_counted_audited_and_denied() {
    let mesh = start().unwrap_or_else(|e| panic!("{e}"));
    let gw = &mesh.gw;
    let token = "Bearer deploy-token-7f3a9c";

    // The deployer uses its token: allowed, its SPIFFE id is the principal.
    let first = TOKEN
        .request("nhi9")
        .header("authorization", token)
        .body("grant_type=client_credentials&scope=deploy");
    let resp = send_as(mesh.deployer, &first);
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    let d = gw
        .decision(&first.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        d["principal"], DEPLOYER,
        "the peer identity from Envoy: {d}"
    );
    assert_eq!(d["credential_shared_with"], Value::Null, "{d}");

    // The reporter presents the deployer's token on the token route: 403, both identities
    // audited, the backend not reached.
    let second = TOKEN
        .request("nhi9")
        .header("authorization", token)
        .body("grant_type=client_credentials&scope=report");
    let second = second.again("reporter");
    let resp = send_as(mesh.reporter, &second);
    let doc = check_problem(
        &resp,
        403,
        "urn:retry-guard:problem:credential-shared",
        &TOKEN,
        &second.request_id,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!doc.to_string().contains("spiffe://"), "{doc}");
    let d = gw
        .decision(&second.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["decision"], "credential_shared", "{d}");
    assert_eq!(d["credential_holder"], REPORTER, "{d}");
    assert_eq!(d["credential_shared_with"], DEPLOYER, "{d}");
    assert_eq!(
        gw.upstream("nhi9").len(),
        1,
        "the reporter's call never reached the backend"
    );

    // On the role route (shared_credential: record, the default) it is counted and audited,
    // and decided as usual.
    let grant = ROLE_GRANT
        .request("nhi9-role")
        .header("authorization", token);
    let resp = send_as(mesh.reporter, &grant);
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    let d = gw
        .decision(&grant.request_id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["credential_shared_with"], DEPLOYER, "{d}");
    assert_eq!(gw.counter("retry_guard.credential.shared"), 2);
    assert_eq!(gw.counter("retry_guard.decision.credential_shared"), 1);

    // The deployer keeps using its own token undisturbed.
    let again = TOKEN
        .request("nhi9")
        .header("authorization", token)
        .body("grant_type=client_credentials&scope=deploy-2");
    let again = again.again("deployer-again");
    let resp = send_as(mesh.deployer, &again);
    assert_eq!(resp.status, 200, "{}", describe(&resp));
    assert_eq!(gw.counter("retry_guard.credential.shared"), 2);
}
