//! What the owner keeps on record about each event: the crash journal, and the counters
//! `hotplugctl status` reports. Both change at the same steps (an event queued, dropped as a
//! duplicate, coalesced, recalled, handled), so one part holds both and each step is one
//! call.

use std::time::Duration;

use crate::event::Event;
use crate::journal::Journal;
use crate::sources::RateLimit;

/// Counters, as `hotplugctl status` reports them (the monitors' own are with the
/// clients).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub received: u64,
    pub spooled_in: u64,
    pub netlink_in: u64,
    pub handled: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub recalled: u64,
    pub coalesced: u64,
    pub bad_messages: u64,
    pub duplicates: u64,
    pub late: u64,
    pub gaps_skipped: u64,
    pub recovered: u64,
    pub last_handled: Option<u64>,
    /// Background handlers reaped (their failures count in `failed` and `timed_out`).
    pub background_ended: u64,
    // Rebroadcast (issue 17).
    /// Events sent again on netlink, and sends that failed.
    pub rebroadcast_sent: u64,
    pub rebroadcast_lost: u64,
}

/// The journal with the limiter on its error lines, and the counters.
///
/// Apart from the queue, so an event still borrowed from the queue can be put on record
/// without a copy.
pub(super) struct Book {
    pub journal: Journal,
    /// A journal that fails once fails for every event: a few lines a minute say so.
    warn: RateLimit,
    pub stats: Stats,
}

impl Book {
    pub fn new(journal: Journal) -> Book {
        Book {
            journal,
            warn: RateLimit::new(3, Duration::from_secs(60)),
            stats: Stats::default(),
        }
    }

    /// Write the buffered `done` records; failures are logged, rate-limited.
    pub fn flush(&mut self) {
        if let Err(e) = self.journal.flush() {
            if self.warn.allow("journal errors") {
                log::error!("journal {}: {e}", self.journal.dir().display());
            }
        }
    }

    /// Whether `ev` is in the journal now.
    pub fn append(&mut self, ev: &mut Event) -> bool {
        match self.journal.append(ev) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "journal {}: {e}; {} is not crash-safe",
                    self.journal.dir().display(),
                    ev.summary()
                );
                false
            }
        }
    }

    /// The queue took it.
    pub fn queued(&mut self, id: u64) {
        self.journal.queued(id);
    }

    /// The queue took it, though its SEQNUM had been skipped or predates this start.
    pub fn late(&mut self, id: u64) {
        self.journal.queued(id);
        self.stats.late += 1;
    }

    /// Already queued or handled: dropped.
    pub fn duplicate(&mut self, ev: &Event) {
        self.journal.duplicate(ev);
        self.stats.duplicates += 1;
    }

    /// A remove met its add: neither runs. `add_was_queued`: the add was in the queue
    /// (else the remove was, and the add arrived after it).
    pub fn coalesced(&mut self, add: &Event, remove: &Event, add_was_queued: bool) {
        self.journal.done(add, add_was_queued);
        self.journal.done(remove, !add_was_queued);
        self.stats.coalesced += 2;
        self.stats.recalled += 2;
    }

    /// Taken out of the queue by `hotplugctl recall`.
    pub fn recalled(&mut self, ev: &Event) {
        self.journal.done(ev, true);
        self.stats.recalled += 1;
    }

    /// An event left the queue for good: handled, or nothing to run for it.
    pub fn finished(&mut self, ev: &Event) {
        self.journal.done(ev, true);
        self.stats.handled += 1;
        self.stats.last_handled = ev.seqnum().or(self.stats.last_handled);
    }
}
