//! Properties (`proxy_get_property`) with Envoy's encodings: strings are raw bytes, integers
//! are 8 bytes little-endian, booleans 1 byte, timestamps and durations int64 nanoseconds, maps
//! the pairs wire format. Unknown paths are `NotFound`, as in Envoy.
//!
//! Dynamic metadata (`metadata`) as Envoy 1.40 returns it (checked with `jwt_authn` in front of
//! a proxy-wasm filter): `metadata` alone is the serialized protobuf
//! `envoy.config.core.v3.Metadata`; `metadata.filter_metadata.<namespace>.<key>...` walks into
//! it (a list by index) and gives a string's raw bytes, a number as an 8-byte little-endian
//! double, a bool as 1 byte, a struct or list in the pairs format (a list's elements as keys
//! with empty values), a null as `SerializationFailure`.

use crate::abi::{encode_pairs, status};
use crate::headers::HeaderMap;
use crate::stream::StreamState;

/// Plugin-level facts (available in every context).
#[derive(Clone, Debug)]
pub struct PluginFacts {
    /// `plugin_name`.
    pub name: String,
    /// `plugin_root_id`.
    pub root_id: String,
    /// `plugin_vm_id`.
    pub vm_id: String,
}

enum Value {
    Str(Vec<u8>),
    Int(i64),
    Uint(u64),
    Bool(bool),
    Map(Vec<(Vec<u8>, Vec<u8>)>),
}

impl Value {
    fn encode(self) -> Vec<u8> {
        match self {
            Value::Str(s) => s,
            Value::Int(i) => i.to_le_bytes().to_vec(),
            Value::Uint(u) => u.to_le_bytes().to_vec(),
            Value::Bool(b) => vec![u8::from(b)],
            Value::Map(p) => encode_pairs(&p),
        }
    }
}

fn s(v: impl AsRef<[u8]>) -> Option<Value> {
    Some(Value::Str(v.as_ref().to_vec()))
}

fn header_map(h: &HeaderMap) -> Value {
    Value::Map(
        h.pairs()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect(),
    )
}

fn path_of(h: &HeaderMap) -> Option<String> {
    h.get_str(":path")
}

fn request_value(st: &StreamState, field: &str) -> Option<Value> {
    let h = if st.access_log_phase {
        &st.log_request_headers
    } else {
        &st.request_headers
    };
    match field {
        "path" => s(path_of(h)?),
        "url_path" => s(path_of(h)?.split('?').next().unwrap_or("")),
        "host" => s(h.get(b":authority")?),
        "scheme" => s(h.get(b":scheme")?),
        "method" => s(h.get(b":method")?),
        "headers" => Some(header_map(h)),
        "referer" => s(h.get(b"referer")?),
        "useragent" => s(h.get(b"user-agent")?),
        "id" => s(h.get(b"x-request-id")?),
        // Envoy: the text after `?`, or an empty string when there is none (not NotFound).
        "query" => s(path_of(h)?
            .split_once('?')
            .map(|x| x.1.to_string())
            .unwrap_or_default()),
        "protocol" => s(&st.facts.protocol),
        "time" => Some(Value::Int(st.facts.request_time_ns as i64)),
        "size" => Some(Value::Int(st.facts.request_size as i64)),
        "total_size" => Some(Value::Int(
            (st.facts.request_size + h.byte_size() as u64) as i64,
        )),
        _ => None,
    }
}

fn response_value(st: &StreamState, field: &str) -> Option<Value> {
    match field {
        "code" => Some(Value::Int(st.facts.response_code? as i64)),
        "code_details" => s(st.facts.response_code_details.as_ref()?),
        "flags" => Some(Value::Int(st.facts.response_flags as i64)),
        "headers" => {
            let h = if st.access_log_phase {
                st.log_response_headers.as_ref()?
            } else if st.response_headers_available || st.response_started {
                &st.response_headers
            } else {
                return None;
            };
            Some(header_map(h))
        }
        "size" => Some(Value::Int(st.facts.response_size as i64)),
        "grpc_status" => None,
        _ => None,
    }
}

fn stream_value(st: &StreamState, top: &str, field: Option<&str>) -> Option<(Value, bool)> {
    let f = &st.facts;
    // (value, consumed_field)
    match (top, field) {
        ("request", Some(field)) => Some((request_value(st, field)?, true)),
        ("response", Some(field)) => Some((response_value(st, field)?, true)),
        ("source", Some("address")) => Some((s(&f.source_address)?, true)),
        ("source", Some("port")) => Some((Value::Int(f.source_port as i64), true)),
        ("destination", Some("address")) => Some((s(&f.destination_address)?, true)),
        ("destination", Some("port")) => Some((Value::Int(f.destination_port as i64), true)),
        ("connection", Some("uri_san_peer_certificate")) => {
            Some((s(f.peer_uri_san.as_ref()?)?, true))
        }
        ("connection", Some("mtls")) => Some((Value::Bool(f.peer_uri_san.is_some()), true)),
        ("connection", Some("id")) => Some((Value::Uint(f.connection_id), true)),
        ("connection_id", None) => Some((Value::Uint(f.connection_id), false)),
        ("upstream", Some("request_attempt_count")) => {
            Some((Value::Int(f.upstream_attempts? as i64), true))
        }
        ("xds", Some("route_name")) => Some((s(f.route_name.as_ref()?)?, true)),
        ("xds", Some("cluster_name")) => Some((s(f.cluster_name.as_ref()?)?, true)),
        _ => None,
    }
}

/// Looks up a property path (segments already split on NUL). `stream` is the current
/// stream's state, `None` in a root context. Returns the encoded value or an ABI status.
pub fn get(
    plugin: &PluginFacts,
    stream: Option<&StreamState>,
    path: &[&[u8]],
) -> Result<Vec<u8>, i32> {
    let Some((first, rest)) = path.split_first() else {
        return Err(status::NOT_FOUND);
    };
    let top = String::from_utf8_lossy(first).into_owned();
    if top == "metadata" {
        let st = stream.ok_or(status::NOT_FOUND)?;
        return metadata::get(st.facts.dynamic_metadata.as_ref(), rest);
    }
    let field = rest
        .first()
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let (value, consumed) = match top.as_str() {
        "plugin_name" => (Value::Str(plugin.name.as_bytes().to_vec()), false),
        "plugin_root_id" => (Value::Str(plugin.root_id.as_bytes().to_vec()), false),
        "plugin_vm_id" => (Value::Str(plugin.vm_id.as_bytes().to_vec()), false),
        _ => {
            let st = stream.ok_or(status::NOT_FOUND)?;
            match stream_value(st, &top, field.as_deref()) {
                Some(v) => v,
                None => {
                    // Filter state written by the plugin: `wasm.<top-level name>`.
                    let key = format!("wasm.{top}");
                    match st.filter_state.get(&key) {
                        Some(v) => (Value::Str(v.clone()), false),
                        None => return Err(status::NOT_FOUND),
                    }
                }
            }
        }
    };
    let remaining = if consumed { &rest[1..] } else { rest };
    match (value, remaining) {
        (v, []) => Ok(v.encode()),
        (Value::Map(pairs), [key]) => pairs
            .into_iter()
            .find(|(k, _)| k.as_slice() == *key)
            .map(|(_, v)| v)
            .ok_or(status::NOT_FOUND),
        _ => Err(status::NOT_FOUND),
    }
}

/// The `metadata` property (dynamic metadata).
mod metadata {
    use serde_json::{Map, Value as J};

    use crate::abi::{encode_pairs, status};

    pub(super) fn get(md: Option<&Map<String, J>>, rest: &[&[u8]]) -> Result<Vec<u8>, i32> {
        let empty = Map::new();
        match rest {
            [] => match md {
                Some(m) if !m.is_empty() => Ok(metadata_message(m)),
                _ => Err(status::NOT_FOUND),
            },
            [field, keys @ ..] if *field == b"filter_metadata" => {
                let m = md.unwrap_or(&empty);
                let mut v = match keys.split_first() {
                    None => return Ok(pairs_of_object(m)),
                    Some((ns, _)) => m
                        .get(std::str::from_utf8(ns).map_err(|_| status::NOT_FOUND)?)
                        .ok_or(status::NOT_FOUND)?,
                };
                for k in keys.iter().skip(1) {
                    let k = std::str::from_utf8(k).map_err(|_| status::NOT_FOUND)?;
                    v = match v {
                        J::Object(o) => o.get(k),
                        J::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
                        _ => None,
                    }
                    .ok_or(status::NOT_FOUND)?;
                }
                leaf(v)
            }
            _ => Err(status::NOT_FOUND),
        }
    }

    /// A value as Envoy serializes a metadata leaf.
    fn leaf(v: &J) -> Result<Vec<u8>, i32> {
        Ok(match v {
            J::Null => return Err(status::SERIALIZATION_FAILURE),
            J::Bool(b) => vec![u8::from(*b)],
            J::Number(n) => n.as_f64().unwrap_or(0.0).to_le_bytes().to_vec(),
            J::String(s) => s.as_bytes().to_vec(),
            J::Object(o) => pairs_of_object(o),
            J::Array(a) => {
                let pairs: Result<Vec<_>, i32> =
                    a.iter().map(|e| Ok((leaf(e)?, Vec::new()))).collect();
                encode_pairs(&pairs?)
            }
        })
    }

    fn pairs_of_object(o: &Map<String, J>) -> Vec<u8> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = o
            .iter()
            .filter_map(|(k, v)| Some((k.as_bytes().to_vec(), leaf(v).ok()?)))
            .collect();
        encode_pairs(&pairs)
    }

    fn len_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
        out.push(field << 3 | 2);
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
    }

    /// `google.protobuf.Value`: null 1, number 2 (double), string 3, bool 4, struct 5, list 6.
    fn value(v: &J) -> Vec<u8> {
        let mut out = Vec::new();
        match v {
            J::Null => out.extend_from_slice(&[0x08, 0]),
            J::Bool(b) => out.extend_from_slice(&[0x20, u8::from(*b)]),
            J::Number(n) => {
                out.push(0x11);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
            }
            J::String(s) => len_field(&mut out, 3, s.as_bytes()),
            J::Object(o) => len_field(&mut out, 5, &structure(o)),
            J::Array(a) => {
                let mut list = Vec::new();
                for e in a {
                    len_field(&mut list, 1, &value(e));
                }
                len_field(&mut out, 6, &list);
            }
        }
        out
    }

    /// `google.protobuf.Struct`: map<string, Value> fields = 1.
    fn structure(o: &Map<String, J>) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in o {
            let mut entry = Vec::new();
            len_field(&mut entry, 1, k.as_bytes());
            len_field(&mut entry, 2, &value(v));
            len_field(&mut out, 1, &entry);
        }
        out
    }

    /// `envoy.config.core.v3.Metadata`: map<string, Struct> filter_metadata = 1.
    fn metadata_message(m: &Map<String, J>) -> Vec<u8> {
        let mut out = Vec::new();
        for (ns, fields) in m {
            let mut entry = Vec::new();
            len_field(&mut entry, 1, ns.as_bytes());
            let empty = Map::new();
            len_field(
                &mut entry,
                2,
                &structure(fields.as_object().unwrap_or(&empty)),
            );
            len_field(&mut out, 1, &entry);
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bytes_envoy_1_40_returned() {
            // Lua set jwt_payload {uid=12345, n=1.5, sub="carol", o={k="v"}} on Envoy 1.40; the
            // `metadata` property returned exactly these bytes (field order as Envoy's map).
            let md: Map<String, J> = serde_json::from_str(
                r#"{"envoy.filters.http.jwt_authn":{"jwt_payload":{"uid":12345,"n":1.5,"sub":"carol","o":{"k":"v"}}}}"#,
            )
            .unwrap();
            let hex = "0a780a1c656e766f792e66696c746572732e687474702e6a77745f617574686e12580a560a0b6a77745f7061796c6f616412472a450a100a0375696412091100000000801cc8400a0e0a016e120911000000000000f83f0a0e0a0373756212071a056361726f6c0a110a016f120c2a0a0a080a016b12031a0176";
            let got: String = get(Some(&md), &[])
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, hex);
            let p = |path: &[&[u8]]| get(Some(&md), path);
            let ns: &[u8] = b"envoy.filters.http.jwt_authn";
            assert_eq!(
                p(&[b"filter_metadata", ns, b"jwt_payload", b"sub"]),
                Ok(b"carol".to_vec())
            );
            assert_eq!(
                p(&[b"filter_metadata", ns, b"jwt_payload", b"uid"]),
                Ok(12345f64.to_le_bytes().to_vec())
            );
            assert_eq!(
                p(&[b"filter_metadata", ns, b"jwt_payload", b"o", b"k"]),
                Ok(b"v".to_vec())
            );
            assert_eq!(
                p(&[b"filter_metadata", ns, b"jwt_payload", b"x"]),
                Err(status::NOT_FOUND)
            );
            assert_eq!(p(&[ns, b"jwt_payload"]), Err(status::NOT_FOUND));
            assert_eq!(get(None, &[]), Err(status::NOT_FOUND));
            assert_eq!(get(None, &[b"filter_metadata"]), Ok(vec![0, 0, 0, 0]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> PluginFacts {
        PluginFacts {
            name: "p".into(),
            root_id: "r".into(),
            vm_id: "v".into(),
        }
    }

    #[test]
    fn encodings_follow_envoy() {
        let mut st = StreamState::default();
        st.facts.response_flags = 0x20 | 0x8000;
        st.facts.response_code = Some(503);
        st.facts.route_name = Some("token".into());
        st.request_headers = HeaderMap::from_pairs(&[(":path", "/a?b=1"), ("x-y", "z")]);
        st.filter_state.insert("wasm.k".into(), b"v".to_vec());
        let p = plugin();
        let get = |path: &[&[u8]]| get(&p, Some(&st), path);
        assert_eq!(
            get(&[b"response", b"flags"]),
            Ok(32800u64.to_le_bytes().to_vec())
        );
        assert_eq!(
            get(&[b"response", b"code"]),
            Ok(503u64.to_le_bytes().to_vec())
        );
        assert_eq!(get(&[b"xds", b"route_name"]), Ok(b"token".to_vec()));
        assert_eq!(get(&[b"request", b"url_path"]), Ok(b"/a".to_vec()));
        assert_eq!(get(&[b"request", b"headers", b"x-y"]), Ok(b"z".to_vec()));
        assert_eq!(get(&[b"k"]), Ok(b"v".to_vec()));
        assert_eq!(get(&[b"nope"]), Err(status::NOT_FOUND));
        assert_eq!(get(&[b"plugin_name"]), Ok(b"p".to_vec()));
        assert_eq!(
            super::get(&p, None, &[b"request", b"path"]),
            Err(status::NOT_FOUND)
        );
    }
}
