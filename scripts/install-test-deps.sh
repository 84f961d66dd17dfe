#!/bin/sh
# Installs the Debian packages the real-kernel test (tests/kernel/) needs:
#   user-mode-linux  a Linux kernel that runs as an ordinary process (linux.uml + modules)
#   uml-utilities    uml_mconsole, to hot-add/remove a block device from the host
#   busybox-static   a libc-free userland for the guest's hostfs root
# and those scripts/check-contrib.sh needs for the man pages and contrib/:
#   mandoc           mandoc -Tlint of the man pages
#   groff-base       groff -ww of the man pages
#   systemd          systemd-analyze verify of the units (nothing is started)
# and the package of the same name for the shellcheck of the scripts, and
#   chromium         headless, renders the SVG of hotplugctl timeline (tests/ctl.rs)
# Idempotent: does nothing when all are present. Not root and something missing:
# says why and exits 0 (tests/kernel/ and scripts/check-contrib.sh then
# skip, or fail under CI=true).
set -eu

PACKAGES="user-mode-linux uml-utilities busybox-static shellcheck mandoc groff-base systemd chromium"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $pkg" ;;
    esac
done

if [ -z "$missing" ]; then
    echo "install-test-deps: all present ($PACKAGES)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing:$missing; not root, so not installing (the kernel test will skip)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing:$missing; no apt-get on this machine (the kernel test will skip)" >&2
    exit 0
fi

echo "install-test-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y --no-install-recommends $missing
