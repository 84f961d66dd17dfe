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

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::event::{BuildU64, Event};
use crate::message::{self, Item, Splitter};

/// A `.fifo` segment is sealed and a new one started past this size.
pub const SEGMENT_SIZE: u64 = 8 << 20;
/// `done` is rewritten once it holds this many records.
const DONE_REWRITE: u64 = 64 * 1024;
const DONE_RECORD: usize = 16;
/// The record carrying the highest SEQNUM done, kept across rewrites.
const MAX_SEQ_ID: u64 = u64::MAX;
/// A pair of records carrying one range of SEQNUMs done (first, then last), kept across
/// rewrites and clean stops.
const DONE_FROM_ID: u64 = u64::MAX - 1;
const DONE_TO_ID: u64 = u64::MAX - 2;
/// The record a clean stop leaves: no event of the last run is left here.
const STOPPED_ID: u64 = u64::MAX - 3;
const NO_SEQ: u64 = u64::MAX;
/// Ranges of SEQNUMs done that are kept. Past it the oldest range is forgotten: a copy of
/// one of its events arriving after a restart is taken as late and runs again, the old
/// behaviour, rather than an event being dropped as a duplicate it is not.
const MAX_DONE_RANGES: usize = 4096;

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

/// A segment being written.
struct Segment {
    number: u32,
    file: File,
    len: u64,
}

impl Segment {
    fn create(dir: &Path, number: u32, kind: &str) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(segment_path(dir, number, kind))?;
        Ok(Segment {
            number,
            file,
            len: 0,
        })
    }
}

/// A `.fifo` segment being filled from the pipe. The file is mapped and `read()` copies
/// the pipe's bytes straight into the mapping, that is into the file's own pages: one copy,
/// and at every instant each byte is either still in the pipe or in the journal (a kill
/// cannot land inside the `read`). The FIFO reader splits messages out of the mapping
/// where they lie.
///
/// The file is sized to the mapping up front (sparse: tmpfs gives pages as they are first
/// written), so the one segment being filled can end in zeros; recovery skips them like
/// any other bytes that are not a message. Sealing trims the file to what was written.
/// Pages are faulted in with MADV_POPULATE_READ before anything is stored there, so a full
/// file system is an error (or `read()`'s EFAULT), never a SIGBUS.
pub struct FifoSegment {
    pub number: u32,
    file: File,
    map: std::ptr::NonNull<u8>,
    /// Size of the mapping and of the file: the segment size plus one pipe's worth.
    room: usize,
    /// Past this many bytes the segment is full ([`SEGMENT_SIZE`]).
    size: usize,
    /// Bytes written.
    len: usize,
    /// Pages below this were dropped from our page tables (they stay in the file).
    released: usize,
    /// Pages below this are mapped in (MADV_POPULATE_READ).
    populated: usize,
    pipe_size: usize,
    page: usize,
}

/// Linux 5.14's MADV_POPULATE_READ (not in the libc crate yet): fault a range in now, in
/// one call, failing instead of raising SIGBUS where the file system has no page for it.
const MADV_POPULATE_READ: libc::c_int = 22;

// SAFETY: the mapping belongs to this value alone; moving it between threads is fine.
unsafe impl Send for FifoSegment {}

impl FifoSegment {
    /// A new segment for a pipe of `pipe_size` bytes: with that much room past
    /// [`SEGMENT_SIZE`], a read below it always takes everything the pipe holds, so a
    /// segment only ends where the pipe held whole messages.
    pub fn create(journal: &FifoJournal, pipe_size: usize) -> io::Result<FifoSegment> {
        let room = journal.segment_size + pipe_size;
        while let Some(old) = journal.spare.pop() {
            match Self::reuse(journal, old, room, pipe_size) {
                Ok(seg) => return Ok(seg),
                Err(e) => {
                    log::warn!("journal: reusing segment {old}: {e}");
                    let _ = fs::remove_file(segment_path(&journal.dir, old, "free"));
                }
            }
        }
        let number = journal.numbers.next();
        let Segment { file, .. } = Segment::create(&journal.dir, number, "fifo")?;
        match Self::map(file, number, room, pipe_size) {
            Ok(seg) => Ok(seg),
            Err(e) => {
                let _ = fs::remove_file(segment_path(&journal.dir, number, "fifo"));
                Err(e)
            }
        }
    }

    /// Take spare segment `old` (zeroed by the owner, see `Journal::drop_segment`) as the
    /// next one.
    fn reuse(
        journal: &FifoJournal,
        old: u32,
        room: usize,
        pipe_size: usize,
    ) -> io::Result<FifoSegment> {
        let from = segment_path(&journal.dir, old, "free");
        let file = open_existing(&from)?;
        let number = journal.numbers.next();
        let seg = Self::map(file, number, room, pipe_size)?;
        fs::rename(&from, segment_path(&journal.dir, number, "fifo"))?;
        Ok(seg)
    }

    fn map(file: File, number: u32, room: usize, pipe_size: usize) -> io::Result<FifoSegment> {
        let size = room - pipe_size;
        file.set_len(room as u64)?;
        let map = map_shared(&file, room)?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        Ok(FifoSegment {
            number,
            file,
            map,
            room,
            size,
            len: 0,
            released: 0,
            populated: 0,
            pipe_size,
            page,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.len
    }

    /// Past [`SEGMENT_SIZE`]: time for a new segment.
    pub fn is_full(&self) -> bool {
        self.len >= self.size
    }

    /// Move what the pipe holds into the segment: how many bytes, 0 when it is empty, at
    /// end of file, when a signal ended a blocking read, or when the segment has no room
    /// left.
    pub fn fill_from(&mut self, fifo: BorrowedFd) -> io::Result<usize> {
        self.populate();
        // SAFETY: map[len..room] is ours and writable; read() writes at most that.
        let n = unsafe {
            libc::read(
                fifo.as_raw_fd(),
                self.map.as_ptr().add(self.len).cast(),
                self.room - self.len,
            )
        };
        if n >= 0 {
            self.len += n as usize;
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN) => Ok(0),
            // The kernel found no page to give the mapping: what a write(2) would have
            // called ENOSPC (or, under a memory limit, ENOMEM).
            Some(libc::EFAULT) => Err(io::Error::other(format!(
                "segment {}: the file system has no page for its next bytes, full? \
                 (read into the mapping: {e})",
                self.number
            ))),
            _ => Err(e),
        }
    }

    /// Map in the pages the next read can fill, up to a pipe's worth ahead: a page fault
    /// per page inside `read()` costs more than the copy, while a read fault maps a whole
    /// window of pages the file already has. Best effort: without MADV_POPULATE_READ
    /// (Linux < 5.14) the read faults them in, and finds a full file system (EFAULT).
    fn populate(&mut self) {
        if self.populated >= (self.len + self.pipe_size / 2).min(self.room) {
            return;
        }
        let start = self.populated.max(self.len / self.page * self.page);
        let end = (self.len + self.pipe_size).div_ceil(self.page) * self.page;
        let end = end.min(self.room);
        self.populated = match self.advise(start, end, MADV_POPULATE_READ) {
            Ok(()) => end,
            Err(_) => self.room,
        };
    }

    /// madvise(2) on map[start..end] (page-aligned start).
    fn advise(&self, start: usize, end: usize, advice: libc::c_int) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        // SAFETY: a range inside our mapping; none of the advice used here discards data
        // (for a shared file mapping MADV_DONTNEED only unmaps, the file keeps the pages).
        let r = unsafe { libc::madvise(self.map.as_ptr().add(start).cast(), end - start, advice) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Append `bytes` (the start of a message carried over from the last segment).
    pub fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > self.room - self.len {
            return Err(io::Error::other("no room in the segment"));
        }
        self.file.write_all_at(bytes, self.len as u64)?;
        self.len += bytes.len();
        Ok(())
    }

    /// The bytes written from `from` on.
    pub fn bytes(&self, from: usize) -> &[u8] {
        let from = from.min(self.len);
        // SAFETY: map[..len] was written by read() or pwrite() and stays mapped while
        // `self` lives; only the kernel writes there, and only past `len`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(from), self.len - from) }
    }

    /// Everything below `offset` was split and copied out: drop those pages from this
    /// process's memory (the file keeps them), so a long segment does not sit in RSS.
    pub fn release_below(&mut self, offset: usize) {
        let end = offset.min(self.len) / self.page * self.page;
        if end > self.released {
            let _ = self.advise(self.released, end, libc::MADV_DONTNEED);
            self.released = end;
        }
    }

    /// No more bytes go here: trim the file to what was written.
    pub fn seal(self) -> u32 {
        if let Err(e) = self.file.set_len(self.len as u64) {
            log::warn!("journal segment {}: trimming it: {e}", self.number);
        }
        self.number
    }
}

impl Drop for FifoSegment {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, unmapped once.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.room) };
    }
}

fn segment_path(dir: &Path, number: u32, kind: &str) -> PathBuf {
    dir.join(format!("{number:010}.{kind}"))
}

/// What a restart found in the journal.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Events not done, sorted by SEQNUM (those without one last, in journal order).
    pub events: Vec<Event>,
    /// The highest SEQNUM the last run was done with.
    pub max_done: Option<u64>,
    /// How many records said "done" (0: there was no earlier run to speak of).
    pub done_records: u64,
    /// SEQNUMs earlier runs were done with (handled, recalled, coalesced), in ranges,
    /// ascending: a copy of one arriving again is a duplicate.
    pub done_seqs: Vec<RangeInclusive<u64>>,
    /// The last run stopped cleanly: its queued events went to the spool.
    pub stopped_cleanly: bool,
}

/// The journal's owner-side state: segment bookkeeping and the `done` file.
pub struct Journal {
    dir: PathBuf,
    numbers: Numbers,
    spare: Spare,
    aux: Appender,
    done: File,
    done_records: u64,
    /// `done` is rewritten when it reaches this many records: [`DONE_REWRITE`], or twice
    /// what the last rewrite kept, so the rewrites cost O(1) per record however many
    /// records of live segments each one keeps.
    rewrite_at: u64,
    done_buf: Vec<u8>,
    /// The ids `done` holds (kept by the last rewrite, or written since), so a rewrite
    /// need not read the file back.
    done_ids: Vec<u64>,
    max_done: Option<u64>,
    /// SEQNUMs done, first → last of each range.
    done_seqs: DoneSeqs,
    /// Per live segment: events not done yet, and whether a newer segment replaced it.
    live: BTreeMap<u32, (u64, bool)>,
}

impl Journal {
    /// Open `RUNTIME/journal`, recovering what an earlier run left.
    pub fn open(runtime_dir: &Path) -> io::Result<(Journal, Recovered)> {
        let dir = runtime_dir.join("journal");
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        crate::spool::check_private_dir(&dir).map_err(io::Error::other)?;
        let done_path = dir.join("done");
        let Done {
            ids: done_ids,
            max: max_done,
            records: done_records,
            seqs: done_seqs,
            stopped,
        } = read_done(&done_path)?;
        let mut segments: Vec<(u32, String)> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (num, kind) = name.split_once('.')?;
                Some((num.parse().ok()?, kind.to_owned()))
            })
            .collect();
        // Spare segments of the last run: their pages may still hold done events.
        segments.retain(|(number, kind)| match kind.as_str() {
            "fifo" | "aux" => true,
            "free" => {
                let _ = fs::remove_file(segment_path(&dir, *number, kind));
                false
            }
            _ => false,
        });
        segments.sort();
        let mut live = BTreeMap::new();
        let mut events = Vec::new();
        for (number, kind) in &segments {
            let path = segment_path(&dir, *number, kind);
            let bytes = fs::read(&path)?;
            let before = events.len();
            events.extend(
                split_segment(*number, &bytes)
                    .into_iter()
                    .filter(|ev| !done_ids.contains(&ev.id())),
            );
            if events.len() == before {
                fs::remove_file(&path)?;
            } else {
                // Counted again as the daemon queues them; see `drop_idle`.
                live.insert(*number, (0, true));
            }
        }
        // Stable: events without a SEQNUM keep their journal order, after the others.
        events.sort_by_key(|e| e.seqnum().unwrap_or(u64::MAX));
        let first = segments.last().map_or(1, |(n, _)| n + 1);
        let done = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&done_path)?;
        let numbers = Numbers(Arc::new(AtomicU32::new(first)));
        let mut journal = Journal {
            dir: dir.clone(),
            numbers: numbers.clone(),
            spare: Spare::default(),
            aux: Appender {
                dir,
                numbers,
                seg: None,
                sealed: Vec::new(),
            },
            done,
            done_records,
            rewrite_at: DONE_REWRITE,
            done_buf: Vec::new(),
            done_ids: Vec::new(),
            max_done,
            done_seqs,
            live,
        };
        // Also drops the clean stop's mark: from now on this run's stop is what counts.
        journal.rewrite_done(done_ids.iter().copied(), false)?;
        let done_seqs = journal.done_seqs.ranges();
        Ok((
            journal,
            Recovered {
                events,
                max_done,
                done_records,
                done_seqs,
                stopped_cleanly: stopped,
            },
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The FIFO reader's side of the journal.
    pub fn fifo(&self) -> FifoJournal {
        FifoJournal {
            dir: self.dir.clone(),
            numbers: self.numbers.clone(),
            spare: self.spare.clone(),
            segment_size: SEGMENT_SIZE as usize,
        }
    }

    /// An appender of `.aux` segments for another thread (the netlink reader).
    pub fn appender(&self) -> Appender {
        Appender {
            dir: self.dir.clone(),
            numbers: self.numbers.clone(),
            seg: None,
            sealed: Vec::new(),
        }
    }

    /// Append an event the daemon itself took in (spool file, injected) and name it.
    pub fn append(&mut self, ev: &mut Event) -> io::Result<()> {
        let appended = self.aux.append(ev);
        // Every event of the segments it left was queued before this one came.
        for n in self.aux.take_sealed() {
            self.sealed(n);
        }
        appended
    }

    /// An event of segment `id` is now queued and must be marked done later.
    pub fn queued(&mut self, id: u64) {
        if id != 0 {
            self.live.entry(segment_of(id)).or_insert((0, false)).0 += 1;
        }
    }

    /// A segment will get no more events.
    pub fn sealed(&mut self, number: u32) {
        let entry = self.live.entry(number).or_insert((0, false));
        entry.1 = true;
        if entry.0 == 0 {
            self.drop_segment(number);
        }
    }

    /// After recovered events were queued: drop old segments none of which were.
    pub fn drop_idle(&mut self) {
        let idle: Vec<u32> = self
            .live
            .iter()
            .filter(|(_, (n, sealed))| *n == 0 && *sealed)
            .map(|(k, _)| *k)
            .collect();
        for n in idle {
            self.drop_segment(n);
        }
    }

    /// The daemon is done with `ev`: handled, recalled or coalesced (`queued`: it had been
    /// counted by [`queued`]; a coalesced `remove` never was). Buffered until
    /// [`flush`](Self::flush).
    pub fn done(&mut self, ev: &Event, queued: bool) {
        if let Some(s) = ev.seqnum() {
            self.max_done = Some(self.max_done.map_or(s, |m| m.max(s)));
            self.done_seqs.insert(s);
        }
        self.record_done(ev.id(), ev.seqnum().unwrap_or(NO_SEQ), queued);
    }

    /// `ev` was a copy of an event queued or done before. Its SEQNUM is not recorded:
    /// it belongs to the other copy, which may not be done yet.
    pub fn duplicate(&mut self, ev: &Event) {
        self.record_done(ev.id(), NO_SEQ, false);
    }

    /// `ev`, queued, went to the spool at a stop: the spool file is its copy now. Its
    /// SEQNUM is not recorded, or the file would be a duplicate at the next start.
    pub fn handed_over(&mut self, ev: &Event) {
        self.record_done(ev.id(), NO_SEQ, true);
    }

    fn record_done(&mut self, id: u64, seq: u64, queued: bool) {
        if id == 0 {
            return;
        }
        self.done_buf.extend_from_slice(&id.to_le_bytes());
        self.done_buf.extend_from_slice(&seq.to_le_bytes());
        let number = segment_of(id);
        if !queued {
            return;
        }
        if let Some(entry) = self.live.get_mut(&number) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 && entry.1 {
                self.drop_segment(number);
            }
        }
    }

    /// Write the buffered done records: called before each handler starts.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.done_buf.is_empty() {
            return Ok(());
        }
        self.done.write_all(&self.done_buf)?;
        self.done_records += (self.done_buf.len() / DONE_RECORD) as u64;
        self.done_ids
            .extend(self.done_buf.chunks_exact(DONE_RECORD).map(record_id));
        self.done_buf.clear();
        if self.done_records >= self.rewrite_at {
            let ids = std::mem::take(&mut self.done_ids);
            self.rewrite_done(ids.into_iter(), false)?;
        }
        Ok(())
    }

    fn drop_segment(&mut self, number: u32) {
        self.live.remove(&number);
        // A done `.fifo` segment is zeroed in place (a kill meanwhile leaves done events
        // and zeros, and `done` still names them while the segment is live on disk), and
        // only then renamed to a spare, so no reused segment ever holds an old event.
        // Here rather than in the FIFO reader, the busier thread at high rates.
        let fifo = segment_path(&self.dir, number, "fifo");
        let free = segment_path(&self.dir, number, "free");
        if self.spare.has_room() && wipe(&fifo).is_ok() && fs::rename(&fifo, &free).is_ok() {
            if !self.spare.offer(number) {
                let _ = fs::remove_file(&free);
            }
            return;
        }
        for kind in ["fifo", "aux"] {
            let _ = fs::remove_file(segment_path(&self.dir, number, kind));
        }
    }

    /// Rewrite `done` with the records of live segments only, plus the SEQNUMs done (their
    /// ranges and the highest) and, at a clean stop, the mark saying so.
    fn rewrite_done(&mut self, ids: impl Iterator<Item = u64>, stopped: bool) -> io::Result<()> {
        let mut out = Vec::new();
        let mut kept = Vec::new();
        // Records come in runs of one segment: ask `live` once per run.
        let mut last: Option<(u32, bool)> = None;
        for id in ids.filter(|&id| id < STOPPED_ID) {
            let seg = segment_of(id);
            let keep = match last {
                Some((s, keep)) if s == seg => keep,
                _ => self.live.contains_key(&seg),
            };
            last = Some((seg, keep));
            if keep {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&NO_SEQ.to_le_bytes());
                kept.push(id);
            }
        }
        let mut record = |id: u64, seq: u64| {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        };
        for r in self.done_seqs.ranges() {
            record(DONE_FROM_ID, *r.start());
            record(DONE_TO_ID, *r.end());
        }
        if let Some(m) = self.max_done {
            record(MAX_SEQ_ID, m);
        }
        if stopped {
            record(STOPPED_ID, NO_SEQ);
        }
        let tmp = self.dir.join(".done.tmp");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?
            .write_all(&out)?;
        fs::rename(&tmp, self.dir.join("done"))?;
        self.done = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.dir.join("done"))?;
        self.done_records = (out.len() / DONE_RECORD) as u64;
        self.rewrite_at = DONE_REWRITE.max(2 * self.done_records);
        self.done_ids = kept;
        Ok(())
    }

    /// Clean shutdown: queued events went to the spool, so no event here is needed. The
    /// SEQNUMs done are kept, so a copy of one arriving after the next start is known.
    pub fn clear(&mut self) -> io::Result<()> {
        self.aux.seg = None;
        self.flush()?;
        self.live.clear();
        self.rewrite_done(std::iter::empty(), true)?;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.file_name() != Some("done".as_ref()) {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

/// Appends events to `.aux` segments of its own. The segments it fills and leaves must
/// reach the owner's [`Journal::sealed`] after their last events (see
/// [`take_sealed`](Self::take_sealed)).
pub struct Appender {
    dir: PathBuf,
    numbers: Numbers,
    seg: Option<Segment>,
    /// Segments left full since the last [`take_sealed`](Self::take_sealed).
    sealed: Vec<u32>,
}

impl Appender {
    /// Append `ev` and name it by where it lies.
    pub fn append(&mut self, ev: &mut Event) -> io::Result<()> {
        if self.seg.as_ref().is_none_or(|s| s.len >= SEGMENT_SIZE) {
            if let Some(old) = self.seg.take() {
                self.sealed.push(old.number);
            }
            self.seg = Some(Segment::create(&self.dir, self.numbers.next(), "aux")?);
        }
        let seg = self.seg.as_mut().expect("just made");
        let bytes = message::encode(ev.payload());
        seg.file.write_all_at(&bytes, seg.len)?;
        ev.set_id(event_id(seg.number, seg.len));
        seg.len += bytes.len() as u64;
        Ok(())
    }

    /// The segments left full, which get no more events. For [`Journal::sealed`] once
    /// every event appended to them was handed on.
    pub fn take_sealed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.sealed)
    }
}

/// Reads spilled events back from their segments, keeping the last segment open: the
/// queue asks for them in order, so most reads hit the same file.
pub struct Reader {
    dir: PathBuf,
    open: Option<(u32, File)>,
}

impl Reader {
    pub fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_owned(),
            open: None,
        }
    }

    /// The event with journal id `id`, if its segment still holds it.
    pub fn load(&mut self, id: u64) -> Option<Event> {
        let number = segment_of(id);
        if self.open.as_ref().is_none_or(|(n, _)| *n != number) {
            let file = ["fifo", "aux"]
                .iter()
                .find_map(|kind| File::open(segment_path(&self.dir, number, kind)).ok())?;
            self.open = Some((number, file));
        }
        let (_, file) = self.open.as_ref()?;
        let offset = id & 0xffff_ffff;
        let mut header = [0u8; message::HEADER_LEN];
        file.read_exact_at(&mut header, offset).ok()?;
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if size > message::MAX_PAYLOAD {
            return None;
        }
        let mut frame = vec![0u8; message::HEADER_LEN + size];
        file.read_exact_at(&mut frame, offset).ok()?;
        let payload = message::decode_whole(&frame).ok()?;
        let mut ev = Event::from_payload(payload).ok()?;
        ev.set_id(id);
        Some(ev)
    }
}

/// What the `done` file says.
struct Done {
    ids: HashSet<u64, BuildU64>,
    /// The highest SEQNUM done.
    max: Option<u64>,
    records: u64,
    seqs: DoneSeqs,
    /// It ends with a clean stop's mark.
    stopped: bool,
}

fn read_done(path: &Path) -> io::Result<Done> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut done = Done {
        ids: HashSet::with_capacity_and_hasher(bytes.len() / DONE_RECORD, BuildU64::default()),
        max: None,
        records: (bytes.len() / DONE_RECORD) as u64,
        seqs: DoneSeqs::default(),
        stopped: false,
    };
    let mut from = None;
    // A record cut short by a kill mid-write is ignored: its event runs again.
    for rec in bytes.chunks_exact(DONE_RECORD) {
        let id = record_id(rec);
        let seq = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
        done.stopped = id == STOPPED_ID;
        match id {
            DONE_FROM_ID => from = Some(seq),
            DONE_TO_ID => {
                if let Some(first) = from.take() {
                    done.seqs.insert_range(first, seq);
                }
            }
            STOPPED_ID => {}
            _ if seq == NO_SEQ => {}
            _ => {
                done.max = Some(done.max.map_or(seq, |m: u64| m.max(seq)));
                if id != MAX_SEQ_ID {
                    done.seqs.insert(seq);
                }
            }
        }
        if id < STOPPED_ID {
            done.ids.insert(id);
        }
    }
    Ok(done)
}

/// SEQNUMs done, as ranges (first → last), at most [`MAX_DONE_RANGES`] of them. Handled
/// SEQNUMs come mostly in order, so nearly every insert grows the last range.
#[derive(Debug, Default)]
struct DoneSeqs(BTreeMap<u64, u64>);

impl DoneSeqs {
    fn insert(&mut self, seq: u64) {
        if let Some(mut last) = self.0.last_entry() {
            if (*last.key()..=*last.get()).contains(&seq) {
                return;
            }
            if last.get().checked_add(1) == Some(seq) {
                *last.get_mut() = seq;
                return;
            }
        }
        self.insert_range(seq, seq);
    }

    fn insert_range(&mut self, mut first: u64, mut last: u64) {
        if first > last {
            return;
        }
        // Merge with every range that overlaps or touches first..=last.
        while let Some((&a, &b)) = self.0.range(..=last.saturating_add(1)).next_back() {
            if b.saturating_add(1) < first {
                break;
            }
            if a <= first && b >= last {
                return;
            }
            self.0.remove(&a);
            first = first.min(a);
            last = last.max(b);
        }
        self.0.insert(first, last);
        if self.0.len() > MAX_DONE_RANGES {
            self.0.pop_first();
        }
    }

    fn ranges(&self) -> Vec<RangeInclusive<u64>> {
        self.0.iter().map(|(&a, &b)| a..=b).collect()
    }
}

/// Zero a file's bytes in place, keeping its pages: pwrite(2) from a zeroed buffer.
/// Through a mapping instead, the stores are cheaper, but mapping 9 MiB in and then
/// unmapping it (with a TLB shootdown across the daemon's threads) cost more than they
/// saved.
fn wipe(path: &Path) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let file = open_existing(path)?;
    let len = file.metadata()?.len();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// A journal file that must already be there, for reading and writing.
fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A read-write shared mapping of the first `len` bytes of `file` (which stays valid after
/// `file` is closed, until munmap).
fn map_shared(file: &File, len: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a fresh mapping at an address the kernel picks; nothing else is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(std::ptr::NonNull::new(p.cast::<u8>()).expect("mmap never returns NULL here"))
}

fn record_id(rec: &[u8]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().unwrap_or_default())
}

/// Every valid event in a segment's bytes, named by its offset.
pub fn split_segment(number: u32, bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut splitter = Splitter::new();
    let mut take = |item: Item<'_>, offset: u64| {
        if let Item::Message(payload) = item {
            if let Ok(mut ev) = Event::from_payload(payload) {
                ev.set_id(event_id(number, offset));
                out.push(ev);
            }
        }
    };
    splitter.feed_at(bytes, &mut take);
    splitter.flush_stale_at(&mut take);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Event {
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

    #[test]
    fn loads_an_event_back_by_id() {
        let rt = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(rt.path()).unwrap();
        let mut a = ev(5);
        let mut b = ev(6);
        j.append(&mut a).unwrap();
        j.append(&mut b).unwrap();
        let mut r = Reader::new(j.dir());
        assert_eq!(r.load(b.id()), Some(b.clone()));
        assert_eq!(r.load(a.id()).unwrap().seqnum(), Some(5));
        assert_eq!(r.load(a.id() + 1), None);
    }

    #[test]
    fn the_done_file_is_rewritten_from_memory_and_still_recovers() {
        let rt = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(rt.path()).unwrap();
        let n = DONE_REWRITE + 100;
        let mut evs: Vec<Event> = (1..=n).map(ev).collect();
        for e in &mut evs {
            j.append(e).unwrap();
            j.queued(e.id());
        }
        // Done in two flushes, the second past the rewrite threshold; the last ten not.
        let (first, rest) = evs[..evs.len() - 10].split_at(1000);
        for batch in [first, rest] {
            for e in batch {
                j.done(e, true);
            }
            j.flush().unwrap();
        }
        // The rewrite kept every record (all of the one live segment), so the next waits
        // for twice as many.
        assert_eq!(j.rewrite_at, 2 * j.done_records);
        drop(j);
        let (_j, rec) = Journal::open(rt.path()).unwrap();
        let seqs: Vec<_> = rec.events.iter().filter_map(Event::seqnum).collect();
        assert_eq!(seqs, (n - 9..=n).collect::<Vec<_>>());
        assert_eq!(rec.max_done, Some(n - 10));
    }

    #[test]
    fn recovers_what_was_not_done_and_compacts() {
        let rt = tempfile::tempdir().unwrap();
        let (mut j, rec) = Journal::open(rt.path()).unwrap();
        assert!(rec.events.is_empty());
        let mut evs: Vec<Event> = [3, 1, 2].into_iter().map(ev).collect();
        for e in &mut evs {
            j.append(e).unwrap();
            j.queued(e.id());
        }
        j.done(&evs[1], true);
        j.flush().unwrap();
        drop(j);
        let (mut j, rec) = Journal::open(rt.path()).unwrap();
        let seqs: Vec<_> = rec.events.iter().filter_map(Event::seqnum).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(rec.max_done, Some(1));
        for e in &rec.events {
            j.queued(e.id());
            j.done(e, true);
        }
        j.flush().unwrap();
        drop(j);
        let (_j, rec) = Journal::open(rt.path()).unwrap();
        assert!(rec.events.is_empty());
        assert_eq!(rec.max_done, Some(3));
        // Every segment was done with: only the done file is left.
        let names: Vec<_> = fs::read_dir(rt.path().join("journal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("done")]);
    }

    #[test]
    fn seqnums_done_survive_rewrites_kills_and_clean_stops_but_duplicates_do_not_count() {
        let rt = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(rt.path()).unwrap();
        let mut evs: Vec<Event> = [1, 2, 3, 5, 9, 7].into_iter().map(ev).collect();
        for e in &mut evs {
            j.append(e).unwrap();
            j.queued(e.id());
        }
        for e in &evs[..5] {
            j.done(e, true);
        }
        // A copy of 7 while 7 is still queued: 7 is not done.
        let mut copy = ev(7);
        j.append(&mut copy).unwrap();
        j.duplicate(&copy);
        j.flush().unwrap();
        drop(j);
        // Killed: the ranges come from the records.
        let (mut j, rec) = Journal::open(rt.path()).unwrap();
        assert_eq!(rec.done_seqs, vec![1..=3, 5..=5, 9..=9]);
        assert!(!rec.stopped_cleanly);
        let seqs: Vec<_> = rec.events.iter().filter_map(Event::seqnum).collect();
        assert_eq!(seqs, vec![7]);
        // Open rewrote `done`: the ranges are records of their own now.
        j.queued(rec.events[0].id());
        j.done(&rec.events[0], true);
        j.done(&ev(4), true);
        j.clear().unwrap();
        drop(j);
        assert_eq!(names(&rt.path().join("journal")), vec!["done".to_string()]);
        let (j, rec) = Journal::open(rt.path()).unwrap();
        assert_eq!(rec.done_seqs, vec![1..=5, 7..=7, 9..=9]);
        assert_eq!(rec.max_done, Some(9));
        assert!(rec.stopped_cleanly);
        assert!(rec.events.is_empty());
        drop(j);
        // Only the stop just before counts.
        let (_j, rec) = Journal::open(rt.path()).unwrap();
        assert!(!rec.stopped_cleanly);
        assert_eq!(rec.done_seqs, vec![1..=5, 7..=7, 9..=9]);
    }

    #[test]
    fn events_handed_to_the_spool_are_not_recovered_nor_counted_as_done() {
        let rt = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(rt.path()).unwrap();
        let mut evs: Vec<Event> = [1, 2].into_iter().map(ev).collect();
        for e in &mut evs {
            j.append(e).unwrap();
            j.queued(e.id());
        }
        j.done(&evs[0], true);
        j.handed_over(&evs[1]);
        j.flush().unwrap();
        // A stop that kept the journal: 2 is in the spool, and no duplicate there.
        drop(j);
        let (_j, rec) = Journal::open(rt.path()).unwrap();
        assert!(rec.events.is_empty());
        assert_eq!(rec.done_seqs, vec![1..=1]);
    }

    #[test]
    fn done_seqnum_ranges_merge_and_the_oldest_go_past_the_cap() {
        let mut d = DoneSeqs::default();
        for s in [5, 3, 4, 10, 8, 9, 1] {
            d.insert(s);
        }
        assert_eq!(d.ranges(), vec![1..=1, 3..=5, 8..=10]);
        d.insert_range(2, 8);
        assert_eq!(d.ranges(), vec![1..=10]);
        for i in 0..MAX_DONE_RANGES as u64 {
            d.insert(100 + 2 * i);
        }
        let r = d.ranges();
        assert_eq!(r.len(), MAX_DONE_RANGES);
        assert_eq!(r[0], 100..=100, "1..=10 was forgotten");
    }

    use std::os::fd::AsFd;

    /// A pipe holding `events`' messages, its read end non-blocking.
    fn pipe_with(events: &[Event]) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        for e in events {
            nix::unistd::write(&w, &message::encode(e.payload())).unwrap();
        }
        (r, w)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Fill a new segment from a pipe of `events`; the events as split from it.
    fn fill(fifo: &FifoJournal, events: &[Event]) -> (FifoSegment, Vec<Event>) {
        let (r, _w) = pipe_with(events);
        let mut seg = FifoSegment::create(fifo, 1 << 16).unwrap();
        let n = seg.fill_from(r.as_fd()).unwrap();
        assert_eq!(n, seg.written());
        assert_eq!(seg.fill_from(r.as_fd()).unwrap(), 0, "the pipe is empty");
        let got = split_segment(seg.number, seg.bytes(0));
        assert_eq!(got.len(), events.len());
        (seg, got)
    }

    #[test]
    fn a_done_fifo_segment_is_reused_and_holds_none_of_its_old_events() {
        let rt = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(rt.path()).unwrap();
        let fifo = j.fifo();
        let (seg, old) = fill(&fifo, &[ev(1), ev(2), ev(3)]);
        let first = seg.seal();
        for e in &old {
            j.queued(e.id());
        }
        j.sealed(first);
        for e in &old {
            j.done(e, true);
        }
        j.flush().unwrap();
        // Done and sealed: kept as a spare, not deleted.
        assert_eq!(
            names(j.dir()),
            vec![format!("{first:010}.free"), "done".into()]
        );

        let (r, _w) = pipe_with(&[ev(4)]);
        let mut seg = FifoSegment::create(&fifo, 1 << 16).unwrap();
        assert_ne!(seg.number, first);
        assert_eq!(
            names(j.dir()),
            vec![format!("{:010}.fifo", seg.number), "done".into()]
        );
        let raw = fs::read(segment_path(j.dir(), seg.number, "fifo")).unwrap();
        assert!(raw.iter().all(|&b| b == 0), "the old events were wiped");
        seg.fill_from(r.as_fd()).unwrap();
        let number = seg.number;
        drop(seg);
        drop(j);
        // Killed now: recovery finds the new event, not the old ones.
        let (_j, rec) = Journal::open(rt.path()).unwrap();
        let seqs: Vec<_> = rec.events.iter().filter_map(Event::seqnum).collect();
        assert_eq!(seqs, vec![4]);
        assert_eq!(segment_of(rec.events[0].id()), number);
    }

    #[test]
    fn recovery_deletes_spare_segments() {
        let rt = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(rt.path()).unwrap();
        // A kill between "done" and reuse leaves a spare with events in it.
        let (seg, _) = fill(&j.fifo(), &[ev(7)]);
        let n = seg.seal();
        fs::rename(
            segment_path(j.dir(), n, "fifo"),
            segment_path(j.dir(), n, "free"),
        )
        .unwrap();
        drop(j);
        let (j, rec) = Journal::open(rt.path()).unwrap();
        assert!(rec.events.is_empty());
        assert_eq!(names(j.dir()), vec!["done".to_string()]);
    }

    #[test]
    fn an_unsealed_segment_ends_in_zeros_that_recovery_skips() {
        let rt = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(rt.path()).unwrap();
        let (seg, _) = fill(&j.fifo(), &[ev(8), ev(9)]);
        let path = segment_path(j.dir(), seg.number, "fifo");
        assert!(fs::metadata(&path).unwrap().len() > seg.written() as u64);
        drop(seg);
        drop(j);
        let (_j, rec) = Journal::open(rt.path()).unwrap();
        let seqs: Vec<_> = rec.events.iter().filter_map(Event::seqnum).collect();
        assert_eq!(seqs, vec![8, 9]);
    }
}
