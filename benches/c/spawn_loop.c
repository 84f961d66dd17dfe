/* spawn_loop N PROG [ARG...]: posix_spawn PROG N times, one at a time, waiting for each,
 * with the 11-variable USB helper environment (SEQNUM counting up from 1) plus
 * HOTPLUGD_RUNTIME_DIR if this process has it. stdin/stdout/stderr go to /dev/null.
 * Prints the mean microseconds per spawn+wait, the number of non-zero exits, and the first
 * spawn's and the last exit's CLOCK_MONOTONIC ns (to time loops run side by side). */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "event.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: spawn_loop N PROG [ARG...]\n");
        return 2;
    }
    long n = atol(argv[1]);
    char *env[32];
    char seq[40], devpath[] = "DEVPATH=" USB_DEVPATH, rt[600];
    bench_env(env, usb_vars, devpath, seq, rt, sizeof rt);
    posix_spawn_file_actions_t fa;
    if (devnull_stdio(&fa) < 0) return 1;
    long bad = 0;
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        snprintf(seq, sizeof seq, "SEQNUM=%ld", i + 1);
        pid_t pid;
        int e = posix_spawn(&pid, argv[2], &fa, NULL, argv + 2, env);
        if (e) {
            fprintf(stderr, "spawn_loop: %s: %s\n", argv[2], strerror(e));
            return 1;
        }
        int st;
        while (waitpid(pid, &st, 0) < 0) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st)) bad++;
    }
    int64_t t1 = now_ns();
    printf("%.1f %ld %lld %lld\n", (t1 - t0) / 1e3 / n, bad, (long long)t0, (long long)t1);
    return 0;
}
