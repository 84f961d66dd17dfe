#!/bin/sh
# Runs every test: formatting, lints, unit tests, integration tests with the real
# binaries, and the real-kernel (user-mode-linux) suite. As root it first installs the
# Debian packages the kernel suite needs; see scripts/install-test-deps.sh.
set -eu
cd "$(dirname "$0")/.."

if [ -x scripts/install-test-deps.sh ]; then
    scripts/install-test-deps.sh
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
scripts/check-contrib.sh
cargo test
