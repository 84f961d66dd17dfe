/* hotplugd's wire format, version 2 (src/message.rs; hotplugd.toml(5) MESSAGE FORMAT):
 * "HPLG", version 2, three zero bytes, payload length (u32 LE), checksum (u32 LE), payload.
 * Shared by shim.c and fifo_pump.c, so the C programs do exactly the job the Rust shim
 * does. Little-endian hosts only, like the format itself. */
#ifndef BENCH_FRAME_H
#define BENCH_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 8 payload bytes per multiply; the last word zero-padded; the length mixed in first. */
static inline uint32_t frame_checksum(const unsigned char *p, size_t n) {
    const uint64_t k = 0x9e3779b97f4a7c15ull;
    uint64_t h = (uint64_t)n ^ k, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        h = (h ^ w) * k;
        h = (h << 29) | (h >> 35);
    }
    if (i < n) {
        w = 0;
        memcpy(&w, p + i, n - i);
        h = (h ^ w) * k;
        h = (h << 29) | (h >> 35);
    }
    return (uint32_t)(((h ^ (h >> 32)) * k) >> 32);
}

/* Fill the 16-byte header in front of a payload of `len` bytes at m + 16. */
static inline void frame_header(unsigned char *m, uint32_t len) {
    uint32_t h = frame_checksum(m + 16, len);
    memcpy(m, "HPLG\2\0\0\0", 8);
    for (int b = 0; b < 4; b++) {
        m[8 + b] = (unsigned char)(len >> (8 * b));
        m[12 + b] = (unsigned char)(h >> (8 * b));
    }
}

#endif
