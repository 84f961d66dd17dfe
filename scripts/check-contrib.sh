#!/bin/sh
# Checks what packagers and init systems get, beyond the Rust code:
#   - man/*.[58]: clean under `mandoc -Tlint` and `groff -man -ww -z`, with the sections
#     every page must have (and SIGNALS in hotplugd(8));
#   - every shell script in contrib/ and scripts/: `sh -n` and `shellcheck`, and
#     executable;
#   - contrib/systemd/*: `systemd-analyze verify` on copies whose /usr/local/sbin/ paths
#     point at the built binaries (target/TRIPLE/debug, TRIPLE the host's, where
#     scripts/cargo-static puts them), or at stubs when nothing is built yet: verify
#     only checks that the commands exist.
# tests/contrib.rs covers the rest (handlers against fake events, make install).
#
# A missing tool skips its check with the reason, except under CI=true, where it fails.
# scripts/install-test-deps.sh installs them all (shellcheck, mandoc, groff-base, systemd).
# Exit status: 0 all checks passed or skipped; 1 something failed.
set -eu
cd "$(dirname "$0")/.."

failed=0
fail() {
    printf 'check-contrib: FAIL: %s\n' "$*" >&2
    failed=1
}
# tool, Debian package: true if the tool is there; else fail (CI) or skip.
need() {
    if command -v "$1" >/dev/null 2>&1; then
        return 0
    fi
    if [ "${CI:-}" = true ]; then
        fail "$1 not found (Debian package $2; scripts/install-test-deps.sh installs it)"
    else
        echo "check-contrib: SKIP: $1 checks: $1 not found (Debian package $2)"
    fi
    return 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# --- man pages ------------------------------------------------------------------------
pages="man/hotplug.8 man/hotplugd.8 man/hotplugctl.8 man/hotplugd.toml.5"
for page in $pages; do
    for section in NAME SYNOPSIS DESCRIPTION FILES ENVIRONMENT "EXIT STATUS" EXAMPLES \
        "SEE ALSO"; do
        grep -qx "\\.SH $section" "$page" || fail "$page: no $section section"
    done
done
grep -qx '\.SH SIGNALS' man/hotplugd.8 || fail "man/hotplugd.8: no SIGNALS section"

if need mandoc mandoc; then
    for page in $pages; do
        # Whether a page named in SEE ALSO is installed here says nothing about ours.
        out=$(mandoc -Tlint "$page" 2>&1 | grep -v 'referenced manual not found' || true)
        [ -z "$out" ] || fail "mandoc -Tlint $page:
$out"
    done
    echo "check-contrib: mandoc -Tlint: $pages"
fi
if need groff groff-base; then
    for page in $pages; do
        out=$(groff -man -ww -z "$page" 2>&1 || echo "groff exited $?")
        [ -z "$out" ] || fail "groff -man -ww -z $page:
$out"
    done
    echo "check-contrib: groff -man -ww -z: $pages"
fi

# --- shell scripts --------------------------------------------------------------------
scripts=$(
    find contrib scripts -type f | LC_ALL=C sort | while read -r f; do
        case $(head -n 1 "$f") in
        '#!'*) echo "$f" ;;
        esac
    done
)
[ -n "$scripts" ] || fail "no shell scripts found in contrib/ and scripts/"
for f in $scripts; do
    [ -x "$f" ] || fail "$f has a #! line but is not executable"
    sh -n "$f" || fail "sh -n $f"
done
echo "check-contrib: sh -n: $(printf '%s\n' "$scripts" | wc -l) scripts in contrib/ and scripts/"
if need shellcheck shellcheck; then
    # shellcheck disable=SC2086 # one argument per script
    if shellcheck $scripts; then
        echo "check-contrib: shellcheck: clean"
    else
        fail "shellcheck (see above)"
    fi
fi

# --- systemd units --------------------------------------------------------------------
if need systemd-analyze systemd; then
    bin=$(pwd)/target/$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')/debug
    if [ ! -x "$bin/hotplugd" ] || [ ! -x "$bin/hotplugctl" ] || [ ! -x "$bin/hotplug" ]; then
        bin=$tmp/sbin
        mkdir "$bin"
        for b in hotplug hotplugd hotplugctl; do
            printf '#!/bin/sh\nexit 0\n' >"$bin/$b"
            chmod 0755 "$bin/$b"
        done
        echo "check-contrib: binaries not built yet: the units' commands point at stubs"
    fi
    mkdir "$tmp/units"
    for unit in contrib/systemd/*.service contrib/systemd/*.socket; do
        sed "s|/usr/local/sbin/|$bin/|g" "$unit" >"$tmp/units/${unit##*/}"
    done
    # verify prints problems and still exits 0; any line about our units is a failure.
    # --man=no: the man pages are not installed here. Lines about the host's own units
    # (a container's odd /lib/systemd) are shown but do not count.
    out=$(cd "$tmp/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no \
        --recursive-errors=no ./*.service ./*.socket 2>&1) || fail "systemd-analyze verify exited $?"
    ours=$(printf '%s\n' "$out" | grep -e "$tmp" -e hotplugd || true)
    if [ -n "$ours" ]; then
        fail "systemd-analyze verify:
$ours"
    elif [ -n "$out" ]; then
        printf 'check-contrib: systemd-analyze verify, not about our units:\n%s\n' "$out"
    fi
    echo "check-contrib: systemd-analyze verify:" contrib/systemd/*
fi

if [ "$failed" -ne 0 ]; then
    echo "check-contrib: FAILED" >&2
    exit 1
fi
echo "check-contrib: ok"
