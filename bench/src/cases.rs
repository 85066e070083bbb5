//! The configurations the benchmark compares (1 to 9, and Envoy's own `jwt_authn` as 11 and
//! 12; 10 is the etcd ledger's, [`TOKEN_ETCD`]): what sits in Envoy's filter chain, the request
//! sent, and the answer every request must get. Their Envoy bootstraps are built in
//! [`crate::configs`].

use retry_guard_e2e::Result;

use crate::jwt_authn::{self, Alg};

/// What sits in Envoy's HTTP filter chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    /// No wasm filter.
    None,
    /// The no-op proxy-wasm filter (`bench/noop`): the floor.
    Noop,
    /// retry-guard.
    Guard,
    /// retry-guard built another way: the module given with `--compare-wasm`
    /// ([`crate::compare`]).
    GuardCompared,
    /// retry-guard with the cluster ledger on etcd (`"ledger": {"backend": "etcd"}`, the
    /// benchmark's etcd member reached through an Envoy cluster); see [`crate::etcd`].
    GuardEtcd,
    /// The host-call probe (`bench/hostcost`) with this plugin configuration.
    Probe(&'static str),
    /// No wasm filter: Envoy's own `jwt_authn` verifying the request's JWT, signed with this
    /// algorithm ([`crate::jwt_authn`]).
    JwtAuthn(Alg),
}

impl Filter {
    /// Whether the filter holds the request until its body is in (retry-guard fingerprints
    /// it; the probe's `pause_for_body` and `reply_428` wait for it). Where Envoy answers a
    /// body-carrying request itself, a chain without such a filter gets Envoy's buffer filter
    /// (see `BUFFER` in [`crate::configs`]).
    pub fn reads_body(self) -> bool {
        match self {
            Filter::Guard | Filter::GuardCompared | Filter::GuardEtcd => true,
            Filter::Probe(config) => {
                config.starts_with("pause_for_body")
                    || config.starts_with("reply_428")
                    || config.starts_with("etcd_txn")
            }
            Filter::None | Filter::Noop | Filter::JwtAuthn(_) => false,
        }
    }

    /// Whether the filter calls etcd (the Envoy needs the cluster of the benchmark's etcd
    /// member): retry-guard on the etcd ledger, and the probe's `etcd_txn`.
    pub fn calls_etcd(self) -> bool {
        match self {
            Filter::GuardEtcd => true,
            Filter::Probe(config) => config.starts_with("etcd_txn"),
            _ => false,
        }
    }
}

/// What varies from request to request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// The same request every time.
    Plain,
    /// A unique Idempotency-Key and a freshly minted JWT on every request (wrk); a random
    /// query string and a fresh JWT in the paced runs (oha): every request a first attempt.
    Unique,
    /// The bytes of a [`Load::Unique`] request (same headers, same lengths) without the
    /// variation: for a baseline without a filter, where the variation changes nothing but
    /// would cost the load generator's core per request.
    Shape,
}

/// One benchmark configuration: an Envoy set up one way and the request it is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Case {
    /// Its number in the report (1 to 12; the host-cost probes count from 100).
    pub id: usize,
    /// What the report calls it.
    pub name: &'static str,
    /// The wasm filter in the chain.
    pub filter: Filter,
    /// The status of the token route's `direct_response` where the proxy answers it itself
    /// (428 makes configuration 7, Envoy's own 428).
    pub token_status: u16,
    /// The request's method.
    pub method: &'static str,
    /// The request's path.
    pub path: &'static str,
    /// The request's body (empty for none).
    pub body: &'static str,
    /// What varies from request to request.
    pub load: Load,
    /// The filter is switched off on the unguarded route `other` with Envoy's per-route
    /// `FilterConfig { disabled: true }`.
    pub off_on_other: bool,
    /// The status every request of this configuration gets.
    pub expect_status: u16,
}

impl Case {
    /// The JWT its requests carry in `Authorization: Bearer` in place of the unsigned one of
    /// case 5 (`bench/wrk/load.lua`): the signed one of a `jwt_authn` configuration.
    pub fn signed_jwt(&self) -> Result<Option<&'static str>> {
        match self.filter {
            Filter::JwtAuthn(alg) => jwt_authn::token(alg).map(Some),
            _ => Ok(None),
        }
    }
}

/// The body of the token request, the same as host-sim's benchmark sends.
pub const BODY: &str = host_sim::bench::BODY;

/// Configuration 3. 1 and 2 send its request through no filter and the no-op one; 9 is the
/// same with the filter switched off on its route.
pub const UNMATCHED: Case = Case {
    id: 3,
    name: "retry-guard, unmatched route",
    filter: Filter::Guard,
    token_status: 200,
    method: "GET",
    path: "/other",
    body: "",
    load: Load::Plain,
    off_on_other: false,
    expect_status: 200,
};

/// Configuration 5; 8 sends its request to Envoy without the filter.
pub const TOKEN_ALLOW: Case = Case {
    id: 5,
    name: "retry-guard, token_issuing allow (unique key, fresh JWT)",
    filter: Filter::Guard,
    token_status: 200,
    method: "POST",
    path: "/oauth/token",
    body: BODY,
    load: Load::Unique,
    off_on_other: false,
    expect_status: 200,
};

/// Configuration 10: case 5's request and configuration with the ledger on etcd (one member on
/// loopback) instead of Envoy's shared data. Not one of [`CASES`]: `just bench --etcd` (and the
/// default run, after them) compares it with 5 and 8 ([`ETCD_CASES`]).
pub const TOKEN_ETCD: Case = Case {
    id: 10,
    name: "retry-guard, token_issuing allow, ledger on etcd (unique key, fresh JWT)",
    filter: Filter::GuardEtcd,
    ..TOKEN_ALLOW
};

/// The host-call probe holding case 8's request until its body is in, as retry-guard does: the
/// baseline of [`PROBE_ETCD_TXN`].
pub const PROBE_HOLD: Case = Case {
    id: 310,
    name: "host-call probe `pause_for_body 1`, case 8's request",
    filter: Filter::Probe("pause_for_body 1"),
    load: Load::Shape,
    ..TOKEN_ALLOW
};

/// The host-call probe holding case 8's request until its body is in, then sending one etcd
/// transaction (the ledger's insert-if-absent, through the same Envoy cluster as
/// configuration 10) and letting the request go on with the answer: 311 − 310 is what one
/// cluster-ledger round trip costs Envoy, with no retry-guard code.
pub const PROBE_ETCD_TXN: Case = Case {
    id: 311,
    name:
        "host-call probe `etcd_txn 1` (one etcd transaction per request, then on), case 8's request",
    filter: Filter::Probe("etcd_txn 1"),
    ..PROBE_HOLD
};

/// The etcd comparison's configurations, in the order they run each round: no filter on the
/// token request (8), the shared-data ledger (5), the etcd ledger (10), and the probe's price
/// of one etcd round trip (310, 311).
pub const ETCD_CASES: [Case; 5] = [
    CASES[7],
    TOKEN_ALLOW,
    TOKEN_ETCD,
    PROBE_HOLD,
    PROBE_ETCD_TXN,
];

/// Configuration 11: case 8's request (the token request without retry-guard) with its JWT
/// signed RS256, verified by Envoy's own `jwt_authn` against a local JWKS. 11 − 8 is what
/// verifying the token costs Envoy, the reference beside retry-guard's 5 − 8.
pub const JWT_RS256: Case = Case {
    id: 11,
    name: "no wasm filter, Envoy's jwt_authn verifying case 8's JWT, RS256 (local JWKS)",
    filter: Filter::JwtAuthn(Alg::Rs256),
    load: Load::Shape,
    ..TOKEN_ALLOW
};

/// Configuration 12: as 11, the JWT signed ES256.
pub const JWT_ES256: Case = Case {
    id: 12,
    name: "no wasm filter, Envoy's jwt_authn verifying case 8's JWT, ES256 (local JWKS)",
    filter: Filter::JwtAuthn(Alg::Es256),
    ..JWT_RS256
};

/// The configurations of the default run, in the order of their ids: 1 to 9, then 11 and 12
/// (10 is the etcd comparison's, [`TOKEN_ETCD`]).
pub const CASES: [Case; 11] = [
    Case {
        id: 1,
        name: "no wasm filter",
        filter: Filter::None,
        ..UNMATCHED
    },
    Case {
        id: 2,
        name: "no-op wasm filter (floor)",
        filter: Filter::Noop,
        ..UNMATCHED
    },
    UNMATCHED,
    Case {
        id: 4,
        name: "retry-guard, read_only route",
        filter: Filter::Guard,
        token_status: 200,
        method: "GET",
        path: "/v1/items",
        body: "",
        load: Load::Plain,
        off_on_other: false,
        expect_status: 200,
    },
    TOKEN_ALLOW,
    // 6 and 7 send the token request, the same every time: a replay, answered 428.
    Case {
        id: 6,
        name: "retry-guard answering 428 (replays)",
        load: Load::Plain,
        expect_status: 428,
        ..TOKEN_ALLOW
    },
    Case {
        id: 7,
        name: "Envoy direct_response 428",
        filter: Filter::None,
        token_status: 428,
        load: Load::Plain,
        expect_status: 428,
        ..TOKEN_ALLOW
    },
    Case {
        id: 8,
        name: "no wasm filter, case 5's token request (the baseline of 5 ÷ 1)",
        filter: Filter::None,
        load: Load::Shape,
        ..TOKEN_ALLOW
    },
    Case {
        id: 9,
        name:
            "retry-guard, unmatched route with the filter off on that route (FilterConfig disabled)",
        off_on_other: true,
        ..UNMATCHED
    },
    JWT_RS256,
    JWT_ES256,
];

/// `--compare-wasm` ([`crate::compare`]): configurations 4, 5 and 6, each followed by the same
/// configuration loading the compared module (14, 15 and 16), in the order they run each round.
pub const COMPARE_CASES: [Case; 6] = [
    CASES[3],
    Case {
        id: 14,
        name: "configuration 4 with the compared module",
        filter: Filter::GuardCompared,
        ..CASES[3]
    },
    CASES[4],
    Case {
        id: 15,
        name: "configuration 5 with the compared module",
        filter: Filter::GuardCompared,
        ..CASES[4]
    },
    CASES[5],
    Case {
        id: 16,
        name: "configuration 6 with the compared module",
        filter: Filter::GuardCompared,
        ..CASES[5]
    },
];

/// The configuration numbered `id`, one of [`CASES`]; panics on another number (the callers
/// name constants, and `--cases` is checked against [`CASES`] when it is read).
pub fn case(id: usize) -> &'static Case {
    match CASES.iter().find(|c| c.id == id) {
        Some(c) => c,
        None => panic!("no configuration {id} in CASES"),
    }
}

/// The position of configuration `id` in [`CASES`] (where its runs are kept in a report).
pub fn position(id: usize) -> Option<usize> {
    CASES.iter().position(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cases_stand_in_the_order_of_their_ids() {
        let ids: Vec<usize> = CASES.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]);
        for (i, c) in CASES.iter().enumerate() {
            assert_eq!(position(c.id), Some(i), "{}", c.name);
            assert_eq!(case(c.id).name, c.name);
        }
        assert_eq!(case(5).name, TOKEN_ALLOW.name);
        assert_eq!(position(TOKEN_ETCD.id), None);
    }

    #[test]
    fn the_jwt_authn_references_send_case_8s_request_with_a_signed_jwt() {
        let eight = case(8);
        for c in [case(11), case(12)] {
            assert_eq!(
                (
                    c.method,
                    c.path,
                    c.body,
                    c.load,
                    c.token_status,
                    c.expect_status
                ),
                (eight.method, eight.path, eight.body, Load::Shape, 200, 200),
                "{}",
                c.name
            );
            assert!(!c.filter.reads_body());
            let jwt = c.signed_jwt().unwrap().unwrap();
            assert_eq!(jwt.split('.').count(), 3);
        }
        assert_eq!(case(11).filter, Filter::JwtAuthn(Alg::Rs256));
        assert_eq!(case(12).filter, Filter::JwtAuthn(Alg::Es256));
        assert!(CASES
            .iter()
            .filter(|c| c.id != 11 && c.id != 12)
            .all(|c| c.signed_jwt().unwrap().is_none()));
    }

    #[test]
    fn the_etcd_comparison_sends_case_5s_request_to_all_three() {
        let ids: Vec<usize> = ETCD_CASES.iter().map(|c| c.id).collect();
        assert_eq!(ids, [8, 5, 10, 310, 311]);
        assert!(TOKEN_ETCD.filter.calls_etcd() && PROBE_ETCD_TXN.filter.calls_etcd());
        assert!(!PROBE_HOLD.filter.calls_etcd() && !TOKEN_ALLOW.filter.calls_etcd());
        assert!(PROBE_HOLD.filter.reads_body() && PROBE_ETCD_TXN.filter.reads_body());
        for c in &ETCD_CASES {
            assert_eq!(
                (c.method, c.path, c.body, c.expect_status),
                (TOKEN_ALLOW.method, TOKEN_ALLOW.path, TOKEN_ALLOW.body, 200),
                "{}",
                c.name
            );
        }
        assert_eq!(TOKEN_ETCD.load, Load::Unique);
        assert_eq!(case(8).load, Load::Shape);
        assert!(CASES.iter().all(|c| c.filter != Filter::GuardEtcd));
    }
}
