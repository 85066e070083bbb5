//! Properties (`proxy_get_property`) with Envoy's encodings: strings are raw bytes, integers
//! are 8 bytes little-endian, booleans 1 byte, timestamps and durations int64 nanoseconds, maps
//! the pairs wire format. Unknown paths are `NotFound`, as in Envoy.

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
