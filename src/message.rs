//! The wire format of one event, shared by the shim, the FIFO reader, the spool and the
//! journal. kue's rule holds: a reader sees whole messages only, a header with the size
//! first, then the bytes.
//!
//! ```text
//!  0        4    5       8              12             16
//!  +--------+----+-------+--------------+--------------+----------------------------+
//!  | "HPLG" | 02 | 00 00 | payload len  | checksum of  | payload                    |
//!  | magic  | ver| zero  | u32 LE       | payload, LE  | ARG1 \0 KEY=VALUE \0 ...   |
//!  +--------+----+-------+--------------+--------------+----------------------------+
//! ```
//!
//! `ARG1` is the shim's `argv[1]` (the subsystem the kernel passed), possibly empty; then
//! every environment string of the shim, each NUL-terminated, in the order it had them.
//!
//! The magic and version let a daemon detect a shim of another release. The checksum is
//! what makes resynchronisation after garbage safe: writes of at most `PIPE_BUF` bytes to a
//! FIFO never interleave, so bad bytes can only come from a hostile or broken writer, and a
//! header whose checksum fails is skipped a byte at a time until the next real magic.
//!
//! Version 2 differs from version 1 only in the checksum: version 1's byte-serial FNV-1a
//! (a multiply per byte, each waiting for the last) was 80 % of the FIFO thread's time at
//! intake rates; version 2 takes the payload 8 bytes per multiply. Version 1 is still read,
//! so spool files and journal segments written before an upgrade are not lost.
//!
//! This module has no dependencies beyond `core` so the shim can link it cheaply.

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"HPLG";
/// Wire format version written; bump on any incompatible layout change.
pub const VERSION: u8 = 2;
/// The older version still read: the same layout with the FNV-1a checksum.
pub const VERSION_FNV: u8 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 16;
/// Writes of at most this many bytes to a pipe are atomic (POSIX, Linux `PIPE_BUF`).
pub const PIPE_BUF: usize = 4096;
/// Largest payload that may travel through the FIFO: header + payload fit one atomic write.
pub const MAX_FIFO_PAYLOAD: usize = PIPE_BUF - HEADER_LEN;
/// Largest payload accepted at all (spool files). The kernel's whole uevent environment is
/// at most 2048 bytes, so anything near this came from user space.
pub const MAX_PAYLOAD: usize = 64 * 1024 - HEADER_LEN;

const CHECKSUM_K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The version 2 checksum: the high 32 bits of [`hash64`] of the payload.
/// (hotplugd.toml(5) has it in words, for other implementations.)
pub fn checksum(bytes: &[u8]) -> u32 {
    (hash64(bytes) >> 32) as u32
}

/// A fast 64-bit hash of a byte string, no tables, 8 bytes per step: start from the
/// length XOR K; for each 8-byte little-endian word (the last one padded with zero bytes),
/// XOR it in, multiply by K and rotate left by 29; then fold the high half into the low
/// one and multiply by K once more. The wire checksum, and the daemon's key for DEVPATHs
/// and its byte-string map keys. Not DoS-resistant, which is fine for both: a checksum
/// only tells a real header from garbage, and the keys come from the kernel or root.
pub fn hash64(bytes: &[u8]) -> u64 {
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(CHECKSUM_K).rotate_left(29);
    let mut h = bytes.len() as u64 ^ CHECKSUM_K;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(last));
    }
    (h ^ (h >> 32)).wrapping_mul(CHECKSUM_K)
}

/// The version 1 checksum, FNV-1a 32: read for messages written before version 2.
pub fn checksum_fnv(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Fill `header` for `payload`.
pub fn write_header(header: &mut [u8; HEADER_LEN], payload: &[u8]) {
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5..8].copy_from_slice(&[0, 0, 0]);
    header[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[12..16].copy_from_slice(&checksum(payload).to_le_bytes());
}

/// Header and payload as one buffer, ready for a single `write()`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + payload.len()];
    let mut header = [0u8; HEADER_LEN];
    write_header(&mut header, payload);
    out[..HEADER_LEN].copy_from_slice(&header);
    out[HEADER_LEN..].copy_from_slice(payload);
    out
}

/// Why bytes were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes do not start with the magic.
    BadMagic,
    /// A header from another release of the shim.
    BadVersion(u8),
    /// The header's size is larger than the limit for this channel.
    TooLarge(u32),
    /// The payload does not match the header's checksum (truncated, or garbage that
    /// happened to contain the magic).
    Checksum,
    /// A whole file or buffer ended before the message it announced.
    Truncated,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::BadMagic => write!(f, "bad magic"),
            FrameError::BadVersion(v) => {
                write!(
                    f,
                    "message version {v}, this daemon speaks {VERSION_FNV} and {VERSION}"
                )
            }
            FrameError::TooLarge(n) => write!(f, "announced size {n} is out of range"),
            FrameError::Checksum => write!(f, "checksum mismatch (truncated or corrupt)"),
            FrameError::Truncated => write!(f, "truncated message"),
        }
    }
}

/// What the front of a byte stream holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole message: its payload, and how many bytes it took.
    Message { payload: &'a [u8], len: usize },
    /// The bytes so far are a plausible start of a message; more are needed.
    Incomplete,
    /// The first `skip` bytes cannot start a message and must be dropped.
    Garbage { skip: usize, error: FrameError },
}

/// Decode the message at the front of `buf`, accepting payloads up to `max_payload`.
pub fn next_frame(buf: &[u8], max_payload: usize) -> Frame<'_> {
    let have = buf.len().min(MAGIC.len());
    if buf[..have] != MAGIC[..have] {
        return Frame::Garbage {
            skip: resync_offset(buf),
            error: FrameError::BadMagic,
        };
    }
    if buf.len() < HEADER_LEN {
        return Frame::Incomplete;
    }
    // Where the next possible message starts is only needed on the garbage paths: a scan
    // of the whole rest of the buffer per good message would cost more than the message.
    let version = buf[4];
    if version != VERSION && version != VERSION_FNV {
        return Frame::Garbage {
            skip: resync_offset(buf),
            error: FrameError::BadVersion(buf[4]),
        };
    }
    let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if buf[5..8] != [0, 0, 0] || size as usize > max_payload {
        return Frame::Garbage {
            skip: resync_offset(buf),
            error: FrameError::TooLarge(size),
        };
    }
    let total = HEADER_LEN + size as usize;
    if buf.len() < total {
        return Frame::Incomplete;
    }
    let payload = &buf[HEADER_LEN..total];
    let sum = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    let expected = if version == VERSION {
        checksum(payload)
    } else {
        checksum_fnv(payload)
    };
    if expected != sum {
        return Frame::Garbage {
            skip: resync_offset(buf),
            error: FrameError::Checksum,
        };
    }
    Frame::Message {
        payload,
        len: total,
    }
}

/// How many leading bytes to drop so that `buf` starts at the next possible magic
/// (a full match, or a partial one cut off by the end of the buffer). Never 0.
fn resync_offset(buf: &[u8]) -> usize {
    (1..buf.len())
        .find(|&i| {
            // Cheap first-byte test before comparing the (possibly partial) magic.
            buf[i] == MAGIC[0] && {
                let rest = &buf[i..];
                let n = rest.len().min(MAGIC.len());
                rest[..n] == MAGIC[..n]
            }
        })
        .unwrap_or(buf.len())
}

/// Decode a buffer that must hold exactly one message (a spool or journal file).
pub fn decode_whole(buf: &[u8]) -> Result<&[u8], FrameError> {
    match next_frame(buf, MAX_PAYLOAD) {
        Frame::Message { payload, len } if len == buf.len() => Ok(payload),
        Frame::Message { .. } => Err(FrameError::TooLarge(buf.len() as u32)),
        Frame::Incomplete => Err(FrameError::Truncated),
        Frame::Garbage { error, .. } => Err(error),
    }
}

/// A byte stream splitter for the FIFO: feed it what `read()` returned, take whole
/// payloads and garbage reports out. It keeps at most one partial message between reads.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`: how many bytes were fed and consumed before it.
    consumed: u64,
}

/// One item out of a [`Splitter`].
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    Message(&'a [u8]),
    /// `bytes` were dropped; `error` says why the first of them could not start a message.
    Garbage {
        bytes: usize,
        error: FrameError,
    },
}

impl Splitter {
    pub fn new() -> Self {
        Splitter {
            buf: Vec::with_capacity(2 * PIPE_BUF),
            consumed: 0,
        }
    }

    /// Bytes held back as the start of a message not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Those bytes.
    pub fn held(&self) -> &[u8] {
        &self.buf
    }

    /// Split `chunk` (appended to any held-back partial message) into items. Garbage runs
    /// are merged into one report each.
    pub fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Item<'_>)) {
        self.feed_at(chunk, |item, _| on(item))
    }

    /// As [`feed`](Self::feed), also telling each item's offset in the whole stream fed so
    /// far (the journal names events by it).
    pub fn feed_at(&mut self, chunk: &[u8], mut on: impl FnMut(Item<'_>, u64)) {
        let base = self.consumed;
        let used = if self.buf.is_empty() {
            let used = split(chunk, base, &mut on);
            self.buf.extend_from_slice(&chunk[used..]);
            used
        } else {
            self.buf.extend_from_slice(chunk);
            let used = split(&self.buf, base, &mut on);
            self.buf.drain(..used);
            used
        };
        self.consumed += used as u64;
    }

    /// The writer went quiet with a partial message held: it was truncated. Drop bytes up
    /// to the next possible magic and split what follows.
    pub fn flush_stale(&mut self, mut on: impl FnMut(Item<'_>)) {
        self.flush_stale_at(|item, _| on(item))
    }

    /// As [`flush_stale`](Self::flush_stale), with stream offsets.
    pub fn flush_stale_at(&mut self, mut on: impl FnMut(Item<'_>, u64)) {
        if self.buf.is_empty() {
            return;
        }
        let used = split_stale(&self.buf, self.consumed, &mut on);
        self.buf.drain(..used);
        self.consumed += used as u64;
    }
}

/// Split whole messages off the front of `buf` (at stream offset `base`); returns how many
/// bytes were used. What is left is the start of a message not yet complete. For callers
/// that keep the stream in memory of their own (the journal segment); others use
/// [`Splitter`].
pub fn split(buf: &[u8], base: u64, mut on: impl FnMut(Item<'_>, u64)) -> usize {
    let mut pos = 0;
    let mut garbage: Option<(usize, FrameError, usize)> = None;
    while pos < buf.len() {
        match next_frame(&buf[pos..], MAX_FIFO_PAYLOAD) {
            Frame::Message { payload, len } => {
                if let Some((bytes, error, at)) = garbage.take() {
                    on(Item::Garbage { bytes, error }, base + at as u64);
                }
                on(Item::Message(payload), base + pos as u64);
                pos += len;
            }
            Frame::Garbage { skip, error } => {
                let g = garbage.get_or_insert((0, error, pos));
                g.0 += skip;
                pos += skip;
            }
            Frame::Incomplete => break,
        }
    }
    if let Some((bytes, error, at)) = garbage {
        on(Item::Garbage { bytes, error }, base + at as u64);
    }
    pos
}

/// The writer went quiet with the partial message `buf` (at stream offset `base`) held:
/// it was truncated. Drop bytes up to the next possible magic, split what follows;
/// returns how many bytes were used.
pub fn split_stale(buf: &[u8], base: u64, mut on: impl FnMut(Item<'_>, u64)) -> usize {
    if buf.is_empty() {
        return 0;
    }
    let skip = resync_offset(buf);
    on(
        Item::Garbage {
            bytes: skip,
            error: FrameError::Truncated,
        },
        base,
    );
    skip + split(&buf[skip..], base + skip as u64, on)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(s: &mut Splitter, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        s.feed(chunk, |item| {
            out.push(match item {
                Item::Message(p) => String::from_utf8_lossy(p).into_owned(),
                Item::Garbage { bytes, error } => format!("garbage {bytes} {error:?}"),
            })
        });
        out
    }

    const KNOWN: [u32; 4] = [0xab16_9eb8, 0xa0a7_876f, 0x39bb_8d00, 0x860d_afc3];

    /// Pinned values: another implementation of the format (the C shim of the
    /// benchmarks, a shim in another language) checks itself against these.
    #[test]
    fn checksum_known_answers() {
        let known: [(&[u8], u32); 4] = [
            (b"", KNOWN[0]),
            (b"a", KNOWN[1]),
            (b"usb\0ACTION=add\0", KNOWN[2]),
            (b"12345678", KNOWN[3]),
        ];
        for (bytes, want) in known {
            assert_eq!(
                checksum(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(checksum_fnv(b"a"), 0xe40c_292c);
    }

    /// Zero padding of the last word must not make payloads that differ only in
    /// trailing NULs collide, and every single-bit flip must show.
    #[test]
    fn checksum_sees_length_and_every_bit() {
        assert_ne!(checksum(b"ab"), checksum(b"ab\0"));
        assert_ne!(checksum(b""), checksum(b"\0"));
        let p = b"usb\0ACTION=add\0DEVPATH=/devices/pci0000:00/usb1\0SEQNUM=4711\0".to_vec();
        let sum = checksum(&p);
        for i in 0..p.len() * 8 {
            let mut q = p.clone();
            q[i / 8] ^= 1 << (i % 8);
            assert_ne!(checksum(&q), sum, "bit {i}");
        }
    }

    #[test]
    fn version_1_is_still_read() {
        let payload = b"usb\0ACTION=add\0DEVPATH=/d\0";
        let mut m = encode(payload);
        m[4] = VERSION_FNV;
        m[12..16].copy_from_slice(&checksum_fnv(payload).to_le_bytes());
        assert_eq!(decode_whole(&m), Ok(&payload[..]));
        // A version 1 header with a version 2 checksum is garbage.
        m[12..16].copy_from_slice(&checksum(payload).to_le_bytes());
        assert_eq!(decode_whole(&m), Err(FrameError::Checksum));
        m[4] = 3;
        assert_eq!(decode_whole(&m), Err(FrameError::BadVersion(3)));
    }

    #[test]
    fn round_trip_and_byte_at_a_time() {
        let a = encode(b"usb\0ACTION=add\0");
        let b = encode(b"net\0ACTION=remove\0");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut s = Splitter::new();
        assert_eq!(
            collect(&mut s, &all),
            vec!["usb\0ACTION=add\0", "net\0ACTION=remove\0"]
        );
        let mut got = Vec::new();
        for byte in &all {
            got.extend(collect(&mut s, std::slice::from_ref(byte)));
        }
        assert_eq!(got, vec!["usb\0ACTION=add\0", "net\0ACTION=remove\0"]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn offsets_follow_the_stream() {
        let a = encode(b"a\0");
        let b = encode(b"bb\0");
        let mut stream = a.clone();
        stream.extend_from_slice(b"junk");
        stream.extend_from_slice(&b);
        let mut s = Splitter::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(5) {
            s.feed_at(chunk, |item, off| {
                if let Item::Message(p) = item {
                    got.push((p.to_vec(), off))
                }
            });
        }
        assert_eq!(
            got,
            vec![
                (b"a\0".to_vec(), 0),
                (b"bb\0".to_vec(), (a.len() + 4) as u64)
            ]
        );
    }

    #[test]
    fn garbage_then_message_is_found() {
        let mut stream = b"HPLGxxHPjunk\0\0HPL".to_vec();
        stream.extend_from_slice(&encode(b"x\0ACTION=add\0"));
        let mut s = Splitter::new();
        let got = collect(&mut s, &stream);
        assert_eq!(got.last().unwrap(), "x\0ACTION=add\0");
        assert!(got[0].starts_with("garbage"));
    }

    #[test]
    fn truncated_message_followed_by_good_one() {
        let good = encode(b"x\0ACTION=add\0");
        let mut stream = encode(b"y\0ACTION=add\0DEVPATH=/a/long/path\0");
        stream.truncate(20);
        stream.extend_from_slice(&good);
        let mut s = Splitter::new();
        // The announced size swallows the good message: it waits until the writer goes
        // quiet, then the truncated one is dropped and the good one found inside.
        assert!(collect(&mut s, &stream).is_empty());
        let mut got = Vec::new();
        s.flush_stale(|item| {
            if let Item::Message(p) = item {
                got.push(p.to_vec())
            }
        });
        assert_eq!(got, vec![b"x\0ACTION=add\0".to_vec()]);
    }

    #[test]
    fn stale_partial_is_flushed() {
        let mut s = Splitter::new();
        let mut m = encode(b"x\0ACTION=add\0");
        m.truncate(10);
        assert!(collect(&mut s, &m).is_empty());
        let mut out = 0;
        s.flush_stale(|_| out += 1);
        assert!(out >= 1);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn oversized_and_version() {
        let mut m = encode(b"x\0");
        m[4] = 9;
        assert_eq!(
            next_frame(&m, MAX_PAYLOAD),
            Frame::Garbage {
                skip: m.len(),
                error: FrameError::BadVersion(9)
            }
        );
        let big = vec![b'a'; MAX_FIFO_PAYLOAD + 1];
        let m = encode(&big);
        assert!(matches!(
            next_frame(&m, MAX_FIFO_PAYLOAD),
            Frame::Garbage {
                error: FrameError::TooLarge(_),
                ..
            }
        ));
        assert_eq!(decode_whole(&m), Ok(&big[..]));
    }
}
