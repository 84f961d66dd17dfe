//! The crash journal: every event the daemon takes in is on disk (the runtime dir, tmpfs)
//! before its only other copy is gone, and every event it is done with is recorded, so a
//! daemon killed at any moment restarts exactly where it stopped.
//!
//! ```text
//! RUNTIME/journal/0000000001.fifo   raw bytes read from the FIFO, in place
//! RUNTIME/journal/0000000002.aux    messages the daemon wrote (spool files, injected events,
//!                                   netlink datagrams)
//! RUNTIME/journal/done              16-byte records: event id (u64 LE), SEQNUM (u64 LE)
//! ```
//!
//! The FIFO reader `read()`s the pipe straight into the current `.fifo` segment's mapped
//! pages and splits messages there ([`FifoSegment`]), so at every instant each byte is
//! either still in the pipe or in the journal. Spool files and injected events are appended
//! to an `.aux` segment before the spool file is deleted or the client is answered; the
//! netlink reader appends each event to an `.aux` segment of its own as it reads it
//! ([`Appender`]), since the kernel keeps no copy.
//!
//! An event's id is `segment << 32 | offset of its message in the segment`. When the daemon
//! is done with an event (its handlers ran, or it was recalled, coalesced or a duplicate)
//! its id goes to `done`, written before the next handler starts: so after `kill -9` only
//! the handler that was running may run a second time (at-least-once for that event,
//! exactly-once for every other). A segment is deleted once it is sealed (a newer one took
//! over) and every event in it is done; `done` is rewritten when it grows, keeping only
//! records of live segments, the SEQNUMs done (as ranges) and the highest. A clean
//! shutdown hands queued events to the spool and deletes the segments; `done` keeps the
//! SEQNUMs done, so a copy of an event handled before any restart is a duplicate.
//!
//! Its rooms: `segment` the mapped `.fifo` segment the FIFO reader fills (every `unsafe`
//! of the journal is there), `aux` the `.aux` segments and their [`Appender`], `done`
//! the `done` file's records, `recover` reading back what an earlier run left,
//! `owner` the owner's bookkeeping ([`Journal`]), `reader` loading spilled events back.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

mod aux;
mod done;
mod owner;
mod reader;
mod recover;
mod segment;

pub use aux::Appender;
pub use owner::Journal;
pub use reader::Reader;
pub use recover::{split_segment, Recovered};
pub use segment::FifoSegment;

/// A `.fifo` segment is sealed and a new one started past this size.
pub const SEGMENT_SIZE: u64 = 8 << 20;

/// The id of the message at `offset` in segment `seg`.
pub fn event_id(seg: u32, offset: u64) -> u64 {
    ((seg as u64) << 32) | (offset & 0xffff_ffff)
}

pub fn segment_of(id: u64) -> u32 {
    (id >> 32) as u32
}

/// Segment numbers, shared by the FIFO reader (which starts `.fifo` segments), the
/// netlink reader and the owner (`.aux` segments).
#[derive(Debug, Clone)]
pub struct Numbers(Arc<AtomicU32>);

impl Numbers {
    pub fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Up to this many freed `.fifo` segments are kept for reuse.
const SPARE_MAX: usize = 2;

/// Freed `.fifo` segments kept for reuse, renamed `NUMBER.free`. Writing into pages the
/// file system already holds costs a fraction of allocating and zeroing fresh ones (and of
/// freeing them again on unlink), which at a million events a second was a third of the
/// FIFO reader's time.
#[derive(Debug, Clone, Default)]
pub struct Spare(Arc<Mutex<Vec<u32>>>);

impl Spare {
    fn has_room(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len() < SPARE_MAX
    }

    fn pop(&self) -> Option<u32> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keep `number` if there is room; false if the pool is full.
    fn offer(&self, number: u32) -> bool {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() >= SPARE_MAX {
            return false;
        }
        free.push(number);
        true
    }
}

/// What the FIFO reader needs of the journal: where segments go, their numbers, and the
/// spare segments the owner frees.
#[derive(Debug, Clone)]
pub struct FifoJournal {
    pub dir: PathBuf,
    numbers: Numbers,
    spare: Spare,
    /// [`SEGMENT_SIZE`], smaller in tests that need many segments.
    segment_size: usize,
}

impl FifoJournal {
    /// Seal segments past `size` bytes instead of [`SEGMENT_SIZE`].
    #[cfg(test)]
    pub fn with_segment_size(mut self, size: usize) -> FifoJournal {
        self.segment_size = size;
        self
    }
}

fn segment_path(dir: &Path, number: u32, kind: &str) -> PathBuf {
    dir.join(format!("{number:010}.{kind}"))
}

/// Create segment file `number` of `kind`, which must not exist yet.
fn create_segment(dir: &Path, number: u32, kind: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(segment_path(dir, number, kind))
}

/// A journal file that must already be there, for reading and writing.
fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod test_util {
    use std::fs;
    use std::path::Path;

    use crate::event::Event;

    pub fn ev(seq: u64) -> Event {
        let s = seq.to_string();
        Event::from_vars(
            b"t",
            [
                (&b"ACTION"[..], &b"add"[..]),
                (b"DEVPATH", b"/d"),
                (b"SEQNUM", s.as_bytes()),
            ],
        )
        .unwrap()
    }

    /// The names in `dir`, sorted.
    pub fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}
