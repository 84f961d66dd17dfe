//! Runs one handler program for one event, to completion, and reports how it ended.
//!
//! This module owns everything between "the daemon picked a rule" and "the handler is
//! gone": building the child's environment (exactly the event's variables plus
//! `HOTPLUGD_RULE`, nothing inherited), spawning it in its own process group, logging
//! its merged stdout/stderr line by line with a size cap, enforcing the timeout
//! (SIGTERM to the group, then SIGKILL after a grace period) and reaping it.
//!
//! Three choices matter for a daemon that runs thousands of handlers back to back:
//!
//! * **No fork, and nothing built twice.** [`crate::spawn`] starts the child with a
//!   vfork-style clone and the event's own bytes as the environment; `/dev/null`, the
//!   child's stack and the 64 KiB output buffer are the [`Runner`]'s for its
//!   whole life, and so is the output pipe while no process is left in the last handler's
//!   process group to write into it. Between one handler's exit and the next one's exec
//!   the daemon does only what the run needs: the spawn, a poll, a wait.
//! * **An exit fd, not sleep polling.** We `poll()` on an fd that becomes readable when the
//!   child exits, together with the output pipe, with the timeout set to the next
//!   deadline, so the exit is noticed the moment it happens. In the daemon that fd is a
//!   `signalfd` for SIGCHLD, made once ([`Runner::with_blocked_sigchld`]; the daemon
//!   blocks SIGCHLD in every thread), because a pidfd per child costs a `pidfd_open` and
//!   a `close` of a new file, ~7 µs a run on the reference VM. Elsewhere it is the child's
//!   pidfd. Kernels without `pidfd_open` (before 5.3) fall back to polling the pipe in
//!   10 ms ticks with `waitpid(WNOHANG)`.
//! * **The exit ends the run, not EOF.** A handler may leave a grandchild behind (a
//!   daemon, a `sleep &`) that still holds the output pipe. Waiting for EOF would stall
//!   the whole queue on it, so once the handler itself has exited we take only what is
//!   already in the pipe. If anything of its process group is still alive, that pipe is
//!   closed and the next handler gets a new one: a straggler that writes afterwards gets
//!   EPIPE, and never lands in another handler's log. (A descendant that left the group,
//!   `setsid` and all, and kept the handler's stdout is the one case that can.)
//!   The process group is signalled only on timeout, never after a normal exit: a handler
//!   may legitimately start a long-running program.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{killpg, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{access, AccessFlags, Pid};

use crate::event::Event;
use crate::spawn::{Child, Spawner};

/// Longest output line logged as is; longer ones are cut and marked with `…`.
pub const MAX_LINE: usize = 1024;

/// Search path for a bare program name when the event carries no `PATH` (netlink and
/// synthetic events; the kernel's helper environment has one).
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Poll interval when there is no pidfd to wait on.
const FALLBACK_TICK: Duration = Duration::from_millis(10);

/// How often to complain about a child that survives SIGKILL (uninterruptible sleep).
const STUCK_NOTE: Duration = Duration::from_secs(10);

/// Reads per wakeup before going back to check deadlines, so a flooding handler cannot
/// starve the timeout.
const READS_PER_WAKEUP: usize = 16;

/// Reads after the handler exited: what it left in the pipe (at most the pipe's
/// capacity, 1 MiB at the largest default limit), not a straggler's endless stream.
const READS_AFTER_EXIT: usize = 64;

const READ_BUF: usize = 64 * 1024;

/// Set once `pidfd_open` turned out not to exist, so later runs skip the syscall.
static NO_PIDFD: AtomicBool = AtomicBool::new(false);

/// What to run and under which limits.
pub struct Spec<'a> {
    /// Rule name, for logs and `HOTPLUGD_RULE`.
    pub rule: &'a str,
    /// `argv[0]` is the program: a path if it contains `/`, else looked up in the
    /// event's `PATH` (or [`DEFAULT_PATH`]). It is passed to the program unchanged.
    pub argv: &'a [OsString],
    pub event: &'a Event,
    /// Then SIGTERM to the process group.
    pub timeout: Duration,
    /// Then SIGKILL to the process group.
    pub kill_grace: Duration,
    /// Bytes of output logged before the rest is discarded (still drained).
    pub max_output_bytes: usize,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status. `-1` means the status could not be collected (someone else reaped
    /// the child, e.g. SIGCHLD set to SIG_IGN); logged at error when it happens.
    Exited(i32),
    Signaled(i32),
    /// Ran past its timeout and was terminated; `killed` if SIGTERM was not enough.
    TimedOut {
        killed: bool,
    },
    /// Never started: the program path and the reason.
    SpawnFailed(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) if *code < 0 => write!(f, "exit status unknown"),
            Outcome::Exited(code) => write!(f, "exit {code}"),
            Outcome::Signaled(sig) => match Signal::try_from(*sig) {
                Ok(s) => write!(f, "signal {sig} ({})", s.as_str()),
                Err(_) => write!(f, "signal {sig}"),
            },
            Outcome::TimedOut { killed: false } => write!(f, "timed out, killed by SIGTERM"),
            Outcome::TimedOut { killed: true } => write!(f, "timed out, killed by SIGKILL"),
            Outcome::SpawnFailed(why) => write!(f, "spawn failed: {why}"),
        }
    }
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// Taken just before the spawn.
    pub started: Instant,
    /// From `started` until the handler was reaped (or the spawn failed).
    pub duration: Duration,
    /// The handler's pid, which is also its process group; `None` if it never started.
    pub pid: Option<u32>,
}

/// Runs handlers one after another; owns what every run reuses.
pub struct Runner {
    spawner: Spawner,
    buf: Box<[u8]>,
    use_pidfd: bool,
    /// SIGCHLD as an fd, when the process has it blocked everywhere.
    sigchld: Option<SignalFd>,
    pipe: Option<OutputPipe>,
}

/// The handlers' stdout and stderr: our read end (non-blocking) and the write end each
/// child gets a copy of.
struct OutputPipe {
    read: File,
    write: OwnedFd,
}

impl OutputPipe {
    fn new() -> Result<OutputPipe, String> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {}", e.desc()))?;
        // Non-blocking on our end only: O_NONBLOCK is per open file description, and the
        // child must get an ordinary blocking pipe.
        set_nonblocking(read.as_raw_fd()).map_err(|e| format!("pipe: {}", e.desc()))?;
        Ok(OutputPipe {
            read: File::from(read),
            write,
        })
    }
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    pub fn new() -> Runner {
        Runner {
            spawner: Spawner::new(),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            use_pidfd: true,
            sigchld: None,
            pipe: None,
        }
    }

    /// A runner that learns of exits from a `signalfd` for SIGCHLD. Only for a process
    /// that blocks SIGCHLD in every thread, and has it at its default disposition
    /// ([`block_sigchld`] before the first thread starts): a thread with SIGCHLD
    /// unblocked would take (and drop) the signal, and the runner would wait for the
    /// timeout. Falls back to pidfds if the signalfd cannot be made.
    pub fn with_blocked_sigchld() -> Runner {
        let mut runner = Runner::new();
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => runner.sigchld = Some(fd),
            Err(e) => log::warn!("signalfd: {}; waiting for handlers with pidfds", e.desc()),
        }
        runner
    }

    /// Run one handler to completion. Never panics; every failure is in the report.
    pub fn run(&mut self, spec: &Spec) -> Report {
        run_with(self, spec)
    }
}

/// Block SIGCHLD in the calling thread (and so in every thread it starts later) and
/// set its default disposition, for [`Runner::with_blocked_sigchld`]. Handlers get an
/// empty signal mask at spawn.
pub fn block_sigchld() -> nix::Result<()> {
    // SAFETY: SIG_DFL installs no handler.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl) }?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
}

/// `SEQNUM` or `-`, for log prefixes.
#[derive(Clone, Copy)]
struct Seq(Option<u64>);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("-"),
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Running,
    /// SIGTERM sent; SIGKILL due at the instant.
    Termed(Instant),
    /// SIGKILL sent; next "still not gone" note at the instant.
    Killed(Instant),
}

fn run_with(runner: &mut Runner, spec: &Spec) -> Report {
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
            }
        }
    };
    let pid = child.pid as u32;
    let pgid = Pid::from_raw(child.pid);
    // Readable once the child may have exited: the SIGCHLD signalfd (shared by all runs,
    // so a readable one is only a hint to try the wait), or this child's own pidfd.
    let pidfd = match (&runner.sigchld, runner.use_pidfd) {
        (Some(_), _) => None,
        (None, true) => pidfd_open(pid),
        (None, false) => None,
    };
    let exit_fd: Option<RawFd> = match &runner.sigchld {
        Some(sfd) => Some(sfd.as_raw_fd()),
        None => pidfd.as_ref().map(|f| f.as_raw_fd()),
    };
    let mut sigchld = runner.sigchld.as_mut();

    let mut out = Output::new(spec.max_output_bytes);
    let mut sink = |msg: Msg<'_>| match msg {
        Msg::Line(line, cut) => log::info!(
            target: "handler",
            "[{rule} {seq}] {}{}",
            String::from_utf8_lossy(line),
            if cut { "…" } else { "" }
        ),
        Msg::Truncated(n) => {
            log::info!(target: "handler", "[{rule} {seq}] output truncated after {n} bytes")
        }
    };
    let buf = &mut runner.buf[..];
    let pipe = &runner.pipe.as_ref().expect("spawn made it").read;
    // Cleared on EOF or a read error: that pipe is done for.
    let mut pipe_open = true;
    // What the last read left: Drained means the pipe was empty.
    let mut last_read;
    let deadline = started.checked_add(spec.timeout);
    let mut phase = Phase::Running;

    let status: io::Result<libc::c_int> = loop {
        let now = Instant::now();
        let due = match phase {
            Phase::Running => deadline,
            Phase::Termed(at) | Phase::Killed(at) => Some(at),
        };
        if due.is_some_and(|due| now >= due) {
            phase = match phase {
                Phase::Running => {
                    log::warn!(
                        "[{rule} {seq}] timed out after {:?}, sending SIGTERM",
                        spec.timeout
                    );
                    signal_group(rule, seq, pgid, Signal::SIGTERM);
                    Phase::Termed(now.checked_add(spec.kill_grace).unwrap_or(now))
                }
                Phase::Termed(_) => {
                    log::warn!(
                        "[{rule} {seq}] still running {:?} after SIGTERM, sending SIGKILL",
                        spec.kill_grace
                    );
                    signal_group(rule, seq, pgid, Signal::SIGKILL);
                    Phase::Killed(now + STUCK_NOTE)
                }
                Phase::Killed(_) => {
                    log::error!(
                        "[{rule} {seq}] pid {pid} has not exited {:?} after SIGKILL \
                         (uninterruptible sleep?), still waiting",
                        now.saturating_duration_since(started)
                    );
                    Phase::Killed(now + STUCK_NOTE)
                }
            };
            continue;
        }

        let mut wait = due.map(|due| due - now);
        if exit_fd.is_none() {
            wait = Some(wait.map_or(FALLBACK_TICK, |w| w.min(FALLBACK_TICK)));
        }
        let (child_ready, pipe_ready) = poll2(exit_fd, pipe_open.then_some(pipe), wait);

        if pipe_ready {
            last_read = read_pipe(pipe, buf, READS_PER_WAKEUP, &mut out, &mut sink);
            pipe_open &= last_read != Drain::Closed;
        } else if exit_fd.is_none() {
            // Polled before the exit we may be about to see: read again after it.
            last_read = Drain::More;
        } else {
            // In the same poll as the pidfd: whatever the child wrote before it exited
            // would show.
            last_read = Drain::Drained;
        }
        if exit_fd.is_some() && !child_ready {
            continue;
        }
        if let Some(sfd) = sigchld.as_deref_mut() {
            // Consume what is pending, then ask: the SIGCHLD may be another child's or a
            // stop, and signals of one kind merge, so the wait is what tells.
            while let Ok(Some(_)) = sfd.read_signal() {}
            match reap(child, libc::WNOHANG) {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => continue,
                Err(e) => break Err(e),
            }
        }
        if pidfd.is_some() {
            // Readable pidfd: the child is a zombie, this wait does not block.
            break reap(child, 0).map(|st| st.unwrap_or(0));
        }
        match reap(child, libc::WNOHANG) {
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
        runner.pipe = None;
    }

    let outcome = match phase {
        Phase::Termed(_) => Outcome::TimedOut { killed: false },
        Phase::Killed(_) => Outcome::TimedOut { killed: true },
        Phase::Running => match status {
            Ok(st) if libc::WIFEXITED(st) => Outcome::Exited(libc::WEXITSTATUS(st)),
            Ok(st) if libc::WIFSIGNALED(st) => Outcome::Signaled(libc::WTERMSIG(st)),
            Ok(_) => Outcome::Exited(-1),
            Err(e) => {
                log::error!(
                    "[{rule} {seq}] cannot collect the exit status of pid {pid}: {e} \
                     (is SIGCHLD ignored or reaped elsewhere?)"
                );
                Outcome::Exited(-1)
            }
        },
    };
    Report {
        outcome,
        started,
        duration,
        pid: Some(pid),
    }
}

/// Start the handler with stdout and stderr on the runner's output pipe (made first if
/// there is none). The error is the text of [`Outcome::SpawnFailed`].
fn spawn(runner: &mut Runner, spec: &Spec) -> Result<Child, String> {
    let Some(program) = spec.argv.first() else {
        return Err("empty command line".into());
    };
    let exe = resolve(program, spec.event)?;
    if runner.pipe.is_none() {
        runner.pipe = Some(OutputPipe::new()?);
    }
    let out = runner.pipe.as_ref().expect("just made").write.as_fd();
    runner
        .spawner
        .spawn(&exe, spec.argv, spec.event, spec.rule, out)
        .map_err(|e| e.to_string())
}

/// Reap `child`: `Some(status)` once it has exited, `None` if `flags` has WNOHANG and it
/// is still running.
fn reap(child: Child, flags: libc::c_int) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: a valid pointer to a local int.
        let r = unsafe { libc::waitpid(child.pid, &mut status, flags) };
        match r {
            0 => return Ok(None),
            r if r > 0 => return Ok(Some(status)),
            _ => match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(io::Error::from_raw_os_error(e as i32)),
            },
        }
    }
}

/// A program name with a `/` is used as is; a bare name is searched in the event's
/// `PATH` the way `execvp` would (first executable regular file; EACCES if only
/// non-executable candidates exist).
fn resolve(program: &OsStr, event: &Event) -> Result<PathBuf, String> {
    let name = program.as_bytes();
    if name.is_empty() {
        return Err("empty program name".into());
    }
    if name.contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let search = event
        .get(b"PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PATH);
    let mut denied = None;
    for dir in search.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let candidate = Path::new(OsStr::from_bytes(dir)).join(program);
        if !std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            continue;
        }
        if access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        denied.get_or_insert(candidate);
    }
    Err(match denied {
        Some(path) => format!("{}: {}", path.display(), Errno::EACCES.desc()),
        None => format!(
            "{}: not found in PATH={}",
            program.to_string_lossy(),
            String::from_utf8_lossy(search)
        ),
    })
}

fn set_nonblocking(fd: RawFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    if NO_PIDFD.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: plain syscall with integer arguments; a non-negative result is a new fd
    // (close-on-exec by definition) that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd >= 0 {
        // SAFETY: see above.
        return Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let err = Errno::last();
    if matches!(err, Errno::ENOSYS | Errno::EPERM) {
        if !NO_PIDFD.swap(true, Ordering::Relaxed) {
            log::info!(
                "pidfd_open unavailable ({}), waiting for handlers by polling every {:?}",
                err.desc(),
                FALLBACK_TICK
            );
        }
    } else {
        log::warn!("pidfd_open({pid}): {}, polling for this run", err.desc());
    }
    None
}

/// Wait until the exit fd or the pipe is readable, or `wait` passes (`None`: forever).
/// Absent fds are skipped (poll ignores negative fds). EINTR and other poll failures
/// count as a wakeup with nothing ready; the caller re-checks everything.
fn poll2(exit_fd: Option<RawFd>, pipe: Option<&File>, wait: Option<Duration>) -> (bool, bool) {
    let entry = |fd: Option<RawFd>| libc::pollfd {
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [entry(exit_fd), entry(pipe.map(|f| f.as_raw_fd()))];
    // Round up so a sub-millisecond remainder does not become a busy loop.
    let ms = match wait {
        None => -1,
        Some(w) => i32::try_from(w.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let err = Errno::last();
        if err != Errno::EINTR {
            log::warn!("poll: {}", err.desc());
            std::thread::sleep(FALLBACK_TICK);
        }
        return (false, false);
    }
    (fds[0].revents != 0, fds[1].revents != 0)
}

/// Where [`read_pipe`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The pipe is empty (EAGAIN).
    Drained,
    /// `max_reads` reached; there may be more.
    More,
    /// EOF or a read error: the pipe is finished.
    Closed,
}

/// Read what is available, at most `max_reads` times.
fn read_pipe(
    mut pipe: &File,
    buf: &mut [u8],
    max_reads: usize,
    out: &mut Output,
    sink: &mut dyn FnMut(Msg<'_>),
) -> Drain {
    let mut reads = 0;
    while reads < max_reads {
        match pipe.read(buf) {
            Ok(0) => return Drain::Closed,
            Ok(n) => {
                reads += 1;
                out.feed(&buf[..n], sink);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drain::Drained,
            Err(e) => {
                log::warn!("reading handler output: {e}");
                return Drain::Closed;
            }
        }
    }
    Drain::More
}

/// What [`Output`] wants logged.
#[derive(Debug, PartialEq, Eq)]
enum Msg<'a> {
    /// One line without its newline; `true` if it was cut at [`MAX_LINE`].
    Line(&'a [u8], bool),
    /// The cap was reached after this many bytes; nothing more will be logged.
    Truncated(usize),
}

/// Splits the handler's output into lines and applies the line and total caps.
/// Bytes counted against the cap are the line bytes logged (without newlines).
struct Output {
    line: Vec<u8>,
    /// The current line was already logged cut; skip to its newline.
    cut: bool,
    logged: usize,
    max: usize,
    truncated: bool,
}

impl Output {
    fn new(max: usize) -> Output {
        Output {
            line: Vec::new(),
            cut: false,
            logged: 0,
            max,
            truncated: false,
        }
    }

    fn feed(&mut self, mut data: &[u8], sink: &mut dyn FnMut(Msg<'_>)) {
        while !data.is_empty() && !self.truncated {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.append(&data[..nl], sink);
                    if !self.cut {
                        self.emit(false, sink);
                    }
                    self.line.clear();
                    self.cut = false;
                    data = &data[nl + 1..];
                }
                None => {
                    self.append(data, sink);
                    return;
                }
            }
        }
    }

    /// Log a last line that had no newline.
    fn finish(&mut self, sink: &mut dyn FnMut(Msg<'_>)) {
        if !self.truncated && !self.cut && !self.line.is_empty() {
            self.emit(false, sink);
        }
        self.line.clear();
        self.cut = false;
    }

    fn append(&mut self, part: &[u8], sink: &mut dyn FnMut(Msg<'_>)) {
        if self.cut {
            return;
        }
        let room = MAX_LINE - self.line.len();
        if part.len() <= room {
            self.line.extend_from_slice(part);
            return;
        }
        // Cut before a UTF-8 continuation byte rather than through a character.
        let mut take = room;
        for _ in 0..3 {
            if take == 0 || part[take] & 0xC0 != 0x80 {
                break;
            }
            take -= 1;
        }
        if part[take] & 0xC0 == 0x80 {
            take = room; // not UTF-8 anyway
        }
        self.line.extend_from_slice(&part[..take]);
        self.cut = true;
        self.emit(true, sink);
    }

    fn emit(&mut self, cut: bool, sink: &mut dyn FnMut(Msg<'_>)) {
        if self.truncated {
            return;
        }
        if self.logged + self.line.len() > self.max {
            self.truncated = true;
            self.line = Vec::new();
            sink(Msg::Truncated(self.logged));
            return;
        }
        self.logged += self.line.len();
        sink(Msg::Line(&self.line, cut));
    }
}

/// Signal the handler's process group. ESRCH (all gone) is fine.
fn signal_group(rule: &str, seq: Seq, pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::error!("[{rule} {seq}] kill(-{pgid}, {sig}): {}", e.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GUARD: Duration = Duration::from_secs(10);

    fn event(extra: &[(&[u8], &[u8])]) -> Event {
        let mut vars: Vec<(&[u8], &[u8])> = vec![
            (b"ACTION", b"add"),
            (b"DEVPATH", b"/devices/test"),
            (b"SUBSYSTEM", b"usb"),
            (b"SEQNUM", b"4711"),
            (b"PATH", b"/usr/bin:/bin"),
        ];
        vars.extend_from_slice(extra);
        Event::from_vars(b"usb", vars).unwrap()
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn run_argv(args: &[OsString], ev: &Event, timeout: Duration, pidfd: bool) -> Report {
        let spec = Spec {
            rule: "test",
            argv: args,
            event: ev,
            timeout,
            kill_grace: Duration::from_millis(300),
            max_output_bytes: 4096,
        };
        let mut runner = Runner::new();
        runner.use_pidfd = pidfd;
        runner.run(&spec)
    }

    fn sh(script: &str, timeout: Duration, pidfd: bool) -> Report {
        run_argv(
            &argv(&["/bin/sh", "-c", script]),
            &event(&[]),
            timeout,
            pidfd,
        )
    }

    #[test]
    fn exit_status_and_signal() {
        for pidfd in [true, false] {
            let r = sh("exit 0", GUARD, pidfd);
            assert_eq!(r.outcome, Outcome::Exited(0));
            assert!(r.outcome.success());
            assert!(r.pid.is_some());
            let r = sh("echo out; echo err >&2; exit 3", GUARD, pidfd);
            assert_eq!(r.outcome, Outcome::Exited(3));
            assert!(!r.outcome.success());
            let r = sh("kill -9 $$", GUARD, pidfd);
            assert_eq!(r.outcome, Outcome::Signaled(9));
        }
        assert_eq!(Outcome::Exited(3).to_string(), "exit 3");
        assert_eq!(Outcome::Signaled(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(
            Outcome::TimedOut { killed: false }.to_string(),
            "timed out, killed by SIGTERM"
        );
        assert_eq!(
            Outcome::TimedOut { killed: true }.to_string(),
            "timed out, killed by SIGKILL"
        );
    }

    #[test]
    fn spawn_failures() {
        let ev = event(&[]);
        let r = run_argv(&argv(&["/nonexistent/handler"]), &ev, GUARD, true);
        let Outcome::SpawnFailed(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(why.contains("/nonexistent/handler"), "{why}");
        assert!(why.contains("No such file"), "{why}");
        assert!(r.outcome.to_string().starts_with("spawn failed: "));
        assert_eq!(r.pid, None);

        let r = run_argv(&argv(&["no-such-handler-xyz"]), &ev, GUARD, true);
        let Outcome::SpawnFailed(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(why.contains("not found in PATH=/usr/bin:/bin"), "{why}");

        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("noexec");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = vec![script.clone().into_os_string()];
        let r = run_argv(&args, &ev, GUARD, true);
        assert!(
            matches!(r.outcome, Outcome::SpawnFailed(_)),
            "{:?}",
            r.outcome
        );

        // Executable, but not a program: execve itself fails in the child, which must
        // report it (and be reaped), not run anything.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, [0u8, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = run_argv(&[junk.into_os_string()], &ev, GUARD, true);
        let Outcome::SpawnFailed(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(why.contains("Exec format error"), "{why}");
        // And the runner still works after it.
        let r = run_argv(&argv(&["/bin/sh", "-c", "exit 4"]), &ev, GUARD, true);
        assert_eq!(r.outcome, Outcome::Exited(4));

        assert!(matches!(
            run_argv(&[], &ev, GUARD, true).outcome,
            Outcome::SpawnFailed(_)
        ));
    }

    #[test]
    fn bare_name_uses_event_path() {
        let r = run_argv(&argv(&["sh", "-c", "exit 5"]), &event(&[]), GUARD, true);
        assert_eq!(r.outcome, Outcome::Exited(5));
        let ev = event(&[(b"PATH", b"/nonexistent")]);
        let r = run_argv(&argv(&["sh", "-c", "exit 5"]), &ev, GUARD, true);
        assert!(
            matches!(r.outcome, Outcome::SpawnFailed(_)),
            "{:?}",
            r.outcome
        );
    }

    /// A handler's own `/proc/self/NAME`, as `cp` copies it out: what the kernel says of
    /// the process the runner started for `ev`.
    fn handler_proc_file(name: &str, ev: &Event) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join(name);
        let args = vec![
            OsString::from("/bin/cp"),
            OsString::from(format!("/proc/self/{name}")),
            dump.clone().into_os_string(),
        ];
        let r = run_argv(&args, ev, GUARD, true);
        assert_eq!(r.outcome, Outcome::Exited(0));
        std::fs::read(&dump).unwrap()
    }

    /// cp's own /proc/self/environ is exactly the envp it was executed with, byte for
    /// byte (a shell's `env` would add PWD and the like).
    #[test]
    fn child_sees_exactly_the_event_environment() {
        let ev = event(&[
            (b"MODALIAS", b"usb:v1D6Bp0002"),
            (b"ODD", b"a=b c\nd\xff$(id)"),
            (b"EMPTY", b""),
        ]);
        let got = handler_proc_file("environ", &ev);
        let mut got: Vec<&[u8]> = got.split(|&b| b == 0).filter(|v| !v.is_empty()).collect();
        got.sort();
        let mut want: Vec<Vec<u8>> = ev.vars().map(|(k, v)| [k, b"=", v].concat()).collect();
        want.push(b"HOTPLUGD_RULE=test".to_vec());
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn stdin_is_dev_null_and_output_is_one_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("fds");
        let args = vec![
            OsString::from("/bin/sh"),
            OsString::from("-c"),
            // In a command substitution, so the shell's own fds are the ones read.
            OsString::from(
                "fds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2); \
                 printf '%s\\n' \"$fds\" > \"$1\"",
            ),
            OsString::from("sh"),
            dump.clone().into_os_string(),
        ];
        let r = run_argv(&args, &event(&[]), GUARD, true);
        assert_eq!(r.outcome, Outcome::Exited(0));
        let text = std::fs::read_to_string(&dump).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "/dev/null");
        assert!(lines[1].starts_with("pipe:"), "{text}");
        assert_eq!(lines[1], lines[2]);
    }

    /// The test harness ignores SIGPIPE, as the daemon does: the handler must not.
    #[test]
    fn handler_has_no_blocked_or_ignored_signals() {
        let text = String::from_utf8(handler_proc_file("status", &event(&[]))).unwrap();
        let mask = |field: &str| {
            let line = text.lines().find(|l| l.starts_with(field)).unwrap();
            u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0);
        // Signals 1-31; glibc's spawn leaves its two internal real-time signals (32, 33)
        // ignored in every child, which glibc programs take back at start.
        assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{text}");
    }

    #[test]
    fn argument_with_shell_metacharacters_is_one_element() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("arg");
        let canary = dir.path().join("pwned");
        let value = format!(
            "a b; $(touch {0}) `touch {0}` 'q\" | > * \n && rm -rf x",
            canary.display()
        );
        let args = vec![
            OsString::from("/bin/sh"),
            OsString::from("-c"),
            OsString::from("printf %s \"$1\" > \"$2\""),
            OsString::from("sh"),
            OsString::from(&value),
            dump.clone().into_os_string(),
        ];
        let r = run_argv(&args, &event(&[]), GUARD, true);
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert_eq!(std::fs::read_to_string(&dump).unwrap(), value);
        assert!(!canary.exists());
    }

    #[test]
    fn timeout_sends_term() {
        for pidfd in [true, false] {
            let t = Instant::now();
            let r = sh("sleep 30", Duration::from_millis(200), pidfd);
            assert_eq!(r.outcome, Outcome::TimedOut { killed: false });
            assert!(t.elapsed() < GUARD, "{:?}", t.elapsed());
            assert!(r.duration >= Duration::from_millis(200));
        }
    }

    #[test]
    fn timeout_kills_when_term_is_ignored() {
        let t = Instant::now();
        let r = sh("trap '' TERM; sleep 30", Duration::from_millis(200), true);
        assert_eq!(r.outcome, Outcome::TimedOut { killed: true });
        assert!(t.elapsed() < GUARD, "{:?}", t.elapsed());
        assert!(r.duration >= Duration::from_millis(500));
    }

    #[test]
    fn grandchild_holding_stdout_does_not_stall() {
        for pidfd in [true, false] {
            let t = Instant::now();
            let r = sh(
                "sleep 30 & echo started; exit 0",
                Duration::from_secs(60),
                pidfd,
            );
            let elapsed = t.elapsed();
            if let Some(pid) = r.pid {
                // The straggler is still in the handler's group: clean it up.
                let _ = killpg(Pid::from_raw(pid as libc::pid_t), Signal::SIGKILL);
            }
            assert_eq!(r.outcome, Outcome::Exited(0));
            assert!(elapsed < GUARD, "{elapsed:?}");
        }
    }

    /// The output pipe outlives a handler only when nothing of its process group can
    /// write into it any more; a straggler's pipe is never handed to the next handler.
    #[test]
    fn output_pipe_is_kept_only_without_stragglers() {
        for pidfd in [true, false] {
            let mut runner = Runner::new();
            runner.use_pidfd = pidfd;
            let ev = event(&[]);
            let mut run = |script: &str| {
                let args = argv(&["/bin/sh", "-c", script]);
                let spec = Spec {
                    rule: "test",
                    argv: &args,
                    event: &ev,
                    timeout: GUARD,
                    kill_grace: Duration::from_millis(300),
                    max_output_bytes: 4096,
                };
                let r = runner.run(&spec);
                let fd = runner.pipe.as_ref().map(|p| p.write.as_raw_fd());
                (r, fd)
            };
            let (r, first) = run("echo one");
            assert_eq!(r.outcome, Outcome::Exited(0));
            assert!(first.is_some(), "a clean run keeps its pipe");
            let (r, second) = run("echo two; exit 3");
            assert_eq!(r.outcome, Outcome::Exited(3));
            assert_eq!(second, first, "and the next run reuses it");

            let (r, after_straggler) = run("sleep 30 & echo started");
            let _ = killpg(
                Pid::from_raw(r.pid.unwrap() as libc::pid_t),
                Signal::SIGKILL,
            );
            assert_eq!(r.outcome, Outcome::Exited(0));
            assert_eq!(after_straggler, None, "a live group member may still write");
            let (r, fresh) = run("echo three");
            assert_eq!(r.outcome, Outcome::Exited(0));
            assert!(fresh.is_some());
        }
    }

    #[test]
    fn flood_is_drained() {
        let t = Instant::now();
        let r = sh(
            "yes 0123456789abcdef | head -c 10485760; head -c 1048576 /dev/zero",
            Duration::from_secs(60),
            true,
        );
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert!(t.elapsed() < GUARD, "{:?}", t.elapsed());
    }

    fn collect(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut out = Output::new(max);
        let mut msgs = Vec::new();
        let mut sink = |m: Msg<'_>| {
            msgs.push(match m {
                Msg::Line(l, cut) => {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(l),
                        if cut { "…" } else { "" }
                    )
                }
                Msg::Truncated(n) => format!("TRUNCATED {n}"),
            })
        };
        for c in chunks {
            out.feed(c, &mut sink);
        }
        out.finish(&mut sink);
        msgs
    }

    #[test]
    fn output_lines_are_split_across_reads() {
        assert_eq!(
            collect(&[b"one\ntw", b"o\n\nthr", b"ee"], 1000),
            ["one", "two", "", "three"]
        );
        assert_eq!(collect(&[b"bad \xff byte\n"], 1000), ["bad \u{fffd} byte"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; 3000];
        let msgs = collect(&[&long[..1500], &long[1500..], b"\nnext\n"], 100_000);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0], format!("{}…", "x".repeat(MAX_LINE)));
        assert_eq!(msgs[1], "next");
        // Exactly MAX_LINE bytes is not cut.
        let exact = vec![b'y'; MAX_LINE];
        assert_eq!(collect(&[&exact, b"\n"], 100_000), ["y".repeat(MAX_LINE)]);
        // A cut does not split a multi-byte character.
        let mut text = vec![b'z'; MAX_LINE - 1];
        text.extend_from_slice("é and more".as_bytes());
        assert_eq!(
            collect(&[&text], 100_000),
            [format!("{}…", "z".repeat(MAX_LINE - 1))]
        );
    }

    #[test]
    fn output_is_truncated_once() {
        let msgs = collect(&[b"12345\n12345\n12345\n12345\n"], 12);
        assert_eq!(msgs, ["12345", "12345", "TRUNCATED 10"]);
        assert_eq!(collect(&[b"x\n"], 0), ["TRUNCATED 0"]);
    }
}
