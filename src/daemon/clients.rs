//! The control socket's clients that outlive their request, and the replies made from
//! what they watch: monitors (queued events through their own cursors, processed events
//! from the finish path, or handler outcomes), settles (until the queue has drained through a SEQNUM), tag waits (until so
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
use crate::queue::{Queue, ReaderId, RUNNER};
use crate::runner::{Outcome, Report};

/// A monitor falls this many events behind the newest, and it is dropped.
pub const MONITOR_MAX_LAG: u64 = 10_000;
/// Events handed to a monitor's connection per batch.
const MONITOR_BATCH: usize = 512;
/// Processed events held for a monitor's connection; past them, new ones are lost (and
/// counted in a `LOST` line) rather than held: they are copies, not the queue's events, so
/// a cursor cannot keep them, and a monitor that does not read must not cost memory.
pub const MONITOR_HELD: usize = 1024;
/// Tags (`SYNTH_UUID`) whose handled counts are remembered for `wait-tag`.
const MAX_TAGS: usize = 64;
/// Handler runs and gap waits remembered for `hotplugctl timeline`.
const TIMELINE_LEN: usize = 10_000;

/// A `hotplugctl monitor` connection for events: queued ones read through its own
/// cursor, processed ones held here until its connection can take them.
struct Monitor {
    /// None for a monitor of processed events only: it holds nothing in the queue.
    reader: Option<ReaderId>,
    tx: Sender<Reply>,
    /// Its connection has written the last batch and can take the next.
    ready: bool,
    opts: MonitorOpts,
    /// `PROCESSED` lines not yet sent, of `held_events` events.
    held: Vec<String>,
    held_events: usize,
    /// Processed events dropped since the last `LOST` line, the held ones being at the
    /// limit.
    lost: u64,
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

/// A `wait-device`: until no event for `devpath` is queued, waiting or running.
struct DeviceWait {
    devpath: Vec<u8>,
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
        background: bool,
        lane: usize,
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
    /// The oldest handler running now: its rule, its event's SEQNUM, and since when.
    pub running: Option<(&'a str, Option<u64>, Instant)>,
    /// `workers`, and how many events' handlers run now.
    pub workers: usize,
    pub running_events: usize,
    /// See [`crate::status::Status`]'s `blocked`.
    pub blocked: Option<String>,
    /// Background handlers running now.
    pub background: usize,
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
    device_waits: Vec<DeviceWait>,
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
            device_waits: Vec::new(),
            tags_done: VecDeque::new(),
            timeline: VecDeque::new(),
        }
    }

    /// A new monitor: told its id, then fed queued events from the oldest one the runner
    /// has not taken and processed events from now on (or each handler outcome from now
    /// on, with `opts.handled`).
    pub fn attach_monitor(&mut self, opts: MonitorOpts, tx: Sender<Reply>, queue: &mut Queue) {
        let id = self.next_monitor;
        self.next_monitor += 1;
        let _ = tx.send(Reply::Monitor(id));
        log::debug!("monitor {id} attached");
        if opts.handled {
            self.handled.insert(id, tx);
        } else {
            let reader = opts.queued.then(|| queue.add_reader());
            self.monitors.insert(
                id,
                Monitor {
                    reader,
                    tx,
                    ready: true,
                    opts,
                    held: Vec::new(),
                    held_events: 0,
                    lost: 0,
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
            if let Some(r) = m.reader {
                queue.remove_reader(r);
            }
        } else if self.handled.remove(&id).is_none() {
            return;
        }
        log::debug!("monitor {id} detached");
    }

    /// Hand each ready monitor its next batch: queued events, then the processed ones
    /// held for it. Drop the ones too far behind in the queue.
    pub fn feed_monitors(&mut self, queue: &mut Queue) {
        let mut overrun = Vec::new();
        for (&id, m) in &mut self.monitors {
            if m.reader.is_some_and(|r| queue.lag(r) > MONITOR_MAX_LAG) {
                overrun.push(id);
                continue;
            }
            if !m.ready {
                continue;
            }
            let mut lines = Vec::new();
            if let Some(reader) = m.reader {
                for _ in 0..MONITOR_BATCH {
                    let Some(ev) = queue.next(reader) else {
                        break;
                    };
                    if m.opts.wants(ev.subsystem()) {
                        event_lines(&mut lines, "QUEUED", ev, m.opts.env);
                    }
                }
            }
            // An event is processed only after the runner took it: once this monitor's
            // cursor is as far as the runner's, its QUEUED line has gone before.
            let caught_up = m.reader.is_none_or(|r| queue.lag(r) <= queue.lag(RUNNER));
            if caught_up {
                lines.append(&mut m.held);
                m.held_events = 0;
                if m.lost > 0 {
                    log::warn!(
                        "monitor {id} did not keep up: {} processed events not sent to it",
                        m.lost
                    );
                    lines.push(format!("LOST {}", m.lost));
                    m.lost = 0;
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

    /// `ev` is processed: its handlers and node actions are done, what its importers
    /// printed is in it, and it is on record (and rebroadcast) as done. Each monitor of
    /// processed events gets it at its next batch, in the order events are finished.
    pub fn processed(&mut self, ev: &Event) {
        for m in self.monitors.values_mut() {
            if !m.opts.processed || !m.opts.wants(ev.subsystem()) {
                continue;
            }
            if m.held_events >= MONITOR_HELD {
                m.lost += 1;
                continue;
            }
            m.held_events += 1;
            event_lines(&mut m.held, "PROCESSED", ev, m.opts.env);
        }
    }

    /// A handler run ended: on the timeline, and a line to each `monitor --handled`.
    /// `background`: the queue did not wait for it.
    pub fn ran(
        &mut self,
        seqnum: Option<u64>,
        rule: &str,
        lane: usize,
        report: &Report,
        background: bool,
    ) {
        self.record(Mark::Run {
            started: report.started,
            duration: report.duration,
            seqnum,
            rule: rule.to_owned(),
            outcome: report.outcome.clone(),
            background,
            lane,
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

    /// A `wait-device`: answered at the next check once nothing for `devpath` is pending.
    pub fn wait_device(&mut self, devpath: Vec<u8>, tx: Sender<Reply>) {
        self.device_waits.push(DeviceWait { devpath, tx });
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
    /// `running`: the runner's event, which counts as pending.
    /// `db`: device database entries not yet on file, which count as pending for a
    /// settle and for any `wait-device`.
    pub fn check_waiters<'e>(
        &mut self,
        queue: &Queue,
        unfinished: impl Iterator<Item = &'e Event> + Clone,
        db: usize,
    ) -> bool {
        // Some waiter would be answered but for the database's entries: the owner asks
        // for a wake-up once they are written (and only then, not at every write).
        let mut db_only = false;
        let events = queue.pending() + unfinished.clone().count();
        let pending = events + db;
        // Only the queue's events are looked at, not its length: another device's slow
        // handler or a long queue does not hold this one up.
        self.device_waits.retain(|w| {
            let busy = unfinished.clone().any(|e| e.devpath() == &w.devpath[..])
                || queue.has_pending_devpath(&w.devpath);
            db_only |= !busy && db > 0;
            let busy = busy || db > 0;
            if !busy {
                let _ = w.tx.send(Reply::End(End::Ok(String::new())));
            }
            busy
        });
        let now = Instant::now();
        self.settles.retain_mut(|w| {
            let released = w.upto.is_none_or(|s| queue.released_through(s));
            db_only |= events == 0 && released && db > 0;
            let done = pending == 0 && released;
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
            // Their entries on file too, as for a settle.
            db_only |= done >= w.count && db > 0;
            if done >= w.count && db == 0 {
                let _ = w.tx.send(Reply::End(End::Ok(format!("{done} handled"))));
                false
            } else {
                true
            }
        });
        db_only
    }

    /// The timeline as the protocol's `run START END SEQNUM RULE OUTCOME[ background]`
    /// and `wait START END FIRST LAST` lines, in seconds since the daemon started.
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
                    background,
                    lane,
                } => format!(
                    "run {:.6} {:.6} {} {} {}{}{}",
                    secs(*started),
                    secs(*started) + duration.as_secs_f64(),
                    seqnum.map_or("-".into(), |s| s.to_string()),
                    control::escape_word(rule.as_bytes()),
                    outcome.to_string().replace(' ', "_"),
                    if *background { " background" } else { "" },
                    if *lane > 0 {
                        format!(" lane={lane}")
                    } else {
                        String::new()
                    }
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
            workers: o.workers as u64,
            running: o.running_events as u64,
            blocked: o.blocked.clone(),
            background: o.background as u64,
            background_ended: s.background_ended,
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
            // Rebroadcast (issue 17).
            rebroadcast_sent: s.rebroadcast_sent,
            rebroadcast_lost: s.rebroadcast_lost,
            sources: o.sources.to_string(),
            // Read again each time: an admin may change the helper while we run.
            kernel_helper: helper.to_string(),
            warning: helper.warning(o.sources),
        }
        .lines()
    }
}

/// A monitor's lines for one event: `KIND SEQNUM ACTION DEVPATH (SUBSYSTEM)`, and with
/// `env` each variable as `KEY=VALUE` and an empty line.
fn event_lines(lines: &mut Vec<String>, kind: &str, ev: &Event, env: bool) {
    lines.push(format!("{kind} {}", ev.summary()));
    if env {
        lines.extend(
            ev.vars()
                .map(|(k, v)| format!("{}={}", control::escape(k), control::escape(v))),
        );
        lines.push(String::new());
    }
}

/// Tell a monitor that fell too far behind why its connection ends.
fn tell_overrun(id: u64, tx: &Sender<Reply>) {
    log::warn!("monitor {id} fell more than {MONITOR_MAX_LAG} events behind: dropping it");
    let _ = tx.send(Reply::End(End::Error(format!(
        "overrun: more than {MONITOR_MAX_LAG} events behind"
    ))));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Push, RUNNER};
    use crate::status::Status;
    use crossbeam_channel::{unbounded, Receiver};

    const GAP: Duration = Duration::from_secs(60);

    fn ev(seq: u64, action: &str, subsystem: &str, tag: Option<&str>) -> Event {
        let s = seq.to_string();
        let devpath = format!("/devices/{subsystem}");
        let mut vars: Vec<(&[u8], &[u8])> = vec![
            (b"ACTION", action.as_bytes()),
            (b"DEVPATH", devpath.as_bytes()),
            (b"SUBSYSTEM", subsystem.as_bytes()),
            (b"SEQNUM", s.as_bytes()),
        ];
        if let Some(t) = tag {
            vars.push((b"SYNTH_UUID", t.as_bytes()));
        }
        Event::from_vars(subsystem.as_bytes(), vars).unwrap()
    }

    /// A queue that starts at SEQNUM 1 and holds `seqs`.
    fn queue_with(seqs: impl IntoIterator<Item = u64>) -> Queue {
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        for s in seqs {
            q.push(ev(s, "change", "usb", None), Instant::now());
        }
        q
    }

    /// Everything a connection has been sent so far.
    fn replies(rx: &Receiver<Reply>) -> Vec<Reply> {
        rx.try_iter().collect()
    }

    fn ended_ok(replies: &[Reply]) -> Option<&str> {
        replies.iter().find_map(|r| match r {
            Reply::End(End::Ok(text)) => Some(text.as_str()),
            _ => None,
        })
    }

    fn lines(replies: Vec<Reply>) -> Vec<String> {
        replies
            .into_iter()
            .flat_map(|r| match r {
                Reply::Lines(l) => l,
                _ => vec![],
            })
            .collect()
    }

    fn queued() -> MonitorOpts {
        MonitorOpts {
            queued: true,
            ..MonitorOpts::default()
        }
    }

    fn status(c: &Clients, q: &Queue) -> Status {
        let lines = c.status_lines(&OwnerStatus {
            queue: q,
            stats: &Stats::default(),
            paused: false,
            running: None,
            workers: 1,
            running_events: 0,
            blocked: None,
            background: 0,
            keeper: &Keeper::NoFifo,
            sources: Sources {
                fifo: true,
                netlink: false,
            },
        });
        Status::parse(&lines).unwrap()
    }

    #[test]
    fn a_settle_is_answered_once_the_queue_has_drained_through_its_seqnum() {
        let mut q = queue_with([1, 2]);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        c.settle(Some(3), tx);
        c.check_waiters(&q, std::iter::empty(), 0);
        let first = replies(&rx);
        assert_eq!(lines(first), ["pending 2"], "progress is reported at once");

        // Drained, but SEQNUM 3 has not been through the queue yet.
        while q.next(RUNNER).is_some() {}
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(ended_ok(&replies(&rx)), None);

        // 3 is taken by the runner: pending while it runs, settled once it is done.
        q.push(ev(3, "change", "usb", None), Instant::now());
        assert!(q.next(RUNNER).is_some());
        let running = ev(9, "change", "usb", None);
        // Events still to handle: no wake-up wanted for the database's entries.
        assert!(!c.check_waiters(&q, std::iter::once(&running), 2));
        assert_eq!(ended_ok(&replies(&rx)), None);
        // Only entries left to write: the settle waits, and wants a wake-up for them.
        assert!(c.check_waiters(&q, std::iter::empty(), 2));
        assert_eq!(ended_ok(&replies(&rx)), None);
        assert!(!c.check_waiters(&q, std::iter::empty(), 0));
        assert_eq!(ended_ok(&replies(&rx)), Some(""));
        assert!(c.settles.is_empty());
    }

    #[test]
    fn a_device_wait_looks_only_at_that_devices_events() {
        // 1 for /devices/usb is running, 2 for /devices/usb and 3 for /devices/net queued.
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        for (s, sub) in [(1, "usb"), (2, "usb"), (3, "net")] {
            q.push(ev(s, "change", sub, None), Instant::now());
        }
        let mut c = Clients::new(Instant::now());
        let (net_tx, net_rx) = unbounded();
        let (usb_tx, usb_rx) = unbounded();
        let (gone_tx, gone_rx) = unbounded();
        c.wait_device(b"/devices/net".to_vec(), net_tx);
        c.wait_device(b"/devices/usb".to_vec(), usb_tx);
        c.wait_device(b"/devices/gone".to_vec(), gone_tx);
        let running = q.next(RUNNER).unwrap().clone();
        c.check_waiters(&q, std::iter::once(&running), 0);
        assert_eq!(
            ended_ok(&replies(&gone_rx)),
            Some(""),
            "nothing of it pending"
        );
        assert_eq!(ended_ok(&replies(&usb_rx)), None);
        assert_eq!(ended_ok(&replies(&net_rx)), None);
        // 1 done; 2 (usb) taken and running: /devices/net's 3 still queued.
        let running = q.next(RUNNER).unwrap().clone();
        c.check_waiters(&q, std::iter::once(&running), 0);
        assert_eq!(ended_ok(&replies(&usb_rx)), None, "its second event runs");
        // 2 done, 3 running: usb is answered while the net event still runs.
        let running = q.next(RUNNER).unwrap().clone();
        c.check_waiters(&q, std::iter::once(&running), 0);
        assert_eq!(ended_ok(&replies(&usb_rx)), Some(""));
        assert_eq!(ended_ok(&replies(&net_rx)), None);
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(ended_ok(&replies(&net_rx)), Some(""));
        assert!(c.device_waits.is_empty());
    }

    #[test]
    fn a_settle_without_a_seqnum_waits_for_an_empty_queue_and_an_idle_runner() {
        let mut q = queue_with([1]);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        c.settle(None, tx);
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(lines(replies(&rx)), ["pending 1"]);
        // Same count again: no second progress line.
        c.check_waiters(&q, std::iter::empty(), 0);
        assert!(replies(&rx).is_empty());
        q.next(RUNNER);
        c.check_waiters(&q, std::iter::once(&ev(9, "change", "usb", None)), 0);
        assert_eq!(ended_ok(&replies(&rx)), None);
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(ended_ok(&replies(&rx)), Some(""));
    }

    #[test]
    fn a_settle_whose_client_left_is_forgotten() {
        let q = queue_with([1]);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        c.settle(None, tx);
        drop(rx);
        c.check_waiters(&q, std::iter::empty(), 0);
        assert!(c.settles.is_empty());
    }

    #[test]
    fn a_tag_wait_is_answered_when_enough_events_of_its_tag_are_done() {
        let q = queue_with([]);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        c.wait_tag("t1".into(), 2, tx);
        c.count_tag(&ev(1, "add", "usb", Some("t1")));
        c.count_tag(&ev(2, "add", "usb", Some("other")));
        c.count_tag(&ev(3, "add", "usb", None));
        c.check_waiters(&q, std::iter::empty(), 0);
        assert!(replies(&rx).is_empty(), "one of two so far");
        c.count_tag(&ev(4, "add", "usb", Some("t1")));
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(ended_ok(&replies(&rx)), Some("2 handled"));

        // Counts are remembered: a late wait is answered at once.
        let (tx, rx) = unbounded();
        c.wait_tag("t1".into(), 1, tx);
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(ended_ok(&replies(&rx)), Some("2 handled"));
    }

    #[test]
    fn events_that_never_run_count_for_their_tag_too() {
        // What the owner hands over when a remove meets its queued add, and on a recall:
        // neither event runs, and a `trigger --settle` must not wait for them.
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        let now = Instant::now();
        q.push(ev(1, "add", "usb", Some("t")), now);
        q.push(ev(2, "add", "block", Some("t")), now);
        let Push::Coalesced { add, remove, .. } = q.push(ev(3, "remove", "usb", Some("t")), now)
        else {
            panic!("the remove should coalesce with its queued add");
        };
        let recalled = q.recall(2).unwrap();
        let mut c = Clients::new(now);
        let (tx, rx) = unbounded();
        c.wait_tag("t".into(), 3, tx);
        for done in [&add, &remove, &recalled] {
            c.count_tag(done);
        }
        c.check_waiters(&q, std::iter::empty(), 0);
        assert_eq!(ended_ok(&replies(&rx)), Some("3 handled"));
    }

    #[test]
    fn only_the_latest_tags_are_remembered() {
        let q = queue_with([]);
        let mut c = Clients::new(Instant::now());
        c.count_tag(&ev(1, "add", "usb", Some("first")));
        for i in 0..MAX_TAGS {
            c.count_tag(&ev(2 + i as u64, "add", "usb", Some(&format!("tag{i}"))));
        }
        assert_eq!(c.tags_done.len(), MAX_TAGS);
        let (tx, rx) = unbounded();
        c.wait_tag("first".into(), 1, tx);
        c.check_waiters(&q, std::iter::empty(), 0);
        assert!(replies(&rx).is_empty(), "the oldest tag was forgotten");
    }

    #[test]
    fn a_monitor_gets_its_subsystems_one_batch_at_a_time() {
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        let opts = MonitorOpts {
            queued: true,
            subsystems: vec!["block".into()],
            ..MonitorOpts::default()
        };
        c.attach_monitor(opts, tx, &mut q);
        assert!(matches!(replies(&rx)[..], [Reply::Monitor(0)]));
        let now = Instant::now();
        q.push(ev(1, "add", "usb", None), now);
        q.push(ev(2, "add", "block", None), now);
        c.feed_monitors(&mut q);
        assert_eq!(lines(replies(&rx)), ["QUEUED 2 add /devices/block (block)"]);

        // Not ready until its connection wrote that batch.
        q.push(ev(3, "change", "block", None), now);
        c.feed_monitors(&mut q);
        assert!(replies(&rx).is_empty());
        c.monitor_ready(0);
        c.feed_monitors(&mut q);
        assert_eq!(
            lines(replies(&rx)),
            ["QUEUED 3 change /devices/block (block)"]
        );
    }

    #[test]
    fn a_monitor_with_env_gets_each_variable_and_a_blank_line() {
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        let opts = MonitorOpts {
            env: true,
            queued: true,
            ..MonitorOpts::default()
        };
        c.attach_monitor(opts, tx, &mut q);
        q.push(ev(1, "add", "usb", None), Instant::now());
        c.feed_monitors(&mut q);
        let got = lines(replies(&rx));
        assert_eq!(
            got.first().map(String::as_str),
            Some("QUEUED 1 add /devices/usb (usb)")
        );
        assert!(got.contains(&"SUBSYSTEM=usb".to_owned()), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some(""));
    }

    #[test]
    fn a_monitor_past_the_lag_limit_is_dropped_with_an_overrun() {
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        c.attach_monitor(queued(), tx, &mut q);
        let now = Instant::now();
        q.push(ev(1, "add", "usb", None), now);
        c.feed_monitors(&mut q);
        assert_eq!(replies(&rx).len(), 2, "its id, then one batch");
        // Its connection never says it wrote that batch; the runner goes on.
        for s in 2..=MONITOR_MAX_LAG + 1 {
            q.push(ev(s, "add", "usb", None), now);
        }
        while q.next(RUNNER).is_some() {}
        c.feed_monitors(&mut q);
        assert!(replies(&rx).is_empty(), "exactly at the limit: kept");
        assert!(q.bytes() > 0, "its cursor holds what it has not read");

        q.push(ev(MONITOR_MAX_LAG + 2, "add", "usb", None), now);
        q.next(RUNNER);
        c.feed_monitors(&mut q);
        match &replies(&rx)[..] {
            [Reply::End(End::Error(e))] => assert!(e.starts_with("overrun"), "{e}"),
            other => panic!("expected an overrun, got {other:?}"),
        }
        assert_eq!(q.bytes(), 0, "its cursor is gone, and what only it held");
        let s = status(&c, &q);
        assert_eq!((s.monitors, s.monitor_overruns), (0, 1));
    }

    #[test]
    fn a_processed_event_follows_its_queued_line_and_holds_nothing_in_the_queue() {
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        let mut c = Clients::new(Instant::now());
        let (both_tx, both) = unbounded();
        let both_opts = MonitorOpts {
            queued: true,
            processed: true,
            ..MonitorOpts::default()
        };
        c.attach_monitor(both_opts, both_tx, &mut q);
        let (only_tx, only) = unbounded();
        let only_opts = MonitorOpts {
            env: true,
            processed: true,
            subsystems: vec!["usb".into()],
            ..MonitorOpts::default()
        };
        c.attach_monitor(only_opts, only_tx, &mut q);
        replies(&both);
        replies(&only);
        let now = Instant::now();
        q.push(ev(1, "add", "usb", None), now);
        q.push(ev(2, "add", "block", None), now);
        // As the owner does for an event no rule matches: finished before the monitors
        // are fed.
        q.next(RUNNER);
        let vars: [(&[u8], &[u8]); 5] = [
            (b"ACTION", b"add"),
            (b"DEVPATH", b"/devices/usb"),
            (b"SUBSYSTEM", b"usb"),
            (b"SEQNUM", b"1"),
            (b"ID_X", b"1"),
        ];
        c.processed(&Event::from_vars(b"usb", vars).unwrap());
        c.feed_monitors(&mut q);
        assert_eq!(
            lines(replies(&both)),
            [
                "QUEUED 1 add /devices/usb (usb)",
                "QUEUED 2 add /devices/block (block)",
                "PROCESSED 1 add /devices/usb (usb)"
            ]
        );
        let got = lines(replies(&only));
        assert_eq!(got[0], "PROCESSED 1 add /devices/usb (usb)");
        assert!(got.contains(&"ID_X=1".to_owned()), "{got:?}");

        // A processed event waits while this monitor's QUEUED line is still to come.
        q.push(ev(3, "add", "usb", None), now);
        c.feed_monitors(&mut q);
        assert!(
            replies(&both).is_empty(),
            "its last batch is not written yet"
        );
        q.next(RUNNER);
        let third = q.next(RUNNER).unwrap().clone();
        c.processed(&third);
        c.feed_monitors(&mut q);
        assert!(replies(&both).is_empty());
        c.monitor_ready(0);
        c.feed_monitors(&mut q);
        assert_eq!(
            lines(replies(&both)),
            [
                "QUEUED 3 add /devices/usb (usb)",
                "PROCESSED 3 add /devices/usb (usb)"
            ]
        );
        c.drop_monitor(0, &mut q);
        assert_eq!(q.bytes(), 0, "the processed-only monitor keeps no cursor");
    }

    #[test]
    fn a_monitor_that_does_not_read_loses_processed_events_and_is_told_how_many() {
        let mut q = Queue::new(GAP, true);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        let opts = MonitorOpts {
            processed: true,
            ..MonitorOpts::default()
        };
        c.attach_monitor(opts, tx, &mut q);
        c.processed(&ev(1, "add", "usb", None));
        c.feed_monitors(&mut q);
        assert_eq!(replies(&rx).len(), 2, "its id, then one batch");
        // Its connection never says it wrote that batch.
        let extra = 5;
        for s in 2..2 + MONITOR_HELD as u64 + extra {
            c.processed(&ev(s, "add", "usb", None));
            c.feed_monitors(&mut q);
        }
        assert!(replies(&rx).is_empty());
        c.monitor_ready(0);
        c.feed_monitors(&mut q);
        let got = lines(replies(&rx));
        assert_eq!(got.len(), MONITOR_HELD + 1);
        assert_eq!(got[0], "PROCESSED 2 add /devices/usb (usb)");
        assert_eq!(got[MONITOR_HELD], format!("LOST {extra}"));
        // Still attached: the next one comes through.
        c.monitor_ready(0);
        c.processed(&ev(9999, "add", "usb", None));
        c.feed_monitors(&mut q);
        assert_eq!(
            lines(replies(&rx)),
            ["PROCESSED 9999 add /devices/usb (usb)"]
        );
        let s = status(&c, &q);
        assert_eq!((s.monitors, s.monitor_overruns), (1, 0));
    }

    fn report(outcome: Outcome, started: Instant, ms: u64) -> Report {
        Report {
            outcome,
            started,
            duration: Duration::from_millis(ms),
            pid: None,
            captured: Vec::new(),
        }
    }

    #[test]
    fn a_handled_monitor_gets_a_line_per_run_and_is_dropped_when_it_lags() {
        let mut q = Queue::new(GAP, true);
        let mut c = Clients::new(Instant::now());
        let (tx, rx) = unbounded();
        let opts = MonitorOpts {
            handled: true,
            ..MonitorOpts::default()
        };
        c.attach_monitor(opts, tx, &mut q);
        assert!(matches!(replies(&rx)[..], [Reply::Monitor(0)]));
        assert_eq!(status(&c, &q).monitors, 1);
        let now = Instant::now();
        c.ran(
            Some(7),
            "my rule",
            0,
            &report(Outcome::Exited(1), now, 12),
            false,
        );
        assert_eq!(lines(replies(&rx)), ["7 my\\x20rule exit_1 12.0ms"]);

        // Never read: one line past the limit and it is gone.
        for _ in 0..=MONITOR_MAX_LAG {
            c.ran(None, "r", 0, &report(Outcome::Exited(0), now, 1), false);
        }
        assert_eq!(rx.len() as u64, MONITOR_MAX_LAG + 1);
        c.ran(None, "r", 0, &report(Outcome::Exited(0), now, 1), false);
        let last = rx.try_iter().last();
        assert!(
            matches!(&last, Some(Reply::End(End::Error(e))) if e.starts_with("overrun")),
            "{last:?}"
        );
        let s = status(&c, &q);
        assert_eq!((s.monitors, s.monitor_overruns), (0, 1));
        // Its hang-up, arriving after, finds nothing to drop.
        c.drop_monitor(0, &mut q);
    }

    #[test]
    fn a_monitor_that_hangs_up_frees_its_cursor() {
        let mut q = Queue::new(GAP, true);
        q.start_at(1);
        let mut c = Clients::new(Instant::now());
        let (tx, _rx) = unbounded();
        c.attach_monitor(queued(), tx, &mut q);
        q.push(ev(1, "add", "usb", None), Instant::now());
        q.next(RUNNER);
        assert!(q.bytes() > 0);
        assert_eq!(status(&c, &q).monitors, 1);
        c.drop_monitor(0, &mut q);
        assert_eq!(q.bytes(), 0);
        assert_eq!(status(&c, &q).monitors, 0);
    }

    #[test]
    fn the_timeline_draws_runs_and_gap_waits_in_seconds_since_the_start() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Clients::new(t0);
        c.ran(
            Some(5),
            "my rule",
            0,
            &report(Outcome::TimedOut { killed: true }, t0 + s(1), 250),
            false,
        );
        c.gap_skipped(3..=4, t0 + s(2), t0 + Duration::from_millis(3500));
        c.ran(
            None,
            "r",
            0,
            &report(Outcome::Exited(0), t0 + s(4), 1),
            false,
        );
        c.ran(
            Some(6),
            "bg",
            2,
            &report(Outcome::Exited(2), t0 + s(4), 2000),
            true,
        );
        assert_eq!(
            c.timeline_lines(),
            [
                "run 1.000000 1.250000 5 my\\x20rule timed_out,_killed_by_SIGKILL",
                "wait 2.000000 3.500000 3 4",
                "run 4.000000 4.001000 - r exit_0",
                "run 4.000000 6.000000 6 bg exit_2 background lane=2",
            ]
        );
    }

    #[test]
    fn the_timeline_keeps_only_the_latest_marks() {
        let t0 = Instant::now();
        let mut c = Clients::new(t0);
        for i in 0..TIMELINE_LEN as u64 + 1 {
            c.ran(Some(i), "r", 0, &report(Outcome::Exited(0), t0, 1), false);
        }
        let lines = c.timeline_lines();
        assert_eq!(lines.len(), TIMELINE_LEN);
        assert!(lines[0].contains(" 1 r "), "{}", lines[0]);
    }

    #[test]
    fn status_lines_carry_the_owners_state_and_the_clients_counts() {
        let q = queue_with([1, 2]);
        let mut c = Clients::new(Instant::now() - Duration::from_secs(3));
        let (tx, _rx) = unbounded();
        let mut q2 = Queue::new(GAP, true);
        c.attach_monitor(MonitorOpts::default(), tx, &mut q2);
        let stats = Stats {
            received: 9,
            handled: 5,
            late: 1,
            last_handled: Some(6),
            background_ended: 4,
            ..Stats::default()
        };
        let since = Instant::now() - Duration::from_millis(50);
        let lines = c.status_lines(&OwnerStatus {
            queue: &q,
            stats: &stats,
            paused: true,
            running: Some(("a rule", Some(7), since)),
            workers: 1,
            running_events: 1,
            blocked: None,
            background: 2,
            keeper: &Keeper::Supervisor,
            sources: Sources {
                fifo: true,
                netlink: true,
            },
        });
        let s = Status::parse(&lines).unwrap();
        assert_eq!(s.pid, std::process::id());
        assert!(s.uptime_s >= 3.0, "{}", s.uptime_s);
        assert_eq!(s.holder.as_deref(), Some("supervisor"));
        assert_eq!((s.queued, s.next_expected), (2, Some(3)));
        assert!(s.paused);
        assert_eq!(s.running_rule.as_deref(), Some("a rule"));
        assert_eq!(s.running_seqnum, Some(7));
        assert!(s.running_for_ms.is_some_and(|ms| ms >= 50.0));
        assert_eq!((s.received, s.handled, s.late), (9, 5, 1));
        assert_eq!(s.last_handled, Some(6));
        assert_eq!(s.monitors, 1);
        assert_eq!(s.sources, "fifo,netlink");
        assert_eq!((s.background, s.background_ended), (2, 4));

        // Idle, no FIFO: no holder, nothing running.
        let s = status(&c, &q);
        assert_eq!(s.holder, None);
        assert_eq!(s.running_rule, None);
        assert_eq!(s.running_for_ms, None);
    }
}
