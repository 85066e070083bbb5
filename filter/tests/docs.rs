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
fn every_route_counter_is_documented() {
    let readme = readme();
    for c in retry_guard::metrics::RouteCounter::ALL {
        assert!(
            readme.contains(&format!("`{}`", c.name())),
            "README lacks {}",
            c.name()
        );
    }
    assert!(readme.contains("`<counter>.route.<route name>`"));
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

/// The README's retry-policy table, built from the policy core's defaults: one row for
/// `read_only`, one for `idempotent_write`, one for the four sensitive classes (which must
/// agree), and outcomes whose column is the same in every row grouped into one column.
fn policy_table() -> String {
    use retry_guard::policy::{default_policy, Outcome, RouteClass};
    let sensitive: Vec<RouteClass> = RouteClass::ALL
        .into_iter()
        .filter(|c| c.is_sensitive())
        .collect();
    for c in &sensitive {
        for o in Outcome::ALL {
            assert_eq!(
                default_policy(*c, o),
                default_policy(sensitive[0], o),
                "the sensitive classes differ after {o}: the README's table needs a row per class"
            );
        }
    }
    let rows = [
        ("read_only", RouteClass::ReadOnly),
        ("idempotent_write", RouteClass::IdempotentWrite),
        ("sensitive classes", sensitive[0]),
    ];
    let column = |o: Outcome| rows.map(|(_, c)| default_policy(c, o));
    let mut groups: Vec<(Vec<Outcome>, [retry_guard::policy::Policy; 3])> = Vec::new();
    for o in Outcome::ALL {
        match groups.iter_mut().find(|(_, col)| *col == column(o)) {
            Some((outcomes, _)) => outcomes.push(o),
            None => groups.push((vec![o], column(o))),
        }
    }
    let mut t = String::from("| class |");
    for (outcomes, _) in &groups {
        let names: Vec<&str> = outcomes.iter().map(|o| o.name()).collect();
        t.push_str(&format!(" {} |", names.join(", ")));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(groups.len()));
    for (i, (name, _)) in rows.iter().enumerate() {
        t.push_str(&format!("\n| {name} |"));
        for (_, col) in &groups {
            t.push_str(&format!(" {} |", col[i].name()));
        }
    }
    t.push('\n');
    t
}

#[test]
fn the_retry_policy_table_is_the_policy_cores_defaults() {
    let table = policy_table();
    assert!(
        readme().contains(&table),
        "README's retry-policy table is not the policy core's defaults; it should read:\n{table}"
    );
}

#[test]
fn every_outcome_is_documented() {
    let readme = readme();
    for o in retry_guard::policy::Outcome::ALL {
        let row = format!("| `{}` |", o.name());
        assert!(readme.contains(&row), "README's outcome table lacks {row}");
    }
}

#[test]
fn the_audit_member_table_is_the_writers_member_list() {
    let readme = readme();
    let start = readme
        .find("<!-- audit-members:start -->")
        .expect("README has the audit member table");
    let end = readme[start..]
        .find("<!-- audit-members:end -->")
        .expect("the table's end marker")
        + start;
    // Each row's first cell names one or more members, each in backticks.
    let documented: Vec<String> = readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let cell = l.split('|').nth(1).unwrap_or("");
            cell.split(',')
                .map(|m| m.trim().trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(documented, retry_guard::audit::MEMBERS);
}

#[test]
fn max_entries_names_the_ledgers_set_size() {
    let ways = retry_guard::ledger::WAYS;
    let sets = format!("whole sets of {ways} entries");
    let field = SCHEMA.iter().find(|f| f.path == "max_entries").unwrap();
    assert!(field.doc.contains(&sets), "{}", field.doc);
    let readme = readme();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `max_entries` |"))
        .unwrap_or_default();
    assert!(row.contains(&sets), "README: {row}");
    for said in [
        format!("table of `max_entries / {ways}` set keys"),
        format!("each key holds up to {ways} entries"),
    ] {
        assert!(
            readme.contains(&said),
            "README's ledger section lacks {said:?}"
        );
    }
}
