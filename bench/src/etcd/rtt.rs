//! One etcd transaction's round trip, timed from the bench process: the ledger's insert-if-
//! absent (`POST /v3/kv/txn`, the body the filter sends for a first attempt: compare
//! `create_revision == 0`, put a 120-byte entry with a lease, else read the key) on one
//! kept-alive HTTP/1.1 connection to the member's JSON gateway, a new key each time.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use retry_guard::etcd::{txn_body, Expect};
use retry_guard_e2e::etcd::post;
use retry_guard_e2e::{bail, Error, Result};
use serde_json::json;

use crate::measure::percentile;

/// The timed round trips, µs, sorted.
pub struct RoundTrips {
    /// Each transaction's round trip, sorted.
    pub sorted_us: Vec<f64>,
}

impl RoundTrips {
    /// The median, µs.
    pub fn p50(&self) -> f64 {
        percentile(&self.sorted_us, 0.50)
    }

    /// The 99th percentile, µs.
    pub fn p99(&self) -> f64 {
        percentile(&self.sorted_us, 0.99)
    }
}

/// Times `n` insert-if-absent transactions (after `warm` untimed ones) against the member at
/// `addr`, each on a new key under `prefix` with a lease granted for the purpose. Every one
/// must succeed (the key was absent).
pub fn time_txns(addr: SocketAddr, prefix: &str, warm: usize, n: usize) -> Result<RoundTrips> {
    // A lease of etcd's choosing (ID 0), as the ledger writes its entries with one.
    let granted = post(addr, "/v3/lease/grant", &json!({"TTL": "300", "ID": "0"}))?;
    let lease: i64 = granted["ID"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error(format!("etcd granted no lease id: {granted}")))?;
    let mut conn = KeepAlive::connect(addr)?;
    // A ledger entry's size (`retry_guard::ledger::ENTRY_BYTES`).
    let value = vec![0x5a_u8; retry_guard::ledger::ENTRY_BYTES];
    let mut sorted_us = Vec::with_capacity(n);
    for i in 0..warm + n {
        let key = format!("{prefix}{}-{i:08}", std::process::id());
        let body = txn_body(&key, Expect::Absent, &value, lease);
        let started = Instant::now();
        let answer = conn.post("/v3/kv/txn", body.as_bytes())?;
        let took = started.elapsed();
        if !answer.contains("\"succeeded\":true") {
            bail!("etcd's transaction on the new key {key} did not succeed: {answer}");
        }
        if i >= warm {
            sorted_us.push(took.as_secs_f64() * 1e6);
        }
    }
    sorted_us.sort_by(f64::total_cmp);
    Ok(RoundTrips { sorted_us })
}

/// An HTTP/1.1 connection kept alive across requests (etcd's gateway answers with a
/// `Content-Length`).
struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    fn connect(addr: SocketAddr) -> Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| Error(format!("connect to etcd at {addr}: {e}")))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// POSTs a JSON `body` to `path` and returns the answer's body (an error unless 200).
    fn post(&mut self, path: &str, body: &[u8]) -> Result<String> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: etcd\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request)?;
        read_response(&mut self.reader)
    }
}

/// Reads one response with a `Content-Length` from `r`; its body, or an error unless 200.
fn read_response(r: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut length = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("etcd closed the connection in an answer's head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let Some(length) = length else {
        bail!("etcd's answer has no content-length (status {status})");
    };
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != "200" {
        bail!("etcd answered {status}: {body}");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_their_length_one_after_another() {
        let wire = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"succeeded\":true}HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        let mut r = BufReader::new(wire.as_bytes());
        assert_eq!(read_response(&mut r).unwrap(), "{\"succeeded\":true}");
        let err = read_response(&mut r).unwrap_err();
        assert!(err.0.contains("400"), "{err}");
        let mut chunked = BufReader::new(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".as_bytes(),
        );
        assert!(read_response(&mut chunked).is_err());
    }
}
