//! The host itself, with tiny WAT modules: unknown imports, traps, pairs marshalling, body
//! buffering, tick firing, shared data through the ABI.

use host_sim::abi::encode_pairs;
use host_sim::{Request, Runtime, Sim, SimConfig, Upstream};

const MINI: &str = r#"
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $sget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $sset (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 200) "tick")
  (data (i32.const 210) "key")
  (data (i32.const 220) "val")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func $log_status (param $s i32)
    ;; logs the status as one byte '0' + s
    (i32.store8 (i32.const 300) (i32.add (i32.const 48) (local.get $s)))
    (drop (call $log (i32.const 2) (i32.const 300) (i32.const 1))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 1000)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $log (i32.const 2) (i32.const 200) (i32.const 4))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $pairs (i32.const 0) (i32.const 100) (i32.const 104)))
    (drop (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    ;; shared data: missing key (1), set with a bogus CAS on a missing key (0: not checked),
    ;; read back (0), set with a stale CAS (8), set with the right CAS (0)
    (call $log_status (call $sget (i32.const 210) (i32.const 3) (i32.const 100) (i32.const 104) (i32.const 108)))
    (call $log_status (call $sset (i32.const 210) (i32.const 3) (i32.const 220) (i32.const 3) (i32.const 77)))
    (call $log_status (call $sget (i32.const 210) (i32.const 3) (i32.const 100) (i32.const 104) (i32.const 108)))
    (call $log_status (call $sset (i32.const 210) (i32.const 3) (i32.const 220) (i32.const 3) (i32.add (i32.load (i32.const 108)) (i32.const 5))))
    (call $log_status (call $sset (i32.const 210) (i32.const 3) (i32.const 220) (i32.const 0) (i32.load (i32.const 108))))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $id i32) (param $size i32) (param $eos i32) (result i32)
    (i32.store (i32.const 100) (i32.const 0))
    (i32.store (i32.const 104) (i32.const 0))
    (drop (call $buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 100) (i32.const 104)))
    (drop (call $log (i32.const 2) (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    (if (result i32) (local.get $eos) (then (i32.const 0)) (else (i32.const 1))))
)
"#;

fn sim(wat: &str) -> Sim {
    let rt = Runtime::from_bytes(wat.as_bytes(), "test.wat").expect("loads");
    Sim::new(&rt, SimConfig::default()).expect("starts")
}

fn messages(ex: &host_sim::Exchange) -> Vec<String> {
    ex.logs.iter().map(|l| l.message.clone()).collect()
}

#[test]
fn pairs_are_marshalled_byte_exact() {
    let sim = sim(MINI);
    let req = Request::new("GET", "/x")
        .header("X-Mixed-Case", "v")
        .header("x-request-id", "r1");
    let ex = sim.request(&req, &Upstream::ok()).expect("runs");
    let want = encode_pairs(&[
        (":authority", "retry-guard.test"),
        (":path", "/x"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-mixed-case", "v"),
        ("x-request-id", "r1"),
        ("x-forwarded-proto", "http"),
    ]);
    assert_eq!(ex.logs[0].message.as_bytes(), want.as_slice());
}

#[test]
fn shared_data_follows_envoys_cas_rules_through_the_abi() {
    let sim = sim(MINI);
    let ex = sim
        .request(&Request::new("GET", "/x"), &Upstream::ok())
        .expect("runs");
    // NotFound, Ok (CAS unchecked on a missing key), Ok, CasMismatch, Ok (empty value stored).
    assert_eq!(messages(&ex)[1..6], ["1", "0", "0", "8", "0"]);
    let (v, _) = host_sim::shared::lock(&sim.shared().data)
        .get(b"key")
        .expect("key stays");
    assert!(v.is_empty());
}

#[test]
fn paused_body_is_buffered_and_sizes_are_cumulative() {
    let sim = sim(MINI);
    let mut req = Request::new("POST", "/x");
    req.body = vec![b"ab".to_vec(), b"cd".to_vec(), b"ef".to_vec()];
    let ex = sim.request(&req, &Upstream::ok()).expect("runs");
    let logs = messages(&ex);
    assert_eq!(logs[6..], ["ab", "abcd", "abcdef"]);
    assert_eq!(ex.upstream.expect("received").body, b"abcdef");
}

#[test]
fn ticks_fire_in_every_vm_from_the_virtual_clock() {
    let sim = sim(MINI);
    sim.advance_ms(3_500);
    let ticks = sim.log().iter().filter(|l| l.message == "tick").count();
    assert_eq!(ticks, 9, "3 ticks in each of main, w0, w1");
    sim.advance_ms(500);
    let ticks = sim.log().iter().filter(|l| l.message == "tick").count();
    assert_eq!(ticks, 12);
}

#[test]
fn an_unknown_import_fails_at_load_naming_it() {
    let wat = r#"(module
        (import "env" "proxy_teleport" (func (param i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#;
    let err = Runtime::from_bytes(wat.as_bytes(), "bad.wat")
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("`env.proxy_teleport`"), "{msg}");
    assert!(msg.contains("missing import"), "{msg}");
}

#[test]
fn a_trap_names_the_callback_and_kills_the_vm() {
    let wat = MINI
        .replace(
            "(drop (call $pairs (i32.const 0) (i32.const 100) (i32.const 104)))",
            "(call $boom)",
        )
        .replace(
            "(func (export \"proxy_on_context_create\")",
            "(func $boom unreachable)\n  (func (export \"proxy_on_context_create\")",
        );
    let sim = sim(&wat);
    let ex = sim
        .request(&Request::new("GET", "/x"), &Upstream::ok())
        .expect("runs");
    let trap = ex.trap.clone().expect("trapped");
    assert_eq!(trap.callback, "proxy_on_request_headers");
    assert_eq!(trap.vm, "w0");
    assert!(!trap.backtrace.is_empty(), "{trap}");
    assert_eq!(
        (ex.status, ex.code_details.as_str()),
        (503, "wasm_fail_stream")
    );
    assert!(ex.upstream.is_none());
    // The VM is dead for later requests; the other worker still calls in (and traps too).
    let again = sim
        .request(&Request::new("GET", "/y"), &Upstream::ok())
        .expect("runs");
    assert_eq!(again.status, 503);
    assert!(again.trap.is_none(), "no new callback ran");
    assert!(sim.worker_failure(0).is_some());
    assert!(sim.worker_failure(1).is_none());
}

#[test]
fn a_module_without_the_abi_marker_is_refused() {
    let wat = r#"(module (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#;
    let msg = Runtime::from_bytes(wat.as_bytes(), "x.wat")
        .err()
        .expect("refused")
        .to_string();
    assert!(msg.contains("proxy_abi_version_0_2_1"), "{msg}");
}
