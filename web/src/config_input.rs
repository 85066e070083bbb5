//! The playground's configuration editor: the plugin configuration as JSON, or an Istio
//! WasmPlugin / EnvoyFilter (or an Envoy bootstrap) in YAML from which it is taken, validated
//! by the filter's own parser ([`Config::parse`]). An error names the field path exactly as
//! the filter's critical log line does, and also where that is in the YAML document.

use retry_guard::config::{Config, ConfigError};
use serde::Serialize;
use serde_json::Value;

/// Where the plugin configuration came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    /// `json`, `WasmPlugin`, `EnvoyFilter` or `Envoy`.
    pub kind: String,
    /// The configuration's path inside the document (empty for plain JSON).
    pub path: String,
}

/// A configuration error, as the filter reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The field path inside the plugin configuration (`routes[0].class`).
    pub path: String,
    /// The path inside the pasted document (`spec.pluginConfig.routes[0].class`).
    pub document_path: String,
    /// What is wrong and what to write instead.
    pub message: String,
    /// The filter's critical log line for this configuration.
    pub log_line: String,
}

/// One route of an accepted configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteSummary {
    /// Name.
    pub name: String,
    /// Class.
    pub class: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// Owner.
    pub owner: String,
    /// Escalation path.
    pub escalation: String,
    /// The `match` object as written.
    pub matcher: String,
}

/// The result of checking the editor's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// The filter accepts it.
    pub ok: bool,
    /// Where the plugin configuration was found, when it was.
    pub source: Option<Source>,
    /// The plugin configuration as JSON text (what the filter receives).
    pub plugin_config: Option<String>,
    /// Why the filter refuses it.
    pub problem: Option<Problem>,
    /// The routes, when accepted.
    pub routes: Vec<RouteSummary>,
    /// `window_seconds`, when accepted.
    pub window_seconds: Option<u64>,
    /// `confirmation.max_ttl_seconds`, when accepted and configured.
    pub max_ttl_seconds: Option<u64>,
    /// The confirmation key ids, when accepted.
    pub key_ids: Vec<String>,
}

fn key(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

/// Finds a wasm filter's `configuration` (a `google.protobuf.StringValue`) in an Envoy
/// structure: (path of its `value`, the JSON text).
fn find_string_value(v: &Value, path: &str) -> Option<(String, String)> {
    match v {
        Value::Object(m) => {
            if let Some(c) = m.get("configuration") {
                let is_string_value = c
                    .get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("google.protobuf.StringValue"));
                if let (true, Some(text)) =
                    (is_string_value, c.get("value").and_then(Value::as_str))
                {
                    return Some((key(&key(path, "configuration"), "value"), text.to_string()));
                }
            }
            m.iter()
                .find_map(|(k, x)| find_string_value(x, &key(path, k)))
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| find_string_value(x, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Takes the plugin configuration out of the editor's text: (source, JSON text).
pub fn extract(text: &str) -> Result<(Source, String), Problem> {
    let trimmed = text.trim_start();
    let fail = |message: String| Problem {
        path: String::new(),
        document_path: String::new(),
        log_line: format!("retry-guard: invalid plugin configuration: configuration: {message}"),
        message,
    };
    if trimmed.starts_with('{') || trimmed.is_empty() {
        let source = Source {
            kind: "json".into(),
            path: String::new(),
        };
        return Ok((source, text.to_string()));
    }
    let mut last_kind = None;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| fail(format!("not valid JSON nor YAML: {e}")))?;
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        let base = if i == 0 {
            String::new()
        } else {
            format!("(document {})", i + 1)
        };
        match kind {
            "WasmPlugin" => {
                let path = key(&key(&base, "spec"), "pluginConfig");
                let config = match v.get("spec").and_then(|s| s.get("pluginConfig")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(c) => c.to_string(),
                    None => {
                        return Err(fail(
                            "the WasmPlugin carries no plugin configuration; add \
                             `pluginConfig:` with at least `routes`"
                                .into(),
                        ))
                    }
                };
                let source = Source {
                    kind: kind.into(),
                    path,
                };
                return Ok((source, config));
            }
            _ => {
                if let Some((path, config)) = find_string_value(&v, &base) {
                    let kind = if kind == "EnvoyFilter" { kind } else { "Envoy" };
                    let source = Source {
                        kind: kind.into(),
                        path,
                    };
                    return Ok((source, config));
                }
                if v.get("routes").is_some() {
                    let source = Source {
                        kind: "yaml".into(),
                        path: base,
                    };
                    return Ok((source, v.to_string()));
                }
            }
        }
        last_kind = Some(kind.to_string());
    }
    Err(fail(format!(
        "no retry-guard plugin configuration found{}: paste the plugin configuration JSON, an \
         Istio WasmPlugin (spec.pluginConfig) or an EnvoyFilter / Envoy configuration whose wasm \
         filter has `configuration: {{\"@type\": type.googleapis.com/google.protobuf.StringValue, \
         value: '<JSON>'}}`",
        match last_kind.as_deref() {
            Some(k) if !k.is_empty() => format!(" in this {k}"),
            _ => String::new(),
        }
    )))
}

fn problem(source: &Source, e: &ConfigError) -> Problem {
    let document_path = match (source.path.is_empty(), e.path.is_empty()) {
        (true, _) => e.path.clone(),
        (false, true) => source.path.clone(),
        (false, false) => format!("{}.{}", source.path, e.path),
    };
    Problem {
        path: e.path.clone(),
        document_path,
        message: e.message.clone(),
        log_line: format!("retry-guard: invalid plugin configuration: {e}"),
    }
}

/// Checks the editor's text and, when the filter accepts it, returns the configuration too.
pub fn check_with_config(text: &str) -> (Checked, Option<Config>) {
    let mut out = Checked {
        ok: false,
        source: None,
        plugin_config: None,
        problem: None,
        routes: Vec::new(),
        window_seconds: None,
        max_ttl_seconds: None,
        key_ids: Vec::new(),
    };
    let (source, json) = match extract(text) {
        Ok(x) => x,
        Err(p) => {
            out.problem = Some(p);
            return (out, None);
        }
    };
    let parsed = Config::parse(json.as_bytes());
    out.source = Some(source.clone());
    out.plugin_config = Some(json.clone());
    match parsed {
        Err(e) => {
            out.problem = Some(problem(&source, &e));
            (out, None)
        }
        Ok(config) => {
            let value: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
            out.ok = true;
            out.routes = config
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| RouteSummary {
                    name: r.name.clone(),
                    class: r.class.name().to_string(),
                    mode: r.mode.name().to_string(),
                    owner: r.owner.clone(),
                    escalation: r.escalation.clone(),
                    matcher: value
                        .get("routes")
                        .and_then(|rs| rs.get(i))
                        .and_then(|r| r.get("match"))
                        .map(Value::to_string)
                        .unwrap_or_default(),
                })
                .collect();
            out.window_seconds = Some(config.window_seconds);
            out.max_ttl_seconds = config.confirmation.as_ref().map(|c| c.max_ttl_seconds);
            out.key_ids = config
                .confirmation
                .as_ref()
                .map(|c| c.keys.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default();
            (out, Some(config))
        }
    }
}

/// Checks the editor's text.
pub fn check(text: &str) -> Checked {
    check_with_config(text).0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = include_str!("../../testdata/configs/smoke.json");

    #[test]
    fn json_is_accepted_and_summarised() {
        let c = check(SMOKE);
        assert!(c.ok, "{:?}", c.problem);
        assert_eq!(c.routes[0].class, "token_issuing");
        assert_eq!(c.max_ttl_seconds, Some(600));
        assert_eq!(c.key_ids, vec!["approvals-test".to_string()]);
    }

    #[test]
    fn a_misspelt_class_names_the_field_path_as_the_log_line_does() {
        let c = check(&SMOKE.replace("\"token_issuing\"", "\"token_issueing\""));
        let p = c.problem.expect("refused");
        assert_eq!(p.path, "routes[0].class");
        assert!(p
            .log_line
            .starts_with("retry-guard: invalid plugin configuration: routes[0].class: "));
    }

    #[test]
    fn istio_yaml_gives_its_plugin_configuration() {
        let wasm_plugin = include_str!("../../testdata/deploy/broken-wasmplugin.yaml");
        let c = check(wasm_plugin);
        assert_eq!(
            c.source.as_ref().map(|s| s.kind.as_str()),
            Some("WasmPlugin")
        );
        assert!(c.ok, "{:?}", c.problem);
        let bad = wasm_plugin.replace("class: token_issuing", "class: token-issuing");
        let p = check(&bad).problem.expect("refused");
        assert_eq!(p.document_path, "spec.pluginConfig.routes[0].class");
        let filter = include_str!("../../testdata/deploy/broken-envoyfilter.yaml");
        let c = check(filter);
        assert_eq!(
            c.source.as_ref().map(|s| s.kind.as_str()),
            Some("EnvoyFilter")
        );
        assert!(c.ok, "{:?}", c.problem);
        assert!(check("kind: Service\n").problem.is_some());
    }
}
