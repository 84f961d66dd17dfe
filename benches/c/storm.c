/* storm N JOBS HELPER [ARG...]: fire N helper runs the way the kernel does (concurrent,
 * fire-and-forget), keeping at most JOBS in flight: helper i gets the event environment
 * (storm_vars + DEVPATH + SEQNUM=i, 1..N, plus HOTPLUGD_RUNTIME_DIR if set here), is
 * started in SEQNUM order, and is reaped whenever any finishes. stdio goes to /dev/null.
 * DEVPATH is STORM_DEVPATH for every event, unless STORM_DEVICES=D (a multiple of 8) is
 * set here: then event i goes to device (i - 1) % D of a tree of D / 8 hubs, each a parent
 * device followed by its 7 ports (/devices/virtual/bench/hubH, .../hubH/portP), so most
 * neighbours in SEQNUM order are unrelated and a hub's event is related to its ports'.
 * A thread counts the entries of /proc every millisecond; the bench runs this in its own
 * pid namespace, so that is every process of the storm (helpers, their children, the
 * daemon, its handlers, this driver and the namespace's init).
 * Prints "T0_NS T_REAPED_NS PEAK_PROCS FAILED_HELPERS" (CLOCK_MONOTONIC). */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "event.h"

static atomic_int done;
static atomic_int peak;

static int count_procs(void) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9') n++;
    closedir(d);
    return n;
}

static void *sampler(void *arg) {
    (void)arg;
    struct timespec ms = {0, 1000000};
    while (!atomic_load(&done)) {
        int n = count_procs();
        if (n > atomic_load(&peak)) atomic_store(&peak, n);
        nanosleep(&ms, 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: storm N JOBS HELPER [ARG...]\n");
        return 2;
    }
    long n = atol(argv[1]);
    int jobs = atoi(argv[2]);
    char *env[32];
    char seq[40], devpath[96] = "DEVPATH=" STORM_DEVPATH, rt[600];
    const char *ds = getenv("STORM_DEVICES");
    long ndev = ds ? atol(ds) : 0;
    if (ndev < 0 || ndev % 8) {
        fprintf(stderr, "storm: STORM_DEVICES must be a multiple of 8\n");
        return 2;
    }
    bench_env(env, storm_vars, devpath, seq, rt, sizeof rt);
    posix_spawn_file_actions_t fa;
    if (devnull_stdio(&fa) < 0) return 1;
    pthread_t th;
    pthread_create(&th, 0, sampler, 0);
    long failed = 0;
    int inflight = 0;
    int64_t t0 = now_ns();
    for (long i = 0; i < n || inflight > 0;) {
        if (i < n && inflight < jobs) {
            snprintf(seq, sizeof seq, "SEQNUM=%ld", i + 1);
            if (ndev) {
                long k = i % ndev;
                if (k % 8 == 0)
                    snprintf(devpath, sizeof devpath, "DEVPATH=/devices/virtual/bench/hub%ld", k / 8);
                else
                    snprintf(devpath, sizeof devpath, "DEVPATH=/devices/virtual/bench/hub%ld/port%ld",
                             k / 8, k % 8);
            }
            pid_t pid;
            int e = posix_spawn(&pid, argv[3], &fa, NULL, argv + 3, env);
            if (e) {
                fprintf(stderr, "storm: %s: %s\n", argv[3], strerror(e));
                failed++;
            } else {
                inflight++;
            }
            i++;
            continue;
        }
        int st;
        if (waitpid(-1, &st, 0) > 0) {
            inflight--;
            if (!WIFEXITED(st) || WEXITSTATUS(st)) failed++;
        }
    }
    int64_t t1 = now_ns();
    atomic_store(&done, 1);
    pthread_join(th, 0);
    printf("%lld %lld %d %ld\n", (long long)t0, (long long)t1, atomic_load(&peak), failed);
    return 0;
}
