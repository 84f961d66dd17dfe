//! One run from spawn to reap: wait for the exit fd or output, read output as it comes,
//! and past the deadline step through SIGTERM to the process group, SIGKILL after the
//! grace period, then a note every [`STUCK_NOTE`] while a child survives even that.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::output::{log_msg, read_pipe, Drain, Msg, Output};
use super::wait::{pidfd_open, poll2, reap, FALLBACK_TICK};
use super::{spawn, Outcome, Report, Runner, Spec};

/// How often to complain about a child that survives SIGKILL (uninterruptible sleep).
const STUCK_NOTE: Duration = Duration::from_secs(10);

/// Reads per wakeup before going back to check deadlines, so a flooding handler cannot
/// starve the timeout.
pub(super) const READS_PER_WAKEUP: usize = 16;

/// Reads after the handler exited: what it left in the pipe (at most the pipe's
/// capacity, 1 MiB at the largest default limit), not a straggler's endless stream.
pub(super) const READS_AFTER_EXIT: usize = 64;

/// `SEQNUM` or `-`, for log prefixes.
#[derive(Clone, Copy)]
pub(super) struct Seq(pub Option<u64>);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("-"),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Phase {
    Running,
    /// SIGTERM sent; SIGKILL due at the instant.
    Termed(Instant),
    /// SIGKILL sent; next "still not gone" note at the instant.
    Killed(Instant),
}

pub(super) fn run_with(runner: &mut Runner, spec: &Spec) -> Report {
    let rule = spec.rule;
    let seq = Seq(spec.event.seqnum());
    let started = Instant::now();
    let child = match spawn(runner, spec) {
        Ok(child) => child,
        Err(why) => {
            return Report {
                outcome: Outcome::SpawnFailed(why),
                started,
                duration: started.elapsed(),
                pid: None,
                captured: Vec::new(),
            }
        }
    };
    // When the work after the spawn put some off, the time to do it anyway.
    let mut put_off = match &runner.after_spawn {
        Some(work) => work(false).and_then(|d| Instant::now().checked_add(d)),
        None => None,
    };
    let pid = child.pid as u32;
    let pgid = Pid::from_raw(child.pid);
    let who = Who {
        rule,
        seq,
        pid,
        started,
        timeout: spec.timeout,
        kill_grace: spec.kill_grace,
    };
    // A lane's ring is told the pid, and says when the child has exited (reaped). Else
    // an fd is readable once the child may have exited: the SIGCHLD signalfd (shared by
    // all runs, so a readable one is only a hint to try the wait), or this child's own
    // pidfd.
    let mut uring = runner.uring.as_mut();
    if let Some(ring) = uring.as_deref_mut() {
        if let Err(e) = ring.watch(child.pid) {
            log::warn!("[{rule} {seq}] io_uring: {e}; waiting with a pidfd");
            uring = None;
        }
    }
    let pidfd = match (&runner.sigchld, &uring, runner.use_pidfd) {
        (None, None, true) => pidfd_open(pid),
        _ => None,
    };
    let exit_fd: Option<RawFd> = match &runner.sigchld {
        Some(sfd) => Some(sfd.as_raw_fd()),
        None => pidfd.as_ref().map(|f| f.as_raw_fd()),
    };
    // Nothing to be told by: look every tick.
    let ticking = exit_fd.is_none() && uring.is_none();
    let mut sigchld = runner.sigchld.as_mut();

    // An importer's output is read up to MAX_IMPORT: its property lines are captured,
    // the rest logged as any handler's.
    let mut captured = Vec::new();
    let import = spec.import;
    let mut out = Output::new(if import {
        crate::props::MAX_IMPORT
    } else {
        spec.max_output_bytes
    });
    let mut sink = |msg: Msg<'_>| match msg {
        Msg::Line(line, false) if import && crate::props::split_line(line).is_some() => {
            captured.extend_from_slice(line);
            captured.push(b'\n');
        }
        Msg::Truncated(n) if import => log::warn!(
            target: "handler",
            "[{rule} {seq}] import output capped at {n} bytes; the rest is ignored"
        ),
        msg => log_msg(rule, seq, msg),
    };
    let buf = &mut runner.buf[..];
    let pipe = &runner.pipe.as_ref().expect("spawn made it").read;
    // Cleared on EOF or a read error: that pipe is done for.
    let mut pipe_open = true;
    // What the last read left: Drained means the pipe was empty.
    let mut last_read;
    let deadline = started.checked_add(spec.timeout);
    let mut phase = Phase::Running;
    // How the child ended, when the ring reaped it.
    let mut ended: Option<io::Result<libc::c_int>> = None;

    let status: io::Result<libc::c_int> = loop {
        let now = Instant::now();
        if put_off.is_some_and(|at| now >= at) {
            put_off = None;
            if let Some(work) = &runner.after_spawn {
                work(true);
            }
        }
        let due = match phase {
            Phase::Running => deadline,
            Phase::Termed(at) | Phase::Killed(at) => Some(at),
        };
        if due.is_some_and(|due| now >= due) {
            phase = advance(phase, now, &who);
            continue;
        }

        let mut wait = due.map(|due| due - now);
        if let Some(at) = put_off {
            wait = Some(wait.map_or(at - now, |w| w.min(at - now)));
        }
        if ticking {
            wait = Some(wait.map_or(FALLBACK_TICK, |w| w.min(FALLBACK_TICK)));
        }
        let (child_ready, pipe_ready) = match uring.as_deref_mut() {
            Some(ring) => {
                let (exit, pipe_ready) = ring.wait(pipe_open.then_some(pipe), wait);
                ended = exit;
                (ended.is_some(), pipe_ready)
            }
            None => poll2(exit_fd, pipe_open.then_some(pipe), wait),
        };

        if pipe_ready {
            last_read = read_pipe(pipe, buf, READS_PER_WAKEUP, &mut out, &mut sink);
            pipe_open &= last_read != Drain::Closed;
        } else if ticking {
            // Polled before the exit we may be about to see: read again after it.
            last_read = Drain::More;
        } else {
            // Told in the same wait as the exit: whatever the child wrote before it
            // exited would show (a pipe write wakes its poll before the exit wakes the
            // wait, and the ring completes them in that order).
            last_read = Drain::Drained;
        }
        if !ticking && !child_ready {
            continue;
        }
        if let Some(status) = ended.take() {
            break status;
        }
        if let Some(sfd) = sigchld.as_deref_mut() {
            // Consume what is pending, then ask: the SIGCHLD may be another child's or a
            // stop, and signals of one kind merge, so the wait is what tells.
            while let Ok(Some(_)) = sfd.read_signal() {}
            match reap(child, true) {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => continue,
                Err(e) => break Err(e),
            }
        }
        if pidfd.is_some() {
            // Readable pidfd: the child is a zombie, this wait does not block.
            break reap(child, false).map(|st| st.unwrap_or(0));
        }
        match reap(child, true) {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    let duration = started.elapsed();
    drop(pidfd);

    // Take what the handler left in the pipe, without waiting for an EOF a grandchild
    // may hold off forever.
    if pipe_open && last_read == Drain::More {
        last_read = read_pipe(pipe, buf, READS_AFTER_EXIT, &mut out, &mut sink);
    }
    out.finish(&mut sink);
    // Keep the pipe for the next handler only if it is empty and nothing of this one's
    // process group is left to write into it.
    let reusable = last_read == Drain::Drained && matches!(killpg(pgid, None), Err(Errno::ESRCH));
    if !reusable {
        if let Some(ring) = runner.uring.as_mut() {
            ring.forget_pipe();
        }
        runner.pipe = None;
    }

    let outcome = outcome(phase, status, &who);
    Report {
        outcome,
        started,
        duration,
        pid: Some(pid),
        captured,
    }
}

/// One run as its phases see it: what the logs name, and its limits.
pub(super) struct Who<'a> {
    pub rule: &'a str,
    pub seq: Seq,
    /// Also its process group.
    pub pid: u32,
    pub started: Instant,
    pub timeout: Duration,
    pub kill_grace: Duration,
}

impl Phase {
    /// When [`advance`] is due: the timeout, then the SIGKILL, then the next note.
    pub(super) fn due(self, who: &Who) -> Option<Instant> {
        match self {
            Phase::Running => who.started.checked_add(who.timeout),
            Phase::Termed(at) | Phase::Killed(at) => Some(at),
        }
    }
}

/// The phase's time is up: SIGTERM, SIGKILL after the grace, then a note every
/// [`STUCK_NOTE`].
pub(super) fn advance(phase: Phase, now: Instant, who: &Who) -> Phase {
    let Who { rule, seq, pid, .. } = *who;
    let pgid = Pid::from_raw(pid as libc::pid_t);
    match phase {
        Phase::Running => {
            log::warn!(
                "[{rule} {seq}] timed out after {:?}, sending SIGTERM",
                who.timeout
            );
            signal_group(rule, seq, pgid, Signal::SIGTERM);
            Phase::Termed(now.checked_add(who.kill_grace).unwrap_or(now))
        }
        Phase::Termed(_) => {
            log::warn!(
                "[{rule} {seq}] still running {:?} after SIGTERM, sending SIGKILL",
                who.kill_grace
            );
            signal_group(rule, seq, pgid, Signal::SIGKILL);
            Phase::Killed(now + STUCK_NOTE)
        }
        Phase::Killed(_) => {
            log::error!(
                "[{rule} {seq}] pid {pid} has not exited {:?} after SIGKILL \
                 (uninterruptible sleep?), still waiting",
                now.saturating_duration_since(who.started)
            );
            Phase::Killed(now + STUCK_NOTE)
        }
    }
}

/// How the run ended, from its last phase and its wait status.
pub(super) fn outcome(phase: Phase, status: io::Result<libc::c_int>, who: &Who) -> Outcome {
    match phase {
        Phase::Termed(_) => Outcome::TimedOut { killed: false },
        Phase::Killed(_) => Outcome::TimedOut { killed: true },
        Phase::Running => match status {
            Ok(st) if libc::WIFEXITED(st) => Outcome::Exited(libc::WEXITSTATUS(st)),
            Ok(st) if libc::WIFSIGNALED(st) => Outcome::Signaled(libc::WTERMSIG(st)),
            Ok(_) => Outcome::Exited(-1),
            Err(e) => {
                log::error!(
                    "[{} {}] cannot collect the exit status of pid {}: {e} \
                     (is SIGCHLD ignored or reaped elsewhere?)",
                    who.rule,
                    who.seq,
                    who.pid
                );
                Outcome::Exited(-1)
            }
        },
    }
}

/// Signal the handler's process group. ESRCH (all gone) is fine.
fn signal_group(rule: &str, seq: Seq, pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::error!("[{rule} {seq}] kill(-{pgid}, {sig}): {}", e.desc()),
    }
}
