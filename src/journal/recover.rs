//! Recovery at start: every segment an earlier run left is read back and split into
//! messages; events the `done` file names are dropped, and so are segments with nothing
//! else left in them, and spare segments (their pages may hold done events).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

use super::{event_id, segment_path};
use crate::event::{BuildU64, Event};
use crate::message::{Item, Splitter};

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

/// The segments an earlier run left, read back.
pub(super) struct Found {
    /// Events not done, sorted by SEQNUM (those without one last, in journal order).
    pub events: Vec<Event>,
    /// Per segment still holding any of them: events not done yet (0 until queued) and
    /// sealed (all of them are).
    pub live: BTreeMap<u32, (u64, bool)>,
    /// The number of the next segment.
    pub next: u32,
}

/// Read back the segments in `dir`, keeping the events whose ids `done_ids` lacks.
pub(super) fn scan(dir: &Path, done_ids: &HashSet<u64, BuildU64>) -> io::Result<Found> {
    let mut segments: Vec<(u32, String)> = fs::read_dir(dir)?
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
            let _ = fs::remove_file(segment_path(dir, *number, kind));
            false
        }
        _ => false,
    });
    segments.sort();
    let mut live = BTreeMap::new();
    let mut events = Vec::new();
    for (number, kind) in &segments {
        let path = segment_path(dir, *number, kind);
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
            // Counted again as the daemon queues them; see `Journal::drop_idle`.
            live.insert(*number, (0, true));
        }
    }
    // Stable: events without a SEQNUM keep their journal order, after the others.
    events.sort_by_key(|e| e.seqnum().unwrap_or(u64::MAX));
    Ok(Found {
        next: segments.last().map_or(1, |(n, _)| n + 1),
        events,
        live,
    })
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
