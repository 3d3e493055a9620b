#!/usr/bin/env bash
# The Debian packages the tests use beside Python: PostgreSQL's binaries (a real catalog server) and
# chromium (the console's browser tests, driven by Playwright; no browser download). `make test` and
# `.ci/run` both call this, so a fresh machine gets the same packages either way. Installs with
# apt-get what is missing when running as root; otherwise stops in one line naming the command.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "the tests need ${missing[*]}: run \`sudo apt-get install -y ${missing[*]}\` (Debian or Ubuntu), then make test again" >&2
    exit 1
fi
echo "installing ${missing[*]} with apt-get (the tests use them)"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
