//! Which requests a route admits, as far as `check` needs to know: path conditions of plugin
//! routes, Envoy routes and VirtualService routes in one form, whether two of them can admit
//! the same request (`overlaps`), whether one admits every request the other does (`covers`),
//! and the words that make a path look sensitive.
//!
//! Best effort by design: regexes are compared by their literal prefix only, authorities and
//! header matchers other than `:method` are not compared (a route with such matchers never
//! covers another).

use retry_guard::matcher::{PathMatch, Segment};

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathCond {
    /// No path condition: every path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// Every path starting with this.
    Prefix(String),
    /// A segment template in the filter's syntax: `*` one segment, a trailing `**` any rest.
    Template(String),
    /// A regular expression (Envoy `safe_regex`, Istio `regex`), matched against the whole path.
    Regex(String),
    /// A condition `check` does not understand (e.g. Envoy's `connect_matcher`): it overlaps
    /// and covers nothing.
    Unknown,
}

impl PathCond {
    /// The condition of a plugin route's matcher.
    pub fn of_plugin(m: &PathMatch) -> PathCond {
        match m {
            PathMatch::Any => PathCond::Any,
            PathMatch::Exact(p) => PathCond::Exact(p.clone()),
            PathMatch::Prefix(p) => PathCond::Prefix(p.clone()),
            PathMatch::Template(segments) => {
                let parts: Vec<&str> = segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => l.as_str(),
                        Segment::One => "*",
                        Segment::Rest => "**",
                    })
                    .collect();
                PathCond::Template(format!("/{}", parts.join("/")))
            }
        }
    }

    /// An Envoy uri template (`/v1/roles/{role}/members`, `/v1/{rest=**}`, or with `*` and
    /// `**`) in the filter's template syntax; `Unknown` for anything else (variables inside a
    /// segment, other operators).
    pub fn of_envoy_template(t: &str) -> PathCond {
        let Some(rest) = t.strip_prefix('/') else {
            return PathCond::Unknown;
        };
        let mut out = Vec::new();
        for seg in rest.split('/') {
            let s = if let Some(var) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                match var.split_once('=') {
                    None | Some((_, "*")) => "*",
                    Some((_, "**")) => "**",
                    Some(_) => return PathCond::Unknown,
                }
            } else if seg == "*" || seg == "**" {
                seg
            } else if seg.contains(['{', '}', '*']) {
                return PathCond::Unknown;
            } else {
                seg
            };
            out.push(s);
        }
        PathCond::Template(format!("/{}", out.join("/")))
    }

    /// The text a person wrote for this condition (for the sensitive-path check and messages).
    pub fn text(&self) -> Option<&str> {
        match self {
            PathCond::Exact(s)
            | PathCond::Prefix(s)
            | PathCond::Template(s)
            | PathCond::Regex(s) => Some(s),
            PathCond::Any | PathCond::Unknown => None,
        }
    }

    /// Does the condition admit this concrete path?
    fn admits(&self, path: &str) -> bool {
        match self {
            PathCond::Any => true,
            PathCond::Exact(p) => p == path,
            PathCond::Prefix(p) => path.starts_with(p.as_str()),
            PathCond::Template(t) => PathMatch::template(t).is_ok_and(|m| m.matches(path)),
            PathCond::Regex(r) => path.starts_with(regex_literal_prefix(r).as_str()),
            PathCond::Unknown => false,
        }
    }

    /// The literal text every admitted path starts with, and whether it is the whole path.
    fn literal(&self) -> Option<(String, bool)> {
        match self {
            PathCond::Any => Some((String::new(), false)),
            PathCond::Exact(p) => Some((p.clone(), true)),
            PathCond::Prefix(p) => Some((p.clone(), false)),
            PathCond::Template(t) => Some(match t.find('*') {
                Some(i) => (t.get(..i).unwrap_or_default().to_string(), false),
                None => (t.clone(), true),
            }),
            PathCond::Regex(r) => Some((regex_literal_prefix(r), false)),
            PathCond::Unknown => None,
        }
    }
}

/// The literal start of a regex (anchors dropped), up to its first special character.
fn regex_literal_prefix(r: &str) -> String {
    let r = r.strip_prefix('^').unwrap_or(r);
    r.chars()
        .take_while(|c| !"\\.[]()*+?{}|$^".contains(*c))
        .collect()
}

/// Can some path satisfy both conditions? (Regexes: by their literal prefixes.)
pub fn overlaps(a: &PathCond, b: &PathCond) -> bool {
    match (a, b) {
        (PathCond::Unknown, _) | (_, PathCond::Unknown) => false,
        (PathCond::Exact(x), other) | (other, PathCond::Exact(x)) => other.admits(x),
        _ => match (a.literal(), b.literal()) {
            (Some((p, _)), Some((q, _))) => p.starts_with(q.as_str()) || q.starts_with(p.as_str()),
            _ => false,
        },
    }
}

/// Does `outer` admit every path `inner` admits? Conservative: `false` when unsure.
pub fn covers(outer: &PathCond, inner: &PathCond) -> bool {
    match outer {
        PathCond::Any => *inner != PathCond::Unknown,
        PathCond::Prefix(q) => match inner {
            PathCond::Any => q.is_empty() || q == "/",
            PathCond::Unknown => false,
            other => other
                .literal()
                .is_some_and(|(lit, _)| lit.starts_with(q.as_str())),
        },
        PathCond::Exact(x) => match inner.literal() {
            Some((lit, true)) => lit == *x,
            _ => false,
        },
        PathCond::Template(t) => match inner {
            PathCond::Exact(x) => outer.admits(x),
            PathCond::Template(u) => u == t,
            _ => false,
        },
        PathCond::Regex(_) | PathCond::Unknown => false,
    }
}

/// Can a request satisfy both method conditions? (`plugin` empty: any method; `route` None:
/// any method.)
pub fn methods_overlap(plugin: &[String], route: Option<&str>) -> bool {
    match route {
        None => true,
        Some(m) => plugin.is_empty() || plugin.iter().any(|p| p == m),
    }
}

/// Does the route's method condition admit every method the plugin route admits?
pub fn methods_cover(route: Option<&str>, plugin: &[String]) -> bool {
    match route {
        None => true,
        Some(m) => !plugin.is_empty() && plugin.iter().all(|p| p == m),
    }
}

/// Words that make a route look sensitive (singular; a plural `s` is accepted too).
pub const SENSITIVE_WORDS: &[&str] = &[
    "token",
    "oauth",
    "oauth2",
    "credential",
    "secret",
    "key",
    "session",
    "role",
    "grant",
    "member",
    "permission",
    "password",
];

/// The first sensitive word of a path text: the text split at every character that is not an
/// ASCII letter or digit, compared case-insensitively with [`SENSITIVE_WORDS`] (or their
/// plural).
pub fn sensitive_word(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .find(|w| {
            let singular = w.strip_suffix('s').unwrap_or(w);
            SENSITIVE_WORDS.contains(&w.as_str()) || SENSITIVE_WORDS.contains(&singular)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> PathCond {
        PathCond::Exact(s.into())
    }
    fn prefix(s: &str) -> PathCond {
        PathCond::Prefix(s.into())
    }
    fn template(s: &str) -> PathCond {
        PathCond::Template(s.into())
    }

    #[test]
    fn envoy_templates_become_filter_templates() {
        assert_eq!(
            PathCond::of_envoy_template("/v1/roles/{role}/members"),
            template("/v1/roles/*/members")
        );
        assert_eq!(
            PathCond::of_envoy_template("/v1/{rest=**}"),
            template("/v1/**")
        );
        assert_eq!(
            PathCond::of_envoy_template("/v1/roles/*/members"),
            template("/v1/roles/*/members")
        );
        assert_eq!(PathCond::of_envoy_template("/v1/a{b}"), PathCond::Unknown);
        assert_eq!(PathCond::of_envoy_template("v1"), PathCond::Unknown);
        let plugin = PathMatch::template("/v1/roles/*/members").unwrap();
        assert_eq!(
            PathCond::of_plugin(&plugin),
            template("/v1/roles/*/members")
        );
    }

    #[test]
    fn overlap_and_cover() {
        assert!(overlaps(&exact("/oauth/token"), &prefix("/")));
        assert!(covers(&prefix("/"), &exact("/oauth/token")));
        assert!(covers(&prefix("/"), &PathCond::Any));
        assert!(!covers(&prefix("/v1/"), &PathCond::Any));
        assert!(overlaps(&prefix("/v1/"), &PathCond::Any));
        assert!(!overlaps(&exact("/oauth/token"), &exact("/v1/secrets")));
        assert!(overlaps(
            &template("/v1/roles/*/members"),
            &exact("/v1/roles/a/members")
        ));
        assert!(covers(
            &template("/v1/roles/*/members"),
            &exact("/v1/roles/a/members")
        ));
        assert!(overlaps(&template("/v1/**"), &prefix("/v1/secrets")));
        assert!(!overlaps(&template("/v1/**"), &prefix("/v2/")));
        assert!(covers(&prefix("/v1/"), &template("/v1/**")));
        assert!(overlaps(
            &PathCond::Regex("^/v1/roles/[^/]+/members$".into()),
            &template("/v1/roles/*/members")
        ));
        assert!(!overlaps(
            &PathCond::Regex("^/v1/roles/[^/]+/members$".into()),
            &exact("/v1/secrets")
        ));
        assert!(!covers(&PathCond::Regex("/.*".into()), &exact("/x")));
        assert!(!overlaps(&PathCond::Unknown, &PathCond::Any));
        assert!(covers(&exact("/a"), &template("/a")));
        assert!(!covers(&exact("/a"), &prefix("/a")));
    }

    #[test]
    fn methods() {
        let post = vec!["POST".to_string()];
        assert!(methods_overlap(&post, Some("POST")));
        assert!(!methods_overlap(&post, Some("GET")));
        assert!(methods_overlap(&[], Some("GET")));
        assert!(methods_cover(None, &[]));
        assert!(methods_cover(Some("POST"), &post));
        assert!(!methods_cover(Some("POST"), &[]));
    }

    #[test]
    fn sensitive_words() {
        assert_eq!(sensitive_word("/oauth/token").as_deref(), Some("oauth"));
        assert_eq!(sensitive_word("/v1/Tokens").as_deref(), Some("tokens"));
        assert_eq!(
            sensitive_word("^/v1/roles/[^/]+/members$").as_deref(),
            Some("roles")
        );
        assert_eq!(sensitive_word("/v1/api-keys").as_deref(), Some("keys"));
        assert_eq!(sensitive_word("/v1/preferences"), None);
        assert_eq!(sensitive_word("/"), None);
        assert_eq!(sensitive_word("/v1/keyboard"), None);
    }
}
