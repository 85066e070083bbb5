//! The probes of `--host-costs`: one kind of host call each, how often per request, and the
//! configurations they run in beside configurations 5 and 8.

use crate::cases::{case, Case, Filter, Load, TOKEN_ALLOW, UNMATCHED};

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
pub const PROBES: [Probe; 10] = [
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
];

/// Host imports the probe does not make, priced as a probed call that does the same kind of
/// work: `proxy_get_buffer_bytes` hands one buffer to the guest through its allocator, as
/// `proxy_get_header_map_value` does.
pub const PRICED_AS: [(&str, &str); 1] = [("proxy_get_buffer_bytes", "proxy_get_header_map_value")];

/// The host-sim path whose host calls are priced.
pub const TOKEN_PATH: &str = "token_issuing_allow";
/// The configuration with retry-guard on that path (case 5) ...
pub const WITH_GUARD: usize = 5;
/// ... and the one without (case 8): their difference is retry-guard's cost on it.
pub const WITHOUT_GUARD: usize = 8;

/// The probes sent case 8's request (case 5's token request, the same bytes every time): no
/// call, and holding the headers until the body is in.
pub const ON_TOKEN_REQUEST: [&str; 2] = ["none 0", "pause_for_body 1"];

/// Position in [`cases`] of the no-call probe on case 8's request.
pub const POST_NONE: usize = PROBES.len();
/// Position in [`cases`] of the probe holding the headers until the body is in.
pub const POST_PAUSE: usize = PROBES.len() + 1;
/// Position in [`cases`] of configuration 5.
pub const GUARD: usize = PROBES.len() + 2;
/// Position in [`cases`] of configuration 8.
pub const NO_GUARD: usize = PROBES.len() + 3;

/// The configurations of the run: the probes (on configuration 3's request, an unguarded
/// `GET /other`), the two probes on case 8's request, then 5 and 8.
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
    cases.extend([*case(WITH_GUARD), *case(WITHOUT_GUARD)]);
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
        assert_eq!(cases.len(), NO_GUARD + 1);
        assert!(cases[0].filter == Filter::Probe("none 0") && cases[0].method == "GET");
        assert!(
            cases[POST_NONE].filter == Filter::Probe("none 0") && cases[POST_NONE].method == "POST"
        );
        assert!(cases[POST_PAUSE].filter == Filter::Probe("pause_for_body 1"));
        assert_eq!(cases[POST_PAUSE].body, cases[NO_GUARD].body);
        assert_eq!(
            (cases[GUARD].id, cases[NO_GUARD].id),
            (WITH_GUARD, WITHOUT_GUARD)
        );
        assert!(cases[GUARD].filter == Filter::Guard && cases[NO_GUARD].filter == Filter::None);
        // Every import the table names, and every one priced as another, has a price.
        for (import, like) in PRICED_AS {
            assert!(
                PROBES.iter().any(|p| p.import == like),
                "{import} priced as {like}"
            );
        }
    }
}
