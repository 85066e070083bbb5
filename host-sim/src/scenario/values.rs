//! Resolving request fields of a scenario into concrete bytes: header values that are JWTs,
//! signed confirmations, repeated text or values sent by an earlier step; durations; upstream
//! behaviours.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::sim::Request;
use crate::tokens::{read_signing_key, unsigned_jwt, Confirmation};
use crate::upstream::Upstream;

/// The approver key a `confirmation` signs with when it names none (from the repository root).
pub const TEST_KEY: &str = "testdata/keys/approvals-test.key";

/// What the runner remembers of a named request step.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// The request as sent (after resolution).
    pub request: Option<Request>,
    /// The request spec (JSON) after defaults, for `same_as`.
    pub spec: Value,
    /// Response status.
    pub status: u16,
    /// Challenge (header `retry-guard-challenge` or body member).
    pub challenge: Option<String>,
    /// Fingerprint (body member).
    pub fingerprint: Option<String>,
}

/// Context for resolving values.
pub struct Ctx<'a> {
    /// The scenario file's folder (relative paths start here).
    pub dir: &'a Path,
    /// Virtual now, unix seconds.
    pub now: i64,
    /// Named steps so far.
    pub captures: &'a HashMap<String, Capture>,
    /// Flood iteration (`{i}` in strings).
    pub iteration: Option<u64>,
}

/// Parses a duration: a number of seconds, or a string with `ms`, `s`, `m` or `h`.
pub fn duration_ms(v: &Value, at: &str) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| *f >= 0.0)
            .map(|f| (f * 1000.0) as u64)
            .ok_or_else(|| format!("{at}: a duration must be a non-negative number of seconds")),
        Value::String(s) => {
            let s = s.trim();
            let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1000.0)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60_000.0)
            } else if let Some(n) = s.strip_suffix('h') {
                (n, 3_600_000.0)
            } else {
                (s, 1000.0)
            };
            num.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0)
                .map(|f| (f * mult) as u64)
                .ok_or_else(|| format!("{at}: {s:?} is not a duration; write e.g. 500ms, 901s, 15m, 2h or a number of seconds"))
        }
        _ => Err(format!(
            "{at}: a duration is a number of seconds or a string like \"901s\""
        )),
    }
}

fn templ(s: &str, ctx: &Ctx<'_>) -> String {
    match ctx.iteration {
        Some(i) => s.replace("{i}", &i.to_string()),
        None => s.to_string(),
    }
}

fn path(ctx: &Ctx<'_>, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        ctx.dir.join(p)
    }
}

/// Resolves claims where `{"now": N}` means virtual now + N seconds.
fn claims(v: &Value, ctx: &Ctx<'_>) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("now") => {
            Value::from(ctx.now + m["now"].as_i64().unwrap_or(0))
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), claims(v, ctx))).collect())
        }
        Value::String(s) => Value::String(templ(s, ctx)),
        v => v.clone(),
    }
}

fn capture<'a>(ctx: &'a Ctx<'_>, name: &str, at: &str) -> Result<&'a Capture, String> {
    ctx.captures.get(name).ok_or_else(|| {
        format!("{at}: no earlier request step is named {name:?}; name the step with \"name\"")
    })
}

fn confirmation(m: &Map<String, Value>, ctx: &Ctx<'_>, at: &str) -> Result<String, String> {
    if let Some(raw) = m.get("raw").and_then(Value::as_str) {
        return Ok(raw.to_string());
    }
    let from = m.get("from").and_then(Value::as_str);
    let cap = match from {
        Some(name) => Some(capture(ctx, name, at)?),
        None => None,
    };
    let chl = match (m.get("chl").and_then(Value::as_str), cap) {
        (Some(c), _) => c.to_string(),
        (None, Some(c)) => c.challenge.clone().ok_or_else(|| {
            format!(
                "{at}: step {:?} got no challenge (status {}) to confirm",
                from.unwrap_or(""),
                c.status
            )
        })?,
        (None, None) => {
            return Err(format!(
                "{at}: a confirmation needs \"from\": <step name> (or \"chl\" and \"fp\")"
            ))
        }
    };
    let fp = match (m.get("fp").and_then(Value::as_str), cap) {
        (Some(f), _) => f.to_string(),
        (None, Some(c)) => c.fingerprint.clone().unwrap_or_default(),
        (None, None) => {
            return Err(format!(
                "{at}: a confirmation needs \"fp\" without \"from\""
            ))
        }
    };
    // The default is the repository's TEST key, wherever the scenario file is; an explicit
    // `key` is absolute or relative to the scenario's folder.
    let key_path = match m.get("key").and_then(Value::as_str) {
        Some(k) => path(ctx, k),
        None => retry_guard::paths::repo_root().join(TEST_KEY),
    };
    let key = read_signing_key(&key_path).map_err(|e| format!("{at}: {e}"))?;
    let kid = m
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| crate::tokens::default_kid(&key_path));
    let iat = ctx.now + m.get("iat").and_then(Value::as_i64).unwrap_or(0);
    let exp = ctx.now + m.get("exp").and_then(Value::as_i64).unwrap_or(300);
    let c = Confirmation {
        kid,
        chl,
        fp,
        sub: m
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("alice@example.com")
            .to_string(),
        iat,
        exp,
    };
    let mut token = c.sign(&key);
    if m.get("tamper").and_then(Value::as_str) == Some("signature") {
        // Flip the last base64url character of the signature to another valid one.
        let last = token.pop().unwrap_or('A');
        token.push(if last == 'A' { 'Q' } else { 'A' });
    }
    Ok(token)
}

/// Resolves a header value.
pub fn header_value(name: &str, v: &Value, ctx: &Ctx<'_>, at: &str) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(templ(s, ctx).into_bytes()),
        Value::Number(n) => Ok(n.to_string().into_bytes()),
        Value::Object(m) if m.len() == 1 || m.contains_key("confirmation") => {
            let (kind, arg) = m
                .iter()
                .next()
                .ok_or_else(|| format!("{at}: empty object"))?;
            match (kind.as_str(), arg) {
                ("jwt", c) => Ok(unsigned_jwt(&claims(c, ctx)).into_bytes()),
                ("bearer_jwt", c) => Ok(format!("Bearer {}", unsigned_jwt(&claims(c, ctx))).into_bytes()),
                ("confirmation", Value::Object(c)) => confirmation(c, ctx, at).map(String::into_bytes),
                ("same_as", Value::String(step)) => {
                    let cap = capture(ctx, step, at)?;
                    cap.request
                        .as_ref()
                        .and_then(|r| r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("{at}: step {step:?} sent no {name} header"))
                }
                ("repeat", _) => repeat(m, at).map(String::into_bytes),
                _ => Err(format!(
                    "{at}: unknown header value {v}; use a string or one of {{\"jwt\": claims}}, \
                     {{\"bearer_jwt\": claims}}, {{\"confirmation\": {{...}}}}, {{\"same_as\": step}}, \
                     {{\"repeat\": text, \"count\": n}}"
                )),
            }
        }
        Value::Object(m) if m.contains_key("repeat") => repeat(m, at).map(String::into_bytes),
        _ => Err(format!(
            "{at}: a header value is a string or an object, got {v}"
        )),
    }
}

fn repeat(m: &Map<String, Value>, at: &str) -> Result<String, String> {
    let text = m.get("repeat").and_then(Value::as_str).unwrap_or("x");
    let count = m
        .get("count")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{at}: {{\"repeat\": ...}} needs \"count\""))?;
    Ok(text.repeat(count as usize))
}

fn body_bytes(v: &Value, ctx: &Ctx<'_>, at: &str) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(templ(s, ctx).into_bytes()),
        Value::Object(m) if m.contains_key("repeat") => repeat(m, at).map(String::into_bytes),
        Value::Object(_) | Value::Array(_) => Ok(v.to_string().into_bytes()),
        _ => Err(format!(
            "{at}: a body is a string, {{\"repeat\": text, \"count\": n}} or JSON"
        )),
    }
}

/// Fields a request spec may have.
pub const REQUEST_FIELDS: &[&str] = &[
    "worker",
    "method",
    "path",
    "authority",
    "headers",
    "body",
    "body_chunks",
    "trailers",
    "route_name",
    "peer_identity",
    "disconnect",
    "dynamic_metadata",
    "upstream",
    "same_as",
];

/// Builds the request from its (defaults-merged) spec.
pub fn request(spec: &Map<String, Value>, ctx: &Ctx<'_>, at: &str) -> Result<Request, String> {
    for k in spec.keys() {
        if !REQUEST_FIELDS.contains(&k.as_str()) {
            return Err(format!(
                "{at}.{k}: unknown request field; expected one of {}",
                REQUEST_FIELDS.join(", ")
            ));
        }
    }
    let text = |k: &str, d: &str| -> String {
        spec.get(k)
            .and_then(Value::as_str)
            .map(|s| templ(s, ctx))
            .unwrap_or_else(|| d.to_string())
    };
    let mut req = Request::new(&text("method", "POST"), &text("path", "/oauth/token"));
    req.authority = text("authority", "retry-guard.test");
    req.worker = spec.get("worker").and_then(Value::as_u64).unwrap_or(0) as usize;
    if let Some(h) = spec.get("headers") {
        let h = h
            .as_object()
            .ok_or_else(|| format!("{at}.headers: an object of name: value"))?;
        for (k, v) in h {
            if v.is_null() {
                continue;
            }
            req.headers.push((
                k.clone(),
                header_value(k, v, ctx, &format!("{at}.headers.{k}"))?,
            ));
        }
    }
    if let Some(chunks) = spec.get("body_chunks") {
        let chunks = chunks
            .as_array()
            .ok_or_else(|| format!("{at}.body_chunks: a list of strings"))?;
        for (i, c) in chunks.iter().enumerate() {
            req.body
                .push(body_bytes(c, ctx, &format!("{at}.body_chunks[{i}]"))?);
        }
    } else if let Some(b) = spec.get("body") {
        let b = body_bytes(b, ctx, &format!("{at}.body"))?;
        if !b.is_empty() {
            req.body.push(b);
        }
    }
    if let Some(t) = spec.get("trailers").and_then(Value::as_object) {
        for (k, v) in t {
            req.trailers
                .push((k.clone(), v.as_str().unwrap_or_default().to_string()));
        }
    }
    req.route_name = spec
        .get("route_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    req.peer_identity = spec
        .get("peer_identity")
        .and_then(Value::as_str)
        .map(str::to_string);
    req.disconnect = match spec.get("disconnect") {
        None => None,
        Some(d) => Some(disconnect(d).ok_or_else(|| {
            format!(
                "{at}.disconnect: {d}; expected \"before_response\" or \"during_response_body\""
            )
        })?),
    };
    if let Some(m) = spec.get("dynamic_metadata") {
        let m = m.as_object().ok_or_else(|| {
            format!("{at}.dynamic_metadata: an object of filter namespace: {{key: value}}")
        })?;
        if let Some((ns, _)) = m.iter().find(|(_, v)| !v.is_object()) {
            return Err(format!(
                "{at}.dynamic_metadata.{ns}: an object of key: value"
            ));
        }
        req.dynamic_metadata = Some(m.clone());
    }
    Ok(req)
}

/// When the client goes away (`disconnect` of a request spec).
pub fn disconnect(v: &Value) -> Option<crate::sim::Disconnect> {
    match v.as_str()? {
        "before_response" => Some(crate::sim::Disconnect::BeforeResponse),
        "during_response_body" => Some(crate::sim::Disconnect::DuringResponseBody),
        _ => None,
    }
}

/// The upstream behaviour of a request spec (default: 200 with a small JSON body).
pub fn upstream(spec: &Map<String, Value>, at: &str) -> Result<Upstream, String> {
    let Some(u) = spec.get("upstream") else {
        return Ok(Upstream::ok());
    };
    let at = format!("{at}.upstream");
    let u = u.as_object().ok_or_else(|| format!("{at}: an object"))?;
    let delay = match u.get("delay") {
        Some(d) => duration_ms(d, &format!("{at}.delay"))?,
        None => 0,
    };
    if let Some(f) = u.get("fail") {
        return match f.as_str() {
            Some("connection_refused") => Ok(Upstream::ConnectionRefused),
            Some("no_healthy_upstream") => Ok(Upstream::NoHealthyUpstream),
            Some("timeout") => Ok(Upstream::Timeout),
            Some("reset") => Ok(Upstream::Reset { delay_ms: delay }),
            _ => Err(format!("{at}.fail: {f}; expected connection_refused, no_healthy_upstream, timeout or reset")),
        };
    }
    let status = u.get("status").and_then(Value::as_u64).unwrap_or(200) as u16;
    let mut headers = Vec::new();
    if let Some(h) = u.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            headers.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
        }
    }
    let body = match u.get("body") {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(v) => v.to_string().into_bytes(),
        None => b"{}".to_vec(),
    };
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.insert(0, ("content-type".into(), "application/json".into()));
    }
    Ok(Upstream::Reply {
        status,
        headers,
        body,
        delay_ms: delay,
    })
}

/// A request with its upstream behaviour and spec, ready to send.
pub type Prepared = (Request, Upstream, Value);

/// A scenario's requests so far, the same on every target: each new request spec is the
/// scenario's `request_defaults`, then the spec of the step its `same_as` names, then its own
/// members; named steps are kept for `same_as`, `{"from": …}` values and challenges.
pub struct Requests {
    dir: PathBuf,
    defaults: Value,
    captures: HashMap<String, Capture>,
}

impl Requests {
    /// No requests yet, for the scenario `scenario` in folder `dir`.
    pub fn new(dir: PathBuf, scenario: &Value) -> Requests {
        Requests {
            dir,
            defaults: scenario
                .get("request_defaults")
                .cloned()
                .unwrap_or(Value::Object(Map::new())),
            captures: HashMap::new(),
        }
    }

    /// The request spec after defaults and `same_as`.
    pub fn spec(&self, req: &Value, at: &str) -> Result<Map<String, Value>, String> {
        let mut base = self.defaults.clone();
        if let Some(name) = req.get("same_as").and_then(Value::as_str) {
            let cap = self.captures.get(name).ok_or_else(|| {
                format!("{at}.same_as: no earlier request step is named {name:?}")
            })?;
            base = merge(&base, &cap.spec);
        }
        let mut merged = merge(&base, req);
        if let Some(m) = merged.as_object_mut() {
            m.remove("same_as");
        }
        merged
            .as_object()
            .cloned()
            .ok_or_else(|| format!("{at}: a request is an object"))
    }

    /// The request a step sends at `now` (unix seconds), its upstream behaviour and its spec.
    pub fn prepare(
        &self,
        req: &Value,
        at: &str,
        now: i64,
        iteration: Option<u64>,
    ) -> Result<Prepared, String> {
        let spec = self.spec(req, at)?;
        let ctx = Ctx {
            dir: &self.dir,
            now,
            captures: &self.captures,
            iteration,
        };
        let request = request(&spec, &ctx, at)?;
        let upstream = upstream(&spec, at)?;
        Ok((request, upstream, Value::Object(spec)))
    }

    /// Remembers the named step `name`.
    pub fn capture(&mut self, name: String, capture: Capture) {
        self.captures.insert(name, capture);
    }
}

/// Merges `over` onto `base` (objects recursively; `headers` merged by name).
pub fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(bv) if bv.is_object() && v.is_object() && k == "headers" => merge(bv, v),
                    _ => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, o) => o.clone(),
    }
}
