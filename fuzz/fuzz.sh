#!/usr/bin/env bash
# retry-guard's coverage-guided fuzzing (cargo-fuzz, libFuzzer). One fuzzer at a time, one
# process (no -jobs/-workers fan-out): the machine is shared. Built without AddressSanitizer
# (`-s none`, about 4x the executions; the filter has no unsafe code), with cargo-fuzz's
# debug assertions and overflow checks on.
#
#   fuzz.sh setup                      nightly toolchain and cargo-fuzz, when missing
#   fuzz.sh seed                       (re)write the seed corpora from testdata (fuzz/seeds/)
#   fuzz.sh run [target|all] [secs]    fuzz each target for secs (default 60) on fuzz/corpus/
#   fuzz.sh smoke [secs]               build, then each target for secs (default 3) on its
#                                      seeds in a scratch corpus: they build, the seeds pass
#   fuzz.sh campaign [target...]       each target (default: all) once, to 10 million
#                                      executions or 30 minutes; writes its results to
#                                      fuzz/campaign/<target>.tsv and the table in README.md
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

CAMPAIGN_RUNS=${CAMPAIGN_RUNS:-10000000}
CAMPAIGN_SECONDS=${CAMPAIGN_SECONDS:-1800}

setup() {
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
}

targets() {
    cargo +nightly fuzz list
}

SANITIZER=${FUZZ_SANITIZER:-none}

build() {
    cargo +nightly fuzz build -s "$SANITIZER" "$@"
}

seed() {
    cargo +nightly run -q --example seed
}

# The dictionary for targets that read JSON.
dict_for() {
    case "$1" in
        config | json | etcd | canonical) echo "-dict=seeds/json.dict" ;;
    esac
}

# run_one TARGET CORPUS_DIR LOG [libFuzzer flags...]: fuzz TARGET from CORPUS_DIR (new
# inputs go there) and its seeds; the output to LOG. Returns libFuzzer's exit status.
run_one() {
    local t=$1 corpus=$2 log=$3
    shift 3
    mkdir -p "$corpus" "artifacts/$t"
    local seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    # shellcheck disable=SC2046
    cargo +nightly fuzz run -s "$SANITIZER" "$t" "$corpus" "${seeds[@]}" -- \
        $(dict_for "$t") -print_final_stats=1 "$@" >"$log" 2>&1
}

select_targets() {
    if [ $# -eq 0 ] || [ "$1" = all ]; then targets; else printf '%s\n' "$@"; fi
}

cmd=${1:-run}
shift || true
case "$cmd" in
setup) setup ;;
seed)
    setup
    seed
    ;;
run)
    setup
    target=${1:-all}
    secs=${2:-60}
    build
    [ -f seeds/json.dict ] || seed
    for t in $(select_targets "$target"); do
        echo "== $t: ${secs}s"
        log=$(mktemp)
        if run_one "$t" "corpus/$t" "$log" -max_total_time="$secs"; then
            grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || tail -3 "$log"
            rm -f "$log"
        else
            tail -40 "$log"
            echo "fuzz target $t failed; its input is in fuzz/artifacts/$t/ (log: $log)" >&2
            exit 1
        fi
    done
    ;;
smoke)
    setup
    secs=${1:-3}
    start=$(date +%s)
    build
    # The seeds are written from testdata (not committed): a fresh clone has none.
    seed
    echo "fuzz targets built and seeded in $(($(date +%s) - start)) s"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    for t in $(targets); do
        if ! run_one "$t" "$scratch/$t" "$scratch/$t.log" -max_total_time="$secs"; then
            tail -40 "$scratch/$t.log"
            echo "fuzz smoke: target $t failed; its input is in fuzz/artifacts/$t/" >&2
            exit 1
        fi
        echo "fuzz smoke $t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" | tail -1)"
    done
    echo "fuzz smoke: every target, $(($(date +%s) - start)) s in all"
    ;;
campaign)
    setup
    build
    seed
    mkdir -p campaign
    for t in $(select_targets "$@"); do
        echo "== $t: up to $CAMPAIGN_RUNS executions or $CAMPAIGN_SECONDS s"
        log="campaign/$t.log"
        start=$(date +%s)
        status=0
        run_one "$t" "corpus/$t" "$log" -runs="$CAMPAIGN_RUNS" \
            -max_total_time="$CAMPAIGN_SECONDS" || status=$?
        secs=$(($(date +%s) - start))
        bash scripts/results.sh "$t" "$log" "$secs" "$status" >"campaign/$t.tsv"
        cat "campaign/$t.tsv"
    done
    bash scripts/table.sh
    ;;
*)
    echo "usage: fuzz.sh setup|seed|run [target] [secs]|smoke [secs]|campaign [target...]" >&2
    exit 2
    ;;
esac
