#!/usr/bin/env bash
# Installs what the web pages (web/) and their browser tests need, when it is missing:
#   - the wasm32-unknown-unknown target;
#   - wasm-bindgen-cli at exactly the version web/Cargo.toml pins for wasm-bindgen (the JS glue
#     and the test runner must match the library), from crates.io;
#   - with --browser: Debian's chromium and chromium-driver (headless browser tests).
# Idempotent: every step checks first. Prints what it installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
    || rustup target add wasm32-unknown-unknown

version=$(sed -n 's/^wasm-bindgen = "=\([0-9.]*\)".*/\1/p' web/Cargo.toml)
if [ -z "$version" ]; then
    echo "web/setup.sh: no exact wasm-bindgen pin (wasm-bindgen = \"=X.Y.Z\") in web/Cargo.toml" >&2
    exit 1
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
    echo "installing wasm-bindgen-cli $version (matches the wasm-bindgen pin)"
    # Not --locked: the crate's lock file names a webpki-roots release crates.io no longer serves.
    cargo install wasm-bindgen-cli --version "$version" --force
fi

if [ "${1:-}" = "--browser" ]; then
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        echo "installing chromium and chromium-driver (Debian packages)"
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
    fi
fi
