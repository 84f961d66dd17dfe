/* The trivial handler every storm variant and the dispatch marks run: append
 * "SEQNUM MONOTONIC_NS DEVPATH\n" to argv[1] with one O_APPEND write, so the bench can
 * read the order handlers ran in, per device, and when the last one ran. Static, so its
 * cost is the same whoever runs it. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "event.h"

int main(int argc, char **argv) {
    int64_t t = now_ns();
    const char *seq = getenv("SEQNUM"), *dev = getenv("DEVPATH");
    char line[320];
    int n = snprintf(line, sizeof line, "%s %lld %.256s\n", seq ? seq : "-", (long long)t,
                     dev ? dev : "-");
    int fd = open(argc > 1 ? argv[1] : "/dev/null", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return 1;
    return write(fd, line, (size_t)n) == n ? 0 : 1;
}
