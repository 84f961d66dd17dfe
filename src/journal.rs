//! The crash journal: every event the daemon takes in is on disk (the runtime dir, tmpfs)
//! before its only other copy is gone, and every event it is done with is recorded, so a
//! daemon killed at any moment restarts exactly where it stopped.
//!
//! ```text
//! RUNTIME/journal/0000000001.fifo   raw bytes moved from the FIFO by splice(2)
//! RUNTIME/journal/0000000002.aux    messages the daemon wrote (spool files, injected events)
//! RUNTIME/journal/done              16-byte records: event id (u64 LE), SEQNUM (u64 LE)
//! ```
//!
//! The FIFO reader never `read()`s the pipe: it `splice()`s the pipe's bytes into the
//! current `.fifo` segment and reads them back from there, so at every instant each byte is
//! either still in the pipe or in the journal. Spool files and injected events are appended
//! to an `.aux` segment before the spool file is deleted or the client is answered.
//!
//! An event's id is `segment << 32 | offset of its message in the segment`. When the daemon
//! is done with an event (its handlers ran, or it was recalled, coalesced or a duplicate)
//! its id goes to `done`, written before the next handler starts: so after `kill -9` only
//! the handler that was running may run a second time (at-least-once for that event,
//! exactly-once for every other). A segment is deleted once it is sealed (a newer one took
//! over) and every event in it is done; `done` is rewritten when it grows, keeping only
//! records of live segments and the highest SEQNUM done. A clean shutdown hands queued
//! events to the spool and empties the journal.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::event::{BuildU64, Event};
use crate::message::{self, Item, Splitter};

/// A `.fifo` segment is sealed and a new one started past this size.
pub const SEGMENT_SIZE: u64 = 8 << 20;
/// `done` is rewritten once it holds this many records.
const DONE_REWRITE: u64 = 64 * 1024;
const DONE_RECORD: usize = 16;
/// The record carrying the highest SEQNUM done, kept across rewrites.
const MAX_SEQ_ID: u64 = u64::MAX;
const NO_SEQ: u64 = u64::MAX;

/// The id of the message at `offset` in segment `seg`.
pub fn event_id(seg: u32, offset: u64) -> u64 {
    ((seg as u64) << 32) | (offset & 0xffff_ffff)
}

pub fn segment_of(id: u64) -> u32 {
    (id >> 32) as u32
}

/// Segment numbers, shared by the FIFO reader (which starts `.fifo` segments) and the
/// owner (`.aux` segments).
#[derive(Debug, Clone)]
pub struct Numbers(Arc<AtomicU32>);

impl Numbers {
    pub fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// A segment being written.
pub struct Segment {
    pub number: u32,
    pub file: File,
    pub len: u64,
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
}

/// The journal's owner-side state: segment bookkeeping and the `done` file.
pub struct Journal {
    dir: PathBuf,
    numbers: Numbers,
    aux: Option<Segment>,
    done: File,
    done_records: u64,
    /// `done` is rewritten when it reaches this many records: [`DONE_REWRITE`], or twice
    /// what the last rewrite kept, so the rewrites cost O(1) per record however many
    /// records of live segments each one keeps.
    rewrite_at: u64,
    done_buf: Vec<u8>,
    max_done: Option<u64>,
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
        let (done_ids, max_done, done_records) = read_done(&done_path)?;
        let mut segments: Vec<(u32, String)> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (num, kind) = name.split_once('.')?;
                Some((num.parse().ok()?, kind.to_owned()))
            })
            .filter(|(_, kind)| kind == "fifo" || kind == "aux")
            .collect();
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
        let mut journal = Journal {
            dir,
            numbers: Numbers(Arc::new(AtomicU32::new(first))),
            aux: None,
            done,
            done_records,
            rewrite_at: DONE_REWRITE,
            done_buf: Vec::new(),
            max_done,
            live,
        };
        journal.rewrite_done(&done_ids)?;
        Ok((
            journal,
            Recovered {
                events,
                max_done,
                done_records,
            },
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn numbers(&self) -> Numbers {
        self.numbers.clone()
    }

    /// A new `.fifo` segment for the FIFO reader.
    pub fn new_fifo_segment(dir: &Path, numbers: &Numbers) -> io::Result<Segment> {
        Segment::create(dir, numbers.next(), "fifo")
    }

    /// Append an event the daemon itself took in (spool file, injected) and name it.
    pub fn append(&mut self, ev: &mut Event) -> io::Result<()> {
        if self.aux.as_ref().is_none_or(|s| s.len >= SEGMENT_SIZE) {
            if let Some(old) = self.aux.take() {
                self.sealed(old.number);
            }
            self.aux = Some(Segment::create(&self.dir, self.numbers.next(), "aux")?);
        }
        let seg = self.aux.as_mut().expect("just made");
        let bytes = message::encode(ev.payload());
        seg.file.write_all_at(&bytes, seg.len)?;
        ev.set_id(event_id(seg.number, seg.len));
        seg.len += bytes.len() as u64;
        Ok(())
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

    /// The daemon is done with `ev` (`queued`: it had been counted by [`queued`]; a
    /// duplicate or a coalesced `remove` never was). Buffered until [`flush`](Self::flush).
    pub fn done(&mut self, ev: &Event, queued: bool) {
        let id = ev.id();
        if id == 0 {
            return;
        }
        self.done_buf.extend_from_slice(&id.to_le_bytes());
        let seq = ev.seqnum().unwrap_or(NO_SEQ);
        self.done_buf.extend_from_slice(&seq.to_le_bytes());
        if let Some(s) = ev.seqnum() {
            self.max_done = Some(self.max_done.map_or(s, |m| m.max(s)));
        }
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
        self.done_buf.clear();
        if self.done_records >= self.rewrite_at {
            let (ids, _, _) = read_done(&self.dir.join("done"))?;
            self.rewrite_done(&ids)?;
        }
        Ok(())
    }

    fn drop_segment(&mut self, number: u32) {
        self.live.remove(&number);
        for kind in ["fifo", "aux"] {
            let _ = fs::remove_file(segment_path(&self.dir, number, kind));
        }
    }

    /// Rewrite `done` with the records of live segments only, plus the highest SEQNUM.
    fn rewrite_done(&mut self, ids: &HashSet<u64, BuildU64>) -> io::Result<()> {
        let mut out = Vec::new();
        for id in ids {
            if self.live.contains_key(&segment_of(*id)) {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&NO_SEQ.to_le_bytes());
            }
        }
        if let Some(m) = self.max_done {
            out.extend_from_slice(&MAX_SEQ_ID.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
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
        Ok(())
    }

    /// Clean shutdown: queued events went to the spool, so nothing here is needed.
    pub fn clear(&mut self) -> io::Result<()> {
        self.aux = None;
        for entry in fs::read_dir(&self.dir)? {
            fs::remove_file(entry?.path())?;
        }
        Ok(())
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

/// The `done` file: ids done, the highest SEQNUM done, and the record count.
fn read_done(path: &Path) -> io::Result<(HashSet<u64, BuildU64>, Option<u64>, u64)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut ids = HashSet::with_capacity_and_hasher(bytes.len() / DONE_RECORD, BuildU64::default());
    let mut max = None;
    // A record cut short by a kill mid-write is ignored: its event runs again.
    for rec in bytes.chunks_exact(DONE_RECORD) {
        let id = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
        if seq != NO_SEQ {
            max = Some(max.map_or(seq, |m: u64| m.max(seq)));
        }
        if id != MAX_SEQ_ID {
            ids.insert(id);
        }
    }
    Ok((ids, max, (bytes.len() / DONE_RECORD) as u64))
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
}
