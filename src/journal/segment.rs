//! The `.fifo` segment being filled from the pipe: the file mapped shared, `read()` into
//! the mapping, pages populated ahead of the reads and released behind the splitting.
//! Every `unsafe` of the journal is here.

use std::fs::{self, File};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use nix::sys::mman::{self, MapFlags, MmapAdvise, ProtFlags};
use nix::unistd::{sysconf, SysconfVar};

use super::{create_segment, open_existing, segment_path, FifoJournal};

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
    map: NonNull<u8>,
    /// Size of the mapping and of the file: the segment size plus one pipe's worth.
    room: usize,
    /// Past this many bytes the segment is full ([`SEGMENT_SIZE`](super::SEGMENT_SIZE)).
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

/// What [`FifoSegment::advise`] can ask of the kernel.
#[derive(Clone, Copy)]
enum Advice {
    /// Linux 5.14's MADV_POPULATE_READ: fault a range in now, in one call, failing instead
    /// of raising SIGBUS where the file system has no page for it.
    PopulateRead,
    /// Drop the range from our page tables; in a shared file mapping the file keeps it.
    DontNeed,
}

// SAFETY: the mapping belongs to this value alone; moving it between threads is fine.
unsafe impl Send for FifoSegment {}

impl FifoSegment {
    /// A new segment for a pipe of `pipe_size` bytes: with that much room past
    /// [`SEGMENT_SIZE`](super::SEGMENT_SIZE), a read below it always takes everything the pipe holds, so a
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
        let file = create_segment(&journal.dir, number, "fifo")?;
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
        let page = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096)
            .max(4096) as usize;
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

    /// Past [`SEGMENT_SIZE`](super::SEGMENT_SIZE): time for a new segment.
    pub fn is_full(&self) -> bool {
        self.len >= self.size
    }

    /// Move what the pipe holds into the segment: how many bytes, 0 when it is empty, at
    /// end of file, when a signal ended a blocking read, or when the segment has no room
    /// left.
    pub fn fill_from(&mut self, fifo: BorrowedFd) -> io::Result<usize> {
        self.populate();
        // SAFETY: map[len..room] is ours and writable; read() writes at most that. libc's
        // read: nix's wants a `&mut [u8]` over the mapping, which takes this same promise.
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
        self.populated = match self.advise(start, end, Advice::PopulateRead) {
            Ok(()) => end,
            Err(_) => self.room,
        };
    }

    /// madvise(2) on map[start..end] (page-aligned start).
    fn advise(&self, start: usize, end: usize, advice: Advice) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        match advice {
            Advice::PopulateRead => {
                // SAFETY: map[start..end] lies inside our mapping (end <= room); populating
                // only faults pages in, it changes no byte. libc's madvise, as nix's
                // `MmapAdvise` has no MADV_POPULATE_READ.
                let r = unsafe {
                    libc::madvise(
                        self.map.as_ptr().add(start).cast(),
                        end - start,
                        libc::MADV_POPULATE_READ,
                    )
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            // SAFETY: map[start..end] lies inside our mapping (end <= room), and for a
            // shared file mapping MADV_DONTNEED only unmaps: the file keeps the pages, so
            // `bytes` reads the same data after it faults them back in.
            Advice::DontNeed => unsafe {
                mman::madvise(
                    self.map.add(start).cast(),
                    end - start,
                    MmapAdvise::MADV_DONTNEED,
                )
            }
            .map_err(io::Error::from),
        }
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
            let _ = self.advise(self.released, end, Advice::DontNeed);
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
        // SAFETY: the mapping made in `map`, `room` bytes long, unmapped once; no slice
        // from `bytes` outlives `self`.
        let _ = unsafe { mman::munmap(self.map.cast(), self.room) };
    }
}

/// A read-write shared mapping of the first `len` bytes of `file` (which stays valid after
/// `file` is closed, until munmap).
fn map_shared(file: &File, len: usize) -> io::Result<NonNull<u8>> {
    let len = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("an empty mapping"))?;
    // SAFETY: a fresh mapping at an address the kernel picks (no hint, no MAP_FIXED), so
    // no memory of ours is replaced.
    let map = unsafe {
        mman::mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            file,
            0,
        )
    }?;
    Ok(map.cast())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::super::test_util::{ev, names};
    use super::super::{segment_of, split_segment, Journal};
    use super::*;
    use crate::event::Event;
    use crate::message;

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
