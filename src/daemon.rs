//! The daemon's wiring: runtime directory, sources, signals, the runner thread, and the one
//! thread that owns the queue and decides everything.
//!
//! ```text
//!  fifo thread ──Input──┐                       ┌──Work──> runner thread (one handler
//!  spool thread ─Input──┤                       │              at a time, in order)
//!  signal thread ─sig───┼──> main (select!) ──> Owner <──────── (locks it when a
//!  gap timer ──after()──┘                    (the Queue,         handler ends)
//!                                             in a Mutex)
//! ```
//!
//! The `Owner` holds the queue and every decision about it. The main thread blocks in
//! `select!` over intake, control requests, signals and the gap deadline, and handles each
//! under the owner's lock; it never sleeps or polls. When a handler ends, the runner
//! thread takes the same lock itself to record the outcome and, the moment the event is
//! done and on record, to take the next one: between one handler's exit and the next one's
//! spawn no other thread has to wake up. That handoff is the daemon's whole per-handler
//! overhead, so it costs one uncontended lock instead of two cross-thread wakeups. Handlers
//! still run strictly one at a time, in the queue's order.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, unbounded, Receiver, RecvTimeoutError, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::activation::{self, Notifier};
use crate::config::{Config, Sources, SourcesSetting};
use crate::control::{self, End, MonitorOpts, Reply, Request, ToOwner};
use crate::event::Event;
use crate::helper::Helper;
use crate::holder::{Holder, Keeper};
use crate::journal::{Journal, Recovered};
use crate::queue::{Expired, Push, Queue, ReaderId, RUNNER};
use crate::rules::Job;
use crate::runner::{self, Outcome, Report};
use crate::runtime::{self, Runtime};
use crate::sources::{self, Input};

/// Grace between SIGTERM and SIGKILL for a handler past its timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the daemon was started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub runtime_dir: PathBuf,
    /// s6-style readiness: write a newline to this fd when ready.
    pub ready_fd: Option<std::os::fd::RawFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("{0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Counters, as `hotplugctl status` reports them.
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
    pub monitor_overruns: u64,
    pub recovered: u64,
    pub last_handled: Option<u64>,
}

/// One event for the runner: its handlers, in order. Shared with the owner's [`Running`]
/// so status and logs can name it without a copy.
struct Dispatch {
    event: Event,
    jobs: Vec<Job>,
    /// Taken from the config at dispatch, so a reload applies to the next event.
    max_output: usize,
}

type Work = Arc<Dispatch>;

/// Run the daemon until SIGTERM/SIGINT. Returns once queued events are handed to the spool.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    // One malloc arena: events are allocated on the FIFO thread and freed on the owner's;
    // with per-thread arenas the freed memory is not reused and RSS outgrows the cap.
    // SAFETY: mallopt only tunes the allocator, before any thread starts.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // Handler exits reach the runner as SIGCHLD on a signalfd: blocked here, before the
    // first thread starts, so every thread has it blocked and none takes it instead.
    runner::block_sigchld().map_err(|e| io("blocking SIGCHLD")(e.into()))?;
    // Likewise the signal that wakes the FIFO reader: only its thread takes it.
    sources::block_wake_signal().map_err(io("blocking the FIFO reader's wake signal"))?;
    let activated = activation::take_listen_fds().map_err(io("socket activation"))?;
    let notifier = Notifier::new(opts.ready_fd).map_err(io("readiness"))?;
    // Whatever else we were started with must not reach handlers.
    close_inherited_fds();
    let config = Config::load(opts.config.as_deref())?;
    let runtime = Runtime::open(&opts.runtime_dir)?;
    // A FIFO passed by the supervisor outlives us with its buffered events: then we
    // neither drain it at shutdown nor unlink it.
    let supervised = activated.fifo.is_some();
    let kernel_helper = Helper::inspect();
    let sources = config.daemon.sources.resolve(kernel_helper.has_knob());
    let fifo = match activated.fifo {
        Some(fd) => Some(runtime::prepare_fifo(fd, &runtime.fifo_path())?),
        None if sources.fifo => Some(runtime.open_fifo()?),
        // No helper source: no FIFO, so a shim run anyway spools and nothing waits in a
        // pipe nobody reads.
        None => None,
    };
    // Before the kernel's SEQNUM is read (in `Owner::new`), so every later event reaches
    // the socket.
    let netlink = if sources.netlink {
        Some(
            crate::netlink::open(config.daemon.netlink_buffer)
                .map_err(io("netlink socket (NETLINK_KOBJECT_UEVENT)"))?,
        )
    } else {
        None
    };
    let control_path = runtime.dir.join(crate::spool::CONTROL);
    let own_socket = activated.control.is_none();
    let listener = match activated.control {
        Some(l) => l,
        None => control::bind(&control_path).map_err(io(control_path.display().to_string()))?,
    };
    let (journal, recovered) = Journal::open(&runtime.dir).map_err(io("journal"))?;
    // Handlers inherit the cwd: set it here, once, rather than in every child.
    std::env::set_current_dir("/").map_err(io("chdir /"))?;
    // Last of the steps that can fail, so a start that fails leaves no new holder; and
    // before ready, so the pipe's buffer outlives us from then on.
    let keeper = match &fifo {
        Some(_) if supervised => Keeper::Supervisor,
        Some(fd) => match Holder::start(&runtime.dir, fd) {
            Ok(h) => Keeper::Holder(Some(h)),
            Err(e) => {
                log::error!(
                    "FIFO holder: {e}; events in the FIFO's buffer will be lost if the daemon dies"
                );
                Keeper::Holder(None)
            }
        },
        None => Keeper::NoFifo,
    };

    // Bounded: if the owner falls behind, the FIFO reader waits, the pipe fills and shims
    // spool, rather than batches piling up in memory.
    let (input_tx, input_rx) = crossbeam_channel::bounded(4);
    let (sig_tx, sig_rx) = unbounded();
    let (work_tx, work_rx) = unbounded::<Work>();
    // The runner says "idle" here when it ran out of work; a full channel already says so.
    let (idle_tx, idle_rx) = crossbeam_channel::bounded::<()>(1);
    let (ctl_tx, ctl_rx) = unbounded::<ToOwner>();

    let fifo_journal = journal.fifo();
    let netlink_journal = journal.appender();
    let live = Sources {
        fifo: fifo.is_some(),
        netlink: netlink.is_some(),
    };
    let mut owner = Owner::new(config, runtime, opts, journal, notifier, live);
    owner.keeper = keeper.clone();
    owner.recover(recovered);
    owner.ingest_spool_at_start();

    spawn_signals(sig_tx)?;
    let (spool_stop_r, spool_stop_w) = stop_pipe()?;
    let fifo_reader = fifo
        .map(|fifo| {
            sources::spawn_fifo_reader(fifo, fifo_journal, !supervised, input_tx.clone())
                .map_err(io("fifo thread"))
        })
        .transpose()?;
    let (netlink_stop_r, netlink_stop_w) = stop_pipe()?;
    if let Some(sock) = netlink {
        crate::netlink::spawn_reader(
            sock,
            netlink_stop_r,
            "/sys".into(),
            netlink_journal,
            input_tx.clone(),
        )
        .map_err(io("netlink thread"))?;
    }
    sources::spawn_spool_watcher(owner.runtime.spool.clone(), spool_stop_r, input_tx)
        .map_err(io("spool watcher"))?;
    let shared = Arc::new(Mutex::new(owner));
    spawn_runner(work_rx, work_tx.clone(), idle_tx, Arc::clone(&shared))?;
    control::spawn_server(listener, ctl_tx).map_err(io("control thread"))?;
    let mut owner = lock(&shared);
    // Loud, and again in every `status`: a daemon that hears nothing looks just like an
    // idle one.
    if let Some(warning) = kernel_helper.warning(live) {
        log::warn!("{warning}");
    }
    log::info!(
        "hotplugd {} ready on {} ({} rules from {}; kernel helper {}; {}events from {})",
        env!("CARGO_PKG_VERSION"),
        owner.runtime.dir.display(),
        owner.config.rules.len(),
        owner.config_name(),
        kernel_helper,
        match owner.config.daemon.sources {
            SourcesSetting::Auto => "sources auto: ",
            SourcesSetting::Listed(_) => "",
        },
        match (supervised, live.fifo, live.netlink) {
            (true, _, false) => "the FIFO held by the supervisor",
            (true, _, true) => "the FIFO held by the supervisor and netlink",
            (false, true, false) => "the FIFO",
            (false, true, true) => "the FIFO and netlink",
            (false, false, _) => "netlink",
        }
    );
    let status = owner.status_text();
    owner.notifier.ready(&status);

    let chans = Channels {
        input: input_rx,
        signals: sig_rx,
        work: work_tx,
        idle: idle_rx,
        control: ctl_rx,
    };
    drop(owner);
    serve(&shared, &chans);
    lock(&shared).notifier.notify("STOPPING=1");
    // Gone before the last drain: a shim's late write then fails and spools, rather than
    // landing in a pipe that only the holder, about to exit, still holds. Until the FIFO
    // is removed below, our own fd keeps the pipe, and we read what it gets.
    if let Keeper::Holder(Some(holder)) = &keeper {
        holder.stop();
    }
    let owner = lock(&shared);

    // Shutdown: no new writers can reach the FIFO once it is unlinked (they spool), the
    // reader drains what the pipe holds, the running handler finishes, and everything
    // still queued goes back to the spool for the next start.
    if !supervised && live.fifo {
        let fifo_path = owner.runtime.fifo_path();
        if let Err(e) = std::fs::remove_file(&fifo_path) {
            log::warn!("{}: {e}", fifo_path.display());
        }
    }
    if own_socket {
        let _ = std::fs::remove_file(&control_path);
    }
    drop(owner);
    if let Some(reader) = &fifo_reader {
        reader.stop();
    }
    let _ = nix::unistd::write(&netlink_stop_w, b"x");
    let _ = nix::unistd::write(&spool_stop_w, b"x");
    finish(&shared, &chans, fifo_reader.as_ref());
    Ok(())
}

/// The owner's lock. Never poisoned in practice: a panic aborts the daemon.
fn lock(owner: &Mutex<Owner>) -> MutexGuard<'_, Owner> {
    owner.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mark every fd above 2 close-on-exec: handlers get exactly stdin, stdout and stderr.
fn close_inherited_fds() {
    // SAFETY: close_range only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Before Linux 5.11: one by one.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for fd in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            if fd > 2 {
                // SAFETY: setting a flag on an fd number; harmless if it is gone.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

struct Channels {
    input: Receiver<Input>,
    signals: Receiver<i32>,
    work: Sender<Work>,
    idle: Receiver<()>,
    control: Receiver<ToOwner>,
}

fn stop_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), DaemonError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))
}

fn spawn_signals(tx: Sender<i32>) -> Result<(), DaemonError> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(io("signals"))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })
        .map_err(io("signal thread"))?;
    Ok(())
}

/// The runner thread: runs each event's handlers, and after each run records it in the
/// owner itself (see the module docs). Recording the last run of an event hands the next
/// event to `work` if there is one, so the next `recv` returns at once.
fn spawn_runner(
    work_rx: Receiver<Work>,
    work_tx: Sender<Work>,
    idle_tx: Sender<()>,
    owner: Arc<Mutex<Owner>>,
) -> Result<(), DaemonError> {
    thread::Builder::new()
        .name("runner".into())
        .spawn(move || {
            let mut handlers = runner::Runner::with_blocked_sigchld();
            for work in work_rx {
                for (i, job) in work.jobs.iter().enumerate() {
                    let spec = runner::Spec {
                        rule: &job.rule,
                        argv: &job.argv,
                        event: &work.event,
                        timeout: job.timeout.unwrap_or(Duration::from_secs(30)),
                        kill_grace: KILL_GRACE,
                        max_output_bytes: work.max_output,
                    };
                    let report = handlers.run(&spec);
                    let last = i + 1 == work.jobs.len();
                    let mut owner = lock(&owner);
                    owner.on_runner(&report, last);
                    owner.after_change(&work_tx);
                    if owner.running.is_none() {
                        // Whoever waits for the runner (a stopping daemon) may go on.
                        let _ = idle_tx.try_send(());
                    }
                }
            }
        })
        .map_err(io("runner thread"))?;
    Ok(())
}

/// A monitor falls this many events behind the newest, and it is dropped.
pub const MONITOR_MAX_LAG: u64 = 10_000;
/// Events handed to a monitor's connection per batch.
const MONITOR_BATCH: usize = 512;
/// Tags (`SYNTH_UUID`) whose handled counts are remembered for `wait-tag`.
const MAX_TAGS: usize = 64;

/// Handler runs and gap waits remembered for `hotplugctl timeline`.
const TIMELINE_LEN: usize = 10_000;

/// The event the runner has now; `job` indexes the handler running.
struct Running {
    work: Work,
    job: usize,
    since: Instant,
}

impl Running {
    fn rule(&self) -> &str {
        self.work
            .jobs
            .get(self.job)
            .map_or("-", |j| j.rule.as_str())
    }
    fn seqnum(&self) -> Option<u64> {
        self.work.event.seqnum()
    }
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
        gap: std::ops::RangeInclusive<u64>,
    },
}

/// A `hotplugctl monitor` connection: queue events through its own cursor (`reader`), or
/// handler outcomes when `opts.handled`.
struct Monitor {
    reader: Option<ReaderId>,
    tx: Sender<Reply>,
    ready: bool,
    opts: MonitorOpts,
}

/// A `settle` waiting for the queue to drain through `upto`.
struct Settle {
    upto: Option<u64>,
    tx: Sender<Reply>,
    last: Option<(usize, Instant)>,
}

/// The queue's owner and everything only it touches.
struct Owner {
    config: Config,
    runtime: Runtime,
    opts: Options,
    queue: Queue,
    stats: Stats,
    running: Option<Running>,
    paused: bool,
    stopping: bool,
    started: Instant,
    monitors: HashMap<u64, Monitor>,
    next_monitor: u64,
    settles: Vec<Settle>,
    tag_waits: Vec<(String, u64, Sender<Reply>)>,
    tags_done: VecDeque<(String, u64)>,
    /// Handler runs and gap waits, formatted only when `hotplugctl timeline` asks.
    timeline: VecDeque<Mark>,
    journal: Journal,
    journal_warn: sources::RateLimit,
    notifier: Notifier,
    last_status: Instant,
    /// The sources opened at start-up (a reload does not change them).
    sources: Sources,
    /// Who keeps the FIFO open if we die, for `status`.
    keeper: Keeper,
}

impl Owner {
    fn new(
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
        Owner {
            config,
            runtime,
            opts,
            queue,
            stats: Stats::default(),
            running: None,
            paused: false,
            stopping: false,
            started: Instant::now(),
            monitors: HashMap::new(),
            next_monitor: 0,
            settles: Vec::new(),
            tag_waits: Vec::new(),
            tags_done: VecDeque::new(),
            timeline: VecDeque::new(),
            journal,
            journal_warn: sources::RateLimit::new(3, Duration::from_secs(60)),
            notifier,
            last_status: Instant::now(),
            sources,
            keeper: Keeper::default(),
        }
    }

    /// Queue what the journal kept from a run that did not stop cleanly, and start SEQNUM
    /// ordering after the last SEQNUM that run was done with (else after the kernel's).
    fn recover(&mut self, rec: Recovered) {
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
            self.stats.recovered += 1;
            self.push(ev, now);
        }
        self.journal.drop_idle();
    }

    /// One line for `STATUS=`.
    fn status_text(&self) -> String {
        format!(
            "{} queued, {} handled{}",
            self.queue.pending(),
            self.stats.handled,
            if self.paused { ", paused" } else { "" }
        )
    }

    fn flush_journal(&mut self) {
        flush_journal(&mut self.journal, &mut self.journal_warn);
    }

    fn config_name(&self) -> String {
        match &self.config.path {
            Some(p) => p.display().to_string(),
            None => "the embedded default".into(),
        }
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
    fn ingest_spool_at_start(&mut self) {
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

    /// What follows every change, whoever made it: the done records on file, the next
    /// event to an idle runner, monitors and settles served, the supervisor's STATUS.
    fn after_change(&mut self, work: &Sender<Work>) {
        self.flush_journal();
        self.dispatch(work);
        self.feed_monitors();
        self.check_waiters();
        if self.last_status.elapsed() >= Duration::from_secs(1) {
            self.last_status = Instant::now();
            self.notifier
                .notify(&format!("STATUS={}", self.status_text()));
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Fifo(events) => {
                let spilled = self.queue.spilled();
                for ev in events {
                    self.stats.received += 1;
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
                    self.stats.received += 1;
                    self.stats.spooled_in += 1;
                    // Journaled before the spool file goes, so a kill in between re-reads
                    // it (a duplicate the queue drops) rather than losing it. Not
                    // journaled, the file is its only durable copy: it stays, and the
                    // next start reads it again (a duplicate if it was handled by then).
                    let durable = self.journal_append(&mut ev);
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
                    self.stats.received += 1;
                    self.stats.netlink_in += 1;
                    self.push(ev, now);
                }
            }
            Input::Bad(n) => self.stats.bad_messages += n,
            Input::Sealed(n) => self.journal.sealed(n),
            Input::FifoClosed => {}
        }
    }

    /// Whether `ev` is in the journal now.
    fn journal_append(&mut self, ev: &mut Event) -> bool {
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

    fn push(&mut self, ev: Event, now: Instant) {
        // The hot path formats nothing: a summary only when a debug line will show it.
        let debug = log::log_enabled!(log::Level::Debug).then(|| ev.summary().to_string());
        let id = ev.id();
        match self.queue.push(ev, now) {
            Push::Queued | Push::Waiting => {
                self.journal.queued(id);
                if let Some(summary) = debug {
                    log::debug!("queued {summary}")
                }
            }
            Push::Late => {
                self.journal.queued(id);
                self.stats.late += 1;
                let summary = self
                    .queue
                    .newest()
                    .map_or(String::from("-"), |e| e.summary().to_string());
                log::info!(
                    "late {summary}: its SEQNUM was skipped or predates this start; queued now"
                );
            }
            Push::Duplicate(ev) => {
                self.journal.duplicate(&ev);
                self.stats.duplicates += 1;
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
                self.journal.done(&add, add_was_queued);
                self.journal.done(&remove, !add_was_queued);
                self.stats.coalesced += 2;
                self.stats.recalled += 2;
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
                self.count_tag(tag_of(&add));
                self.count_tag(tag_of(&remove));
            }
        }
    }

    fn record(&mut self, mark: Mark) {
        if self.timeline.len() == TIMELINE_LEN {
            self.timeline.pop_front();
        }
        self.timeline.push_back(mark);
    }

    /// The timeline as the protocol's `run START END SEQNUM RULE OUTCOME` and
    /// `wait START END FIRST LAST` lines, in seconds since the daemon started.
    fn timeline_lines(&self) -> Vec<String> {
        let secs = |t: Instant| self.since_start(t);
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

    fn since_start(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started).as_secs_f64()
    }

    /// Skip every gap whose wait has run out: each range is logged, counted and drawn
    /// once, with the time its wait really began.
    fn expire_gaps(&mut self) {
        let now = Instant::now();
        for Expired { range, since } in self.queue.expire_gaps(now) {
            self.record(Mark::Wait {
                began: since,
                ended: now,
                gap: range.clone(),
            });
            self.stats.gaps_skipped += range.end() - range.start() + 1;
            log::warn!(
                "SEQNUM {}..={} did not arrive within {:?}; going on without them",
                range.start(),
                range.end(),
                self.config.daemon.gap_timeout
            );
        }
    }

    /// Give the runner the next event with handlers, if it is idle.
    fn dispatch(&mut self, work_tx: &Sender<Work>) {
        if self.running.is_some() || self.stopping || self.paused {
            return;
        }
        while let Some(ev) = self.queue.next(RUNNER) {
            let jobs = self.config.rules.plan(ev);
            if jobs.is_empty() {
                log::info!("{}: no rule matched", ev.summary());
                finished(&mut self.journal, &mut self.stats, &mut self.tags_done, ev);
                continue;
            }
            let jobs: Vec<Job> = jobs
                .into_iter()
                .map(|mut j| {
                    j.timeout.get_or_insert(self.config.daemon.handler_timeout);
                    j
                })
                .collect();
            // Every event done so far is on record before a handler starts: after a kill
            // only the one running now can run again. (Over the owner's parts: `ev` is
            // still borrowed from the queue.)
            flush_journal(&mut self.journal, &mut self.journal_warn);
            let work = Arc::new(Dispatch {
                event: ev.clone(),
                jobs,
                max_output: self.config.daemon.max_output_bytes,
            });
            self.running = Some(Running {
                work: Arc::clone(&work),
                job: 0,
                since: Instant::now(),
            });
            let _ = work_tx.send(work);
            return;
        }
    }

    /// A handler run ended; `last` if it was its event's last.
    fn on_runner(&mut self, report: &Report, last: bool) {
        let Some(running) = self.running.take() else {
            return;
        };
        self.on_finished(&running, report);
        if last {
            let event = &running.work.event;
            finished(
                &mut self.journal,
                &mut self.stats,
                &mut self.tags_done,
                event,
            );
        } else {
            // The runner goes straight on to the event's next handler.
            self.running = Some(Running {
                job: running.job + 1,
                since: Instant::now(),
                ..running
            })
        }
    }

    fn on_finished(&mut self, running: &Running, report: &Report) {
        let rule = running.rule();
        let level = match &report.outcome {
            o if o.success() => log::Level::Info,
            Outcome::TimedOut { .. } => {
                self.stats.timed_out += 1;
                log::Level::Warn
            }
            _ => {
                self.stats.failed += 1;
                log::Level::Warn
            }
        };
        if log::log_enabled!(level) {
            log::log!(
                level,
                "{}: rule {rule}: {} in {:.1} ms",
                running.work.event.summary(),
                report.outcome,
                report.duration.as_secs_f64() * 1e3
            );
        }
        self.record(Mark::Run {
            started: report.started,
            duration: report.duration,
            seqnum: running.seqnum(),
            rule: rule.to_owned(),
            outcome: report.outcome.clone(),
        });
        if !self.monitors.values().any(|m| m.opts.handled) {
            return;
        }
        let seq = running.seqnum().map_or("-".into(), |s| s.to_string());
        let line = format!(
            "{seq} {} {} {:.1}ms",
            control::escape_word(rule.as_bytes()),
            report.outcome.to_string().replace(' ', "_"),
            report.duration.as_secs_f64() * 1e3
        );
        let mut overrun = Vec::new();
        for (id, m) in &self.monitors {
            if m.opts.handled {
                if m.tx.len() > MONITOR_MAX_LAG as usize {
                    overrun.push(*id);
                } else {
                    let _ = m.tx.send(Reply::Lines(vec![line.clone()]));
                }
            }
        }
        for id in overrun {
            self.overrun(id);
        }
    }

    fn count_tag(&mut self, tag: Option<String>) {
        count_tag(&mut self.tags_done, tag);
    }

    fn on_control(&mut self, msg: ToOwner) {
        match msg {
            ToOwner::MonitorReady(id) => {
                if let Some(m) = self.monitors.get_mut(&id) {
                    m.ready = true;
                }
            }
            ToOwner::MonitorGone(id) => self.drop_monitor(id),
            ToOwner::Request(req, tx) => self.on_request(req, tx),
        }
    }

    fn on_request(&mut self, req: Request, tx: Sender<Reply>) {
        let ok = |tx: &Sender<Reply>, text: &str| {
            let _ = tx.send(Reply::End(End::Ok(text.into())));
        };
        match req {
            Request::Status => {
                let _ = tx.send(Reply::Lines(self.status_lines()));
                ok(&tx, "");
            }
            Request::Pending { json } => {
                use crate::status::{Pending, PendingEvent, PendingState};
                let running = self
                    .running
                    .as_ref()
                    .map(|r| PendingEvent::of(PendingState::Running, &r.work.event));
                let pending = Pending {
                    events: running
                        .into_iter()
                        .chain(self.queue.pending_events())
                        .collect(),
                    waiting_for: self.queue.waiting_for(),
                };
                let lines = if json {
                    vec![serde_json::to_string(&pending).expect("plain data serializes")]
                } else {
                    pending.lines()
                };
                let _ = tx.send(Reply::Lines(lines));
                ok(&tx, "");
            }
            Request::Monitor(opts) => {
                let id = self.next_monitor;
                self.next_monitor += 1;
                let reader = (!opts.handled).then(|| self.queue.add_reader());
                let _ = tx.send(Reply::Monitor(id));
                log::debug!("monitor {id} attached");
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
            Request::Settle(upto) => {
                if let Some(seq) = upto {
                    self.queue.expect(seq, Instant::now());
                    // Nothing numbered seen yet and no SEQNUM file: `seq` may be on its
                    // way, so the settle waits for the first event; the client says why.
                    if self.queue.next_expected().is_none() {
                        let _ = tx.send(Reply::Lines(vec!["start-unknown".into()]));
                    }
                }
                self.settles.push(Settle {
                    upto,
                    tx,
                    last: None,
                });
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
                    self.journal.done(&ev, true);
                    self.stats.recalled += 1;
                    // Recalled is settled, as far as a `trigger --settle` is concerned.
                    self.count_tag(tag_of(&ev));
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
                if let Err(e) = self.journal.append(&mut ev) {
                    log::error!(
                        "journal {}: {e}; refusing injected {}",
                        self.journal.dir().display(),
                        ev.summary()
                    );
                    let _ = tx.send(Reply::End(End::Error(format!(
                        "not queued: the journal cannot take it ({e})"
                    ))));
                    return;
                }
                self.stats.received += 1;
                self.push(ev, Instant::now());
                ok(&tx, "queued");
            }
            Request::WaitTag { tag, count } => self.tag_waits.push((tag, count, tx)),
            Request::Timeline => {
                let _ = tx.send(Reply::Lines(self.timeline_lines()));
                ok(&tx, "");
            }
        }
    }

    fn status_lines(&self) -> Vec<String> {
        let s = &self.stats;
        let helper = Helper::inspect();
        let running = self.running.as_ref();
        crate::status::Status {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            holder: Some(self.keeper.status()).filter(|k| k != "-"),
            queued: self.queue.pending() as u64,
            queue_bytes: self.queue.bytes() as u64,
            queue_memory: self.queue.memory() as u64,
            spilled: self.queue.spilled() as u64,
            waiting_for: self.queue.waiting_for(),
            next_expected: self.queue.next_expected(),
            paused: self.paused,
            running_rule: running
                .map(|r| r.rule())
                .filter(|r| *r != "-")
                .map(str::to_owned),
            running_seqnum: running.and_then(|r| r.seqnum()),
            running_for_ms: running.map(|r| r.since.elapsed().as_secs_f64() * 1e3),
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
            monitor_overruns: s.monitor_overruns,
            recovered: s.recovered,
            monitors: self.monitors.len() as u64,
            sources: self.sources.to_string(),
            // Read again each time: an admin may change the helper while we run.
            kernel_helper: helper.to_string(),
            warning: helper.warning(self.sources),
        }
        .lines()
    }

    /// Hand each ready monitor its next batch; drop the ones too far behind.
    fn feed_monitors(&mut self) {
        let ids: Vec<u64> = self.monitors.keys().copied().collect();
        for id in ids {
            let Some(m) = self.monitors.get(&id) else {
                continue;
            };
            let Some(reader) = m.reader else { continue };
            if self.queue.lag(reader) > MONITOR_MAX_LAG {
                self.overrun(id);
                continue;
            }
            if !m.ready {
                continue;
            }
            let opts = m.opts.clone();
            let mut lines = Vec::new();
            let mut taken = 0;
            while taken < MONITOR_BATCH {
                let Some(ev) = self.queue.next(reader) else {
                    break;
                };
                taken += 1;
                if !opts.wants(ev.subsystem()) {
                    continue;
                }
                lines.push(ev.summary().to_string());
                if opts.env {
                    lines
                        .extend(ev.vars().map(|(k, v)| {
                            format!("{}={}", control::escape(k), control::escape(v))
                        }));
                    lines.push(String::new());
                }
            }
            if let Some(m) = self.monitors.get_mut(&id) {
                if !lines.is_empty() {
                    m.ready = false;
                    let _ = m.tx.send(Reply::Lines(lines));
                }
            }
        }
    }

    fn overrun(&mut self, id: u64) {
        if let Some(m) = self.monitors.get(&id) {
            self.stats.monitor_overruns += 1;
            log::warn!("monitor {id} fell more than {MONITOR_MAX_LAG} events behind: dropping it");
            let _ = m.tx.send(Reply::End(End::Error(format!(
                "overrun: more than {MONITOR_MAX_LAG} events behind"
            ))));
        }
        self.drop_monitor(id);
    }

    fn drop_monitor(&mut self, id: u64) {
        if let Some(m) = self.monitors.remove(&id) {
            if let Some(reader) = m.reader {
                self.queue.remove_reader(reader);
            }
            log::debug!("monitor {id} detached");
        }
    }

    /// Answer the settles and tag waits whose condition now holds; report progress.
    fn check_waiters(&mut self) {
        let idle = self.running.is_none();
        let pending = self.queue.pending() + usize::from(!idle);
        let now = Instant::now();
        let queue = &self.queue;
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
        self.tag_waits.retain(|(tag, count, tx)| {
            let done = tags.iter().find(|(t, _)| t == tag).map_or(0, |(_, n)| *n);
            if done >= *count {
                let _ = tx.send(Reply::End(End::Ok(format!("{done} handled"))));
                false
            } else {
                true
            }
        });
    }

    /// Load the config again; on success swap it in. Errors as lines for the caller.
    fn reload(&mut self) -> Result<usize, Vec<String>> {
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
                let n = config.rules.len();
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
    fn hand_over(&mut self, sources_done: bool) {
        let rest = self.queue.drain_pending();
        let mut kept = 0;
        for ev in &rest {
            match self.runtime.spool.write(ev) {
                Ok(_) => {
                    kept += 1;
                    // Should the journal stay, the next start takes it from the spool.
                    self.journal.handed_over(ev);
                }
                Err(e) => log::error!("{}: cannot spool it: {e}", ev.summary()),
            }
        }
        self.flush_journal();
        if !sources_done {
            // Its events of the segment are in no spool file: recovery finds them there.
            log::warn!(
                "journal {}: kept for the next start, as the FIFO reader may still be \
                 filling it",
                self.journal.dir().display()
            );
        } else if kept == rest.len() {
            // Everything queued is in the spool now: the journal has nothing left to keep.
            if let Err(e) = self.journal.clear() {
                log::warn!("journal {}: {e}", self.journal.dir().display());
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
            self.stats.handled,
            kept,
            self.runtime.spool.dir().display()
        );
    }
}

/// The main thread's loop: wait for intake, requests, signals or the gap deadline, and
/// handle each under the owner's lock. Returns when the daemon is to stop.
fn serve(owner: &Mutex<Owner>, ch: &Channels) {
    loop {
        let gap = {
            let mut o = lock(owner);
            o.after_change(&ch.work);
            match o.queue.deadline() {
                Some(t) => after(t.saturating_duration_since(Instant::now())),
                None => never(),
            }
        };
        select! {
            recv(ch.input) -> msg => match msg {
                Ok(input) => lock(owner).on_input(input),
                Err(_) => return,
            },
            recv(ch.control) -> msg => {
                if let Ok(msg) = msg {
                    lock(owner).on_control(msg);
                }
            },
            recv(ch.idle) -> _ => {},
            recv(ch.signals) -> sig => match sig {
                Ok(SIGHUP) => {
                    let _ = lock(owner).reload();
                }
                Ok(sig) => {
                    log::info!("signal {sig}: stopping");
                    lock(owner).stopping = true;
                    return;
                }
                Err(_) => return,
            },
            recv(gap) -> _ => lock(owner).expire_gaps(),
        }
    }
}

/// After intake stopped: take in what the FIFO still held, let the running handler
/// finish, and hand every queued event to the spool.
fn finish(owner: &Mutex<Owner>, ch: &Channels, fifo_reader: Option<&sources::FifoStop>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sources_done = false;
    // Until the FIFO reader is done, or every source has exited.
    loop {
        let wait = deadline.min(Instant::now() + Duration::from_millis(20));
        match ch.input.recv_deadline(wait) {
            Ok(Input::FifoClosed) | Err(RecvTimeoutError::Disconnected) => {
                sources_done = true;
                break;
            }
            Ok(input) => lock(owner).on_input(input),
            Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                if fifo_reader.is_some() {
                    log::warn!(
                        "the FIFO reader did not finish its last drain in 5 s; stopping without it"
                    );
                } else {
                    log::warn!("the event sources did not stop in 5 s; stopping without them");
                }
                break;
            }
            // Its wake may have come just before its read(): wake it again.
            Err(RecvTimeoutError::Timeout) => fifo_reader.map_or((), sources::FifoStop::stop),
        }
    }
    while let Ok(input) = ch.input.try_recv() {
        lock(owner).on_input(input);
    }
    if lock(owner).running.is_some() {
        log::info!("waiting for the running handler to finish");
        // `stopping` keeps the runner from taking another event; it says when it is idle.
        while lock(owner).running.is_some() {
            if ch.idle.recv().is_err() {
                break;
            }
        }
    }
    lock(owner).hand_over(sources_done);
}

/// Write the buffered `done` records; failures are logged, rate-limited.
fn flush_journal(journal: &mut Journal, warn: &mut sources::RateLimit) {
    if let Err(e) = journal.flush() {
        if warn.allow("journal errors") {
            log::error!("journal {}: {e}", journal.dir().display());
        }
    }
}

/// An event left the queue for good: handled, or nothing to run for it. (Over the owner's
/// parts, so the event may stay borrowed from the queue: no copy per event.)
fn finished(
    journal: &mut Journal,
    stats: &mut Stats,
    tags: &mut VecDeque<(String, u64)>,
    ev: &Event,
) {
    journal.done(ev, true);
    stats.handled += 1;
    stats.last_handled = ev.seqnum().or(stats.last_handled);
    count_tag(tags, tag_of(ev));
}

fn count_tag(tags: &mut VecDeque<(String, u64)>, tag: Option<String>) {
    let Some(tag) = tag else { return };
    match tags.iter_mut().find(|(t, _)| *t == tag) {
        Some((_, n)) => *n += 1,
        None => {
            tags.push_back((tag, 1));
            if tags.len() > MAX_TAGS {
                tags.pop_front();
            }
        }
    }
}

/// The `SYNTH_UUID` a triggered event carries, if any.
fn tag_of(ev: &Event) -> Option<String> {
    ev.tag().map(|t| String::from_utf8_lossy(t).into_owned())
}
