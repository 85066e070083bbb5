#!/usr/bin/env bash
# Shrinks the release filter in place with Binaryen's wasm-opt (-Os): the module every Envoy
# worker loads and compiles. Installs Debian's `binaryen` when wasm-opt is missing. Idempotent:
# a module this script already optimized (its SHA-256 in <module>.opt) is left as it is, so
# `just build` can run it every time; a module cargo rebuilt is optimized again.
#
# Usage: filter/wasm-opt.sh <module.wasm>
set -euo pipefail

die() {
    echo "wasm-opt.sh: error: $*" >&2
    exit 1
}

module="${1:?usage: filter/wasm-opt.sh <module.wasm>}"
[ -f "$module" ] || die "$module does not exist; build it first (cargo build --release --target wasm32-wasip1 -p retry-guard-filter)"
stamp="$module.opt"

if [ -f "$stamp" ] && [ "$(sha256sum "$module" | cut -d' ' -f1)" = "$(cat "$stamp")" ]; then
    exit 0
fi

if ! command -v wasm-opt >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        die "wasm-opt is not installed and this user cannot install Debian packages; install binaryen"
    fi
    echo "wasm-opt.sh: installing Debian's binaryen" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >&2 \
        || die "apt-get install binaryen failed"
fi

# Only the features rustc's wasm32-wasip1 output already uses: wasm-opt must not introduce
# instructions the module did not have (Envoy's V8 and host-sim's wasmtime run it).
tmp="$module.tmp"
wasm-opt -Os \
    --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int \
    "$module" -o "$tmp" || die "wasm-opt failed on $module"
mv "$tmp" "$module"
sha256sum "$module" | cut -d' ' -f1 >"$stamp"
