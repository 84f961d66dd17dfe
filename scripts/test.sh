#!/bin/sh
# Runs every test: formatting, lints, doc links, the man page/script/unit checks of contrib,
# unit tests, integration tests with the real binaries, the real-kernel
# (user-mode-linux) suite, and a bounded fuzz pass. As root it first installs the
# Debian packages these need; see scripts/install-test-deps.sh.
set -eu
cd "$(dirname "$0")/.."

if [ -x scripts/install-test-deps.sh ]; then
    scripts/install-test-deps.sh
fi

cargo fmt --all -- --check
# Static, for the host's triple (scripts/cargo-static): the kernel suite copies the
# binaries into a guest root without libc, and the install test checks the shim is static.
scripts/cargo-static clippy --all-targets -- -D warnings
# The module docs are the map of the house (HACKING.md points into them): no dead links.
RUSTDOCFLAGS="${RUSTDOCFLAGS:+$RUSTDOCFLAGS }-D warnings" scripts/cargo-static doc --no-deps --quiet
scripts/cargo-static build --bins
scripts/check-contrib.sh
scripts/cargo-static test
scripts/fuzz.sh
