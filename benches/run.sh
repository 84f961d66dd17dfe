#!/usr/bin/env bash
# hotplugd benchmark harness. One command:
#
#   benches/run.sh [--quick] [--only LIST] [--rounds R] [--update] [--profile]
#
#   --quick      small sizes (tens of seconds in all); same code paths, for CI
#   --only LIST  comma-separated subset of: shim,storm,intake,dispatch,memory
#   --rounds R   interleaved rounds for shim/intake/dispatch (default 32/5/7, quick 2/1/2)
#   --update     also replace the generated section of BENCHMARKS.md with this run (with
#                --only, just those benchmarks' rows and sections: benches/update.sh)
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
# Every side of a comparison starts with fds 0-2 only. An fd the caller leaked (a
# terminal multiplexer's, a CI runner's) would make each spawn of the bare loops copy a
# bigger fd table, and not the daemon's, which closes what it inherits. 255 is bash's own
# copy of this script.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

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
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    SHIM_N=200 SHIM_R=${ROUNDS:-2}
    STORM_N=500 STORM_R=1
    INTAKE_N=50000 INTAKE_R=${ROUNDS:-1}
    # K as in a full run: marks_wait looks every 0.2 s, and the runner must not pass the
    # next window's marks (K apart) before the pause lands.
    DISP_K=1000 DISP_Q=20000 DISP_R=${ROUNDS:-2}
    MEM_A=5000 MEM_B=20000
else
    # Many short rounds rather than few long ones: the VM's speed drifts by ±10 % over
    # seconds, and only what runs close together in time compares well.
    SHIM_N=250 SHIM_R=${ROUNDS:-32}
    STORM_N=20000 STORM_R=3
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
# start_drain DIR OUT: a C reader draining DIR/events for good (count to stdout OUT), ready
# when this returns; its pid in DRAIN. For shims that need a live daemon FIFO to write to.
start_drain() {
    mkdir -p "$1"
    "$BIN/fifo_read" "$1/events" 0 "$1/ready" >"$2" &
    DRAIN=$!
    while [ ! -e "$1/ready" ]; do sleep 0.01; done
}

bench_shim() {
    local d=$WORK/shim
    start_drain "$d" "$d/drain.out"
    local drain=$DRAIN
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
# storm_cgroup VARIANT CONTROLLER FILE: make a fresh cgroup of CONTROLLER (pids or cpuacct;
# v1 or v2) and print its path if it has FILE, or nothing.
storm_cgroup() {
    local base=
    if [ -d "/sys/fs/cgroup/$2" ]; then
        base=/sys/fs/cgroup/$2
    elif [ -f /sys/fs/cgroup/cgroup.subtree_control ]; then
        base=/sys/fs/cgroup
    fi
    [ -n "$base" ] || return 0
    local cg=$base/hotplugd-bench-$2-$1-$$
    mkdir "$cg" 2>/dev/null && [ -f "$cg/$3" ] && echo "$cg" && return 0
    rmdir "$cg" 2>/dev/null || true
}
# cpu_busy_ns: CPU time spent busy machine-wide so far (all CPUs, /proc/stat), in ns.
cpu_busy_ns() { awk '/^cpu / {printf "%.0f", ($2 + $3 + $4 + $7 + $8) * 1e9 / '"$(getconf CLK_TCK)"'}' /proc/stat; }
# storm_run VARIANT: one storm; appends its results to the S_* arrays under VARIANT.
declare -A S_RATE S_WALL S_REAP S_PEAK S_VIOL S_RVIOL S_RUNS S_FAIL S_CPU S_SBUSY S_BUSY
storm_run() {
    local variant=$1 w=$STORMWORK/$1 cg cgc line t0 treap peak failed stats busy0 busy1 tw0 tw1
    mkdir -p "$w"
    log "  storm $variant"
    # Peak process count: a pids cgroup of its own (exact, pids.peak) when the kernel
    # has one; else the driver's /proc samples (1 ms; may overcount during churn). CPU
    # time: a cpuacct cgroup (v1) or the v2 group's cpu.stat.
    cg=$(storm_cgroup "$variant" pids pids.peak)
    cgc=$(storm_cgroup "$variant" cpuacct cpuacct.usage)
    [ -n "$cgc" ] || { [ -n "$cg" ] && [ -f "$cg/cpu.stat" ] && cgc=$cg; } || true
    busy0=$(cpu_busy_ns) tw0=$(date +%s%N)
    line=$(sh -c 'for g in "$1" "$2"; do if [ -n "$g" ]; then echo 0 >"$g/cgroup.procs" || exit 1; fi; done; shift 2; exec "$@"' sh "$cg" "$([ "$cgc" != "$cg" ] && echo "$cgc")" \
        timeout 1200 unshare --pid --fork --mount --mount-proc --kill-child \
        bash "$ROOT/benches/storm_ns.sh" "$variant" "$STORM_N" "$STORM_JOBS" "$w" "$BIN" "$REL" "$WORK/storm-run") ||
        { [ -z "$cg" ] || rmdir "$cg" 2>/dev/null; [ -z "$cgc" ] || rmdir "$cgc" 2>/dev/null; die "storm $variant failed"; }
    busy1=$(cpu_busy_ns) tw1=$(date +%s%N)
    read -r t0 treap peak failed <<<"$line"
    PEAK_HOW="/proc samples"
    if [ -n "$cg" ]; then
        # Tasks, not processes: take off sh/timeout, unshare, the namespace's bash, the
        # driver's two threads, and the daemon's threads beyond its first.
        local tasks threads=1
        tasks=$(cat "$cg/pids.peak")
        [ -f "$w/daemon-threads" ] && threads=$(cat "$w/daemon-threads")
        peak=$((tasks - 5 - (threads - 1)))
        PEAK_HOW="cgroup"
    fi
    local cpu_ns=
    if [ -n "$cgc" ] && [ -f "$cgc/cpuacct.usage" ]; then
        cpu_ns=$(cat "$cgc/cpuacct.usage")
    elif [ -n "$cgc" ]; then
        cpu_ns=$(awk '/^usage_usec/ {print $2 * 1000}' "$cgc/cpu.stat")
    fi
    for g in "$cg" "$cgc"; do [ -z "$g" ] || rmdir "$g" 2>/dev/null || log "  note: could not remove $g"; done
    # records "SEQNUM NS DEVPATH": count, adjacent SEQNUM decreases, distinct seqnums, last
    # timestamp, and records whose SEQNUM is below one already recorded for the same
    # device, an ancestor or a descendant (what lanes promise to keep in order).
    stats=$(awk -v t0="$t0" '
        function rel(a, b) { return a == b || index(b, a "/") == 1 || index(a, b "/") == 1 }
        { n++; s = $1 + 0; if (n > 1 && s < prev) v++; prev = s; seen[$1] = 1; if ($2 > last) last = $2
          p = $3; for (q in mx) if (mx[q] > s && rel(p, q)) { rv++; break }
          if (!(p in mx) || mx[p] < s) mx[p] = s }
        END { d = 0; for (x in seen) d++; printf "%d %d %d %.6f %d", n, v + 0, d, (last - t0) / 1e9, rv + 0 }' "$w/records")
    local n v distinct secs rv
    read -r n v distinct secs rv <<<"$stats"
    S_WALL[$variant]+=" $secs"
    S_RATE[$variant]+=" $(calc "$STORM_N / $secs" 0)"
    S_REAP[$variant]+=" $(calc "($treap - $t0) / 1e9" 2)"
    S_PEAK[$variant]+=" $peak"
    S_VIOL[$variant]+=" $v"
    S_RVIOL[$variant]+=" $rv"
    S_RUNS[$variant]+=" $n:$distinct"
    S_FAIL[$variant]+=" $failed"
    # CPU per event of the storm's own processes; CPUs kept busy on average over the whole
    # variant (namespace start to exit), by the storm and by the whole machine.
    [ -z "$cpu_ns" ] || S_CPU[$variant]+=" $(calc "$cpu_ns / 1e3 / $STORM_N" 0)" S_SBUSY[$variant]+=" $(calc "$cpu_ns / ($tw1 - $tw0)" 2)"
    S_BUSY[$variant]+=" $(calc "($busy1 - $busy0) / ($tw1 - $tw0)" 2)"
    [ "$n" = "$STORM_N" ] || log "  warning: $variant ran the handler $n times for $STORM_N events"
}
sum() { local s=0 x; for x in "$@"; do s=$((s + x)); done; echo "$s"; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }
bench_storm() {
    # hotplugd with workers = 1, 2, 4 on the storm mdev gets (one DEVPATH: every event
    # related to every other), and on the same storm spread over 64 devices (tree-*):
    # STORM_R interleaved rounds of those; mdev and legacy once.
    local lanes=(hotplugd hotplugd-w2 hotplugd-w4 tree tree-w2 tree-w4) r i variant
    log "storm: N=$STORM_N, $STORM_JOBS helpers in flight; ${lanes[*]} x $STORM_R rounds; mdev legacy"
    for r in $(seq 1 "$STORM_R"); do
        for i in $(seq 0 $((${#lanes[@]} - 1))); do
            storm_run "${lanes[$(((i + r - 1) % ${#lanes[@]}))]}"
        done
        [ "$r" != 1 ] || { storm_run mdev; storm_run legacy; }
    done
    local -A rate wall label=(
        [hotplugd]="**hotplug → hotplugd**, workers = 1"
        [hotplugd-w2]="**hotplug → hotplugd**, workers = 2"
        [hotplugd-w4]="**hotplug → hotplugd**, workers = 4"
        [mdev]="busybox mdev + /dev/mdev.seq (serialized, \`@\` via sh)"
        [legacy]="legacy sh helper runs the handler (unserialized)"
        [tree]="**hotplug → hotplugd**, workers = 1, 64 devices"
        [tree-w2]="**hotplug → hotplugd**, workers = 2, 64 devices"
        [tree-w4]="**hotplug → hotplugd**, workers = 4, 64 devices"
    )
    for variant in "${lanes[@]}" mdev legacy; do
        # shellcheck disable=SC2086
        rate[$variant]=$(median ${S_RATE[$variant]}) wall[$variant]=$(median ${S_WALL[$variant]})
    done
    local how_text
    if [ "$PEAK_HOW" = cgroup ]; then
        how_text="the peak task count of a pids cgroup per variant, less the harness's tasks and the daemon's extra threads"
    else
        how_text="the driver's 1 ms samples of /proc in the namespace (can overcount while processes churn)"
    fi
    emit "### 2. Storm: $STORM_N events, $STORM_JOBS helpers in flight, one handler run per event"
    emit ""
    emit "A C driver (benches/c/storm.c) posix_spawns the helper for SEQNUM 1..N in order, at most"
    emit "$STORM_JOBS at a time, reaping whichever ends (the kernel's UMH_NO_WAIT, bounded). Every variant"
    emit "runs the same static C handler (benches/c/handler.c, not a dynamic /bin/true), which appends"
    emit "\"SEQNUM time DEVPATH\" to a file. Wall time = driver start → the last handler's timestamp;"
    emit "helpers done = until the driver reaped the last helper. Each variant runs in its own pid +"
    emit "mount namespace. Peak processes: the storm's own (helpers and their children, the daemon and"
    emit "its handlers), from $how_text."
    emit "Ordering violations: adjacent pairs in the handler's file whose SEQNUM decreases; related"
    emit "out of order: records whose SEQNUM is below one recorded earlier for the same device, an"
    emit "ancestor or a descendant. With workers > 1, hotplugd runs unrelated devices' handlers at"
    emit "once, so adjacent decreases are expected there; related ones must stay 0."
    emit "hotplugd runs with --log-level warn (no per-event log line), \`workers = W\` as listed."
    emit "Its rows are medians of $STORM_R interleaved rounds (events/s per round listed); the mdev and"
    emit "legacy rows one run each. The first three hotplugd rows fire mdev's storm: every event for"
    emit "the one device /devices/virtual/mem/null, so every event is related to every other and"
    emit "lanes run them one at a time whatever \`workers\` says. The \"64 devices\" rows fire the same"
    emit "storm over a tree of 8 hubs, each a parent device and 7 ports (STORM_DEVICES=64 in"
    emit "storm.c; event i on device (i − 1) mod 64), so neighbours in SEQNUM order are mostly"
    emit "unrelated. Storm CPU µs/event: CPU time of the storm's own processes (a cpuacct cgroup:"
    emit "helpers, daemon, handlers, driver) over N. CPUs busy: the storm's CPU time, and the whole"
    emit "machine's busy time (/proc/stat; other work on the VM included), each over the wall time"
    emit "of the whole variant (namespace start to exit, so a little more than the storm itself)."
    emit ""
    emit "| helper | wall s (last handler) | helpers done s | events/s | events/s per round | vs mdev | vs workers = 1 | peak processes | ordering violations | related out of order | handler runs | failed helpers | storm CPU µs/event | CPUs busy: storm / machine |"
    emit "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    local base runs cpu sbusy
    for variant in hotplugd hotplugd-w2 hotplugd-w4 mdev legacy tree tree-w2 tree-w4; do
        case $variant in hotplugd*) base=hotplugd ;; tree*) base=tree ;; *) base= ;; esac
        # shellcheck disable=SC2086
        runs=$(printf '%s\n' ${S_RUNS[$variant]} | sort -u | sed 's/:\(.*\)/ (\1 distinct)/' | paste -sd, - | sed 's/,/, /g')
        cpu=- sbusy=-
        # shellcheck disable=SC2086
        [ -z "${S_CPU[$variant]:-}" ] || cpu=$(median ${S_CPU[$variant]}) sbusy=$(median ${S_SBUSY[$variant]})
        # shellcheck disable=SC2086
        emit "| ${label[$variant]} | $(calc "${wall[$variant]}" 2) | $(median ${S_REAP[$variant]}) | ${rate[$variant]} | $(join_sp ${S_RATE[$variant]}) | $(calc "${rate[$variant]} / ${rate[mdev]}") | $([ -n "$base" ] && calc "${rate[$variant]} / ${rate[$base]}" || echo -) | $(max ${S_PEAK[$variant]}) | $(sum ${S_VIOL[$variant]}) | $(sum ${S_RVIOL[$variant]}) | $runs | $(sum ${S_FAIL[$variant]}) | $cpu | $sbusy / $(median ${S_BUSY[$variant]}) |"
    done
    emit ""
    # CPU floor: N * (shim exec + handler spawn) / cores, with this run's shim numbers.
    # Without the shim bench in this run, the same two numbers from 300 execs each: the
    # hotplug shim writing to a C reader, the handler writing to a file. (This used the C
    # shim with no runtime dir, which exits at once: a floor 10 % too low.)
    if [ -z "$SHIM_HOTPLUG_US" ]; then
        local fd=$WORK/floor
        start_drain "$fd" /dev/null
        SHIM_HOTPLUG_US=$(HOTPLUGD_RUNTIME_DIR=$fd "$BIN/spawn_loop" 300 "$REL/hotplug" usb | awk '{print $1}')
        SHIM_HANDLER_US=$("$BIN/spawn_loop" 300 "$BIN/handler" "$fd/handler.out" | awk '{print $1}')
        kill -TERM "$DRAIN"
        wait "$DRAIN" || true
        log "  (no shim bench in this run: floor from 300 execs each of the hotplug shim and the handler)"
    fi
    local floor vs_floor vs_mdev peak_h viol_h
    floor=$(calc "$STORM_N * ($SHIM_HOTPLUG_US + $SHIM_HANDLER_US) / 1e6 / $NPROC" 3)
    vs_floor=$(calc "${wall[hotplugd]} / $floor")
    vs_mdev=$(calc "${rate[hotplugd]} / ${rate[mdev]}")
    # shellcheck disable=SC2086
    peak_h=$(max ${S_PEAK[hotplugd]}) viol_h=$(sum ${S_VIOL[hotplugd]})
    emit "CPU floor = N × (shim exec $SHIM_HOTPLUG_US µs + handler spawn $SHIM_HANDLER_US µs) / $NPROC cores"
    emit "= $floor s; hotplugd's wall time (workers = 1) is ${vs_floor}x that, workers = 2 $(calc "${wall[hotplugd-w2]} / $floor")x,"
    emit "workers = 4 $(calc "${wall[hotplugd-w4]} / $floor")x; on 64 devices $(calc "${wall[tree]} / $floor")x, $(calc "${wall[tree-w2]} / $floor")x and $(calc "${wall[tree-w4]} / $floor")x."
    if [ -n "${S_CPU[tree-w4]:-}" ]; then
        local c1 c4
        # shellcheck disable=SC2086
        c1=$(median ${S_CPU[hotplugd]}) c4=$(median ${S_CPU[tree-w4]})
        emit "That floor uses wall-clock exec times, which include waiting for a CPU on a loaded"
        emit "machine. The storm's own CPU time says more: $c1 µs/event with workers = 1, $c4 µs/event"
        emit "with workers = 4 on 64 devices, so $NPROC CPUs given wholly to the storm could take at most"
        emit "$(calc "$NPROC * 1e6 / $c1" 0) and $(calc "$NPROC * 1e6 / $c4" 0) events/s."
    fi
    emit ""
    TARGETS+=("| storm: hotplugd events/s ≥ 2x busybox mdev's | ${vs_mdev}x (${rate[hotplugd]} vs ${rate[mdev]} ev/s) | $(okmiss "$vs_mdev >= 2") |")
    TARGETS+=("| storm: 0 ordering violations, bounded processes | $viol_h violations, peak $peak_h processes | $(okmiss "$viol_h == 0 && $peak_h <= $STORM_JOBS + 4") |")
    TARGETS+=("| storm: within 1.3x of the CPU floor | ${vs_floor}x ($(calc "${wall[hotplugd]}" 2) s vs $(calc "$floor" 2) s) | $(okmiss "$vs_floor <= 1.3") |")
    # Lanes: related devices stay in order, at most W handlers more than one.
    local lv=() lok=1 rv pk wk
    for variant in hotplugd-w2 hotplugd-w4 tree tree-w2 tree-w4; do
        wk=1
        case $variant in *-w*) wk=${variant##*-w} ;; esac
        # shellcheck disable=SC2086
        rv=$(sum ${S_RVIOL[$variant]}) pk=$(max ${S_PEAK[$variant]})
        lv+=("$variant: $rv, peak $pk")
        awk "BEGIN {exit !($rv == 0 && $pk <= $STORM_JOBS + 3 + $wk)}" || lok=0
    done
    TARGETS+=("| storm, the other hotplugd rows: 0 related out of order, peak ≤ $STORM_JOBS + 3 + workers processes | $(join_by '; ' "${lv[@]}") | $([ "$lok" = 1 ] && echo met || echo MISSED) |")
    TARGETS+=("| storm, workers = 2 / 4 events/s vs workers = 1 (reported, no target; see below) | one device: $(calc "${rate[hotplugd-w2]} / ${rate[hotplugd]}")x / $(calc "${rate[hotplugd-w4]} / ${rate[hotplugd]}")x; 64 devices: $(calc "${rate[tree-w2]} / ${rate[tree]}")x / $(calc "${rate[tree-w4]} / ${rate[tree]}")x; vs mdev $(calc "${rate[hotplugd-w2]} / ${rate[mdev]}")x / $(calc "${rate[hotplugd-w4]} / ${rate[mdev]}")x | - |")
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
    local d0=$WORK/dispatch0 dq=$WORK/dispatchq d2=$WORK/dispatch2 dq2=$WORK/dispatchq2 r dir
    # Rule "true" runs /bin/true for every event; rule "mark" also runs the timestamping
    # handler for marked events: the time between two marks K events apart is K runs of
    # /bin/true (plus one handler run, < 0.1 % at K = 1000). d2 and dq2 are d0 and dq
    # with two workers: fifo_pump gives every event its own DEVPATH, so two run at once.
    for dir in "$d0" "$dq" "$d2" "$dq2"; do
        mkdir -p "$dir"
        {
            daemon_header "$dir" 600s
            case $dir in "$d2" | "$dq2") echo "workers = 2" ;; esac
            cat <<EOF2

[[rule]]
name = "true"
run = ["/bin/true"]

[[rule]]
name = "mark"
match = { BENCH_MARK = "1" }
run = ["$BIN/handler", "$dir/marks"]
EOF2
        } >"$dir/true.toml"
    done
    log "dispatch: $DISP_R rounds of $DISP_K runs: bare loop, 2 bare loops at once; daemon (workers 1, 2), empty queue and $DISP_Q queued"
    # Four daemons, each paused except while its window runs. The queued ones hold DISP_Q
    # events behind a front of 2K per round, marked every K, so every window has about
    # DISP_Q events queued behind it.
    local D0 DQ D2 DQ2 front=$((2 * DISP_K * DISP_R + 1)) marks=() m
    for m in $(seq 1 "$DISP_K" "$front"); do marks+=(-m "$m"); done
    start_daemon "$d0" "$d0/true.toml" warn
    D0=$DPID
    "$CTL" --runtime-dir "$d0/run" pause >/dev/null
    start_daemon "$d2" "$d2/true.toml" warn
    D2=$DPID
    "$CTL" --runtime-dir "$d2/run" pause >/dev/null
    start_daemon "$dq" "$dq/true.toml" warn
    DQ=$DPID
    "$CTL" --runtime-dir "$dq/run" pause >/dev/null
    "$BIN/fifo_pump" "${marks[@]}" "$dq/run/events" $((front + DISP_Q)) >/dev/null
    wait_field "$dq" received $((front + DISP_Q)) 300
    start_daemon "$dq2" "$dq2/true.toml" warn
    DQ2=$DPID
    "$CTL" --runtime-dir "$dq2/run" pause >/dev/null
    "$BIN/fifo_pump" "${marks[@]}" "$dq2/run/events" $((front + DISP_Q)) >/dev/null
    wait_field "$dq2" received $((front + DISP_Q)) 300
    local bare=() bare2=() w0=() wq=() w2=() wq2=() seq0=1 seq2=1 n0 i a b
    # window_empty DIR SEQ: K+1 events from SEQ, first and last marked, resume until
    # both marks are in, pause; prints µs per run.
    window_empty() {
        local n0
        n0=$(wc -l 2>/dev/null <"$1/marks" || echo 0)
        "$BIN/fifo_pump" -s "$2" -m "$2" -m $(($2 + DISP_K)) "$1/run/events" $((DISP_K + 1)) >/dev/null
        wait_field "$1" received $(($2 + DISP_K)) 60
        "$CTL" --runtime-dir "$1/run" resume >/dev/null
        marks_wait "$1/marks" $((n0 + 2)) $((DISP_K / 50 + 60))
        "$CTL" --runtime-dir "$1/run" pause >/dev/null
        window_us "$1/marks" $((n0 + 1)) "$DISP_K"
    }
    # window_queued DIR: resume until two new marks, pause; prints µs per run.
    window_queued() {
        local n0
        n0=$(wc -l 2>/dev/null <"$1/marks" || echo 0)
        "$CTL" --runtime-dir "$1/run" resume >/dev/null
        marks_wait "$1/marks" $((n0 + 2)) $((DISP_K / 25 + 60))
        "$CTL" --runtime-dir "$1/run" pause >/dev/null
        window_us "$1/marks" $((n0 + 1)) "$DISP_K"
    }
    for r in $(seq 1 "$DISP_R"); do
        for i in 0 1 2 3 4 5; do
            case $(((i + r) % 6)) in
            0)
                read -r m _ < <("$BIN/spawn_loop" "$DISP_K" /bin/true)
                bare+=("$m")
                ;;
            1) w0+=("$(window_empty "$d0" "$seq0")") seq0=$((seq0 + DISP_K + 1)) ;;
            2) wq+=("$(window_queued "$dq")") ;;
            3)  # two bare loops side by side: 2K runs from the first spawn to the last exit
                "$BIN/spawn_loop" "$DISP_K" /bin/true >"$WORK/bare2.a" &
                a=$!
                "$BIN/spawn_loop" "$DISP_K" /bin/true >"$WORK/bare2.b"
                wait "$a"
                bare2+=("$(cat "$WORK/bare2.a" "$WORK/bare2.b" | awk -v k="$DISP_K" '
                    NR == 1 || $3 < t0 {t0 = $3} NR == 1 || $4 > t1 {t1 = $4}
                    END {printf "%.1f", (t1 - t0) / 1e3 / (2 * k)}')")
                ;;
            4) w2+=("$(window_empty "$d2" "$seq2")") seq2=$((seq2 + DISP_K + 1)) ;;
            5) wq2+=("$(window_queued "$dq2")") ;;
            esac
        done
    done
    local qleft qleft2
    qleft=$(status_field "$dq" queued) qleft2=$(status_field "$dq2" queued)
    # SIGKILL: SIGTERM would hand the queued events to the spool first.
    for m in "$D0" "$DQ" "$D2" "$DQ2"; do DPID=$m stop_daemon KILL; done
    local mb m0 mq r0 rq mb2 m2 mq2 r2 rq2
    mb=$(calc "$(median "${bare[@]}")" 1) m0=$(calc "$(median "${w0[@]}")" 1) mq=$(calc "$(median "${wq[@]}")" 1)
    mb2=$(calc "$(median "${bare2[@]}")" 1) m2=$(calc "$(median "${w2[@]}")" 1) mq2=$(calc "$(median "${wq2[@]}")" 1)
    r0=$(calc "$mb / $m0" 3) rq=$(calc "$mb / $mq" 3) r2=$(calc "$mb2 / $m2" 3) rq2=$(calc "$mb2 / $mq2" 3)
    emit "### 4. Dispatch: handler runs of /bin/true"
    emit ""
    emit "Bare: posix_spawn + wait of /bin/true in a C loop (spawn_loop), $DISP_K runs per round."
    emit "hotplugd (--log-level warn): the time between the handler timestamps of two marked events"
    emit "$DISP_K runs apart, the daemon resumed only for that window. Empty queue: the $((DISP_K + 1)) events of the"
    emit "window are all that is queued. Queued: the window is at the front of $DISP_Q + more events"
    emit "($qleft still queued at the end with workers = 1, $qleft2 with workers = 2). $DISP_R interleaved rounds, order rotated."
    emit "Workers = 2: the same daemons with \`workers = 2\` (every event has its own DEVPATH, so two"
    emit "handlers run at once), against two bare loops run side by side, $DISP_K runs each, timed from"
    emit "the first spawn to the last exit: the same two spawns in flight on the same CPUs, with"
    emit "nothing in between. µs/run there is wall time per run of both together (per worker: twice"
    emit "that)."
    emit ""
    emit "| runner | µs/run per round | median µs/run | runs/s | vs bare loop |"
    emit "| --- | --- | --- | --- | --- |"
    emit "| bare posix_spawn loop (C) | $(join_sp "${bare[@]}") | $mb | $(calc "1e6 / $mb" 0) | 1.00 |"
    emit "| **hotplugd**, empty queue | $(join_sp "${w0[@]}") | $m0 | $(calc "1e6 / $m0" 0) | $r0 |"
    emit "| **hotplugd**, $DISP_Q queued | $(join_sp "${wq[@]}") | $mq | $(calc "1e6 / $mq" 0) | $rq |"
    emit "| 2 bare posix_spawn loops side by side (C) | $(join_sp "${bare2[@]}") | $mb2 | $(calc "1e6 / $mb2" 0) | 1.00 |"
    emit "| **hotplugd**, workers = 2, empty queue | $(join_sp "${w2[@]}") | $m2 | $(calc "1e6 / $m2" 0) | $r2 |"
    emit "| **hotplugd**, workers = 2, $DISP_Q queued | $(join_sp "${wq2[@]}") | $mq2 | $(calc "1e6 / $mq2" 0) | $rq2 |"
    local p0=() pq=() p2=() pq2=()
    for i in "${!bare[@]}"; do
        p0+=("$(calc "${bare[$i]} / ${w0[$i]}")") pq+=("$(calc "${bare[$i]} / ${wq[$i]}")")
        p2+=("$(calc "${bare2[$i]} / ${w2[$i]}")") pq2+=("$(calc "${bare2[$i]} / ${wq2[$i]}")")
    done
    emit "| ratio within each round, empty queue | $(join_sp "${p0[@]}") | median $(calc "$(median "${p0[@]}")") | | |"
    emit "| ratio within each round, $DISP_Q queued | $(join_sp "${pq[@]}") | median $(calc "$(median "${pq[@]}")") | | |"
    emit "| ratio within each round, workers = 2, empty queue | $(join_sp "${p2[@]}") | median $(calc "$(median "${p2[@]}")") | | |"
    emit "| ratio within each round, workers = 2, $DISP_Q queued | $(join_sp "${pq2[@]}") | median $(calc "$(median "${pq2[@]}")") | | |"
    emit ""
    emit "The headline ratio divides the medians; the per-round ratios show how far the load on"
    emit "the machine moved them (each round's six windows run back to back). Two loops at once"
    emit "against one: $(calc "$mb / $mb2")x the runs/s on $NPROC CPUs."
    emit ""
    TARGETS+=("| dispatch ≥ 0.95x the bare posix_spawn loop, unchanged with $DISP_Q queued | ${r0}x (empty queue), ${rq}x ($DISP_Q queued) | $(okmiss "$r0 >= 0.95 && $rq >= 0.95") |")
    TARGETS+=("| dispatch, workers = 2: ≥ 0.95x two bare posix_spawn loops side by side, unchanged with $DISP_Q queued | ${r2}x (empty queue), ${rq2}x ($DISP_Q queued) | $(okmiss "$r2 >= 0.95 && $rq2 >= 0.95") |")
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
    # With --only, only the benchmarks run are replaced; the others are kept, marked.
    "$ROOT/benches/update.sh" "$OUTDIR/results.md" "$ROOT/BENCHMARKS.md" "$ONLY" || true
fi
