//! A pasted 428 (the problem document, or the whole `curl -i` output) in plain words: what the
//! approver is asked to confirm, whose route it is, and how long the window stays open.

use serde::Serialize;
use serde_json::Value;

use crate::{duration_words, parse_rfc3339};

/// What an approver needs to know about one 428.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProblemView {
    /// HTTP status of the document (428 for one that can be approved).
    pub status: u64,
    /// The problem `title`.
    pub title: String,
    /// The problem `detail` (the filter's own words).
    pub detail: String,
    /// Route name.
    pub route: String,
    /// Action class (`token_issuing`, ...).
    pub class: String,
    /// Who owns the route.
    pub owner: String,
    /// Where to escalate.
    pub escalation: String,
    /// The outcome of the earlier attempt (`succeeded`, `failed_unknown`, ...).
    pub previous_outcome: Option<String>,
    /// The status the earlier attempt got.
    pub previous_status: Option<u64>,
    /// Milliseconds between the earlier attempt and this repeat.
    pub since_previous_ms: Option<u64>,
    /// Which attempt this request is.
    pub attempt: Option<u64>,
    /// First attempt of the window (RFC 3339).
    pub first_seen: Option<String>,
    /// When the window ends (RFC 3339).
    pub window_ends: Option<String>,
    /// Seconds left until the window ends, from the `now` given.
    pub seconds_left: Option<u64>,
    /// The fingerprint (base64url).
    pub fingerprint: String,
    /// The challenge to sign (base64url).
    pub challenge: String,
    /// The request header the confirmation goes in.
    pub confirmation_header: String,
    /// Why an earlier confirmation was refused, if one was.
    pub confirmation_error: Option<String>,
    /// `x-request-id` of the replay.
    pub request_id: Option<String>,
    /// The whole story in sentences, for a person.
    pub sentences: Vec<String>,
}

fn text(doc: &Value, k: &str) -> Option<String> {
    doc.get(k).and_then(Value::as_str).map(str::to_string)
}

/// The JSON document in `pasted`: the body alone, or a `curl -i` answer whose body starts at
/// the first `{`.
fn document(pasted: &str) -> Result<Value, String> {
    let start = pasted.find('{').ok_or(
        "nothing to read: paste the 428 answer's body (the JSON problem document) or the whole \
         `curl -i` output",
    )?;
    let body = pasted.get(start..).unwrap_or_default().trim();
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<Value>();
    match stream.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!(
            "the pasted text is not a JSON problem document ({e}); paste the 428 body exactly \
             as the filter sent it"
        )),
        None => Err("the pasted text holds no JSON problem document".into()),
    }
}

/// Reads a 428 pasted by an approver, with `now` (Unix seconds) for how long is left. A
/// document that is not a 428, or has no challenge or fingerprint, is an error that says so.
pub fn read(pasted: &str, now: u64) -> Result<ProblemView, String> {
    let doc = document(pasted)?;
    let status = doc.get("status").and_then(Value::as_u64).unwrap_or(0);
    let kind = text(&doc, "type").unwrap_or_default();
    if status != 428 {
        return Err(format!(
            "this is a {status} ({}), not a 428: only a `confirmation-required` answer can be \
             approved. {}",
            if kind.is_empty() { "no type" } else { &kind },
            text(&doc, "detail").unwrap_or_default()
        ));
    }
    let (Some(challenge), Some(fingerprint)) = (text(&doc, "challenge"), text(&doc, "fingerprint"))
    else {
        return Err(
            "the 428 has no `challenge` or `fingerprint` member: paste the whole body as the \
             filter sent it"
                .into(),
        );
    };
    let window_ends = text(&doc, "window_ends");
    let ends_at = window_ends.as_deref().and_then(parse_rfc3339);
    let mut v = ProblemView {
        status,
        title: text(&doc, "title").unwrap_or_default(),
        detail: text(&doc, "detail").unwrap_or_default(),
        route: text(&doc, "route").unwrap_or_default(),
        class: text(&doc, "class").unwrap_or_default(),
        owner: text(&doc, "owner").unwrap_or_default(),
        escalation: text(&doc, "escalation").unwrap_or_default(),
        previous_outcome: text(&doc, "previous_outcome"),
        previous_status: doc.get("previous_status").and_then(Value::as_u64),
        since_previous_ms: doc.get("since_previous_ms").and_then(Value::as_u64),
        attempt: doc.get("attempt").and_then(Value::as_u64),
        first_seen: text(&doc, "first_seen"),
        window_ends,
        seconds_left: ends_at.map(|e| e.saturating_sub(now)),
        fingerprint,
        challenge,
        confirmation_header: text(&doc, "confirmation_header")
            .unwrap_or_else(|| "retry-guard-confirmation".into()),
        confirmation_error: text(&doc, "confirmation_error"),
        request_id: text(&doc, "request_id"),
        sentences: Vec::new(),
    };
    v.sentences = sentences(&v);
    Ok(v)
}

/// A gap between two calls for people: `850 ms`, `3.2 s`, else [`crate::duration_words`].
fn gap_words(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => crate::duration_words(ms / 1000),
    }
}

fn sentences(v: &ProblemView) -> Vec<String> {
    let mut s = Vec::new();
    let class = v.class.replace('_', " ");
    s.push(format!(
        "A caller repeated a {class} request on route {} (attempt {}).",
        v.route,
        v.attempt.map_or("?".into(), |a| a.to_string())
    ));
    if let Some(o) = &v.previous_outcome {
        let st = v.previous_status.map_or(String::new(), |st| {
            if st == 0 {
                " with no response".into()
            } else {
                format!(" with status {st}")
            }
        });
        s.push(format!(
            "The earlier attempt ended {}{st}: {}",
            o.replace('_', " "),
            outcome_meaning(o)
        ));
    }
    if let Some(ms) = v.since_previous_ms {
        s.push(format!(
            "The earlier call was {} before this one.",
            gap_words(ms)
        ));
    }
    s.push(format!(
        "The route belongs to {}; escalate to {}.",
        v.owner, v.escalation
    ));
    if let Some(f) = &v.first_seen {
        s.push(format!("First seen {f}."));
    }
    match (&v.window_ends, v.seconds_left) {
        (Some(e), Some(0)) => s.push(format!(
            "The window ended at {e}: the call is no longer remembered as a repeat, so no \
             approval is needed any more."
        )),
        (Some(e), Some(left)) => s.push(format!(
            "The window ends at {e}, {} from now; an approval must be used before then.",
            duration_words(left)
        )),
        _ => {}
    }
    if let Some(e) = &v.confirmation_error {
        s.push(format!(
            "A confirmation was sent with this retry and refused: {e}."
        ));
    }
    s.push(format!(
        "Approve only if repeating it is what you want: the signed confirmation lets exactly \
         one more {class} call through, in the `{}` header.",
        v.confirmation_header
    ));
    s
}

/// What an earlier attempt's outcome means for a sensitive call.
pub fn outcome_meaning(outcome: &str) -> &'static str {
    match outcome {
        "succeeded" => "it worked, so a repeat does the same thing a second time.",
        "failed_unknown" => {
            "the upstream may or may not have acted (an unknown 5xx, a timeout or a reset)."
        }
        "undelivered" => "the upstream may have acted but the caller never got the answer.",
        "in_flight" => "it has not finished yet.",
        "rejected" => "the upstream refused it.",
        "not_sent" => "it never reached the upstream.",
        "unchanged" => "the upstream said nothing changed.",
        "rate_limited" => "it was rate limited.",
        "unauthenticated" => "the caller was not authenticated.",
        _ => "see the filter's documentation for this outcome.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"type":"urn:retry-guard:problem:confirmation-required","title":"Human confirmation required","status":428,"detail":"This token_issuing request repeats attempt 1 of the same operation.","route":"oauth-token","class":"token_issuing","owner":"team-iam","escalation":"pagerduty:iam-primary","fingerprint":"FP","attempt":2,"request_id":"r1","previous_outcome":"succeeded","previous_status":200,"since_previous_ms":3200,"challenge":"CHL","first_seen":"2026-01-01T00:00:00Z","window_ends":"2026-01-01T00:15:00Z","confirmation_header":"retry-guard-confirmation"}"#;

    #[test]
    fn a_body_or_curl_i_output_reads_the_same() {
        let now = 1_767_225_600 + 60;
        let a = read(DOC, now).expect("body");
        let b = read(
            &format!(
                "HTTP/1.1 428 Precondition Required\r\nretry-guard-challenge: CHL\r\n\r\n{DOC}\n"
            ),
            now,
        )
        .expect("curl -i");
        assert_eq!(a, b);
        assert_eq!(a.challenge, "CHL");
        assert_eq!(a.seconds_left, Some(840));
        assert!(
            a.sentences.iter().any(|s| s.contains("14 min from now")),
            "{:?}",
            a.sentences
        );
        assert!(a.sentences.iter().any(|s| s.contains("team-iam")));
        assert_eq!(a.since_previous_ms, Some(3200));
        assert!(
            a.sentences
                .iter()
                .any(|s| s == "The earlier call was 3.2 s before this one."),
            "{:?}",
            a.sentences
        );
    }

    #[test]
    fn other_answers_say_why_they_cannot_be_approved() {
        let e = read(
            r#"{"status":409,"type":"urn:retry-guard:problem:request-in-flight"}"#,
            0,
        )
        .unwrap_err();
        assert!(e.contains("409") && e.contains("not a 428"), "{e}");
        assert!(read("hello", 0).unwrap_err().contains("paste the 428"));
        assert!(read(r#"{"status":428}"#, 0)
            .unwrap_err()
            .contains("challenge"));
    }
}
