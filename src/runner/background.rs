//! Handlers the queue does not wait for (`background = true`): the runner starts one like
//! any other, and a [`Supervisor`] thread sees it to its end.
//!
//! * **Started alike.** [`super::Runner::start`] spawns the handler with the same
//!   environment, fds and process group of its own as a foreground one, but on an output
//!   pipe of its own: the runner's reused pipe is read only while the runner waits, and a
//!   background handler's lines must never land in the next foreground handler's log.
//! * **Supervised alike.** The supervisor thread polls every background handler's pidfd
//!   and output pipe at once, logs the output under the same caps, enforces the same
//!   timeout phases (SIGTERM to the group, SIGKILL after the grace; [`super::phase`]) and
//!   hands each exit, as a [`Report`], to its `on_exit` (the daemon logs, counts and
//!   records it, as it does a foreground run).
//! * **Reaped by the right waiter.** Each waiter reaps only its own pids with
//!   `waitpid(pid)`, never `-1`. The daemon's runner waits on a SIGCHLD signalfd that a
//!   background exit also wakes: it re-checks its own child with `WNOHANG` and waits on,
//!   as it does for any SIGCHLD that is not its child's. The supervisor does not read
//!   that signalfd (the runner may have consumed the signal): it waits on a pidfd per
//!   handler, which no one else can consume, and falls back to a `WNOHANG` check every
//!   [`FALLBACK_TICK`] on kernels without `pidfd_open`.
//! * **Bounded.** [`Supervisor::acquire`] takes one of `max` slots before a start and
//!   blocks the runner while all are taken; the slot comes back when the handler has been
//!   reaped and reported. The runner blocked means the queue waits too: past the bound,
//!   background handlers are as serial as foreground ones, never unbounded.
//!
//! The foreground path does not change: one more flag test per handler.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::fcntl::OFlag;

use super::output::{log_msg, read_pipe, Drain, Msg, Output};
use super::phase::{advance, outcome, Phase, Seq, Who, READS_AFTER_EXIT, READS_PER_WAKEUP};
use super::wait::{pidfd_open, reap, FALLBACK_TICK};
use super::{Report, Spec};
use crate::spawn::Child;

/// A started background handler, on its way to the supervisor.
pub struct Detached {
    child: Child,
    pipe: File,
    started: Instant,
    rule: String,
    seq: Option<u64>,
    timeout: Duration,
    kill_grace: Duration,
    max_output: usize,
}

impl Detached {
    pub(super) fn new(child: Child, pipe: File, started: Instant, spec: &Spec) -> Detached {
        Detached {
            child,
            pipe,
            started,
            rule: spec.rule.to_owned(),
            seq: spec.event.seqnum(),
            timeout: spec.timeout,
            kill_grace: spec.kill_grace,
            max_output: spec.max_output_bytes,
        }
    }

    /// Also its process group.
    pub fn pid(&self) -> u32 {
        self.child.pid as u32
    }

    /// Taken just before the spawn.
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// The count of background handlers between [`Supervisor::acquire`] and their report.
struct Slots {
    taken: Mutex<usize>,
    changed: Condvar,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle to the supervisor thread: hands it started handlers, bounds how many run.
#[derive(Clone)]
pub struct Supervisor {
    slots: Arc<Slots>,
    tx: Sender<Detached>,
    /// Written to after each send, so the thread's `poll` wakes for the new handler.
    wake: Arc<OwnedFd>,
}

impl Supervisor {
    /// Start the thread. `on_exit` gets each handler's pid and report once it is reaped,
    /// before its slot is given back.
    pub fn spawn(on_exit: impl FnMut(u32, &Report) + Send + 'static) -> io::Result<Supervisor> {
        let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let slots = Arc::new(Slots {
            taken: Mutex::new(0),
            changed: Condvar::new(),
        });
        let theirs = Arc::clone(&slots);
        thread::Builder::new()
            .name("background".into())
            .spawn(move || supervise(rx, wake_r, theirs, on_exit))?;
        Ok(Supervisor {
            slots,
            tx,
            wake: Arc::new(wake_w),
        })
    }

    /// Take a slot, first waiting while `max` handlers run. `waiting` is called once if
    /// it has to wait, to say so.
    pub fn acquire(&self, max: usize, waiting: impl FnOnce()) {
        let mut taken = self.slots.lock();
        if *taken >= max {
            waiting();
            while *taken >= max {
                taken = self
                    .slots
                    .changed
                    .wait(taken)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        *taken += 1;
    }

    /// Give back a slot taken for a handler that did not start.
    pub fn release(&self) {
        release(&self.slots);
    }

    /// See `handler` to its end.
    pub fn watch(&self, handler: Detached) {
        if self.tx.send(handler).is_ok() {
            // A full pipe already holds a wakeup.
            let _ = nix::unistd::write(self.wake.as_fd(), b"x");
        }
    }

    /// Background handlers not yet reported.
    pub fn running(&self) -> usize {
        *self.slots.lock()
    }

    /// Block until every background handler has been reported.
    pub fn wait_all(&self) {
        let mut taken = self.slots.lock();
        while *taken > 0 {
            taken = self
                .slots
                .changed
                .wait(taken)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn release(slots: &Slots) {
    let mut taken = slots.lock();
    *taken = taken.saturating_sub(1);
    slots.changed.notify_all();
}

/// One handler under watch.
struct Watched {
    d: Detached,
    /// `None`: no `pidfd_open`, so every tick asks `waitpid` instead.
    pidfd: Option<OwnedFd>,
    out: Output,
    /// Cleared on EOF or a read error.
    pipe_open: bool,
    phase: Phase,
}

impl Watched {
    fn who(&self) -> Who<'_> {
        Who {
            rule: &self.d.rule,
            seq: Seq(self.d.seq),
            pid: self.d.pid(),
            started: self.d.started,
            timeout: self.d.timeout,
            kill_grace: self.d.kill_grace,
        }
    }

    /// Log what the pipe holds, at most `reads` reads; `last`: the handler is gone, so
    /// a line without its newline is logged too.
    fn read(&mut self, buf: &mut [u8], reads: usize, last: bool) {
        let (rule, seq) = (&self.d.rule, Seq(self.d.seq));
        let mut sink = |msg: Msg<'_>| log_msg(rule, seq, msg);
        if self.pipe_open {
            let drain = read_pipe(&self.d.pipe, buf, reads, &mut self.out, &mut sink);
            self.pipe_open = drain != Drain::Closed;
        }
        if last {
            self.out.finish(&mut sink);
        }
    }
}

/// The supervisor thread's loop: one `poll` over the wake pipe and each handler's pidfd
/// and output pipe, with the nearest timeout phase as its deadline. Returns when the
/// handle is gone and no handler is left.
fn supervise(
    rx: Receiver<Detached>,
    wake: OwnedFd,
    slots: Arc<Slots>,
    mut on_exit: impl FnMut(u32, &Report),
) {
    let mut watched: Vec<Watched> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut open = true;
    loop {
        loop {
            match rx.try_recv() {
                Ok(d) => {
                    let pidfd = pidfd_open(d.pid());
                    watched.push(Watched {
                        out: Output::new(d.max_output),
                        d,
                        pidfd,
                        pipe_open: true,
                        phase: Phase::Running,
                    });
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open && watched.is_empty() {
            return;
        }

        let now = Instant::now();
        let mut due: Option<Instant> = None;
        for w in &mut watched {
            let who = w.who();
            let mut phase = w.phase;
            if phase.due(&who).is_some_and(|at| now >= at) {
                phase = advance(phase, now, &who);
            }
            let at = phase.due(&who);
            w.phase = phase;
            due = match (due, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut wait = due.map(|d| d.saturating_duration_since(now));
        if watched.iter().any(|w| w.pidfd.is_none()) {
            wait = Some(wait.map_or(FALLBACK_TICK, |w| w.min(FALLBACK_TICK)));
        }

        let entry = |fd: i32| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.clear();
        fds.push(entry(if open { wake.as_raw_fd() } else { -1 }));
        for w in &watched {
            fds.push(entry(w.pidfd.as_ref().map_or(-1, |f| f.as_raw_fd())));
            fds.push(entry(if w.pipe_open {
                w.d.pipe.as_raw_fd()
            } else {
                -1
            }));
        }
        let ms = match wait {
            None => -1,
            Some(w) => i32::try_from(w.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let err = nix::errno::Errno::last();
            if err != nix::errno::Errno::EINTR {
                log::warn!("background handlers: poll: {}", err.desc());
                thread::sleep(FALLBACK_TICK);
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut sink = [0u8; 64];
            while matches!(nix::unistd::read(wake.as_raw_fd(), &mut sink), Ok(n) if n > 0) {}
        }

        let mut i = 0;
        while i < watched.len() {
            let (exit_ready, pipe_ready) = (fds[1 + 2 * i].revents != 0, fds[2 + 2 * i].revents);
            let w = &mut watched[i];
            if pipe_ready != 0 {
                w.read(&mut buf, READS_PER_WAKEUP, false);
            }
            // Ask only when told, or on every tick without a pidfd.
            let status = if exit_ready || w.pidfd.is_none() {
                match reap(w.d.child, true) {
                    Ok(Some(st)) => Some(Ok(st)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            } else {
                None
            };
            let Some(status) = status else {
                i += 1;
                continue;
            };
            // `fds` still indexes the handlers after this one: keep their order.
            let mut w = watched.remove(i);
            fds.drain(1 + 2 * i..3 + 2 * i);
            let duration = w.d.started.elapsed();
            w.read(&mut buf, READS_AFTER_EXIT, true);
            let report = Report {
                outcome: outcome(w.phase, status, &w.who()),
                started: w.d.started,
                duration,
                pid: Some(w.d.pid()),
                captured: Vec::new(),
            };
            // Its pipe closes here: a straggler of its group that writes gets EPIPE.
            drop(w.pidfd.take());
            on_exit(w.d.pid(), &report);
            release(&slots);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::runner::{Outcome, Runner};
    use std::ffi::OsString;
    use std::sync::mpsc;

    const GUARD: Duration = Duration::from_secs(20);

    fn ev() -> Event {
        let vars: Vec<(&[u8], &[u8])> = vec![
            (b"ACTION", b"add"),
            (b"DEVPATH", b"/devices/test"),
            (b"SUBSYSTEM", b"usb"),
            (b"SEQNUM", b"7"),
        ];
        Event::from_vars(b"usb", vars).unwrap()
    }

    fn start(runner: &mut Runner, script: &str, timeout: Duration) -> Detached {
        let argv: Vec<OsString> = ["/bin/sh", "-c", script].map(OsString::from).into();
        let ev = ev();
        let spec = Spec {
            rule: "bg",
            argv: &argv,
            event: &ev,
            timeout,
            kill_grace: Duration::from_millis(200),
            max_output_bytes: 4096,
            import: false,
        };
        runner.start(&spec).expect("started")
    }

    /// Two handlers run at once and each exit comes back with its own pid; a timeout
    /// kills the whole group, grandchild included.
    #[test]
    fn handlers_run_side_by_side_and_each_exit_is_reported() {
        let (tx, rx) = mpsc::channel();
        let sup = Supervisor::spawn(move |pid, r: &Report| {
            let _ = tx.send((pid, r.outcome.clone()));
        })
        .unwrap();
        let mut runner = Runner::new();
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate");
        sup.acquire(2, || panic!("a slot is free"));
        let slow = start(
            &mut runner,
            &format!(
                "i=0; while [ ! -e {} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; exit 3",
                gate.display()
            ),
            GUARD,
        );
        let slow_pid = slow.pid();
        sup.watch(slow);
        sup.acquire(2, || panic!("a slot is free"));
        let quick = start(&mut runner, "echo hi; exit 0", GUARD);
        let quick_pid = quick.pid();
        sup.watch(quick);
        // The quick one ends while the slow one still waits for its gate.
        assert_eq!(
            rx.recv_timeout(GUARD).unwrap(),
            (quick_pid, Outcome::Exited(0))
        );
        // Its slot comes back just after the report (see `supervise`).
        let until = std::time::Instant::now() + GUARD;
        while sup.running() != 1 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sup.running(), 1);
        std::fs::write(&gate, "").unwrap();
        assert_eq!(
            rx.recv_timeout(GUARD).unwrap(),
            (slow_pid, Outcome::Exited(3))
        );
        sup.wait_all();

        sup.acquire(2, || panic!("a slot is free"));
        let hung = start(&mut runner, "sleep 60 & wait", Duration::from_millis(100));
        let pgid = nix::unistd::Pid::from_raw(hung.pid() as libc::pid_t);
        sup.watch(hung);
        let (_, outcome) = rx.recv_timeout(GUARD).unwrap();
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        assert_eq!(outcome, Outcome::TimedOut { killed: false });
    }

    #[test]
    fn a_full_supervisor_makes_the_next_start_wait() {
        let (tx, rx) = mpsc::channel();
        let sup = Supervisor::spawn(move |_, r: &Report| {
            let _ = tx.send(r.outcome.clone());
        })
        .unwrap();
        let mut runner = Runner::new();
        sup.acquire(1, || panic!("a slot is free"));
        sup.watch(start(&mut runner, "sleep 0.2", GUARD));
        let mut waited = false;
        sup.acquire(1, || waited = true);
        assert!(waited);
        // The slot came back only once the first one was reported.
        assert_eq!(rx.try_recv().unwrap(), Outcome::Exited(0));
        sup.release();
        assert_eq!(sup.running(), 0);
    }
}
