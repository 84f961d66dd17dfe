/* fifo_pump [-m SEQ]... [-s SEQ0] FIFO N [CMD ARG...]: the single writer. Builds N
 * messages first (the 11-variable USB event, SEQNUM SEQ0.. counting up, a DEVPATH unique
 * per event as in a coldplug storm, and BENCH_MARK=1 on each -m SEQ), then opens FIFO
 * O_WRONLY (blocking) and writes them one write() per message, as shims do, each
 * fetched into the cache a few writes ahead as a shim's freshly built one would be.
 * If CMD is given it is run (posix_spawn, waited) right after the last write: the bench
 * passes `hotplugctl settle`, so the end time is when the daemon has taken everything.
 * Prints "T0_NS T_WRITTEN_NS T_CMD_DONE_NS MESSAGES PAYLOAD_BYTES" (CLOCK_MONOTONIC). */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "event.h"
#include "frame.h"

extern char **environ;

static size_t put(unsigned char *p, const char *s) {
    size_t n = strlen(s) + 1;
    memcpy(p, s, n);
    return n;
}

int main(int argc, char **argv) {
    long marks[16];
    int nmarks = 0;
    long seq0 = 1;
    int opt;
    while ((opt = getopt(argc, argv, "+m:s:")) != -1) {
        if (opt == 'm' && nmarks < 16) marks[nmarks++] = atol(optarg);
        else if (opt == 's') seq0 = atol(optarg);
        else {
            fprintf(stderr, "usage: fifo_pump [-m SEQ]... [-s SEQ0] FIFO N [CMD ARG...]\n");
            return 2;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: fifo_pump [-m SEQ]... [-s SEQ0] FIFO N [CMD ARG...]\n");
        return 2;
    }
    const char *fifo = argv[optind];
    long n = atol(argv[optind + 1]);
    char **cmd = argc - optind > 2 ? argv + optind + 2 : NULL;
    enum { SLOT = 512, PREFETCH_AHEAD = 16 };
    unsigned char *all = malloc((size_t)n * SLOT);
    unsigned short *lens = malloc((size_t)n * sizeof *lens);
    if (!all || !lens) {
        perror("malloc");
        return 1;
    }
    long long payload_bytes = 0;
    char tmp[256];
    for (long i = 0; i < n; i++) {
        unsigned char *m = all + (size_t)i * SLOT, *p = m + 16;
        long seq = seq0 + i;
        p += put(p, USB_SUBSYSTEM);
        p += put(p, usb_vars[0]); /* ACTION first, as the kernel orders it */
        snprintf(tmp, sizeof tmp, "DEVPATH=%s/bench%ld", USB_DEVPATH, seq);
        p += put(p, tmp);
        for (const char *const *v = usb_vars + 1; *v; v++) p += put(p, *v);
        snprintf(tmp, sizeof tmp, "SEQNUM=%ld", seq);
        p += put(p, tmp);
        for (int k = 0; k < nmarks; k++)
            if (marks[k] == seq) p += put(p, "BENCH_MARK=1");
        uint32_t len = (uint32_t)(p - m - 16);
        frame_header(m, len);
        lens[i] = (unsigned short)(len + 16);
        payload_bytes += len;
    }
    int fd = open(fifo, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(fifo);
        return 1;
    }
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        /* A shim writes a message it has just built, from its cache. Here the messages
         * lie in n * 512 B built beforehand, far out of cache by the time they are
         * written: fetch each a few writes ahead, or the kernel's copy out of this
         * buffer stalls on memory and the writer, not the reader, sets the pace. */
        if (i + PREFETCH_AHEAD < n) {
            const unsigned char *next = all + (size_t)(i + PREFETCH_AHEAD) * SLOT;
            for (int l = 0; l < SLOT; l += 64) __builtin_prefetch(next + l);
        }
        ssize_t w = write(fd, all + (size_t)i * SLOT, lens[i]);
        if (w != lens[i]) {
            perror("write");
            return 1;
        }
    }
    int64_t tw = now_ns(), t1 = tw;
    close(fd);
    if (cmd) {
        pid_t pid;
        int e = posix_spawn(&pid, cmd[0], NULL, NULL, cmd, environ);
        if (e) {
            fprintf(stderr, "fifo_pump: %s: %s\n", cmd[0], strerror(e));
            return 1;
        }
        int st;
        waitpid(pid, &st, 0);
        t1 = now_ns();
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "fifo_pump: %s failed\n", cmd[0]);
            return 1;
        }
    }
    printf("%lld %lld %lld %ld %lld\n", (long long)t0, (long long)tw, (long long)t1, n, payload_bytes);
    return 0;
}
