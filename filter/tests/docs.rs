//! The README's reference sections are checked against the code's single sources of truth:
//! the configuration schema, the problem types and the metric names.

use retry_guard::config::SCHEMA;
use retry_guard::metrics::Counter;
use retry_guard::problem::ProblemType;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

#[test]
fn every_config_field_is_documented() {
    let readme = readme();
    for field in SCHEMA {
        let cell = format!("| `{}` |", field.path);
        assert!(
            readme.contains(&cell),
            "README lacks a row for {}",
            field.path
        );
    }
}

#[test]
fn every_problem_type_is_documented_with_its_status() {
    let readme = readme();
    for p in ProblemType::ALL {
        let row = format!("| {} | `{}` |", p.status(), p.uri());
        assert!(readme.contains(&row), "README lacks {row}");
    }
}

#[test]
fn every_counter_is_documented() {
    let readme = readme();
    for c in Counter::ALL {
        let name = c.name();
        let documented = match name.strip_prefix("retry_guard.decision.") {
            Some(decision) => readme.contains(&format!("`{decision}`")),
            None => readme.contains(&format!("`{name}`")),
        };
        assert!(documented, "README lacks {name}");
    }
}

#[test]
fn the_memory_gauge_is_documented() {
    assert!(readme().contains(&format!("`{}`", retry_guard::metrics::MEMORY_GAUGE)));
}

#[test]
fn the_example_configuration_parses() {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/configs/issue-example.json"
    ))
    .unwrap();
    retry_guard::config::Config::parse(&text).unwrap();
}
