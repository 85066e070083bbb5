//! The `env.proxy_*` host functions with Envoy 1.40's semantics (proxy-wasm-cpp-host
//! `src/exports.cc` plus Envoy's `source/extensions/common/wasm/context.cc`).

use wasmtime::{Caller, Linker};

use super::mem::{copy_out, read, write_u32, write_u64};
use super::tri;
use crate::abi::{decode_pairs, encode_pairs, split_path, status, BufferType, MapType, MetricType};
use crate::headers::HeaderMap;
use crate::sched::{Access, HostCall, MetricOp};
use crate::shared::{lock, Metric};
use crate::stream::LocalReply;
use crate::vm::{HostState, HttpCall};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

/// Runs the interleaving hook if it waits for this function in this context.
fn fire_hook(c: &mut C<'_>, function: &str) {
    c.data_mut().host_calls += 1;
    let ctx = c.data().context();
    let due = c
        .data()
        .hook
        .as_ref()
        .is_some_and(|h| h.function == function && h.context_id == ctx);
    if due {
        if let Some(h) = c.data_mut().hook.take() {
            if let Err(e) = (h.run)() {
                c.data_mut().hook_error = Some(e);
            }
        }
    }
}

/// Hands a shared-data call to the VM's scheduler (see [`crate::sched`]).
fn shared_data_point(c: &mut C<'_>, function: &'static str, key: &[u8], write: bool) {
    if c.data().scheduler.is_some() {
        crate::sched::at(c, || HostCall {
            function,
            access: Access::SharedData {
                key: key.to_vec(),
                write,
            },
        });
    }
}

/// Hands a metric call to the VM's scheduler (see [`crate::sched`]).
fn metric_point(c: &mut C<'_>, function: &'static str, name: &str, op: MetricOp) {
    if c.data().scheduler.is_some() {
        crate::sched::at(c, || HostCall {
            function,
            access: Access::Metric {
                name: name.to_string(),
                op,
            },
        });
    }
}

/// A read-only view of a header map (Envoy `getConstMap`).
fn const_map(st: &HostState, t: MapType) -> Option<HeaderMap> {
    match t {
        MapType::HttpCallResponseHeaders => st.http_response.as_ref().map(|r| r.headers.clone()),
        MapType::HttpCallResponseTrailers => st.http_response.as_ref().map(|r| r.trailers.clone()),
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => None,
        _ => {
            let s = st.stream()?;
            match t {
                MapType::RequestHeaders if s.access_log_phase => {
                    Some(s.log_request_headers.clone())
                }
                MapType::RequestHeaders => s
                    .request_headers_available
                    .then(|| s.request_headers.clone()),
                MapType::RequestTrailers if s.access_log_phase => None,
                MapType::RequestTrailers => s.request_trailers.clone(),
                MapType::ResponseHeaders if s.access_log_phase => s.log_response_headers.clone(),
                MapType::ResponseHeaders => s
                    .response_headers_available
                    .then(|| s.response_headers.clone()),
                MapType::ResponseTrailers => s.response_trailers.clone(),
                _ => None,
            }
        }
    }
}

/// A mutable header map (Envoy `getMap`): request/response headers and trailers only.
fn with_mut_map<T>(
    st: &mut HostState,
    t: MapType,
    f: impl FnOnce(&mut HeaderMap) -> T,
) -> Result<T, i32> {
    let s = st.stream_mut().ok_or(status::BAD_ARGUMENT)?;
    if s.access_log_phase {
        // Envoy 1.40 (checked with the probe, host-sim/tests/probe_vs_envoy.rs): in
        // `proxy_on_log` a header map is writable only if Envoy still holds it, i.e. the
        // filter never let it continue (Ok, no effect on the finished exchange); else
        // BadArgument. Trailers: BadArgument.
        return match t {
            MapType::RequestHeaders if s.log_request_headers_writable => {
                Ok(f(&mut s.log_request_headers))
            }
            MapType::ResponseHeaders if s.log_response_headers_writable => {
                match s.log_response_headers.as_mut() {
                    Some(m) => Ok(f(m)),
                    None => Err(status::BAD_ARGUMENT),
                }
            }
            _ => Err(status::BAD_ARGUMENT),
        };
    }
    let map = match t {
        MapType::RequestHeaders if s.request_headers_available => &mut s.request_headers,
        MapType::ResponseHeaders if s.response_headers_available => &mut s.response_headers,
        MapType::RequestTrailers => s.request_trailers.as_mut().ok_or(status::BAD_ARGUMENT)?,
        MapType::ResponseTrailers => s.response_trailers.as_mut().ok_or(status::BAD_ARGUMENT)?,
        _ => return Err(status::BAD_ARGUMENT),
    };
    Ok(f(map))
}

fn map_type(t: i32) -> Result<MapType, i32> {
    MapType::from_abi(t).ok_or(status::BAD_ARGUMENT)
}

/// The bytes of a readable buffer (Envoy `getBuffer`); `None` is `NotFound`.
fn buffer(st: &HostState, t: BufferType) -> Option<Vec<u8>> {
    match t {
        BufferType::VmConfiguration => Some(st.vm_config.clone()),
        BufferType::PluginConfiguration => st.in_configure.then(|| st.plugin_config.clone()),
        BufferType::HttpCallResponseBody => st.http_response.as_ref().map(|r| r.body.clone()),
        BufferType::HttpRequestBody => Some(
            st.stream()
                .filter(|s| s.request_body_available)
                .map(|s| s.request_body.clone())
                .unwrap_or_default(),
        ),
        BufferType::HttpResponseBody => Some(
            st.stream()
                .filter(|s| s.response_body_available)
                .map(|s| s.response_body.clone())
                .unwrap_or_default(),
        ),
        // Envoy hands an empty (null-backed) buffer for these outside their callbacks.
        BufferType::DownstreamData
        | BufferType::UpstreamData
        | BufferType::GrpcReceiveBuffer
        | BufferType::CallData => Some(Vec::new()),
    }
}

fn metric_type_of(id: u32) -> Option<MetricType> {
    match id & 3 {
        0 => Some(MetricType::Counter),
        1 => Some(MetricType::Gauge),
        2 => Some(MetricType::Histogram),
        _ => None,
    }
}

/// Registers every `env.proxy_*` function.
pub fn add(
    l: &mut Linker<HostState>,
    p: &mut Vec<(&'static str, &'static str)>,
) -> wasmtime::Result<()> {
    // Every host function is counted when the runtime profiles and recorded when it records
    // (`super::register`).
    macro_rules! reg {
        ($($rest:tt)*) => {
            super::register!(l, p, "env", $($rest)*)
        };
    }

    // Logging and time.
    reg!("proxy_log", |c: C<'_>,
                       level: i32,
                       ptr: i32,
                       size: i32|
     -> R {
        if !(0..=5).contains(&level) {
            return Ok(status::BAD_ARGUMENT);
        }
        let msg = tri!(read(&c, ptr, size));
        c.data()
            .log(level as u32, String::from_utf8_lossy(&msg).into_owned());
        Ok(status::OK)
    });
    reg!("proxy_get_log_level", |mut c: C<'_>, ret: i32| -> R {
        let level = c.data().log_level;
        tri!(write_u32(&mut c, ret, level));
        Ok(status::OK)
    });
    reg!("proxy_get_current_time_nanoseconds", |mut c: C<'_>,
                                                ret: i32|
     -> R {
        let now = c.data().shared.now().realtime_ns;
        tri!(write_u64(&mut c, ret, now));
        Ok(status::OK)
    });
    reg!("proxy_set_tick_period_milliseconds", |mut c: C<'_>,
                                                period: i32|
     -> R {
        let now = c.data().shared.now().monotonic_ns;
        let st = c.data_mut();
        st.tick_period_ms = period as u32 as u64;
        st.next_tick_ns = now + st.tick_period_ms * 1_000_000;
        Ok(status::OK)
    });

    // Configuration (ABI 0.1 name, still exported by cpp-host) and buffers.
    reg!("proxy_get_configuration", |mut c: C<'_>,
                                     ptr_ptr: i32,
                                     size_ptr: i32|
     -> R {
        let v = if c.data().in_configure {
            c.data().plugin_config.clone()
        } else {
            c.data().vm_config.clone()
        };
        copy_out(&mut c, &v, ptr_ptr, size_ptr)
    });
    reg!("proxy_get_buffer_bytes", |mut c: C<'_>,
                                    t: i32,
                                    start: i32,
                                    max: i32,
                                    ptr_ptr: i32,
                                    size_ptr: i32|
     -> R {
        let t = tri!(BufferType::from_abi(t).ok_or(status::BAD_ARGUMENT));
        let buf = tri!(buffer(c.data(), t).ok_or(status::NOT_FOUND));
        let (start, mut len) = (start as u32 as usize, max as u32 as usize);
        if start >= buf.len() {
            // Envoy 1.40 answers Ok and hands over nothing for a start at or past the end
            // (checked with the probe); cpp-host leaves the out-pointers alone.
            return Ok(status::OK);
        }
        if start + len > buf.len() {
            len = buf.len() - start;
        }
        if len == 0 {
            // cpp-host returns Ok without touching the out-pointers.
            return Ok(status::OK);
        }
        copy_out(&mut c, &buf[start..start + len], ptr_ptr, size_ptr)
    });
    reg!("proxy_get_buffer_status", |mut c: C<'_>,
                                     t: i32,
                                     len_ptr: i32,
                                     flags_ptr: i32|
     -> R {
        let t = tri!(BufferType::from_abi(t).ok_or(status::BAD_ARGUMENT));
        let buf = tri!(buffer(c.data(), t).ok_or(status::NOT_FOUND));
        tri!(write_u32(&mut c, len_ptr, buf.len() as u32));
        tri!(write_u32(&mut c, flags_ptr, 0));
        Ok(status::OK)
    });
    reg!("proxy_set_buffer_bytes", |mut c: C<'_>,
                                    t: i32,
                                    start: i32,
                                    length: i32,
                                    ptr: i32,
                                    size: i32|
     -> R {
        let t = tri!(BufferType::from_abi(t).ok_or(status::BAD_ARGUMENT));
        let data = tri!(read(&c, ptr, size));
        let st = c.data_mut();
        let s = tri!(st.stream_mut().ok_or(status::BAD_ARGUMENT));
        let body = match t {
            BufferType::HttpRequestBody if s.request_body_available => &mut s.request_body,
            BufferType::HttpResponseBody if s.response_body_available => &mut s.response_body,
            _ => return Ok(status::BAD_ARGUMENT),
        };
        // Envoy Buffer::copyFrom: start 0 drains `length` then prepends; start at or past
        // the end appends; anything else is BadArgument.
        let (start, length) = (start as u32 as usize, length as u32 as usize);
        if start == 0 {
            let n = length.min(body.len());
            body.drain(..n);
            let mut v = data;
            v.extend_from_slice(body);
            *body = v;
        } else if start >= body.len() {
            body.extend_from_slice(&data);
        } else {
            return Ok(status::BAD_ARGUMENT);
        }
        Ok(status::OK)
    });

    // Header and trailer maps.
    reg!("proxy_get_header_map_pairs", |mut c: C<'_>,
                                        t: i32,
                                        ptr_ptr: i32,
                                        size_ptr: i32|
     -> R {
        let t = tri!(map_type(t));
        let map = const_map(c.data(), t).unwrap_or_default();
        let bytes = if map.is_empty() {
            Vec::new()
        } else {
            let pairs: Vec<(&[u8], &[u8])> = map
                .pairs()
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice()))
                .collect();
            encode_pairs(&pairs)
        };
        copy_out(&mut c, &bytes, ptr_ptr, size_ptr)
    });
    reg!("proxy_set_header_map_pairs", |mut c: C<'_>,
                                        t: i32,
                                        ptr: i32,
                                        size: i32|
     -> R {
        let t = tri!(map_type(t));
        let data = tri!(read(&c, ptr, size));
        let pairs = decode_pairs(&data);
        tri!(with_mut_map(c.data_mut(), t, |m| {
            m.clear();
            for (k, v) in &pairs {
                m.add(k, v);
            }
        }));
        Ok(status::OK)
    });
    reg!("proxy_get_header_map_value", |mut c: C<'_>,
                                        t: i32,
                                        kp: i32,
                                        ks: i32,
                                        ptr_ptr: i32,
                                        size_ptr: i32|
     -> R {
        let t = tri!(map_type(t));
        let key = tri!(read(&c, kp, ks));
        let log_phase = c.data().stream().is_some_and(|s| s.access_log_phase);
        let Some(map) = const_map(c.data(), t) else {
            return Ok(if log_phase {
                status::NOT_FOUND
            } else {
                status::BAD_ARGUMENT
            });
        };
        let value = tri!(map.get(&key).map(<[u8]>::to_vec).ok_or(status::NOT_FOUND));
        copy_out(&mut c, &value, ptr_ptr, size_ptr)
    });
    reg!("proxy_replace_header_map_value", |mut c: C<'_>,
                                            t: i32,
                                            kp: i32,
                                            ks: i32,
                                            vp: i32,
                                            vs: i32|
     -> R {
        let t = tri!(map_type(t));
        let (k, v) = (tri!(read(&c, kp, ks)), tri!(read(&c, vp, vs)));
        // Envoy's replaceHeaderMapValue is `remove` then `addCopy`: the header moves to the
        // end of the map (checked with the probe against Envoy 1.40).
        tri!(with_mut_map(c.data_mut(), t, |m| {
            m.remove(&k);
            m.add(&k, &v)
        }));
        Ok(status::OK)
    });
    reg!("proxy_remove_header_map_value", |mut c: C<'_>,
                                           t: i32,
                                           kp: i32,
                                           ks: i32|
     -> R {
        let t = tri!(map_type(t));
        let k = tri!(read(&c, kp, ks));
        tri!(with_mut_map(c.data_mut(), t, |m| m.remove(&k)));
        Ok(status::OK)
    });
    reg!("proxy_add_header_map_value", |mut c: C<'_>,
                                        t: i32,
                                        kp: i32,
                                        ks: i32,
                                        vp: i32,
                                        vs: i32|
     -> R {
        let t = tri!(map_type(t));
        let (k, v) = (tri!(read(&c, kp, ks)), tri!(read(&c, vp, vs)));
        tri!(with_mut_map(c.data_mut(), t, |m| m.add(&k, &v)));
        Ok(status::OK)
    });
    reg!("proxy_get_header_map_size", |mut c: C<'_>,
                                       t: i32,
                                       ret: i32|
     -> R {
        let t = tri!(map_type(t));
        let size = tri!(with_mut_map(c.data_mut(), t, |m| m.byte_size()));
        tri!(write_u32(&mut c, ret, size as u32));
        Ok(status::OK)
    });

    // Properties.
    reg!("proxy_get_property", |mut c: C<'_>,
                                pp: i32,
                                ps: i32,
                                ptr_ptr: i32,
                                size_ptr: i32|
     -> R {
        let path = tri!(read(&c, pp, ps));
        let segments = split_path(&path);
        let value = tri!(crate::properties::get(
            &c.data().plugin,
            c.data().stream(),
            &segments
        ));
        copy_out(&mut c, &value, ptr_ptr, size_ptr)
    });
    reg!("proxy_set_property", |mut c: C<'_>,
                                pp: i32,
                                ps: i32,
                                vp: i32,
                                vs: i32|
     -> R {
        let (path, value) = (tri!(read(&c, pp, ps)), tri!(read(&c, vp, vs)));
        let s = tri!(c.data_mut().stream_mut().ok_or(status::NOT_FOUND));
        let key = format!("wasm.{}", String::from_utf8_lossy(&path));
        s.filter_state.insert(key, value);
        Ok(status::OK)
    });

    // Shared data and queues.
    reg!("proxy_get_shared_data", |mut c: C<'_>,
                                   kp: i32,
                                   ks: i32,
                                   ptr_ptr: i32,
                                   size_ptr: i32,
                                   cas_ptr: i32|
     -> R {
        fire_hook(&mut c, "proxy_get_shared_data");
        let key = tri!(read(&c, kp, ks));
        shared_data_point(&mut c, "proxy_get_shared_data", &key, false);
        let entry = lock(&c.data().shared.data).get(&key);
        let (value, cas) = tri!(entry.ok_or(status::NOT_FOUND));
        let s = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
        if s != status::OK {
            return Ok(s);
        }
        tri!(write_u32(&mut c, cas_ptr, cas));
        Ok(status::OK)
    });
    reg!("proxy_set_shared_data", |mut c: C<'_>,
                                   kp: i32,
                                   ks: i32,
                                   vp: i32,
                                   vs: i32,
                                   cas: i32|
     -> R {
        fire_hook(&mut c, "proxy_set_shared_data");
        let (key, value) = (tri!(read(&c, kp, ks)), tri!(read(&c, vp, vs)));
        shared_data_point(&mut c, "proxy_set_shared_data", &key, true);
        let s = lock(&c.data().shared.data).set(&key, &value, cas as u32);
        Ok(s)
    });
    reg!("proxy_register_shared_queue", |mut c: C<'_>,
                                         np: i32,
                                         ns: i32,
                                         token_ptr: i32|
     -> R {
        let name = tri!(read(&c, np, ns));
        let (vm_id, vm, root) = {
            let st = c.data();
            (st.shared.vm_id.clone(), st.vm_index, st.root_id)
        };
        let token = lock(&c.data().shared.queues).register(&vm_id, &name, vm, root);
        tri!(write_u32(&mut c, token_ptr, token));
        Ok(status::OK)
    });
    reg!("proxy_resolve_shared_queue", |mut c: C<'_>,
                                        vp: i32,
                                        vs: i32,
                                        np: i32,
                                        ns: i32,
                                        token_ptr: i32|
     -> R {
        let (vm_id, name) = (tri!(read(&c, vp, vs)), tri!(read(&c, np, ns)));
        let token = lock(&c.data().shared.queues).resolve(&vm_id, &name);
        let token = tri!(token.ok_or(status::NOT_FOUND));
        tri!(write_u32(&mut c, token_ptr, token));
        Ok(status::OK)
    });
    reg!("proxy_enqueue_shared_queue", |c: C<'_>,
                                        token: i32,
                                        vp: i32,
                                        vs: i32|
     -> R {
        let data = tri!(read(&c, vp, vs));
        let owner = lock(&c.data().shared.queues).enqueue(token as u32, &data);
        let (vm, ctx) = tri!(owner.ok_or(status::NOT_FOUND));
        lock(&c.data().shared.queue_ready).push((vm, ctx, token as u32));
        Ok(status::OK)
    });
    reg!("proxy_dequeue_shared_queue", |mut c: C<'_>,
                                        token: i32,
                                        ptr_ptr: i32,
                                        size_ptr: i32|
     -> R {
        let item = lock(&c.data().shared.queues).dequeue(token as u32);
        let item = tri!(tri!(item.map(|o| o.ok_or(status::EMPTY))));
        copy_out(&mut c, &item, ptr_ptr, size_ptr)
    });

    // Stream control.
    fn continue_stream(c: &mut C<'_>, t: i32) -> i32 {
        match t {
            0 => {
                if let Some(s) = c.data_mut().stream_mut() {
                    s.continue_request = true;
                    s.request_headers_available = false;
                }
                status::OK
            }
            1 => {
                if let Some(s) = c.data_mut().stream_mut() {
                    s.continue_response = true;
                }
                status::OK
            }
            2 => status::OK,
            3 => status::UNIMPLEMENTED,
            _ => status::BAD_ARGUMENT,
        }
    }
    reg!("proxy_continue_stream", |mut c: C<'_>, t: i32| -> R {
        Ok(continue_stream(&mut c, t))
    });
    reg!("proxy_continue_request", |mut c: C<'_>| -> R {
        Ok(continue_stream(&mut c, 0))
    });
    reg!("proxy_continue_response", |mut c: C<'_>| -> R {
        Ok(continue_stream(&mut c, 1))
    });
    reg!("proxy_close_stream", |mut c: C<'_>, t: i32| -> R {
        if !(0..=3).contains(&t) {
            return Ok(status::BAD_ARGUMENT);
        }
        if let Some(s) = c.data_mut().stream_mut() {
            s.close_requested = Some(t);
        }
        Ok(status::OK)
    });
    reg!("proxy_send_local_response", |mut c: C<'_>,
                                       code: i32,
                                       dp: i32,
                                       ds: i32,
                                       bp: i32,
                                       bs: i32,
                                       hp: i32,
                                       hs: i32,
                                       grpc: i32|
     -> R {
        let details = tri!(read(&c, dp, ds));
        let body = tri!(read(&c, bp, bs));
        let headers = tri!(read(&c, hp, hs));
        let Some(s) = c.data_mut().stream_mut() else {
            // Root context: no decoder callbacks, Envoy does nothing and says Ok.
            return Ok(status::OK);
        };
        s.local_reply_calls += 1;
        if s.local_reply_calls > 1 {
            s.misuse.push(format!(
                "send_local_response({code}) called a second time on this stream; Envoy keeps the \
                 first reply and the client may hang: send one local reply per stream"
            ));
            return Ok(status::OK);
        }
        if s.response_started {
            s.misuse.push(format!(
                "send_local_response({code}) after the response headers were sent downstream; \
                 Envoy resets the stream instead: reply locally before the response starts"
            ));
            return Ok(status::OK);
        }
        let details: String = String::from_utf8_lossy(&details)
            .chars()
            .map(|ch| if ch.is_whitespace() { '_' } else { ch })
            .collect();
        s.local_reply = Some(LocalReply {
            status: code as u32,
            details,
            body,
            headers: decode_pairs(&headers),
            grpc_status: grpc,
        });
        Ok(status::OK)
    });
    reg!("proxy_clear_route_cache", |_c: C<'_>| -> R {
        Ok(status::OK)
    });

    // HTTP and gRPC calls.
    reg!("proxy_http_call", |mut c: C<'_>,
                             up: i32,
                             us: i32,
                             hp: i32,
                             hs: i32,
                             bp: i32,
                             bs: i32,
                             tp: i32,
                             ts: i32,
                             timeout: i32,
                             token_ptr: i32|
     -> R {
        let uri = tri!(read(&c, up, us));
        let body = tri!(read(&c, bp, bs));
        let headers = decode_pairs(&tri!(read(&c, hp, hs)));
        let _trailers = decode_pairs(&tri!(read(&c, tp, ts)));
        tri!(write_u32(&mut c, token_ptr, 0));
        if timeout < 0 {
            return Ok(status::BAD_ARGUMENT);
        }
        let cluster = String::from_utf8_lossy(&uri).into_owned();
        if !c.data().clusters.has(&cluster) {
            c.data().log(3, format!("host-sim: http_call to unknown cluster {cluster:?}: BadArgument (Envoy needs the cluster in its config)"));
            return Ok(status::BAD_ARGUMENT);
        }
        let has = |n: &[u8]| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has(b":path") || !has(b":method") || !has(b":authority") {
            return Ok(status::BAD_ARGUMENT);
        }
        let st = c.data_mut();
        st.last_http_token += 1;
        let token = st.last_http_token;
        st.pending_calls.push(HttpCall {
            token,
            cluster,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body,
            timeout_ms: timeout as u32,
        });
        tri!(write_u32(&mut c, token_ptr, token));
        Ok(status::OK)
    });
    reg!("proxy_grpc_call", |_c: C<'_>,
                             _a: i32,
                             _b: i32,
                             _d: i32,
                             _e: i32,
                             _f: i32,
                             _g: i32,
                             _h: i32,
                             _i: i32,
                             _j: i32,
                             _k: i32,
                             _t: i32,
                             _p: i32|
     -> R { Ok(status::UNIMPLEMENTED) });
    reg!("proxy_grpc_stream", |_c: C<'_>,
                               _a: i32,
                               _b: i32,
                               _d: i32,
                               _e: i32,
                               _f: i32,
                               _g: i32,
                               _h: i32,
                               _i: i32,
                               _p: i32|
     -> R { Ok(status::UNIMPLEMENTED) });
    reg!("proxy_grpc_send", |_c: C<'_>,
                             _t: i32,
                             _p: i32,
                             _s: i32,
                             _e: i32|
     -> R { Ok(status::UNIMPLEMENTED) });
    reg!("proxy_grpc_cancel", |_c: C<'_>, _t: i32| -> R {
        Ok(status::UNIMPLEMENTED)
    });
    reg!("proxy_grpc_close", |_c: C<'_>, _t: i32| -> R {
        Ok(status::UNIMPLEMENTED)
    });
    reg!("proxy_get_status", |mut c: C<'_>,
                              code_ptr: i32,
                              ptr_ptr: i32,
                              size_ptr: i32|
     -> R {
        let (code, msg) = c.data().status.clone();
        tri!(write_u32(&mut c, code_ptr, code));
        copy_out(&mut c, &msg, ptr_ptr, size_ptr)
    });

    // Contexts.
    reg!("proxy_set_effective_context", |mut c: C<'_>,
                                         id: i32|
     -> R {
        let id = id as u32;
        let st = c.data_mut();
        if id != st.root_id && !st.streams.contains_key(&id) {
            return Ok(status::BAD_ARGUMENT);
        }
        st.effective = id;
        Ok(status::OK)
    });
    reg!("proxy_done", |_c: C<'_>| -> R {
        // Only a root context that returned false from proxy_on_done may call it; the sim
        // never shuts VMs down, so there is nothing pending.
        Ok(status::NOT_FOUND)
    });
    reg!("proxy_call_foreign_function", |c: C<'_>,
                                         np: i32,
                                         ns: i32,
                                         ap: i32,
                                         asz: i32,
                                         _rp: i32,
                                         _rs: i32|
     -> R {
        tri!(read(&c, np, ns));
        tri!(read(&c, ap, asz));
        Ok(status::NOT_FOUND)
    });

    // Metrics.
    reg!("proxy_define_metric", |mut c: C<'_>,
                                 t: i32,
                                 np: i32,
                                 ns: i32,
                                 id_ptr: i32|
     -> R {
        let kind = match t {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => return Ok(status::BAD_ARGUMENT),
        };
        let name = String::from_utf8_lossy(&tri!(read(&c, np, ns))).into_owned();
        metric_point(&mut c, "proxy_define_metric", &name, MetricOp::Set);
        let id = {
            let st = c.data_mut();
            st.last_metric_id[t as usize] += 4;
            let id = st.last_metric_id[t as usize];
            st.metric_ids.insert(id, (kind, name.clone()));
            id
        };
        lock(&c.data().shared.metrics)
            .entry(name)
            .or_insert(Metric {
                kind,
                value: 0,
                samples: Vec::new(),
            });
        tri!(write_u32(&mut c, id_ptr, id));
        Ok(status::OK)
    });
    reg!("proxy_increment_metric", |c: C<'_>,
                                    id: i32,
                                    offset: i64|
     -> R {
        let id = id as u32;
        let kind = metric_type_of(id);
        if !matches!(kind, Some(MetricType::Counter | MetricType::Gauge)) {
            return Ok(status::BAD_ARGUMENT);
        }
        let name = tri!(c
            .data()
            .metric_ids
            .get(&id)
            .map(|m| m.1.clone())
            .ok_or(status::NOT_FOUND));
        metric_point(&mut c, "proxy_increment_metric", &name, MetricOp::Add);
        let mut metrics = lock(&c.data().shared.metrics);
        let m = tri!(metrics.get_mut(&name).ok_or(status::NOT_FOUND));
        match kind {
            Some(MetricType::Counter) if offset > 0 => {
                m.value = m.value.saturating_add(offset as u64)
            }
            Some(MetricType::Counter) => return Ok(status::BAD_ARGUMENT),
            _ if offset >= 0 => m.value = m.value.saturating_add(offset as u64),
            _ => m.value = m.value.saturating_sub(offset.unsigned_abs()),
        }
        Ok(status::OK)
    });
    reg!("proxy_record_metric", |c: C<'_>,
                                 id: i32,
                                 value: i64|
     -> R {
        let id = id as u32;
        let name = tri!(c
            .data()
            .metric_ids
            .get(&id)
            .map(|m| m.1.clone())
            .ok_or(status::NOT_FOUND));
        // A counter's record adds; a gauge's sets; a histogram's appends a sample.
        let op = match metric_type_of(id) {
            Some(MetricType::Counter) => MetricOp::Add,
            _ => MetricOp::Set,
        };
        metric_point(&mut c, "proxy_record_metric", &name, op);
        let mut metrics = lock(&c.data().shared.metrics);
        let m = tri!(metrics.get_mut(&name).ok_or(status::NOT_FOUND));
        match metric_type_of(id) {
            Some(MetricType::Counter) => m.value = m.value.saturating_add(value as u64),
            Some(MetricType::Gauge) => m.value = value as u64,
            Some(MetricType::Histogram) => m.samples.push(value as u64),
            None => return Ok(status::NOT_FOUND),
        }
        Ok(status::OK)
    });
    reg!("proxy_get_metric", |mut c: C<'_>, id: i32, ret: i32| -> R {
        let id = id as u32;
        match metric_type_of(id) {
            Some(MetricType::Counter | MetricType::Gauge) => {}
            _ => return Ok(status::BAD_ARGUMENT),
        }
        let name = tri!(c
            .data()
            .metric_ids
            .get(&id)
            .map(|m| m.1.clone())
            .ok_or(status::NOT_FOUND));
        metric_point(&mut c, "proxy_get_metric", &name, MetricOp::Read);
        let value = lock(&c.data().shared.metrics).get(&name).map(|m| m.value);
        let value = tri!(value.ok_or(status::NOT_FOUND));
        tri!(write_u64(&mut c, ret, value));
        Ok(status::OK)
    });
    Ok(())
}
