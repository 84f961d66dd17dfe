#!/usr/bin/env bash
# CPU time per event, per daemon thread: the steady number under the noisy wall-clock ratios.
#
#   benches/cpu.sh [dispatch|intake] [ROUNDS] [N]
#   WORKERS=2 benches/cpu.sh dispatch   the same with `workers = 2` (one line per runner)
#
#   dispatch  N /bin/true handler runs (resume -> settle), next to the same number of
#             runs of the bare posix_spawn loop (benches/c/spawn_loop.c); default
#             5 rounds of 2000
#   intake    N events through the FIFO with no rules (benches/c/fifo_pump.c); default
#             3 rounds of 1000000
#
# Each daemon thread's CPU time comes from /proc/PID/task/TID/schedstat (nanoseconds on
# CPU, whatever else the machine does), divided by N; the bare loop's from `perf stat -e
# task-clock` when perf is installed. Wall-clock rates are printed too. Run benches/run.sh
# once first: it builds the release binaries and the C drivers in target/bench/bin.
set -euo pipefail
# Every side of a comparison starts with fds 0-2 only. An fd the caller leaked (a
# terminal multiplexer's, a CI runner's) would make each spawn of the bare loops copy a
# bigger fd table, and not the daemon's, which closes what it inherits. 255 is bash's own
# copy of this script.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHAT=${1:-dispatch}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/bench/bin
REL=$TARGET_DIR/${CARGO_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}/release
for f in "$REL/hotplugd" "$REL/hotplugctl" "$BIN/fifo_pump" "$BIN/spawn_loop"; do
    [ -x "$f" ] || { echo "cpu.sh: $f missing: run benches/run.sh --quick first" >&2; exit 1; }
done
case $WHAT in
dispatch) R=${2:-5} N=${3:-2000} ;;
intake) R=${2:-3} N=${3:-1000000} ;;
*) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

TMPBASE=/tmp
[ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && TMPBASE=/dev/shm
D=$(mktemp -d "$TMPBASE/hotplugd-cpu.XXXXXX")
DP=
cleanup() {
    # `|| true`: under set -e a failing last command of an && list (wait on a killed
    # daemon says 137) would end the trap before the rm, and leave the dir and its
    # FIFO holder behind.
    if [ -n "$DP" ]; then
        kill -KILL "$DP" 2>/dev/null || true
        wait "$DP" 2>/dev/null || true
    fi
    rm -rf "$D"
}
trap cleanup EXIT

echo 0 >"$D/seqnum"
printf '[daemon]\nseqnum_file = "%s"\ngap_timeout = "600s"\nsources = ["fifo"]\n' "$D/seqnum" >"$D/hotplugd.toml"
if [ "$WHAT" = dispatch ]; then
    printf 'workers = %s\n[[rule]]\nname = "true"\nrun = ["/bin/true"]\n' "${WORKERS:-1}" >>"$D/hotplugd.toml"
fi
ctl() { "$REL/hotplugctl" --runtime-dir "$D/run" "$@" >/dev/null; }
"$REL/hotplugd" --config "$D/hotplugd.toml" --runtime-dir "$D/run" --log-level error 2>"$D/log" &
DP=$!
for _ in $(seq 200); do ctl status 2>/dev/null && break; sleep 0.05; done
# comm and ns on CPU of every daemon thread.
threads() { for t in /proc/"$DP"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f1 "$t/schedstat")"; done; }
per_thread() { # BEFORE AFTER: "comm µs" per thread, and the sum
    paste "$1" "$2" | awk -v n="$N" '{d = ($4 - $2) / 1000 / n; s += d; printf "%s %.2f  ", $1, d} END {printf "| all %.2f µs/event\n", s}'
}

[ "$WHAT" = dispatch ] && ctl pause
seq0=1
for _ in $(seq 1 "$R"); do
    if [ "$WHAT" = dispatch ]; then
        read -r bare _ < <("$BIN/spawn_loop" "$N" /bin/true)
        bare_cpu=-
        if command -v perf >/dev/null; then
            ms=$(perf stat -x, -i -e task-clock "$BIN/spawn_loop" "$N" /bin/true 2>&1 >/dev/null | cut -d, -f1)
            bare_cpu=$(awk -v m="$ms" -v n="$N" 'BEGIN {printf "%.1f", m * 1000 / n}')
        fi
        "$BIN/fifo_pump" -s "$seq0" "$D/run/events" "$N" >/dev/null
        seq0=$((seq0 + N))
        sleep 0.3
        threads >"$D/before"
        t0=$(date +%s%N)
        ctl resume
        ctl settle --seq $((seq0 - 1)) --timeout 600
        t1=$(date +%s%N)
        threads >"$D/after"
        ctl pause
        awk -v b="$bare" -v a="$t0" -v z="$t1" -v n="$N" -v c="$bare_cpu" 'BEGIN {
            d = (z - a) / 1000 / n
            printf "round: bare loop %.1f µs/run (its own CPU %s µs/run); hotplugd %.1f µs/run, ratio %.3f\n", b, c, d, b / d }'
    else
        threads >"$D/before"
        read -r t0 _ t1 n _ < <("$BIN/fifo_pump" -s "$seq0" "$D/run/events" "$N" \
            "$REL/hotplugctl" --runtime-dir "$D/run" settle --seq $((seq0 + N - 1)) --timeout 600)
        seq0=$((seq0 + N))
        threads >"$D/after"
        awk -v a="$t0" -v z="$t1" -v n="$n" 'BEGIN {printf "round: %.3f M events/s\n", n / ((z - a) / 1e9) / 1e6}'
    fi
    printf '  daemon CPU per event: '
    per_thread "$D/before" "$D/after"
done
