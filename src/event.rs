//! One uevent held compactly: the message payload in one boxed buffer, plus the SEQNUM and
//! the offsets of the few fields the daemon looks at on every event. No map of owned
//! strings: a queued event costs its payload plus a fixed ~40 bytes (after mdevd's
//! `struct uevent_s`).

use std::fmt;
use std::ops::Range;

/// Most variables one event may carry. The kernel sends at most 64 (`UEVENT_NUM_ENVP`)
/// plus the helper's HOME and PATH; the margin covers synthetic events.
pub const MAX_VARS: usize = 256;

/// Why a payload is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("payload does not end with NUL")]
    Unterminated,
    #[error("variable {0} has no '='")]
    NotAssignment(usize),
    #[error("more than {MAX_VARS} variables")]
    TooManyVars,
    #[error("no {0}")]
    Missing(&'static str),
    #[error("SEQNUM {0:?} is not a decimal number")]
    BadSeqnum(String),
    #[error("{0} bytes is more than an event may hold ({MAX_EVENT})")]
    TooLarge(usize),
}

/// Largest payload an event holds: its field offsets are `u16`. Above every channel's own
/// limit (the FIFO's 4 KiB, a spool file's 64 KiB less the header).
pub const MAX_EVENT: usize = u16::MAX as usize;

/// A decoded event. Cloning copies the buffer; the queue never clones, the runner does
/// once per handler run.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    seqnum: u64,
    /// Where the journal keeps this event (0: not journaled); see `journal`.
    id: u64,
    buf: Box<[u8]>,
    action: (u16, u16),
    devpath: (u16, u16),
    subsystem: (u16, u16),
    /// `SYNTH_UUID`'s value ((0, 0) when absent): every handled event is checked for
    /// one, and this fits the struct's padding.
    tag: (u16, u16),
}

const NO_SEQNUM: u64 = u64::MAX;

impl Event {
    /// Validate a message payload (`ARG1\0KEY=VALUE\0...`) and index it.
    pub fn from_payload(payload: &[u8]) -> Result<Event, EventError> {
        Self::from_boxed(payload.into())
    }

    fn from_boxed(buf: Box<[u8]>) -> Result<Event, EventError> {
        if buf.len() > MAX_EVENT {
            return Err(EventError::TooLarge(buf.len()));
        }
        if buf.last() != Some(&0) {
            return Err(EventError::Unterminated);
        }
        let mut ev = Event {
            seqnum: NO_SEQNUM,
            id: 0,
            action: (0, 0),
            devpath: (0, 0),
            subsystem: (0, 0),
            tag: (0, 0),
            buf,
        };
        // One pass over the payload: the NULs and `=`s come out of `Separators` in order,
        // the first `=` of each variable ends its key.
        let buf = &ev.buf;
        let mut seps = Separators::new(buf);
        let arg1_end = seps.by_ref().find(|&(_, nul)| nul).map_or(0, |(p, _)| p);
        let mut subsystem = None;
        let mut seqnum = None;
        let (mut action, mut devpath, mut tag) = (None, None, None);
        let mut start = arg1_end + 1;
        let mut eq = None;
        let mut n = 0;
        for (p, nul) in seps {
            if !nul {
                eq = eq.or(Some(p));
                continue;
            }
            n += 1;
            if n > MAX_VARS {
                return Err(EventError::TooManyVars);
            }
            let eq = match eq.take() {
                Some(eq) if eq > start => eq,
                _ => return Err(EventError::NotAssignment(n)),
            };
            let value = (eq + 1) as u16..p as u16;
            match &buf[start..eq] {
                b"ACTION" => action = Some(value),
                b"DEVPATH" => devpath = Some(value),
                b"SUBSYSTEM" => subsystem = Some(value),
                b"SEQNUM" => seqnum = Some(value),
                b"SYNTH_UUID" => tag = Some(value),
                _ => {}
            }
            start = p + 1;
        }
        let action = action.filter(|r| !r.is_empty());
        let devpath = devpath.filter(|r| !r.is_empty());
        ev.action = range(action.ok_or(EventError::Missing("ACTION"))?);
        ev.devpath = range(devpath.ok_or(EventError::Missing("DEVPATH"))?);
        ev.subsystem = range(subsystem.unwrap_or(0..arg1_end as u16));
        ev.tag = tag.map_or((0, 0), range);
        if let Some(r) = seqnum {
            let text = &ev.buf[r.start as usize..r.end as usize];
            ev.seqnum = parse_seqnum(text)
                .ok_or_else(|| EventError::BadSeqnum(String::from_utf8_lossy(text).into()))?;
        }
        Ok(ev)
    }

    /// Build an event from variables (synthetic events, tests). `arg1` is the subsystem
    /// argument a shim would have had.
    pub fn from_vars<'a>(
        arg1: &[u8],
        vars: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Event, EventError> {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(arg1);
        buf.push(0);
        for (k, v) in vars {
            buf.extend_from_slice(k);
            buf.push(b'=');
            buf.extend_from_slice(v);
            buf.push(0);
        }
        Self::from_boxed(buf.into_boxed_slice())
    }

    /// The journal's name for this event (0: not journaled).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn set_id(&mut self, id: u64) {
        self.id = id;
    }

    /// The kernel's sequence number, if the event has one.
    pub fn seqnum(&self) -> Option<u64> {
        (self.seqnum != NO_SEQNUM).then_some(self.seqnum)
    }
    pub fn action(&self) -> &[u8] {
        self.field(self.action)
    }
    pub fn devpath(&self) -> &[u8] {
        self.field(self.devpath)
    }
    /// `SUBSYSTEM` from the environment, else the shim's `argv[1]`.
    pub fn subsystem(&self) -> &[u8] {
        self.field(self.subsystem)
    }
    /// `SYNTH_UUID`, the tag `hotplugctl trigger` gives its events (the last one if
    /// repeated, as [`get`](Self::get) has it).
    pub fn tag(&self) -> Option<&[u8]> {
        (self.tag.1 != 0).then(|| self.field(self.tag))
    }

    /// The shim's `argv[1]` (empty for netlink and synthetic events without one).
    pub fn arg1(&self) -> &[u8] {
        let end = find_byte(&self.buf, 0).unwrap_or(0);
        &self.buf[..end]
    }

    /// The message payload, as it travels and is spooled.
    pub fn payload(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes this event holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Every `KEY=VALUE` variable, in message order.
    pub fn vars(&self) -> Vars<'_> {
        let start = self.arg1().len() + 1;
        Vars {
            rest: &self.buf[start.min(self.buf.len())..],
        }
    }

    /// Every variable as its `KEY=VALUE\0` bytes in the buffer, NUL included: each is a C
    /// string as it lies (what a handler's envp points at).
    pub fn var_strings(&self) -> impl Iterator<Item = &[u8]> {
        let start = (self.arg1().len() + 1).min(self.buf.len());
        let mut rest = &self.buf[start..];
        std::iter::from_fn(move || {
            let end = find_byte(rest, 0)?;
            let (var, tail) = rest.split_at(end + 1);
            rest = tail;
            Some(var)
        })
    }

    /// The value of one variable (the last one if it is repeated).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        match key {
            b"ACTION" => Some(self.action()),
            b"DEVPATH" => Some(self.devpath()),
            _ => self
                .vars()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .last(),
        }
    }

    fn field(&self, r: (u16, u16)) -> &[u8] {
        &self.buf[r.0 as usize..r.1 as usize]
    }

    /// `SEQNUM ACTION DEVPATH (SUBSYSTEM)`, for logs.
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}

fn range(r: Range<u16>) -> (u16, u16) {
    (r.start, r.end)
}

/// The index of the first `needle` in `hay`, eight bytes at a time (the classic
/// "has zero byte" word trick): every event is scanned for its NULs and `=`s on intake and
/// again on every variable lookup, and a byte loop was a visible share of the daemon's
/// intake time.
#[inline]
pub fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let rep = LO.wrapping_mul(needle as u64);
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ rep;
        // Exact for the lowest matching byte: a false positive can only sit above a match.
        let t = w.wrapping_sub(LO) & !w & HI;
        if t != 0 {
            return Some(base + (t.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|p| base + p)
}

/// The positions of every NUL and `=` in a buffer, in order, each with whether it is the
/// NUL: the parse's one pass. Found 64 bytes at a time as bit masks (SSE2 compares on
/// x86_64, a byte loop elsewhere), so a variable costs a few bit operations rather than
/// two scans of its bytes.
struct Separators<'a> {
    buf: &'a [u8],
    /// Start of the 64-byte block the masks cover.
    block: usize,
    /// Separators not yet returned, and which of the block's bytes are NULs.
    mask: u64,
    nul: u64,
}

impl<'a> Separators<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let (nul, eq) = separator_masks(buf);
        Separators {
            buf,
            block: 0,
            mask: nul | eq,
            nul,
        }
    }
}

impl Iterator for Separators<'_> {
    type Item = (usize, bool);

    #[inline]
    fn next(&mut self) -> Option<(usize, bool)> {
        while self.mask == 0 {
            self.block += 64;
            if self.block >= self.buf.len() {
                return None;
            }
            let (nul, eq) = separator_masks(&self.buf[self.block..]);
            self.mask = nul | eq;
            self.nul = nul;
        }
        let bit = self.mask & self.mask.wrapping_neg();
        self.mask ^= bit;
        Some((
            self.block + bit.trailing_zeros() as usize,
            self.nul & bit != 0,
        ))
    }
}

/// Bit i set: byte i of `buf`'s first 64 is NUL, and is `=`.
#[inline]
fn separator_masks(buf: &[u8]) -> (u64, u64) {
    let mut block = [1u8; 64];
    let chunk = match buf.get(..64) {
        Some(whole) => whole,
        None => {
            block[..buf.len()].copy_from_slice(buf);
            &block[..]
        }
    };
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
            _mm_setzero_si128,
        };
        let (mut nul, mut eq) = (0u64, 0u64);
        for (i, c) in chunk.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of x86_64; the load reads 16 bytes of `c` unaligned.
            let (n, e) = unsafe {
                let v = _mm_loadu_si128(c.as_ptr().cast::<__m128i>());
                (
                    _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) as u16,
                    _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'=' as i8))) as u16,
                )
            };
            nul |= (n as u64) << (16 * i);
            eq |= (e as u64) << (16 * i);
        }
        (nul, eq)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        chunk
            .iter()
            .enumerate()
            .fold((0u64, 0u64), |(n, e), (i, &b)| {
                (n | ((b == 0) as u64) << i, e | ((b == b'=') as u64) << i)
            })
    }
}

/// A bijective 64-bit mixer (murmur3's finaliser).
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A `Hasher` for maps and sets keyed by one `u64` (journal ids, DEVPATH hashes): one
/// multiply-and-mix instead of SipHash's rounds.
#[derive(Default, Clone, Copy)]
pub struct U64Hasher(u64);

impl std::hash::Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::message::hash64(bytes) ^ self.0.rotate_left(7);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n ^ self.0.rotate_left(7);
    }
}

/// `BuildHasher` for [`U64Hasher`].
pub type BuildU64 = std::hash::BuildHasherDefault<U64Hasher>;

/// Decimal digits only, no sign, no spaces, fits in u64 and is not the "none" marker.
pub fn parse_seqnum(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in text {
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    (n != NO_SEQNUM).then_some(n)
}

/// Iterator over an event's `KEY=VALUE` pairs.
pub struct Vars<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Vars<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let end = find_byte(self.rest, 0)?;
        let var = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        let eq = find_byte(var, b'=').unwrap_or(var.len());
        Some((&var[..eq], var.get(eq + 1..).unwrap_or(b"")))
    }
}

pub struct Summary<'a>(&'a Event);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ev = self.0;
        match ev.seqnum() {
            Some(n) => write!(f, "{n} ")?,
            None => write!(f, "- ")?,
        }
        write!(
            f,
            "{} {} ({})",
            String::from_utf8_lossy(ev.action()),
            String::from_utf8_lossy(ev.devpath()),
            String::from_utf8_lossy(ev.subsystem())
        )
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Event({})", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_indexed_like_get() {
        let ev = Event::from_payload(b"usb\0ACTION=add\0DEVPATH=/d\0SYNTH_UUID=a\0SYNTH_UUID=b\0")
            .unwrap();
        assert_eq!(ev.tag(), Some(&b"b"[..]));
        assert_eq!(ev.tag(), ev.get(b"SYNTH_UUID"));
        let ev = Event::from_payload(b"usb\0ACTION=add\0DEVPATH=/d\0SYNTH_UUID=\0").unwrap();
        assert_eq!(ev.tag(), Some(&b""[..]));
        let ev = Event::from_payload(b"usb\0ACTION=add\0DEVPATH=/d\0").unwrap();
        assert_eq!(ev.tag(), None);
    }

    #[test]
    fn indexes_fields() {
        let ev = Event::from_payload(
            b"usb\0ACTION=add\0DEVPATH=/devices/x\0SEQNUM=42\0MODALIAS=usb:v1\0",
        )
        .unwrap();
        assert_eq!(ev.seqnum(), Some(42));
        assert_eq!(ev.action(), b"add");
        assert_eq!(ev.devpath(), b"/devices/x");
        assert_eq!(ev.subsystem(), b"usb");
        assert_eq!(ev.get(b"MODALIAS"), Some(&b"usb:v1"[..]));
        assert_eq!(ev.get(b"NOPE"), None);
        assert_eq!(ev.vars().count(), 4);
        assert_eq!(ev.to_string_summary(), "42 add /devices/x (usb)");
    }

    impl Event {
        fn to_string_summary(&self) -> String {
            self.summary().to_string()
        }
    }

    #[test]
    fn separators_match_a_byte_loop() {
        // Lengths around the 16- and 64-byte blocks, separators dense and sparse, and
        // bytes that differ from 0 and '=' by one bit.
        let hay: Vec<u8> = (0..300u32)
            .map(|i| match (i * 7919) % 13 {
                0 => 0,
                1 => b'=',
                2 => b'=' ^ 1,
                3 => 0x80,
                _ => b'a' + (i % 26) as u8,
            })
            .collect();
        for len in 0..hay.len() {
            let h = &hay[..len];
            let want: Vec<(usize, bool)> = (0..len)
                .filter(|&i| h[i] == 0 || h[i] == b'=')
                .map(|i| (i, h[i] == 0))
                .collect();
            assert_eq!(Separators::new(h).collect::<Vec<_>>(), want, "len {len}");
        }
    }

    #[test]
    fn find_byte_matches_a_byte_loop() {
        let hay: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for start in 0..hay.len() {
            for needle in [0u8, b'=', 0x5a, 0x80, 0xff, 1] {
                let h = &hay[start..];
                assert_eq!(find_byte(h, needle), h.iter().position(|&b| b == needle));
            }
        }
        assert_eq!(find_byte(b"", 0), None);
        assert_eq!(
            find_byte(b"\x01\x00\x00\x00\x00\x00\x00\x00\x00", 0),
            Some(1)
        );
    }

    #[test]
    fn rejects_bad_payloads() {
        use EventError::*;
        let bad: &[(&[u8], EventError)] = &[
            (b"usb\0ACTION=add", Unterminated),
            (b"usb\0ACTION=add\0", Missing("DEVPATH")),
            (b"usb\0DEVPATH=/x\0", Missing("ACTION")),
            (b"usb\0ACTION=add\0DEVPATH=/x\0junk\0", NotAssignment(3)),
            (
                b"usb\0ACTION=add\0DEVPATH=/x\0SEQNUM=-1\0",
                BadSeqnum("-1".into()),
            ),
            (b"", Unterminated),
        ];
        for (p, e) in bad {
            assert_eq!(Event::from_payload(p).unwrap_err(), *e);
        }
        let ev = Event::from_payload(b"\0ACTION=add\0DEVPATH=/x\0SUBSYSTEM=net\0").unwrap();
        assert_eq!(ev.seqnum(), None);
        assert_eq!(ev.subsystem(), b"net");
    }
}
