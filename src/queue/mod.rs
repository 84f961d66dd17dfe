//! The event queue, with kue semantics: whole events in, whole events out, several readers
//! each with its own cursor, an event freed once every reader has passed it, and recall of
//! an event nobody has taken yet. Pure logic, no I/O and no clock of its own (the caller
//! passes `now`), owned by one thread, so it needs no lock and tests need no sleeps.
//!
//! Two stages:
//!
//! 1. **Reordering.** The kernel hands out SEQNUMs in order but runs the helpers
//!    concurrently, so they arrive out of order. An event whose SEQNUM is the next expected
//!    one is released at once (with every event queued behind it). One that arrives early
//!    waits in `waiting` until the missing SEQNUMs come, or until `gap_timeout` has passed
//!    since the gap in front of it was first seen (its own arrival at the latest); then the
//!    missing range is recorded as skipped and delivery goes on. Each event's clock runs
//!    from its own arrival, never from the previous gap's expiry: a hundred gaps that
//!    arrived together expire together, not one `gap_timeout` after another. Gaps are routine: the kernel spends SEQNUMs on events
//!    it never runs the helper for (devices in other network namespaces, events injected
//!    from user space). An event that later arrives inside a skipped range is released at
//!    once ("late"); one below the next expected SEQNUM and not in a skipped range has been
//!    seen before and is dropped ("duplicate": a spool file and the FIFO, or two sources).
//!    Events without a SEQNUM take no part in ordering and are released on arrival.
//!
//! 2. **The log.** Released events sit in `log` in delivery order, each at a position that
//!    only grows. Every reader (the runner, and each `hotplugctl monitor`) has a cursor; an
//!    event leaves memory when the slowest cursor has passed it. A recalled event becomes a
//!    tombstone: its memory goes at once, readers skip it.
//!
//! Coalescing: a `remove` for a DEVPATH whose `add` has not been taken by the runner yet
//! recalls both: the handlers would create and destroy the same thing. An index from a
//! hash of DEVPATH to the waiting `add` keeps that O(1) per event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::event::Event;

mod chunks;
mod coalesce;
use chunks::Log;
use coalesce::{Coalescer, View};

/// What the coalescer reads of the queue (see [`View`]); a macro, not a method, so the
/// borrows are of the fields it names and `self.coalesce` stays free to change.
macro_rules! view {
    ($q:ident) => {{
        let from = $q.runner_cursor();
        View {
            waiting: &$q.waiting,
            log: &$q.log,
            base: $q.base,
            from,
        }
    }};
}

/// Skipped ranges remembered for late arrivals. Older ones are forgotten: an event later
/// than that many gaps is treated as a duplicate.
const MAX_SKIPPED: usize = 4096;

/// A reader's handle. The runner is always [`RUNNER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReaderId(usize);

/// The handler runner: the reader whose cursor defines "taken".
pub const RUNNER: ReaderId = ReaderId(0);

/// What `push` did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Released to the log (possibly with others that waited behind it).
    Queued,
    /// Held until the SEQNUMs before it arrive or the gap times out.
    Waiting,
    /// Its SEQNUM was skipped after a gap timeout; released now, out of order.
    Late,
    /// Seen before; handed back, not queued.
    Duplicate(Event),
    /// An `add` and a `remove` of one DEVPATH, both not yet taken: both recalled and
    /// handed back. `add_was_queued`: the `add` was queued and the `remove` is the new
    /// arrival (the usual order); false when helpers raced and the `remove` was waiting
    /// behind the `add`'s gap.
    Coalesced {
        add: Event,
        remove: Event,
        add_was_queued: bool,
    },
}

/// Why a recall failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecallError {
    #[error("SEQNUM {0} is not queued")]
    NotQueued(u64),
    #[error("SEQNUM {0} has already been taken by the runner")]
    Taken(u64),
}

/// A missing range the gap timeout skipped, and when its wait began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub range: RangeInclusive<u64>,
    pub since: Instant,
}

#[derive(Debug)]
pub struct Queue {
    gap_timeout: Duration,
    coalesce: Coalescer,
    /// The next SEQNUM to release; None until the first numbered event or `start_at`.
    next_expected: Option<u64>,
    /// Early arrivals by SEQNUM; `None` is a recalled tombstone that still fills its slot.
    waiting: BTreeMap<u64, Option<Event>>,
    /// When the gap in front of the first waiting event was first seen: the earliest
    /// arrival still in `arrivals`, or when a settle began expecting.
    stalled_since: Option<Instant>,
    /// When each entry of `waiting` arrived, in arrival order. Entries below
    /// `next_expected` were released and are pruned from the front, so the front is the
    /// earliest arrival still waiting.
    arrivals: VecDeque<(Instant, u64)>,
    /// When a settle started expecting SEQNUMs that had not arrived.
    expect_since: Option<Instant>,
    skipped: VecDeque<RangeInclusive<u64>>,
    /// See [`Queue::set_done_before`].
    done_before: Vec<RangeInclusive<u64>>,
    /// Released events; `log[0]` is at position `base`.
    log: Log<Slot>,
    base: u64,
    /// Cursor per reader (the position of the next event it will get); None = free slot.
    cursors: Vec<Option<u64>>,
    /// Positions past the runner's cursor that the runner took out of order ([`lanes`]:
    /// an event that passed an older one blocked behind a relative). The cursor skips
    /// them when it gets there. Empty with one worker.
    ///
    /// [`lanes`]: crate::lanes
    taken_ahead: BTreeSet<u64>,
    /// A SEQNUM someone waits to see handled (settle): if nothing arrives to fill the
    /// range up to it, the gap timeout skips it like any other gap.
    expect_upto: Option<u64>,
    /// Events not yet taken by the runner and not recalled.
    pending: usize,
    /// Heap bytes of events held (waiting + log).
    bytes: usize,
    /// Past this estimate of memory, released events are kept as stubs (see `Slot`).
    limit: usize,
    loader: Option<LoaderBox>,
    spilled: usize,
    /// No slot from this log position on holds an event that could be spilled: the
    /// spill scan starts below it, so a log of stubs is not scanned again and again.
    stubs_from: u64,
}

struct LoaderBox(Loader);

impl std::fmt::Debug for LoaderBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loader")
    }
}

/// Reads a spilled event back by its journal id.
pub type Loader = Box<dyn FnMut(u64) -> Option<Event> + Send>;

/// Allocator overhead per boxed payload, for the memory estimate.
const MALLOC_OVERHEAD: usize = 16;

/// One released event. Past the memory limit an event is kept as a stub: its SEQNUM, its
/// journal id (the body is in the journal segment and is read back when a reader gets
/// to it). A spilled `add` stays in the coalescing index by its DEVPATH hash.
/// A recalled or unreadable event is a stub with id 0 ([`Slot::GONE`]; real stubs always
/// have a journal id): two variants let the enum use the Box's niche, 48 bytes a slot
/// instead of 56.
#[derive(Debug)]
enum Slot {
    Mem(Event),
    Stub { seqnum: u64, id: u64 },
}

impl Slot {
    const GONE: Slot = Slot::Stub {
        seqnum: u64::MAX,
        id: 0,
    };

    fn seqnum(&self) -> Option<u64> {
        match self {
            Slot::Mem(ev) => ev.seqnum(),
            Slot::Stub { seqnum, .. } => (*seqnum != u64::MAX).then_some(*seqnum),
        }
    }
}

impl Queue {
    pub fn new(gap_timeout: Duration, coalesce: bool) -> Queue {
        Queue {
            gap_timeout,
            coalesce: Coalescer::new(coalesce),
            next_expected: None,
            waiting: BTreeMap::new(),
            stalled_since: None,
            arrivals: VecDeque::new(),
            expect_since: None,
            skipped: VecDeque::new(),
            done_before: Vec::new(),
            log: Log::default(),
            base: 0,
            cursors: vec![Some(0)],
            taken_ahead: BTreeSet::new(),
            expect_upto: None,
            pending: 0,
            bytes: 0,
            limit: usize::MAX,
            loader: None,
            spilled: 0,
            stubs_from: 0,
        }
    }

    /// Keep at most about `limit` bytes of events in memory; past it, released events that
    /// have a journal id become stubs, read back with `loader` when a reader reaches them.
    pub fn set_spill(&mut self, limit: usize, loader: Loader) {
        self.limit = limit;
        self.loader = Some(LoaderBox(loader));
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Estimated memory held: bodies, allocator overhead, and the slots themselves.
    pub fn memory(&self) -> usize {
        self.bytes
            + (self.log.len() - self.spilled) * MALLOC_OVERHEAD
            + self.log.capacity() * std::mem::size_of::<Slot>()
            + self.waiting.len() * (std::mem::size_of::<Option<Event>>() + 48)
    }

    /// The event released last, if it is in memory (for a log line about it).
    pub fn newest(&self) -> Option<&Event> {
        match self.log.back()? {
            Slot::Mem(ev) => Some(ev),
            _ => None,
        }
    }

    /// Events kept as stubs right now.
    pub fn spilled(&self) -> usize {
        self.spilled
    }

    /// Set the first SEQNUM expected. Events below it are treated as already handled.
    pub fn start_at(&mut self, seq: u64) {
        self.next_expected = Some(seq);
    }

    fn start_from_first(&mut self, seq: u64) {
        match seq.checked_sub(1) {
            Some(before) => self.start_at_kernel(before),
            None => self.start_at(seq),
        }
    }

    /// Start right after the kernel's current SEQNUM `kernel`: nothing from before the
    /// start waits on a gap, yet an event from before it (spooled while no daemon ran, or
    /// still in flight) is taken once, as late.
    pub fn start_at_kernel(&mut self, kernel: u64) {
        self.next_expected = Some(kernel + 1);
        if kernel >= 1 {
            self.skipped.push_back(1..=kernel);
        }
    }

    pub fn set_gap_timeout(&mut self, gap_timeout: Duration, coalesce: bool) {
        self.gap_timeout = gap_timeout;
        self.coalesce.set_enabled(coalesce);
    }

    /// SEQNUMs earlier runs were done with (ascending ranges): a copy of one is a
    /// duplicate whenever it comes, even where this run would take it as late.
    pub fn set_done_before(&mut self, ranges: Vec<RangeInclusive<u64>>) {
        self.done_before = ranges;
    }

    fn done_before(&self, seq: u64) -> bool {
        // Most events are newer than all of them: one comparison.
        if self.done_before.last().is_none_or(|r| seq > *r.end()) {
            return false;
        }
        let i = self.done_before.partition_point(|r| *r.end() < seq);
        self.done_before.get(i).is_some_and(|r| r.contains(&seq))
    }

    /// The next SEQNUM the queue will release, if it knows.
    pub fn next_expected(&self) -> Option<u64> {
        self.next_expected
    }

    /// Take in one event.
    pub fn push(&mut self, ev: Event, now: Instant) -> Push {
        let Some(seq) = ev.seqnum() else {
            self.append(ev);
            return Push::Queued;
        };
        if self.done_before(seq) {
            // Nothing waits for it: its slot, if still ahead, is filled.
            self.settle_seq(seq, now);
            return Push::Duplicate(ev);
        }
        // A second copy of a remove (two sources, or the spool) must not cancel an add
        // that came after the first copy, which already ran or is queued.
        if self.coalesce.enabled() && ev.action() == b"remove" && !self.seen(seq) {
            if let Some(add) = self.coalesce_remove(&ev) {
                // The remove takes its slot as a tombstone so the gap logic does not wait.
                self.settle_seq(seq, now);
                return Push::Coalesced {
                    add,
                    remove: ev,
                    add_was_queued: true,
                };
            }
        }
        let next = match self.next_expected {
            Some(next) => next,
            // Not knowing where the kernel was, the first event sets the start, and those
            // below it still count as late rather than as duplicates.
            None => {
                self.start_from_first(seq);
                seq
            }
        };
        if seq < next {
            return if self.take_skipped(seq) {
                self.append(ev);
                Push::Late
            } else {
                Push::Duplicate(ev)
            };
        }
        if self.coalesce.enabled() && ev.action() == b"add" && !self.waiting.contains_key(&seq) {
            if let Some(remove) = self.coalesce_add(&ev, seq) {
                self.settle_seq(seq, now);
                return Push::Coalesced {
                    add: ev,
                    remove,
                    add_was_queued: false,
                };
            }
        }
        if seq == next && self.waiting.is_empty() {
            // In order with nothing waiting (the usual case): straight to the log, as
            // `release` would move it, without a round trip through `waiting`.
            self.next_expected = Some(next + 1);
            self.append(ev);
            self.update_stall(now);
            return Push::Queued;
        }
        if self.waiting.contains_key(&seq) {
            return Push::Duplicate(ev);
        }
        self.bytes += ev.heap_bytes();
        self.pending += 1;
        if self.coalesce.enabled() {
            let view = view!(self);
            self.coalesce.note_waiting(&view, &ev, seq);
        }
        self.waiting.insert(seq, Some(ev));
        self.arrivals.push_back((now, seq));
        self.release(now);
        if self.waiting.contains_key(&seq) {
            Push::Waiting
        } else {
            Push::Queued
        }
    }

    /// Whether `seq` was taken in before: released (and not in a skipped range, where a
    /// late copy is still welcome) or waiting.
    fn seen(&self, seq: u64) -> bool {
        match self.next_expected {
            Some(next) if seq < next => !self.skipped.iter().any(|r| r.contains(&seq)),
            Some(_) => self.waiting.contains_key(&seq),
            None => false,
        }
    }

    /// Fill `seq`'s slot with a tombstone (or, below the next expected, do nothing).
    fn settle_seq(&mut self, seq: u64, now: Instant) {
        if self.next_expected.is_none() {
            self.start_from_first(seq);
        }
        let next = self.next_expected.unwrap_or(seq);
        if seq < next {
            self.take_skipped(seq);
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.waiting.entry(seq) {
            slot.insert(None);
            self.arrivals.push_back((now, seq));
        }
        self.release(now);
    }

    /// Release everything contiguous from the next expected SEQNUM.
    fn release(&mut self, now: Instant) {
        let Some(mut next) = self.next_expected else {
            return;
        };
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() != next {
                break;
            }
            if let Some(ev) = entry.remove() {
                self.bytes -= ev.heap_bytes();
                self.pending -= 1;
                self.coalesce.released(&ev, next);
                self.append(ev);
            }
            next += 1;
        }
        self.next_expected = Some(next);
        self.update_stall(now);
    }

    /// Recompute when the current stall began: the earliest arrival still waiting (the gap
    /// in front of it was seen then at the latest), or when a settle began expecting
    /// SEQNUMs nobody has sent, whichever is earlier. Never the time of a release: a gap
    /// found behind one that just expired has been waited for since its events arrived.
    fn update_stall(&mut self, now: Instant) {
        let next = self.next_expected.unwrap_or(0);
        while self.arrivals.front().is_some_and(|&(_, seq)| seq < next) {
            self.arrivals.pop_front();
        }
        if self.expecting() {
            self.expect_since.get_or_insert(now);
        } else {
            self.expect_since = None;
        }
        let waited = self.arrivals.front().map(|&(t, _)| t);
        self.stalled_since = match (waited, self.expect_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn expecting(&self) -> bool {
        matches!((self.expect_upto, self.next_expected), (Some(up), Some(next)) if up >= next)
    }

    /// Someone waits until every SEQNUM up to `upto` is handled (settle). Those that never
    /// come (the kernel spends SEQNUMs without running the helper) are skipped after the
    /// gap timeout, as any gap is. Before the start is known this only takes note: the
    /// gap wait begins once the first numbered event has set it.
    pub fn expect(&mut self, upto: u64, now: Instant) {
        self.expect_upto = Some(self.expect_upto.map_or(upto, |u| u.max(upto)));
        self.update_stall(now);
    }

    /// Whether every SEQNUM up to `seq` has been released (taken, skipped or from before
    /// the start). Unknown start: false, as `seq` may still be on its way.
    pub fn released_through(&self, seq: u64) -> bool {
        self.next_expected.is_some_and(|next| next > seq)
    }

    fn append(&mut self, ev: Event) {
        let pos = self.base + self.log.len() as u64;
        self.pending += 1;
        if ev.id() != 0 && self.memory() + ev.heap_bytes() > self.limit {
            if self.coalesce.enabled() {
                let view = view!(self);
                self.coalesce.index_before_spill(&view, &ev, pos);
            }
            self.spilled += 1;
            self.log.push_back(Slot::Stub {
                seqnum: ev.seqnum().unwrap_or(u64::MAX),
                id: ev.id(),
            });
            // The slots themselves grow too: give back what older events hold.
            if self.memory() > self.limit {
                self.enforce_limit();
            }
            return;
        }
        self.bytes += ev.heap_bytes();
        if ev.id() != 0 {
            self.stubs_from = pos + 1;
        }
        self.log.push_back(Slot::Mem(ev));
    }

    /// Over the limit: turn the newest in-memory events the runner has not taken into stubs
    /// until the estimate is 1/8 below the limit (so this runs rarely). The oldest stay: the
    /// runner needs them first.
    fn enforce_limit(&mut self) {
        if self.loader.is_none() || self.memory() <= self.limit {
            return;
        }
        if self.coalesce.enabled() {
            self.index_log();
        }
        let target = self.limit - self.limit / 8;
        let from = (self.runner_cursor() - self.base) as usize;
        let mut idx = (self.stubs_from.max(self.base) - self.base) as usize;
        idx = idx.min(self.log.len());
        while idx > from + 1 && self.memory() > target {
            idx -= 1;
            if let Slot::Mem(ev) = &self.log[idx] {
                if ev.id() == 0 {
                    continue;
                }
                let stub = Slot::Stub {
                    seqnum: ev.seqnum().unwrap_or(u64::MAX),
                    id: ev.id(),
                };
                self.bytes -= ev.heap_bytes();
                self.spilled += 1;
                self.log[idx] = stub;
            }
        }
        self.stubs_from = self.base + idx as u64;
    }

    /// Bring the stub at log index `idx` back into memory; false if it cannot be read.
    fn load(&mut self, idx: usize) -> bool {
        let Slot::Stub { id, .. } = self.log[idx] else {
            return true;
        };
        if id == 0 {
            return false;
        }
        self.spilled -= 1;
        match self.loader.as_mut().and_then(|load| (load.0)(id)) {
            Some(ev) => {
                self.bytes += ev.heap_bytes();
                self.log[idx] = Slot::Mem(ev);
                // A monitor ahead of the runner brought it back: spillable again.
                let pos = self.base + idx as u64;
                self.stubs_from = self.stubs_from.max(pos + 1);
                true
            }
            None => {
                log::error!("journal: spilled event {id:#x} cannot be read back; it is lost");
                self.log[idx] = Slot::GONE;
                if self.is_untaken(self.base + idx as u64) {
                    self.pending -= 1;
                }
                false
            }
        }
    }

    /// Index the adds the log took since the last time (see [`Coalescer::index_log`]).
    fn index_log(&mut self) {
        let view = view!(self);
        self.coalesce.index_log(&view);
    }

    /// Recall the queued `add` this `remove` cancels, if there is one.
    fn coalesce_remove(&mut self, remove: &Event) -> Option<Event> {
        let view = view!(self);
        let seq = self.coalesce.add_for(&view, remove)?;
        self.recall(seq).ok()
    }

    /// Recall the waiting `remove` that this new `add` (SEQNUM `seq`, not late) cancels.
    fn coalesce_add(&mut self, add: &Event, seq: u64) -> Option<Event> {
        let r = self.coalesce.remove_for(&self.waiting, add, seq)?;
        let remove = self.waiting.get_mut(&r)?.take()?;
        self.bytes -= remove.heap_bytes();
        self.pending -= 1;
        Some(remove)
    }

    fn take_skipped(&mut self, seq: u64) -> bool {
        let Some(i) = self.skipped.iter().position(|r| r.contains(&seq)) else {
            return false;
        };
        let r = self.skipped.remove(i).unwrap_or(seq..=seq);
        let (lo, hi) = (*r.start(), *r.end());
        if lo < seq {
            self.skipped.push_back(lo..=seq - 1);
        }
        if seq < hi {
            self.skipped.push_back(seq + 1..=hi);
        }
        true
    }

    /// When the current gap wait ends, if delivery is stalled on one.
    pub fn deadline(&self) -> Option<Instant> {
        self.stalled_since.map(|t| t + self.gap_timeout)
    }

    /// The SEQNUM delivery is waiting for, if stalled.
    pub fn waiting_for(&self) -> Option<u64> {
        self.stalled_since.and(self.next_expected)
    }

    /// Skip every missing range whose wait has run out by `now`, and release what follows
    /// each. Returns the ranges skipped, each with when its wait began. One call expires
    /// all gaps whose events arrived by `now - gap_timeout`, however many there are.
    pub fn expire_gaps(&mut self, now: Instant) -> Vec<Expired> {
        let mut expired = Vec::new();
        while let Some(since) = self.stalled_since {
            if since + self.gap_timeout > now {
                break;
            }
            let Some(next) = self.next_expected else {
                break;
            };
            let first = match self.waiting.keys().next() {
                Some(&first) => first,
                None => match self.expect_upto {
                    Some(up) => up + 1,
                    None => break,
                },
            };
            let range = next..=first - 1;
            self.skipped.push_back(range.clone());
            if self.skipped.len() > MAX_SKIPPED {
                self.skipped.pop_front();
            }
            self.next_expected = Some(first);
            self.release(now);
            expired.push(Expired { range, since });
        }
        expired
    }

    fn runner_cursor(&self) -> u64 {
        self.cursors[RUNNER.0].unwrap_or(self.base)
    }

    /// Whether the runner has yet to take the event at log position `pos`.
    fn is_untaken(&self, pos: u64) -> bool {
        pos >= self.runner_cursor() && !self.taken_ahead.contains(&pos)
    }

    /// The untaken released events, oldest first, at most `limit` of them (spilled ones
    /// read back first), each with its log position: the lanes' scan for an event that
    /// may start (see [`crate::lanes`]).
    pub fn untaken(&mut self, limit: usize) -> impl Iterator<Item = (u64, &Event)> {
        let from = self.runner_cursor();
        let mut pos = from;
        let mut seen = 0;
        while seen < limit {
            let idx = (pos - self.base) as usize;
            if idx >= self.log.len() {
                break;
            }
            if !self.taken_ahead.contains(&pos) && self.load(idx) {
                seen += 1;
            }
            pos += 1;
        }
        let (base, taken) = (self.base, &self.taken_ahead);
        self.log
            .iter_from((from - base) as usize)
            .take((pos - from) as usize)
            .enumerate()
            .filter_map(move |(i, slot)| {
                let p = from + i as u64;
                match slot {
                    Slot::Mem(ev) if !taken.contains(&p) => Some((p, ev)),
                    _ => None,
                }
            })
    }

    /// Take the untaken event at log position `pos` (found by [`Queue::untaken`])
    /// for the runner. The oldest one advances the cursor, as [`Queue::next`] does; a
    /// later one is taken out of order and the cursor skips it when it gets there.
    pub fn take_at(&mut self, pos: u64) -> Option<&Event> {
        if pos == self.runner_cursor() {
            return self.next(RUNNER);
        }
        if !self.is_untaken(pos) {
            return None;
        }
        let idx = (pos - self.base) as usize;
        if idx >= self.log.len() || !self.load(idx) {
            return None;
        }
        self.taken_ahead.insert(pos);
        self.pending -= 1;
        match &self.log[idx] {
            Slot::Mem(ev) => Some(ev),
            _ => None,
        }
    }

    /// The log position of the oldest event the runner has not taken, or `u64::MAX` when
    /// it has taken every released one: events taken before it are in order to be
    /// finished (see the owner's retire). Moves the cursor past recalled events and
    /// events taken out of order.
    pub fn first_untaken(&mut self) -> u64 {
        // Frees what every reader passed, as each `next` does: the event taken last
        // goes once the owner looks for the next one.
        self.collect();
        let mut pos = self.runner_cursor();
        loop {
            let idx = (pos - self.base) as usize;
            match self.log.get(idx) {
                None => {
                    self.cursors[RUNNER.0] = Some(pos);
                    return u64::MAX;
                }
                Some(Slot::Stub { id: 0, .. }) => pos += 1,
                Some(_) if self.taken_ahead.remove(&pos) => pos += 1,
                Some(_) => {
                    self.cursors[RUNNER.0] = Some(pos);
                    return pos;
                }
            }
        }
    }

    /// The next event for `reader`, advancing its cursor past it. The event returned stays
    /// in memory until the next call, so the caller may keep the reference meanwhile.
    pub fn next(&mut self, reader: ReaderId) -> Option<&Event> {
        self.collect();
        let mut pos = self.cursors.get(reader.0).copied().flatten()?;
        loop {
            let idx = (pos - self.base) as usize;
            if idx >= self.log.len() {
                if reader == RUNNER {
                    self.cursors[RUNNER.0] = Some(pos);
                }
                return None;
            }
            pos += 1;
            if reader == RUNNER
                && !self.taken_ahead.is_empty()
                && self.taken_ahead.remove(&(pos - 1))
            {
                continue;
            }
            if self.load(idx) {
                break;
            }
        }
        self.cursors[reader.0] = Some(pos);
        if reader == RUNNER {
            self.pending -= 1;
        }
        match self.log.get((pos - 1 - self.base) as usize)? {
            Slot::Mem(ev) => Some(ev),
            _ => None,
        }
    }

    /// Drop events every reader has passed.
    fn collect(&mut self) {
        let min = self
            .cursors
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.base);
        while self.base < min {
            match self.log.pop_front() {
                // Their entries in `adds` go in the next sweep.
                Some(Slot::Mem(ev)) => self.bytes -= ev.heap_bytes(),
                Some(Slot::Stub { id: 0, .. }) | None => {}
                Some(Slot::Stub { .. }) => self.spilled -= 1,
            }
            self.base += 1;
        }
    }

    /// A new reader, starting at the oldest event the runner has not taken.
    pub fn add_reader(&mut self) -> ReaderId {
        let start = Some(self.runner_cursor());
        if let Some(i) = self.cursors.iter().skip(1).position(Option::is_none) {
            self.cursors[i + 1] = start;
            return ReaderId(i + 1);
        }
        self.cursors.push(start);
        ReaderId(self.cursors.len() - 1)
    }

    /// Detach a reader; what only it held is freed.
    pub fn remove_reader(&mut self, reader: ReaderId) {
        if reader != RUNNER {
            if let Some(c) = self.cursors.get_mut(reader.0) {
                *c = None;
            }
            self.collect();
        }
    }

    /// How many log positions `reader` is behind the newest event.
    pub fn lag(&self, reader: ReaderId) -> u64 {
        let end = self.base + self.log.len() as u64;
        self.cursors
            .get(reader.0)
            .copied()
            .flatten()
            .map_or(0, |c| end - c)
    }

    /// Remove an event the runner has not taken, handing it back.
    pub fn recall(&mut self, seq: u64) -> Result<Event, RecallError> {
        if let Some(slot) = self.waiting.get_mut(&seq) {
            let ev = slot.take().ok_or(RecallError::NotQueued(seq))?;
            self.bytes -= ev.heap_bytes();
            self.pending -= 1;
            return Ok(ev);
        }
        let from = (self.runner_cursor() - self.base) as usize;
        let found = self
            .log
            .iter_from(0)
            .enumerate()
            .find(|(_, s)| s.seqnum() == Some(seq))
            .map(|(i, _)| i);
        match found {
            Some(i) if i >= from && !self.taken_ahead.contains(&(self.base + i as u64)) => {
                if !self.load(i) {
                    return Err(RecallError::NotQueued(seq));
                }
                let Slot::Mem(ev) = std::mem::replace(&mut self.log[i], Slot::GONE) else {
                    return Err(RecallError::NotQueued(seq));
                };
                self.bytes -= ev.heap_bytes();
                self.pending -= 1;
                self.collect();
                Ok(ev)
            }
            Some(_) => Err(RecallError::Taken(seq)),
            None => Err(RecallError::NotQueued(seq)),
        }
    }

    /// Events not yet taken by the runner (waiting ones included).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The events the runner has not taken, one summary line each, in the order it will
    /// take them (released ones, then the waiting ones by SEQNUM).
    pub fn pending_events(&self) -> Vec<crate::status::PendingEvent> {
        use crate::status::{PendingEvent, PendingState};
        let from = (self.runner_cursor() - self.base) as usize;
        let base = self.base + from as u64;
        let released = self
            .log
            .iter_from(from)
            .enumerate()
            .filter(|(i, _)| !self.taken_ahead.contains(&(base + *i as u64)))
            .filter_map(|(_, slot)| match slot {
                Slot::Mem(ev) => Some(PendingEvent::of(PendingState::Queued, ev)),
                Slot::Stub { id: 0, .. } => None,
                Slot::Stub { .. } => Some(PendingEvent {
                    state: PendingState::Spilled,
                    seqnum: slot.seqnum(),
                    action: None,
                    devpath: None,
                    subsystem: None,
                    lane: None,
                    waiting_on: None,
                }),
            });
        released
            .chain(
                self.waiting
                    .values()
                    .flatten()
                    .map(|e| PendingEvent::of(PendingState::Waiting, e)),
            )
            .collect()
    }

    /// Whether an event for `devpath` is still to be taken by the runner (a waiting one
    /// included). A spilled event's DEVPATH is on disk, so any spilled one counts: a
    /// `wait-device` then waits a little longer rather than answer too soon.
    pub fn has_pending_devpath(&self, devpath: &[u8]) -> bool {
        let from = (self.runner_cursor() - self.base) as usize;
        let base = self.base + from as u64;
        self.log.iter_from(from).enumerate().any(|(i, slot)| {
            !self.taken_ahead.contains(&(base + i as u64))
                && match slot {
                    Slot::Mem(ev) => ev.devpath() == devpath,
                    Slot::Stub { id, .. } => *id != 0,
                }
        }) || self
            .waiting
            .values()
            .flatten()
            .any(|e| e.devpath() == devpath)
    }

    /// Heap bytes of the events held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Take every event the runner has not taken, in the order it would have (log first,
    /// then the waiting ones by SEQNUM): the shutdown hand-off to the spool.
    pub fn drain_pending(&mut self) -> Vec<Event> {
        let from = (self.runner_cursor() - self.base) as usize;
        for i in from..self.log.len() {
            self.load(i);
        }
        let base = self.base + from as u64;
        let taken = std::mem::take(&mut self.taken_ahead);
        let mut out: Vec<Event> = self
            .log
            .split_off(from)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !taken.contains(&(base + *i as u64)))
            .filter_map(|(_, slot)| match slot {
                Slot::Mem(ev) => Some(ev),
                _ => None,
            })
            .collect();
        out.extend(std::mem::take(&mut self.waiting).into_values().flatten());
        self.pending = 0;
        self.coalesce.clear(self.base + self.log.len() as u64);
        self.arrivals.clear();
        self.stalled_since = None;
        self.bytes = self
            .log
            .iter_from(0)
            .map(|slot| match slot {
                Slot::Mem(ev) => ev.heap_bytes(),
                _ => 0,
            })
            .sum();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::coalesce::{ADDS_SWEEP_MIN, MAX_ADDS};
    use super::*;
    use std::collections::HashMap;

    fn ev(seq: u64, action: &str, devpath: &str) -> Event {
        let s = seq.to_string();
        Event::from_vars(
            b"test",
            [
                (&b"ACTION"[..], action.as_bytes()),
                (b"DEVPATH", devpath.as_bytes()),
                (b"SEQNUM", s.as_bytes()),
            ],
        )
        .unwrap()
    }

    fn drain(q: &mut Queue, r: ReaderId) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(e) = q.next(r) {
            out.push(e.seqnum().unwrap());
        }
        out
    }

    /// One step of the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        /// The next arrival: its index in the arrival list.
        Arrive,
        /// Recall the `n`th SEQNUM sent so far.
        Recall(usize),
        /// The runner takes up to this many events.
        Take(usize),
        /// A monitor reads all it can.
        Monitor,
        /// Time passes, in milliseconds, and gaps that ran out expire.
        Tick(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => Just(Op::Arrive),
            1 => (0usize..64).prop_map(Op::Recall),
            2 => (1usize..8).prop_map(Op::Take),
            1 => Just(Op::Monitor),
            2 => (1u64..1500).prop_map(Op::Tick),
        ]
    }

    /// SEQNUMs 1..=n in a random arrival order with some never sent (gaps) and some sent
    /// twice (two sources), each with an action and one of a few DEVPATHs.
    fn arrivals() -> impl proptest::strategy::Strategy<Value = Vec<(u64, u8, u8)>> {
        use proptest::prelude::*;
        (4u64..48)
            .prop_flat_map(|n| {
                let per_seq = (0u8..10, 0u8..3, 0u8..4);
                (proptest::collection::vec(per_seq, n as usize), any::<u64>())
            })
            .prop_map(|(per, seed)| {
                let mut out = Vec::new();
                for (i, &(fate, action, dev)) in per.iter().enumerate() {
                    let seq = i as u64 + 1;
                    match fate {
                        0 => {}                                   // never comes: a gap
                        1 => out.extend([(seq, action, dev); 2]), // two copies
                        _ => out.push((seq, action, dev)),
                    }
                }
                // Helpers race: shuffle locally, each event moving a few places at most.
                let mut x = seed | 1;
                for i in 0..out.len() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let j = (i + (x % 4) as usize).min(out.len() - 1);
                    out.swap(i, j);
                }
                out
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever arrives in whatever order, with gaps, recalls, duplicates and drains:
        /// each SEQNUM comes out at most once, in order except the ones pushed as late,
        /// never one that was recalled or coalesced away, every one that was queued comes
        /// out in the end, and the counters return to 0.
        #[test]
        fn the_queue_keeps_its_promises(sends in arrivals(), ops in proptest::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut q = Queue::new(Duration::from_secs(1), true);
            q.start_at(1);
            let monitor = q.add_reader();
            let actions = ["add", "change", "remove"];
            let mut sent = 0usize;
            let mut queued: HashMap<u64, bool> = HashMap::new(); // seq -> pushed as late
            let mut gone: std::collections::HashSet<u64> = Default::default();
            let mut out: Vec<u64> = Vec::new();
            let mut seen_by_monitor: std::collections::HashSet<u64> = Default::default();
            let take = |q: &mut Queue, n: usize, out: &mut Vec<u64>| {
                for _ in 0..n {
                    match q.next(RUNNER) {
                        Some(e) => out.push(e.seqnum().unwrap()),
                        None => break,
                    }
                }
            };
            let sends_all = sends;
            let mut ops = ops;
            // Then everything left arrives, time runs out on every gap, and all is taken.
            ops.extend(std::iter::repeat_n(Op::Arrive, sends_all.len()));
            ops.push(Op::Tick(10_000));
            ops.push(Op::Take(usize::MAX));
            ops.push(Op::Monitor);
            for op in ops {
                match op {
                    Op::Arrive => {
                        let Some(&(seq, a, d)) = sends_all.get(sent) else { continue };
                        sent += 1;
                        let e = ev(seq, actions[a as usize], &format!("/d{d}"));
                        match q.push(e, now) {
                            Push::Queued | Push::Waiting => {
                                proptest::prop_assert!(!queued.contains_key(&seq), "{seq} queued twice");
                                queued.insert(seq, false);
                            }
                            Push::Late => {
                                proptest::prop_assert!(!queued.contains_key(&seq), "{seq} queued twice");
                                queued.insert(seq, true);
                            }
                            Push::Duplicate(_) => {}
                            Push::Coalesced { add, remove, .. } => {
                                gone.insert(add.seqnum().unwrap());
                                gone.insert(remove.seqnum().unwrap());
                                queued.entry(seq).or_insert(false);
                            }
                        }
                    }
                    Op::Recall(i) => {
                        let Some(&(seq, ..)) = sends_all.get(i % sends_all.len().max(1)) else { continue };
                        if q.recall(seq).is_ok() {
                            gone.insert(seq);
                        }
                    }
                    Op::Take(n) => take(&mut q, n, &mut out),
                    Op::Monitor => {
                        while let Some(e) = q.next(monitor) {
                            let s = e.seqnum().unwrap();
                            proptest::prop_assert!(seen_by_monitor.insert(s), "monitor saw {s} twice");
                        }
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        q.expire_gaps(now);
                        // No event ever waits past its gap_timeout.
                        if let Some(deadline) = q.deadline() {
                            proptest::prop_assert!(deadline > now);
                        }
                    }
                }
            }
            let mut once = std::collections::HashSet::new();
            let mut last_in_order = 0;
            for &s in &out {
                proptest::prop_assert!(once.insert(s), "{s} came out twice: {out:?}");
                proptest::prop_assert!(!gone.contains(&s), "{s} was recalled or coalesced yet ran");
                match queued.get(&s) {
                    Some(true) => {}
                    Some(false) => {
                        proptest::prop_assert!(s > last_in_order, "{s} after {last_in_order}: {out:?}");
                        last_in_order = s;
                    }
                    None => proptest::prop_assert!(false, "{s} came out but was never queued"),
                }
            }
            for (&s, _) in queued.iter() {
                proptest::prop_assert!(once.contains(&s) || gone.contains(&s), "{s} was queued and never came out: {out:?}");
            }
            proptest::prop_assert_eq!(q.pending(), 0);
            proptest::prop_assert_eq!(q.bytes(), 0);
            proptest::prop_assert_eq!(q.deadline(), None);
        }
    }

    #[test]
    fn a_second_copy_of_a_released_remove_cancels_nothing() {
        // Found by the property test: remove 2 is released after gap 1 expires, add 1
        // arrives late, then the netlink copy of remove 2 arrives. It is a duplicate; it
        // must not coalesce the late add away while the first remove runs.
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(1), true);
        q.start_at(1);
        assert_eq!(q.push(ev(2, "remove", "/d"), t), Push::Waiting);
        q.expire_gaps(t + Duration::from_secs(1));
        assert_eq!(q.push(ev(1, "add", "/d"), t), Push::Late);
        assert!(matches!(
            q.push(ev(2, "remove", "/d"), t),
            Push::Duplicate(_)
        ));
        assert_eq!(drain(&mut q, RUNNER), vec![2, 1]);
    }

    #[test]
    fn slots_stay_small() {
        // One per queued event: the Box's niche keeps the tag out of it.
        assert_eq!(std::mem::size_of::<Slot>(), std::mem::size_of::<Event>());
    }

    #[test]
    fn orders_by_seqnum() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        for s in [3, 1, 2, 5, 4] {
            q.push(ev(s, "change", "/d"), t);
        }
        assert_eq!(q.pending(), 5);
        assert_eq!(drain(&mut q, RUNNER), vec![1, 2, 3, 4, 5]);
        assert_eq!(q.pending(), 0);
        assert_eq!(q.bytes(), 0);
    }

    fn ranges(expired: Vec<Expired>) -> Vec<RangeInclusive<u64>> {
        expired.into_iter().map(|e| e.range).collect()
    }

    #[test]
    fn a_hundred_gaps_that_arrived_together_expire_at_one_deadline() {
        let t = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut q = Queue::new(timeout, true);
        q.start_at(1);
        // Every third SEQNUM never comes: 1, 2, (3), 4, 5, (6), ... written within 0.3 s.
        let mut sent = Vec::new();
        for seq in (1..=300u64).filter(|s| s % 3 != 0) {
            let at = t + Duration::from_millis(seq);
            q.push(ev(seq, "change", &format!("/d{seq}")), at);
            sent.push(seq);
        }
        assert_eq!(drain(&mut q, RUNNER), vec![1, 2]);
        let last = t + Duration::from_millis(300);
        // Nothing expires before the first gap's wait is over...
        assert!(q.expire_gaps(t + Duration::from_millis(1003)).is_empty());
        // ...and by one gap_timeout after the last arrival, every gap has.
        let expired = q.expire_gaps(last + timeout);
        assert_eq!(expired.len(), 99);
        assert!(expired.iter().all(|e| e.range.start() == e.range.end()));
        assert_eq!(
            ranges(expired.clone()),
            (1..=99u64).map(|k| 3 * k..=3 * k).collect::<Vec<_>>()
        );
        // Each gap's wait began when the event behind it arrived, never at the previous
        // expiry.
        for e in &expired {
            assert_eq!(e.since, t + Duration::from_millis(e.range.end() + 1));
        }
        assert_eq!(drain(&mut q, RUNNER), sent[2..].to_vec());
        assert_eq!(q.deadline(), None);
        assert_eq!(q.pending(), 0);
        // Skipped once: a late copy runs once, a second copy is a duplicate.
        assert_eq!(q.push(ev(150, "change", "/late"), last), Push::Late);
        assert!(matches!(
            q.push(ev(150, "change", "/late"), last),
            Push::Duplicate(_)
        ));
    }

    #[test]
    fn a_gap_seen_behind_an_expired_one_waits_from_its_own_arrival() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut q = Queue::new(s(2), true);
        q.start_at(1);
        q.push(ev(1, "change", "/a"), t);
        q.push(ev(3, "change", "/a"), t); // 2 missing, seen at t
        q.push(ev(5, "change", "/a"), t + s(1)); // 4 missing, seen at t+1
        assert_eq!(q.deadline(), Some(t + s(2)));
        assert_eq!(ranges(q.expire_gaps(t + s(2))), vec![2..=2]);
        // Not t+2+2: event 5 has waited since t+1.
        assert_eq!(q.deadline(), Some(t + s(3)));
        assert!(q
            .expire_gaps(t + s(2) + Duration::from_millis(999))
            .is_empty());
        assert_eq!(ranges(q.expire_gaps(t + s(3))), vec![4..=4]);
        assert_eq!(drain(&mut q, RUNNER), vec![1, 3, 5]);
        // A gap filled in part keeps the clock of what still waits, not the first stall's.
        q.push(ev(7, "change", "/a"), t + s(10)); // 6 missing
        q.push(ev(9, "change", "/a"), t + s(11)); // 8 missing
        q.push(ev(6, "change", "/a"), t + s(11));
        assert_eq!(q.deadline(), Some(t + s(13)));
    }

    #[test]
    fn gap_waits_then_skips_and_late_runs() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        assert_eq!(q.push(ev(1, "change", "/a"), t), Push::Queued);
        assert_eq!(q.push(ev(3, "change", "/a"), t), Push::Waiting);
        assert_eq!(drain(&mut q, RUNNER), vec![1]);
        assert_eq!(q.waiting_for(), Some(2));
        assert_eq!(ranges(q.expire_gaps(t + Duration::from_secs(1))), vec![]);
        assert_eq!(q.deadline(), Some(t + Duration::from_secs(2)));
        assert_eq!(
            ranges(q.expire_gaps(t + Duration::from_secs(2))),
            vec![2..=2]
        );
        assert_eq!(drain(&mut q, RUNNER), vec![3]);
        assert_eq!(q.push(ev(2, "change", "/a"), t), Push::Late);
        assert_eq!(drain(&mut q, RUNNER), vec![2]);
        assert!(matches!(
            q.push(ev(2, "change", "/a"), t),
            Push::Duplicate(_)
        ));
        assert!(matches!(
            q.push(ev(3, "change", "/a"), t),
            Push::Duplicate(_)
        ));
    }

    #[test]
    fn coalesces_add_remove() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        q.push(ev(1, "add", "/x"), t);
        q.push(ev(2, "add", "/y"), t);
        match q.push(ev(3, "remove", "/x"), t) {
            Push::Coalesced { add, remove, .. } => {
                assert_eq!(add.seqnum(), Some(1));
                assert_eq!(remove.seqnum(), Some(3));
            }
            other => panic!("{other:?}"),
        }
        q.push(ev(4, "change", "/y"), t);
        assert_eq!(drain(&mut q, RUNNER), vec![2, 4]);
        // After the add was taken, a remove runs.
        assert_eq!(q.push(ev(5, "remove", "/y"), t), Push::Queued);
        assert_eq!(drain(&mut q, RUNNER), vec![5]);
    }

    #[test]
    fn the_add_index_is_built_when_a_remove_needs_it_and_swept() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        let mut seq = 1;
        // Adds the runner takes as they come, a remove now and then: nothing coalesces
        // and the index stays small.
        for i in 0..8 * ADDS_SWEEP_MIN {
            q.push(ev(seq, "add", &format!("/d/{seq}")), t);
            assert_eq!(q.next(RUNNER).and_then(Event::seqnum), Some(seq));
            seq += 1;
            if i % 64 == 0 {
                let taken = format!("/d/{}", seq - 1);
                assert_eq!(q.push(ev(seq, "remove", &taken), t), Push::Queued);
                q.next(RUNNER);
                seq += 1;
            }
            assert!(
                q.coalesce.indexed() <= 2 * ADDS_SWEEP_MIN,
                "{}",
                q.coalesce.indexed()
            );
        }
        // Queued adds are indexed only once a remove comes.
        let first = seq;
        for _ in 0..100 {
            q.push(ev(seq, "add", &format!("/q/{seq}")), t);
            seq += 1;
        }
        assert_eq!(q.coalesce.indexed(), 0);
        match q.push(ev(seq, "remove", &format!("/q/{}", first + 50)), t) {
            Push::Coalesced { add, .. } => assert_eq!(add.seqnum(), Some(first + 50)),
            other => panic!("{other:?}"),
        }
        seq += 1;
        assert!(q.coalesce.indexed() >= 99);
        drain(&mut q, RUNNER);
        // A backlog fills the index with live entries; past MAX_ADDS, adds go unindexed.
        let first = seq;
        for _ in 0..MAX_ADDS + 10 {
            q.push(ev(seq, "add", &format!("/b/{seq}")), t);
            seq += 1;
        }
        let last = format!("/b/{}", seq - 1);
        assert_eq!(q.push(ev(seq, "remove", &last), t), Push::Queued);
        seq += 1;
        assert_eq!(q.coalesce.indexed(), MAX_ADDS);
        // Once the runner has moved on, a sweep drops the taken ones and new adds are
        // indexed again; an add still queued keeps coalescing all along.
        for _ in 0..MAX_ADDS / 4 {
            q.next(RUNNER);
        }
        q.push(ev(seq, "add", "/late"), t);
        match q.push(ev(seq + 1, "remove", "/late"), t) {
            Push::Coalesced { add, .. } => assert_eq!(add.seqnum(), Some(seq)),
            other => panic!("{other:?}"),
        }
        assert!(q.coalesce.indexed() < MAX_ADDS);
        let queued = first + MAX_ADDS as u64 / 2;
        match q.push(ev(seq + 2, "remove", &format!("/b/{queued}")), t) {
            Push::Coalesced { add, .. } => assert_eq!(add.seqnum(), Some(queued)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_add_arriving_after_its_waiting_remove_coalesces_too() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        // The helpers raced: the remove (3) and another device's event came first.
        assert_eq!(q.push(ev(3, "remove", "/x"), t), Push::Waiting);
        assert_eq!(q.push(ev(2, "change", "/y"), t), Push::Waiting);
        match q.push(ev(1, "add", "/x"), t) {
            Push::Coalesced {
                add,
                remove,
                add_was_queued,
            } => {
                assert_eq!(add.seqnum(), Some(1));
                assert_eq!(remove.seqnum(), Some(3));
                assert!(!add_was_queued);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.pending(), 1);
        assert_eq!(drain(&mut q, RUNNER), vec![2]);
        assert_eq!(q.push(ev(4, "change", "/z"), t), Push::Queued);
        assert_eq!(drain(&mut q, RUNNER), vec![4]);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn an_add_never_coalesces_with_the_wrong_remove() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        // Another DEVPATH's remove waits: the add is just queued.
        assert_eq!(q.push(ev(2, "remove", "/y"), t), Push::Waiting);
        assert_eq!(q.push(ev(1, "add", "/x"), t), Push::Queued);
        assert_eq!(drain(&mut q, RUNNER), vec![1, 2]);
        // A remove that ran already is not taken back by a duplicate of its add.
        assert_eq!(q.push(ev(4, "remove", "/x"), t), Push::Waiting);
        assert!(matches!(q.push(ev(1, "add", "/x"), t), Push::Duplicate(_)));
        // A remove recalled while waiting leaves nothing for the add to take.
        q.recall(4).unwrap();
        assert_eq!(q.push(ev(3, "add", "/x"), t), Push::Queued);
        assert_eq!(drain(&mut q, RUNNER), vec![3]);
        // An add arriving after the gap timed out over it is late, and its remove ran.
        assert_eq!(q.push(ev(6, "remove", "/w"), t), Push::Waiting);
        q.expire_gaps(t + Duration::from_secs(3));
        assert_eq!(drain(&mut q, RUNNER), vec![6]);
        assert_eq!(q.push(ev(5, "add", "/w"), t), Push::Late);
        assert_eq!(drain(&mut q, RUNNER), vec![5]);
    }

    #[test]
    fn coalesced_seqnums_do_not_stall_the_gap() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        q.push(ev(2, "add", "/x"), t);
        q.push(ev(3, "remove", "/x"), t);
        q.push(ev(4, "change", "/z"), t);
        q.push(ev(1, "change", "/z"), t);
        assert_eq!(drain(&mut q, RUNNER), vec![1, 4]);
        assert_eq!(q.waiting_for(), None);
    }

    #[test]
    fn readers_have_own_cursors_and_free_when_all_passed() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        let m = q.add_reader();
        q.push(ev(1, "change", "/a"), t);
        q.push(ev(2, "change", "/a"), t);
        assert_eq!(drain(&mut q, RUNNER), vec![1, 2]);
        assert!(q.bytes() > 0, "the monitor still holds them");
        assert_eq!(q.lag(m), 2);
        assert_eq!(drain(&mut q, m), vec![1, 2]);
        assert_eq!(q.bytes(), 0);
        q.push(ev(3, "change", "/a"), t);
        q.remove_reader(m);
        assert_eq!(drain(&mut q, RUNNER), vec![3]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn recall_waiting_and_taken() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), false);
        q.start_at(1);
        q.push(ev(1, "change", "/a"), t);
        q.push(ev(2, "change", "/a"), t);
        q.push(ev(4, "change", "/a"), t);
        assert_eq!(q.next(RUNNER).unwrap().seqnum(), Some(1));
        assert_eq!(q.recall(1), Err(RecallError::Taken(1)));
        assert_eq!(q.recall(2).unwrap().seqnum(), Some(2));
        assert_eq!(q.recall(4).unwrap().seqnum(), Some(4));
        assert_eq!(q.recall(4), Err(RecallError::NotQueued(4)));
        assert_eq!(q.recall(9), Err(RecallError::NotQueued(9)));
        assert_eq!(q.pending(), 0);
        q.push(ev(3, "change", "/a"), t);
        assert_eq!(drain(&mut q, RUNNER), vec![3]);
    }

    /// Lanes take events out of order: the one taken ahead is neither recalled, nor
    /// coalesced, nor pending, nor handed to the spool, nor taken again; the cursor
    /// skips it, and `first_untaken` names the oldest event still to take.
    #[test]
    fn an_event_taken_ahead_of_the_cursor_is_taken_once() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        for (seq, dev) in [(1, "/a"), (2, "/b"), (3, "/c"), (4, "/d")] {
            q.push(ev(seq, "add", dev), t);
        }
        let seen: Vec<_> = q
            .untaken(8)
            .map(|(p, e)| (p, e.seqnum().unwrap()))
            .collect();
        assert_eq!(seen, [(0, 1), (1, 2), (2, 3), (3, 4)]);
        // 1 is blocked (say); 3 passes it.
        assert_eq!(q.take_at(2).unwrap().seqnum(), Some(3));
        assert_eq!(q.take_at(2).map(|e| e.seqnum()), None, "taken once");
        assert_eq!(q.pending(), 3);
        assert_eq!(q.recall(3), Err(RecallError::Taken(3)));
        assert!(!q.has_pending_devpath(b"/c"));
        assert!(q.has_pending_devpath(b"/a"));
        // A remove for /c cancels nothing: its add runs.
        assert!(matches!(q.push(ev(5, "remove", "/c"), t), Push::Queued));
        let pending: Vec<_> = q.pending_events().iter().map(|p| p.seqnum).collect();
        assert_eq!(pending, [Some(1), Some(2), Some(4), Some(5)]);
        assert_eq!(q.first_untaken(), 0);
        let seen: Vec<_> = q.untaken(8).map(|(_, e)| e.seqnum().unwrap()).collect();
        assert_eq!(seen, [1, 2, 4, 5]);
        assert_eq!(q.untaken(2).count(), 2);
        assert_eq!(q.recall(2).unwrap().seqnum(), Some(2));
        assert_eq!(q.next(RUNNER).unwrap().seqnum(), Some(1));
        // 2 recalled, 3 taken ahead: the cursor moves to 4.
        assert_eq!(q.first_untaken(), 3);
        assert_eq!(q.next(RUNNER).unwrap().seqnum(), Some(4));
        let spool: Vec<_> = q.drain_pending().iter().map(|e| e.seqnum()).collect();
        assert_eq!(spool, [Some(5)]);
        assert_eq!(q.first_untaken(), u64::MAX);

        // Taken ahead, then handed over at a stop with older events untaken.
        let mut q = Queue::new(Duration::from_secs(2), false);
        q.start_at(1);
        for seq in 1..=3 {
            q.push(ev(seq, "change", "/x"), t);
        }
        q.take_at(1);
        let spool: Vec<_> = q.drain_pending().iter().map(|e| e.seqnum()).collect();
        assert_eq!(spool, [Some(1), Some(3)]);
        assert_eq!(q.pending(), 0);
        assert_eq!(q.first_untaken(), u64::MAX);
    }

    #[test]
    fn start_from_kernel_takes_older_events_once_as_late() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at_kernel(10);
        assert_eq!(q.push(ev(11, "change", "/a"), t), Push::Queued);
        assert_eq!(q.push(ev(4, "change", "/a"), t), Push::Late);
        assert!(matches!(
            q.push(ev(4, "change", "/a"), t),
            Push::Duplicate(_)
        ));
        assert_eq!(q.push(ev(3, "change", "/a"), t), Push::Late);
        assert_eq!(drain(&mut q, RUNNER), vec![11, 4, 3]);
        let mut q = Queue::new(Duration::from_secs(2), true);
        assert_eq!(q.push(ev(7, "change", "/a"), t), Push::Queued);
        assert_eq!(q.push(ev(8, "change", "/a"), t), Push::Queued);
        assert_eq!(q.push(ev(6, "change", "/a"), t), Push::Late);
    }

    #[test]
    fn expected_seqnums_that_never_come_are_skipped_after_the_gap() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(5);
        q.expect(7, t);
        assert!(!q.released_through(7));
        assert_eq!(q.deadline(), Some(t + Duration::from_secs(2)));
        q.push(ev(5, "change", "/a"), t);
        assert_eq!(
            ranges(q.expire_gaps(t + Duration::from_secs(2))),
            vec![6..=7]
        );
        assert!(q.released_through(7));
        assert_eq!(q.deadline(), None);
        assert_eq!(drain(&mut q, RUNNER), vec![5]);
    }

    #[test]
    fn an_expected_seqnum_before_the_start_is_known_waits_for_the_first_event() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.expect(3, t);
        assert!(!q.released_through(3));
        assert_eq!(q.deadline(), None);
        // The first event sets the start, and the wait for 2 and 3 begins.
        q.push(ev(1, "change", "/a"), t);
        assert!(!q.released_through(3));
        assert_eq!(q.deadline(), Some(t + Duration::from_secs(2)));
        q.push(ev(3, "change", "/a"), t);
        q.push(ev(2, "change", "/a"), t);
        assert!(q.released_through(3));
        assert_eq!(q.deadline(), None);
        assert_eq!(drain(&mut q, RUNNER), vec![1, 2, 3]);
    }

    #[test]
    fn past_the_limit_events_spill_and_come_back_in_order() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        let store: std::sync::Arc<std::sync::Mutex<HashMap<u64, Event>>> = Default::default();
        let s2 = store.clone();
        q.set_spill(
            4096,
            Box::new(move |id| s2.lock().unwrap().get(&id).cloned()),
        );
        q.start_at(1);
        for s in 1..=200 {
            let mut e = ev(s, "change", "/a");
            e.set_id(1000 + s);
            store.lock().unwrap().insert(e.id(), e.clone());
            q.push(e, t);
        }
        assert!(q.spilled() > 100, "{}", q.spilled());
        assert!(q.bytes() <= 4096, "{}", q.bytes());
        assert!(q
            .pending_events()
            .iter()
            .any(|e| e.state == crate::status::PendingState::Spilled));
        assert_eq!(q.recall(150).unwrap().seqnum(), Some(150));
        let mut want: Vec<u64> = (1..=200).filter(|s| *s != 150).collect();
        let got = drain(&mut q, RUNNER);
        assert_eq!(got, want);
        assert_eq!(q.spilled(), 0);
        assert_eq!(q.bytes(), 0);
        // Shutdown hands spilled events back too.
        for s in 201..=300 {
            let mut e = ev(s, "change", "/a");
            e.set_id(1000 + s);
            store.lock().unwrap().insert(e.id(), e.clone());
            q.push(e, t);
        }
        want = (201..=300).collect();
        let rest: Vec<_> = q.drain_pending().iter().filter_map(Event::seqnum).collect();
        assert_eq!(rest, want);
        assert!(
            std::mem::size_of::<Slot>() <= 56,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn drain_pending_returns_untaken_in_order() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at(1);
        for s in [1, 2, 5, 3] {
            q.push(ev(s, "change", "/a"), t);
        }
        assert_eq!(q.next(RUNNER).unwrap().seqnum(), Some(1));
        let rest: Vec<_> = q.drain_pending().iter().filter_map(Event::seqnum).collect();
        assert_eq!(rest, vec![2, 3, 5]);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn a_seqnum_an_earlier_run_was_done_with_is_a_duplicate_and_fills_its_slot() {
        let t = Instant::now();
        let mut q = Queue::new(Duration::from_secs(2), true);
        q.start_at_kernel(4);
        q.set_done_before(vec![1..=2, 6..=6]);
        // 3 was not done (say, spooled at the stop): late, as before.
        assert_eq!(q.push(ev(3, "add", "/c"), t), Push::Late);
        assert!(matches!(q.push(ev(2, "add", "/b"), t), Push::Duplicate(_)));
        assert_eq!(q.push(ev(5, "add", "/e"), t), Push::Queued);
        // 6 is ahead and will not run: 7 does not wait for it.
        assert!(matches!(q.push(ev(6, "add", "/f"), t), Push::Duplicate(_)));
        assert_eq!(q.push(ev(7, "add", "/g"), t), Push::Queued);
        assert_eq!(q.deadline(), None);
        assert_eq!(drain(&mut q, RUNNER), vec![3, 5, 7]);
    }
}
