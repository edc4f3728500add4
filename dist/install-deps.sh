#!/bin/sh
# Installs the Debian packages mq needs to build and test, only those missing.
# Called by `make deps` (and so by `make test` / `make run`).
set -e
PKGS="gcc make pkg-config clang-format liburing-dev libbpf-dev libcap-dev libcjson-dev libsystemd-dev \
libpcre2-dev libxxhash-dev libutf8proc-dev libmicrohttpd-dev clang llvm libclang-rt-14-dev bpftool systemd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "mq: installing missing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
