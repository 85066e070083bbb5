//! Problem types and the local replies the filter sends (RFC 9457 problem documents).

use crate::json::Obj;
use crate::key;

/// A problem type the filter answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemType {
    /// 400: the route requires an idempotency key and none came.
    IdempotencyKeyMissing,
    /// 400: the idempotency key is empty, too long or not visible ASCII.
    IdempotencyKeyInvalid,
    /// 401: a stale bearer token with `stale_token_action: reject`.
    StaleToken,
    /// 403: policy `do_not_retry`.
    DoNotRetry,
    /// 409: the earlier attempt is still in flight.
    RequestInFlight,
    /// 413: a guarded body over `max_body_bytes`.
    BodyTooLarge,
    /// 422: the same idempotency key with a different body.
    IdempotencyKeyMismatch,
    /// 428: policy `retry_with_review`; a human must confirm.
    ConfirmationRequired,
    /// 503: the ledger could not answer in time and the route fails closed.
    LedgerUnavailable,
    /// 400: the path carries an encoded slash (`%2F`, `%5C`), which servers decode
    /// differently.
    PathInvalid,
    /// 400: a principal source names the caller twice, differently (a cookie sent twice).
    PrincipalAmbiguous,
    /// 401: no principal source names the caller on a route with `anonymous: reject`.
    PrincipalRequired,
    /// 403: the bearer credential was presented by another workload identity within the
    /// window, and the route sets `shared_credential: deny`.
    CredentialShared,
}

impl ProblemType {
    /// Every problem type.
    pub const ALL: [ProblemType; 13] = [
        ProblemType::IdempotencyKeyMissing,
        ProblemType::IdempotencyKeyInvalid,
        ProblemType::StaleToken,
        ProblemType::DoNotRetry,
        ProblemType::RequestInFlight,
        ProblemType::BodyTooLarge,
        ProblemType::IdempotencyKeyMismatch,
        ProblemType::ConfirmationRequired,
        ProblemType::LedgerUnavailable,
        ProblemType::PathInvalid,
        ProblemType::PrincipalAmbiguous,
        ProblemType::PrincipalRequired,
        ProblemType::CredentialShared,
    ];

    /// The `type` URI.
    pub fn uri(self) -> &'static str {
        match self {
            ProblemType::IdempotencyKeyMissing => "urn:retry-guard:problem:idempotency-key-missing",
            ProblemType::IdempotencyKeyInvalid => "urn:retry-guard:problem:idempotency-key-invalid",
            ProblemType::StaleToken => "urn:retry-guard:problem:stale-token",
            ProblemType::DoNotRetry => "urn:retry-guard:problem:do-not-retry",
            ProblemType::RequestInFlight => "urn:retry-guard:problem:request-in-flight",
            ProblemType::BodyTooLarge => "urn:retry-guard:problem:body-too-large",
            ProblemType::IdempotencyKeyMismatch => {
                "urn:retry-guard:problem:idempotency-key-mismatch"
            }
            ProblemType::ConfirmationRequired => "urn:retry-guard:problem:confirmation-required",
            ProblemType::LedgerUnavailable => "urn:retry-guard:problem:ledger-unavailable",
            ProblemType::PathInvalid => "urn:retry-guard:problem:path-invalid",
            ProblemType::PrincipalAmbiguous => "urn:retry-guard:problem:principal-ambiguous",
            ProblemType::PrincipalRequired => "urn:retry-guard:problem:principal-required",
            ProblemType::CredentialShared => "urn:retry-guard:problem:credential-shared",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ProblemType::IdempotencyKeyMissing
            | ProblemType::IdempotencyKeyInvalid
            | ProblemType::PathInvalid
            | ProblemType::PrincipalAmbiguous => 400,
            ProblemType::StaleToken | ProblemType::PrincipalRequired => 401,
            ProblemType::DoNotRetry | ProblemType::CredentialShared => 403,
            ProblemType::RequestInFlight => 409,
            ProblemType::BodyTooLarge => 413,
            ProblemType::IdempotencyKeyMismatch => 422,
            ProblemType::ConfirmationRequired => 428,
            ProblemType::LedgerUnavailable => 503,
        }
    }

    /// The `title`.
    pub fn title(self) -> &'static str {
        match self {
            ProblemType::IdempotencyKeyMissing => "Idempotency key required",
            ProblemType::IdempotencyKeyInvalid => "Invalid idempotency key",
            ProblemType::StaleToken => "Stale bearer token",
            ProblemType::DoNotRetry => "Retry not allowed",
            ProblemType::RequestInFlight => "Earlier attempt still in flight",
            ProblemType::BodyTooLarge => "Request body too large to guard",
            ProblemType::IdempotencyKeyMismatch => "Idempotency key reused with a different body",
            ProblemType::ConfirmationRequired => "Human confirmation required",
            ProblemType::LedgerUnavailable => "Retry ledger unavailable",
            ProblemType::PathInvalid => "Request path not accepted",
            ProblemType::PrincipalAmbiguous => "Caller named more than once",
            ProblemType::PrincipalRequired => "Caller identity required",
            ProblemType::CredentialShared => "Credential used by another workload",
        }
    }
}

/// A local reply: status, headers and body, ready for `send_http_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(&'static str, String)>,
    /// The problem document.
    pub body: String,
}

impl LocalReply {
    /// A problem document with `type`, `title` and `status` written; add the other members
    /// and pass it to [`LocalReply::problem`].
    pub fn document(kind: ProblemType) -> Obj {
        let mut doc = Obj::new();
        doc.word(key!("type"), kind.uri())
            .word(key!("title"), kind.title())
            .num(key!("status"), u64::from(kind.status()));
        doc
    }

    /// A problem reply: `application/problem+json`, `no-store`, the finished document.
    pub fn problem(kind: ProblemType, doc: Obj) -> LocalReply {
        LocalReply {
            status: kind.status(),
            headers: vec![
                ("content-type", "application/problem+json".into()),
                ("cache-control", "no-store".into()),
            ],
            body: doc.finish(),
        }
    }

    /// The value of a header of this reply.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}
