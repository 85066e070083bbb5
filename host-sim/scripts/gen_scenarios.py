#!/usr/bin/env python3
"""Generates testdata/scenarios/*.json (the scenario files are committed; re-run after edits:
`python3 host-sim/scripts/gen_scenarios.py`). Plain data, no logic at run time."""
import json, os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "testdata", "scenarios")
PUB = open(os.path.join(ROOT, "testdata", "keys", "approvals-test.pub")).read().strip()
# A second, valid but unrelated key (the smoke key of issue-example.json), for bad_signature.
OTHER_PUB = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

RUNNABLE = {"runnable": True}
def not_runnable(why): return {"runnable": False, "why": why}

def write(name, doc):
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

def base_config(routes, **extra):
    c = {"principal": ["header:x-client-id", "jwt:sub", "token"],
         "confirmation": {"keys": {"approvals-test": PUB}},
         "routes": routes}
    c.update(extra)
    return c

CLIENT = {"x-client-id": "ci-bot"}
SENSITIVE = ["token_issuing", "secret_minting", "session_extending", "privilege_changing"]
TABLE = {
    "read_only": dict(in_flight="retry_safe", succeeded="retry_safe", failed_unknown="retry_safe", rejected="retry_safe"),
    "idempotent_write": dict(in_flight="do_not_retry", succeeded="retry_safe", failed_unknown="retry_safe", rejected="retry_safe"),
}
for c in SENSITIVE:
    TABLE[c] = dict(in_flight="do_not_retry", succeeded="retry_with_review", failed_unknown="retry_with_review", rejected="do_not_retry")
for c in TABLE:
    for col in ["not_sent", "unchanged", "rate_limited", "unauthenticated"]:
        TABLE[c][col] = "retry_safe"

FIRST = {
    "succeeded": ({"status": 200}, 200, 0),
    "failed_unknown": ({"status": 500}, 500, 0),
    "rejected": ({"status": 400}, 400, 0),
    "not_sent": ({"fail": "connection_refused"}, 503, 32800),
    "unchanged": ({"status": 503, "headers": {"retry-guard-state": "unchanged"}}, 503, 0),
    "rate_limited": ({"status": 429}, 429, 0),
    "unauthenticated": ({"status": 401}, 401, 0),
}

def replay_expect(policy, col, tracked):
    if policy == "retry_safe":
        e = {"status": 200, "decision": "allow", "upstream": True}
        if tracked:
            e["audit"] = {"policy": "retry_safe", "previous_outcome": col}
        return e
    if policy == "retry_with_review":
        return {"status": 428, "decision": "confirm", "problem": "confirmation-required", "upstream": False,
                "headers": {"retry-guard-challenge": {"present": True}},
                "body": {"previous_outcome": col, "owner": "team-table", "escalation": "pager:table"}}
    if col == "in_flight":
        return {"status": 409, "decision": "conflict", "problem": "request-in-flight", "upstream": False}
    return {"status": 403, "decision": "deny", "problem": "do-not-retry", "upstream": False,
            "body": {"previous_outcome": col}}

for cls, row in TABLE.items():
    tracked = cls != "read_only"
    route = {"name": f"{cls}-route", "match": {"methods": ["POST"], "path": f"/t/{cls}"},
             "class": cls, "owner": "team-table", "escalation": "pager:table"}
    steps = [{"note": f"Policy table row {cls}: one fingerprint per column; the first attempt sets the outcome, the replay (on the other worker) gets the row's policy."}]
    for col in ["succeeded", "failed_unknown", "rejected", "not_sent", "unchanged", "rate_limited", "unauthenticated"]:
        up, status, flags = FIRST[col]
        req = {"path": f"/t/{cls}", "headers": dict(CLIENT), "body": f"column={col}", "upstream": up, "worker": 0}
        fe = {"status": status, "decision": "allow"}
        if flags:
            fe["flags"] = flags
        if tracked:
            fe["outcome"] = {"outcome": col}
        steps.append({"name": f"{col}-first", "request": req, "expect": fe})
        steps.append({"name": f"{col}-replay", "request": {"same_as": f"{col}-first", "upstream": {"status": 200}, "worker": 1},
                      "expect": replay_expect(row[col], col, tracked)})
    # in_flight: the replay arrives while the first attempt waits for its upstream.
    req = {"path": f"/t/{cls}", "headers": dict(CLIENT), "body": "column=in_flight"}
    steps.append({"name": "in_flight", "concurrent": {
        "requests": [
            {"name": "first", "request": dict(req, worker=0), "expect": {"status": 200, "decision": "allow"}},
            {"name": "replay", "request": dict(req, worker=1), "expect": replay_expect(row["in_flight"], "in_flight", tracked)},
        ],
        "order": ["first:request", "replay:request", "replay:response", "first:response"]}})
    write(f"policy-{cls.replace('_', '-')}", {
        "name": f"policy-table-{cls}",
        "description": f"Every column of the retry-policy row for class {cls}.",
        "envoy": RUNNABLE,
        "config": base_config([route]),
        "workers": 2,
        "steps": steps})

# max_attempts turns retry_safe into retry_with_review.
write("policy-max-attempts", {
    "name": "policy-max-attempts",
    "description": "An attempt beyond max_attempts turns retry_safe into retry_with_review.",
    "envoy": RUNNABLE,
    "config": base_config([{"name": "writes", "match": {"path_prefix": "/w"}, "class": "idempotent_write",
                            "owner": "team-w", "escalation": "pager:w", "max_attempts": 2}]),
    "request_defaults": {"path": "/w/1", "headers": CLIENT, "body": "x=1"},
    "steps": [
        {"name": "one", "request": {}, "expect": {"status": 200, "audit": {"attempt": 1}}},
        {"name": "two", "request": {"worker": 1}, "expect": {"status": 200, "audit": {"attempt": 2, "policy": "retry_safe"}}},
        {"name": "three", "request": {}, "expect": {"status": 428, "problem": "confirmation-required",
                                                    "audit": {"attempt": 3, "policy": "retry_with_review", "reason": "max_attempts_exceeded"}}},
    ]})

# Stale tokens.
TOKEN_ROUTE = {"name": "oauth-token", "match": {"route_name": "token", "methods": ["POST"], "path": "/oauth/token"},
               "class": "token_issuing", "owner": "team-iam", "escalation": "pagerduty:iam-primary",
               "token_max_age_seconds": 300}
JWTS = {
    "expired": {"sub": "ci-bot", "iat": {"now": -120}, "exp": {"now": -90}},
    "not_yet_valid": {"sub": "ci-bot", "iat": {"now": 0}, "nbf": {"now": 600}, "exp": {"now": 900}},
    "too_old": {"sub": "ci-bot", "iat": {"now": -400}, "exp": {"now": 600}},
    "no_expiry": {"sub": "ci-bot", "iat": {"now": 0}},
}
steps = [{"note": "stale_token_action strip: the stale bearer never reaches the upstream; the request goes on, marked. A stripped token names no one: the principal is anonymous, not its sub."}]
for reason, claims in JWTS.items():
    steps.append({"name": reason, "request": {"headers": {"authorization": {"bearer_jwt": claims}}, "body": f"grant_type=client_credentials&case={reason}"},
                  "expect": {"status": 200, "decision": "allow",
                             "upstream": {"headers": {"authorization": None, "retry-guard-token": f"stripped; reason={reason}"}},
                             "audit": {"token_action": "strip", "token_reason": reason, "principal": "anonymous"}}})
steps.append({"name": "fresh", "request": {"headers": {"authorization": {"bearer_jwt": {"sub": "ci-bot", "iat": {"now": -10}, "exp": {"now": 290}}}}, "body": "grant_type=client_credentials&case=fresh"},
              "expect": {"status": 200, "upstream": {"headers": {"authorization": {"present": True}, "retry-guard-token": None}}}})
steps.append({"metrics": {"retry_guard.token.stripped": 4, "retry_guard.token.rejected": 0}})
write("stale-token-strip", {
    "name": "stale-token-strip",
    "description": "Each JWT staleness reason (expired, not_yet_valid, too_old, no_expiry) is stripped; a fresh token passes.",
    "envoy": RUNNABLE,
    "config": base_config([TOKEN_ROUTE], principal=["jwt:sub", "token"]),
    "request_defaults": {"path": "/oauth/token"},
    "steps": steps})

steps = [{"note": "stale_token_action reject: 401 with WWW-Authenticate naming the reason; the upstream sees nothing."}]
for reason, claims in JWTS.items():
    steps.append({"name": reason, "request": {"headers": {"authorization": {"bearer_jwt": claims}}, "body": f"case={reason}"},
                  "expect": {"status": 401, "decision": "stale_token", "problem": "stale-token", "upstream": False,
                             "headers": {"www-authenticate": f"Bearer error=\"invalid_token\", error_description=\"{reason}\"",
                                         "content-type": "application/problem+json", "cache-control": "no-store"}}})
steps.append({"metrics": {"retry_guard.token.rejected": 4, "retry_guard.decision.stale_token": 4}})
write("stale-token-reject", {
    "name": "stale-token-reject",
    "description": "Each staleness reason answered 401 (the 4xx answer for stale tokens).",
    "envoy": RUNNABLE,
    "config": base_config([TOKEN_ROUTE], principal=["jwt:sub", "token"], stale_token_action="reject"),
    "request_defaults": {"path": "/oauth/token"},
    "steps": steps})

write("stale-token-opaque", {
    "name": "stale-token-opaque",
    "description": "An opaque bearer token is too_old once the ledger first saw it more than token_max_age_seconds ago (2 s here, so that a real Envoy can run it too).",
    "envoy": RUNNABLE,
    "config": base_config([dict(TOKEN_ROUTE, token_max_age_seconds=2)], principal=["token"]),
    "request_defaults": {"path": "/oauth/token", "headers": {"authorization": "Bearer opaque-7f3a"}},
    "steps": [
        {"name": "seen", "request": {"body": "n=1"}, "expect": {"status": 200, "upstream": {"headers": {"authorization": "Bearer opaque-7f3a"}}}},
        {"advance": "3s"},
        {"name": "stale", "request": {"body": "n=2"}, "expect": {"status": 200, "upstream": {"headers": {"authorization": None, "retry-guard-token": "stripped; reason=too_old"}}}},
    ]})

# 4xx answers.
KEY_ROUTE = {"name": "secrets", "match": {"methods": ["POST"], "path_prefix": "/v1/secrets"}, "class": "secret_minting",
             "owner": "team-vault", "escalation": "pagerduty:vault", "require_idempotency_key": True}
def prob(status, kind, decision):
    return {"status": status, "problem": kind, "decision": decision, "upstream": False,
            "headers": {"content-type": "application/problem+json", "cache-control": "no-store"},
            "body": {"status": status, "route": "secrets", "class": "secret_minting", "owner": "team-vault", "escalation": "pagerduty:vault", "request_id": "rid-1"}}
write("answers-4xx", {
    "name": "answers-4xx",
    "description": "400 missing and invalid key, 403, 409, 413, 422 and 428 as problem documents (401: stale-token-reject).",
    "envoy": RUNNABLE,
    "config": base_config([KEY_ROUTE], max_body_bytes=64, max_key_length=16),
    "request_defaults": {"path": "/v1/secrets", "headers": {"x-client-id": "ci-bot", "x-request-id": "rid-1"}, "body": "name=db"},
    "steps": [
        {"name": "missing", "request": {}, "expect": prob(400, "idempotency-key-missing", "bad_request")},
        {"name": "too-long", "request": {"headers": {"idempotency-key": {"repeat": "k", "count": 17}}}, "expect": prob(400, "idempotency-key-invalid", "bad_request")},
        {"name": "not-visible", "request": {"headers": {"idempotency-key": "a b"}}, "expect": prob(400, "idempotency-key-invalid", "bad_request")},
        {"name": "sf-string-ok", "request": {"headers": {"idempotency-key": "\"k-0\""}}, "expect": {"status": 200, "audit": {"key_present": True}}},
        {"name": "too-large", "request": {"headers": {"idempotency-key": "k-1"}, "body": {"repeat": "x", "count": 65}}, "expect": prob(413, "body-too-large", "too_large")},
        {"name": "k2-first", "request": {"headers": {"idempotency-key": "k-2"}, "body": "name=a"}, "expect": {"status": 200}},
        {"name": "k2-other-body", "request": {"headers": {"idempotency-key": "k-2"}, "body": "name=b"}, "expect": prob(422, "idempotency-key-mismatch", "mismatch")},
        {"name": "k2-replay", "request": {"headers": {"idempotency-key": "k-2"}, "body": "name=a", "worker": 1}, "expect": prob(428, "confirmation-required", "confirm")},
        {"name": "k3-rejected", "request": {"headers": {"idempotency-key": "k-3"}, "upstream": {"status": 400}}, "expect": {"status": 400, "outcome": {"outcome": "rejected"}}},
        {"name": "k3-replay", "request": {"headers": {"idempotency-key": "k-3"}}, "expect": prob(403, "do-not-retry", "deny")},
        {"name": "k4", "concurrent": {
            "requests": [
                {"name": "k4-first", "request": {"headers": {"idempotency-key": "k-4"}, "worker": 0}, "expect": {"status": 200}},
                {"name": "k4-replay", "request": {"headers": {"idempotency-key": "k-4"}, "worker": 1}, "expect": prob(409, "request-in-flight", "conflict")}],
            "order": ["k4-first:request", "k4-replay:request", "k4-replay:response", "k4-first:response"]}},
        {"metrics": {"retry_guard.decision.bad_request": 3, "retry_guard.decision.too_large": 1, "retry_guard.decision.mismatch": 1,
                     "retry_guard.decision.confirm": 1, "retry_guard.decision.deny": 1, "retry_guard.decision.conflict": 1}},
    ]})

# Confirmations.
CONF_CONFIG = base_config([TOKEN_ROUTE], confirmation={"max_ttl_seconds": 600, "keys": {"approvals-test": PUB, "other": OTHER_PUB}})
def refused(err):
    return {"status": 428, "problem": "confirmation-required", "decision": "confirm", "upstream": False,
            "body": {"confirmation_error": err}, "audit": {"confirmation_error": err}}
write("confirmation", {
    "name": "confirmation",
    "description": "A signed confirmation lets a reviewed retry through once; every refusal reason; reuse is already_used.",
    "envoy": RUNNABLE,
    "config": CONF_CONFIG,
    "request_defaults": {"path": "/oauth/token", "headers": CLIENT, "body": "grant_type=client_credentials"},
    "steps": [
        {"name": "first", "request": {}, "expect": {"status": 200}},
        {"name": "replay", "request": {"worker": 1}, "expect": {"status": 428, "body": {"confirmation_error": None, "confirmation_header": "retry-guard-confirmation"}}},
        {"name": "bad-signature", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "tamper": "signature"}}}}, "expect": refused("bad_signature")},
        {"name": "other-key", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "kid": "other"}}}}, "expect": refused("bad_signature")},
        {"name": "unknown-key", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "kid": "nope"}}}}, "expect": refused("unknown_key")},
        {"name": "expired", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "iat": -700, "exp": -400}}}}, "expect": refused("expired")},
        {"name": "ttl-too-long", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "iat": 0, "exp": 1000}}}}, "expect": refused("expired")},
        {"name": "wrong-fingerprint", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "fp": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}}}, "expect": refused("wrong_fingerprint")},
        {"name": "wrong-challenge", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "chl": "AAAAAAAAAAAAAAAAAAAAAA"}}}}, "expect": refused("wrong_challenge")},
        {"name": "malformed", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"raw": "v1.bm90LWpzb24.c2ln"}}}}, "expect": refused("malformed")},
        {"name": "same-challenge", "request": {}, "expect": {"status": 428}, "note": "The challenge stays the same through refusals, so an approval on its way stays valid."},
        {"name": "confirm", "request": {"worker": 1, "headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay", "sub": "alice@example.com"}}}},
         "expect": {"status": 200, "decision": "confirmed", "upstream": {"headers": {"retry-guard-confirmation": None}},
                    "audit": {"decision": "confirmed", "approver": "alice@example.com", "reason": "confirmation_accepted"}}},
        {"name": "reuse", "request": {"headers": {"retry-guard-confirmation": {"same_as": "confirm"}}}, "expect": refused("already_used")},
        {"metrics": {"retry_guard.confirmation.invalid": 9, "retry_guard.decision.confirmed": 1}},
    ]})

write("cluster-ledger", {
    "name": "cluster-ledger",
    "description": "The ledger on a real etcd (the cluster ledger): a first attempt is one insert-if-absent transaction, its outcome one more; the replay needs review, a confirmation works once, its reuse is already_used; both hosts reach the same etcd protocol.",
    "envoy": RUNNABLE,
    "etcd": {"cluster": "etcd"},
    "config": base_config([TOKEN_ROUTE], ledger={"backend": "etcd", "cluster": "etcd", "authority": "etcd", "key_prefix": "scenario/", "timeout_ms": 1000}),
    "request_defaults": {"path": "/oauth/token", "headers": CLIENT, "body": "grant_type=client_credentials"},
    "steps": [
        {"name": "first", "request": {}, "expect": {"status": 200, "upstream": True, "audit": {"decision": "allow", "attempt": 1},
                                                    "outcome": {"outcome": "succeeded", "upstream_attempts": 1}}},
        {"name": "replay", "request": {"worker": 1}, "expect": {"status": 428, "upstream": False, "body": {"previous_outcome": "succeeded", "attempt": 2}}},
        {"name": "confirm", "request": {"headers": {"retry-guard-confirmation": {"confirmation": {"from": "replay"}}}},
         "expect": {"status": 200, "decision": "confirmed", "outcome": {"outcome": "succeeded"}}},
        {"name": "reuse", "request": {"worker": 1, "headers": {"retry-guard-confirmation": {"same_as": "confirm"}}},
         "expect": {"status": 428, "body": {"confirmation_error": "already_used"}}},
        {"metrics": {"retry_guard.decision.allow": 1, "retry_guard.decision.confirmed": 1, "retry_guard.decision.confirm": 2, "retry_guard.ledger.unavailable": 0}},
    ]})

write("shadow-mode", {
    "name": "shadow-mode",
    "description": "In shadow mode every decision is computed, logged and counted, but nothing is blocked or stripped.",
    "envoy": RUNNABLE,
    "config": base_config([TOKEN_ROUTE], mode="shadow", principal=["header:x-client-id", "token"]),
    "request_defaults": {"path": "/oauth/token", "headers": CLIENT, "body": "grant_type=client_credentials"},
    "steps": [
        {"name": "first", "request": {}, "expect": {"status": 200}},
        {"name": "replay", "request": {"worker": 1}, "expect": {"status": 200, "upstream": True, "decision": "confirm",
                                                                "audit": {"decision": "confirm", "would_block": True, "mode": "shadow"}}},
        {"name": "stale", "request": {"headers": {"authorization": {"bearer_jwt": JWTS["expired"]}}, "body": "other"},
         "expect": {"status": 200, "upstream": {"headers": {"authorization": {"present": True}, "retry-guard-token": None}}, "audit": {"token_action": "would_strip"}}},
        {"metrics": {"retry_guard.shadow.would_block": 1, "retry_guard.token.stripped": 0, "retry_guard.decision.confirm": 1}},
    ]})

write("eviction-flood", {
    "name": "eviction-flood",
    "description": "A flood of unique keys with max_entries 4 evicts the oldest entries (counted); memory stays bounded, and an evicted fingerprint counts as a first attempt again.",
    "envoy": RUNNABLE,
    "config": base_config([{k: v for k, v in TOKEN_ROUTE.items() if k != "token_max_age_seconds"}], max_entries=4),
    "request_defaults": {"path": "/oauth/token", "headers": CLIENT, "body": "grant_type=client_credentials"},
    "steps": [
        {"name": "keep", "request": {"headers": {"idempotency-key": "keep-me"}}, "expect": {"status": 200}},
        {"name": "keep-replay", "request": {"headers": {"idempotency-key": "keep-me"}}, "expect": {"status": 428}},
        {"advance": "1s"},
        {"flood": {"count": 40, "request": {"headers": {"idempotency-key": "flood-{i}"}, "worker": 1}, "expect": {"status": 200}}},
        {"metrics": {"retry_guard.ledger.evicted": {"min": 36}}},
        {"name": "keep-again", "request": {"headers": {"idempotency-key": "keep-me"}}, "expect": {"status": 200, "audit": {"attempt": 1, "reason": "first_attempt"}}},
    ]})

RACE_REQ = {"path": "/oauth/token", "headers": CLIENT, "body": "grant_type=client_credentials&race=1"}
write("concurrency-race", {
    "name": "concurrency-race",
    "description": "Two identical requests on two workers read the ledger before either writes: exactly one wins the CAS and is allowed, the other sees in_flight (409).",
    "envoy": not_runnable("the interleaving inside shared-data calls cannot be forced on a real Envoy (a later runner can only fire both at once and count one 200)"),
    "config": "../configs/smoke.json",
    "steps": [
        {"name": "race", "concurrent": {
            "requests": [
                {"name": "a", "request": dict(RACE_REQ, worker=0), "expect": {"status": 409, "decision": "conflict"}},
                {"name": "b", "request": dict(RACE_REQ, worker=1), "expect": {"status": 200, "decision": "allow", "upstream": True}}],
            "order": ["a:request until proxy_set_shared_data", "b:request", "a:request", "a:response", "b:response"]}},
        {"metrics": {"retry_guard.decision.allow": 1, "retry_guard.decision.conflict": 1}},
        {"name": "sequential", "concurrent": {
            "note": "callback-level interleaving: both request sides before either response",
            "requests": [
                {"name": "c", "request": dict(RACE_REQ, body="race=2", worker=0), "expect": {"status": 200}},
                {"name": "d", "request": dict(RACE_REQ, body="race=2", worker=1), "expect": {"status": 409}}]}},
    ]})

write("upstream-failures", {
    "name": "upstream-failures",
    "description": "Router local replies reach the filter with Envoy's flags: UF|URX and UH are not_sent (retry-safe), UC and UT are failed_unknown (review). The filter sets x-envoy-max-retries: 0, so the router sends each tracked request once (upstream_attempts 1; the route still reports URX) and consumes the header.",
    "envoy": RUNNABLE,
    "config": "../configs/smoke.json",
    "request_defaults": {"path": "/oauth/token", "headers": CLIENT},
    "steps": [
        {"name": "refused", "request": {"body": "c=1", "upstream": {"fail": "connection_refused"}},
         "expect": {"status": 503, "flags": 32800, "upstream": False, "outcome": {"outcome": "not_sent", "response_flags": 32800, "upstream_attempts": 1}}},
        {"name": "refused-replay", "request": {"same_as": "refused", "upstream": {"status": 200}}, "expect": {"status": 200, "audit": {"previous_outcome": "not_sent"}}},
        {"name": "no-healthy", "request": {"body": "c=2", "upstream": {"fail": "no_healthy_upstream"}},
         "expect": {"status": 503, "flags": 2, "upstream": False, "outcome": {"outcome": "not_sent"}}},
        {"name": "reset", "request": {"body": "c=3", "upstream": {"fail": "reset"}},
         "expect": {"status": 503, "flags": 64, "upstream": {"headers": {"x-envoy-max-retries": None}}, "outcome": {"outcome": "failed_unknown", "upstream_attempts": 1}}},
        {"name": "reset-replay", "request": {"same_as": "reset", "upstream": {"status": 200}}, "expect": {"status": 428, "body": {"previous_outcome": "failed_unknown", "previous_status": 503}}},
        {"name": "timeout", "request": {"body": "c=4", "upstream": {"fail": "timeout"}},
         "expect": {"status": 504, "flags": 4, "upstream": True, "outcome": {"outcome": "failed_unknown"}}},
        {"name": "slow", "request": {"body": "c=5", "upstream": {"status": 200, "delay": "31s"}},
         "expect": {"status": 504, "flags": 4, "outcome": {"outcome": "failed_unknown"}}},
    ]})

write("headers-stop-iteration-off", {
    "name": "headers-stop-iteration-off",
    "description": "Without allow_on_headers_stop_iteration Envoy never delivers the body of a held request: the request hangs and the filter logs a critical line within 15 s.",
    "envoy": not_runnable("needs an Envoy config without allow_on_headers_stop_iteration (the Envoy target, like every bundled config, sets it), and advances the clock by 16 s to reach the filter's 10 s critical line"),
    "config": "../configs/smoke.json",
    "allow_on_headers_stop_iteration": False,
    "steps": [
        {"name": "held", "request": {"path": "/oauth/token", "headers": CLIENT, "body": "grant_type=client_credentials"},
         "expect": {"stalled": True, "upstream": False}},
        {"advance": "16s"},
        {"log": {"contains": "held for their body over 10 s without a body callback"}},
        {"name": "no-body", "request": {"method": "GET", "path": "/oauth/token", "headers": CLIENT}, "expect": {"status": 200}},
    ]})

write("config-invalid", {
    "name": "config-invalid",
    "description": "An invalid plugin configuration makes the plugin refuse to start, naming the field.",
    "envoy": RUNNABLE,
    "config": base_config([{"name": "r", "match": {"path": "/x"}, "class": "token_issueing", "owner": "o", "escalation": "e"}]),
    "expect_start_error": "routes[0].class",
    "steps": []})

STORY_REQ = {"path": "/oauth/token", "headers": {"x-client-id": "ci-bot", "content-type": "application/x-www-form-urlencoded"},
             "body": "grant_type=client_credentials&scope=tokens.read"}
write("demo-story", {
    "name": "demo-story",
    "description": "The story `just demo` tells.",
    "envoy": not_runnable("the race step interleaves inside shared-data calls"),
    "config": "../configs/smoke.json",
    "request_defaults": STORY_REQ,
    "steps": [
        {"note": "1. A CI job asks for a token: the first call passes and reaches the upstream.", "name": "first", "request": {"headers": {"x-request-id": "demo-1"}}, "expect": {"status": 200, "upstream": True, "decision": "allow"}},
        {"note": "2. Its automated replay gets 428 Precondition Required, naming the owner and escalation path.", "name": "replay", "request": {"worker": 1, "headers": {"x-request-id": "demo-2"}},
         "expect": {"status": 428, "problem": "confirmation-required", "upstream": False, "body": {"owner": "team-iam", "escalation": "pagerduty:iam-primary"}}},
        {"note": "3. alice@example.com signs the challenge (Ed25519, key approvals-test): the retry goes through once; the confirmation header is not forwarded.", "name": "confirmed",
         "request": {"headers": {"x-request-id": "demo-3", "retry-guard-confirmation": {"confirmation": {"from": "replay", "sub": "alice@example.com"}}}},
         "expect": {"status": 200, "decision": "confirmed", "upstream": {"headers": {"retry-guard-confirmation": None}}, "audit": {"approver": "alice@example.com"}}},
        {"note": "4. The same confirmation again is refused: single use.", "name": "reused",
         "request": {"headers": {"x-request-id": "demo-4", "retry-guard-confirmation": {"same_as": "confirmed"}}}, "expect": {"status": 428, "body": {"confirmation_error": "already_used"}}},
        {"note": "5. A call whose upstream answered 503 (state unknown): its replay needs review.", "name": "unknown", "request": {"body": "grant_type=client_credentials&scope=keys.write", "upstream": {"status": 503}},
         "expect": {"status": 503, "outcome": {"outcome": "failed_unknown"}}},
        {"name": "unknown-replay", "request": {"same_as": "unknown", "upstream": {"status": 200}}, "expect": {"status": 428, "body": {"previous_outcome": "failed_unknown"}}},
        {"note": "6. A call Envoy could not even connect for (UF|URX = 32800): its replay is retry-safe.", "name": "refused", "request": {"body": "grant_type=client_credentials&scope=admin", "upstream": {"fail": "connection_refused"}},
         "expect": {"status": 503, "flags": 32800, "upstream": False, "outcome": {"outcome": "not_sent"}}},
        {"name": "refused-replay", "request": {"same_as": "refused", "upstream": {"status": 200}}, "expect": {"status": 200, "upstream": True}},
        {"note": "7. An expired bearer JWT is stripped before the upstream (and names no one: the principal comes from what goes upstream).", "name": "expired",
         "request": {"body": "grant_type=client_credentials&step=7", "headers": {"x-client-id": None, "authorization": {"bearer_jwt": {"sub": "ci-bot", "iat": {"now": -120}, "exp": {"now": -90}}}}},
         "expect": {"status": 200, "upstream": {"headers": {"authorization": None, "retry-guard-token": "stripped; reason=expired"}}}},
        {"note": "8. Two workers receive the same new call at the same moment; both read the ledger before either writes. Exactly one wins.", "name": "race", "concurrent": {
            "requests": [
                {"name": "w0", "request": {"body": "grant_type=client_credentials&step=8", "worker": 0}, "expect": {"status": 409}},
                {"name": "w1", "request": {"body": "grant_type=client_credentials&step=8", "worker": 1}, "expect": {"status": 200}}],
            "order": ["w0:request until proxy_set_shared_data", "w1:request", "w0:request", "w0:response", "w1:response"]}},
        {"note": "Counters (Envoy shows them as wasmcustom.<name>):", "metrics": {"retry_guard.decision.allow": 6, "retry_guard.decision.confirm": 3, "retry_guard.decision.confirmed": 1,
                                                                                  "retry_guard.decision.conflict": 1, "retry_guard.token.stripped": 1}},
    ]})
# Canonical request identity: spellings of one request are one operation (the issue's attacks
# 2-4 on the filter alone). Routes match by path, so the Envoy target (whose bootstrap does
# not normalize paths) shows the filter's own canonicalization too.
FORM = "application/x-www-form-urlencoded"
CANON_ROUTES = [
    {"name": "oauth-token", "match": {"methods": ["POST"], "path": "/oauth/token"}, "class": "token_issuing",
     "owner": "team-iam", "escalation": "pagerduty:iam-primary"},
    {"name": "role-grant", "match": {"methods": ["POST"], "path_template": "/v1/roles/*/members"}, "class": "privilege_changing",
     "owner": "team-access", "escalation": "pagerduty:access-oncall"},
]
def replay(note=None, **req):
    step = {"request": dict({"same_as": "first"}, **req),
            "expect": {"status": 428, "problem": "confirmation-required", "decision": "confirm", "upstream": False}}
    if note:
        step["note"] = note
    return step
canon_steps = [
    {"note": "The first token call is executed; each spelling below is the same operation: 428, never forwarded.",
     "name": "first", "request": {"path": "/oauth/token", "headers": {"x-client-id": "ci-bot", "content-type": FORM},
                                  "body": "grant_type=client_credentials&scope=a"},
     "expect": {"status": 200, "upstream": True}},
    replay("A query string is no part of the operation (natural_key.query: ignore).", path="/oauth/token?"),
    replay(path="/oauth/token?x=1", worker=1),
    replay("Path spellings: merged slashes, escaped unreserved characters, dot segments.", path="//oauth/token"),
    replay(path="/oauth/%74oken", worker=1),
    replay(path="/oauth/./token"),
    replay(path="/oauth/x/../token", worker=1),
    replay("The same form: reordered, an extra &, an escaped name, a trailing newline, another charset spelling.",
           body="scope=a&grant_type=client_credentials"),
    replay(body="grant_type=client_credentials&&scope=a&", worker=1),
    replay(body="grant%5Ftype=client_credentials&scope=a"),
    replay(body="grant_type=client_credentials&scope=a\n", worker=1),
    replay(headers={"content-type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"}),
    {"note": "An encoded slash is refused: servers decode %2F differently.", "name": "encoded-slash",
     "request": {"same_as": "first", "path": "/oauth%2Ftoken"},
     "expect": {"status": 400, "problem": "path-invalid", "decision": "bad_request", "upstream": False, "audit": {"reason": "encoded_slash"}}},
    {"note": "The same JSON in other whitespace, member order, number spelling, escapes, or declared as text/plain.",
     "name": "grant", "request": {"path": "/v1/roles/admin/members", "headers": {"x-client-id": "ci-bot", "content-type": "application/json"},
                                  "body": '{"member":"svc-ci","expires_in":3600}'},
     "expect": {"status": 200, "upstream": True}},
]
for i, (path, ct, body) in enumerate([
    ("/v1/roles/admin/members", "application/json", '{ "expires_in" : 3.6e3,\n  "member" : "svc-ci" }'),
    ("/v1/roles/%61dmin/members", "application/json", '{"member":"svc-\\u0063i","expires_in":3600}'),
    ("/v1/roles/admin/members", "text/plain", '{"member":"svc-ci","expires_in":3600.0}'),
]):
    canon_steps.append({"request": {"same_as": "grant", "path": path, "headers": {"content-type": ct}, "body": body, "worker": i % 2},
                        "expect": {"status": 428, "problem": "confirmation-required", "upstream": False}})
canon_steps += [
    {"note": "A different operation stays apart.", "request": {"same_as": "grant", "body": '{"member":"svc-ci","expires_in":60}'},
     "expect": {"status": 200, "upstream": True}},
    {"metrics": {"retry_guard.decision.confirm": 14, "retry_guard.decision.bad_request": 1, "retry_guard.decision.allow": 3}},
]
write("canonical-identity", {
    "name": "canonical-identity",
    "description": "Spellings of one request are one operation: query strings, path spellings, form and JSON variants get 428; an encoded slash is 400.",
    "envoy": RUNNABLE,
    "config": base_config(CANON_ROUTES),
    "steps": canon_steps})

# Principals from what the upstream trusts (the issue's attacks 1, 6 and 7 on the filter alone).
def unsigned_jwt(claims, header='{"alg":"none","typ":"JWT"}', sig=""):
    import base64
    b = lambda t: base64.urlsafe_b64encode(t.encode()).decode().rstrip("=")
    return b(header) + "." + b(json.dumps(claims, separators=(",", ":"))) + "." + sig
EXPIRED_JWT = unsigned_jwt({"sub": "ci-bot", "iat": 999999000, "exp": 1000000000}, '{"alg":"HS256","typ":"JWT"}', "c2ln")
PRINCIPAL_ROUTES = [
    {"name": "oauth-token", "match": {"methods": ["POST"], "path": "/oauth/token"}, "class": "token_issuing",
     "owner": "team-iam", "escalation": "pagerduty:iam-primary"},
    {"name": "role-grant", "match": {"methods": ["POST"], "path_template": "/v1/roles/*/members"}, "class": "privilege_changing",
     "owner": "team-access", "escalation": "pagerduty:access-oncall", "anonymous": "reject"},
]
TOKEN_CALL = {"path": "/oauth/token", "headers": {"content-type": FORM}, "body": "grant_type=client_credentials&client_id=ci-bot"}
write("principals", {
    "name": "principals",
    "description": "The principal comes from what goes upstream: a forged or malformed bearer token the filter strips names no one; session cookies tell callers apart; a cookie sent twice is ambiguous; anonymous callers are refused where the route says so.",
    "envoy": RUNNABLE,
    "config": base_config(PRINCIPAL_ROUTES, principal=["peer_identity", "token", "cookie:session"]),
    "steps": [
        {"note": "A client-credentials call (client authenticated in the body): principal anonymous.", "name": "first",
         "request": TOKEN_CALL, "expect": {"status": 200, "upstream": True, "audit": {"principal": "anonymous"}}},
        {"note": "Its retry with a forged bearer token (alg none, a made-up sub, no exp): stale (no_expiry), so it names no one. Same operation: 428.",
         "name": "forged", "request": {"same_as": "first", "headers": {"authorization": "Bearer " + unsigned_jwt({"sub": "attacker-7f3a"})}},
         "expect": {"status": 428, "upstream": False, "audit": {"principal": "anonymous", "token_reason": "no_expiry"}}},
        {"note": "Malformed spellings of an expired token (a tab after Bearer, a trailing dot): parsed as servers do, stale, and no new caller.",
         "name": "tab", "request": {"same_as": "first", "headers": {"authorization": "Bearer\t" + EXPIRED_JWT}},
         "expect": {"status": 428, "upstream": False, "audit": {"principal": "anonymous", "token_reason": "expired"}}},
        {"name": "trailing-dot", "request": {"same_as": "first", "worker": 1, "headers": {"authorization": "Bearer " + EXPIRED_JWT + "."}},
         "expect": {"status": 428, "upstream": False, "audit": {"principal": "anonymous", "token_reason": "malformed"}}},
        {"note": "As a new operation such a credential never reaches the upstream.", "name": "malformed-new",
         "request": {"same_as": "first", "body": "grant_type=client_credentials&client_id=other", "headers": {"authorization": "Bearer " + EXPIRED_JWT + "."}},
         "expect": {"status": 200, "upstream": {"headers": {"authorization": None, "retry-guard-token": "stripped; reason=malformed"}}}},
        {"note": "Two callers with session cookies make the same call: each is executed once, neither is the other's replay.", "name": "alice",
         "request": dict(TOKEN_CALL, body="scope=shared", headers={"content-type": FORM, "cookie": "theme=dark; session=alice-5e55"}),
         "expect": {"status": 200, "upstream": True}},
        {"name": "bob", "request": {"same_as": "alice", "worker": 1, "headers": {"cookie": "session=bob-77aa"}}, "expect": {"status": 200, "upstream": True}},
        {"name": "alice-retry", "request": {"same_as": "alice"}, "expect": {"status": 428, "upstream": False}},
        {"note": "The session cookie twice, with another value first: the upstream may take either, so it is refused.", "name": "cookie-twice",
         "request": {"same_as": "alice", "headers": {"cookie": "session=fresh-01; session=alice-5e55"}},
         "expect": {"status": 400, "problem": "principal-ambiguous", "decision": "bad_request", "upstream": False}},
        {"note": "role-grant says anonymous: reject. No credential: 401; a session cookie: allowed.", "name": "anonymous-grant",
         "request": {"path": "/v1/roles/admin/members", "headers": {"content-type": "application/json"}, "body": '{"member":"svc-ci"}'},
         "expect": {"status": 401, "problem": "principal-required", "upstream": False, "headers": {"www-authenticate": "Bearer"}}},
        {"name": "stale-only-grant", "request": {"same_as": "anonymous-grant", "headers": {"authorization": "Bearer " + EXPIRED_JWT}},
         "expect": {"status": 401, "problem": "principal-required", "upstream": False}},
        {"name": "cookie-grant", "request": {"same_as": "anonymous-grant", "headers": {"cookie": "session=alice-5e55"}},
         "expect": {"status": 200, "upstream": True}},
        {"metrics": {"retry_guard.decision.bad_request": 3, "retry_guard.token.stripped": 1}},
    ]})

print("wrote", len(os.listdir(OUT)), "files to", OUT)
