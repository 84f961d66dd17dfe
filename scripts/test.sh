#!/bin/sh
# Runs every test: formatting, lints, the man page/script/unit checks of contrib,
# unit tests, integration tests with the real binaries, the real-kernel
# (user-mode-linux) suite, and a bounded fuzz pass. As root it first installs the
# Debian packages these need; see scripts/install-test-deps.sh.
set -eu
cd "$(dirname "$0")/.."

if [ -x scripts/install-test-deps.sh ]; then
    scripts/install-test-deps.sh
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
scripts/check-contrib.sh
cargo test
scripts/fuzz.sh
