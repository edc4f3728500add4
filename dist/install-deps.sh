#!/bin/sh
# Installs the Debian packages mq needs to build and test, only those missing.
# Called by `make deps` (and so by `make test` / `make run`).
set -e
PKGS="gcc make pkg-config clang-format liburing-dev libbpf-dev libcap-dev libcjson-dev libsystemd-dev \
libpcre2-dev libxxhash-dev libutf8proc-dev libmicrohttpd-dev libcrypt-dev libseccomp-dev curl clang llvm \
libclang-rt-14-dev bpftool \
systemd haproxy"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "mq: installing missing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# Node.js and npm for the HTTP tests (the official openai client): Debian's packages, unless
# a node and npm are already there (NodeSource's nodejs ships its own npm).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "mq: installing Debian's nodejs and npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi

# The npm packages of tests/ (package-lock.json), when the lock file changed.
if [ ! -f tests/node_modules/.package-lock.json ] || [ tests/package-lock.json -nt tests/node_modules/.package-lock.json ]; then
    echo "mq: npm ci in tests/"
    (cd tests && npm ci --no-audit --no-fund --loglevel=error)
fi
