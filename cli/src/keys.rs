//! `keygen` and `approve`: the approver's side of a 428. Key formats and signing are the
//! policy core's (`retry_guard::confirm::sign`), so what this command signs is what the
//! filter verifies.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use host_sim::tokens::{default_kid, read_signing_key, Confirmation};
use retry_guard::confirm::sign::{private_key_b64, public_key_b64};
use serde_json::Value;

use crate::{take_opt, USAGE};

/// `retry-guard keygen [--out <file.key>]`.
pub fn keygen(mut args: Vec<String>) -> Result<i32, String> {
    let out = take_opt(&mut args, "--out")?;
    if let Some(extra) = args.first() {
        return Err(format!("unexpected argument {extra}\n\n{USAGE}"));
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let private = private_key_b64(&key);
    let public = public_key_b64(&key);
    match out {
        Some(path) => {
            let p = PathBuf::from(&path);
            if p.exists() {
                return Err(format!("{path} exists; refusing to overwrite a key"));
            }
            std::fs::write(&p, format!("{private}\n"))
                .map_err(|e| format!("cannot write {path}: {e}"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
            let pub_path = p.with_extension("pub");
            std::fs::write(&pub_path, format!("{public}\n"))
                .map_err(|e| format!("cannot write {}: {e}", pub_path.display()))?;
            let kid = default_kid(&p);
            println!(
                "private key: {path} (keep it secret)\npublic key:  {}",
                pub_path.display()
            );
            println!(
                "configuration: \"confirmation\": {{ \"keys\": {{ \"{kid}\": \"{public}\" }} }}"
            );
        }
        None => {
            println!("private key (base64 Ed25519 seed; store it in a file, keep it secret):\n  {private}");
            println!("public key (for confirmation.keys):\n  {public}");
        }
    }
    Ok(0)
}

/// `retry-guard approve`: prints a signed confirmation for a challenge and fingerprint, given
/// or read from the 428 on stdin.
pub fn approve(mut args: Vec<String>) -> Result<i32, String> {
    let need = |v: Option<String>, n: &str| v.ok_or_else(|| format!("{n} is required\n\n{USAGE}"));
    let key_path = need(take_opt(&mut args, "--key")?, "--key")?;
    let sub = need(take_opt(&mut args, "--approver")?, "--approver")?;
    let challenge = take_opt(&mut args, "--challenge")?;
    let fingerprint = take_opt(&mut args, "--fingerprint")?;
    let ttl: i64 = take_opt(&mut args, "--ttl")?
        .map(|t| {
            t.parse()
                .map_err(|_| format!("--ttl {t}: a number of seconds"))
        })
        .transpose()?
        .unwrap_or(300);
    if ttl <= 0 {
        return Err("--ttl must be positive".into());
    }
    let now: i64 = match take_opt(&mut args, "--now")? {
        Some(n) => n.parse().map_err(|_| format!("--now {n}: unix seconds"))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let kid = take_opt(&mut args, "--kid")?.unwrap_or_else(|| default_kid(Path::new(&key_path)));
    if let Some(extra) = args.first() {
        return Err(format!("unexpected argument {extra}\n\n{USAGE}"));
    }
    let key = read_signing_key(Path::new(&key_path))?;
    let (chl, fp) = match (challenge, fingerprint) {
        (Some(c), Some(f)) => (c, f),
        (None, None) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the 428 on stdin: {e}"))?;
            // What is being approved, for the approver's eyes (stderr: stdout is the token).
            if let Some(summary) = summary_of(&text) {
                eprintln!("{summary}");
            }
            challenge_of(&text)?
        }
        _ => {
            return Err(
                "give both --challenge and --fingerprint, or neither (then the 428 on stdin)"
                    .into(),
            )
        }
    };
    let c = Confirmation {
        kid,
        chl,
        fp,
        sub,
        iat: now,
        exp: now + ttl,
    };
    println!("{}", c.sign(&key));
    Ok(0)
}

/// The challenge and fingerprint of a 428 problem document (the body, or a whole `curl -i`
/// answer: the JSON starts at the first `{`).
pub fn challenge_of(text: &str) -> Result<(String, String), String> {
    let start = text
        .find('{')
        .ok_or("no JSON problem document on stdin (expected the 428 answer's body)")?;
    let doc: Value = serde_json::from_str(text[start..].trim())
        .map_err(|e| format!("stdin is not a problem document: {e}"))?;
    if doc["status"] != 428 {
        return Err(format!(
            "the document on stdin is not a 428 (status {}, type {})",
            doc["status"], doc["type"]
        ));
    }
    match (doc["challenge"].as_str(), doc["fingerprint"].as_str()) {
        (Some(c), Some(f)) => Ok((c.to_string(), f.to_string())),
        _ => Err("the 428 document has no challenge or fingerprint".into()),
    }
}

/// What a 428 asks the approver to confirm, in one line: route, class, owner, attempt, the
/// earlier attempt's outcome and how long ago it was. `None` when `text` holds no problem
/// document.
pub fn summary_of(text: &str) -> Option<String> {
    let doc: Value = serde_json::from_str(text.get(text.find('{')?..)?.trim()).ok()?;
    let s = |k: &str| match &doc[k] {
        Value::String(v) => v.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let mut line = format!(
        "approving route {} ({}, owner {}, escalation {}): attempt {} after {} (status {})",
        s("route"),
        s("class"),
        s("owner"),
        s("escalation"),
        s("attempt"),
        s("previous_outcome"),
        s("previous_status"),
    );
    if let Some(ms) = doc["since_previous_ms"].as_u64() {
        line.push_str(&format!("; the earlier call was {} ago", human_ms(ms)));
    }
    if let Some(end) = doc["window_ends"].as_str() {
        line.push_str(&format!("; window ends {end}"));
    }
    Some(line)
}

/// A duration for people: `850 ms`, `3.2 s`, `4 min 10 s`, `2 h 5 min`.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_how_long_ago_the_earlier_call_was() {
        let body = r#"{"status":428,"route":"token","class":"token_issuing","owner":"team-iam","escalation":"pd:iam","attempt":2,"previous_outcome":"succeeded","previous_status":200,"since_previous_ms":3200,"window_ends":"2026-12-07T06:15:00Z"}"#;
        assert_eq!(
            summary_of(body).unwrap(),
            "approving route token (token_issuing, owner team-iam, escalation pd:iam): attempt 2 after succeeded (status 200); the earlier call was 3.2 s ago; window ends 2026-12-07T06:15:00Z"
        );
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(250_000), "4 min 10 s");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
        assert_eq!(summary_of("no document"), None);
    }

    #[test]
    fn challenge_from_body_or_curl_i_output() {
        let body = r#"{"type":"urn:retry-guard:problem:confirmation-required","status":428,"challenge":"c1","fingerprint":"f1"}"#;
        assert_eq!(
            challenge_of(body).ok(),
            Some(("c1".to_string(), "f1".to_string()))
        );
        let with_head = format!("HTTP/1.1 428 Precondition Required\r\ncontent-type: application/problem+json\r\n\r\n{body}\n");
        assert!(challenge_of(&with_head).is_ok());
        assert!(challenge_of(r#"{"status":409}"#).is_err());
        assert!(challenge_of("nothing").is_err());
    }
}
