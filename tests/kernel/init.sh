#!/bin/sh
# PID 1 of the User-Mode Linux guest that tests/kernel/ boots (busybox sh).
#
# The root is a host directory (hostfs): what we write under /results the host reads
# live. /test/scenario names what to do:
#
#   main   daemon up first, then the helper; dummy net device, one in a new network
#          namespace (a SEQNUM gap), loop, uevent writes and (driven by the host
#          through uml_mconsole) a ubd disk hot-added and removed
#   early  helper set with no daemon: events spool; then the daemon starts and drains
#          the spool, then one more event arrives live
#   kill   daemon SIGKILLed while a handler runs mid-burst, events while it is dead,
#          then restarted
#   netlink  helper path empty, the daemon reads the kernel's netlink broadcast only;
#          busybox `uevent` (a second netlink listener) records what the kernel sent
#   both   helper and netlink at once: every SEQNUM arrives twice, runs once
#   coalesce handlers paused while a dummy net device comes and goes: its removes
#          find their adds still queued and neither runs
#   overflow netlink only, a tiny receive buffer, the daemon SIGSTOPped while 100
#          events are made: the loss is counted and /sys rescanned
#
# Handshake with the host, all files in /results:
#   guest.log        progress, with uptime stamps
#   before, after    /sys/kernel/uevent_seqnum around the scenario's events
#   netns            "FROM TO": SEQNUMs in (FROM, TO] may have no helper run (main)
#   mconsole.request we want the host to hot-add and remove ubdb; mconsole.done: it did
#   provoked         all events are made, "after" is final
#   poweroff         written by the host once it has read what it needs
# Every wait has a deadline: the guest always powers off by itself.
#
# shellcheck disable=SC2016 # wait_until evals its condition later, on purpose

export PATH=/bin
R=/results
scenario=$(cat /test/scenario)
DAEMON_PID=

log() {
    read -r up _ < /proc/uptime
    echo "[$up] $*" >> "$R/guest.log"
}

# put NAME VALUE: write a result file atomically.
put() {
    echo "$2" > "$R/.$1.tmp"
    mv "$R/.$1.tmp" "$R/$1"
}

# wait_until SECONDS COMMAND: evaluate COMMAND every 20 ms until it succeeds, for at
# most SECONDS.
wait_until() {
    n=$(($1 * 50))
    while [ "$n" -gt 0 ]; do
        if eval "$2"; then return 0; fi
        usleep 20000
        n=$((n - 1))
    done
    log "timed out after $1s waiting for: $2"
    return 1
}

# Entries in the spool (not the shim's temp files).
spool_count() {
    c=0
    for f in /run/hotplugd/spool/*; do
        if [ -e "$f" ]; then c=$((c + 1)); fi
    done
    echo "$c"
}

seqnum() { cat /sys/kernel/uevent_seqnum; }

start_daemon() {
    /test/bin/hotplugd --config /test/hotplugd.toml --runtime-dir /run/hotplugd \
        --log-level info >> "$R/daemon.log" 2>&1 &
    DAEMON_PID=$!
    log "hotplugd started, pid $DAEMON_PID"
}

# The daemon is up: its control socket exists (netlink only has no FIFO).
wait_daemon() {
    wait_until 20 '[ -S /run/hotplugd/control ]' && log "daemon control socket is there"
}

# Events the daemon has taken in since it started.
received() {
    /test/bin/hotplugctl --runtime-dir /run/hotplugd status | sed -n 's/^received: *//p'
}

set_helper() {
    echo /test/trace-helper.sh > /proc/sys/kernel/hotplug
    log "helper: $(cat /proc/sys/kernel/hotplug)"
}

# Count trace records (one per helper run) with SEQNUM in ($1, $2].
traced_in() {
    c=0
    for f in "$R"/kernel/*; do
        s=${f##*/}
        case "$s" in *[!0-9]*|'') continue ;; esac
        if [ "$s" -gt "$1" ] && [ "$s" -le "$2" ]; then c=$((c + 1)); fi
    done
    echo "$c"
}

# Wait until every SEQNUM in ($1, $2] has a trace record: the kernel started the
# helper for all of them (it runs helpers asynchronously, so they trail the writes).
wait_traced() {
    lo=$1 hi=$2 want=$(($2 - $1))
    if wait_until 10 '[ "$(traced_in "$lo" "$hi")" -ge "$want" ]'; then
        log "all $want helper runs in ($lo, $hi] traced"
    else
        log "only $(traced_in "$lo" "$hi") of $want helper runs in ($lo, $hi] traced"
    fi
}

# Local events: a dummy net device, the loop module and a loop device, uevent writes.
provoke_net() {
    modprobe dummy || log "modprobe dummy failed"
    ip link add d0 type dummy || log "ip link add failed"
    ip link del d0 || log "ip link del failed"
}
provoke_loop() {
    modprobe loop || log "modprobe loop failed"
    dd if=/dev/zero of=/run/loop.img bs=1024 count=512 2>/dev/null
    losetup /dev/loop0 /run/loop.img || log "losetup failed"
    losetup -d /dev/loop0 || log "losetup -d failed"
}
# A dummy device made in a new network namespace, kept alive (its teardown would make
# events at a time of its own choosing). The kernel spends SEQNUMs on the namespace's
# net devices but does not run the helper for them: a gap the daemon must get past.
# Writes "FROM TO" to /results/netns: those SEQNUMs may lack a helper run.
provoke_netns() {
    from=$(seqnum)
    unshare -n sh -c 'ip link add dn0 type dummy; : > /tmp/netns-ready; exec sleep 3600' &
    wait_until 10 '[ -e /tmp/netns-ready ]'
    put netns "$from $(seqnum)"
    log "network namespace events: ($(cat "$R/netns"))"
}
provoke_uevent() {
    echo add > /sys/class/net/lo/uevent
    echo change > /sys/devices/virtual/misc/loop-control/uevent 2>/dev/null
}

finish() {
    put provoked "$(seqnum)"
    log "provoked; waiting for the host"
    wait_until 120 '[ -e "$R/poweroff" ]'
    if [ -n "$LISTENER_PID" ]; then
        # The last event's send follows its handler's end by a moment.
        wait_until 10 '[ "$(grep -c "^rebroadcast " "$R/handler.log")" -ge "$(grep -c "^end " "$R/handler.log")" ]'
    fi
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        wait_until 3 '[ ! -d "/proc/$DAEMON_PID" ]'
    fi
    ls -la /run/hotplugd /run/hotplugd/spool >> "$R/runtime-dir.txt" 2>&1
    log "poweroff"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null # CONFIG_DEVTMPFS_MOUNT may have done it
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t hostfs -o /usr/lib/uml/modules hostfs /lib/modules
mkdir -p "$R/kernel"
log "init: scenario $scenario, kernel $(uname -r), uevent_seqnum $(seqnum), helper '$(cat /proc/sys/kernel/hotplug)'"

case "$scenario" in
main)
    # Rebroadcast (issue 17): a listener on group 4 appends `rebroadcast SEQNUM ...` to
    # the handler log as each message arrives, so the log's order shows each was sent
    # after its handler's `end`.
    /test/bin/hotplugd --listen-uevents 4 >> "$R/handler.log" 2>> "$R/guest.log" &
    LISTENER_PID=$!
    start_daemon
    wait_until 20 '[ -p /run/hotplugd/events ]' && log "daemon FIFO is there"
    set_helper
    put before "$(seqnum)"
    provoke_net
    provoke_netns
    provoke_loop
    provoke_uevent
    log "local events done at $(seqnum); asking the host for ubdb"
    : > "$R/mconsole.request"
    wait_until 60 '[ -e "$R/mconsole.done" ]'
    log "host says ubdb came and went: $(cat "$R/mconsole.done")"
    put after "$(seqnum)"
    finish
    ;;
early)
    set_helper
    put before "$(seqnum)"
    provoke_net
    provoke_loop
    provoke_uevent
    spooled_to=$(seqnum)
    put spooled_to "$spooled_to"
    wait_traced "$(cat "$R/before")" "$spooled_to"
    # The trace is written before the shim runs: wait for the spool files as well.
    want=$((spooled_to - $(cat "$R/before")))
    wait_until 10 '[ "$(spool_count)" -ge "$want" ]'
    put spooled "$(spool_count)"
    log "spool holds $(cat "$R/spooled") entries; starting the daemon"
    start_daemon
    # One event while the daemon takes over: it must come after all the spooled ones.
    echo add > /sys/class/net/lo/uevent
    put after "$(seqnum)"
    finish
    ;;
kill)
    start_daemon
    wait_until 20 '[ -p /run/hotplugd/events ]' && log "daemon FIFO is there"
    set_helper
    put before "$(seqnum)"
    provoke_loop
    provoke_net
    log "burst made up to $(seqnum); waiting for the 4th handler"
    wait_until 30 '[ "$(grep -c "^start " "$R/handler.log" 2>/dev/null)" -ge 4 ]'
    kill -KILL "$DAEMON_PID"
    echo "killed $DAEMON_PID" >> "$R/handler.log"
    log "SIGKILLed hotplugd $DAEMON_PID at uevent_seqnum $(seqnum)"
    wait_until 3 '[ ! -d "/proc/$DAEMON_PID" ]'
    # Events while the daemon is dead: its FIFO holder keeps the pipe, so they wait in
    # it for the restart (or spool if it is full).
    ip link add d1 type dummy
    ip link del d1
    start_daemon
    echo "restarted $DAEMON_PID" >> "$R/handler.log"
    provoke_uevent
    put after "$(seqnum)"
    finish
    ;;
netlink)
    echo > /proc/sys/kernel/hotplug
    log "helper: '$(cat /proc/sys/kernel/hotplug)'"
    # The record of what the kernel broadcast: env -i, so the recorder's environment
    # is the event's variables and nothing else.
    env -i /bin/uevent /test/trace-netlink.sh &
    start_daemon
    wait_daemon
    put before "$(seqnum)"
    provoke_net
    provoke_loop
    provoke_uevent
    : > "$R/mconsole.request"
    wait_until 60 '[ -e "$R/mconsole.done" ]'
    put after "$(seqnum)"
    finish
    ;;
both)
    start_daemon
    wait_until 20 '[ -p /run/hotplugd/events ]' && log "daemon FIFO is there"
    set_helper
    put before "$(seqnum)"
    provoke_net
    provoke_loop
    provoke_uevent
    put after "$(seqnum)"
    finish
    ;;
coalesce)
    start_daemon
    wait_until 20 '[ -p /run/hotplugd/events ]' && log "daemon FIFO is there"
    set_helper
    /test/bin/hotplugctl --runtime-dir /run/hotplugd pause >> "$R/guest.log" 2>&1
    put before "$(seqnum)"
    modprobe dummy || log "modprobe dummy failed"
    ip link add d0 type dummy || log "ip link add failed"
    # The adds are queued before the removes exist, so this boot checks the usual
    # order; a remove whose helper wins the race is coalesced when its add arrives
    # (tests/daemon.rs and the queue's unit tests check that order).
    want=$(($(seqnum) - $(cat "$R/before")))
    wait_until 10 '[ "$(received)" -ge "$want" ]'
    ip link del d0 || log "ip link del failed"
    echo change > /sys/class/net/lo/uevent
    put after "$(seqnum)"
    # Every helper has run (and queued its event) before the handlers may start.
    wait_traced "$(cat "$R/before")" "$(cat "$R/after")"
    want=$(($(cat "$R/after") - $(cat "$R/before")))
    wait_until 10 '[ "$(received)" -ge "$want" ]'
    log "the daemon has received $(received) events; resuming"
    /test/bin/hotplugctl --runtime-dir /run/hotplugd resume >> "$R/guest.log" 2>&1
    finish
    ;;
overflow)
    echo > /proc/sys/kernel/hotplug
    start_daemon
    wait_daemon
    put before "$(seqnum)"
    echo change > /sys/class/net/lo/uevent
    kill -STOP "$DAEMON_PID"
    i=0
    while [ "$i" -lt 100 ]; do
        echo change > /sys/class/net/lo/uevent
        i=$((i + 1))
    done
    kill -CONT "$DAEMON_PID"
    log "100 events made while the daemon was stopped"
    # The rescan's adds (hundreds) are queued only once the socket has been drained: from
    # then on it takes events again. (A full 4 KiB buffer holds about ten.)
    wait_until 30 '[ "$(received)" -ge 50 ]'
    log "the daemon has drained the socket and rescanned: $(received) received"
    # One more after the loss, which shows how much was lost.
    echo add > /sys/class/net/lo/uevent
    put after "$(seqnum)"
    finish
    ;;
storm)
    # The benchmark (tests/kernel/storm.rs storm_bench): the kernel runs the helper for N
    # synthetic add events (mdev runs its @command on add only); every variant runs
    # /test/handler, which appends "SEQNUM NS".
    variant=$(cat /test/storm-variant)
    count=$(cat /test/storm-n) # not n: wait_until uses that
    case "$variant" in
    hotplugd)
        /test/bin/hotplugd --config /test/hotplugd.toml --runtime-dir /run/hotplugd \
            --log-level warn >> "$R/daemon.log" 2>&1 &
        wait_until 20 '[ -p /run/hotplugd/events ]'
        echo /test/bin/hotplug > /proc/sys/kernel/hotplug
        ;;
    mdev)
        printf '\n' > /dev/mdev.seq
        echo '.* 0:0 660 @/test/handler /results/records' > /etc/mdev.conf
        echo /bin/mdev > /proc/sys/kernel/hotplug
        ;;
    legacy)
        printf '#!/bin/sh\nexec /test/handler /results/records\n' > /run/legacy-hotplug
        chmod +x /run/legacy-hotplug
        echo /run/legacy-hotplug > /proc/sys/kernel/hotplug
        ;;
    esac
    log "storm: $variant, $count events"
    SEQNUM=0 /test/handler "$R/t0"
    i=0
    while [ "$i" -lt "$count" ]; do
        echo add > /sys/devices/virtual/mem/null/uevent
        i=$((i + 1))
    done
    log "storm: $count events made"
    wait_until 300 '[ "$(wc -l < "$R/records" 2>/dev/null || echo 0)" -ge "$count" ]'
    usleep 500000
    log "storm: $(wc -l < "$R/records") handler runs"
    poweroff -f
    ;;
*)
    log "unknown scenario '$scenario'"
    poweroff -f
    ;;
esac
