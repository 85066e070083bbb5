//! etcd's own count of the requests it handled, read from its Prometheus `/metrics`.
//!
//! etcd 3.4's JSON gateway (`POST /v3/kv/txn`, `/v3/kv/range`, `/v3/lease/grant`) hands each
//! request to etcd's gRPC server, so each is counted once in
//! `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` (checked on etcd 3.4.23:
//! one gateway transaction moves `grpc_method="Txn"` by 1; `/health` moves no gRPC counter).
//! [`Handled`] sums that counter over result codes, per method.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use retry_guard_e2e::{bail, client, Result};

/// The counter of requests etcd's gRPC server has completed.
const HANDLED: &str = "grpc_server_handled_total";

/// The key-value methods: what a ledger read or write is.
pub const KV_METHODS: [&str; 4] = ["Txn", "Range", "Put", "DeleteRange"];

/// Requests etcd has completed, per gRPC method (`Txn`, `Range`, `LeaseGrant`, …), whatever
/// their result code.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Handled(pub BTreeMap<String, f64>);

impl Handled {
    /// The counts in etcd's metrics text (Prometheus text format). Lines of other metrics,
    /// comments and malformed lines are skipped.
    pub fn parse(text: &str) -> Handled {
        let mut by_method = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(HANDLED) else {
                continue;
            };
            let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.rsplit_once('}'))
            else {
                continue;
            };
            // The value may be followed by a timestamp.
            let Some(value) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            if let Some(method) = label(labels, "grpc_method") {
                *by_method.entry(method.to_string()).or_insert(0.0) += value;
            }
        }
        Handled(by_method)
    }

    /// Reads the counts from the etcd member whose client URL is `addr`.
    pub fn read(addr: SocketAddr) -> Result<Handled> {
        let resp =
            client::send_with_timeout(addr, "GET", "/metrics", &[], b"", Duration::from_secs(5))?;
        if resp.status != 200 {
            bail!("etcd /metrics: HTTP {}", resp.status);
        }
        Ok(Handled::parse(&resp.text()))
    }

    /// Requests of `method`.
    pub fn of(&self, method: &str) -> f64 {
        self.0.get(method).copied().unwrap_or(0.0)
    }

    /// Key-value requests ([`KV_METHODS`]).
    pub fn kv(&self) -> f64 {
        KV_METHODS.iter().map(|m| self.of(m)).sum()
    }

    /// The requests completed since `earlier`.
    pub fn since(&self, earlier: &Handled) -> Handled {
        Handled(
            self.0
                .iter()
                .map(|(m, n)| (m.clone(), n - earlier.of(m)))
                .filter(|(_, n)| *n != 0.0)
                .collect(),
        )
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Handled) {
        for (m, n) in &other.0 {
            *self.0.entry(m.clone()).or_insert(0.0) += n;
        }
    }
}

/// The value of label `name` in a Prometheus label set (`a="x",b="y"`; values without
/// escapes, as etcd's are).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An excerpt of etcd 3.4.23's `/metrics` after one lease grant and two gateway
    /// transactions, one of them answered with an error code.
    const SAMPLE: &str = r#"# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="OK",grpc_method="LeaseGrant",grpc_service="etcdserverpb.Lease",grpc_type="unary"} 1
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 0
grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1
grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1
grpc_server_handled_total{grpc_code="OK",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 2 1700000000000
# HELP grpc_server_msg_received_total Total number of RPC stream messages received on the server.
# TYPE grpc_server_msg_received_total counter
grpc_server_msg_received_total{grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2
grpc_server_handled_total{grpc_method="Put"} not-a-number
grpc_server_handled_total_extra{grpc_method="Put"} 7
etcd_mvcc_put_total 1
"#;

    #[test]
    fn handled_requests_are_summed_over_codes_per_method() {
        let h = Handled::parse(SAMPLE);
        assert_eq!(h.of("Txn"), 2.0, "OK and Unavailable together");
        assert_eq!(h.of("LeaseGrant"), 1.0);
        assert_eq!(h.of("Range"), 0.0);
        assert_eq!(h.of("Watch"), 2.0, "a timestamp after the value is ignored");
        assert_eq!(h.of("Put"), 0.0, "malformed and other metrics are skipped");
        assert_eq!(h.kv(), 2.0);
        assert_eq!(h.0.len(), 4, "Txn, LeaseGrant, Range, Watch");
        assert!(Handled::parse("").0.is_empty());
    }

    #[test]
    fn counts_since_an_earlier_reading_and_sums() {
        let before = Handled::parse(SAMPLE);
        let after = Handled::parse(&SAMPLE.replace(
            r#"grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#,
            r#"grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 5"#,
        ));
        let d = after.since(&before);
        assert_eq!(d.of("Txn"), 8.0, "both codes' lines moved from 1 to 5");
        assert_eq!(d.of("LeaseGrant"), 0.0);
        assert_eq!(d.0.len(), 1, "unmoved methods are left out");
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!(sum.of("Txn"), 16.0);
    }

    #[test]
    fn labels_are_read_by_name() {
        let l = r#"grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV""#;
        assert_eq!(label(l, "grpc_method"), Some("Txn"));
        assert_eq!(label(l, "grpc_code"), Some("OK"));
        assert_eq!(label(l, "missing"), None);
    }
}
