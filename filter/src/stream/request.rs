//! A request's facts: what route matching reads ([`Fetcher`]), what a matched request's
//! decision needs, gathered at its headers ([`Pending`]), and its body digest.

use crate::canonical::{canonical_form, BodyForm, CanonicalPath};
use crate::config::{Config, PrincipalSource, QueryKey, Route};
use crate::engine::{self, EarlyFacts, Facts};
use crate::fingerprint::{parse_idempotency_key, BodyDigester, Fingerprint, KeyCheck, NaturalKey};
use crate::headers::HeaderPairs;
use crate::host::{LogLevel, StreamHost};
use crate::jwt::Credential;
use crate::ledger::Ledger;
use crate::matcher::Fact;
use crate::metrics::{Counter, Event};
use crate::principal::{self, Ambiguous, PrincipalInputs};
use crate::token::{BearerToken, StaleReason, TokenRules};

use super::Plugin;

/// The host's clock in Unix milliseconds (0 if it has none).
pub(super) fn now_millis(host: &impl StreamHost) -> u64 {
    host.now_nanos().map_or(0, |n| n / 1_000_000)
}

/// A property's value as text.
pub(super) fn property_text(host: &impl StreamHost, path: &[u8]) -> Option<String> {
    host.property(path).and_then(|b| String::from_utf8(b).ok())
}

/// Reads the facts routes match on, for [`LazyFacts`](crate::matcher::LazyFacts): the route
/// name from the `xds.route_name` property; headers one by one (no header-map copy for a
/// request no route can match) until the route name is one a guarded route names, and from
/// then on from one copy of all request headers, which the matched request needs anyway.
pub(super) struct Fetcher<'a, H> {
    host: &'a H,
    config: &'a Config,
    /// The copy of all request headers, once taken.
    blob: &'a mut Option<Vec<u8>>,
    bulk: bool,
}

impl<'a, H: StreamHost> Fetcher<'a, H> {
    /// A fetcher that keeps the header copy it takes, if any, in `blob`.
    pub(super) fn new(host: &'a H, config: &'a Config, blob: &'a mut Option<Vec<u8>>) -> Self {
        Fetcher {
            host,
            config,
            blob,
            bulk: false,
        }
    }

    /// The value of `fact`, read from the host.
    #[inline]
    pub(super) fn fetch(&mut self, fact: Fact) -> Option<String> {
        let name = match fact {
            Fact::RouteName => {
                let value = property_text(self.host, b"xds\0route_name");
                self.bulk = value.as_deref().is_some_and(|v| {
                    self.config
                        .routes
                        .iter()
                        .any(|r| r.matcher.route_name.as_deref() == Some(v))
                });
                return value;
            }
            Fact::Method => ":method",
            Fact::Authority => ":authority",
            Fact::Path => ":path",
        };
        if !self.bulk {
            return self
                .host
                .request_header(name)
                .and_then(|b| String::from_utf8(b).ok());
        }
        let host = self.host;
        let blob = self.blob.get_or_insert_with(|| host.request_headers());
        let value = HeaderPairs::lookup(blob, name)?;
        String::from_utf8(value.to_vec()).ok()
    }
}

/// What the audit line says of a request whose principal is ambiguous (it is answered 400 and
/// never fingerprinted).
const AMBIGUOUS_PRINCIPAL: &str = "ambiguous";

/// Facts of a matched request gathered at request headers, waiting for the body.
pub(super) struct Pending {
    /// When the request's headers arrived, Unix milliseconds.
    pub(super) now_ms: u64,
    pub(super) method: String,
    /// The canonical path.
    pub(super) path: String,
    /// The path carried an encoded slash (refused).
    pub(super) encoded_slash: bool,
    /// The query string as the route's natural key takes it (empty: ignored).
    pub(super) query: String,
    /// The `content-length` header, if any.
    pub(super) declared_length: Option<u64>,
    pub(super) request_id: Option<String>,
    /// The principal, from what goes upstream; `Err` when a source names the caller twice.
    pub(super) principal: Result<String, Ambiguous>,
    pub(super) key: KeyCheck,
    pub(super) stale: Option<StaleReason>,
    pub(super) confirmation: Option<Vec<u8>>,
    pub(super) body: BodyDigester,
    pub(super) body_seen: usize,
    /// An opaque token whose first sighting is still to be asked of the cluster ledger.
    pub(super) sighting: Option<Deferred>,
    /// The token table had no room for this request's sighting: the route's fail policy
    /// decides ([`engine::ledger_full`]).
    pub(super) ledger_full: bool,
    /// The mTLS workload identity presenting the credential, on a tracked route.
    pub(super) holder: Option<String>,
    /// Another workload identity presented the same credential first, within the window.
    pub(super) shared_with: Option<String>,
    /// `x-envoy-attempt-count`, when the request carries it.
    pub(super) client_attempt: Option<u32>,
    /// A regenerated idempotency key: ms since the same natural key's attempt under another
    /// key ([`Pending::note_key`]).
    pub(super) key_regenerated_ms: Option<u64>,
}

/// A token age check waiting for the cluster ledger's record of the credential.
pub(super) struct Deferred {
    /// The credential's record id.
    pub(super) id: [u8; 32],
    pub(super) token: BearerToken,
    pub(super) rules: TokenRules,
    /// The mTLS workload identity presenting the credential (recorded as its first holder).
    pub(super) holder: Option<String>,
    /// The principal if the credential turns out stale (then it names no one).
    pub(super) principal_if_stale: Result<String, Ambiguous>,
}

impl Pending {
    /// The principal's text for answers and audit lines.
    pub(super) fn principal_text(&self) -> &str {
        match &self.principal {
            Ok(p) => p,
            Err(_) => AMBIGUOUS_PRINCIPAL,
        }
    }

    /// What the checks at request headers look at.
    pub(super) fn early(&self) -> EarlyFacts<'_> {
        EarlyFacts {
            encoded_slash: self.encoded_slash,
            key: &self.key,
            principal: self.principal.as_deref(),
        }
    }

    /// Facts for a decision made before the body is known (400, 401, 413): no fingerprint
    /// yet.
    pub(super) fn early_facts(&self) -> Facts<'_> {
        Facts {
            now_ms: self.now_ms,
            request_id: self.request_id.as_deref(),
            principal: self.principal_text(),
            key: &self.key,
            fingerprint: None,
            body_digest: [0; 32],
            stale: self.stale,
            confirmation: None,
            credential_holder: None,
            credential_shared_with: None,
            client_attempt: self.client_attempt,
            key_regenerated_ms: None,
        }
    }

    /// The facts of a request on `route`, read at request headers: `blob` is the copy of all
    /// request headers; removes the confirmation header, which never goes upstream.
    pub(super) fn gather<L: Ledger, H: StreamHost>(
        plugin: &Plugin<L>,
        host: &H,
        route: &Route,
        method: String,
        path: CanonicalPath,
        blob: Vec<u8>,
    ) -> Pending {
        let config = &plugin.config;
        let now_ms = now_millis(host);
        let headers = HeaderPairs::parse(&blob).unwrap_or_default();
        let request_id = headers.text("x-request-id").map(str::to_string);
        // Two key fields: the upstream may take either (or both), so the request has no one key.
        let key = if headers.count(&config.idempotency_key_header) > 1 {
            KeyCheck::Invalid("sent more than once")
        } else {
            parse_idempotency_key(
                headers.get(&config.idempotency_key_header),
                config.max_key_length,
            )
        };
        let declared_length = headers
            .text("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let credential = headers.text("authorization").and_then(Credential::parse);
        let (token, claims) = BearerToken::classify(credential, headers.count("authorization"));
        let rules = TokenRules {
            sensitive: route.class.is_sensitive(),
            max_age: route.token_max_age_seconds,
            skew: config.clock_skew_seconds,
        };
        // An opaque token's first sighting is recorded only when the request is decided (on
        // etcd, asked of etcd then): a request answered before its decision (400, 413) writes
        // nothing to the ledger, so such requests cannot be used to fill it.
        // On tracked routes the credential's record also remembers which mTLS workload
        // presented it first (one credential used by two workloads is counted and audited).
        let holder_check = route.needs_ledger() && credential.is_some();
        let peer_identity =
            if holder_check || config.principal.contains(&PrincipalSource::PeerIdentity) {
                property_text(host, b"connection\0uri_san_peer_certificate")
            } else {
                None
            };
        let holder = peer_identity.clone().filter(|_| holder_check);
        let sighting = match credential {
            Some(c) if rules.needs_first_seen(&token) || holder.is_some() => {
                Some(engine::token_record_id(c.secret()))
            }
            _ => None,
        };
        let stale = rules.assess(&token, now_ms / 1000, None);
        // The principal comes from what goes upstream: a stale credential is stripped or
        // rejected, so it names no one (a forged JWT without `exp` cannot make a new caller).
        let (forwarded, claims) = match stale {
            Some(_) => (None, None),
            None => (credential, claims),
        };
        // Read once, only when a `metadata:` source is configured (see principal::metadata_value
        // for what Envoy returns here).
        let metadata = if config
            .principal
            .iter()
            .any(|p| matches!(p, PrincipalSource::Metadata(_)))
        {
            host.property(b"metadata")
        } else {
            None
        };
        let inputs = PrincipalInputs {
            peer_identity: peer_identity.as_deref(),
            credential: forwarded,
            claims: claims.as_ref(),
            headers: &headers,
            metadata: metadata.as_deref(),
        };
        let on_missing = config.on_missing_verified_principal;
        let principal = principal::derive(&config.principal, on_missing, &inputs);
        let sighting = sighting.map(|id| Deferred {
            id,
            token,
            rules,
            holder: holder.clone(),
            principal_if_stale: principal::derive(
                &config.principal,
                on_missing,
                &PrincipalInputs {
                    credential: None,
                    claims: None,
                    ..inputs
                },
            ),
        });
        let query = match route.query {
            QueryKey::Ignore => String::new(),
            // A query that does not decode is kept as sent.
            QueryKey::Sorted => canonical_form(path.query.as_bytes()).unwrap_or(path.query),
        };
        let body = BodyDigester::new(BodyForm::of_content_type(headers.get("content-type")));
        // Untracked routes never ask for a confirmation: nothing to read there.
        let confirmation = if route.needs_ledger() {
            headers.get(&config.confirmation_header).map(<[u8]>::to_vec)
        } else {
            None
        };
        if confirmation.is_some() {
            // Never forwarded upstream, whatever the decision.
            host.remove_request_header(&config.confirmation_header);
        }
        Pending {
            now_ms,
            method,
            path: path.path,
            encoded_slash: path.encoded_slash,
            query,
            declared_length,
            request_id,
            principal,
            key,
            stale,
            confirmation,
            body,
            body_seen: 0,
            sighting,
            ledger_full: false,
            holder,
            shared_with: None,
            client_attempt: headers
                .text("x-envoy-attempt-count")
                .and_then(|v| v.trim().parse().ok()),
            key_regenerated_ms: None,
        }
    }

    /// On a tracked route, notes a keyed request (fingerprint `keyed`, body `body`) in the
    /// same-body table and keeps what it says ([`engine::note_keyed_attempt`]): was the same
    /// natural key sent under another key within a minute? A store failure is logged and
    /// leaves it unknown.
    pub(super) fn note_key<L: Ledger, H: StreamHost>(
        &mut self,
        plugin: &Plugin<L>,
        host: &H,
        route: &Route,
        keyed: &Fingerprint,
        body: &[u8; 32],
    ) {
        if !route.needs_ledger() || self.key.key().is_none() {
            return;
        }
        let natural = Fingerprint::compute(
            &route.name,
            self.principal_text(),
            None,
            &NaturalKey {
                method: &self.method,
                path: &self.path,
                query: &self.query,
                body,
            },
        );
        match engine::note_keyed_attempt(&plugin.bodies, &natural, keyed, self.now_ms) {
            Ok(gap) => self.key_regenerated_ms = gap,
            Err(e) => host.log(
                LogLevel::Warn,
                &format!("retry-guard: same-body record not kept: {e}"),
            ),
        }
    }

    /// Records the token's first sighting in the in-process ledger and assesses the token with
    /// it (see [`Pending::seen`]); a store failure leaves the age unknown, logged.
    pub(super) fn sight_locally<L: Ledger, H: StreamHost>(&mut self, plugin: &Plugin<L>, host: &H) {
        let Some((id, sensitive, holder)) = self
            .sighting
            .as_ref()
            .map(|d| (d.id, d.rules.sensitive, d.holder.clone()))
        else {
            return;
        };
        let seen = match engine::first_seen_by_id(
            &plugin.tokens,
            id,
            sensitive,
            self.now_ms,
            plugin.config.window_seconds,
            holder.as_deref(),
        ) {
            Ok(sighting) => {
                if sighting.evicted {
                    host.count(Counter::Event(Event::LedgerEvicted));
                }
                if sighting.refused {
                    host.count(Counter::Event(Event::LedgerFull));
                    self.ledger_full = true;
                }
                Some(sighting.seen)
            }
            Err(e) => {
                host.log(
                    LogLevel::Warn,
                    &format!("retry-guard: token age unknown: {e}"),
                );
                None
            }
        };
        self.seen(seen);
    }

    /// The credential's record came back (from either ledger; `None`: unknown): assess the
    /// token again with its age, and note a second workload presenting it. A credential that
    /// turns out stale names no one (the principal changes with it). Returns whether the
    /// principal changed (the fingerprint must be computed again).
    pub(super) fn seen(&mut self, seen: Option<engine::CredentialSeen>) -> bool {
        let Some(d) = self.sighting.take() else {
            return false;
        };
        let first_seen = seen.as_ref().map(|s| s.first_seen);
        self.shared_with = seen.and_then(|s| s.shared_with);
        self.stale = d.rules.assess(&d.token, self.now_ms / 1000, first_seen);
        if self.stale.is_some() && d.principal_if_stale != self.principal {
            self.principal = d.principal_if_stale;
            return true;
        }
        false
    }

    /// Takes in body bytes not seen yet (Envoy reports the cumulative buffered size).
    pub(super) fn read_body(&mut self, host: &impl StreamHost, body_size: usize) {
        if body_size <= self.body_seen {
            return;
        }
        let len = body_size - self.body_seen;
        if let Some(chunk) = host.request_body(self.body_seen, len) {
            self.body.push(&chunk);
            self.body_seen += chunk.len();
        }
    }
}
