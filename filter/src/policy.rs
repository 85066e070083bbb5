//! Route classes, attempt outcomes, retry policies and the default policy table.

named_enum! {
    /// What a guarded route does, which decides how dangerous a retry of it is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum RouteClass {
        /// Reads only; every retry is safe.
        ReadOnly => "read_only",
        /// A write that the upstream makes idempotent itself.
        IdempotentWrite => "idempotent_write",
        /// Mints access or refresh tokens (sensitive).
        TokenIssuing => "token_issuing",
        /// Creates secrets, keys or credentials (sensitive).
        SecretMinting => "secret_minting",
        /// Extends or refreshes a session (sensitive).
        SessionExtending => "session_extending",
        /// Grants or changes privileges (sensitive).
        PrivilegeChanging => "privilege_changing",
    }
}

impl RouteClass {
    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<RouteClass> {
        RouteClass::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Token issuing, secret minting, session extending and privilege changing are sensitive.
    pub fn is_sensitive(self) -> bool {
        !matches!(self, RouteClass::ReadOnly | RouteClass::IdempotentWrite)
    }
}

named_enum! {
    /// What became of an attempt. The position in [`Outcome::ALL`] is the outcome's code in
    /// the ledger encoding ([`Outcome::code`]): add new outcomes at the end.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Outcome {
        /// Recorded, no response yet.
        InFlight => "in_flight",
        /// Status 1xx–3xx.
        Succeeded => "succeeded",
        /// 401 or 407.
        Unauthenticated => "unauthenticated",
        /// 429.
        RateLimited => "rate_limited",
        /// Any other 4xx except 408.
        Rejected => "rejected",
        /// Envoy proves the upstream never received the request.
        NotSent => "not_sent",
        /// A 5xx carrying the unchanged-state header: the upstream proves no state change.
        Unchanged => "unchanged",
        /// Any other 5xx, 408, upstream timeout or reset, or no response at all.
        FailedUnknown => "failed_unknown",
        /// The upstream answered (or may have acted) but the client went away before the
        /// response was complete: whatever was issued never reached the caller.
        Undelivered => "undelivered",
    }
}

impl Outcome {
    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Stable one-byte code used in the ledger encoding: the position in [`Outcome::ALL`].
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Outcome::code`].
    pub fn from_code(code: u8) -> Option<Outcome> {
        Outcome::ALL.get(usize::from(code)).copied()
    }
}

named_enum! {
    /// How a retry is treated.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Policy {
        /// Allow.
        RetrySafe => "retry_safe",
        /// 428 unless a valid human confirmation comes with the request.
        RetryWithReview => "retry_with_review",
        /// 409 when the earlier attempt is in flight, 403 otherwise.
        DoNotRetry => "do_not_retry",
    }
}

impl Policy {
    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The default policy for a retry on a route of `class` whose earlier attempt ended in
/// `outcome`.
pub fn default_policy(class: RouteClass, outcome: Outcome) -> Policy {
    use Outcome::*;
    use Policy::*;
    match class {
        RouteClass::ReadOnly => RetrySafe,
        RouteClass::IdempotentWrite => match outcome {
            InFlight => DoNotRetry,
            _ => RetrySafe,
        },
        _ => match outcome {
            InFlight => DoNotRetry,
            Succeeded | FailedUnknown | Undelivered => RetryWithReview,
            Rejected => DoNotRetry,
            NotSent | Unchanged | RateLimited | Unauthenticated => RetrySafe,
        },
    }
}

/// A route's policy per outcome: the class defaults with the route's `on` overrides applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTable([Policy; Outcome::ALL.len()]);

impl PolicyTable {
    /// The class defaults.
    pub fn for_class(class: RouteClass) -> PolicyTable {
        PolicyTable(Outcome::ALL.map(|o| default_policy(class, o)))
    }

    /// Overrides one cell.
    pub fn set(&mut self, outcome: Outcome, policy: Policy) {
        if let Some(cell) = self.0.get_mut(outcome.index()) {
            *cell = policy;
        }
    }

    /// The policy for a retry after `outcome`.
    pub fn get(&self, outcome: Outcome) -> Policy {
        self.0
            .get(outcome.index())
            .copied()
            .unwrap_or(Policy::RetryWithReview)
    }
}

/// Envoy response flags (the legacy bitmask Envoy exposes as the `response.flags` property:
/// bit N is `CoreResponseFlag` N, see envoy/stream_info/stream_info.h).
pub mod flags {
    /// `UH`: no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
    /// `UT`: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
    /// `UF`: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// `UC`: upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
    /// `UO`: upstream overflow (circuit breaking).
    pub const UPSTREAM_OVERFLOW: u64 = 1 << 7;
    /// `NR`: no route found.
    pub const NO_ROUTE_FOUND: u64 = 1 << 8;
    /// `RL`: rate limited (local or global rate limit filter).
    pub const RATE_LIMITED: u64 = 1 << 11;
    /// `NC`: no cluster found.
    pub const NO_CLUSTER_FOUND: u64 = 1 << 24;
    /// `OM`: overload manager.
    pub const OVERLOAD_MANAGER: u64 = 1 << 25;
    /// `DO`: drop overload.
    pub const DROP_OVERLOAD: u64 = 1 << 27;
    /// `DC`: the downstream connection was closed before the response was complete.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;
    /// `DR`: the downstream reset the stream (HTTP/2, HTTP/3) before the response was complete.
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 1 << 28;
    /// `UDO`: unconditional drop overload.
    pub const UNCONDITIONAL_DROP_OVERLOAD: u64 = 1 << 29;

    /// Flags saying the client went away before the response was complete.
    pub const DOWNSTREAM_GONE: u64 = DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET;

    /// Flags proving that the upstream never received the request.
    pub const NOT_SENT: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_OVERFLOW
        | NO_ROUTE_FOUND
        | RATE_LIMITED
        | NO_CLUSTER_FOUND
        | OVERLOAD_MANAGER
        | DROP_OVERLOAD
        | UNCONDITIONAL_DROP_OVERLOAD;
}

/// What the filter saw of the response to an attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// HTTP status; 0 when the stream ended without response headers.
    pub status: u16,
    /// Envoy response flags (`response.flags`).
    pub flags: u64,
    /// The response carried the unchanged-state header with value `unchanged`.
    pub unchanged_state: bool,
}

/// Maps a response to the outcome of the attempt. An attempt that may have changed state
/// upstream (`succeeded`, `failed_unknown`) whose client went away before the response was
/// complete ([`flags::DOWNSTREAM_GONE`]) is `undelivered`.
pub fn classify(response: ResponseFacts) -> Outcome {
    let outcome = classify_response(response);
    if response.flags & flags::DOWNSTREAM_GONE != 0
        && matches!(outcome, Outcome::Succeeded | Outcome::FailedUnknown)
    {
        return Outcome::Undelivered;
    }
    outcome
}

fn classify_response(response: ResponseFacts) -> Outcome {
    let status = response.status;
    if (100..400).contains(&status) {
        return Outcome::Succeeded;
    }
    if response.flags & flags::NOT_SENT != 0 {
        return Outcome::NotSent;
    }
    match status {
        401 | 407 => Outcome::Unauthenticated,
        429 => Outcome::RateLimited,
        408 => Outcome::FailedUnknown,
        400..=499 => Outcome::Rejected,
        500..=599 if response.unchanged_state => Outcome::Unchanged,
        _ => Outcome::FailedUnknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use Policy::*;

    #[test]
    fn default_table_matches_the_contract() {
        // Columns: in_flight, succeeded, failed_unknown, undelivered, rejected, then the four
        // retry-safe ones.
        let sensitive = [
            DoNotRetry,
            RetryWithReview,
            RetryWithReview,
            RetryWithReview,
            DoNotRetry,
        ];
        let rows: [(RouteClass, [Policy; 5], Policy); 6] = [
            (RouteClass::ReadOnly, [RetrySafe; 5], RetrySafe),
            (
                RouteClass::IdempotentWrite,
                [DoNotRetry, RetrySafe, RetrySafe, RetrySafe, RetrySafe],
                RetrySafe,
            ),
            (RouteClass::TokenIssuing, sensitive, RetrySafe),
            (RouteClass::SecretMinting, sensitive, RetrySafe),
            (RouteClass::SessionExtending, sensitive, RetrySafe),
            (RouteClass::PrivilegeChanging, sensitive, RetrySafe),
        ];
        for (class, first5, rest) in rows {
            let t = PolicyTable::for_class(class);
            for (o, p) in [InFlight, Succeeded, FailedUnknown, Undelivered, Rejected]
                .into_iter()
                .zip(first5)
            {
                assert_eq!(t.get(o), p, "{class} after {o}");
            }
            for o in [NotSent, Unchanged, RateLimited, Unauthenticated] {
                assert_eq!(t.get(o), rest, "{class} after {o}");
            }
        }
    }

    #[test]
    fn overrides_replace_one_cell() {
        let mut t = PolicyTable::for_class(RouteClass::TokenIssuing);
        t.set(Succeeded, DoNotRetry);
        assert_eq!(t.get(Succeeded), DoNotRetry);
        assert_eq!(t.get(FailedUnknown), RetryWithReview);
    }

    #[test]
    fn names_and_codes_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.name()), Some(o));
            assert_eq!(Outcome::from_code(o.code()), Some(o));
        }
        for c in RouteClass::ALL {
            assert_eq!(RouteClass::parse(c.name()), Some(c));
        }
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.name()), Some(p));
        }
        assert_eq!(Outcome::from_code(99), None);
        // The codes are the ledger encoding: they never change.
        let codes = [
            (InFlight, 0),
            (Succeeded, 1),
            (Unauthenticated, 2),
            (RateLimited, 3),
            (Rejected, 4),
            (NotSent, 5),
            (Unchanged, 6),
            (FailedUnknown, 7),
            (Undelivered, 8),
        ];
        for (o, code) in codes {
            assert_eq!(o.code(), code, "{o}");
        }
        assert_eq!(codes.len(), Outcome::ALL.len());
    }

    fn status(s: u16) -> Outcome {
        classify(ResponseFacts {
            status: s,
            ..Default::default()
        })
    }

    #[test]
    fn every_outcome_mapping() {
        for s in [100, 200, 201, 204, 302, 399] {
            assert_eq!(status(s), Succeeded, "{s}");
        }
        assert_eq!(status(401), Unauthenticated);
        assert_eq!(status(407), Unauthenticated);
        assert_eq!(status(429), RateLimited);
        for s in [400, 403, 404, 409, 422, 499] {
            assert_eq!(status(s), Rejected, "{s}");
        }
        assert_eq!(status(408), FailedUnknown);
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(status(s), FailedUnknown, "{s}");
        }
        assert_eq!(status(0), FailedUnknown, "no response at all");
        let unchanged = ResponseFacts {
            status: 503,
            flags: 0,
            unchanged_state: true,
        };
        assert_eq!(classify(unchanged), Unchanged);
        for f in [
            flags::NO_HEALTHY_UPSTREAM,
            flags::UPSTREAM_CONNECTION_FAILURE,
            flags::UPSTREAM_OVERFLOW,
            flags::NO_ROUTE_FOUND,
            flags::RATE_LIMITED,
            flags::NO_CLUSTER_FOUND,
        ] {
            let r = ResponseFacts {
                status: 503,
                flags: f,
                unchanged_state: false,
            };
            assert_eq!(classify(r), NotSent, "flags {f:#x}");
        }
        for f in [
            flags::UPSTREAM_REQUEST_TIMEOUT,
            flags::UPSTREAM_CONNECTION_TERMINATION,
        ] {
            let r = ResponseFacts {
                status: 504,
                flags: f,
                unchanged_state: false,
            };
            assert_eq!(classify(r), FailedUnknown, "flags {f:#x}");
        }
        // The client went away before the response was complete: what may have been issued
        // never reached it. A rejection, a proven no-op or a request never sent stays what it
        // is.
        for gone in [
            flags::DOWNSTREAM_CONNECTION_TERMINATION,
            flags::DOWNSTREAM_REMOTE_RESET,
        ] {
            let with = |status, extra| {
                classify(ResponseFacts {
                    status,
                    flags: gone | extra,
                    unchanged_state: false,
                })
            };
            assert_eq!(with(200, 0), Undelivered);
            assert_eq!(with(0, 0), Undelivered, "no response headers at all");
            assert_eq!(with(504, flags::UPSTREAM_REQUEST_TIMEOUT), Undelivered);
            assert_eq!(with(403, 0), Rejected);
            assert_eq!(with(429, 0), RateLimited);
            assert_eq!(with(503, flags::NO_HEALTHY_UPSTREAM), NotSent);
            let unchanged = ResponseFacts {
                status: 503,
                flags: gone,
                unchanged_state: true,
            };
            assert_eq!(classify(unchanged), Unchanged);
        }
    }
}
