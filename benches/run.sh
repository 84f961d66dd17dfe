#!/usr/bin/env bash
# hotplugd benchmark harness. One command:
#
#   benches/run.sh [--quick] [--only LIST] [--rounds R] [--update] [--profile]
#
#   --quick      small sizes (tens of seconds in all); same code paths, for CI
#   --only LIST  comma-separated subset of: shim,storm,intake,dispatch,memory
#   --rounds R   interleaved rounds for shim/intake/dispatch (default 32/5/7, quick 2/1/2)
#   --update     also replace the generated section of BENCHMARKS.md with this run
#   --profile    also record one intake run of the daemon with perf (if installed) into
#                target/bench/intake-perf.txt
#
# Needs root (mdev storm: private mount + pid namespace; apt-get for busybox-static when
# missing), gcc, cargo. Builds the release binaries and the C helpers in benches/c/
# itself. Prints a table and writes BENCHMARKS.md-ready rows to target/bench/results.md
# (under $CARGO_TARGET_DIR if set).
# BENCH_DAEMON_EXTRA, if set, is added to the [daemon] table of every bench config, to
# measure a setting's cost: BENCH_DAEMON_EXTRA=$'device_db = false\n' benches/run.sh ...
# Machines are noisy: every comparison is made within one run, as a ratio of medians
# of interleaved rounds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
ONLY=shim,storm,intake,dispatch,memory
ROUNDS=
UPDATE=0
PROFILE=0
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --rounds) ROUNDS=$2; shift ;;
    --rounds=*) ROUNDS=${1#--rounds=} ;;
    --update) UPDATE=1 ;;
    --profile) PROFILE=1 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    SHIM_N=200 SHIM_R=${ROUNDS:-2}
    STORM_N=500
    INTAKE_N=50000 INTAKE_R=${ROUNDS:-1}
    # K as in a full run: marks_wait looks every 0.2 s, and the runner must not pass the
    # next window's marks (K apart) before the pause lands.
    DISP_K=1000 DISP_Q=20000 DISP_R=${ROUNDS:-2}
    MEM_A=5000 MEM_B=20000
else
    # Many short rounds rather than few long ones: the VM's speed drifts by ±10 % over
    # seconds, and only what runs close together in time compares well.
    SHIM_N=250 SHIM_R=${ROUNDS:-32}
    STORM_N=20000
    INTAKE_N=1000000 INTAKE_R=${ROUNDS:-5}
    DISP_K=1000 DISP_Q=1000000 DISP_R=${ROUNDS:-7}
    MEM_A=100000 MEM_B=1000000
fi
STORM_JOBS=64
NPROC=$(nproc)

log() { printf '%s\n' "$*" >&2; }
die() { log "run.sh: $*"; exit 1; }
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

[ "$(id -u)" = 0 ] || die "run as root (namespaces for the mdev storm, apt-get)"

# ---------------------------------------------------------------- dependencies
need_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
}
need_pkg gcc gcc
need_pkg unshare util-linux
if want storm; then
    # busybox-static, not the dynamic busybox: mdev runs as a helper in a bare /etc.
    if ! command -v busybox >/dev/null || ! file -L "$(command -v busybox)" 2>/dev/null | grep -q 'statically linked'; then
        command -v file >/dev/null || need_pkg file file
        log "installing busybox-static"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null; }
    fi
fi

# ---------------------------------------------------------------- build
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUTDIR=$TARGET_DIR/bench
BIN=$OUTDIR/bin
mkdir -p "$BIN"
log "building static release binaries (scripts/cargo-static build --release)"
(cd "$ROOT" && scripts/cargo-static build --release --bins --quiet) || die "cargo build failed"
BUILT=$TARGET_DIR/${CARGO_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}/release
for b in hotplug hotplugd hotplugctl; do [ -x "$BUILT/$b" ] || die "missing $BUILT/$b"; done
# Every program is run from a copy, as a package or install(1) puts it: here a file fresh
# from the linker, gcc's or Rust's, execs ~10 % slower than the same bytes copied (the
# shim 579-597 vs 513-527 µs per process, the C nop 467-517 vs 443-466), and by amounts
# that differ from one program to the next.
REL=$OUTDIR/installed
mkdir -p "$REL" "$BIN/.build"
install -m 0755 "$BUILT/hotplug" "$BUILT/hotplugd" "$BUILT/hotplugctl" "$REL/"
CTL=$REL/hotplugctl
for p in nop shim handler spawn_loop fifo_read fifo_pump storm; do
    gcc -O2 -Wall -static -pthread -I "$ROOT/benches/c" -o "$BIN/.build/$p" "$ROOT/benches/c/$p.c" ||
        die "gcc $p.c failed"
    install -m 0755 "$BIN/.build/$p" "$BIN/$p"
done

# ---------------------------------------------------------------- housekeeping
# The runtime dirs live on a tmpfs, as /run does on a real system: the daemon reads
# every event into its journal there, and a disk filesystem would measure the disk.
TMPBASE=/tmp
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ]; then TMPBASE=/dev/shm; fi
WORK=$(mktemp -d "$TMPBASE/hotplugd-bench.XXXXXX")
# The storm's own files stay off /dev: the mdev variant mounts a private tmpfs over /dev.
# Its hotplugd runtime dir is still under $WORK.
STORMWORK=$(mktemp -d /tmp/hotplugd-bench-storm.XXXXXX)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# Only our own background jobs still in bash's job table (daemons, readers, perf) are
# killed, by pid; the storm's namespaces die with their init (--kill-child).
cleanup() {
    local p
    for p in $(jobs -p); do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK" "$STORMWORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
calc() { awk "BEGIN {printf \"%.${2:-2}f\", $1}"; }
okmiss() { if awk "BEGIN {exit !($1)}"; then echo met; else echo MISSED; fi; }
join_sp() { local IFS=' '; echo "$*"; }
join_by() { local sep=$1 out=$2; shift 2; for x in "$@"; do out+="$sep$x"; done; echo "$out"; }
status_field() { "$CTL" --runtime-dir "$1/run" status --json 2>/dev/null | grep -o "\"$2\":[^,}]*" | cut -d: -f2 || true; }

# start_daemon DIR CONFIG LEVEL: runtime dir DIR/run, log DIR/daemon.log, pid in DPID.
start_daemon() {
    rm -rf "$1/run"
    "$REL/hotplugd" --config "$2" --runtime-dir "$1/run" --log-level "$3" 2>"$1/daemon.log" &
    DPID=$!
    local i
    for i in $(seq 1 400); do
        "$CTL" --runtime-dir "$1/run" status >/dev/null 2>&1 && return 0
        kill -0 "$DPID" 2>/dev/null || { cat "$1/daemon.log" >&2; die "hotplugd exited at start"; }
        sleep 0.025
    done
    die "hotplugd not ready after 10 s"
}
stop_daemon() { # SIGNAL
    kill "-$1" "$DPID" 2>/dev/null || true
    wait "$DPID" 2>/dev/null || true
}
wait_field() { # DIR FIELD VALUE TIMEOUT_S
    local i v
    for i in $(seq 1 $(($4 * 10))); do
        v=$(status_field "$1" "$2")
        [ "${v:-0}" -ge "$3" ] && return 0
        sleep 0.1
    done
    die "timed out waiting for $2 >= $3 (have ${v:-?})"
}
# daemon_header DIR GAP: the [daemon] table of a bench config (stdout). The daemon reads
# the "kernel's" SEQNUM 0 from DIR/seqnum, so events numbered from 1 are in order. The
# FIFO only: the benches feed it, and the host's own netlink events must not mix in.
daemon_header() {
    echo 0 >"$1/seqnum"
    printf '[daemon]\nseqnum_file = "%s"\ngap_timeout = "%s"\nsources = ["fifo"]\n%s' "$1/seqnum" "$2" "${BENCH_DAEMON_EXTRA:-}"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

RESULTS=()    # markdown lines
TARGETS=()    # markdown table rows
emit() { RESULTS+=("$*"); }

log "work dir $WORK; quick=$QUICK"

# ================================================================ 1. shim
SHIM_HOTPLUG_US='' SHIM_HANDLER_US=''
bench_shim() {
    local d=$WORK/shim
    mkdir -p "$d"
    "$BIN/fifo_read" "$d/events" 0 "$d/ready" >"$d/drain.out" &
    local drain=$!
    while [ ! -e "$d/ready" ]; do sleep 0.01; done
    local names=(nop cshim hotplug handler true)
    local -A cmd=(
        [nop]="$BIN/nop usb"
        [cshim]="$BIN/shim usb"
        [hotplug]="$REL/hotplug usb"
        [handler]="$BIN/handler $d/handler.out"
        [true]="/bin/true usb"
    )
    local -A res=()
    local r i k name line
    log "shim: $SHIM_R rounds x $SHIM_N execs of ${#names[@]} programs"
    for r in $(seq 1 "$SHIM_R"); do
        for i in $(seq 0 $((${#names[@]} - 1))); do
            k=$(((i + r - 1) % ${#names[@]}))  # rotate the order every round
            name=${names[$k]}
            # shellcheck disable=SC2086
            line=$(HOTPLUGD_RUNTIME_DIR=$d "$BIN/spawn_loop" "$SHIM_N" ${cmd[$name]})
            set -- $line
            [ "$2" = 0 ] || die "shim: $name exited non-zero $2 times"
            res[$name]="${res[$name]:-} $1"
        done
    done
    kill -TERM "$drain"
    wait "$drain" || true
    local frames
    frames=$(awk '{print $2}' "$d/drain.out")
    [ "$frames" = $((2 * SHIM_R * SHIM_N)) ] || die "shim: reader got $frames frames, want $((2 * SHIM_R * SHIM_N))"
    [ ! -d "$d/spool" ] || [ -z "$(ls -A "$d/spool")" ] || die "shim: events were spooled"
    local -A med
    for name in "${names[@]}"; do med[$name]=$(calc "$(median ${res[$name]})" 1); done
    SHIM_HOTPLUG_US=${med[hotplug]} SHIM_HANDLER_US=${med[handler]}
    local ratio_c
    ratio_c=$(calc "${med[hotplug]} / ${med[cshim]}")
    emit "### 1. Shim: whole process per event (exec → exit)"
    emit ""
    emit "posix_spawn + wait from a small static C driver (benches/c/spawn_loop.c), $SHIM_N execs per"
    emit "round, $SHIM_R interleaved rounds (order rotated), 11-variable USB helper environment, a C"
    emit "reader draining the FIFO (1 MiB pipe). $((2 * SHIM_R * SHIM_N)) messages arrived, none spooled."
    emit ""
    emit "| program | µs/exec per round | median µs | vs static C shim | vs static nop |"
    emit "| --- | --- | --- | --- | --- |"
    local -A label=(
        [nop]="static C \`return 0\` (benches/c/nop.c)"
        [cshim]="static C shim, same job (benches/c/shim.c)"
        [hotplug]="**hotplug** (ours, static-pie Rust)"
        [handler]="static C handler, appends a line (benches/c/handler.c)"
        [true]="/bin/true (dynamic)"
    )
    for name in "${names[@]}"; do
        emit "| ${label[$name]} | $(join_sp ${res[$name]}) | ${med[$name]} | $(calc "${med[$name]} / ${med[cshim]}") | $(calc "${med[$name]} / ${med[nop]}") |"
    done
    emit ""
    emit "| binary | bytes | stripped bytes |"
    emit "| --- | --- | --- |"
    local b
    for b in "$REL/hotplug" "$REL/hotplugd" "$REL/hotplugctl" "$BIN/shim"; do
        strip -o "$d/stripped" "$b"
        emit "| $(basename "$b")$([ "$b" = "$BIN/shim" ] && echo ' (C)') | $(stat -c %s "$b") | $(stat -c %s "$d/stripped") |"
    done
    emit ""
    TARGETS+=("| shim ≤ 1.10x the static C shim | ${ratio_c}x (${med[hotplug]} vs ${med[cshim]} µs; nop ${med[nop]} µs) | $(okmiss "$ratio_c <= 1.10") |")
}

# ================================================================ 2. storm
# storm_cgroup VARIANT: make a fresh pids cgroup (v1 or v2) and print its path, or nothing.
storm_cgroup() {
    local base=
    if [ -d /sys/fs/cgroup/pids ]; then
        base=/sys/fs/cgroup/pids
    elif [ -f /sys/fs/cgroup/cgroup.subtree_control ] && grep -qw pids /sys/fs/cgroup/cgroup.subtree_control; then
        base=/sys/fs/cgroup
    fi
    [ -n "$base" ] || return 0
    local cg=$base/hotplugd-bench-$1-$$
    mkdir "$cg" 2>/dev/null && [ -f "$cg/pids.peak" ] && echo "$cg" && return 0
    rmdir "$cg" 2>/dev/null || true
}
bench_storm() {
    local variant line t0 treap peak failed stats
    local -A rate wall
    log "storm: N=$STORM_N, $STORM_JOBS helpers in flight, variants hotplugd mdev legacy"
    emit "### 2. Storm: $STORM_N events, $STORM_JOBS helpers in flight, one handler run per event"
    emit ""
    emit "A C driver (benches/c/storm.c) posix_spawns the helper for SEQNUM 1..N in order, at most"
    emit "$STORM_JOBS at a time, reaping whichever ends (the kernel's UMH_NO_WAIT, bounded). Every variant"
    emit "runs the same static C handler, which appends \"SEQNUM time\" to a file. Wall time = driver start"
    emit "→ the last handler's timestamp; helpers done = until the driver reaped the last helper. Each"
    emit "variant runs in its own pid + mount namespace. Peak processes: the storm's own (helpers and"
    emit "their children, the daemon and its handler), from PEAK_HOW_PLACEHOLDER. Ordering violations ="
    emit "adjacent pairs in the handler's file whose SEQNUM decreases."
    emit "hotplugd runs with --log-level warn (no per-event log line)."
    emit ""
    emit "| helper | wall s (last handler) | helpers done s | events/s | vs mdev | peak processes | ordering violations | handler runs | failed helpers |"
    emit "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    local rows=()
    for variant in hotplugd mdev legacy; do
        local w=$STORMWORK/$variant cg
        mkdir -p "$w"
        log "  storm $variant"
        # Peak process count: a pids cgroup of its own (exact, pids.peak) when the kernel
        # has one; else the driver's /proc samples (1 ms; may overcount during churn).
        cg=$(storm_cgroup "$variant")
        line=$(sh -c 'if [ -n "$1" ]; then echo 0 >"$1/cgroup.procs" || exit 1; fi; shift; exec "$@"' sh "$cg" \
            timeout 1200 unshare --pid --fork --mount --mount-proc --kill-child \
            bash "$ROOT/benches/storm_ns.sh" "$variant" "$STORM_N" "$STORM_JOBS" "$w" "$BIN" "$REL" "$WORK/storm-run") ||
            { [ -z "$cg" ] || rmdir "$cg" 2>/dev/null; die "storm $variant failed"; }
        read -r t0 treap peak failed <<<"$line"
        local how="/proc samples"
        if [ -n "$cg" ]; then
            # Tasks, not processes: take off sh/timeout, unshare, the namespace's bash, the
            # driver's two threads, and the daemon's threads beyond its first.
            local tasks threads=1
            tasks=$(cat "$cg/pids.peak")
            [ -f "$w/daemon-threads" ] && threads=$(cat "$w/daemon-threads")
            peak=$((tasks - 5 - (threads - 1)))
            how="cgroup"
            rmdir "$cg" 2>/dev/null || log "  note: could not remove $cg"
        fi
        # records: count, violations, distinct seqnums, last timestamp
        stats=$(awk -v t0="$t0" '
            { n++; if (n > 1 && $1 + 0 < prev) v++; prev = $1 + 0; seen[$1] = 1; if ($2 > last) last = $2 }
            END { d = 0; for (s in seen) d++; printf "%d %d %d %.6f", n, v + 0, d, (last - t0) / 1e9 }' "$w/records")
        local n v distinct secs
        read -r n v distinct secs <<<"$stats"
        wall[$variant]=$secs
        rate[$variant]=$(calc "$STORM_N / $secs" 0)
        rows+=("$variant|$secs|${rate[$variant]}|$peak|$v|$n ($distinct distinct)|$failed|$(calc "($treap - $t0) / 1e9" 2)")
        PEAK_HOW=$how
        [ "$n" = "$STORM_N" ] || log "  warning: $variant ran the handler $n times for $STORM_N events"
    done
    local -A label=([hotplugd]="**hotplug → hotplugd** (serialized)" [mdev]="busybox mdev + /dev/mdev.seq (serialized, \`@\` via sh)" [legacy]="legacy sh helper runs the handler (unserialized)")
    local peak_h viol_h
    for line in "${rows[@]}"; do
        IFS='|' read -r variant secs r peak v n failed helpers <<<"$line"
        [ "$variant" = hotplugd ] && peak_h=$peak viol_h=$v
        emit "| ${label[$variant]} | $(calc "$secs" 2) | $helpers | $r | $(calc "$r / ${rate[mdev]}") | $peak | $v | $n | $failed |"
    done
    emit ""
    local i how_text
    if [ "$PEAK_HOW" = cgroup ]; then
        how_text="the peak task count of a pids cgroup per variant, less the harness's tasks and the daemon's extra threads"
    else
        how_text="the driver's 1 ms samples of /proc in the namespace (can overcount while processes churn)"
    fi
    for i in "${!RESULTS[@]}"; do
        RESULTS[$i]=${RESULTS[$i]/PEAK_HOW_PLACEHOLDER/$how_text}
    done
    # CPU floor: N * (shim exec + handler spawn) / cores, with this run's shim numbers.
    if [ -z "$SHIM_HOTPLUG_US" ]; then
        SHIM_HOTPLUG_US=$(HOTPLUGD_RUNTIME_DIR=/nonexistent "$BIN/spawn_loop" 300 "$BIN/shim" usb | awk '{print $1}')
        SHIM_HANDLER_US=$("$BIN/spawn_loop" 300 "$BIN/handler" /dev/null | awk '{print $1}')
        log "  (no shim bench in this run: floor from a 300-exec C-shim/handler measurement)"
    fi
    local floor vs_floor vs_mdev
    floor=$(calc "$STORM_N * ($SHIM_HOTPLUG_US + $SHIM_HANDLER_US) / 1e6 / $NPROC" 3)
    vs_floor=$(calc "${wall[hotplugd]} / $floor")
    vs_mdev=$(calc "${rate[hotplugd]} / ${rate[mdev]}")
    emit "CPU floor = N × (shim exec $SHIM_HOTPLUG_US µs + handler spawn $SHIM_HANDLER_US µs) / $NPROC cores"
    emit "= $floor s; hotplugd's wall time is ${vs_floor}x that."
    emit ""
    TARGETS+=("| storm: hotplugd events/s ≥ 2x busybox mdev's | ${vs_mdev}x (${rate[hotplugd]} vs ${rate[mdev]} ev/s) | $(okmiss "$vs_mdev >= 2") |")
    TARGETS+=("| storm: 0 ordering violations, bounded processes | $viol_h violations, peak $peak_h processes | $(okmiss "$viol_h == 0 && $peak_h <= $STORM_JOBS + 4") |")
    TARGETS+=("| storm: within 1.3x of the CPU floor | ${vs_floor}x ($(calc "${wall[hotplugd]}" 2) s vs $(calc "$floor" 2) s) | $(okmiss "$vs_floor <= 1.3") |")
}

# ================================================================ 3. intake
bench_intake() {
    local d=$WORK/intake r line t0 t1 n bytes tr
    mkdir -p "$d"
    daemon_header "$d" 60s >"$d/norules.toml"
    local ceil=() daemon=() ratios=()
    local PIN_WRITER= PIN_READER=
    if [ "$NPROC" -ge 2 ] && command -v taskset >/dev/null; then
        PIN_WRITER="taskset -c 0" PIN_READER="taskset -c 1"
    fi
    log "intake: $INTAKE_R rounds of $INTAKE_N messages (ceiling, then daemon)"
    for r in $(seq 1 "$INTAKE_R"); do
        # Raw ceiling: C writer -> 1 MiB FIFO -> C reader splitting frames, each on its
        # own CPU. Left to itself the scheduler at times moves the reader onto the
        # writer's CPU (a pipe wakes its reader with a sync wake-up), which halves this
        # best case in about one round of three.
        rm -f "$d/events" "$d/ready"
        $PIN_READER "$BIN/fifo_read" "$d/events" "$INTAKE_N" "$d/ready" >"$d/reader.out" &
        local reader=$!
        while [ ! -e "$d/ready" ]; do sleep 0.01; done
        read -r t0 _ t1 n bytes < <($PIN_WRITER "$BIN/fifo_pump" "$d/events" "$INTAKE_N")
        wait "$reader"
        read -r tr n _ <"$d/reader.out"
        [ "$n" = "$INTAKE_N" ] || die "intake: reader got $n frames"
        ceil+=("$(calc "$INTAKE_N / (($tr - $t0) / 1e9) / 1e6" 3)")
        # The daemon, no rules, --log-level error: end = `hotplugctl settle --seq N` returns.
        start_daemon "$d" "$d/norules.toml" error
        read -r t0 _ t1 n bytes < <("$BIN/fifo_pump" "$d/run/events" "$INTAKE_N" \
            "$CTL" --runtime-dir "$d/run" settle --seq "$INTAKE_N" --timeout 300)
        local got bad
        got=$(status_field "$d" received) bad=$(status_field "$d" bad_messages)
        [ "$got" = "$INTAKE_N" ] && [ "$bad" = 0 ] || die "intake: daemon received $got, bad $bad"
        stop_daemon TERM
        daemon+=("$(calc "$INTAKE_N / (($t1 - $t0) / 1e9) / 1e6" 3)")
        ratios+=("$(calc "${daemon[-1]} / ${ceil[-1]}" 3)")
        INTAKE_PAYLOAD=$(calc "$bytes / $n" 0)
    done
    if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
        log "intake: perf record of one daemon run"
        start_daemon "$d" "$d/norules.toml" error
        perf record -F 2000 -o "$d/perf.data" -p "$DPID" 2>/dev/null &
        local perfpid=$!
        sleep 0.3
        "$BIN/fifo_pump" "$d/run/events" "$INTAKE_N" "$CTL" --runtime-dir "$d/run" settle --seq "$INTAKE_N" --timeout 300 >/dev/null
        kill -INT "$perfpid"
        wait "$perfpid" || true
        stop_daemon TERM
        perf report -i "$d/perf.data" --sort comm,sym --stdio 2>/dev/null | grep -v '^$' | head -80 >"$OUTDIR/intake-perf.txt" || true
        log "intake: profile in $OUTDIR/intake-perf.txt"
    fi
    local mc md mr
    mc=$(calc "$(median "${ceil[@]}")" 3) md=$(calc "$(median "${daemon[@]}")" 3) mr=$(calc "$(median "${ratios[@]}")" 3)
    emit "### 3. Intake: FIFO → queue, no rule matches"
    emit ""
    emit "One C writer (benches/c/fifo_pump.c) writes $INTAKE_N pre-built messages ($INTAKE_PAYLOAD B payload"
    emit "each, 11-variable USB event with a unique DEVPATH), one write() per message, blocking, into a"
    emit "1 MiB FIFO, fetching each message into its cache 16 writes ahead (a shim writes the message it"
    emit "just built). Ceiling: a C reader (benches/c/fifo_read.c) reading 64 KiB, pausing 100 µs after a"
    emit "shorter read as hotplugd does, and splitting frames; time to its last frame; ${PIN_WRITER:+writer and reader pinned to CPUs 0 and 1 (taskset), }the best case. Daemon: hotplugd,"
    emit "no rules, --log-level error, writer and daemon not pinned; time until"
    emit "\`hotplugctl settle --seq N\` returns (every event received, queued and retired). $INTAKE_R round(s)."
    emit ""
    emit "| reader | M events/s per round | median M events/s |"
    emit "| --- | --- | --- |"
    emit "| raw FIFO ceiling (C reader) | $(join_sp "${ceil[@]}") | $mc |"
    emit "| **hotplugd** | $(join_sp "${daemon[@]}") | $md |"
    emit "| ratio (per round) | $(join_sp "${ratios[@]}") | $mr |"
    emit ""
    TARGETS+=("| intake ≥ 1,000,000 events/s and ≥ 60 % of the FIFO ceiling | $(calc "$md * 1e6" 0) events/s, $(calc "$mr * 100" 0) % of $(calc "$mc * 1e6" 0) | $(okmiss "$md >= 1.0 && $mr >= 0.6") |")
}

# ================================================================ 4. dispatch
# marks_wait FILE COUNT TIMEOUT_S: wait until FILE has COUNT lines.
# Polls with a shell builtin only, every 0.2 s: the window being measured shares the CPUs
# with this loop, so it must cost next to nothing.
marks_wait() {
    local i n line
    for i in $(seq 1 $(($3 * 5))); do
        n=0
        if [ -e "$1" ]; then
            while IFS= read -r line; do n=$((n + 1)); done <"$1"
        fi
        [ "$n" -ge "$2" ] && return 0
        sleep 0.2
    done
    die "dispatch: $1 never reached $2 marks"
}
# window_us FILE LINE K: µs per run between the marks on LINE and LINE+1.
window_us() { awk -v l="$2" -v k="$3" 'NR == l {a = $2} NR == l + 1 {b = $2} END {printf "%.1f", (b - a) / 1e3 / k}' "$1"; }

bench_dispatch() {
    local d0=$WORK/dispatch0 dq=$WORK/dispatchq r dir
    # Rule "true" runs /bin/true for every event; rule "mark" also runs the timestamping
    # handler for marked events: the time between two marks K events apart is K runs of
    # /bin/true (plus one handler run, < 0.1 % at K = 1000).
    for dir in "$d0" "$dq"; do
        mkdir -p "$dir"
        {
            daemon_header "$dir" 600s
            cat <<EOF

[[rule]]
name = "true"
run = ["/bin/true"]

[[rule]]
name = "mark"
match = { BENCH_MARK = "1" }
run = ["$BIN/handler", "$dir/marks"]
EOF
        } >"$dir/true.toml"
    done
    log "dispatch: $DISP_R rounds of $DISP_K runs: bare loop; daemon, empty queue; daemon, $DISP_Q queued"
    # Two daemons, each paused except while its window runs. The second holds DISP_Q
    # events behind a front of 2K per round, marked every K, so every window has about
    # DISP_Q events queued behind it.
    local D0 DQ front=$((2 * DISP_K * DISP_R + 1)) marks=() m
    start_daemon "$d0" "$d0/true.toml" warn
    D0=$DPID
    "$CTL" --runtime-dir "$d0/run" pause >/dev/null
    start_daemon "$dq" "$dq/true.toml" warn
    DQ=$DPID
    "$CTL" --runtime-dir "$dq/run" pause >/dev/null
    for m in $(seq 1 "$DISP_K" "$front"); do marks+=(-m "$m"); done
    "$BIN/fifo_pump" "${marks[@]}" "$dq/run/events" $((front + DISP_Q)) >/dev/null
    wait_field "$dq" received $((front + DISP_Q)) 300
    local bare=() w0=() wq=() seq0=1 n0 i
    for r in $(seq 1 "$DISP_R"); do
        for i in 0 1 2; do
            case $(((i + r) % 3)) in
            0)
                read -r m _ < <("$BIN/spawn_loop" "$DISP_K" /bin/true)
                bare+=("$m")
                ;;
            1)  # empty queue: K+1 events, first and last marked, then resume
                n0=$(wc -l 2>/dev/null <"$d0/marks" || echo 0)
                "$BIN/fifo_pump" -s "$seq0" -m "$seq0" -m $((seq0 + DISP_K)) "$d0/run/events" $((DISP_K + 1)) >/dev/null
                seq0=$((seq0 + DISP_K + 1))
                wait_field "$d0" received $((seq0 - 1)) 60
                "$CTL" --runtime-dir "$d0/run" resume >/dev/null
                marks_wait "$d0/marks" $((n0 + 2)) $((DISP_K / 50 + 60))
                "$CTL" --runtime-dir "$d0/run" pause >/dev/null
                w0+=("$(window_us "$d0/marks" $((n0 + 1)) "$DISP_K")")
                ;;
            2)  # DISP_Q queued behind: resume until two new marks, pause
                n0=$(wc -l 2>/dev/null <"$dq/marks" || echo 0)
                "$CTL" --runtime-dir "$dq/run" resume >/dev/null
                marks_wait "$dq/marks" $((n0 + 2)) $((DISP_K / 25 + 60))
                "$CTL" --runtime-dir "$dq/run" pause >/dev/null
                wq+=("$(window_us "$dq/marks" $((n0 + 1)) "$DISP_K")")
                ;;
            esac
        done
    done
    local qleft
    qleft=$(status_field "$dq" queued)
    # SIGKILL: SIGTERM would hand the queued events to the spool first.
    DPID=$D0 stop_daemon KILL
    DPID=$DQ stop_daemon KILL
    local mb m0 mq r0 rq
    mb=$(calc "$(median "${bare[@]}")" 1) m0=$(calc "$(median "${w0[@]}")" 1) mq=$(calc "$(median "${wq[@]}")" 1)
    r0=$(calc "$mb / $m0" 3) rq=$(calc "$mb / $mq" 3)
    emit "### 4. Dispatch: handler runs of /bin/true"
    emit ""
    emit "Bare: posix_spawn + wait of /bin/true in a C loop (spawn_loop), $DISP_K runs per round."
    emit "hotplugd (--log-level warn): the time between the handler timestamps of two marked events"
    emit "$DISP_K runs apart, the daemon resumed only for that window. Empty queue: the $((DISP_K + 1)) events of the"
    emit "window are all that is queued. Queued: the window is at the front of $DISP_Q + more events"
    emit "($qleft still queued at the end). $DISP_R interleaved rounds, order rotated."
    emit ""
    emit "| runner | µs/run per round | median µs/run | runs/s | vs bare loop |"
    emit "| --- | --- | --- | --- | --- |"
    emit "| bare posix_spawn loop (C) | $(join_sp "${bare[@]}") | $mb | $(calc "1e6 / $mb" 0) | 1.00 |"
    emit "| **hotplugd**, empty queue | $(join_sp "${w0[@]}") | $m0 | $(calc "1e6 / $m0" 0) | $r0 |"
    emit "| **hotplugd**, $DISP_Q queued | $(join_sp "${wq[@]}") | $mq | $(calc "1e6 / $mq" 0) | $rq |"
    local i p0=() pq=()
    for i in "${!bare[@]}"; do
        p0+=("$(calc "${bare[$i]} / ${w0[$i]}")") pq+=("$(calc "${bare[$i]} / ${wq[$i]}")")
    done
    emit "| ratio within each round, empty queue | $(join_sp "${p0[@]}") | median $(calc "$(median "${p0[@]}")") | | |"
    emit "| ratio within each round, $DISP_Q queued | $(join_sp "${pq[@]}") | median $(calc "$(median "${pq[@]}")") | | |"
    emit ""
    emit "The headline ratio divides the medians; the per-round ratios show how far the load on"
    emit "the machine moved them (each round's three windows run back to back)."
    emit ""
    TARGETS+=("| dispatch ≥ 0.95x the bare posix_spawn loop, unchanged with $DISP_Q queued | ${r0}x (empty queue), ${rq}x ($DISP_Q queued) | $(okmiss "$r0 >= 0.95 && $rq >= 0.95") |")
}

# ================================================================ 5. memory
# mem_run DIR CONFIG LABEL: queue MEM_A then MEM_B events in a paused daemon; one table
# row per size. Sets MEM_ROWS_OK to an awk condition over the rows.
mem_run() {
    local d=$1 kind=$3 rss0 t0 t1 n bytes total=0 have=0 size
    start_daemon "$d" "$2" warn
    "$CTL" --runtime-dir "$d/run" pause >/dev/null
    sleep 0.2
    rss0=$(rss_kb "$DPID")
    for size in "$MEM_A" "$MEM_B"; do
        read -r t0 _ t1 n bytes < <("$BIN/fifo_pump" -s $((have + 1)) "$d/run/events" $((size - have)))
        total=$((total + bytes)) have=$size
        wait_field "$d" received "$size" 300
        [ "$(status_field "$d" queued)" = "$size" ] || die "memory: not all $size events queued"
        sleep 0.3
        local rss disk spilled per payload tgt jper
        rss=$(rss_kb "$DPID")
        # Allocated, not apparent, size: the segment being filled is sized ahead, sparse.
        disk=$(du -s --block-size=1 "$d/run" | cut -f1)
        spilled=$(status_field "$d" spilled)
        per=$(calc "($rss - $rss0) * 1024 / $size" 0)
        jper=$(calc "$disk / $size" 0)
        payload=$(calc "$total / $size" 1)
        tgt=$(calc "1.25 * $payload + 32" 0)
        emit "| $kind | $size | $(calc "$rss / 1024" 1) | $per | $payload | $(calc "$per / $payload") | $tgt | $jper | ${spilled:-n/a} |"
        MEM_RES+=("$kind, $size: $per B (target $tgt)")
        [ "$kind" = default ] && MEM_OK="${MEM_OK:-1} && $per <= $tgt"
    done
    MEM_IDLE=$((rss0 / 1024))
    stop_daemon KILL
}

bench_memory() {
    local d=$WORK/memory
    mkdir -p "$d"
    {
        daemon_header "$d" 600s
        printf '\n[[rule]]\nname = "true"\nrun = ["/bin/true"]\n'
    } >"$d/true.toml"
    # The same with the in-memory queue unbounded (max_queue_memory, where this build has
    # it): what the queue's own representation costs when nothing spills to the journal.
    sed 's/^gap_timeout = .*/&\nmax_queue_memory = "64GiB"/' "$d/true.toml" >"$d/nospill.toml"
    log "memory: RSS with $MEM_A and $MEM_B events queued"
    MEM_RES=() MEM_OK=
    emit "### 5. Memory: events queued, handlers paused"
    emit ""
    emit "hotplugd with one /bin/true rule, paused, fed by fifo_pump (11-variable USB events, unique"
    emit "DEVPATH each). RSS bytes/event = (VmRSS − VmRSS before any event) / events queued; target"
    emit "1.25 × payload + 32 B. Runtime dir bytes/event = the space allocated under the runtime directory (the"
    emit "crash journal; on a real system /run is tmpfs, so that is RAM as well). \"default\" is the"
    emit "default config (past max_queue_memory the queue keeps stubs and reads bodies back from the"
    emit "journal); \"no spill\" sets max_queue_memory = \"64GiB\"."
    emit ""
    emit "| config | events queued | VmRSS MiB | RSS bytes/event | payload B/event | RSS vs payload | target B/event | runtime dir bytes/event | spilled |"
    emit "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    mem_run "$d" "$d/true.toml" default
    local idle=$MEM_IDLE
    if "$REL/hotplugd" --check-config --config "$d/nospill.toml" >/dev/null 2>&1; then
        mem_run "$d" "$d/nospill.toml" "no spill"
    fi
    emit ""
    emit "Idle VmRSS: $idle MiB."
    emit ""
    TARGETS+=("| memory ≤ 1.25x message bytes + 32 B per event (default config, RSS) | $(join_by '; ' "${MEM_RES[@]}") | $(okmiss "$MEM_OK") |")
}

for b in shim storm intake dispatch memory; do
    if want $b; then "bench_$b"; fi
done

# ---------------------------------------------------------------- report
{
    echo "<!-- generated by benches/run.sh$([ "$QUICK" = 1 ] && echo ' --quick') on $(date -u +%Y-%m-%dT%H:%MZ) -->"
    echo ""
    echo "Machine: $NPROC CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)."
    echo "Loadavg (1/5/15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg). Work dirs on $(stat -f -c %T "$TMPBASE") ($TMPBASE)."
    echo ""
    echo "Command: \`benches/run.sh$([ "$QUICK" = 1 ] && echo ' --quick')$([ -n "$ROUNDS" ] && echo " --rounds $ROUNDS")$([ "$ONLY" != shim,storm,intake,dispatch,memory ] && echo " --only $ONLY")\`"
    echo ""
    echo "| target | this run | |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${TARGETS[@]}"
    echo ""
    printf '%s\n' "${RESULTS[@]}"
} >"$OUTDIR/results.md"
cat "$OUTDIR/results.md"
log ""
log "rows written to $OUTDIR/results.md"

if [ "$UPDATE" = 1 ]; then
    md=$ROOT/BENCHMARKS.md
    if [ -f "$md" ] && grep -q '<!-- bench:begin -->' "$md"; then
        awk -v res="$OUTDIR/results.md" '
            /<!-- bench:begin -->/ { print; while ((getline l < res) > 0) print l; skip = 1; next }
            /<!-- bench:end -->/ { skip = 0 }
            !skip' "$md" >"$md.tmp" && mv "$md.tmp" "$md"
        log "updated $md"
    else
        log "BENCHMARKS.md has no <!-- bench:begin --> / <!-- bench:end --> markers; not updated"
    fi
fi
