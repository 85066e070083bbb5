//! The playground's examples, built in from `testdata/configs` (so the page needs no request
//! for them), each with a sequence of calls that shows what it does.

use serde::Serialize;

/// One example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Example {
    /// The file name in `testdata/configs`.
    pub name: &'static str,
    /// What it shows.
    pub title: &'static str,
    /// The configuration text.
    pub config: &'static str,
    /// A sequence of calls (the playground's `calls`, JSON).
    pub calls: &'static str,
}

const TOKEN_CALLS: &str = r#"[
 {"method":"POST","path":"/oauth/token","headers":[["x-client-id","ci-bot"]],"body":"grant_type=client_credentials&client_id=ci-bot","upstream":{"status":200}},
 {"method":"POST","path":"/oauth/token","headers":[["x-client-id","ci-bot"]],"body":"grant_type=client_credentials&client_id=ci-bot","upstream":{"status":200},"wait":5},
 {"method":"POST","path":"/oauth/token","headers":[["x-client-id","ci-bot"]],"body":"grant_type=client_credentials&client_id=ci-bot","upstream":{"status":200},"wait":60,"confirmation":{"from":1}},
 {"method":"POST","path":"/oauth/token","headers":[["x-client-id","ci-bot"]],"body":"grant_type=client_credentials&client_id=ci-bot","upstream":{"fail":"connection_refused"},"wait":1,"note":"a new operation whose connection is refused"}
]"#;

/// Every built-in example.
pub const EXAMPLES: &[Example] = &[
    Example {
        name: "smoke.json",
        title: "one token route: replay, approval, stale tokens",
        config: include_str!("../../testdata/configs/smoke.json"),
        calls: TOKEN_CALLS,
    },
    Example {
        name: "issue-example.json",
        title: "the issue's example: every class on its own route",
        config: include_str!("../../testdata/configs/issue-example.json"),
        calls: TOKEN_CALLS,
    },
    Example {
        name: "gateway.json",
        title: "the bundled gateway (just envoy)",
        config: include_str!("../../testdata/configs/gateway.json"),
        calls: TOKEN_CALLS,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_accepted_and_its_calls_run() {
        for e in EXAMPLES {
            let c = crate::config_input::check(e.config);
            assert!(c.ok, "{}: {:?}", e.name, c.problem);
            let calls: Vec<crate::play::Call> = serde_json::from_str(e.calls).expect("calls");
            let steps =
                crate::play::run(e.config, crate::play::DEFAULT_START, &calls).expect("runs");
            assert_eq!(steps.len(), calls.len());
        }
    }
}
