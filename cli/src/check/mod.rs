//! `check`: a plugin configuration validated with the filter's own parser.
//!
//! [`model`] reads whole deployments (plugin configurations with the filter settings around
//! them, Envoy routes, VirtualService routes) for the lints to come; [`matching`] compares
//! route matches.

pub mod matching;
pub mod model;

use serde_json::Value;

use crate::USAGE;

/// Extracts the plugin configuration from a JSON file or an Istio WasmPlugin YAML.
pub fn config_from_text(text: &str, name: &str) -> Result<Vec<u8>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return Ok(text.as_bytes().to_vec());
    }
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).map_err(|e| format!("{name}: not YAML: {e}")))
        .collect::<Result<_, _>>()?;
    for doc in docs {
        if doc.get("kind").and_then(|k| k.as_str()) != Some("WasmPlugin") {
            continue;
        }
        let pc = doc
            .get("spec")
            .and_then(|s| s.get("pluginConfig"))
            .ok_or_else(|| format!("{name}: WasmPlugin without spec.pluginConfig"))?;
        let json: Value = match pc {
            serde_yaml::Value::String(s) => serde_json::from_str(s)
                .map_err(|e| format!("{name}: spec.pluginConfig is a string but not JSON: {e}"))?,
            other => serde_json::to_value(other)
                .map_err(|e| format!("{name}: spec.pluginConfig: {e}"))?,
        };
        return Ok(json.to_string().into_bytes());
    }
    // An Envoy bootstrap or an Istio EnvoyFilter: the wasm filter's
    // `configuration: {"@type": ".../google.protobuf.StringValue", value: "<json>"}`.
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    if let Some(value) = docs.iter().find_map(string_value_configuration) {
        return Ok(value.as_bytes().to_vec());
    }
    Err(format!(
        "{name}: neither a JSON configuration, nor YAML with a `kind: WasmPlugin` document, nor an \
         Envoy/EnvoyFilter YAML with a wasm `configuration` (google.protobuf.StringValue)"
    ))
}

/// The first `configuration` mapping typed `google.protobuf.StringValue` anywhere in `doc`
/// (how Envoy's wasm filter carries the plugin configuration), as its `value` text.
fn string_value_configuration(doc: &serde_yaml::Value) -> Option<&str> {
    match doc {
        serde_yaml::Value::Mapping(m) => {
            if let Some(cfg) = m.get("configuration") {
                let typed = cfg
                    .get("@type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("google.protobuf.StringValue"));
                if let (true, Some(v)) = (typed, cfg.get("value").and_then(|v| v.as_str())) {
                    return Some(v);
                }
            }
            m.values().find_map(string_value_configuration)
        }
        serde_yaml::Value::Sequence(items) => items.iter().find_map(string_value_configuration),
        serde_yaml::Value::Tagged(t) => string_value_configuration(&t.value),
        _ => None,
    }
}

/// `retry-guard check <file>`.
pub fn check(args: Vec<String>) -> Result<i32, String> {
    let [file] = args.as_slice() else {
        return Err(format!("check takes one file\n\n{USAGE}"));
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let bytes = config_from_text(&text, file)?;
    match retry_guard::config::Config::parse(&bytes) {
        Ok(c) => {
            println!(
                "{file}: valid — {} route(s) ({}), mode {}, ledger {} entries, confirmation {}",
                c.routes.len(),
                c.routes
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.class.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.mode.name(),
                c.max_entries,
                match &c.confirmation {
                    Some(k) => format!(
                        "keys {}",
                        k.keys
                            .iter()
                            .map(|(id, _)| id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => "off".into(),
                }
            );
            Ok(0)
        }
        Err(e) => {
            println!("{file}: invalid\n  error: {e}");
            Ok(1)
        }
    }
}
