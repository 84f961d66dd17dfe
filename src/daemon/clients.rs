//! The control socket's clients that outlive their request, and the replies made from
//! what they watch: monitors (queue events through their own cursors, or handler
//! outcomes), settles (until the queue has drained through a SEQNUM), tag waits (until so
//! many events of one `trigger` are done), the timeline of handler runs and gap waits, and
//! the `status` lines.
//!
//! The owner pushes, clients read: the owner tells [`Clients`] what happened (a handler
//! ran, a gap was skipped, an event is done) and lends it the queue to read through the
//! monitors' cursors. Nothing here decides anything about the queue or reaches back into
//! the owner.

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::book::Stats;
use crate::config::Sources;
use crate::control::{self, End, MonitorOpts, Reply};
use crate::event::Event;
use crate::helper::Helper;
use crate::holder::Keeper;
use crate::queue::{Queue, ReaderId};
use crate::runner::{Outcome, Report};

/// A monitor falls this many events behind the newest, and it is dropped.
pub const MONITOR_MAX_LAG: u64 = 10_000;
/// Events handed to a monitor's connection per batch.
const MONITOR_BATCH: usize = 512;
/// Tags (`SYNTH_UUID`) whose handled counts are remembered for `wait-tag`.
const MAX_TAGS: usize = 64;
/// Handler runs and gap waits remembered for `hotplugctl timeline`.
const TIMELINE_LEN: usize = 10_000;

/// A `hotplugctl monitor` connection for queue events, read through its own cursor.
struct Monitor {
    reader: ReaderId,
    tx: Sender<Reply>,
    /// Its connection has written the last batch and can take the next.
    ready: bool,
    opts: MonitorOpts,
}

/// A `settle` waiting for the queue to drain through `upto`.
struct Settle {
    upto: Option<u64>,
    tx: Sender<Reply>,
    /// The pending count last reported, and when.
    last: Option<(usize, Instant)>,
}

/// A `wait-tag`: until `count` events tagged `tag` are done.
struct TagWait {
    tag: String,
    count: u64,
    tx: Sender<Reply>,
}

/// One entry of the timeline.
enum Mark {
    Run {
        started: Instant,
        duration: Duration,
        seqnum: Option<u64>,
        rule: String,
        outcome: Outcome,
    },
    Wait {
        began: Instant,
        ended: Instant,
        gap: RangeInclusive<u64>,
    },
}

/// The owner's side of a `status` reply, lent for that one reply.
pub(super) struct OwnerStatus<'a> {
    pub queue: &'a Queue,
    pub stats: &'a Stats,
    pub paused: bool,
    /// The handler running now: its rule, its event's SEQNUM, and since when.
    pub running: Option<(&'a str, Option<u64>, Instant)>,
    pub keeper: &'a Keeper,
    /// The sources opened at start-up.
    pub sources: Sources,
}

/// Every client connection that waits on the queue, and the timeline.
pub(super) struct Clients {
    /// The daemon's start: the timeline's zero and the origin of `uptime_s`.
    started: Instant,
    /// Monitors of queue events, by id.
    monitors: HashMap<u64, Monitor>,
    /// `monitor --handled` connections, by id (the same numbering as `monitors`).
    handled: HashMap<u64, Sender<Reply>>,
    next_monitor: u64,
    /// Monitors dropped for lagging, for `status`.
    overruns: u64,
    settles: Vec<Settle>,
    tag_waits: Vec<TagWait>,
    /// Done counts of the latest tags, oldest first.
    tags_done: VecDeque<(String, u64)>,
    /// Handler runs and gap waits, formatted only when `hotplugctl timeline` asks.
    timeline: VecDeque<Mark>,
}

impl Clients {
    pub fn new(started: Instant) -> Clients {
        Clients {
            started,
            monitors: HashMap::new(),
            handled: HashMap::new(),
            next_monitor: 0,
            overruns: 0,
            settles: Vec::new(),
            tag_waits: Vec::new(),
            tags_done: VecDeque::new(),
            timeline: VecDeque::new(),
        }
    }

    /// A new monitor: told its id, then fed from the oldest event the runner has not
    /// taken (or each handler outcome from now on, with `opts.handled`).
    pub fn attach_monitor(&mut self, opts: MonitorOpts, tx: Sender<Reply>, queue: &mut Queue) {
        let id = self.next_monitor;
        self.next_monitor += 1;
        let _ = tx.send(Reply::Monitor(id));
        log::debug!("monitor {id} attached");
        if opts.handled {
            self.handled.insert(id, tx);
        } else {
            let reader = queue.add_reader();
            self.monitors.insert(
                id,
                Monitor {
                    reader,
                    tx,
                    ready: true,
                    opts,
                },
            );
        }
    }

    /// Its connection wrote the last batch.
    pub fn monitor_ready(&mut self, id: u64) {
        if let Some(m) = self.monitors.get_mut(&id) {
            m.ready = true;
        }
    }

    /// Its connection is gone (or it overran): what only its cursor held is freed.
    pub fn drop_monitor(&mut self, id: u64, queue: &mut Queue) {
        if let Some(m) = self.monitors.remove(&id) {
            queue.remove_reader(m.reader);
        } else if self.handled.remove(&id).is_none() {
            return;
        }
        log::debug!("monitor {id} detached");
    }

    /// Hand each ready monitor its next batch; drop the ones too far behind.
    pub fn feed_monitors(&mut self, queue: &mut Queue) {
        let mut overrun = Vec::new();
        for (&id, m) in &mut self.monitors {
            if queue.lag(m.reader) > MONITOR_MAX_LAG {
                overrun.push(id);
                continue;
            }
            if !m.ready {
                continue;
            }
            let mut lines = Vec::new();
            for _ in 0..MONITOR_BATCH {
                let Some(ev) = queue.next(m.reader) else {
                    break;
                };
                if !m.opts.wants(ev.subsystem()) {
                    continue;
                }
                lines.push(ev.summary().to_string());
                if m.opts.env {
                    lines
                        .extend(ev.vars().map(|(k, v)| {
                            format!("{}={}", control::escape(k), control::escape(v))
                        }));
                    lines.push(String::new());
                }
            }
            if !lines.is_empty() {
                m.ready = false;
                let _ = m.tx.send(Reply::Lines(lines));
            }
        }
        for id in overrun {
            if let Some(m) = self.monitors.get(&id) {
                self.overruns += 1;
                tell_overrun(id, &m.tx);
            }
            self.drop_monitor(id, queue);
        }
    }

    /// A handler run ended: on the timeline, and a line to each `monitor --handled`.
    pub fn ran(&mut self, seqnum: Option<u64>, rule: &str, report: &Report) {
        self.record(Mark::Run {
            started: report.started,
            duration: report.duration,
            seqnum,
            rule: rule.to_owned(),
            outcome: report.outcome.clone(),
        });
        if self.handled.is_empty() {
            return;
        }
        let seq = seqnum.map_or("-".into(), |s| s.to_string());
        let line = format!(
            "{seq} {} {} {:.1}ms",
            control::escape_word(rule.as_bytes()),
            report.outcome.to_string().replace(' ', "_"),
            report.duration.as_secs_f64() * 1e3
        );
        let mut overrun = Vec::new();
        for (id, tx) in &self.handled {
            if tx.len() > MONITOR_MAX_LAG as usize {
                overrun.push(*id);
            } else {
                let _ = tx.send(Reply::Lines(vec![line.clone()]));
            }
        }
        for id in overrun {
            if let Some(tx) = self.handled.remove(&id) {
                self.overruns += 1;
                tell_overrun(id, &tx);
                log::debug!("monitor {id} detached");
            }
        }
    }

    /// The queue went on without the SEQNUMs `gap`, waited for from `began` to `ended`.
    pub fn gap_skipped(&mut self, gap: RangeInclusive<u64>, began: Instant, ended: Instant) {
        self.record(Mark::Wait { began, ended, gap });
    }

    fn record(&mut self, mark: Mark) {
        if self.timeline.len() == TIMELINE_LEN {
            self.timeline.pop_front();
        }
        self.timeline.push_back(mark);
    }

    /// A `settle`: answered once the queue has drained (through `upto`, if given), with
    /// `pending N` lines meanwhile.
    pub fn settle(&mut self, upto: Option<u64>, tx: Sender<Reply>) {
        self.settles.push(Settle {
            upto,
            tx,
            last: None,
        });
    }

    /// A `wait-tag`: answered once `count` events tagged `tag` are done.
    pub fn wait_tag(&mut self, tag: String, count: u64, tx: Sender<Reply>) {
        self.tag_waits.push(TagWait { tag, count, tx });
    }

    /// `ev` is done with, handled or not (recalled, coalesced, no rule matched): it counts
    /// towards the waits for its tag, if it has one.
    pub fn count_tag(&mut self, ev: &Event) {
        let Some(tag) = ev.tag() else { return };
        let tag = String::from_utf8_lossy(tag);
        match self.tags_done.iter_mut().find(|(t, _)| *t == *tag) {
            Some((_, n)) => *n += 1,
            None => {
                self.tags_done.push_back((tag.into_owned(), 1));
                if self.tags_done.len() > MAX_TAGS {
                    self.tags_done.pop_front();
                }
            }
        }
    }

    /// Answer the settles and tag waits whose condition now holds; report progress.
    /// `running`: the runner has an event, which counts as pending.
    pub fn check_waiters(&mut self, queue: &Queue, running: bool) {
        let pending = queue.pending() + usize::from(running);
        let now = Instant::now();
        self.settles.retain_mut(|w| {
            let done = pending == 0 && w.upto.is_none_or(|s| queue.released_through(s));
            if done {
                let _ = w.tx.send(Reply::End(End::Ok(String::new())));
                return false;
            }
            let report = match w.last {
                None => true,
                Some((n, t)) => n != pending && now.duration_since(t) >= Duration::from_millis(100),
            };
            if report {
                w.last = Some((pending, now));
                if w.tx
                    .send(Reply::Lines(vec![format!("pending {pending}")]))
                    .is_err()
                {
                    return false;
                }
            }
            true
        });
        let tags = &self.tags_done;
        self.tag_waits.retain(|w| {
            let done = tags
                .iter()
                .find(|(t, _)| *t == w.tag)
                .map_or(0, |(_, n)| *n);
            if done >= w.count {
                let _ = w.tx.send(Reply::End(End::Ok(format!("{done} handled"))));
                false
            } else {
                true
            }
        });
    }

    /// The timeline as the protocol's `run START END SEQNUM RULE OUTCOME` and
    /// `wait START END FIRST LAST` lines, in seconds since the daemon started.
    pub fn timeline_lines(&self) -> Vec<String> {
        let secs = |t: Instant| t.saturating_duration_since(self.started).as_secs_f64();
        self.timeline
            .iter()
            .map(|m| match m {
                Mark::Run {
                    started,
                    duration,
                    seqnum,
                    rule,
                    outcome,
                } => format!(
                    "run {:.6} {:.6} {} {} {}",
                    secs(*started),
                    secs(*started) + duration.as_secs_f64(),
                    seqnum.map_or("-".into(), |s| s.to_string()),
                    control::escape_word(rule.as_bytes()),
                    outcome.to_string().replace(' ', "_")
                ),
                Mark::Wait { began, ended, gap } => format!(
                    "wait {:.6} {:.6} {} {}",
                    secs(*began),
                    secs(*ended),
                    gap.start(),
                    gap.end()
                ),
            })
            .collect()
    }

    /// The `status` reply: the owner's side and the clients' own counts.
    pub fn status_lines(&self, o: &OwnerStatus) -> Vec<String> {
        let s = o.stats;
        let helper = Helper::inspect();
        crate::status::Status {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            holder: Some(o.keeper.status()).filter(|k| k != "-"),
            queued: o.queue.pending() as u64,
            queue_bytes: o.queue.bytes() as u64,
            queue_memory: o.queue.memory() as u64,
            spilled: o.queue.spilled() as u64,
            waiting_for: o.queue.waiting_for(),
            next_expected: o.queue.next_expected(),
            paused: o.paused,
            running_rule: o
                .running
                .map(|(rule, _, _)| rule)
                .filter(|r| *r != "-")
                .map(str::to_owned),
            running_seqnum: o.running.and_then(|(_, seq, _)| seq),
            running_for_ms: o
                .running
                .map(|(_, _, since)| since.elapsed().as_secs_f64() * 1e3),
            last_handled: s.last_handled,
            received: s.received,
            spooled_in: s.spooled_in,
            netlink_in: s.netlink_in,
            handled: s.handled,
            failed: s.failed,
            timed_out: s.timed_out,
            recalled: s.recalled,
            coalesced: s.coalesced,
            bad_messages: s.bad_messages,
            duplicates: s.duplicates,
            late: s.late,
            gaps_skipped: s.gaps_skipped,
            monitor_overruns: self.overruns,
            recovered: s.recovered,
            monitors: (self.monitors.len() + self.handled.len()) as u64,
            sources: o.sources.to_string(),
            // Read again each time: an admin may change the helper while we run.
            kernel_helper: helper.to_string(),
            warning: helper.warning(o.sources),
        }
        .lines()
    }
}

/// Tell a monitor that fell too far behind why its connection ends.
fn tell_overrun(id: u64, tx: &Sender<Reply>) {
    log::warn!("monitor {id} fell more than {MONITOR_MAX_LAG} events behind: dropping it");
    let _ = tx.send(Reply::End(End::Error(format!(
        "overrun: more than {MONITOR_MAX_LAG} events behind"
    ))));
}
