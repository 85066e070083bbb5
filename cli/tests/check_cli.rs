//! The `check` command, as the built `retry-guard` binary: every bundled configuration (alone
//! and as the deployments they make together) passes clean, except the WasmPlugin, which
//! guards body-carrying routes by design and gets exactly that error (and, alone, the warning
//! that nothing among the inputs normalizes paths); each broken deployment
//! of `testdata/deploy/` gets exactly its findings (severity, file, path, the key phrase of the
//! message); exit codes 0 (clean), 1 (errors), 2 (unreadable input); `--format json`.

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
fn istio_wasmplugin_config_is_valid_but_the_wasmplugin_cannot_carry_it() {
    // Its pluginConfig parses; the WasmPlugin itself cannot set allow_on_headers_stop_iteration
    // (envoy/PER-ROUTE.md), which its POST/PUT routes need: exactly that one error.
    let o = check(&root().join("envoy/istio/wasmplugin.yaml"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("wasmplugin.yaml: valid — 6 route(s)"),
        "{}",
        text(&o)
    );
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

/// Runs `retry-guard check <args>` from the repository root (file names as given appear in
/// the findings).
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retry-guard"))
        .current_dir(root())
        .arg("check")
        .args(args)
        .output()
        .expect("the retry-guard binary runs")
}

/// `check --format json <files>`: the exit code and the report.
fn run_json(files: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(files);
    let o = run(&args);
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("check {files:?}: not JSON ({e}):\n{}", text(&o)));
    (o.status.code(), report)
}

/// The exact findings (severity, file, path) in order, each message containing its phrase,
/// the counts, and the exit code.
fn assert_findings(files: &[&str], expected: &[(&str, &str, &str, &str)]) {
    let (code, report) = run_json(files);
    let findings = report["findings"].as_array().expect("findings");
    let got: Vec<(&str, &str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap(),
                f["file"].as_str().unwrap(),
                f["path"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str)> = expected.iter().map(|e| (e.0, e.1, e.2)).collect();
    assert_eq!(got, want, "check {files:?}:\n{report:#}");
    for (f, e) in findings.iter().zip(expected) {
        let message = f["message"].as_str().unwrap();
        assert!(
            message.contains(e.3),
            "check {files:?}: {} {}: message lacks {:?}:\n{message}",
            e.0,
            e.2,
            e.3
        );
    }
    let errors = expected.iter().filter(|e| e.0 == "error").count();
    assert_eq!(report["errors"], errors, "{report:#}");
    assert_eq!(report["warnings"], expected.len() - errors, "{report:#}");
    assert_eq!(code, Some(if errors > 0 { 1 } else { 0 }), "{report:#}");
}

#[test]
fn bundled_deployments_pass_clean() {
    assert_findings(&["envoy/envoy.yaml"], &[]);
    assert_findings(
        &[
            "envoy/istio/envoyfilter.yaml",
            "envoy/istio/virtualservice.yaml",
        ],
        &[],
    );
    let o = run(&["envoy/envoy.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("envoy/envoy.yaml: valid — 6 route(s) (oauth-token: token_issuing, "),
        "{out}"
    );
    assert!(
        out.ends_with(
            "0 errors, 0 warnings in 1 file: 1 plugin configuration, 8 Envoy routes, 0 \
             VirtualService http routes\n"
        ),
        "{out}"
    );
}

const WASMPLUGIN_BODIES: &str = "a WasmPlugin cannot set allow_on_headers_stop_iteration, and \
    plugin routes \"oauth-token\" (token_issuing), \"role-grant\" (privilege_changing), \
    \"secrets\" (secret_minting), \"session-refresh\" (session_extending), \"preferences\" \
    (idempotent_write) read the request body";

/// Istio resources without an EnvoyFilter that normalizes paths: the mesh configuration may
/// still do it, so a warning.
const NO_NORMALIZATION: &str = "no path normalization among the inputs: unless the mesh sets \
    meshConfig.pathNormalization.normalization: DECODE_AND_MERGE_SLASHES";

#[test]
fn bundled_wasmplugin_gets_exactly_its_documented_error() {
    let wp = "envoy/istio/wasmplugin.yaml";
    let expected = [
        ("error", wp, "spec.pluginConfig.routes", WASMPLUGIN_BODIES),
        ("warning", wp, "spec", NO_NORMALIZATION),
    ];
    assert_findings(&[wp], &expected);
    assert_findings(&[wp, "envoy/istio/virtualservice.yaml"], &expected);
}

const BROKEN_ENVOY: &str = "testdata/deploy/broken-envoy.yaml";
const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

#[test]
fn broken_envoy_bootstrap() {
    let filter = format!("{HCM}.http_filters[0].typed_config.config");
    let vhosts = format!("{HCM}.route_config.virtual_hosts");
    assert_findings(
        &[BROKEN_ENVOY],
        &[
            (
                "error",
                BROKEN_ENVOY,
                &format!("{filter}.fail_open"),
                "fail_open: true lets every request pass unguarded",
            ),
            (
                "error",
                BROKEN_ENVOY,
                &format!("{filter}.allow_on_headers_stop_iteration"),
                "missing, and plugin routes \"oauth-token\" (token_issuing), \"role-grant\" \
                 (privilege_changing) read the request body",
            ),
            (
                "error",
                BROKEN_ENVOY,
                &format!("{filter}.configuration.value.routes[1].match.route_name"),
                "\"role-grants\" names no route: no route of this connection manager's \
                 route_config is named so (the names there: token, role-grant, reads, \
                 passthrough, admin-token)",
            ),
            (
                "error",
                BROKEN_ENVOY,
                &format!("{vhosts}[0].routes[0].route.retry_policy.retry_on"),
                "the router re-sends route \"token\" on \"5xx,connect-failure\" (num_retries 2), \
                 and plugin route \"oauth-token\" (token_issuing) guards it",
            ),
            (
                "error",
                BROKEN_ENVOY,
                HCM,
                "this connection manager runs retry-guard but routes on the path as the caller \
                 spelled it: `//oauth/token`, `/oauth/%74oken` or `/oauth%2Ftoken` miss the \
                 route the filter guards and take another (a catch-all forwards them \
                 unguarded); add normalize_path: true, merge_slashes: true, \
                 path_with_escaped_slashes_action: REJECT_REQUEST",
            ),
            (
                "warning",
                BROKEN_ENVOY,
                &format!("{vhosts}[0].routes[1].match"),
                "route \"role-grant\" looks sensitive by its path (/v1/roles/*/members has \
                 \"roles\") but no plugin route guards it",
            ),
            (
                "warning",
                BROKEN_ENVOY,
                &format!("{vhosts}[1].routes[0].match"),
                "route \"admin-token\" looks sensitive by its path (/oauth/token has \"oauth\")",
            ),
            (
                "warning",
                BROKEN_ENVOY,
                &format!("{vhosts}[0].routes[3]"),
                "the retry-guard filter runs on route \"passthrough\" but no plugin route \
                 guards it",
            ),
        ],
    );
    // The human form: one line per finding, `severity: file: path: message`.
    let o = run(&[BROKEN_ENVOY]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "\nerror: {BROKEN_ENVOY}: {filter}.fail_open: fail_open: true lets"
        )),
        "{out}"
    );
    assert!(
        out.ends_with(
            "5 errors, 3 warnings in 1 file: 1 plugin configuration, 5 Envoy routes, 0 \
             VirtualService http routes\n"
        ),
        "{out}"
    );
}

const BROKEN_ENVOYFILTER: &str = "testdata/deploy/broken-envoyfilter.yaml";

#[test]
fn broken_envoyfilter() {
    let expected = [(
        "error",
        BROKEN_ENVOYFILTER,
        "spec.configPatches[0].patch.value.typed_config.config.allow_on_headers_stop_iteration",
        "not true, and plugin routes \"oauth-token\" (token_issuing), \"role-grant\" \
         (privilege_changing), \"secrets\" (secret_minting), \"session-refresh\" \
         (session_extending), \"preferences\" (idempotent_write) read the request body",
    )];
    assert_findings(&[BROKEN_ENVOYFILTER], &expected);
    assert_findings(
        &[BROKEN_ENVOYFILTER, "envoy/istio/virtualservice.yaml"],
        &expected,
    );
}

const BROKEN_VS: &str = "testdata/deploy/broken-virtualservice.yaml";

#[test]
fn broken_virtualservice() {
    assert_findings(
        &["envoy/istio/envoyfilter.yaml", BROKEN_VS],
        &[
            (
                "error",
                BROKEN_VS,
                "spec.http[0].retries.retryOn",
                "route \"token\" retries on \"5xx,connect-failure,refused-stream\" (2 attempts), \
                 and plugin route \"oauth-token\" (token_issuing) guards it",
            ),
            (
                "error",
                BROKEN_VS,
                "spec.http[2].retries",
                "missing on route \"secrets\", which plugin route \"secrets\" (secret_minting) \
                 guards: Istio's default retry policy then re-sends",
            ),
        ],
    );
}

const BROKEN_WASMPLUGIN: &str = "testdata/deploy/broken-wasmplugin.yaml";

#[test]
fn broken_wasmplugin() {
    assert_findings(
        &[BROKEN_WASMPLUGIN],
        &[
            (
                "error",
                BROKEN_WASMPLUGIN,
                "spec.failStrategy",
                "failStrategy: FAIL_OPEN lets every request pass unguarded",
            ),
            (
                "error",
                BROKEN_WASMPLUGIN,
                "spec.pluginConfig.routes",
                "a WasmPlugin cannot set allow_on_headers_stop_iteration, and plugin route \
                 \"oauth-token\" (token_issuing) reads the request body",
            ),
            ("warning", BROKEN_WASMPLUGIN, "spec", NO_NORMALIZATION),
        ],
    );
}

#[test]
fn json_report_lists_the_configurations() {
    let (code, report) = run_json(&[
        "envoy/istio/envoyfilter.yaml",
        "envoy/istio/virtualservice.yaml",
    ]);
    assert_eq!(code, Some(0));
    let configs = report["configurations"].as_array().expect("configurations");
    assert_eq!(configs.len(), 1, "{report:#}");
    assert_eq!(configs[0]["file"], "envoy/istio/envoyfilter.yaml");
    assert_eq!(configs[0]["source"], "envoyfilter");
    assert_eq!(configs[0]["valid"], true);
    assert_eq!(
        configs[0]["path"],
        "spec.configPatches[0].patch.value.typed_config.config.configuration.value"
    );
    assert_eq!(configs[0]["routes"][0]["name"], "oauth-token");
    assert_eq!(configs[0]["routes"][0]["class"], "token_issuing");
    assert_eq!(report["routes"]["virtualservice"], 8);
}

#[test]
fn unreadable_input_exits_2_and_names_every_file() {
    let dir = tmp_dir("unreadable");
    let not_yaml = dir.join("not-yaml.yaml");
    std::fs::write(&not_yaml, "kind: [unclosed\n").unwrap();
    let not_json = dir.join("not-json.json");
    std::fs::write(&not_json, "{\"routes\": [}").unwrap();
    let other = dir.join("gateway.yaml");
    std::fs::write(
        &other,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: { name: g }\n",
    )
    .unwrap();
    let missing = dir.join("missing.yaml");
    let paths = [&not_yaml, &not_json, &other, &missing];
    let args: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let o = Command::new(env!("CARGO_BIN_EXE_retry-guard"))
        .arg("check")
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // Every reason at once, a missing file's among the others.
    assert!(
        err.contains(&format!("cannot read {}", missing.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: not YAML", not_yaml.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}: not JSON", not_json.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}: nothing `check` reads (found kind Gateway)",
            other.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("no retry-guard plugin configuration"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));
    // VirtualServices alone: routes, but no plugin configuration to check them against.
    let o = run(&["envoy/istio/virtualservice.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no retry-guard plugin configuration in envoy/istio/virtualservice.yaml")
    );
    // Usage errors.
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(
        run(&["--format", "xml", "envoy/envoy.yaml"]).status.code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
