#!/bin/sh
# Run by busybox `uevent` (started with env -i) for each uevent the kernel broadcasts
# on netlink: the `netlink` scenario's record of what the kernel sent, in the format of
# trace-helper.sh. The environment is the datagram's variables only; HOME and PATH are
# what the kernel gives its helper, and what hotplugd promises netlink events carry too.
{
    echo "argv1=$SUBSYSTEM"
    tr '\0' '\n' < /proc/$$/environ
    echo "HOME=/"
    echo "PATH=/sbin:/bin:/usr/sbin:/usr/bin"
} > "/results/kernel/${SEQNUM:-noseq.$$}"
