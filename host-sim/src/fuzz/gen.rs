//! Random material for the whole-filter fuzzer: plugin configurations, requests (methods,
//! paths, headers with idempotency keys and bearer JWTs, bodies in random chunks), upstream
//! answers and clock steps, all drawn from one seeded source so a seed replays exactly.
//!
//! Values come from small pools more often than not, so that replays, shared keys and
//! colliding fingerprints happen; the rest is hostile noise.

use crate::shared::Rng;
use crate::sim::{Disconnect, Request};
use crate::upstream::Upstream;

/// A seeded generator.
pub struct Gen(Rng);

impl Gen {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Gen {
        Gen(Rng::new(seed))
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.0.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One of `items`; `None` when there are none.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let i = self.below(items.len());
        items.get(i)
    }

    /// One of `items`, a non-empty array (checked at compile time).
    fn pick<'a, T, const N: usize>(&mut self, items: &'a [T; N]) -> &'a T {
        const { assert!(N > 0) };
        &items[self.below(N) % N]
    }

    /// Random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.0.fill(&mut b);
        b
    }

    /// Up to `max - 1` random bytes.
    pub fn noise(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }

    /// A plugin configuration: a small ledger (evictions and refusals happen), four routes of
    /// different classes, a random stale-token action and body limit.
    pub fn config(&mut self) -> (Vec<u8>, u32, u64) {
        let max_entries = *self.pick(&[4u32, 8, 16, 64]);
        let window = *self.pick(&[60u64, 900]);
        let stale = *self.pick(&["strip", "reject"]);
        let max_body = *self.pick(&[64u32, 1024, 65536]);
        let text = format!(
            r#"{{
  "max_entries": {max_entries},
  "window_seconds": {window},
  "max_body_bytes": {max_body},
  "max_key_length": 64,
  "stale_token_action": "{stale}",
  "principal": ["header:x-client-id", "jwt:sub", "token"],
  "confirmation": {{
    "header": "retry-guard-confirmation",
    "max_ttl_seconds": 600,
    "keys": {{ "approvals-test": "uX8eW6DxEemuCaI/oNCq6KDo6Y8z5eww9v+3EFwvU0A=" }}
  }},
  "routes": [
    {{ "name": "oauth-token", "match": {{ "route_name": "token", "methods": ["POST"], "path": "/oauth/token" }},
       "class": "token_issuing", "owner": "team-iam", "escalation": "pagerduty:iam", "token_max_age_seconds": 300 }},
    {{ "name": "secrets", "match": {{ "methods": ["POST", "PUT"], "path_template": "/v1/secrets/*" }},
       "class": "secret_minting", "owner": "team-vault", "escalation": "pagerduty:vault",
       "require_idempotency_key": true }},
    {{ "name": "orders", "match": {{ "path_prefix": "/v1/orders" }},
       "class": "idempotent_write", "owner": "team-shop", "escalation": "pagerduty:shop", "max_attempts": 3 }},
    {{ "name": "profile", "match": {{ "methods": ["GET"], "path_prefix": "/v1/profile" }},
       "class": "read_only", "owner": "team-web", "escalation": "pagerduty:web" }}
  ]
}}"#
        );
        (text.into_bytes(), max_entries, window)
    }

    fn path(&mut self) -> String {
        match self.below(12) {
            0..=3 => "/oauth/token".into(),
            4 | 5 => format!("/v1/secrets/{}", self.pick(&["db", "api", "a%2Fb", ""])),
            6 | 7 => format!(
                "/v1/orders/{}{}",
                self.below(3),
                self.pick(&["", "?x=1", "?b=2&a=1", "/../../oauth/token", "//x"])
            ),
            8 => "/v1/profile/me".into(),
            9 => format!("/{}", String::from_utf8_lossy(&self.noise(40))),
            10 => format!("/{}", "a/".repeat(self.below(300))),
            _ => self
                .pick(&["/", "*", "/oauth/token/", "/OAUTH/token", "/oauth//token"])
                .to_string(),
        }
    }

    fn key(&mut self) -> Vec<u8> {
        match self.below(8) {
            0..=3 => format!("\"k-{}\"", self.below(4)).into_bytes(),
            4 => format!("k-{}", self.below(4)).into_bytes(),
            5 => vec![b'x'; 60 + self.below(20)],
            6 => Vec::new(),
            _ => self.noise(30),
        }
    }

    /// A bearer credential: a JWT with times around `now` (or none of them), an opaque token,
    /// or garbage.
    fn authorization(&mut self, now: u64) -> Vec<u8> {
        let now = now as i64;
        let t = |g: &mut Gen| now + *g.pick(&[-4000i64, -400, -100, -10, 0, 30, 100, 4000]);
        match self.below(6) {
            0..=2 => {
                let mut claims = serde_json::Map::new();
                claims.insert("sub".into(), format!("svc-{}", self.below(3)).into());
                if self.chance(80) {
                    claims.insert("exp".into(), t(self).into());
                }
                if self.chance(70) {
                    claims.insert("iat".into(), t(self).into());
                }
                if self.chance(30) {
                    claims.insert("nbf".into(), t(self).into());
                }
                let jwt = crate::tokens::unsigned_jwt(&serde_json::Value::Object(claims));
                format!("Bearer {jwt}").into_bytes()
            }
            3 => format!("Bearer opaque-{}", self.below(5)).into_bytes(),
            4 => {
                let mut v = b"Bearer ".to_vec();
                v.extend(self.noise(64));
                v
            }
            _ => self
                .pick(&[&b"Basic Zm9vOmJhcg=="[..], b"Bearer", b"Bearer a.b.c", b""])
                .to_vec(),
        }
    }

    fn body(&mut self) -> Vec<u8> {
        match self.below(8) {
            0..=2 => {
                format!("grant_type=client_credentials&client_id=c{}", self.below(3)).into_bytes()
            }
            3 => format!("{{\"order\": {}, \"items\": [1, 2]}}", self.below(3)).into_bytes(),
            4 => format!("{{ \"items\": [1,2], \"order\":{} }}", self.below(3)).into_bytes(),
            5 => Vec::new(),
            6 => vec![b'z'; self.below(2000)],
            _ => self.noise(300),
        }
    }

    /// Splits `body` into 1 to 5 chunks at random places (empty chunks included).
    fn chunks(&mut self, body: Vec<u8>) -> Vec<Vec<u8>> {
        if body.is_empty() {
            return Vec::new();
        }
        let n = 1 + self.below(5);
        let mut cuts: Vec<usize> = (1..n).map(|_| self.below(body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain(std::iter::once(body.len())) {
            out.push(body[at..c].to_vec());
            at = c;
        }
        out
    }

    /// A new request on a random worker of `workers`, at virtual time `now`.
    pub fn request(&mut self, workers: usize, now: u64) -> Request {
        let method = *self.pick(&[
            "POST", "POST", "POST", "POST", "POST", "POST", "PUT", "GET", "DELETE", "PATCH", "post",
        ]);
        let mut r = Request::new(method, &self.path()).on_worker(self.below(workers));
        if self.chance(85) {
            r = r.header("x-client-id", format!("ci-bot-{}", self.below(3)));
        }
        if self.chance(40) {
            r = r.header("idempotency-key", self.key());
        }
        if self.chance(50) {
            r = r.header("authorization", self.authorization(now));
        }
        if self.chance(50) {
            let ct = *self.pick(&[
                "application/x-www-form-urlencoded",
                "application/json",
                "text/plain",
                "application/json; charset=utf-8",
            ]);
            r = r.header("content-type", ct);
        }
        if self.chance(10) {
            let name = *self.pick(&[
                "x-junk",
                "retry-guard-confirmation",
                "host",
                "x-forwarded-proto",
            ]);
            r = r.header(name, self.noise(100));
        }
        let body = self.body();
        r.body = self.chunks(body);
        if self.chance(5) {
            r.trailers = vec![("x-trailer".into(), "1".into())];
        }
        r.disconnect = match self.below(20) {
            0 => Some(Disconnect::BeforeResponse),
            1 => Some(Disconnect::DuringResponseBody),
            _ => None,
        };
        r
    }

    /// What the upstream does.
    pub fn upstream(&mut self) -> Upstream {
        let reply = |status: u16, headers: Vec<(String, String)>, delay_ms: u64| Upstream::Reply {
            status,
            headers,
            body: b"{}".to_vec(),
            delay_ms,
        };
        match self.below(16) {
            0..=5 => reply(200, Vec::new(), 0),
            6 => reply(201, Vec::new(), self.below(3000) as u64),
            7 => reply(*self.pick(&[400, 401, 404, 408, 409, 429]), Vec::new(), 0),
            8 => reply(503, Vec::new(), 0),
            9 => reply(
                503,
                vec![("retry-guard-state".into(), "unchanged".into())],
                0,
            ),
            10 => reply(500, vec![("retry-after".into(), "1".into())], 10),
            11 => Upstream::ConnectionRefused,
            12 => Upstream::NoHealthyUpstream,
            13 => Upstream::Reset {
                delay_ms: self.below(100) as u64,
            },
            14 => Upstream::Timeout,
            _ => reply(204, Vec::new(), 0),
        }
    }

    /// A clock step in milliseconds: short, a few seconds, minutes, past a window.
    pub fn clock_step(&mut self) -> u64 {
        *self.pick(&[0u64, 500, 5_000, 61_000, 301_000, 901_000])
    }
}
