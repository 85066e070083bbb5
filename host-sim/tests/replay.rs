//! Recordings for the V8 replay (`just bench-v8`): every benchmark path records with each
//! host write placed where a replayed guest can reproduce it.

use host_sim::bench::{record, PATHS};

fn imports(cbs: &[host_sim::replay::Callback]) -> Vec<&str> {
    cbs.iter()
        .flat_map(|c| c.calls.iter().map(|h| h.import.as_str()))
        .collect()
}

#[test]
fn every_path_records_a_replayable_request() {
    let wasm = retry_guard::paths::filter_wasm();
    let recs = record(&wasm, None).expect("build the filter first: just build");
    assert_eq!(recs.len(), PATHS.len());
    for r in &recs {
        let exports: Vec<&str> = r.request.iter().map(|c| c.export.as_str()).collect();
        assert_eq!(
            exports.first(),
            Some(&"proxy_on_context_create"),
            "{}",
            r.path
        );
        assert_eq!(exports.last(), Some(&"proxy_on_delete"), "{}", r.path);
        assert!(
            r.setup.iter().any(|c| c.export == "proxy_on_configure"),
            "{}: the VM's start is recorded",
            r.path
        );
    }
    let replay = recs
        .iter()
        .find(|r| r.path == "replay_428")
        .expect("428 path");
    assert_eq!(replay.status, 428);
    assert!(imports(&replay.request).contains(&"proxy_send_local_response"));
    // The pointer the host hands over is kept relative to the buffer it allocated.
    let property = replay
        .request
        .iter()
        .flat_map(|c| &c.calls)
        .find(|h| h.import == "proxy_get_property")
        .expect("the route name is read");
    assert_eq!(property.allocs.len(), 1);
    assert!(property.writes.iter().any(|w| w.pointer_to == Some((0, 0))));
}

#[test]
fn a_path_records_the_same_way_twice() {
    // The replayer answers from one recording; the sim's clock and random source are its own,
    // so the same path must record identically.
    let wasm = retry_guard::paths::filter_wasm();
    let a = record(&wasm, Some("token_issuing_allow")).expect("records");
    let b = record(&wasm, Some("token_issuing_allow")).expect("records");
    let text = |r: &host_sim::bench::Recording| serde_json::to_string(&r.request).expect("json");
    assert_eq!(text(&a[0]), text(&b[0]));
    assert!(imports(&a[0].request).contains(&"proxy_set_shared_data"));
}

#[test]
fn an_unknown_path_is_refused_by_name() {
    let wasm = retry_guard::paths::filter_wasm();
    let err = record(&wasm, Some("replay428")).unwrap_err();
    assert!(
        err.contains("no such path") && err.contains("replay_428"),
        "{err}"
    );
}
