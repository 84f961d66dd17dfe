#!/bin/sh
# The one rule's handler: records each run in /results/handler.log.
#
#   start SEQNUM ACTION DEVPATH SUBSYSTEM
#   env SEQNUM KEY=VALUE          (one line per variable the daemon gave us, from
#   ...                            /proc/$$/environ: untouched by this shell)
#   overlap SEQNUM HOLDER         (only if another handler held the lock: never expected)
#   end SEQNUM
#
# The lock is a directory (mkdir is atomic); HOLDER is the SEQNUM that held it.
# /test/handler-usleep holds how long to stay busy, in microseconds.
log=/results/handler.log
lock=/results/handler.lock
held=0
if mkdir "$lock" 2>/dev/null; then
    echo "$SEQNUM" > "$lock/seqnum"
    held=1
fi
{
    echo "start $SEQNUM $ACTION $DEVPATH $SUBSYSTEM"
    tr '\0' '\n' < /proc/$$/environ | sed "s/^/env $SEQNUM /"
    if [ "$held" = 0 ]; then
        echo "overlap $SEQNUM $(cat "$lock/seqnum" 2>/dev/null)"
    fi
} >> "$log"
usleep "$(cat /test/handler-usleep 2>/dev/null || echo 50000)"
if [ "$held" = 1 ]; then
    rm -f "$lock/seqnum"
    rmdir "$lock"
fi
echo "end $SEQNUM" >> "$log"
