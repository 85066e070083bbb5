#!/usr/bin/env bash
# Installs etcd (Debian's `etcd-server` package, 3.4) for the cluster-ledger tests and demos,
# when it is missing. Idempotent; prints the binary path on success.
#
# Environment:
#   RETRY_GUARD_ETCD   an etcd binary to use instead (then nothing is installed)
set -euo pipefail

die() {
    echo "install-etcd: error: $*" >&2
    exit 1
}

if [ -n "${RETRY_GUARD_ETCD:-}" ]; then
    [ -x "${RETRY_GUARD_ETCD}" ] || die "RETRY_GUARD_ETCD=${RETRY_GUARD_ETCD} is not an executable"
    echo "${RETRY_GUARD_ETCD}"
    exit 0
fi

if ! command -v etcd >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        die "etcd is not installed and this user cannot install Debian packages; install etcd-server (3.4) or set RETRY_GUARD_ETCD"
    fi
    echo "install-etcd: installing Debian's etcd-server" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        || die "apt-get update failed"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2 \
        || die "apt-get install etcd-server failed"
    # The package starts a system etcd on the default ports; the tests start their own on
    # other loopback ports, so stop that one where a service manager runs it.
    if command -v systemctl >/dev/null 2>&1; then
        $sudo systemctl stop etcd >/dev/null 2>&1 || true
    fi
fi

bin="$(command -v etcd)"
"${bin}" --version >/dev/null 2>&1 || die "${bin} --version failed"
echo "${bin}"
