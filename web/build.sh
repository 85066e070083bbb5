#!/usr/bin/env bash
# Builds the pages' policy core: web/ for wasm32-unknown-unknown (release), then the ES module
# and its wasm with wasm-bindgen into web/www/pkg/. Prints the wasm's size (and gzipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q --release --target wasm32-unknown-unknown -p retry-guard-web
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
    --out-dir web/www/pkg \
    target/wasm32-unknown-unknown/release/retry_guard_web.wasm
wasm=web/www/pkg/retry_guard_web_bg.wasm
echo "web/www/pkg: $(stat -c %s "$wasm") bytes of wasm ($(gzip -9c "$wasm" | wc -c) gzipped)"
