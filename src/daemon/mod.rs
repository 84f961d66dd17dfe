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
//!
//! The rooms, top to bottom (each calls only the ones below it):
//! - `mod.rs`, the wiring: start-up, threads, channels, signals, `serve` and `finish`;
//! - `owner.rs`: the `Owner`, intake, push, dispatch, the runner's results, gap expiry,
//!   control requests, reload and the hand-over to the spool;
//! - `clients.rs`: monitors, settles, tag waits, and the `status` and `timeline` replies;
//! - `book.rs`: the journal and the counters, what is on record about each event.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, unbounded, Receiver, RecvTimeoutError, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::activation::{self, Notifier};
use crate::config::{Config, Sources, SourcesSetting};
use crate::control::{self, ToOwner};
use crate::helper::Helper;
use crate::holder::{Holder, Keeper};
use crate::journal::Journal;
use crate::runner;
use crate::runtime::{self, Runtime};
use crate::sources::{self, Input};

mod book;
mod clients;
mod owner;

pub use book::Stats;
pub use clients::MONITOR_MAX_LAG;
use owner::{Owner, Work};

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
    // Whatever else we were started with must not reach handlers, nor be held open.
    let ours: Vec<_> = activated.fds().into_iter().chain(notifier.fds()).collect();
    activation::close_inherited_fds(&ours);
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
    // A flush wakes the main thread when a settle waits for the entries it wrote.
    owner.db.set_waker(idle_tx.clone());
    owner.keeper = keeper.clone();
    // Before anything is queued: a request from the spool or the journal may still be
    // waiting in the kernel.
    owner.firmware = crate::firmware::Intake::spawn().map_err(io("firmware thread"))?;
    let d = &owner.config.daemon;
    owner.firmware.configure(&d.firmware_dirs, &d.sysfs_dir);
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
    let background = spawn_runner(work_rx, work_tx.clone(), idle_tx, Arc::clone(&shared))?;
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
    finish_background(&shared, &background);
    Ok(())
}

/// The owner's lock. Never poisoned in practice: a panic aborts the daemon.
fn lock(owner: &Mutex<Owner>) -> MutexGuard<'_, Owner> {
    owner.lock().unwrap_or_else(|e| e.into_inner())
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
///
/// A job of a `background` rule (with `max_background` above 0) is only started, once a
/// slot is free, and handed to the supervisor; for the queue it is over then. So an event
/// is done once its foreground handlers have ended and its background ones have started,
/// and that is what the journal records: after a crash, at-least-once covers starting
/// them. The returned supervisor is the stop's, to wait for them.
fn spawn_runner(
    work_rx: Receiver<Work>,
    work_tx: Sender<Work>,
    idle_tx: Sender<()>,
    owner: Arc<Mutex<Owner>>,
) -> Result<runner::Supervisor, DaemonError> {
    let theirs = Arc::clone(&owner);
    let supervisor = runner::Supervisor::spawn(move |pid, report| {
        lock(&theirs).on_background_exit(pid, report);
    })
    .map_err(io("background handler thread"))?;
    let workers = lock(&owner).config.daemon.workers;
    for lane in 0..workers {
        let (work_rx, work_tx, idle_tx) = (work_rx.clone(), work_tx.clone(), idle_tx.clone());
        let (owner, background) = (Arc::clone(&owner), supervisor.clone());
        thread::Builder::new()
            .name(if workers == 1 {
                "runner".into()
            } else {
                format!("runner{lane}")
            })
            .spawn(move || run_lane(workers, work_rx, work_tx, idle_tx, owner, background))
            .map_err(io("runner thread"))?;
    }
    Ok(supervisor)
}

/// One runner thread: takes the next work from the owner's channel, runs its handlers
/// in order, and reports each under the owner's lock. With `workers` threads, which
/// thread takes an event does not matter: the owner sent it because it may start.
fn run_lane(
    workers: usize,
    work_rx: Receiver<Work>,
    work_tx: Sender<Work>,
    idle_tx: Sender<()>,
    owner: Arc<Mutex<Owner>>,
    background: runner::Supervisor,
) {
    // One runner may wait on the process's SIGCHLD signalfd; several would take
    // each other's wakeups, so each lane waits for its own handler (io_uring, else a
    // pidfd).
    let mut handlers = if workers == 1 {
        runner::Runner::with_blocked_sigchld()
    } else {
        runner::Runner::for_lane()
    };
    let db = lock(&owner).db.clone();
    let flush = db.clone();
    handlers.set_after_spawn(Box::new(move |late| flush.flush_due(late)));
    // The next event, when this lane took it as it went free (see
    // `Owner::after_change_for_free_lane`).
    let mut next: Option<Work> = None;
    loop {
        let work = match next.take().or_else(|| work_rx.try_recv().ok()) {
            Some(work) => work,
            None => {
                // Entries still pending go on file before this thread waits for work.
                db.flush();
                match work_rx.recv() {
                    Ok(work) => work,
                    Err(_) => return,
                }
            }
        };
        // An import may replace the work (the event with its properties, and the
        // rules after the importer planned again): the loop goes on in the new one.
        let mut work = work;
        let mut i = 0;
        while let Some(job) = work.jobs.get(i) {
            let spec = runner::Spec {
                rule: &job.rule,
                argv: &job.argv,
                event: &work.event,
                timeout: job.timeout.unwrap_or(Duration::from_secs(30)),
                kill_grace: KILL_GRACE,
                max_output_bytes: work.max_output,
                import: job.import,
            };
            let last = i + 1 == work.jobs.len();
            i += 1;
            let report = if job.background && work.max_background > 0 {
                match start_background(&mut handlers, &background, &spec, &work) {
                    Ok(handler) => {
                        let mut owner = lock(&owner);
                        owner.on_background_started(
                            work.id,
                            handler.pid(),
                            handler.started(),
                            last,
                        );
                        next = after_job(&mut owner, last, &work_tx, &idle_tx);
                        drop(owner);
                        background.watch(handler);
                        continue;
                    }
                    Err(report) => report,
                }
            } else {
                handlers.run(&spec)
            };
            let mut owner = lock(&owner);
            let replaced = owner.on_runner(work.id, &report, last);
            next = after_job(&mut owner, last && replaced.is_none(), &work_tx, &idle_tx);
            drop(owner);
            if let Some(new) = replaced {
                work = new;
            }
        }
    }
}

/// After a job's end was reported: the next event for this lane when it went `free`
/// (its event is done), else the change served as any; and whoever waits for the lanes
/// (a stopping daemon) told when none runs.
fn after_job(
    owner: &mut Owner,
    free: bool,
    work_tx: &Sender<Work>,
    idle_tx: &Sender<()>,
) -> Option<Work> {
    let next = if free {
        owner.after_change_for_free_lane(work_tx)
    } else {
        owner.after_change(work_tx);
        None
    };
    if owner.idle() {
        let _ = idle_tx.try_send(());
    }
    next
}

/// Take a background slot, waiting while `max_background` handlers run (the queue waits
/// with the runner), and start the handler. A spawn failure gives the slot back and is
/// reported as a foreground run's would be.
fn start_background(
    handlers: &mut runner::Runner,
    supervisor: &runner::Supervisor,
    spec: &runner::Spec,
    work: &owner::Dispatch,
) -> Result<runner::Detached, runner::Report> {
    supervisor.acquire(work.max_background, || {
        log::info!(
            "{}: rule {}: {} background handlers run (max_background), waiting for one to end",
            work.event.summary(),
            spec.rule,
            work.max_background
        )
    });
    handlers.start(spec).inspect_err(|_| supervisor.release())
}

/// The main thread's loop: wait for intake, requests, signals or the gap deadline, and
/// handle each under the owner's lock. Returns when the daemon is to stop.
fn serve(owner: &Mutex<Owner>, ch: &Channels) {
    let db = lock(owner).db.clone();
    loop {
        let gap = {
            let mut o = lock(owner);
            o.after_change(&ch.work);
            match o.gap_deadline() {
                Some(t) => after(t.saturating_duration_since(Instant::now())),
                None => never(),
            }
        };
        // Entries of events that ran no handler (finished at dispatch, just now): no
        // runner writes them, as none spawns for them. A settle waiting for them is
        // woken by the flush.
        db.flush();
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

/// At a stop, after the queue went to the spool: background handlers are seen to their
/// end, as the running foreground one is, each still under its own timeout, so their
/// exits are logged and counted and none is left unsupervised (their events are done and
/// will not run again). The timeouts bound the wait, as they bound the foreground one's.
fn finish_background(owner: &Mutex<Owner>, supervisor: &runner::Supervisor) {
    if supervisor.running() == 0 {
        return;
    }
    let lines = lock(owner).background_summary();
    log::info!(
        "waiting for {} background handlers to end: {}",
        lines.len(),
        lines.join("; ")
    );
    supervisor.wait_all();
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
    if !lock(owner).idle() {
        log::info!("waiting for the running handlers to finish");
        // `stopping` keeps the runners from taking another event; they say when idle.
        while !lock(owner).idle() {
            if ch.idle.recv().is_err() {
                break;
            }
        }
    }
    let db = {
        let mut owner = lock(owner);
        owner.hand_over(sources_done);
        owner.db.clone()
    };
    db.flush();
}
