//! The daemon's wiring: runtime directory, sources, signals, the runner thread, and the one
//! thread that owns the queue and decides everything.
//!
//! ```text
//!  fifo thread ──Input──┐
//!  spool thread ─Input──┤                      ┌──Work──> runner thread (one handler
//!  signal thread ─sig───┼──> owner (select!) ──┤                  at a time, in order)
//!  gap timer ──after()──┘     owns the Queue   └<─Done───
//! ```
//!
//! The owner blocks in `select!` over intake, runner results, signals and the gap deadline;
//! it never sleeps or polls. After each wake-up it hands the runner the next event if the
//! runner is idle, so handlers run strictly one at a time, in the queue's order.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, unbounded, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::Config;
use crate::event::Event;
use crate::queue::{Push, Queue, RUNNER};
use crate::rules::Job;
use crate::runner::{self, Outcome, Report};
use crate::runtime::Runtime;
use crate::sources::{self, Input};

/// Grace between SIGTERM and SIGKILL for a handler past its timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the daemon was started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub runtime_dir: PathBuf,
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
    pub handled: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub recalled: u64,
    pub coalesced: u64,
    pub bad_messages: u64,
    pub duplicates: u64,
    pub late: u64,
    pub gaps_skipped: u64,
    pub last_handled: Option<u64>,
}

/// One event for the runner: its handlers, in order.
struct Work {
    event: Event,
    jobs: Vec<Job>,
}

struct Done {
    event: Event,
    reports: Vec<(String, Report)>,
}

/// Run the daemon until SIGTERM/SIGINT. Returns once queued events are handed to the spool.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    let config = Config::load(opts.config.as_deref())?;
    let runtime = Runtime::open(&opts.runtime_dir)?;
    let fifo = runtime.open_fifo()?;
    // Handlers inherit the cwd: set it here, once, so the runner need not ask std for a
    // chdir in the child (which would cost the posix_spawn path).
    std::env::set_current_dir("/").map_err(io("chdir /"))?;

    let (input_tx, input_rx) = unbounded();
    let (sig_tx, sig_rx) = unbounded();
    let (work_tx, work_rx) = unbounded::<Work>();
    let (done_tx, done_rx) = unbounded::<Done>();

    let mut owner = Owner::new(config, runtime, opts);
    owner.start_position();
    owner.ingest_spool_at_start();

    spawn_signals(sig_tx)?;
    let (fifo_stop_r, fifo_stop_w) = stop_pipe()?;
    let (spool_stop_r, spool_stop_w) = stop_pipe()?;
    sources::spawn_fifo_reader(fifo, fifo_stop_r, input_tx.clone()).map_err(io("fifo thread"))?;
    sources::spawn_spool_watcher(owner.runtime.spool.clone(), spool_stop_r, input_tx)
        .map_err(io("spool watcher"))?;
    spawn_runner(work_rx, done_tx, owner.max_output())?;
    log::info!(
        "hotplugd {} ready on {} ({} rules from {})",
        env!("CARGO_PKG_VERSION"),
        owner.runtime.dir.display(),
        owner.config.rules.len(),
        owner.config_name()
    );

    owner.serve(&input_rx, &sig_rx, &work_tx, &done_rx);

    // Shutdown: no new writers can reach the FIFO once it is unlinked (they spool), the
    // reader drains what the pipe holds, the running handler finishes, and everything
    // still queued goes back to the spool for the next start.
    let fifo_path = owner.runtime.fifo_path();
    if let Err(e) = std::fs::remove_file(&fifo_path) {
        log::warn!("{}: {e}", fifo_path.display());
    }
    let _ = nix::unistd::write(&fifo_stop_w, b"x");
    let _ = nix::unistd::write(&spool_stop_w, b"x");
    owner.finish(&input_rx, &done_rx);
    Ok(())
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

fn spawn_runner(
    work_rx: Receiver<Work>,
    done_tx: Sender<Done>,
    max_output: usize,
) -> Result<(), DaemonError> {
    thread::Builder::new()
        .name("runner".into())
        .spawn(move || {
            for work in work_rx {
                let mut reports = Vec::with_capacity(work.jobs.len());
                for job in &work.jobs {
                    let spec = runner::Spec {
                        rule: &job.rule,
                        argv: &job.argv,
                        event: &work.event,
                        timeout: job.timeout.unwrap_or(Duration::from_secs(30)),
                        kill_grace: KILL_GRACE,
                        max_output_bytes: max_output,
                    };
                    reports.push((job.rule.clone(), runner::run(&spec)));
                }
                let done = Done {
                    event: work.event,
                    reports,
                };
                if done_tx.send(done).is_err() {
                    return;
                }
            }
        })
        .map_err(io("runner thread"))?;
    Ok(())
}

/// The queue's owner and everything only it touches.
struct Owner {
    config: Config,
    runtime: Runtime,
    opts: Options,
    queue: Queue,
    stats: Stats,
    busy: bool,
    stopping: bool,
    started: Instant,
}

impl Owner {
    fn new(config: Config, runtime: Runtime, opts: Options) -> Owner {
        let queue = Queue::new(config.daemon.gap_timeout, config.daemon.coalesce);
        Owner {
            config,
            runtime,
            opts,
            queue,
            stats: Stats::default(),
            busy: false,
            stopping: false,
            started: Instant::now(),
        }
    }

    fn max_output(&self) -> usize {
        self.config.daemon.max_output_bytes
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

    fn serve(
        &mut self,
        input_rx: &Receiver<Input>,
        sig_rx: &Receiver<i32>,
        work_tx: &Sender<Work>,
        done_rx: &Receiver<Done>,
    ) {
        loop {
            self.dispatch(work_tx);
            let gap = match self.queue.deadline() {
                Some(t) => after(t.saturating_duration_since(Instant::now())),
                None => never(),
            };
            select! {
                recv(input_rx) -> msg => match msg {
                    Ok(input) => self.on_input(input),
                    Err(_) => return,
                },
                recv(done_rx) -> msg => {
                    if let Ok(done) = msg {
                        self.on_done(done);
                    }
                },
                recv(sig_rx) -> sig => match sig {
                    Ok(SIGHUP) => self.reload(),
                    Ok(sig) => {
                        log::info!("signal {sig}: stopping");
                        self.stopping = true;
                        return;
                    }
                    Err(_) => return,
                },
                recv(gap) -> _ => self.expire_gap(),
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Fifo(events) => {
                for ev in events {
                    self.stats.received += 1;
                    self.push(ev, now);
                }
            }
            Input::Spooled(batch) => {
                for (ev, path) in batch {
                    self.stats.received += 1;
                    self.stats.spooled_in += 1;
                    self.push(ev, now);
                    if let Err(e) = std::fs::remove_file(&path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            log::warn!("{}: {e}", path.display());
                        }
                    }
                }
            }
            Input::Bad(n) => self.stats.bad_messages += n,
            Input::FifoClosed => {}
        }
    }

    fn push(&mut self, ev: Event, now: Instant) {
        let summary = ev.summary().to_string();
        match self.queue.push(ev, now) {
            Push::Queued | Push::Waiting => log::debug!("queued {summary}"),
            Push::Late => {
                self.stats.late += 1;
                log::info!(
                    "late {summary}: its SEQNUM was skipped or predates this start; queued now"
                );
            }
            Push::Duplicate => {
                self.stats.duplicates += 1;
                log::info!("duplicate {summary}: already queued or handled; ignoring it");
            }
            Push::Coalesced { add } => {
                self.stats.coalesced += 2;
                self.stats.recalled += 2;
                log::info!(
                    "coalesced {summary} with its add (SEQNUM {}) still queued: neither runs",
                    add.map_or("-".into(), |s| s.to_string())
                );
            }
        }
    }

    fn expire_gap(&mut self) {
        if let Some(range) = self.queue.expire_gap(Instant::now()) {
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
        if self.busy || self.stopping {
            return;
        }
        while let Some(ev) = self.queue.next(RUNNER) {
            let jobs = self.config.rules.plan(ev);
            if jobs.is_empty() {
                log::info!("{}: no rule matched", ev.summary());
                self.stats.handled += 1;
                self.stats.last_handled = ev.seqnum().or(self.stats.last_handled);
                continue;
            }
            let jobs = jobs
                .into_iter()
                .map(|mut j| {
                    j.timeout.get_or_insert(self.config.daemon.handler_timeout);
                    j
                })
                .collect();
            self.busy = true;
            let _ = work_tx.send(Work {
                event: ev.clone(),
                jobs,
            });
            return;
        }
    }

    fn on_done(&mut self, done: Done) {
        self.busy = false;
        self.stats.handled += 1;
        self.stats.last_handled = done.event.seqnum().or(self.stats.last_handled);
        for (rule, report) in &done.reports {
            let what = format!(
                "{}: rule {rule}: {} in {:.1} ms",
                done.event.summary(),
                report.outcome,
                report.duration.as_secs_f64() * 1e3
            );
            match &report.outcome {
                o if o.success() => log::info!("{what}"),
                Outcome::TimedOut { .. } => {
                    self.stats.timed_out += 1;
                    log::warn!("{what}")
                }
                _ => {
                    self.stats.failed += 1;
                    log::warn!("{what}")
                }
            }
        }
    }

    fn reload(&mut self) {
        match Config::load(self.opts.config.as_deref()) {
            Ok(config) => {
                self.queue
                    .set_gap_timeout(config.daemon.gap_timeout, config.daemon.coalesce);
                log::info!(
                    "reloaded {}: {} rules",
                    self.config_name(),
                    config.rules.len()
                );
                self.config = config;
            }
            Err(errors) => {
                for e in &errors.0 {
                    log::error!("reload: {e}");
                }
                log::error!("reload failed; keeping the old rules");
            }
        }
    }

    /// After intake stopped: take in what the FIFO still held, let the running handler
    /// finish, and hand every queued event to the spool.
    fn finish(&mut self, input_rx: &Receiver<Input>, done_rx: &Receiver<Done>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match input_rx.recv_deadline(deadline) {
                Ok(Input::FifoClosed) | Err(_) => break,
                Ok(input) => self.on_input(input),
            }
        }
        while let Ok(input) = input_rx.try_recv() {
            self.on_input(input);
        }
        if self.busy {
            log::info!("waiting for the running handler to finish");
            if let Ok(done) = done_rx.recv() {
                self.on_done(done);
            }
        }
        let rest = self.queue.drain_pending();
        let mut kept = 0;
        for ev in &rest {
            match self.runtime.spool.write(ev) {
                Ok(_) => kept += 1,
                Err(e) => log::error!("{}: event LOST: {e}", ev.summary()),
            }
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

/// The path the daemon reads its config from when none is given.
pub fn default_config_path() -> &'static Path {
    Path::new(crate::config::DEFAULT_PATH)
}
