#!/usr/bin/env bash
# One storm variant, run by benches/run.sh as pid 1 of a private pid + mount namespace
# (`unshare --pid --fork --mount --mount-proc --kill-child`), so the driver's /proc count
# is exactly the storm's processes and mdev's tmpfs /dev and /etc stay private.
#
#   storm_ns.sh VARIANT N JOBS WORKDIR BINDIR RELEASEDIR [RUNTIMEDIR]
#
# VARIANT: hotplugd[-wW] | tree[-wW] | mdev | legacy. Every variant runs the same static C
# handler (BINDIR/handler WORKDIR/records), which appends "SEQNUM MONOTONIC_NS DEVPATH" per
# run. hotplugd-wW runs the daemon with `workers = W` (default 1); tree-wW does the same
# on a storm spread over 64 devices (8 hubs of a parent and 7 ports: STORM_DEVICES in
# benches/c/storm.c) instead of mdev's one device.
# Prints the driver's line "T0_NS T_REAPED_NS PEAK_PROCS FAILED_HELPERS"; on failure,
# prints a reason on stderr and exits non-zero. For hotplugd, WORKDIR/daemon-threads gets
# the daemon's thread count (run.sh turns the pids cgroup's peak task count into processes).
# RUNTIMEDIR (default WORKDIR/run) is hotplugd's runtime dir: run.sh puts it on a tmpfs,
# as /run is, while WORKDIR must not be under /dev (the mdev variant mounts over /dev).
set -euo pipefail
variant=$1 n=$2 jobs=$3 w=$4 bin=$5 rel=$6 rt=${7:-$4/run}
out=$w/records
rm -f "$out"
: >"$out"

case $variant in
hotplugd | hotplugd-w* | tree | tree-w*)
    workers=1 devices=
    case $variant in *-w*) workers=${variant##*-w} ;; esac
    case $variant in tree*) devices=64 ;; esac
    echo 0 >"$w/seqnum"
    cat >"$w/hotplugd.toml" <<EOF
[daemon]
seqnum_file = "$w/seqnum"
gap_timeout = "2s"
sources = ["fifo"]
workers = $workers

[[rule]]
name = "record"
run = ["$bin/handler", "$out"]
EOF
    rm -rf "$rt"
    # --log-level warn: per-event info lines are not what this bench measures.
    "$rel/hotplugd" --config "$w/hotplugd.toml" --runtime-dir "$rt" --log-level warn \
        2>"$w/daemon.log" &
    daemon=$!
    for _ in $(seq 1 200); do
        "$rel/hotplugctl" --runtime-dir "$rt" status >/dev/null 2>&1 && break
        sleep 0.05
    done
    HOTPLUGD_RUNTIME_DIR=$rt STORM_DEVICES=$devices "$bin/storm" "$n" "$jobs" "$rel/hotplug" mem >"$w/storm.out"
    if ! "$rel/hotplugctl" --runtime-dir "$rt" settle --seq "$n" --timeout 600 >/dev/null; then
        echo "storm_ns: hotplugd did not settle" >&2
        kill -KILL "$daemon"
        exit 1
    fi
    "$rel/hotplugctl" --runtime-dir "$rt" status --json >"$w/status.json"
    ls "/proc/$daemon/task" | wc -l >"$w/daemon-threads"
    kill -TERM "$daemon"
    wait "$daemon" || true
    ;;
mdev)
    # Private /dev and /etc: mdev mknods /dev/null (DEVPATH /devices/virtual/mem/null),
    # serializes on /dev/mdev.seq (seeded empty: the first mdev to run starts the count)
    # and runs the handler through `sh -c` for every event, as its @ command does.
    mount -t tmpfs bench-dev /dev
    mknod -m 666 /dev/null c 1 3
    printf '\n' >/dev/mdev.seq
    mount -t tmpfs bench-etc /etc
    printf '.* 0:0 660 @%s %s\n' "$bin/handler" "$out" >/etc/mdev.conf
    ln -sf "$(command -v busybox)" "$w/mdev"
    "$bin/storm" "$n" "$jobs" "$w/mdev" mem >"$w/storm.out"
    ;;
legacy)
    # The old /sbin/hotplug way: a shell script per event that runs the handler itself.
    printf '#!/bin/sh\n%s %s\n' "$bin/handler" "$out" >"$w/legacy-hotplug"
    chmod +x "$w/legacy-hotplug"
    "$bin/storm" "$n" "$jobs" "$w/legacy-hotplug" mem >"$w/storm.out"
    ;;
*)
    echo "storm_ns: unknown variant $variant" >&2
    exit 2
    ;;
esac
cat "$w/storm.out"
