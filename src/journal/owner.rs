//! The owner's side of the journal: which segments are live (events queued and not done,
//! sealed or not), the `done` records buffered and written before each handler starts,
//! `done` rewritten as it grows, done segments zeroed into spares or deleted, and the clean
//! stop that empties the journal.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use super::done::{
    push_record, read_done, record_id, Done, DoneSeqs, DONE_FROM_ID, DONE_RECORD, DONE_REWRITE,
    DONE_TO_ID, MAX_SEQ_ID, NO_SEQ, STOPPED_ID,
};
use super::recover::{self, Found, Recovered};
use super::{
    open_existing, segment_of, segment_path, Appender, FifoJournal, Numbers, Spare, SEGMENT_SIZE,
};
use crate::event::Event;

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
        let Found { events, live, next } = recover::scan(&dir, &done_ids)?;
        let done = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&done_path)?;
        let numbers = Numbers(Arc::new(AtomicU32::new(next)));
        let mut journal = Journal {
            dir: dir.clone(),
            numbers: numbers.clone(),
            spare: Spare::default(),
            aux: Appender::new(dir, numbers),
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
        Appender::new(self.dir.clone(), self.numbers.clone())
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
    /// counted by [`queued`](Self::queued); a coalesced `remove` never was). Buffered until
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
        push_record(&mut self.done_buf, id, seq);
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
                push_record(&mut out, id, NO_SEQ);
                kept.push(id);
            }
        }
        let mut record = |id: u64, seq: u64| push_record(&mut out, id, seq);
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
        self.aux.close();
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

#[cfg(test)]
mod tests {
    use super::super::test_util::{ev, names};
    use super::*;

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
}
