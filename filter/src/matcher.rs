//! Route matching: which guarded route (if any) a request belongs to.
//!
//! Matching reads request facts lazily ([`LazyFacts`]), only until a condition fails, so a
//! request whose route name no guarded route names costs one host call. Path conditions
//! compare with the request's canonical path ([`crate::canonical::canonical_path`]: no query
//! string, escapes of unreserved characters decoded, slashes merged, dot segments resolved,
//! encoded slashes taken as slashes), computed once per request.

use crate::canonical::{canonical_path, CanonicalPath};
use crate::json::quoted;

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// No path condition.
    Any,
    /// Exact path.
    Exact(String),
    /// Path prefix.
    Prefix(String),
    /// Segment template: `*` is exactly one segment, a trailing `**` any rest (also none).
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A literal segment.
    Literal(String),
    /// `*`: any one non-empty segment.
    One,
    /// `**` (last only): any rest.
    Rest,
}

impl PathMatch {
    /// Parses a `path_template` value; the error says what is wrong.
    pub fn template(text: &str) -> Result<PathMatch, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("template {} must start with '/'", quoted(text)));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len().saturating_sub(1);
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "**" if i == last => Segment::Rest,
                "**" => {
                    return Err(format!(
                        "template {}: '**' may only be the last segment",
                        quoted(text)
                    ))
                }
                "*" => Segment::One,
                p if p.contains('*') => {
                    return Err(format!(
                        "template {}: '*' must be a whole segment (no regex or globs)",
                        quoted(text)
                    ))
                }
                p => Segment::Literal(p.to_string()),
            };
            segments.push(seg);
        }
        Ok(PathMatch::Template(segments))
    }

    /// Does `path`, a canonical path (no query string), match?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Template(segments) => match_template(segments, path),
        }
    }
}

fn match_template(segments: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    for seg in segments {
        match seg {
            Segment::Rest => return true,
            Segment::One => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(l) => match parts.next() {
                Some(p) if p == l => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

/// The conditions of one route; all given conditions must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// Envoy's route name (`xds.route_name`).
    pub route_name: Option<String>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    /// Authority (`:authority`), compared case-insensitively.
    pub authority: Option<String>,
    /// Path condition.
    pub path: PathMatch,
}

/// A request fact matching may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// `xds.route_name`.
    RouteName,
    /// `:method`.
    Method,
    /// `:authority`.
    Authority,
    /// `:path`.
    Path,
}

/// Request facts fetched on first use and cached, so matching reads only what the routes it
/// actually evaluates need: a request whose route name matches no route costs one host call.
pub struct LazyFacts<F: FnMut(Fact) -> Option<String>> {
    fetch: F,
    route_name: Option<Option<String>>,
    method: Option<Option<String>>,
    authority: Option<Option<String>>,
    path: Option<Option<String>>,
    canonical: Option<Option<CanonicalPath>>,
}

impl<F: FnMut(Fact) -> Option<String>> LazyFacts<F> {
    /// Facts that `fetch` reads from the host on demand.
    pub fn new(fetch: F) -> LazyFacts<F> {
        LazyFacts {
            fetch,
            route_name: None,
            method: None,
            authority: None,
            path: None,
            canonical: None,
        }
    }

    /// The fact, fetched once.
    pub fn get(&mut self, fact: Fact) -> Option<&str> {
        let slot = match fact {
            Fact::RouteName => &mut self.route_name,
            Fact::Method => &mut self.method,
            Fact::Authority => &mut self.authority,
            Fact::Path => &mut self.path,
        };
        if slot.is_none() {
            *slot = Some((self.fetch)(fact));
        }
        slot.as_ref().and_then(|v| v.as_deref())
    }

    /// The fact as an owned string (fetched if it was not yet), consuming the cache entry.
    pub fn take(&mut self, fact: Fact) -> Option<String> {
        self.get(fact);
        let slot = match fact {
            Fact::RouteName => &mut self.route_name,
            Fact::Method => &mut self.method,
            Fact::Authority => &mut self.authority,
            Fact::Path => &mut self.path,
        };
        slot.take().flatten()
    }

    /// The canonical form of the `:path` fact (fetched if it was not yet), computed once.
    pub fn canonical_path(&mut self) -> Option<&CanonicalPath> {
        if self.canonical.is_none() {
            let c = self.get(Fact::Path).map(canonical_path);
            self.canonical = Some(c);
        }
        self.canonical.as_ref().and_then(Option::as_ref)
    }

    /// The canonical path as an owned value (computed if it was not yet), consuming it.
    pub fn take_canonical_path(&mut self) -> Option<CanonicalPath> {
        self.canonical_path();
        self.canonical.take().flatten()
    }
}

impl RouteMatch {
    /// Do all conditions hold? Facts are read in the order route name, method, authority,
    /// path, and only until one condition fails.
    pub fn matches_lazy<F: FnMut(Fact) -> Option<String>>(&self, facts: &mut LazyFacts<F>) -> bool {
        if let Some(want) = &self.route_name {
            if facts.get(Fact::RouteName) != Some(want.as_str()) {
                return false;
            }
        }
        if !self.methods.is_empty() {
            match facts.get(Fact::Method) {
                Some(m) if self.methods.iter().any(|x| x == m) => {}
                _ => return false,
            }
        }
        if let Some(want) = &self.authority {
            match facts.get(Fact::Authority) {
                Some(a) if a.eq_ignore_ascii_case(want) => {}
                _ => return false,
            }
        }
        match &self.path {
            PathMatch::Any => true,
            p => facts.canonical_path().is_some_and(|c| p.matches(&c.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_segments() {
        let t = PathMatch::template("/v1/roles/*/members").unwrap();
        assert!(t.matches("/v1/roles/admin/members"));
        assert!(!t.matches("/v1/roles//members"));
        assert!(!t.matches("/v1/roles/admin/members/extra"));
        assert!(!t.matches("/v1/roles/admin"));
        let r = PathMatch::template("/v1/**").unwrap();
        assert!(r.matches("/v1/a/b/c"));
        assert!(r.matches("/v1"));
        assert!(!r.matches("/v2/a"));
        assert!(PathMatch::template("/a/**/b").is_err());
        assert!(PathMatch::template("a/b").is_err());
        assert!(PathMatch::template("/a/b*").is_err());
    }

    /// Does `m` match a request with this raw `:path`?
    fn matches_raw(m: &PathMatch, raw: &str) -> bool {
        let m = RouteMatch {
            route_name: None,
            methods: Vec::new(),
            authority: None,
            path: m.clone(),
        };
        m.matches_lazy(&mut LazyFacts::new(|_| Some(raw.to_string())))
    }

    #[test]
    fn paths_match_in_canonical_form() {
        let e = PathMatch::Exact("/oauth/token".into());
        for raw in [
            "/oauth/token",
            "/oauth/token?",
            "/oauth/token?x=1",
            "//oauth/token",
            "/oauth/%74oken",
            "/oauth/./token",
            "/oauth%2Ftoken",
            "/oauth\\token",
        ] {
            assert!(matches_raw(&e, raw), "{raw}");
        }
        assert!(!matches_raw(&e, "/oauth/token/x"));
        assert!(!matches_raw(&e, "/oauth/tokens"));
        let p = PathMatch::Prefix("/v1/".into());
        assert!(matches_raw(&p, "/v1/x"));
        assert!(matches_raw(&p, "//v1//x"));
        assert!(!matches_raw(&p, "/v2/x"));
        assert!(!matches_raw(&p, "/v1/../v2/x"));
        let t = PathMatch::template("/v1/roles/*/members").unwrap();
        assert!(matches_raw(&t, "/v1/roles/%61dmin/members?x=1"));
        assert!(
            matches_raw(&t, "/v1/roles//admin/members"),
            "slashes merged"
        );
    }

    #[test]
    fn lazy_matching_reads_only_what_it_needs() {
        let m = RouteMatch {
            route_name: Some("token".into()),
            methods: vec!["POST".into()],
            authority: None,
            path: PathMatch::Exact("/oauth/token".into()),
        };
        let mut reads = Vec::new();
        let mut facts = LazyFacts::new(|f| {
            reads.push(f);
            match f {
                Fact::RouteName => Some("other".to_string()),
                _ => Some("POST".to_string()),
            }
        });
        assert!(!m.matches_lazy(&mut facts));
        assert!(!m.matches_lazy(&mut facts), "cached");
        drop(facts);
        assert_eq!(
            reads,
            vec![Fact::RouteName],
            "one read for an unmatched route name"
        );
        let mut facts = LazyFacts::new(|f| match f {
            Fact::RouteName => Some("token".to_string()),
            Fact::Method => Some("POST".to_string()),
            Fact::Path => Some("/oauth/./token?x".to_string()),
            Fact::Authority => None,
        });
        assert!(m.matches_lazy(&mut facts));
        let c = facts.take_canonical_path().unwrap();
        assert_eq!((c.path.as_str(), c.query.as_str()), ("/oauth/token", "x"));
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = RouteMatch {
            route_name: Some("token".into()),
            methods: vec!["POST".into()],
            authority: Some("Auth.Example".into()),
            path: PathMatch::Exact("/oauth/token".into()),
        };
        // (route name, method, authority, path) as the host would report them.
        let matches = |facts: [Option<&str>; 4]| {
            let [route_name, method, authority, path] = facts;
            m.matches_lazy(&mut LazyFacts::new(|f| {
                match f {
                    Fact::RouteName => route_name,
                    Fact::Method => method,
                    Fact::Authority => authority,
                    Fact::Path => path,
                }
                .map(str::to_string)
            }))
        };
        let ok = [
            Some("token"),
            Some("POST"),
            Some("auth.example"),
            Some("/oauth/token"),
        ];
        assert!(matches(ok));
        assert!(!matches([ok[0], Some("GET"), ok[2], ok[3]]));
        assert!(!matches([None, ok[1], ok[2], ok[3]]));
        assert!(!matches([ok[0], ok[1], Some("other"), ok[3]]));
    }
}
