//! Reading spilled events back: the queue keeps only ids of the events it spilled past
//! `max_queue_memory`, and loads each from its segment when its turn comes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{segment_of, segment_path};
use crate::event::Event;
use crate::message;

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

#[cfg(test)]
mod tests {
    use super::super::test_util::ev;
    use super::super::Journal;
    use super::*;

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
}
