/* fifo_read FIFO N [READY_FILE]: the raw FIFO reader. Creates FIFO if missing, opens it
 * O_RDWR (so it never sees EOF), grows the pipe to 1 MiB (F_SETPIPE_SZ, as hotplugd
 * does), touches READY_FILE, then reads 64 KiB at a time, pausing 100 us after a read
 * that found less, as hotplugd does, and splits length-prefixed frames (16-byte header,
 * magic checked, payload length at offset 8).
 * N > 0: stop after N frames and print "T_LAST_NS FRAMES BAD" (CLOCK_MONOTONIC).
 * N = 0: drain until SIGTERM/SIGINT, then print "0 FRAMES BAD". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "event.h"

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fifo_read FIFO N [READY_FILE]\n");
        return 2;
    }
    long want = atol(argv[2]);
    if (mkfifo(argv[1], 0600) < 0 && errno != EEXIST) {
        perror(argv[1]);
        return 1;
    }
    int fd = open(argv[1], O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    if (fcntl(fd, F_SETPIPE_SZ, 1 << 20) < 0) perror("F_SETPIPE_SZ");
    struct sigaction sa = {0};
    sa.sa_handler = on_sig; /* no SA_RESTART: read() returns EINTR */
    sigaction(SIGTERM, &sa, 0);
    sigaction(SIGINT, &sa, 0);
    if (argc > 3) close(open(argv[3], O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    enum { CHUNK = 64 * 1024 };
    static unsigned char buf[CHUNK + 8192];
    size_t have = 0;
    long frames = 0, bad = 0;
    while (!stop && (want == 0 || frames < want)) {
        ssize_t r = read(fd, buf + have, CHUNK);
        if (r < 0) {
            if (errno == EINTR) continue;
            perror("read");
            return 1;
        }
        /* Like hotplugd: a read that found little means the writer is about as fast as
         * this reader; wait 100 us so the next read takes many frames. Reading as soon as
         * a frame lands instead makes every write() wake this reader, and the writer
         * slows to that pace (0.7-0.8 M frames/s here in some rounds, 1.2-1.4 in others). */
        if (r < CHUNK) {
            struct timespec pause = {0, 100 * 1000};
            nanosleep(&pause, NULL);
        }
        have += (size_t)r;
        size_t pos = 0;
        while (have - pos >= 16) {
            unsigned char *h = buf + pos;
            if (memcmp(h, "HPLG", 4) != 0) { /* resync a byte at a time */
                bad++;
                pos++;
                continue;
            }
            uint32_t len = h[8] | h[9] << 8 | h[10] << 16 | (uint32_t)h[11] << 24;
            if (len > 4096 - 16) {
                bad++;
                pos++;
                continue;
            }
            if (have - pos < 16 + len) break;
            pos += 16 + len;
            frames++;
        }
        memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    printf("%lld %ld %ld\n", (long long)(want ? now_ns() : 0), frames, bad);
    return 0;
}
