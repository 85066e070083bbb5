//! The plugin configuration (`Config::parse`): any bytes the operator (or a compromised
//! control plane) hands the VM at `proxy_on_configure`. A configuration that parses is then
//! matched against a request, so every path template and matcher it built runs once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retry_guard::config::Config;
use retry_guard::matcher::{Fact, LazyFacts};

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(config) => {
            for path in [
                "/oauth/token",
                "/v1/roles/r1/members",
                "/a/%2F/../b?x=1",
                "",
            ] {
                let mut facts = LazyFacts::new(|fact| {
                    Some(
                        match fact {
                            Fact::RouteName => "token",
                            Fact::Method => "POST",
                            Fact::Authority => "retry-guard.test",
                            Fact::Path => path,
                        }
                        .to_string(),
                    )
                });
                if let Some(i) = config.match_route_lazy(&mut facts) {
                    let route = &config.routes[i];
                    let _ = route.needs_ledger();
                }
            }
        }
        Err(e) => {
            // The operator's log line: must not panic, whatever the field path holds.
            let _ = e.to_string();
        }
    }
});
