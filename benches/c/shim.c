/* The job of hotplugd's shim, in plain static C: frame argv[1] and the environment as one
 * message in hotplugd's wire format (frame.h, src/message.rs: "HPLG", version 2, three
 * zero bytes, payload length u32 LE, checksum LE, then ARG1\0KEY=VALUE\0...), open
 * the FIFO O_WRONLY|O_NONBLOCK and write it with one write(). HOTPLUGD_RUNTIME_DIR picks
 * the directory and is left out of the message, as the real shim does.
 * No spool fallback, no fd sanitising, no owner check: the floor for "doing the job". */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include "frame.h"

extern char **environ;

int main(int argc, char **argv) {
    static const char key[] = "HOTPLUGD_RUNTIME_DIR=";
    unsigned char buf[4096];
    size_t len = 16;
    const char *dir = "/run/hotplugd";
    const char *arg1 = argc > 1 ? argv[1] : "";
    size_t n = strlen(arg1) + 1;
    if (len + n > sizeof buf) return 1;
    memcpy(buf + len, arg1, n);
    len += n;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, key, sizeof key - 1) == 0) {
            dir = *e + sizeof key - 1;
            continue;
        }
        n = strlen(*e) + 1;
        if (len + n > sizeof buf) return 1;
        memcpy(buf + len, *e, n);
        len += n;
    }
    frame_header(buf, (uint32_t)(len - 16));
    char path[512];
    size_t dl = strlen(dir);
    if (dl + sizeof "/events" > sizeof path) return 1;
    memcpy(path, dir, dl);
    memcpy(path + dl, "/events", sizeof "/events");
    int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return 1;
    ssize_t w = write(fd, buf, len);
    close(fd);
    return w == (ssize_t)len ? 0 : 1;
}
