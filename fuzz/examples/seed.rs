//! Writes the seed corpora of every fuzz target into `fuzz/seeds/<target>/` (and the JSON
//! dictionary `fuzz/seeds/json.dict`) from `testdata`: the configurations (files and the
//! scenarios' inline ones), the scenarios' requests (headers in the wire format, paths,
//! bodies, idempotency keys, `Authorization` values, their `bearer_jwt` tokens), signed
//! confirmations for the test approver key, ledger entries and etcd answers. Each seed is laid
//! out as its target reads its input (parameters first). Deterministic: the same testdata
//! gives the same files, named by a hash of their bytes.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed` (`just fuzz` runs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use retry_guard::confirm::sign::Claims;
use retry_guard::etcd::{Expect, LedgerOp};
use retry_guard::ledger::{Entry, Set};
use retry_guard::policy::Outcome;
use retry_guard_fuzz::approver_key;
use serde_json::Value;
use sha2_free_hash::hash;

/// A short, stable file name for seed bytes (FNV-1a, 64 bits).
mod sha2_free_hash {
    pub fn hash(bytes: &[u8]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// The virtual clock's default start in scenarios (2026-01-01T00:00:00Z).
const START: u64 = 1_767_225_600;

#[derive(Default)]
struct Seeds {
    targets: std::collections::BTreeMap<&'static str, BTreeSet<Vec<u8>>>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, bytes: Vec<u8>) {
        self.targets.entry(target).or_default().insert(bytes);
    }

    fn write(&self, root: &Path) -> std::io::Result<()> {
        for (target, seeds) in &self.targets {
            let dir = root.join(target);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            for s in seeds {
                std::fs::write(dir.join(hash(s)), s)?;
            }
            println!("{target}: {} seeds", seeds.len());
        }
        Ok(())
    }
}

/// What the scenarios' requests carry, collected from the whole tree.
#[derive(Default)]
struct Requests {
    header_sets: Vec<Vec<(String, String)>>,
    paths: BTreeSet<String>,
    bodies: BTreeSet<Vec<u8>>,
    keys: BTreeSet<String>,
    authorizations: BTreeSet<String>,
    jwt_payloads: BTreeSet<String>,
}

/// `{"now": n}` is START + n; other values as they are (for `bearer_jwt` claims).
fn resolve_claims(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("now") => {
            let n = m["now"].as_i64().unwrap_or(0);
            Value::from(START as i64 + n)
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), resolve_claims(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A header value as a scenario gives it: a string, or a computed one the seeder can make.
fn header_value(v: &Value, r: &mut Requests) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => {
            if let Some(c) = m.get("bearer_jwt") {
                let claims = resolve_claims(c);
                r.jwt_payloads.insert(claims.to_string());
                Some(format!("Bearer {}", retry_guard::jwt::unsigned(&claims)))
            } else if let Some(c) = m.get("jwt") {
                let claims = resolve_claims(c);
                r.jwt_payloads.insert(claims.to_string());
                Some(retry_guard::jwt::unsigned(&claims))
            } else if let (Some(Value::String(s)), Some(n)) = (m.get("repeat"), m.get("count")) {
                Some(s.repeat(n.as_u64().unwrap_or(1).min(300) as usize))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn collect(v: &Value, r: &mut Requests) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(h)) = m.get("headers") {
                let mut set = Vec::new();
                for (name, value) in h {
                    if let Some(value) = header_value(value, r) {
                        match name.as_str() {
                            "idempotency-key" => {
                                r.keys.insert(value.clone());
                            }
                            "authorization" => {
                                r.authorizations.insert(value.clone());
                            }
                            _ => {}
                        }
                        set.push((name.clone(), value));
                    }
                }
                let path = m
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/oauth/token");
                let method = m.get("method").and_then(Value::as_str).unwrap_or("POST");
                set.splice(
                    0..0,
                    [
                        (":method".to_string(), method.to_string()),
                        (":path".to_string(), path.to_string()),
                        (":authority".to_string(), "retry-guard.test".to_string()),
                    ],
                );
                r.header_sets.push(set);
            }
            if let Some(Value::String(p)) = m.get("path") {
                r.paths.insert(p.clone());
            }
            match m.get("body") {
                Some(Value::String(b)) => {
                    r.bodies.insert(b.clone().into_bytes());
                }
                Some(b @ (Value::Object(_) | Value::Array(_))) if !b.get("repeat").is_some() => {
                    r.bodies.insert(b.to_string().into_bytes());
                }
                _ => {}
            }
            for v in m.values() {
                collect(v, r);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect(v, r)),
        _ => {}
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn entry(id: u8, outcome: Outcome, sensitive: bool) -> Entry {
    Entry {
        id: [id; 32],
        first_seen_ms: START * 1000,
        last_attempt_ms: (START + 60) * 1000,
        window_seconds: 900,
        attempts: 2,
        outcome,
        status: 503,
        body_digest: [0xab; 32],
        challenge: Some([9; 16]),
        consumed: (id % 2 == 0).then_some([8; 16]),
        sensitive,
    }
}

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let testdata = fuzz.join("../testdata");
    let mut seeds = Seeds::default();
    let mut requests = Requests::default();

    // Configurations: the files, and each scenario's inline one with its patch applied.
    let mut configs: Vec<Value> = json_files(&testdata.join("configs"))
        .iter()
        .map(|p| read_json(p))
        .collect();
    let scenarios: Vec<Value> = json_files(&testdata.join("scenarios"))
        .iter()
        .map(|p| read_json(p))
        .collect();
    for s in &scenarios {
        if let Some(Value::Object(c)) = s.get("config") {
            let mut c = c.clone();
            if let Some(Value::Object(patch)) = s.get("config_patch") {
                c.extend(patch.clone());
            }
            configs.push(Value::Object(c));
        }
        collect(s, &mut requests);
    }
    for c in &configs {
        seeds.add("config", serde_json::to_vec_pretty(c).unwrap());
        seeds.add("json", serde_json::to_vec(c).unwrap());
    }

    // The header-map wire format of each request.
    for set in &requests.header_sets {
        let pairs: Vec<(&str, &[u8])> = set
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        seeds.add("headers", retry_guard::headers::serialize(&pairs));
    }
    seeds.add("headers", Vec::new());

    // Idempotency keys: flags (present), max_key_length 255, the value.
    let mut keys = requests.keys.clone();
    keys.extend(
        [
            r#""a\"b\\c""#,
            " \tk-1\t ",
            "a,b",
            r#""""#,
            "\"unterminated",
            "k\u{e9}",
        ]
        .map(String::from),
    );
    for k in &keys {
        seeds.add(
            "idempotency_key",
            le(&[&[0], &255u16.to_le_bytes(), k.as_bytes()]),
        );
    }

    // Authorization values (mode 0) and JWT payloads (mode 1), at START with skew 30, max age
    // 300, first seen a minute ago; a sensitive route.
    let params = |flags: u8| {
        le(&[
            &[flags],
            &START.to_le_bytes(),
            &30u16.to_le_bytes(),
            &300u32.to_le_bytes(),
            &(START - 60).to_le_bytes(),
        ])
    };
    let mut auths = requests.authorizations.clone();
    auths.extend(
        [
            "Basic Y2ktYm90OnNlY3JldA==",
            "bearer  opaque",
            "Bearer",
            "DPoP a.b.c",
            "Bearer a.b.c.d.e",
        ]
        .map(String::from),
    );
    for a in &auths {
        seeds.add("jwt", le(&[&params(0b0000_1110), a.as_bytes()]));
        seeds.add(
            "b64",
            a.rsplit(' ').next().unwrap_or("").as_bytes().to_vec(),
        );
    }
    for p in &requests.jwt_payloads {
        seeds.add("jwt", le(&[&params(0b0000_1111), p.as_bytes()]));
        seeds.add("json", p.as_bytes().to_vec());
    }

    // Confirmations signed with the test approver key: raw tokens (mode 0), their payloads
    // (mode 1) and claims (mode 2), for an outstanding challenge of 9s.
    let key = approver_key();
    let chl = [9u8; 16];
    let head = |mode: u8| {
        le(&[
            &[mode, 0b0000_0100],
            &(START + 10).to_le_bytes(),
            &30u16.to_le_bytes(),
            &600u16.to_le_bytes(),
            &chl,
            &[8; 16],
        ])
    };
    for (kid, fp, sub, iat, exp) in [
        (
            "approvals-test",
            "fp-of-the-request",
            "alice@example.com",
            START,
            START + 300,
        ),
        (
            "approvals-test",
            "other-fp",
            "bob@example.com",
            START - 900,
            START - 600,
        ),
        (
            "other",
            "fp-of-the-request",
            "alice@example.com",
            START,
            START + 300,
        ),
    ] {
        let claims = Claims {
            kid: kid.into(),
            chl: retry_guard::b64::url(&chl),
            fp: fp.into(),
            sub: sub.into(),
            iat: iat as i64,
            exp: exp as i64,
        };
        let token = claims.sign(&key);
        seeds.add("confirm", le(&[&head(0), token.as_bytes()]));
        seeds.add("confirm", le(&[&head(1), claims.payload_json().as_bytes()]));
        seeds.add(
            "confirm",
            le(&[
                &head(2),
                &iat.to_le_bytes(),
                &exp.to_le_bytes(),
                &[0],
                kid.as_bytes(),
                &[0xff],
                fp.as_bytes(),
                &[0xff],
                sub.as_bytes(),
            ]),
        );
        seeds.add("json", claims.payload_json().into_bytes());
        seeds.add("b64", token.into_bytes());
    }

    // Ledger bytes: entries, sets, and the composite input (set, entry, now, window, holder).
    let entries: Vec<Entry> = Outcome::ALL
        .iter()
        .enumerate()
        .map(|(i, o)| entry(i as u8, *o, i % 3 == 0))
        .collect();
    for e in &entries {
        seeds.add("ledger", e.to_bytes());
    }
    for n in 0..=retry_guard::ledger::WAYS {
        let set = Set(entries.iter().take(n).cloned().collect());
        seeds.add("ledger", set.encode());
        let mut composite = vec![n as u8];
        for e in &set.0 {
            composite.extend(e.to_bytes());
        }
        composite.extend(entries[n].to_bytes());
        composite.extend((START + 120).to_le_bytes());
        composite.extend(900u64.to_le_bytes());
        composite.extend("spiffe://cluster.local/ns/ci/sa/deployer".as_bytes());
        seeds.add("ledger", composite);
    }

    // etcd answers (the forms etcd 3.4's JSON gateway gives; see filter/src/etcd.rs).
    let value = retry_guard::b64::standard(&entries[1].to_bytes());
    let answers = [
        r#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"12"}}}]}"#.to_string(),
        format!(r#"{{"header":{{"revision":"13"}},"responses":[{{"response_range":{{"kvs":[{{"key":"eA==","create_revision":"5","mod_revision":"9","version":"2","value":"{value}","lease":"7"}}],"count":"1"}}}}]}}"#),
        format!(r#"{{"header":{{"revision":"13"}},"kvs":[{{"key":"eA==","mod_revision":"9","value":"{value}"}}],"count":"1"}}"#),
        r#"{"header":{"revision":"13"},"responses":[{"response_range":{"header":{}}}]}"#.to_string(),
        r#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#.to_string(),
        r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"4"},"ID":"5","TTL":"30"}"#.to_string(),
        r#"{"error":"etcdserver: lease already exists","code":9}"#.to_string(),
    ];
    for a in &answers {
        seeds.add("etcd", le(&[&[0], &200u16.to_le_bytes(), a.as_bytes()]));
        seeds.add("json", a.as_bytes().to_vec());
    }
    for op in [
        LedgerOp::Read {
            key: "retry-guard/a/x".into(),
        },
        LedgerOp::Put {
            key: "retry-guard/a/x".into(),
            expect: Expect::Revision(9),
            entry: entries[2].clone(),
            lease: 7,
        },
    ] {
        seeds.add("json", op.request().1.into_bytes());
    }

    // Paths, forms and JSON bodies for the canonical forms (and the JSON reader).
    for p in &requests.paths {
        seeds.add("canonical", p.as_bytes().to_vec());
    }
    for b in &requests.bodies {
        seeds.add("canonical", b.clone());
        if serde_json::from_slice::<Value>(b).is_ok() {
            seeds.add("json", b.clone());
        }
    }

    // Problem documents and audit lines: each gateway route's strings, one verdict each.
    let gateway = read_json(&testdata.join("configs/gateway.json"));
    for (i, route) in gateway["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = |k: &str| route[k].as_str().unwrap_or("").as_bytes().to_vec();
        let mut doc = le(&[
            &0b0000_0111_1111_1110u16.to_le_bytes(),
            &[i as u8, i as u8, i as u8, 0, 1, 2, 0, 3, 4, 2, 0, 0],
            &(START + 60).to_le_bytes(),
            &2u32.to_le_bytes(),
            &503u16.to_le_bytes(),
            &START.to_le_bytes(),
            &(START + 960).to_le_bytes(),
            &1u32.to_le_bytes(),
            &[0x5a; 32],
            &[9; 16],
        ]);
        for (j, s) in [
            text("name"),
            text("owner"),
            text("escalation"),
            b"previous_failed_unknown".to_vec(),
            b"0b7c6f4e-req".to_vec(),
            b"spiffe://cluster.local/ns/ci/sa/deployer".to_vec(),
            b"retry-guard-confirmation".to_vec(),
            b"alice@example.com".to_vec(),
        ]
        .iter()
        .enumerate()
        {
            if j > 0 {
                doc.push(0xff);
            }
            doc.extend(s);
        }
        seeds.add("problem", doc.clone());
        seeds.add("audit", doc);
    }

    // base64: the configured public keys and the test keys.
    for k in [
        "approvals-test.key",
        "approvals-test.pub",
        "jwt-issuer-test.pub",
    ] {
        let text = std::fs::read(testdata.join("keys").join(k)).unwrap();
        seeds.add("b64", text.trim_ascii().to_vec());
    }

    let root = fuzz.join("seeds");
    seeds.write(&root).unwrap();

    // A dictionary for the JSON-shaped targets: every configuration field name and every
    // name the configuration accepts as a value.
    let mut words = BTreeSet::new();
    for f in retry_guard::config::SCHEMA {
        for part in f.path.split(['.', '[', ']']) {
            if !part.is_empty() {
                words.insert(part.to_string());
            }
        }
    }
    for c in &configs {
        collect_words(c, &mut words);
    }
    let mut dict = String::new();
    for w in &words {
        let quoted = serde_json::to_string(w).unwrap();
        // libFuzzer's dictionary syntax: `"..."` with `\\` and `\"` escapes, as JSON's.
        dict.push_str(&format!("{}\n", serde_json::to_string(&quoted).unwrap()));
    }
    std::fs::write(root.join("json.dict"), dict).unwrap();
    println!("json.dict: {} words", words.len());
}

fn collect_words(v: &Value, words: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                words.insert(k.clone());
                collect_words(v, words);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_words(v, words)),
        Value::String(s) if s.len() <= 40 => {
            words.insert(s.clone());
        }
        _ => {}
    }
}
