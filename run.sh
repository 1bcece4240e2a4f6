#!/usr/bin/env bash
# CloudTaser S3 proxy: one entry point for users, developers and CI.
#   ./run.sh          run the proxy; with VAULT_ADDR unset, an embedded local stack
#                     (OpenBao + SeaweedFS + the proxy on :8099, health on :8098)
#   ./run.sh test     run the test suite (extra arguments go to pytest)
#   ./run.sh bench    run the benchmark (bench/bench.py)
#   ./run.sh soak     the soak run: 10 minutes, 16 clients, every byte checked (docs/soak.md)
#   ./run.sh proxy    run only the proxy against the configured Vault and S3 (production path)
#   ./run.sh web      the same proxy under mitmweb, for interactive debugging (UI on 127.0.0.1:8081)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# CLOUDTASER_VENV: a finished virtualenv to use as it is (the container image's /opt/venv): run.sh
# then never creates it or installs into it. Unset: .venv here, created and kept up to date.
venv="${CLOUDTASER_VENV:-$here/.venv}"

# The newest CPython we can find: mitmproxy 12 needs 3.12+, 3.11 gets mitmproxy 11.0.x.
pick_python() {
    local c candidates=()
    if command -v pyenv >/dev/null 2>&1; then
        for c in "$(pyenv root)"/versions/3.1[1-9]*/bin/python3; do [ -x "$c" ] && candidates+=("$c"); done
    fi
    for c in python3.14 python3.13 python3.12 python3.11 python3; do
        command -v "$c" >/dev/null 2>&1 && candidates+=("$(command -v "$c")")
    done
    local best="" best_v=0 v
    for c in "${candidates[@]}"; do
        v=$("$c" -c 'import sys; print(sys.version_info[0]*100+sys.version_info[1])' 2>/dev/null) || continue
        if [ "$v" -ge 311 ] && [ "$v" -gt "$best_v" ]; then best="$c"; best_v="$v"; fi
    done
    [ -n "$best" ] || { echo "run.sh: no Python 3.11+ found" >&2; exit 1; }
    echo "$best"
}

ensure_venv() {
    if [ -n "${CLOUDTASER_VENV:-}" ]; then
        if [ ! -x "$venv/bin/mitmdump" ] || ! "$venv/bin/python" -c 'import cloudtaser_s3' 2>/dev/null; then
            echo "run.sh: CLOUDTASER_VENV=$venv has no cloudtaser_s3 and mitmdump installed" >&2
            exit 1
        fi
        return
    fi
    local stamp="$venv/.cloudtaser-installed"
    local want; want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
    if [ ! -x "$venv/bin/python" ]; then
        local py; py="$(pick_python)"
        echo "run.sh: creating .venv with $("$py" --version) ($py)" >&2
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >&2
    fi
    echo "run.sh: installing the package and test dependencies into .venv" >&2
    "$venv/bin/python" -m pip install -q -e ".[test]" >&2
    echo "$want" > "$stamp"
    "$venv/bin/python" -c 'import mitmproxy.version as v, sys; print(f"run.sh: Python {sys.version.split()[0]}, mitmproxy {v.VERSION}", file=sys.stderr)'
}

cmd="${1:-run}"
case "$cmd" in
    test)
        shift
        ensure_venv
        bash "$here/tests/clients/install.sh"   # the AWS CLI v2 and the Node SDK for client tests
        "$venv/bin/ruff" check addon tests bench
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        ensure_venv
        exec "$venv/bin/python" bench/bench.py "$@"
        ;;
    soak)
        shift
        ensure_venv
        exec "$venv/bin/python" tests/soak/soak.py "$@"
        ;;
    proxy)
        shift
        ensure_venv
        exec "$venv/bin/python" -m cloudtaser_s3 proxy "$@"
        ;;
    web)
        shift
        ensure_venv
        exec "$venv/bin/python" -m cloudtaser_s3 web "$@"
        ;;
    run)
        ensure_venv
        if [ -n "${VAULT_ADDR:-}" ]; then
            exec "$venv/bin/python" -m cloudtaser_s3 proxy
        fi
        exec "$venv/bin/python" -m cloudtaser_s3 devstack
        ;;
    *)
        echo "usage: ./run.sh [test [pytest args] | bench | soak [options] | proxy [mitmdump args] | web [mitmweb args]]" >&2
        exit 2
        ;;
esac
