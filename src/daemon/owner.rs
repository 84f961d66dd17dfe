//! The owner of the queue, and every decision about it: intake, push, dispatch to the
//! runner, the runner's results, gap expiry, control requests, reload, and the hand-over
//! to the spool at a stop. Threads reach it only under its lock (see the module docs of
//! [`super`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::book::Book;
use super::clients::{Clients, OwnerStatus};
use super::Options;
use crate::activation::Notifier;
use crate::broadcast::Rebroadcast;
use crate::config::{Config, DaemonConfig, Sources};
use crate::control::{End, Reply, Request, ToOwner};
use crate::devnodes::DevNodes;
use crate::event::Event;
use crate::holder::Keeper;
use crate::journal::{Journal, Recovered};
use crate::lanes::{Blocker, Candidate, Picker, Verdict};
use crate::queue::{Expired, Push, Queue};
use crate::rules::Job;
use crate::runner::{Outcome, Report};
use crate::runtime::Runtime;
use crate::sources::{self, Input};

/// One event for the runner: its handlers, in order. Shared with the owner's [`Running`]
/// so status and logs can name it without a copy.
pub(super) struct Dispatch {
    /// Which of the owner's running events this is (kept when an import replaces the
    /// work), for the runner thread's reports.
    pub id: u64,
    pub event: Event,
    pub jobs: Vec<Job>,
    /// Taken from the config at dispatch, so a reload applies to the next event.
    pub max_output: usize,
    /// Background handlers: `max_background` at dispatch.
    pub max_background: usize,
    /// Keys that imports set on `event` so far (see [`Owner::import`]).
    pub imported: Vec<Vec<u8>>,
}

pub(super) type Work = Arc<Dispatch>;

/// An event a runner thread has now; `job` indexes the handler running.
pub(super) struct Running {
    work: Work,
    job: usize,
    since: Instant,
    /// Its position in the queue's log: events are finished in this order.
    pos: u64,
    /// The lane it runs in, `0..workers`: a row of the timeline, a line of `pending`.
    lane: usize,
    /// It runs alone (see [`crate::lanes`]).
    exclusive: bool,
}

/// Most untaken events the lanes look through for one that may start: past a long run of
/// events blocked behind their relatives, the next waits its turn (so a scan costs at
/// most this many DEVPATH comparisons per running event).
const LOOKAHEAD: usize = 64;

/// The event [`Owner::pick`] chose to start.
struct Pick {
    /// Its position in the queue's log.
    pos: u64,
    /// It runs alone.
    exclusive: bool,
    /// No untaken event is older (the queue's [`Queue::first_untaken`]).
    oldest: bool,
}

/// The running events as the lanes' picker sees them.
fn candidates(running: &[Running]) -> Vec<Candidate<'_>> {
    running
        .iter()
        .map(|r| Candidate {
            devpath: r.work.event.devpath(),
            exclusive: r.exclusive,
        })
        .collect()
}

/// An event taken from the queue that cannot be finished yet (see [`Owner::retire`]):
/// its handlers run, or they ended while an older event still runs or waits.
struct Inflight {
    pos: u64,
    /// `None` while its handlers run.
    done: Option<Done>,
}

/// What finishing an event needs, kept until every older one is finished.
enum Done {
    /// Its handlers ended: the work holds the event with its imported properties.
    Handled(Work),
    /// No handler ran; `record`: the database gets an entry for it.
    Unhandled { event: Event, record: bool },
}

impl Done {
    fn event(&self) -> &Event {
        match self {
            Done::Handled(work) => &work.event,
            Done::Unhandled { event, .. } => event,
        }
    }
}

impl Running {
    fn rule(&self) -> &str {
        rule_of(&self.work, self.job)
    }
    fn seqnum(&self) -> Option<u64> {
        self.work.event.seqnum()
    }
}

// ---- Rebroadcast (issue 17) -------------------------------------------------------------

/// `ev` is handled: its handlers have ended (or, for background ones, started) and its
/// node actions are done. Rebroadcast it if the config says so, put it on record as done,
/// and show it to the monitors of processed events. Events are finished one at a time in the order the queue released them, so the
/// sends follow SEQNUM order; coalesced, recalled and duplicate events never come here.
///
/// The `done` record is the send's journal entry, written right after the send: a crash
/// before the send leaves the event not done, so the next start runs it again and sends
/// it then (never lost); a crash after the record's write sends nothing again (never
/// repeated). Only a crash between the `sendto` and that `write` repeats it, handlers and
/// all, exactly as an event whose last handler ended in that instant runs again.
fn finish(
    book: &mut Book,
    rebroadcast: &mut Rebroadcast,
    clients: &mut Clients,
    cfg: &DaemonConfig,
    ev: &Event,
) {
    let sent = rebroadcast.send(cfg, ev);
    book.finished(ev);
    clients.processed(ev);
    match sent {
        None => {}
        Some(ok) => {
            if ok {
                book.stats.rebroadcast_sent += 1;
            } else {
                book.stats.rebroadcast_lost += 1;
            }
            book.flush();
        }
    }
}

// ---- end of rebroadcast ----------------------------------------------------------------

/// The parts of the owner that finish an event, borrowed apart from the queue, which
/// may still hold the event.
struct Finisher<'a> {
    config: &'a Config,
    db: &'a crate::db::Deferred,
    devnodes: &'a DevNodes,
    book: &'a mut Book,
    rebroadcast: &'a mut Rebroadcast,
    clients: &'a mut Clients,
}

macro_rules! finisher {
    ($o:ident) => {
        Finisher {
            config: &$o.config,
            db: &$o.db,
            devnodes: &$o.devnodes,
            book: &mut $o.book,
            rebroadcast: &mut $o.rebroadcast,
            clients: &mut $o.clients,
        }
    };
}

impl Finisher<'_> {
    /// `event` is done: on record in the database (`record`; with its rules when `work`
    /// ran), rebroadcast, on record as done, and counted for tag waits.
    fn finish(self, event: &Event, work: Option<&Dispatch>, record: bool) {
        if self.config.daemon.device_db && record {
            let (imported, rules): (&[Vec<u8>], Vec<&str>) = match work {
                Some(w) => (
                    &w.imported,
                    w.jobs.iter().map(|j| j.rule.as_str()).collect(),
                ),
                None => (&[], Vec::new()),
            };
            record_device(self.db, self.devnodes, event, imported, &rules);
        }
        finish(
            self.book,
            self.rebroadcast,
            self.clients,
            &self.config.daemon,
            event,
        );
        self.clients.count_tag(event);
    }
}

fn rule_of(work: &Dispatch, job: usize) -> &str {
    work.jobs.get(job).map_or("-", |j| j.rule.as_str())
}

// ---- Background handlers ---------------------------------------------------------------

/// A background handler that started and has not been reported ended: for `status`,
/// `pending` and its exit's log line. Its event is done for the queue already.
pub(super) struct BackgroundRun {
    work: Work,
    job: usize,
    /// The lane it started from, for the timeline.
    lane: usize,
    pid: u32,
    since: Instant,
}

impl Owner {
    /// The runner started the running job in the background as `pid`: it goes on as if
    /// that handler had ended (the event is done once its last job started).
    pub fn on_background_started(&mut self, id: u64, pid: u32, since: Instant, last: bool) {
        let Some(running) = self.take_running(id) else {
            return;
        };
        log::info!(
            "{}: rule {}: started in the background, pid {pid}",
            running.work.event.summary(),
            running.rule()
        );
        self.background.push(BackgroundRun {
            work: Arc::clone(&running.work),
            job: running.job,
            lane: running.lane,
            pid,
            since,
        });
        self.next_job(running, last);
    }

    /// A background handler was reaped: logged, counted and on the timeline as a
    /// foreground one is.
    pub fn on_background_exit(&mut self, pid: u32, report: &Report) {
        let Some(i) = self.background.iter().position(|b| b.pid == pid) else {
            return;
        };
        let run = self.background.remove(i);
        self.book.stats.background_ended += 1;
        self.log_outcome(&run.work, run.job, run.lane, report, true);
    }

    /// The running background handlers, oldest first, for `pending`.
    fn pending_background(&self) -> Vec<crate::status::PendingBackground> {
        self.background
            .iter()
            .map(|b| crate::status::PendingBackground {
                event: crate::status::PendingEvent::of(
                    crate::status::PendingState::Background,
                    &b.work.event,
                ),
                rule: rule_of(&b.work, b.job).to_owned(),
                pid: b.pid,
                running_for_ms: b.since.elapsed().as_secs_f64() * 1e3,
            })
            .collect()
    }

    /// For the stop: what still runs, one line each.
    pub fn background_summary(&self) -> Vec<String> {
        self.background
            .iter()
            .map(|b| {
                format!(
                    "{}: rule {}, pid {}, running for {:.1} s",
                    b.work.event.summary(),
                    rule_of(&b.work, b.job),
                    b.pid,
                    b.since.elapsed().as_secs_f64()
                )
            })
            .collect()
    }
}

// ---- end of background handlers --------------------------------------------------------

// ---- Imported properties and the device database ---------------------------------------

/// Write (or for a remove, delete) the device's database entry.
fn record_device(
    db: &crate::db::Deferred,
    devnodes: &DevNodes,
    event: &Event,
    imported: &[Vec<u8>],
    rules: &[&str],
) {
    db.submit(&crate::db::Entry {
        event,
        imported,
        links: devnodes.links_of(event.devpath()).collect(),
        rules: rules.to_vec(),
    });
}

impl Owner {
    /// An importer ended: merge the properties it printed (only after exit 0) into the
    /// event, apply the node actions again with them (links may name them), and plan
    /// the rules after the importer's against the merged event. `None` if nothing was
    /// imported: the plan made at dispatch stands.
    fn import(&mut self, running: &Running, report: &Report) -> Option<Work> {
        let work = &running.work;
        let job = &work.jobs[running.job];
        let who = format!("{}: rule {}", work.event.summary(), job.rule);
        if !report.outcome.success() {
            if !report.captured.is_empty() {
                log::warn!("{who}: import ignored, as the importer failed");
            }
            return None;
        }
        let props = crate::props::parse(&report.captured, &who);
        if props.is_empty() {
            return None;
        }
        let event = match crate::props::merge(&work.event, &props) {
            Ok(ev) => ev,
            Err(e) => {
                log::warn!("{who}: import ignored: {e}");
                return None;
            }
        };
        log::debug!(
            "{who}: imported {}",
            props
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut imported = work.imported.clone();
        for (k, _) in props {
            if !imported.contains(&k) {
                imported.push(k);
            }
        }
        if self.config.rules.has_nodes() {
            if let Some(actions) = self.config.rules.node_actions(&event) {
                self.devnodes
                    .apply(&self.config.daemon.dev_dir, &event, &actions);
            }
        }
        let rest = self.config.rules.plan_after(&event, job.pos);
        let rest = self
            .firmware
            .without_loaders(&event, &self.config.rules, rest);
        let mut jobs = work.jobs[..=running.job].to_vec();
        jobs.extend(rest.into_iter().map(|mut j| {
            j.timeout.get_or_insert(self.config.daemon.handler_timeout);
            j
        }));
        Some(Arc::new(Dispatch {
            id: work.id,
            event,
            jobs,
            max_output: work.max_output,
            max_background: work.max_background,
            imported,
        }))
    }
}

// ---- end of imported properties and the device database --------------------------------

/// The queue's owner and everything only it touches, in parts:
///
/// - what it was started with: `config`, `opts`, `runtime`, `sources`, `keeper`,
///   `notifier`;
/// - the queue and the runner's state: `queue`, `running`, `paused`, `stopping`;
/// - `book`: what is on record, the journal and the counters;
/// - `clients`: the connections that wait on the queue (monitors, settles, tag waits) and
///   the timeline.
///
/// A method of one part borrows only that part, so the owner records an event still
/// borrowed from the queue (`self.book.finished(ev)`, `self.clients.count_tag(ev)`)
/// without copying it. Data flows down: the owner calls into `book` and `clients`, lending
/// them the queue where they read it; neither calls back.
pub(super) struct Owner {
    pub config: Config,
    pub runtime: Runtime,
    opts: Options,
    /// The sources opened at start-up (a reload does not change them).
    sources: Sources,
    /// Who keeps the FIFO open if we die, for `status`.
    pub keeper: Keeper,
    pub notifier: Notifier,
    last_status: Instant,
    started: Instant,

    queue: Queue,
    /// The events whose handlers run now, one per busy lane (at most `workers`).
    pub running: Vec<Running>,
    /// Events taken from the queue and not finished yet, by log position.
    inflight: VecDeque<Inflight>,
    /// The next [`Dispatch::id`].
    next_id: u64,
    /// Set while a lane that has just gone free asks for work: the first event dispatched
    /// is kept here for it instead of sent, so no idle lane is woken for it.
    keep_for_caller: bool,
    kept: Option<Work>,
    /// Background handlers running now, oldest first.
    background: Vec<BackgroundRun>,
    paused: bool,
    pub stopping: bool,

    book: Book,
    clients: Clients,

    /// Firmware requests, answered at intake (issue 16).
    pub firmware: crate::firmware::Intake,
    /// Nodes made and links held, for the rules' node keys.
    devnodes: DevNodes,
    /// Rebroadcast (issue 17): the send socket.
    rebroadcast: Rebroadcast,
    /// The device database under the runtime dir.
    pub db: crate::db::Deferred,
}

impl Owner {
    pub fn new(
        config: Config,
        runtime: Runtime,
        opts: Options,
        journal: Journal,
        notifier: Notifier,
        sources: Sources,
    ) -> Owner {
        let mut queue = Queue::new(config.daemon.gap_timeout, config.daemon.coalesce);
        // Past max_queue_memory, released events stay in the journal until needed.
        let mut reader = crate::journal::Reader::new(journal.dir());
        queue.set_spill(
            config.daemon.max_queue_memory,
            Box::new(move |id| reader.load(id)),
        );
        let started = Instant::now();
        let db = crate::db::Deferred::new(&runtime.dir);
        Owner {
            config,
            runtime,
            opts,
            sources,
            keeper: Keeper::default(),
            notifier,
            last_status: Instant::now(),
            started,
            queue,
            running: Vec::new(),
            inflight: VecDeque::new(),
            next_id: 0,
            keep_for_caller: false,
            kept: None,
            background: Vec::new(),
            paused: false,
            stopping: false,
            book: Book::new(journal),
            clients: Clients::new(started),
            firmware: Default::default(),
            devnodes: DevNodes::default(),
            rebroadcast: Rebroadcast::default(),
            db,
        }
    }

    /// Queue what the journal kept from a run that did not stop cleanly, and start SEQNUM
    /// ordering after the last SEQNUM that run was done with (else after the kernel's).
    pub fn recover(&mut self, rec: Recovered) {
        self.queue.set_done_before(rec.done_seqs);
        match rec.max_done {
            Some(m) if !rec.stopped_cleanly => self.queue.start_at_kernel(m),
            _ => self.start_position(),
        }
        if !rec.events.is_empty() {
            log::warn!(
                "the last run did not stop cleanly: {} events from the journal queued again",
                rec.events.len()
            );
        }
        let now = Instant::now();
        for ev in rec.events {
            self.book.stats.recovered += 1;
            self.push(ev, now);
        }
        self.book.journal.drop_idle();
    }

    /// One line for `STATUS=`.
    pub fn status_text(&self) -> String {
        format!(
            "{} queued, {} handled{}",
            self.queue.pending(),
            self.book.stats.handled,
            if self.paused { ", paused" } else { "" }
        )
    }

    pub fn config_name(&self) -> String {
        match &self.config.path {
            Some(p) => p.display().to_string(),
            None => "the embedded default".into(),
        }
    }

    /// When the oldest gap wait runs out, if the queue waits on one.
    pub fn gap_deadline(&self) -> Option<Instant> {
        self.queue.deadline()
    }

    /// Where SEQNUM ordering starts: right after the kernel's current SEQNUM, read from
    /// `seqnum_file`. Events below it (spooled before we started, or in flight now) are
    /// each taken once as "late", so nothing from before our start waits on a gap. Without
    /// the file, the first numbered event sets the start.
    fn start_position(&mut self) {
        let Some(path) = &self.config.daemon.seqnum_file else {
            return;
        };
        match std::fs::read_to_string(path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => {
                    log::debug!("{}: kernel SEQNUM is {n}", path.display());
                    self.queue.start_at_kernel(n);
                }
                Err(_) => log::warn!(
                    "{}: {:?} is not a SEQNUM; the first event sets the start",
                    path.display(),
                    text.trim()
                ),
            },
            Err(e) => log::warn!("{}: {e}; the first event sets the start", path.display()),
        }
    }

    /// Queue what shims spooled while no daemon ran, in SEQNUM order, before any FIFO event.
    pub fn ingest_spool_at_start(&mut self) {
        let entries = match self.runtime.spool.entries() {
            Ok(e) => e,
            Err(e) => {
                log::error!("{}: {e}", self.runtime.spool.dir().display());
                return;
            }
        };
        let batch: Vec<(Event, PathBuf)> = entries
            .into_iter()
            .filter_map(|p| sources::read_spooled(&self.runtime.spool, &p).map(|ev| (ev, p)))
            .collect();
        if !batch.is_empty() {
            log::info!("{} events from the spool", batch.len());
        }
        self.on_input(Input::Spooled(batch));
    }

    /// [`Owner::after_change`] for a lane that has just gone free: the first event that
    /// may start is returned for it to run, not sent. Sending it would wake an idle lane
    /// (the channel wakes a blocked receiver on every send) only for that lane to find
    /// nothing, as the caller takes it first; on a busy machine such a wake-up can cost a
    /// scheduler tick.
    pub fn after_change_for_free_lane(&mut self, work: &Sender<Work>) -> Option<Work> {
        self.keep_for_caller = true;
        self.after_change(work);
        self.keep_for_caller = false;
        self.kept.take()
    }

    /// What follows every change, whoever made it: the done records on file, the next
    /// event to an idle runner, monitors and settles served, the supervisor's STATUS.
    pub fn after_change(&mut self, work: &Sender<Work>) {
        // A recall or a coalesced pair may have been all that held finished events back.
        self.retire();
        self.book.flush();
        self.dispatch(work);
        self.clients.feed_monitors(&mut self.queue);
        let unfinished = self.running.iter().map(|r| &r.work.event).chain(
            self.inflight
                .iter()
                .filter_map(|f| f.done.as_ref().map(Done::event)),
        );
        // Entries not yet on file count as unfinished work for a settle.
        let db = self.db.pending();
        let db_only = self.clients.check_waiters(&self.queue, unfinished, db);
        self.db.want_wake(db_only);
        if self.last_status.elapsed() >= Duration::from_secs(1) {
            self.last_status = Instant::now();
            self.notifier
                .notify(&format!("STATUS={}", self.status_text()));
        }
    }

    pub fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Fifo(events) => {
                let spilled = self.queue.spilled();
                for ev in events {
                    self.book.stats.received += 1;
                    self.push(ev, now);
                }
                if self.queue.spilled() >= spilled + 4096 {
                    // Spilled events were freed all over the heap: hand the pages back.
                    // SAFETY: malloc_trim only returns free memory to the kernel.
                    unsafe { libc::malloc_trim(0) };
                }
            }
            Input::Spooled(batch) => {
                for (mut ev, path) in batch {
                    self.book.stats.received += 1;
                    self.book.stats.spooled_in += 1;
                    // Journaled before the spool file goes, so a kill in between re-reads
                    // it (a duplicate the queue drops) rather than losing it. Not
                    // journaled, the file is its only durable copy: it stays, and the
                    // next start reads it again (a duplicate if it was handled by then).
                    let durable = self.book.append(&mut ev);
                    self.push(ev, now);
                    if !durable {
                        log::warn!(
                            "{}: kept until the next start, as the journal failed",
                            path.display()
                        );
                    } else if let Err(e) = std::fs::remove_file(&path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            log::warn!("{}: {e}", path.display());
                        }
                    }
                }
            }
            Input::Netlink(events) => {
                // Journaled by the netlink reader as it read them.
                for ev in events {
                    self.book.stats.received += 1;
                    self.book.stats.netlink_in += 1;
                    self.push(ev, now);
                }
            }
            Input::Bad(n) => self.book.stats.bad_messages += n,
            Input::Sealed(n) => self.book.journal.sealed(n),
            Input::FifoClosed => {}
        }
    }

    fn push(&mut self, ev: Event, now: Instant) {
        // The hot path formats nothing: a summary only when a debug line will show it.
        let debug = log::log_enabled!(log::Level::Debug).then(|| ev.summary().to_string());
        let id = ev.id();
        // A copy for the firmware loader, which takes it only once the queue has: a
        // duplicate must not be answered again. Requests are rare.
        let request = crate::firmware::is_request(&ev).then(|| ev.clone());
        let pushed = self.queue.push(ev, now);
        if let Some(request) = request.filter(|_| !matches!(pushed, Push::Duplicate(_))) {
            self.firmware.offer(&request);
        }
        match pushed {
            Push::Queued | Push::Waiting => {
                self.book.queued(id);
                if let Some(summary) = debug {
                    log::debug!("queued {summary}")
                }
            }
            Push::Late => {
                self.book.late(id);
                let summary = self
                    .queue
                    .newest()
                    .map_or(String::from("-"), |e| e.summary().to_string());
                log::info!(
                    "late {summary}: its SEQNUM was skipped or predates this start; queued now"
                );
            }
            Push::Duplicate(ev) => {
                self.book.duplicate(&ev);
                log::info!(
                    "duplicate {}: already queued or handled; ignoring it",
                    ev.summary()
                );
            }
            Push::Coalesced {
                add,
                remove,
                add_was_queued,
            } => {
                self.book.coalesced(&add, &remove, add_was_queued);
                let how = if add_was_queued {
                    " still queued"
                } else {
                    ", which arrived after it"
                };
                log::info!(
                    "coalesced {} with its add (SEQNUM {}){how}: neither runs",
                    remove.summary(),
                    add.seqnum().map_or("-".into(), |s| s.to_string())
                );
                // Neither will be handled: a `trigger --settle` waiting for either one's
                // tag must count it as settled, or it waits out its timeout.
                self.clients.count_tag(&add);
                self.clients.count_tag(&remove);
            }
        }
    }

    /// Skip every gap whose wait has run out: each range is logged, counted and drawn
    /// once, with the time its wait really began.
    pub fn expire_gaps(&mut self) {
        let now = Instant::now();
        for Expired { range, since } in self.queue.expire_gaps(now) {
            self.book.stats.gaps_skipped += range.end() - range.start() + 1;
            log::warn!(
                "SEQNUM {}..={} did not arrive within {:?}; going on without them",
                range.start(),
                range.end(),
                self.config.daemon.gap_timeout
            );
            self.clients.gap_skipped(range, since, now);
        }
    }

    /// Give idle lanes the next events with handlers: with one worker, the oldest event
    /// once the runner is idle; with more, each event that [`crate::lanes`] lets start.
    fn dispatch(&mut self, work_tx: &Sender<Work>) {
        if self.stopping || self.paused {
            return;
        }
        while self.running.len() < self.config.daemon.workers {
            let Some(Pick {
                pos,
                exclusive,
                oldest,
            }) = self.pick()
            else {
                return;
            };
            // Nothing older is unfinished or untaken: it may be finished at once.
            let in_order = oldest && self.inflight.is_empty();
            let Some(ev) = self.queue.take_at(pos) else {
                return;
            };
            // Before the handlers, so they find the node with its mode and links. Events
            // pay one test when no rule has node keys and no device holds anything.
            let mut nodes_only = false;
            if self.config.rules.has_nodes() || self.devnodes.active() {
                let dev_dir = &self.config.daemon.dev_dir;
                if ev.action() == b"remove" {
                    self.devnodes.remove(dev_dir, ev);
                } else if let Some(actions) = self.config.rules.node_actions(ev) {
                    self.devnodes.apply(dev_dir, ev, &actions);
                    nodes_only = true;
                }
            }
            let jobs = self.config.rules.plan(ev);
            let jobs = self.firmware.without_loaders(ev, &self.config.rules, jobs);
            if jobs.is_empty() {
                if nodes_only {
                    log::info!("{}: node actions only, no handler", ev.summary());
                } else {
                    log::info!("{}: no rule matched", ev.summary());
                }
                let record =
                    self.config.daemon.device_db && (nodes_only || ev.action() == b"remove");
                if in_order {
                    // Always so with one worker: finished now, without a copy.
                    finisher!(self).finish(ev, None, record);
                } else {
                    let event = ev.clone();
                    self.insert_inflight(pos, Some(Done::Unhandled { event, record }));
                    self.retire();
                }
                continue;
            }
            let jobs: Vec<Job> = jobs
                .into_iter()
                .map(|mut j| {
                    j.timeout.get_or_insert(self.config.daemon.handler_timeout);
                    j
                })
                .collect();
            // Every event finished so far is on record before a handler starts: after a
            // kill only the ones running now (or, with lanes, done behind an older one)
            // can run again.
            self.book.flush();
            self.next_id += 1;
            let work = Arc::new(Dispatch {
                id: self.next_id,
                event: ev.clone(),
                jobs,
                max_output: self.config.daemon.max_output_bytes,
                max_background: self.config.daemon.max_background,
                imported: Vec::new(),
            });
            let lane = (0..).find(|l| self.running.iter().all(|r| r.lane != *l));
            self.running.push(Running {
                work: Arc::clone(&work),
                job: 0,
                since: Instant::now(),
                pos,
                lane: lane.unwrap_or(0),
                exclusive,
            });
            self.insert_inflight(pos, None);
            if self.keep_for_caller && self.kept.is_none() {
                self.kept = Some(work);
            } else {
                let _ = work_tx.send(work);
            }
        }
    }

    /// The next event to start; `None` when there is none or every candidate waits for a
    /// relative (see [`crate::lanes`]).
    fn pick(&mut self) -> Option<Pick> {
        let d = &self.config.daemon;
        if d.workers == 1 {
            // The caller saw the runner idle: the oldest event goes, as ever.
            let pos = self.queue.first_untaken();
            return (pos != u64::MAX).then_some(Pick {
                pos,
                exclusive: false,
                oldest: true,
            });
        }
        let rules = &self.config.rules;
        let running = candidates(&self.running);
        let mut picker = Picker::new(&running);
        for (i, (pos, ev)) in self.queue.untaken(LOOKAHEAD).enumerate() {
            let exclusive = rules.exclusive(ev, &d.exclusive_subsystems);
            let c = Candidate {
                devpath: ev.devpath(),
                exclusive,
            };
            match picker.consider(c) {
                Verdict::Start => {
                    return Some(Pick {
                        pos,
                        exclusive,
                        oldest: i == 0,
                    })
                }
                Verdict::Blocked(_) => {}
                Verdict::Stop => return None,
            }
        }
        None
    }

    /// The untaken events that wait for a running or older relative, each with what it
    /// waits for (`pending`, `status`); on the lanes' scan, so only with `workers` > 1.
    fn blocked(&mut self) -> Vec<(Option<u64>, crate::status::PendingBlocker)> {
        let d = &self.config.daemon;
        if d.workers == 1 {
            return Vec::new();
        }
        let rules = &self.config.rules;
        let running = candidates(&self.running);
        let mut picker = Picker::new(&running);
        let mut seen: Vec<&Event> = Vec::new();
        let mut out = Vec::new();
        for (_, ev) in self.queue.untaken(LOOKAHEAD) {
            let c = Candidate {
                devpath: ev.devpath(),
                exclusive: rules.exclusive(ev, &d.exclusive_subsystems),
            };
            let on = match picker.consider(c) {
                Verdict::Blocked(Blocker::Running(i)) => &self.running[i].work.event,
                Verdict::Blocked(Blocker::Earlier(i)) => seen[i],
                Verdict::Start | Verdict::Stop => break,
            };
            out.push((ev.seqnum(), crate::status::PendingBlocker::of(on)));
            seen.push(ev);
        }
        out
    }

    fn insert_inflight(&mut self, pos: u64, done: Option<Done>) {
        let i = self.inflight.partition_point(|f| f.pos < pos);
        self.inflight.insert(i, Inflight { pos, done });
    }

    /// Finish the handled events that are next in release order: every event taken
    /// before them is finished, and none older waits untaken. So the database,
    /// rebroadcast and the done records follow SEQNUM order whatever the lanes did.
    fn retire(&mut self) {
        while self.inflight.front().is_some_and(|f| f.done.is_some()) {
            if self.inflight[0].pos >= self.queue.first_untaken() {
                return;
            }
            let Some(Inflight {
                done: Some(done), ..
            }) = self.inflight.pop_front()
            else {
                return;
            };
            match done {
                Done::Handled(work) => finisher!(self).finish(&work.event, Some(&work), true),
                Done::Unhandled { event, record } => finisher!(self).finish(&event, None, record),
            }
        }
    }

    /// The running event of this [`Dispatch::id`], out of `running`.
    fn take_running(&mut self, id: u64) -> Option<Running> {
        let i = self.running.iter().position(|r| r.work.id == id)?;
        Some(self.running.swap_remove(i))
    }

    /// Whether no handler runs in the foreground.
    pub fn idle(&self) -> bool {
        self.running.is_empty()
    }

    /// A handler run of event `id` ended; `last` if it was its event's last. After an
    /// import that set properties, the event's work changes (see [`Owner::import`]): the
    /// new one is returned, for the runner to go on with from the next job.
    pub fn on_runner(&mut self, id: u64, report: &Report, last: bool) -> Option<Work> {
        let mut running = self.take_running(id)?;
        self.log_outcome(&running.work, running.job, running.lane, report, false);
        let mut replaced = None;
        let mut last = last;
        if running.work.jobs[running.job].import {
            if let Some(work) = self.import(&running, report) {
                last = running.job + 1 == work.jobs.len();
                running.work = Arc::clone(&work);
                replaced = Some(work);
            }
        }
        self.next_job(running, last);
        replaced
    }

    /// The running job is over for the runner: on to the event's next one, or the event
    /// is done and finished in its turn.
    fn next_job(&mut self, running: Running, last: bool) {
        if last {
            if let Some(f) = self.inflight.iter_mut().find(|f| f.pos == running.pos) {
                f.done = Some(Done::Handled(running.work));
            }
            self.retire();
        } else {
            // The runner goes straight on to the event's next handler.
            self.running.push(Running {
                job: running.job + 1,
                since: Instant::now(),
                ..running
            })
        }
    }

    fn log_outcome(
        &mut self,
        work: &Dispatch,
        job: usize,
        lane: usize,
        report: &Report,
        background: bool,
    ) {
        let rule = rule_of(work, job);
        let level = match &report.outcome {
            o if o.success() => log::Level::Info,
            Outcome::TimedOut { .. } => {
                self.book.stats.timed_out += 1;
                log::Level::Warn
            }
            _ => {
                self.book.stats.failed += 1;
                log::Level::Warn
            }
        };
        if log::log_enabled!(level) {
            log::log!(
                level,
                "{}: rule {rule}{}: {} in {:.1} ms",
                work.event.summary(),
                if background { " (background)" } else { "" },
                report.outcome,
                report.duration.as_secs_f64() * 1e3
            );
        }
        self.clients
            .ran(work.event.seqnum(), rule, lane, report, background);
    }

    pub fn on_control(&mut self, msg: ToOwner) {
        match msg {
            ToOwner::MonitorReady(id) => self.clients.monitor_ready(id),
            ToOwner::MonitorGone(id) => self.clients.drop_monitor(id, &mut self.queue),
            ToOwner::Request(req, tx) => self.on_request(req, tx),
        }
    }

    fn on_request(&mut self, req: Request, tx: Sender<Reply>) {
        let ok = |tx: &Sender<Reply>, text: &str| {
            let _ = tx.send(Reply::End(End::Ok(text.into())));
        };
        match req {
            Request::Status => {
                let blocked = self.blocked().into_iter().next().map(|(seq, on)| {
                    format!("SEQNUM {}: {on}", seq.map_or("-".into(), |s| s.to_string()))
                });
                let oldest = self.running.iter().min_by_key(|r| r.pos);
                let lines = self.clients.status_lines(&OwnerStatus {
                    queue: &self.queue,
                    stats: &self.book.stats,
                    paused: self.paused,
                    running: oldest.map(|r| (r.rule(), r.seqnum(), r.since)),
                    workers: self.config.daemon.workers,
                    running_events: self.running.len(),
                    blocked,
                    background: self.background.len(),
                    keeper: &self.keeper,
                    sources: self.sources,
                });
                let _ = tx.send(Reply::Lines(lines));
                ok(&tx, "");
            }
            Request::Pending { json } => {
                use crate::status::{Pending, PendingEvent, PendingState};
                let lanes = self.config.daemon.workers > 1;
                let mut running: Vec<&Running> = self.running.iter().collect();
                running.sort_by_key(|r| r.pos);
                let running: Vec<PendingEvent> = running
                    .into_iter()
                    .map(|r| PendingEvent {
                        lane: lanes.then_some(r.lane as u64),
                        ..PendingEvent::of(PendingState::Running, &r.work.event)
                    })
                    .collect();
                let mut queued = self.queue.pending_events();
                for (seq, on) in self.blocked() {
                    let q = queued.iter_mut().find(|q| {
                        q.seqnum == seq && q.state == PendingState::Queued && q.waiting_on.is_none()
                    });
                    if let Some(q) = q {
                        q.waiting_on = Some(on);
                    }
                }
                let pending = Pending {
                    events: running.into_iter().chain(queued).collect(),
                    waiting_for: self.queue.waiting_for(),
                    background: self.pending_background(),
                };
                let lines = if json {
                    vec![serde_json::to_string(&pending).expect("plain data serializes")]
                } else {
                    pending.lines()
                };
                let _ = tx.send(Reply::Lines(lines));
                ok(&tx, "");
            }
            Request::Monitor(opts) => self.clients.attach_monitor(opts, tx, &mut self.queue),
            Request::Settle(upto) => {
                if let Some(seq) = upto {
                    self.queue.expect(seq, Instant::now());
                    // Nothing numbered seen yet and no SEQNUM file: `seq` may be on its
                    // way, so the settle waits for the first event; the client says why.
                    if self.queue.next_expected().is_none() {
                        let _ = tx.send(Reply::Lines(vec!["start-unknown".into()]));
                    }
                }
                self.clients.settle(upto, tx);
            }
            Request::Reload => match self.reload() {
                Ok(n) => ok(&tx, &format!("{n} rules")),
                Err(errors) => {
                    let _ = tx.send(Reply::Lines(errors));
                    let _ = tx.send(Reply::End(End::Error(
                        "config errors; keeping the old rules".into(),
                    )));
                }
            },
            Request::Recall(seq) => match self.queue.recall(seq) {
                Ok(ev) => {
                    self.book.recalled(&ev);
                    // Recalled is settled, as far as a `trigger --settle` is concerned.
                    self.clients.count_tag(&ev);
                    log::info!("recalled SEQNUM {seq}");
                    ok(&tx, "");
                }
                Err(e) => {
                    let _ = tx.send(Reply::End(End::Error(e.to_string())));
                }
            },
            Request::Pause => {
                self.paused = true;
                log::info!("paused: handlers will not start until resume");
                ok(&tx, "");
            }
            Request::Resume => {
                self.paused = false;
                log::info!("resumed");
                ok(&tx, "");
            }
            Request::LogLevel(level) => {
                log::set_max_level(level);
                log::info!("log level now {level}");
                ok(&tx, "");
            }
            Request::Inject(mut ev) => {
                // "queued" promises the event survives a crash: without the journal only
                // the client holds it, so it is told to try again.
                if let Err(e) = self.book.journal.append(&mut ev) {
                    log::error!(
                        "journal {}: {e}; refusing injected {}",
                        self.book.journal.dir().display(),
                        ev.summary()
                    );
                    let _ = tx.send(Reply::End(End::Error(format!(
                        "not queued: the journal cannot take it ({e})"
                    ))));
                    return;
                }
                self.book.stats.received += 1;
                self.push(ev, Instant::now());
                ok(&tx, "queued");
            }
            Request::WaitTag { tag, count } => self.clients.wait_tag(tag, count, tx),
            Request::WaitDevice(devpath) => self.clients.wait_device(devpath, tx),
            Request::Timeline => {
                let _ = tx.send(Reply::Lines(self.clients.timeline_lines()));
                ok(&tx, "");
            }
        }
    }

    /// Load the config again; on success swap it in. Errors as lines for the caller.
    pub fn reload(&mut self) -> Result<usize, Vec<String>> {
        self.notifier.reloading();
        let result = self.load_config();
        self.notifier
            .notify(&format!("READY=1\nSTATUS={}", self.status_text()));
        result
    }

    fn load_config(&mut self) -> Result<usize, Vec<String>> {
        match Config::load(self.opts.config.as_deref()) {
            Ok(config) => {
                self.queue
                    .set_gap_timeout(config.daemon.gap_timeout, config.daemon.coalesce);
                self.queue.set_limit(config.daemon.max_queue_memory);
                if config.daemon.sources != self.config.daemon.sources {
                    log::warn!("reload: a change of sources takes effect at the next start");
                }
                let mut config = config;
                if config.daemon.workers != self.config.daemon.workers {
                    log::warn!(
                        "reload: workers = {} takes effect at the next start; {} run now",
                        config.daemon.workers,
                        self.config.daemon.workers
                    );
                    config.daemon.workers = self.config.daemon.workers;
                }
                if config.daemon.dev_dir != self.config.daemon.dev_dir && self.devnodes.active() {
                    log::warn!(
                        "reload: dev_dir changed; links and nodes made under {} stay there",
                        self.config.daemon.dev_dir.display()
                    );
                }
                let n = config.rules.len();
                let d = &config.daemon;
                self.firmware.configure(&d.firmware_dirs, &d.sysfs_dir);
                self.config = config;
                log::info!("reloaded {}: {n} rules", self.config_name());
                Ok(n)
            }
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("reload: {e}");
                }
                log::error!("reload failed; keeping the old rules");
                Err(errors.0.iter().map(|e| e.to_string()).collect())
            }
        }
    }

    /// Hand every queued event to the spool and empty the journal (a clean stop), unless
    /// the FIFO reader may still be filling a segment (`sources_done` false: it did not
    /// finish in time), or some event could not be spooled.
    pub fn hand_over(&mut self, sources_done: bool) {
        let rest = self.queue.drain_pending();
        // Events that finished while an older one waited for its relative: that one goes
        // to the spool, so they are finished now, out of turn.
        self.retire();
        let mut kept = 0;
        for ev in &rest {
            match self.runtime.spool.write(ev) {
                Ok(_) => {
                    kept += 1;
                    // Should the journal stay, the next start takes it from the spool.
                    self.book.journal.handed_over(ev);
                }
                Err(e) => log::error!("{}: cannot spool it: {e}", ev.summary()),
            }
        }
        self.book.flush();
        let journal = &mut self.book.journal;
        if !sources_done {
            // Its events of the segment are in no spool file: recovery finds them there.
            log::warn!(
                "journal {}: kept for the next start, as the FIFO reader may still be \
                 filling it",
                journal.dir().display()
            );
        } else if kept == rest.len() {
            // Everything queued is in the spool now: the journal has nothing left to keep.
            if let Err(e) = journal.clear() {
                log::warn!("journal {}: {e}", journal.dir().display());
            }
        } else {
            log::error!(
                "{} events could not be spooled; the journal keeps them for the next start",
                rest.len() - kept
            );
        }
        log::info!(
            "stopped after {:.1} s: {} handled, {} queued events handed to {}",
            self.started.elapsed().as_secs_f64(),
            self.book.stats.handled,
            kept,
            self.runtime.spool.dir().display()
        );
    }
}
