#!/bin/sh
# The kernel's uevent helper during the test (/proc/sys/kernel/hotplug points here).
#
# Records what the kernel handed over, then becomes the real shim with the very same
# argv and environment. /proc/$$/environ is this process's environment as execve()
# received it: exactly the kernel's envp, before the shell added anything. The record
# is /results/kernel/<SEQNUM>: first line "argv1=<argv[1]>", then one KEY=VALUE a line.
# (Written in place, one fork only: every millisecond here delays the event. The host
# reads the records for their content only after the guest is down.)
#
# The shell exports PWD and SHLVL to what it execs; env -u drops them again, so the
# shim sees the kernel's environment byte for byte (the kernel always sets PATH, so the
# shell adds no default one).
{ echo "argv1=$1"; tr '\0' '\n' < /proc/$$/environ; } > "/results/kernel/${SEQNUM:-noseq.$$}"
exec env -u PWD -u SHLVL /test/bin/hotplug "$@"
