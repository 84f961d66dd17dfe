/* The events the bench drivers hand out, and the stdio they give helpers. Shared by
 * spawn_loop.c, storm.c, fifo_pump.c.
 *
 * USB_VARS: a realistic 11-variable helper environment (a USB interface "add" as the
 * kernel's helper sees it: the uevent's variables plus HOME and PATH). SEQNUM and DEVPATH
 * are filled in per event by the driver.
 * STORM_VARS: what busybox mdev needs to do real work (/sys/devices/virtual/mem/null
 * exists, so it mknods /dev/null in its private /dev and runs the mdev.conf command). */
#ifndef BENCH_EVENT_H
#define BENCH_EVENT_H

#define USB_SUBSYSTEM "usb"
#define USB_DEVPATH "/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0"
static const char *const usb_vars[] = {
    "ACTION=add",
    /* DEVPATH, SEQNUM: per event */
    "SUBSYSTEM=usb",
    "DEVTYPE=usb_interface",
    "PRODUCT=46d/c52b/1211",
    "TYPE=0/0/0",
    "INTERFACE=3/1/1",
    "MODALIAS=usb:v046DpC52Bd1211dc00dsc00dp00ic03isc01ip01in00",
    "HOME=/",
    "PATH=/sbin:/bin:/usr/sbin:/usr/bin",
    0,
};

#define STORM_SUBSYSTEM "mem"
#define STORM_DEVPATH "/devices/virtual/mem/null"
static const char *const storm_vars[] = {
    "ACTION=add",
    "SUBSYSTEM=mem",
    "MAJOR=1",
    "MINOR=3",
    "DEVNAME=null",
    "DEVMODE=0666",
    "HOME=/",
    "PATH=/sbin:/bin:/usr/sbin:/usr/bin",
    0,
};

#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The helper environment both spawning drivers hand out: VARS, then DEVPATH_VAR
 * ("DEVPATH=..."), then SEQ (a buffer the driver rewrites as "SEQNUM=i" per event), then
 * HOTPLUGD_RUNTIME_DIR when it is set here (formatted into RT). ENV needs room for 32. */
static inline void bench_env(char **env, const char *const *vars, char *devpath_var, char *seq,
                             char *rt, size_t rt_len) {
    int k = 0;
    for (const char *const *v = vars; *v; v++) env[k++] = (char *)*v;
    env[k++] = devpath_var;
    env[k++] = seq;
    const char *d = getenv("HOTPLUGD_RUNTIME_DIR");
    if (d) {
        snprintf(rt, rt_len, "HOTPLUGD_RUNTIME_DIR=%s", d);
        env[k++] = rt;
    }
    env[k] = 0;
}
/* File actions giving a spawned helper /dev/null as stdin, stdout and stderr, as the
 * kernel's usermode helpers get; -1 (with a message) if /dev/null cannot be opened. */
static inline int devnull_stdio(posix_spawn_file_actions_t *fa) {
    posix_spawn_file_actions_init(fa);
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul < 0) {
        perror("/dev/null");
        return -1;
    }
    for (int fd = 0; fd < 3; fd++) posix_spawn_file_actions_adddup2(fa, nul, fd);
    return 0;
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
#endif
