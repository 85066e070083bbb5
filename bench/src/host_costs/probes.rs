//! The probes of `--host-costs`: one kind of host call each, how often per request, and the
//! configurations they run in beside configurations 5 and 8.

use crate::cases::{case, Case, Filter, Load, TOKEN_ALLOW, UNMATCHED};
use crate::report::{GOAL_428, GOAL_READ_ONLY, GOAL_TOKEN};

/// One probe: the plugin configuration (`"<call> <count>"`), the host import it prices, and
/// the calls per request.
pub struct Probe {
    /// The probe's plugin configuration, `"<call> <count>"`.
    pub config: &'static str,
    /// The host import it prices (empty for the no-call baseline).
    pub import: &'static str,
    /// Its calls per request.
    pub count: u32,
}

/// The probes, the no-call baseline first. Cheap calls are repeated more, so that each
/// probe adds several microseconds, well above the run-to-run noise.
pub const PROBES: [Probe; 11] = [
    Probe {
        config: "none 0",
        import: "",
        count: 0,
    },
    Probe {
        config: "get_current_time 16",
        import: "proxy_get_current_time_nanoseconds",
        count: 16,
    },
    Probe {
        config: "increment_metric 16",
        import: "proxy_increment_metric",
        count: 16,
    },
    Probe {
        config: "get_property 16",
        import: "proxy_get_property",
        count: 16,
    },
    Probe {
        config: "get_header_map_value 16",
        import: "proxy_get_header_map_value",
        count: 16,
    },
    Probe {
        config: "get_header_map_pairs 8",
        import: "proxy_get_header_map_pairs",
        count: 8,
    },
    Probe {
        config: "get_shared_data 16",
        import: "proxy_get_shared_data",
        count: 16,
    },
    Probe {
        config: "set_shared_data 16",
        import: "proxy_set_shared_data",
        count: 16,
    },
    Probe {
        config: "set_property 4",
        import: "proxy_set_property",
        count: 4,
    },
    Probe {
        config: "log 4",
        import: "proxy_log",
        count: 4,
    },
    Probe {
        config: "replace_header_map_value 16",
        import: "proxy_replace_header_map_value",
        count: 16,
    },
];

/// Host imports the probe does not make, priced as a probed call that does the same kind of
/// work: `proxy_get_buffer_bytes` hands one buffer to the guest through its allocator, as
/// `proxy_get_header_map_value` does.
pub const PRICED_AS: [(&str, &str); 1] = [("proxy_get_buffer_bytes", "proxy_get_header_map_value")];

/// The host import `reply_428` prices: answering the request from the filter.
pub const LOCAL_REPLY: &str = "proxy_send_local_response";

/// The probes on case 8's request (case 5's token request, the same bytes every time): no
/// call, and holding the headers until the body is in.
pub const ON_TOKEN_REQUEST: [&str; 2] = ["none 0", "pause_for_body 1"];

/// Position in [`cases`] of the no-call probe on case 8's request.
pub const POST_NONE: usize = PROBES.len();
/// Position in [`cases`] of the probe holding the headers until the body is in.
pub const POST_PAUSE: usize = PROBES.len() + 1;
/// Position in [`cases`] of the no-call probe on case 4's request (`GET /v1/items`).
pub const READ_NONE: usize = PROBES.len() + 2;
/// Position in [`cases`] of no filter at all on case 4's request: the read_only path's
/// baseline.
pub const READ_BARE: usize = PROBES.len() + 3;
/// Position in [`cases`] of the no-call probe in configuration 7 (Envoy's own buffered 428).
pub const REPLY_NONE: usize = PROBES.len() + 4;
/// Position in [`cases`] of the probe answering 428 itself after the body (`reply_428`), in
/// configuration 6's place (the token route forwarding, the probe answering first).
pub const REPLY_PROBE: usize = PROBES.len() + 5;
/// The benchmark's configurations the run measures beside the probes, in this order after
/// them: the floor, the three guarded paths, their baselines and `jwt_authn`.
pub const CONFIGS: [usize; 8] = [2, 4, 5, 6, 7, 8, 11, 12];

/// Position in [`cases`] of the benchmark's configuration `id` (one of [`CONFIGS`]).
pub fn at(id: usize) -> usize {
    match CONFIGS.iter().position(|c| *c == id) {
        Some(i) => REPLY_PROBE + 1 + i,
        None => panic!("configuration {id} is not measured by --host-costs"),
    }
}

/// A guarded path whose added cost is set against its limit.
pub struct GuardedPath {
    /// What the report calls it.
    pub name: &'static str,
    /// host-sim's name of the path (`retry-guard bench --paths`), whose host calls are priced.
    pub host_sim: &'static str,
    /// The benchmark's configuration with retry-guard on it.
    pub guard: usize,
    /// Position in [`cases`] of the same request without a filter: what retry-guard adds is
    /// the difference.
    pub baseline: usize,
    /// How the report names that baseline.
    pub baseline_text: &'static str,
    /// Position in [`cases`] of the probe making no call on the same request: the wasm
    /// boundary is it − the baseline.
    pub boundary: usize,
    /// Holding the headers until the body is in (the contract fingerprints the body):
    /// positions of the probe doing just that and of the probe making no call. For the 428,
    /// the wait is in the price of [`LOCAL_REPLY`].
    pub body_wait: Option<(usize, usize)>,
    /// The configuration whose throughput the path's is set against (its issue-15 ratio), and
    /// the ratio's goal.
    pub throughput: (usize, f64),
}

/// The three guarded paths: read_only (case 4), token (case 5) and the 428 (case 6).
pub fn guarded_paths() -> [GuardedPath; 3] {
    [
        GuardedPath {
            name: "read_only (case 4)",
            host_sim: "read_only",
            guard: 4,
            baseline: READ_BARE,
            baseline_text: "no wasm filter, case 4's request",
            boundary: READ_NONE,
            body_wait: None,
            throughput: (2, GOAL_READ_ONLY),
        },
        GuardedPath {
            name: "token (case 5)",
            host_sim: "token_issuing_allow",
            guard: 5,
            baseline: at(8),
            baseline_text: "configuration 8",
            boundary: POST_NONE,
            body_wait: Some((POST_PAUSE, POST_NONE)),
            throughput: (8, GOAL_TOKEN),
        },
        GuardedPath {
            name: "428 (case 6)",
            host_sim: "replay_428",
            guard: 6,
            baseline: at(7),
            baseline_text: "configuration 7 (Envoy's own buffered 428)",
            boundary: REPLY_NONE,
            body_wait: None,
            throughput: (7, GOAL_428),
        },
    ]
}

/// The configurations of the run: the probes (on configuration 3's request, an unguarded
/// `GET /other`), the two probes on case 8's request, the read_only request's probe and
/// baseline, the 428's two probes, then the benchmark's [`CONFIGS`].
pub fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = PROBES
        .iter()
        .enumerate()
        .map(|(i, p)| Case {
            id: 100 + i,
            name: p.config,
            filter: Filter::Probe(p.config),
            ..UNMATCHED
        })
        .collect();
    for (i, config) in ON_TOKEN_REQUEST.iter().enumerate() {
        cases.push(Case {
            id: 200 + i,
            name: config,
            filter: Filter::Probe(config),
            load: Load::Shape,
            ..TOKEN_ALLOW
        });
    }
    cases.extend([
        Case {
            id: 300,
            name: "none 0, case 4's request",
            filter: Filter::Probe("none 0"),
            ..*case(4)
        },
        Case {
            id: 301,
            name: "no wasm filter, case 4's request",
            filter: Filter::None,
            ..*case(4)
        },
        Case {
            id: 302,
            name: "none 0, configuration 7",
            filter: Filter::Probe("none 0"),
            ..*case(7)
        },
        Case {
            id: 303,
            name: "reply_428 1, configuration 6's place",
            filter: Filter::Probe("reply_428 1"),
            ..*case(6)
        },
    ]);
    cases.extend(CONFIGS.iter().map(|id| *case(*id)));
    cases
}

/// What the probe does per call of `import`.
pub fn what(import: &str) -> &'static str {
    match import {
        "proxy_get_current_time_nanoseconds" => "the clock",
        "proxy_increment_metric" => "a counter",
        "proxy_get_property" => "`xds.route_name`",
        "proxy_get_header_map_value" => "`:path`",
        "proxy_get_header_map_pairs" => "all request headers, serialized",
        "proxy_get_shared_data" => "a 96-byte value",
        "proxy_set_shared_data" => "a 96-byte value",
        "proxy_set_property" => "a new filter-state object",
        "proxy_log" => "a 560-byte info line, written to Envoy's log",
        "proxy_replace_header_map_value" => "`x-envoy-max-retries: 0` on the request",
        "proxy_send_local_response" => "a 428 of 819 bytes after the body is in, against the no-call probe before Envoy's own buffered 428",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_is_one_the_probe_filter_accepts_with_its_count() {
        for p in &PROBES {
            let (call, count) = hostcost_filter::parse(p.config).unwrap();
            assert_eq!(count, p.count, "{}", p.config);
            // The probe's call is the host import the table prices it as.
            let name = hostcost_filter::CALLS
                .iter()
                .find(|(_, c)| *c == call)
                .map(|(n, _)| *n)
                .unwrap();
            let expected = match name {
                "none" => String::new(),
                "get_current_time" => "proxy_get_current_time_nanoseconds".into(),
                call => format!("proxy_{call}"),
            };
            assert_eq!(p.import, expected, "{}", p.config);
        }
        for config in ON_TOKEN_REQUEST {
            hostcost_filter::parse(config).unwrap();
        }
    }

    #[test]
    fn the_positions_name_the_configurations_they_are_read_as() {
        let cases = cases();
        assert_eq!(cases.len(), at(12) + 1);
        assert!(cases[0].filter == Filter::Probe("none 0") && cases[0].method == "GET");
        assert!(
            cases[POST_NONE].filter == Filter::Probe("none 0") && cases[POST_NONE].method == "POST"
        );
        assert!(cases[POST_PAUSE].filter == Filter::Probe("pause_for_body 1"));
        assert_eq!(cases[POST_PAUSE].body, cases[at(8)].body);
        for id in CONFIGS {
            assert_eq!(cases[at(id)].id, id);
        }
        assert!(cases[at(5)].filter == Filter::Guard && cases[at(8)].filter == Filter::None);
        // Each path's baseline and boundary probe send the guarded configuration's request.
        for p in guarded_paths() {
            let guard = &cases[at(p.guard)];
            assert!(guard.filter == Filter::Guard, "{}", p.name);
            for other in [p.baseline, p.boundary] {
                let c = &cases[other];
                assert_eq!(
                    (c.method, c.path, c.body),
                    (guard.method, guard.path, guard.body),
                    "{}: {}",
                    p.name,
                    c.name
                );
            }
            assert!(cases[p.baseline].filter == Filter::None, "{}", p.name);
            assert!(
                cases[p.boundary].filter == Filter::Probe("none 0"),
                "{}",
                p.name
            );
            assert!(host_sim::bench::PATHS.iter().any(|h| h.name == p.host_sim));
        }
        // The 428's probes answer what configuration 6 and 7 answer.
        assert_eq!(cases[REPLY_NONE].token_status, 428);
        assert_eq!(cases[REPLY_NONE].expect_status, 428);
        assert!(cases[REPLY_PROBE].filter == Filter::Probe("reply_428 1"));
        assert_eq!(
            (
                cases[REPLY_PROBE].token_status,
                cases[REPLY_PROBE].expect_status
            ),
            (200, 428)
        );
        assert!(cases[REPLY_PROBE].filter.reads_body() && !cases[REPLY_NONE].filter.reads_body());
        // Every import the table names, and every one priced as another, has a price.
        for (import, like) in PRICED_AS {
            assert!(
                PROBES.iter().any(|p| p.import == like),
                "{import} priced as {like}"
            );
        }
        for case in &cases {
            if let Filter::Probe(config) = case.filter {
                hostcost_filter::parse(config).unwrap();
            }
        }
    }
}
