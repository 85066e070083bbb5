//! The command line: `retry-guard-bench [options]` (`just bench [options]`).

use std::fs;
use std::path::PathBuf;

use retry_guard_e2e::{Error, Result};

use crate::cases::CASES;
use crate::configs::Backend;

/// What `--help` prints.
const USAGE: &str = "usage: retry-guard-bench [--cases 1,2,.. (all: 1 to 9, 11 and 12 jwt_authn)] [--plugin-config FILE] [--wasm FILE] [--rounds N (5)] [--seconds S (5)] [--connections C (16)] [--flood N (1000000)] [--envoy-log-level L (info; warning drops the audit lines)] [--direct (every route a direct_response, no upstream)] [--host-costs (price each host call retry-guard makes; writes host-costs.md)] [--compare-wasm FILE (configurations 4, 5 and 6 with this module beside the measured one, saturated; writes compare.md)] [--guest-share (configurations 2, 4, 5 and 6 saturated, sampled with perf: the share of Envoy's CPU in the module's generated code; writes guest-share.md)] [--pacing (how evenly the paced runs' requests arrive; writes pacing.md)] [--etcd (only the etcd ledger's comparison with the shared-data one; writes etcd.md; the default run ends with it)] [--no-etcd (leave it out; so does --cases)] [--update-readme]";

/// Whether a run includes the etcd ledger's comparison ([`crate::etcd`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EtcdRun {
    /// After the main benchmark (the default run).
    After,
    /// Alone (`--etcd`).
    Only,
    /// Not at all (`--no-etcd`, or configurations chosen with `--cases`).
    Skip,
}

/// The options of a run.
pub struct Options {
    /// retry-guard's wasm instead of the release build (`--wasm`).
    pub wasm: Option<PathBuf>,
    /// Another build of retry-guard to measure beside it instead (`--compare-wasm`; see
    /// [`crate::compare`]).
    pub compare_wasm: Option<PathBuf>,
    /// The configurations to run (`--cases`, ids of [`CASES`]; default all).
    pub cases: Vec<usize>,
    /// retry-guard's plugin configuration instead of host-sim's benchmark one
    /// (`--plugin-config`, the file's text).
    pub plugin_config: Option<String>,
    /// Interleaved rounds (`--rounds`).
    pub rounds: usize,
    /// Seconds of each run (`--seconds`).
    pub seconds: u64,
    /// wrk's connections in the saturated runs (`--connections`).
    pub connections: usize,
    /// Unique keys sent in the memory run (`--flood`; 0 skips it).
    pub flood: u64,
    /// Replace the README's table of the run (`--update-readme`).
    pub update_readme: bool,
    /// Envoy's log level; `info` writes the audit lines, `warning` drops them (to measure
    /// what the audit line costs).
    pub log_level: String,
    /// Where the routes' answers come from (`--direct`: the proxy itself).
    pub backend: Backend,
    /// Price each host call retry-guard makes instead (see [`crate::host_costs`]).
    pub host_costs: bool,
    /// Check how evenly the paced runs' requests arrive instead (see [`crate::pacing`]).
    pub pacing: bool,
    /// Sample Envoy with `perf` for the share of its CPU in the module's code instead (see
    /// [`crate::guest_share`]).
    pub guest_share: bool,
    /// Whether the etcd ledger's comparison runs, and how.
    pub etcd: EtcdRun,
}

/// The default of `--rounds`.
const DEFAULT_ROUNDS: usize = 5;
/// The default of `--seconds`.
const DEFAULT_SECONDS: u64 = 5;

impl Options {
    /// ` --rounds R --seconds S` for those that differ from their defaults: what a report
    /// adds to the command it names, so the command repeats the run it reports.
    pub fn timing_flags(&self) -> String {
        let mut s = String::new();
        if self.rounds != DEFAULT_ROUNDS {
            s.push_str(&format!(" --rounds {}", self.rounds));
        }
        if self.seconds != DEFAULT_SECONDS {
            s.push_str(&format!(" --seconds {}", self.seconds));
        }
        s
    }
}

/// Reads the options from the process's arguments; `-h` prints the usage and exits.
pub fn parse() -> Result<Options> {
    match parse_from(std::env::args().skip(1))? {
        Some(o) => Ok(o),
        None => {
            println!("{USAGE}");
            std::process::exit(0);
        }
    }
}

/// The options given by `args`; `None` when they ask for the usage.
pub(crate) fn parse_from(args: impl IntoIterator<Item = String>) -> Result<Option<Options>> {
    let mut o = Options {
        wasm: None,
        compare_wasm: None,
        cases: CASES.iter().map(|c| c.id).collect(),
        plugin_config: None,
        rounds: DEFAULT_ROUNDS,
        seconds: DEFAULT_SECONDS,
        connections: 16,
        flood: 1_000_000,
        update_readme: false,
        log_level: "info".into(),
        backend: Backend::Upstream,
        host_costs: false,
        guest_share: false,
        pacing: false,
        etcd: EtcdRun::After,
    };
    let (mut etcd_only, mut no_etcd, mut cases_chosen) = (false, false, false);
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .ok_or_else(|| Error(format!("{a} needs {what}")))
        };
        let mut num = |what: &str| -> Result<u64> {
            let v = value(what)?;
            v.parse()
                .map_err(|_| Error(format!("{a} needs {what}, not {v:?}")))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num("a number")?.max(1) as usize,
            "--seconds" => o.seconds = num("a number")?.max(1),
            "--connections" => o.connections = num("a number")?.max(1) as usize,
            "--flood" => o.flood = num("a number")?,
            "--update-readme" => o.update_readme = true,
            "--direct" => o.backend = Backend::Direct,
            "--host-costs" => o.host_costs = true,
            "--pacing" => o.pacing = true,
            "--guest-share" => o.guest_share = true,
            "--etcd" => etcd_only = true,
            "--no-etcd" => no_etcd = true,
            "--cases" => {
                o.cases = case_list(&value("a list like 1,2,3")?)?;
                cases_chosen = true;
            }
            "--envoy-log-level" => o.log_level = value("a level")?,
            "--wasm" => o.wasm = Some(PathBuf::from(value("a file")?)),
            "--compare-wasm" => o.compare_wasm = Some(PathBuf::from(value("a file")?)),
            "--plugin-config" => {
                let file = value("a file")?;
                let text = fs::read_to_string(&file).map_err(|e| Error(format!("{file}: {e}")))?;
                o.plugin_config = Some(text);
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(Error(format!("unknown argument {other:?}; see --help"))),
        }
    }
    let modes = [
        o.host_costs,
        o.pacing,
        etcd_only,
        o.compare_wasm.is_some(),
        o.guest_share,
    ];
    if modes.iter().filter(|m| **m).count() > 1 {
        return Err(Error::new(
            "--host-costs, --pacing, --etcd, --compare-wasm and --guest-share are runs of their own: give one",
        ));
    }
    if o.compare_wasm.is_some() && (cases_chosen || o.update_readme) {
        return Err(Error::new(
            "--compare-wasm runs configurations 4, 5 and 6 and changes no README: drop --cases and --update-readme",
        ));
    }
    if o.guest_share && (cases_chosen || o.update_readme) {
        return Err(Error::new(
            "--guest-share runs configurations 2, 4, 5 and 6 and changes no README: drop --cases and --update-readme",
        ));
    }
    o.etcd = match (
        etcd_only,
        no_etcd || cases_chosen || o.compare_wasm.is_some() || o.guest_share,
    ) {
        (true, _) if no_etcd => return Err(Error::new("--etcd and --no-etcd contradict")),
        (true, _) => EtcdRun::Only,
        (false, true) => EtcdRun::Skip,
        (false, false) => EtcdRun::After,
    };
    Ok(Some(o))
}

/// The ids of `--cases`, each one of [`CASES`].
fn case_list(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| CASES.iter().any(|c| c.id == *n))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            let ids: Vec<String> = CASES.iter().map(|c| c.id.to_string()).collect();
            Error(format!(
                "--cases {list:?}: expected configuration numbers among {}",
                ids.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        parse_from(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn options_are_read_and_bad_ones_named() {
        let o = parse(&["--cases", "1, 5", "--seconds", "0", "--direct"])
            .unwrap()
            .unwrap();
        assert_eq!(o.cases, [1, 5]);
        assert_eq!(o.seconds, 1, "at least a second");
        assert!(o.backend == Backend::Direct);
        assert!(parse(&["--help"]).unwrap().is_none());
        let err = parse(&["--cases", "0,10"]).err().unwrap();
        assert!(
            err.0.contains("among 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12"),
            "{err}"
        );
        assert!(
            parse(&["--cases", "10"]).is_err(),
            "10 is the etcd comparison's"
        );
        let o = parse(&["--cases", "8,11,12"]).unwrap().unwrap();
        assert_eq!(o.cases, [8, 11, 12]);
        let all = parse(&[]).unwrap().unwrap().cases;
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]);
        let err = parse(&["--rounds"]).err().unwrap();
        assert!(err.0.contains("--rounds needs a number"), "{err}");
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn the_default_run_ends_with_the_etcd_comparison() {
        let etcd = |args: &[&str]| parse(args).unwrap().unwrap().etcd;
        assert_eq!(etcd(&[]), EtcdRun::After);
        assert_eq!(etcd(&["--update-readme"]), EtcdRun::After);
        assert_eq!(etcd(&["--etcd", "--rounds", "3"]), EtcdRun::Only);
        assert_eq!(etcd(&["--no-etcd"]), EtcdRun::Skip);
        assert_eq!(etcd(&["--cases", "5,8"]), EtcdRun::Skip);
        assert_eq!(etcd(&["--cases", "5", "--etcd"]), EtcdRun::Only);
        assert!(parse(&["--etcd", "--no-etcd"]).is_err());
    }

    #[test]
    fn a_comparison_is_a_run_of_its_own() {
        let o = parse(&["--compare-wasm", "b.wasm", "--rounds", "9"])
            .unwrap()
            .unwrap();
        assert_eq!(o.compare_wasm, Some(PathBuf::from("b.wasm")));
        assert_eq!(o.etcd, EtcdRun::Skip);
        for clash in [
            &["--compare-wasm", "b.wasm", "--host-costs"][..],
            &["--compare-wasm", "b.wasm", "--etcd"],
            &["--compare-wasm", "b.wasm", "--cases", "4"],
            &["--compare-wasm", "b.wasm", "--update-readme"],
            &["--host-costs", "--pacing"],
        ] {
            assert!(parse(clash).is_err(), "{clash:?}");
        }
        assert!(parse(&["--compare-wasm"]).is_err());
    }

    #[test]
    fn the_guest_share_is_a_run_of_its_own() {
        let o = parse(&["--guest-share", "--rounds", "3"]).unwrap().unwrap();
        assert!(o.guest_share);
        assert_eq!(o.etcd, EtcdRun::Skip);
        for clash in [
            &["--guest-share", "--compare-wasm", "b.wasm"][..],
            &["--guest-share", "--host-costs"],
            &["--guest-share", "--cases", "4"],
            &["--guest-share", "--update-readme"],
        ] {
            assert!(parse(clash).is_err(), "{clash:?}");
        }
    }
}
