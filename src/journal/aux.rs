//! `.aux` segments: events the daemon itself took in (spool files, injected events,
//! netlink datagrams), each appended with one `pwrite` as it is taken, and named by where
//! it lies.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{create_segment, event_id, Numbers, SEGMENT_SIZE};
use crate::event::Event;
use crate::message;

/// A segment being written.
struct Segment {
    number: u32,
    file: File,
    len: u64,
}

/// Appends events to `.aux` segments of its own. The segments it fills and leaves must
/// reach the owner's [`Journal::sealed`](super::Journal::sealed) after their last events (see
/// [`take_sealed`](Self::take_sealed)).
pub struct Appender {
    dir: PathBuf,
    numbers: Numbers,
    seg: Option<Segment>,
    /// Segments left full since the last [`take_sealed`](Self::take_sealed).
    sealed: Vec<u32>,
}

impl Appender {
    pub(super) fn new(dir: PathBuf, numbers: Numbers) -> Appender {
        Appender {
            dir,
            numbers,
            seg: None,
            sealed: Vec::new(),
        }
    }

    /// Append `ev` and name it by where it lies.
    pub fn append(&mut self, ev: &mut Event) -> io::Result<()> {
        if self.seg.as_ref().is_none_or(|s| s.len >= SEGMENT_SIZE) {
            if let Some(old) = self.seg.take() {
                self.sealed.push(old.number);
            }
            let number = self.numbers.next();
            self.seg = Some(Segment {
                number,
                file: create_segment(&self.dir, number, "aux")?,
                len: 0,
            });
        }
        let seg = self.seg.as_mut().expect("just made");
        let bytes = message::encode(ev.payload());
        seg.file.write_all_at(&bytes, seg.len)?;
        ev.set_id(event_id(seg.number, seg.len));
        seg.len += bytes.len() as u64;
        Ok(())
    }

    /// The segments left full, which get no more events. For [`Journal::sealed`](super::Journal::sealed) once
    /// every event appended to them was handed on.
    pub fn take_sealed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.sealed)
    }

    /// Let go of the segment being filled without sealing it: the clean stop deletes it.
    pub(super) fn close(&mut self) {
        self.seg = None;
    }
}
