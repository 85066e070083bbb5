//! The `#[wasm_bindgen]` surface the pages call. Structured results go out as JSON text (the
//! pages `JSON.parse` them); errors are `JsError`s whose message says what to change. Times
//! come in as JavaScript numbers (Unix seconds).

use wasm_bindgen::prelude::*;

use crate::{approve, config_input, examples, play, problem_view, verify};

fn json<T: serde::Serialize>(v: &T) -> Result<String, JsError> {
    serde_json::to_string(v).map_err(|e| JsError::new(&format!("cannot encode the result: {e}")))
}

fn seconds(n: f64, what: &str) -> Result<u64, JsError> {
    if (0.0..1e15).contains(&n) {
        Ok(n as u64)
    } else {
        Err(JsError::new(&format!(
            "{what} must be a non-negative number of seconds, not {n}"
        )))
    }
}

/// Checks the playground editor's text (plugin configuration JSON, or an Istio WasmPlugin /
/// EnvoyFilter or Envoy YAML carrying it) with the filter's parser: JSON of
/// [`config_input::Checked`].
#[wasm_bindgen(js_name = checkConfig)]
pub fn check_config(text: &str) -> Result<String, JsError> {
    json(&config_input::check(text))
}

/// A pasted 428 (body or `curl -i` output) in plain words, at `now` (Unix seconds): JSON of
/// [`problem_view::ProblemView`].
#[wasm_bindgen(js_name = explainProblem)]
pub fn explain_problem(pasted: &str, now: f64) -> Result<String, JsError> {
    let now = seconds(now, "now")?;
    problem_view::read(pasted, now)
        .map_err(|e| JsError::new(&e))
        .and_then(|v| json(&v))
}

/// The expiry choices for a configuration's `confirmation.max_ttl_seconds`: JSON list of
/// [`approve::TtlChoice`].
#[wasm_bindgen(js_name = expiryChoices)]
pub fn expiry_choices(max_ttl: f64) -> Result<String, JsError> {
    json(&approve::ttl_choices(seconds(max_ttl, "max_ttl_seconds")?))
}

/// An approver's private key, held in the module's memory only (never stored, never sent).
/// `free()` forgets it.
#[wasm_bindgen]
pub struct Approver {
    key: approve::ApproverKey,
}

#[wasm_bindgen]
impl Approver {
    /// Reads a key file's text; `file_name` gives the default key id.
    #[wasm_bindgen(constructor)]
    pub fn new(text: &str, file_name: &str) -> Result<Approver, JsError> {
        approve::ApproverKey::from_file(text, file_name)
            .map(|key| Approver { key })
            .map_err(|e| JsError::new(&e))
    }

    /// The default key id (the file name without extension).
    #[wasm_bindgen(getter)]
    pub fn kid(&self) -> String {
        self.key.kid().to_string()
    }

    /// The public key, as `confirmation.keys` holds it.
    #[wasm_bindgen(getter, js_name = publicKey)]
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// Signs a confirmation for a 428's challenge and fingerprint: JSON of
    /// [`approve::Approval`] (token, header line, curl command, expiry).
    #[allow(clippy::too_many_arguments)] // One per form field of the console.
    pub fn sign(
        &self,
        challenge: &str,
        fingerprint: &str,
        approver: &str,
        kid: &str,
        now: f64,
        ttl: f64,
        max_ttl: f64,
        header: &str,
        caller_curl: &str,
    ) -> Result<String, JsError> {
        let request = approve::Request {
            challenge,
            fingerprint,
            approver,
            kid: Some(kid),
            now: seconds(now, "now")?,
            ttl: seconds(ttl, "the expiry")?,
            max_ttl: seconds(max_ttl, "max_ttl_seconds")?,
            header,
            caller_curl,
        };
        self.key
            .approve(&request)
            .map_err(|e| JsError::new(&e))
            .and_then(|a| json(&a))
    }
}

/// Would the filter accept `token` for the 428 with `fingerprint` and `challenge`, given the
/// configuration's public keys? JSON of [`verify::Verdict`], the refusal named as the filter
/// names it.
#[wasm_bindgen(js_name = verifyToken)]
pub fn verify_token(
    token: &str,
    keys: &str,
    fingerprint: &str,
    challenge: &str,
    skew: f64,
    now: f64,
) -> Result<String, JsError> {
    let check = verify::Check {
        token,
        keys,
        fingerprint,
        challenge,
        skew: seconds(skew, "clock_skew_seconds")?,
        now: seconds(now, "now")?,
    };
    verify::check(&check)
        .map_err(|e| JsError::new(&e))
        .and_then(|v| json(&v))
}

/// The playground's state: the editor's text, where the clock starts, the calls.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    config: String,
    #[serde(default)]
    start: Option<u64>,
    #[serde(default)]
    calls: Vec<play::Call>,
}

/// What a playground run returns.
#[derive(serde::Serialize)]
struct Played {
    config: config_input::Checked,
    steps: Vec<play::Step>,
    etcd_note: bool,
}

/// Runs the playground state (JSON: `{"config": "<editor text>", "start": <unix s>, "calls":
/// [...]}`): JSON `{"config": <checked>, "steps": [...], "etcd_note": bool}`. A configuration
/// the filter refuses gives no steps and the refusal in `config.problem`.
#[wasm_bindgen]
pub fn play(state: &str) -> Result<String, JsError> {
    let state: State = serde_json::from_str(state)
        .map_err(|e| JsError::new(&format!("the playground state is not readable: {e}")))?;
    let (checked, config) = config_input::check_with_config(&state.config);
    let Some(text) = checked.plugin_config.clone().filter(|_| config.is_some()) else {
        return json(&Played {
            config: checked,
            steps: Vec::new(),
            etcd_note: false,
        });
    };
    let session = play::Session::new(&text, state.start.unwrap_or(play::DEFAULT_START))
        .map_err(|e| JsError::new(&e))?;
    for c in &state.calls {
        session.call(c);
    }
    json(&Played {
        config: checked,
        steps: session.steps(),
        etcd_note: session.etcd_note,
    })
}

/// The built-in examples (from `testdata/configs`): JSON list of [`examples::Example`].
#[wasm_bindgen]
pub fn examples() -> Result<String, JsError> {
    json(&examples::EXAMPLES)
}
