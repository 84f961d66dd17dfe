//! Coalescing: a `remove` for a DEVPATH whose `add` the runner has not taken yet cancels
//! both, since the handlers would create and destroy the same thing. Two indexes keep
//! that O(1) per event:
//!
//! * `adds`: DEVPATH hash → where the newest untaken `add` is (waiting behind a gap, or
//!   at a log position). Adds in the log are indexed lazily, when a `remove` needs the
//!   index or before their bodies are spilled, so a coldplug of adds the runner takes as
//!   they come never pays for it. Entries are not removed one by one as events leave; a
//!   sweep drops the dead ones in bulk.
//! * `removes`: DEVPATH hash → SEQNUM of a `remove` waiting behind a gap, for the `add`
//!   that arrives after it (their helpers raced).
//!
//! The queue owns the events; this type only finds them. It reads the queue's state
//! through a [`View`] and answers with SEQNUMs for the queue to recall.

use std::collections::{BTreeMap, HashMap};

use super::chunks::Log;
use super::Slot;
use crate::event::{BuildU64, Event};

/// Most queued `add`s indexed for coalescing: 7/8 of 65,536, the most a hash table of
/// 65,536 buckets holds before it doubles (~1.1 MiB of index at 16 bytes an entry).
pub(super) const MAX_ADDS: usize = (1 << 16) / 8 * 7;

/// The add index is swept once it holds this many entries, or twice what the last sweep
/// kept.
pub(super) const ADDS_SWEEP_MIN: usize = 4096;

/// What the coalescer reads of the queue.
pub(super) struct View<'a> {
    pub waiting: &'a BTreeMap<u64, Option<Event>>,
    pub log: &'a Log<Slot>,
    /// The log position of `log[0]`.
    pub base: u64,
    /// The runner's cursor: adds below it were taken and cancel nothing.
    pub from: u64,
}

impl View<'_> {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// The event with SEQNUM `seq` still waits behind a gap (it was neither released nor
    /// recalled): an index entry pointing at it is live.
    fn still_waiting(&self, seq: u64) -> bool {
        self.waiting.get(&seq).is_some_and(Option::is_some)
    }
}

/// Where a queued `add` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Waiting(u64),
    Log(u64),
}

/// DEVPATH hash → [`Loc`], with the location packed into one `u64` (top bit: waiting):
/// 16 bytes per entry instead of 24.
#[derive(Debug, Default)]
struct AddIndex(HashMap<u64, u64, BuildU64>);

const WAITING_BIT: u64 = 1 << 63;

impl AddIndex {
    fn get(&self, key: &u64) -> Option<Loc> {
        self.0.get(key).map(|&v| {
            if v & WAITING_BIT != 0 {
                Loc::Waiting(v & !WAITING_BIT)
            } else {
                Loc::Log(v)
            }
        })
    }
    fn insert(&mut self, key: u64, loc: Loc) {
        let v = match loc {
            Loc::Waiting(seq) => seq | WAITING_BIT,
            Loc::Log(pos) => pos,
        };
        self.0.insert(key, v);
    }
}

pub(super) fn devpath_key(ev: &Event) -> u64 {
    crate::message::hash64(ev.devpath())
}

#[derive(Debug)]
pub(super) struct Coalescer {
    enabled: bool,
    adds: AddIndex,
    /// When `adds` is swept next (its size), and the runner's position at the last sweep.
    sweep_at: usize,
    swept_at: u64,
    /// Adds in the log below this position are in `adds` (see `index_log`).
    upto: u64,
    /// DEVPATH hash → SEQNUM of a `remove` waiting behind a gap. Checked against `waiting`
    /// when used, and unindexed when the remove is released.
    removes: HashMap<u64, u64, BuildU64>,
}

impl Coalescer {
    pub(super) fn new(enabled: bool) -> Coalescer {
        Coalescer {
            enabled,
            adds: AddIndex::default(),
            sweep_at: ADDS_SWEEP_MIN,
            swept_at: 0,
            upto: 0,
            removes: HashMap::default(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(super) fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if !enabled {
            self.removes.clear();
        }
    }

    /// Adds indexed now (for tests of the index's bounds).
    #[cfg(test)]
    pub(super) fn indexed(&self) -> usize {
        self.adds.0.len()
    }

    /// Index the adds appended to the log since the last call that the runner has not
    /// taken. Adds in the log are indexed when a `remove` needs the index (or before their
    /// bodies leave memory), not as they come: a stream of adds the runner takes before
    /// any remove arrives, a boot's coldplug say, never pays for it, and the others pay
    /// the same once.
    pub(super) fn index_log(&mut self, v: &View) {
        let end = v.end();
        for pos in self.upto.max(v.from)..end {
            let key = match &v.log[(pos - v.base) as usize] {
                Slot::Mem(ev) if ev.action() == b"add" => devpath_key(ev),
                _ => continue,
            };
            self.index_logged_add(v, key, pos);
        }
        self.upto = end;
    }

    /// `ev` goes into the log at `pos` as a stub, which keeps no DEVPATH: index the adds
    /// so far, and this one, first.
    pub(super) fn index_before_spill(&mut self, v: &View, ev: &Event, pos: u64) {
        self.index_log(v);
        if ev.action() == b"add" {
            self.index_logged_add(v, devpath_key(ev), pos);
        }
        self.upto = pos + 1;
    }

    /// Index the add at log position `pos`, unless an add for that DEVPATH is still
    /// waiting behind a gap: that one is newer than any in the log.
    fn index_logged_add(&mut self, v: &View, key: u64, pos: u64) {
        let waiting = match self.adds.get(&key) {
            Some(Loc::Waiting(s)) => v.still_waiting(s),
            _ => false,
        };
        if !waiting {
            self.index_add(v, key, Loc::Log(pos));
        }
    }

    /// Remember where a queued `add` is, for coalescing. The index is bounded: past
    /// `MAX_ADDS` queued adds, newer ones are not indexed, so a `remove` for one of them
    /// runs its handlers instead of being coalesced (an optimisation lost, nothing else).
    fn index_add(&mut self, v: &View, key: u64, loc: Loc) {
        if self.adds.0.len() >= self.sweep_at {
            self.sweep(v);
        }
        if self.adds.0.len() < MAX_ADDS || self.adds.0.contains_key(&key) {
            self.adds.insert(key, loc);
        }
    }

    /// Drop index entries of adds that can no longer be coalesced: the runner took them,
    /// or they left `waiting`. Events leaving the queue do not remove their own entries
    /// (a DEVPATH hash and a lookup per event, on a payload long out of cache); this sweep
    /// costs about one entry visit per add. When most entries are live (a backlog of
    /// queued adds) it waits for the runner to move on, so that it is never a full scan
    /// per add; meanwhile, past [`MAX_ADDS`], new adds go unindexed as before.
    fn sweep(&mut self, v: &View) {
        let from = v.from;
        if self.adds.0.len() >= MAX_ADDS && from - self.swept_at < (MAX_ADDS / 4) as u64 {
            return;
        }
        self.adds.0.retain(|_, e| {
            if *e & WAITING_BIT != 0 {
                v.still_waiting(*e & !WAITING_BIT)
            } else {
                *e >= from
            }
        });
        self.swept_at = from;
        self.sweep_at = (2 * self.adds.0.len()).clamp(ADDS_SWEEP_MIN, MAX_ADDS);
    }

    /// `ev` (SEQNUM `seq`) waits behind a gap: an add is indexed where it waits, a remove
    /// is kept for the add that may still arrive before it.
    pub(super) fn note_waiting(&mut self, v: &View, ev: &Event, seq: u64) {
        if ev.action() == b"add" {
            self.index_add(v, devpath_key(ev), Loc::Waiting(seq));
        }
        if ev.action() == b"remove" && self.removes.len() < MAX_ADDS {
            let first = self.removes.entry(devpath_key(ev)).or_insert(seq);
            *first = (*first).min(seq);
        }
    }

    /// A waiting `remove` (SEQNUM `seq`) was released: no later add can cancel it.
    pub(super) fn released(&mut self, ev: &Event, seq: u64) {
        if ev.action() == b"remove" && !self.removes.is_empty() {
            let key = devpath_key(ev);
            if self.removes.get(&key) == Some(&seq) {
                self.removes.remove(&key);
            }
        }
    }

    /// The SEQNUM of the queued `add` this `remove` cancels, if there is one.
    pub(super) fn add_for(&mut self, v: &View, remove: &Event) -> Option<u64> {
        self.index_log(v);
        let key = devpath_key(remove);
        let (seq, same) = match self.adds.get(&key)? {
            Loc::Waiting(seq) => {
                let add = v.waiting.get(&seq)?.as_ref()?;
                (add.seqnum()?, add.devpath() == remove.devpath())
            }
            Loc::Log(pos) => {
                if pos < v.from {
                    return None;
                }
                match v.log.get((pos - v.base) as usize)? {
                    Slot::Mem(add) => (add.seqnum()?, add.devpath() == remove.devpath()),
                    // A spilled add is known by its DEVPATH hash only.
                    Slot::Stub { id: 0, .. } => return None,
                    slot @ Slot::Stub { .. } => (slot.seqnum()?, true),
                }
            }
        };
        (same && Some(seq) < remove.seqnum()).then_some(seq)
    }

    /// The SEQNUM of the waiting `remove` that this new `add` (SEQNUM `seq`, not late)
    /// cancels: the remove's helper won the race and it waits behind the add's gap.
    pub(super) fn remove_for(
        &mut self,
        waiting: &BTreeMap<u64, Option<Event>>,
        add: &Event,
        seq: u64,
    ) -> Option<u64> {
        if self.removes.is_empty() {
            return None;
        }
        let key = devpath_key(add);
        let r = *self.removes.get(&key)?;
        let Some(Some(remove)) = waiting.get(&r) else {
            // Recalled meanwhile: its slot is a tombstone.
            self.removes.remove(&key);
            return None;
        };
        // An older remove is not this add's; another DEVPATH with the same hash keeps its
        // entry.
        if r <= seq || remove.devpath() != add.devpath() {
            return None;
        }
        self.removes.remove(&key);
        Some(r)
    }

    /// Everything untaken left the queue (the shutdown hand-off): forget it all; the log
    /// up to `end` needs no indexing.
    pub(super) fn clear(&mut self, end: u64) {
        self.adds.0.clear();
        self.upto = end;
        self.removes.clear();
    }
}
