#!/bin/sh
# Run by the guest's "ubd-node" rule for ubdb's add and remove. The rule's node keys
# (mode, links) are applied before its handler starts, so this records what the daemon
# made of the node and its link at that moment, for the host to check.
# shellcheck disable=SC2012 # ls -ln is the point: the mode as an admin sees it
{
    ls -ln "/dev/$DEVNAME" 2>&1 | cut -c1-10
    echo "link $(readlink "/dev/disk/by-test/$DEVNAME" 2>/dev/null)"
} > "/results/node-at-$ACTION.txt"
