//! The `done` file: 16-byte records, event id (u64 LE) then SEQNUM (u64 LE), appended as
//! the daemon finishes with events. Ids past every real one mark the SEQNUMs kept across
//! rewrites (ranges and the highest) and a clean stop.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

use crate::event::BuildU64;

/// `done` is rewritten once it holds this many records.
pub(super) const DONE_REWRITE: u64 = 64 * 1024;
pub(super) const DONE_RECORD: usize = 16;
/// The record carrying the highest SEQNUM done, kept across rewrites.
pub(super) const MAX_SEQ_ID: u64 = u64::MAX;
/// A pair of records carrying one range of SEQNUMs done (first, then last), kept across
/// rewrites and clean stops.
pub(super) const DONE_FROM_ID: u64 = u64::MAX - 1;
pub(super) const DONE_TO_ID: u64 = u64::MAX - 2;
/// The record a clean stop leaves: no event of the last run is left here.
pub(super) const STOPPED_ID: u64 = u64::MAX - 3;
pub(super) const NO_SEQ: u64 = u64::MAX;
/// Ranges of SEQNUMs done that are kept. Past it the oldest range is forgotten: a copy of
/// one of its events arriving after a restart is taken as late and runs again, the old
/// behaviour, rather than an event being dropped as a duplicate it is not.
pub(super) const MAX_DONE_RANGES: usize = 4096;

/// Append one record to `out`.
#[inline]
pub(super) fn push_record(out: &mut Vec<u8>, id: u64, seq: u64) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
}

pub(super) fn record_id(rec: &[u8]) -> u64 {
    u64::from_le_bytes(rec[..8].try_into().unwrap_or_default())
}

/// What the `done` file says.
pub(super) struct Done {
    pub ids: HashSet<u64, BuildU64>,
    /// The highest SEQNUM done.
    pub max: Option<u64>,
    pub records: u64,
    pub seqs: DoneSeqs,
    /// It ends with a clean stop's mark.
    pub stopped: bool,
}

pub(super) fn read_done(path: &Path) -> io::Result<Done> {
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
pub(super) struct DoneSeqs(BTreeMap<u64, u64>);

impl DoneSeqs {
    pub(super) fn insert(&mut self, seq: u64) {
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

    pub(super) fn insert_range(&mut self, mut first: u64, mut last: u64) {
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

    pub(super) fn ranges(&self) -> Vec<RangeInclusive<u64>> {
        self.0.iter().map(|(&a, &b)| a..=b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
