//! The `check` command, as the built `retry-guard` binary, on every bundled configuration: the
//! Istio manifests (`envoy/istio/wasmplugin.yaml`'s `pluginConfig`; the plugin configuration
//! `envoy/istio/envoyfilter.yaml` carries), every `testdata/configs/*.json`; and a broken
//! configuration, which must fail naming the field path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    retry_guard::paths::repo_root()
}

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retry-guard"))
        .arg("check")
        .arg(file)
        .output()
        .expect("the retry-guard binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rg-check-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn assert_valid(file: &Path) {
    let o = check(file);
    assert!(
        o.status.success() && text(&o).contains(": valid"),
        "check {} failed ({}):\n{}",
        file.display(),
        o.status,
        text(&o)
    );
}

#[test]
fn envoy_bootstrap_and_envoyfilter_pass_check_directly() {
    assert_valid(&root().join("envoy/envoy.yaml"));
    assert_valid(&root().join("envoy/istio/envoyfilter.yaml"));
    let dir = tmp_dir("broken-envoyfilter");
    let broken = dir.join("envoyfilter.yaml");
    let original = std::fs::read_to_string(root().join("envoy/istio/envoyfilter.yaml")).unwrap();
    assert!(original.contains("token_issuing"));
    std::fs::write(
        &broken,
        original.replacen("token_issuing", "token_issueing", 1),
    )
    .unwrap();
    let o = check(&broken);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("unknown class \"token_issueing\""),
        "{}",
        text(&o)
    );
}

#[test]
fn istio_wasmplugin_config_passes_check() {
    assert_valid(&root().join("envoy/istio/wasmplugin.yaml"));
}

/// Every `google.protobuf.StringValue` `value` under a wasm filter's `configuration`.
fn string_configs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get("configuration").and_then(|c| c.get("value")) {
                out.push(s.clone());
            }
            m.values().for_each(|x| string_configs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| string_configs(x, out)),
        _ => {}
    }
}

#[test]
fn istio_envoyfilter_plugin_config_passes_check() {
    // `check` reads JSON or a WasmPlugin; the EnvoyFilter carries the plugin configuration as
    // the wasm filter's `configuration.value` (a JSON string), which is handed to `check` as is.
    use serde::Deserialize as _;
    let path = root().join("envoy/istio/envoyfilter.yaml");
    let yaml = std::fs::read_to_string(&path).expect("envoyfilter.yaml");
    let mut configs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(doc).expect("YAML");
        string_configs(&v, &mut configs);
    }
    assert!(
        !configs.is_empty(),
        "envoyfilter.yaml carries no configuration.value"
    );
    let dir = tmp_dir("envoyfilter");
    for (i, c) in configs.iter().enumerate() {
        let file = dir.join(format!("envoyfilter-{i}.json"));
        std::fs::write(&file, c).expect("write");
        assert_valid(&file);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_testdata_config_passes_check() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("testdata/configs")).expect("testdata/configs") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            assert_valid(&p);
            n += 1;
        }
    }
    assert!(n >= 3, "found only {n} configurations");
}

#[test]
fn broken_configs_fail_with_the_field_path() {
    let dir = tmp_dir("broken");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"routes":[{"name":"r","match":{"path":"/x"},"class":"token_issueing","owner":"o","escalation":"e"}]}"#,
    )
    .expect("write");
    let o = check(&bad);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("routes[0].class: unknown class \"token_issueing\""),
        "{}",
        text(&o)
    );
    // The same mistake inside the bundled WasmPlugin.
    let yaml = std::fs::read_to_string(root().join("envoy/istio/wasmplugin.yaml")).expect("yaml");
    let broken = yaml.replacen("class: token_issuing", "class: token_issueing", 1);
    assert_ne!(
        broken, yaml,
        "wasmplugin.yaml has no `class: token_issuing` line"
    );
    let bad_yaml = dir.join("wasmplugin-bad.yaml");
    std::fs::write(&bad_yaml, broken).expect("write");
    let o = check(&bad_yaml);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(".class: unknown class \"token_issueing\""),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
