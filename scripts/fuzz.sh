#!/bin/sh
# A short, bounded libFuzzer pass over the targets in fuzz/, on the stable toolchain:
# no nightly and no cargo-fuzz. It builds fuzz/ with plain cargo and the
# sanitizer-coverage flags cargo-fuzz would pass (minus -Zsanitizer=address, which
# needs nightly; the targets are safe Rust, so panics and failed asserts are what it
# finds), then runs each target for FUZZ_SECONDS. libfuzzer-sys compiles libFuzzer
# itself, so a C++ compiler (g++) is needed.
#
#   scripts/fuzz.sh                  # every target, 15 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh glob
#
# Everything goes to target/fuzz/ (its own CARGO_TARGET_DIR, so the main build is not
# disturbed): the binaries, the growing corpus target/fuzz/corpus/TARGET (seeded from
# the committed fuzz/corpus/TARGET, which is only read), logs/TARGET.log and crash
# inputs in artifacts/TARGET/. Replay one with
#   target/fuzz/HOST/release/TARGET target/fuzz/artifacts/TARGET/crash-...
# Exit status: 0 no target failed; 1 a target crashed, hung or failed to run; else cargo's.
set -eu
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-15}
case $seconds in
'' | *[!0-9]*)
    echo "fuzz: FUZZ_SECONDS must be a number of seconds, not '$seconds'" >&2
    exit 2
    ;;
esac
targets=${*:-decode event config glob}

out=$(pwd)/target/fuzz
export CARGO_TARGET_DIR="$out"
# An explicit --target keeps these flags off build scripts and proc-macros, and puts
# the binaries at a known path. No +crt-static here (libFuzzer's C++ runtime does not
# want it): this is plain cargo, not scripts/cargo-static. CARGO_ENCODED_RUSTFLAGS
# would win over RUSTFLAGS, so it must not be set.
host=$(rustc -vV | sed -n 's/^host: //p')
unset CARGO_ENCODED_RUSTFLAGS
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
RUSTFLAGS="$RUSTFLAGS -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
RUSTFLAGS="$RUSTFLAGS -Cllvm-args=-sanitizer-coverage-pc-table"
RUSTFLAGS="$RUSTFLAGS -Cllvm-args=-sanitizer-coverage-trace-compares"
RUSTFLAGS="$RUSTFLAGS -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers"
export RUSTFLAGS

echo "fuzz: building $targets for $host in $out"
bins=""
for t in $targets; do
    bins="$bins --bin $t"
done
# shellcheck disable=SC2086 # one word per flag
cargo build --manifest-path fuzz/Cargo.toml --release --target "$host" $bins

failed=0
for t in $targets; do
    corpus=$out/corpus/$t
    artifacts=$out/artifacts/$t
    log=$out/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$out/logs"
    seeds=""
    [ -d "fuzz/corpus/$t" ] && seeds=fuzz/corpus/$t
    # New inputs go to the first directory only; -timeout makes a hang a failure too.
    # timeout(1) is the backstop should libFuzzer itself not stop.
    status=0
    # shellcheck disable=SC2086 # $seeds: no word, or one directory without spaces
    timeout -s KILL $((seconds + 120)) "$out/$host/release/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$corpus" $seeds >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        echo "fuzz: $t: ok, ${runs:-?} runs in ${seconds}s, $cov, corpus $(find "$corpus" -type f | wc -l) inputs"
        continue
    fi
    failed=1
    echo "fuzz: $t: FAILED (exit $status); last lines of $log:" >&2
    tail -n 40 "$log" >&2
    input=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
    if [ -n "$input" ]; then
        echo "fuzz: $t: crashing input: $input" >&2
        echo "fuzz: $t: replay: $out/$host/release/$t $input" >&2
    fi
done

if [ "$failed" -ne 0 ]; then
    echo "fuzz: FAILED" >&2
    exit 1
fi
echo "fuzz: ok"
