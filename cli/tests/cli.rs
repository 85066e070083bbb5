//! The operator commands through the library entry point.

use std::path::PathBuf;

use retry_guard_cli::{config_from_text, main};

fn root() -> PathBuf {
    retry_guard::paths::repo_root()
}

#[test]
fn check_accepts_the_example_and_names_the_bad_field() {
    let good = root().join("testdata/configs/issue-example.json");
    assert_eq!(main(vec!["check".into(), good.display().to_string()]), 0);
    let dir = std::env::temp_dir().join(format!("rg-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"routes":[{"name":"r","match":{"path":"/x"},"class":"token_issueing","owner":"o","escalation":"e"}]}"#).expect("write");
    assert_eq!(main(vec!["check".into(), bad.display().to_string()]), 1);
}

#[test]
fn istio_wasmplugin_config_is_extracted() {
    let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: retry-guard }
spec:
  url: oci://example/retry-guard:1
  pluginConfig:
    routes:
      - name: r
        match: { route_name: token }
        class: token_issuing
        owner: team-iam
        escalation: pager
"#;
    let bytes = config_from_text(yaml, "p.yaml").expect("extracted");
    retry_guard::config::Config::parse(&bytes).expect("valid");
    let as_string = yaml.replace(
        "  pluginConfig:\n",
        "  pluginConfig: '{\"routes\":[]}'\n  x:\n",
    );
    let bytes = config_from_text(&as_string, "p.yaml").expect("string form");
    assert!(retry_guard::config::Config::parse(&bytes).is_err());
}

#[test]
fn approve_signs_a_token_the_filter_accepts_the_format_of() {
    let key = root().join("testdata/keys/approvals-test.key");
    let code = main(vec![
        "approve".into(),
        "--key".into(),
        key.display().to_string(),
        "--challenge".into(),
        "c".into(),
        "--fingerprint".into(),
        "f".into(),
        "--approver".into(),
        "alice".into(),
        "--ttl".into(),
        "60".into(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        main(vec![
            "approve".into(),
            "--key".into(),
            key.display().to_string()
        ]),
        2
    );
    assert_eq!(main(vec!["keygen".into()]), 0);
}

/// The CLI's help, cli/README.md, host-sim's README and the top-level README name the same
/// inputs for `check`.
#[test]
fn every_guide_lists_the_same_check_inputs() {
    let root = retry_guard::paths::repo_root();
    let inputs = [
        "plugin configuration JSON",
        "Envoy bootstrap",
        "WasmPlugin",
        "EnvoyFilter",
        "VirtualService",
    ];
    let usage = retry_guard_cli::USAGE.replace('\n', " ").replace("  ", " ");
    for (name, text) in [
        ("retry-guard --help", usage),
        (
            "README.md",
            std::fs::read_to_string(root.join("README.md")).expect("README"),
        ),
        (
            "cli/README.md",
            std::fs::read_to_string(root.join("cli/README.md")).expect("cli README"),
        ),
        (
            "host-sim/README.md",
            std::fs::read_to_string(root.join("host-sim/README.md")).expect("host-sim README"),
        ),
    ] {
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for input in inputs {
            assert!(
                flat.contains(input),
                "{name} does not list {input:?} for check"
            );
        }
    }
}
