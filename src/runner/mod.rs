//! Runs one handler program for one event, to completion, and reports how it ended.
//!
//! Rooms: this one spawns the handler and holds what every run reuses; `phase` is the
//! loop from spawn to reap (deadlines, SIGTERM, SIGKILL); `output` splits and caps what
//! the handler prints; `wait` and a lane's `uring` learn of its exit; `background`
//! supervises the handlers nobody waits for.
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
//!   pidfd. A lane (one runner among several, [`Runner::for_lane`]) cannot share that
//!   signalfd, so it has an io_uring of its own whose WAITID request wakes only it
//!   (`uring`), else a pidfd per child. Kernels without `pidfd_open` (before 5.3)
//!   fall back to polling the pipe in 10 ms ticks with `waitpid(WNOHANG)`.
//! * **The exit ends the run, not EOF.** A handler may leave a grandchild behind (a
//!   daemon, a `sleep &`) that still holds the output pipe. Waiting for EOF would stall
//!   the whole queue on it, so once the handler itself has exited we take only what is
//!   already in the pipe. If anything of its process group is still alive, that pipe is
//!   closed and the next handler gets a new one: a straggler that writes afterwards gets
//!   EPIPE, and never lands in another handler's log. (A descendant that left the group,
//!   `setsid` and all, and kept the handler's stdout is the one case that can.)
//!   The process group is signalled only on timeout, never after a normal exit: a handler
//!   may legitimately start a long-running program.

mod background;
mod output;
mod phase;
mod uring;
mod wait;

pub use background::{Detached, Supervisor};

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{access, AccessFlags};

use crate::event::Event;
use crate::spawn::{Child, Spawner};

/// Longest output line logged as is; longer ones are cut and marked with `…`.
pub const MAX_LINE: usize = 1024;

/// Search path for a bare program name when the event carries no `PATH` (netlink and
/// synthetic events; the kernel's helper environment has one).
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const READ_BUF: usize = 64 * 1024;

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
    /// An importer (`import = true`): its `KEY=VALUE` lines, up to
    /// [`crate::props::MAX_IMPORT`] bytes of output, go to [`Report::captured`] rather
    /// than the log.
    pub import: bool,
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

/// The result of [`Runner::run`].
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// Taken just before the spawn.
    pub started: Instant,
    /// From `started` until the handler was reaped (or the spawn failed).
    pub duration: Duration,
    /// The handler's pid, which is also its process group; `None` if it never started.
    pub pid: Option<u32>,
    /// An importer's `KEY=VALUE` lines, each ended by a newline; empty for other runs.
    pub captured: Vec<u8>,
}

/// Runs handlers one after another; owns what every run reuses.
pub struct Runner {
    spawner: Spawner,
    buf: Box<[u8]>,
    use_pidfd: bool,
    /// SIGCHLD as an fd, when the process has it blocked everywhere.
    sigchld: Option<SignalFd>,
    /// A ring of the runner's own, for a runner among several ([`Runner::for_lane`]).
    uring: Option<uring::Uring>,
    pipe: Option<OutputPipe>,
    /// Work done while each foreground handler runs, right after its spawn (the daemon
    /// writes its device database entries there: off the path between two handlers).
    after_spawn: Option<AfterSpawn>,
}

/// Work after a spawn, called with `false` right after it; when it returns a delay, it
/// is called again with `true` once the handler has run that long (work it put off).
pub type AfterSpawn = Box<dyn Fn(bool) -> Option<std::time::Duration> + Send>;

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
            uring: None,
            pipe: None,
            after_spawn: None,
        }
    }

    /// Run `work` after each foreground handler's spawn, while it runs.
    pub fn set_after_spawn(&mut self, work: AfterSpawn) {
        self.after_spawn = Some(work);
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

    /// A runner that is one of several in the process (a lane): it learns of its own
    /// handler's exit from an io_uring WAITID where the kernel has one (Linux 6.7), else
    /// from a pidfd per handler. Never the shared SIGCHLD signalfd, whose every signal
    /// would wake every lane. Make it on the thread that uses it.
    pub fn for_lane() -> Runner {
        let mut runner = Runner::new();
        runner.uring = uring::Uring::new();
        runner
    }

    /// Run one handler to completion. Never panics; every failure is in the report.
    pub fn run(&mut self, spec: &Spec) -> Report {
        phase::run_with(self, spec)
    }

    /// Start one handler for a [`Supervisor`] to see to its end, on an output pipe of
    /// its own (the runner's is for the handlers it waits for). A handler that never
    /// started is the error, as [`Runner::run`] would have reported it.
    pub fn start(&mut self, spec: &Spec) -> Result<Detached, Report> {
        let started = Instant::now();
        let failed = |why: String| Report {
            outcome: Outcome::SpawnFailed(why),
            started,
            duration: started.elapsed(),
            pid: None,
            captured: Vec::new(),
        };
        let exe = program(spec).map_err(failed)?;
        let pipe = OutputPipe::new().map_err(failed)?;
        let child = self
            .spawner
            .spawn(&exe, spec.argv, spec.event, spec.rule, pipe.write.as_fd())
            .map_err(|e| failed(e.to_string()))?;
        // Our copy of the write end goes now: the read end sees EOF once nothing of the
        // handler's holds it.
        Ok(Detached::new(child, pipe.read, started, spec))
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

/// Start the handler with stdout and stderr on the runner's output pipe (made first if
/// there is none). The error is the text of [`Outcome::SpawnFailed`].
fn spawn(runner: &mut Runner, spec: &Spec) -> Result<Child, String> {
    let exe = program(spec)?;
    if runner.pipe.is_none() {
        runner.pipe = Some(OutputPipe::new()?);
    }
    let out = runner.pipe.as_ref().expect("just made").write.as_fd();
    runner
        .spawner
        .spawn(&exe, spec.argv, spec.event, spec.rule, out)
        .map_err(|e| e.to_string())
}

/// The program to execute: `argv[0]`, resolved.
fn program(spec: &Spec) -> Result<PathBuf, String> {
    let Some(program) = spec.argv.first() else {
        return Err("empty command line".into());
    };
    resolve(program, spec.event)
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::killpg;
    use nix::unistd::Pid;
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

    /// The ways a runner learns that its handler exited.
    #[derive(Clone, Copy, Debug)]
    enum Wait {
        /// A lane's io_uring WAITID.
        Uring,
        Pidfd,
        /// No exit fd: `waitpid(WNOHANG)` every tick (kernels before 5.3).
        Tick,
    }
    const WAYS: [Wait; 3] = [Wait::Uring, Wait::Pidfd, Wait::Tick];

    /// Whether this kernel has io_uring's WAITID (Linux 6.7), where a lane must use it.
    fn kernel_has_waitid() -> bool {
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor) >= (6, 7)
    }

    fn runner(how: Wait) -> Runner {
        match how {
            Wait::Uring => {
                let runner = Runner::for_lane();
                assert_eq!(
                    runner.uring.is_some(),
                    kernel_has_waitid(),
                    "a lane on this kernel waits with io_uring exactly when it has WAITID"
                );
                runner
            }
            Wait::Pidfd => Runner::new(),
            Wait::Tick => {
                let mut runner = Runner::new();
                runner.use_pidfd = false;
                runner
            }
        }
    }

    /// What the tests run: rule "test", a 300 ms grace, 4 KiB of output.
    fn spec<'a>(args: &'a [OsString], ev: &'a Event, timeout: Duration) -> Spec<'a> {
        Spec {
            rule: "test",
            argv: args,
            event: ev,
            timeout,
            kill_grace: Duration::from_millis(300),
            max_output_bytes: 4096,
            import: false,
        }
    }

    fn run_argv(args: &[OsString], ev: &Event, timeout: Duration, how: Wait) -> Report {
        runner(how).run(&spec(args, ev, timeout))
    }

    fn sh(script: &str, timeout: Duration, how: Wait) -> Report {
        run_argv(&argv(&["/bin/sh", "-c", script]), &event(&[]), timeout, how)
    }

    #[test]
    fn exit_status_and_signal() {
        for how in WAYS {
            let r = sh("exit 0", GUARD, how);
            assert_eq!(r.outcome, Outcome::Exited(0));
            assert!(r.outcome.success());
            assert!(r.pid.is_some());
            let r = sh("echo out; echo err >&2; exit 3", GUARD, how);
            assert_eq!(r.outcome, Outcome::Exited(3));
            assert!(!r.outcome.success());
            let r = sh("kill -9 $$", GUARD, how);
            assert_eq!(r.outcome, Outcome::Signaled(9));
            // A real-time signal's number, which nix's Signal has no room for.
            let r = sh("kill -35 $$", GUARD, how);
            assert_eq!(r.outcome, Outcome::Signaled(35), "{how:?}");
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
        let r = run_argv(&argv(&["/nonexistent/handler"]), &ev, GUARD, Wait::Pidfd);
        let Outcome::SpawnFailed(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(why.contains("/nonexistent/handler"), "{why}");
        assert!(why.contains("No such file"), "{why}");
        assert!(r.outcome.to_string().starts_with("spawn failed: "));
        assert_eq!(r.pid, None);

        let r = run_argv(&argv(&["no-such-handler-xyz"]), &ev, GUARD, Wait::Pidfd);
        let Outcome::SpawnFailed(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(why.contains("not found in PATH=/usr/bin:/bin"), "{why}");

        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("noexec");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = vec![script.clone().into_os_string()];
        let r = run_argv(&args, &ev, GUARD, Wait::Pidfd);
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
        let r = run_argv(&[junk.into_os_string()], &ev, GUARD, Wait::Pidfd);
        let Outcome::SpawnFailed(why) = &r.outcome else {
            panic!("{:?}", r.outcome)
        };
        assert!(why.contains("Exec format error"), "{why}");
        // And the runner still works after it.
        let r = run_argv(&argv(&["/bin/sh", "-c", "exit 4"]), &ev, GUARD, Wait::Pidfd);
        assert_eq!(r.outcome, Outcome::Exited(4));

        assert!(matches!(
            run_argv(&[], &ev, GUARD, Wait::Pidfd).outcome,
            Outcome::SpawnFailed(_)
        ));
    }

    #[test]
    fn bare_name_uses_event_path() {
        let r = run_argv(
            &argv(&["sh", "-c", "exit 5"]),
            &event(&[]),
            GUARD,
            Wait::Pidfd,
        );
        assert_eq!(r.outcome, Outcome::Exited(5));
        let ev = event(&[(b"PATH", b"/nonexistent")]);
        let r = run_argv(&argv(&["sh", "-c", "exit 5"]), &ev, GUARD, Wait::Pidfd);
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
        let r = run_argv(&args, ev, GUARD, Wait::Pidfd);
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
        let r = run_argv(&args, &event(&[]), GUARD, Wait::Pidfd);
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
        let r = run_argv(&args, &event(&[]), GUARD, Wait::Pidfd);
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert_eq!(std::fs::read_to_string(&dump).unwrap(), value);
        assert!(!canary.exists());
    }

    #[test]
    fn timeout_sends_term() {
        for how in WAYS {
            let t = Instant::now();
            let r = sh("sleep 30", Duration::from_millis(200), how);
            assert_eq!(r.outcome, Outcome::TimedOut { killed: false });
            assert!(t.elapsed() < GUARD, "{:?}", t.elapsed());
            assert!(r.duration >= Duration::from_millis(200));
        }
    }

    #[test]
    fn timeout_kills_when_term_is_ignored() {
        for how in WAYS {
            let t = Instant::now();
            let r = sh("trap '' TERM; sleep 30", Duration::from_millis(200), how);
            assert_eq!(r.outcome, Outcome::TimedOut { killed: true }, "{how:?}");
            assert!(t.elapsed() < GUARD, "{:?}", t.elapsed());
            assert!(r.duration >= Duration::from_millis(500));
        }
    }

    #[test]
    fn grandchild_holding_stdout_does_not_stall() {
        for how in WAYS {
            let t = Instant::now();
            let r = sh(
                "sleep 30 & echo started; exit 0",
                Duration::from_secs(60),
                how,
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
        for how in WAYS {
            let mut runner = runner(how);
            let ev = event(&[]);
            let mut run = |script: &str| {
                let args = argv(&["/bin/sh", "-c", script]);
                let spec = spec(&args, &ev, GUARD);
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

    /// An importer's KEY=VALUE lines are captured, up to the cap; other lines are not.
    #[test]
    fn import_captures_key_value_lines_up_to_the_cap() {
        let ev = event(&[]);
        let args = argv(&[
            "/bin/sh",
            "-c",
            "echo A=1; echo 'not a property'; echo 'B=x y' >&2; \
             i=0; while [ $i -lt 2000 ]; do echo PAD_$i=0123456789; i=$((i+1)); done; echo LATE=1",
        ]);
        let spec = Spec {
            max_output_bytes: 100,
            import: true,
            ..spec(&args, &ev, GUARD)
        };
        for how in WAYS {
            import_captures(how, &spec);
        }
    }

    fn import_captures(how: Wait, spec: &Spec) {
        let r = runner(how).run(spec);
        assert_eq!(r.outcome, Outcome::Exited(0), "{how:?}");
        let text = String::from_utf8(r.captured).unwrap();
        assert!(text.starts_with("A=1\nB=x y\nPAD_0=0123456789\n"), "{text}");
        assert!(!text.contains("not a property"));
        assert!(!text.contains("LATE"), "past the cap");
        // The cap counts line bytes, newlines not included.
        let bytes = text.len() - text.lines().count();
        assert!(bytes <= crate::props::MAX_IMPORT, "{bytes}");
        assert!(
            text.len() > crate::props::MAX_IMPORT - 100,
            "{}",
            text.len()
        );
    }

    #[test]
    fn flood_is_drained() {
        for how in WAYS {
            let t = Instant::now();
            let r = sh(
                "yes 0123456789abcdef | head -c 10485760; head -c 1048576 /dev/zero",
                Duration::from_secs(60),
                how,
            );
            assert_eq!(r.outcome, Outcome::Exited(0), "{how:?}");
            assert!(t.elapsed() < GUARD, "{:?}", t.elapsed());
        }
    }

    /// A pipe the runner closes is closed for the writer too: a straggler that writes
    /// after its handler ended gets EPIPE, whatever the runner waited with (a lane's
    /// ring holds the pipe until its poll is cancelled).
    #[test]
    fn a_dropped_pipe_is_released() {
        for how in WAYS {
            let dir = tempfile::tempdir().unwrap();
            let rc = dir.path().join("rc");
            let script = format!(
                "(trap '' PIPE; sleep 0.5; echo late; echo $? > {}) & echo started",
                rc.display()
            );
            let mut runner = runner(how);
            let args = argv(&["/bin/sh", "-c", &script]);
            let ev = event(&[]);
            let spec = spec(&args, &ev, GUARD);
            let r = runner.run(&spec);
            assert_eq!(r.outcome, Outcome::Exited(0), "{how:?}");
            assert!(
                runner.pipe.is_none(),
                "{how:?}: a straggler's pipe is dropped"
            );
            let t = Instant::now();
            while !rc.exists() && t.elapsed() < GUARD {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(50));
            let code = std::fs::read_to_string(&rc).unwrap();
            assert_eq!(code.trim(), "1", "{how:?}: the late write must fail");
        }
    }

    /// Lanes each wait for their own handler: one that ends at once is not held up by
    /// another lane's slow one, and neither takes the other's exit.
    #[test]
    fn lanes_learn_of_their_own_exits() {
        let slow = std::thread::spawn(|| {
            let t = Instant::now();
            let r = sh("sleep 1; exit 7", GUARD, Wait::Uring);
            (r.outcome, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        let mut fast = runner(Wait::Uring);
        let ev = event(&[]);
        for code in 0..20 {
            let args = argv(&["/bin/sh", "-c", &format!("echo {code}; exit {code}")]);
            let spec = spec(&args, &ev, GUARD);
            let t = Instant::now();
            let r = fast.run(&spec);
            assert_eq!(r.outcome, Outcome::Exited(code));
            assert!(
                t.elapsed() < Duration::from_millis(900),
                "{:?}",
                t.elapsed()
            );
        }
        let (outcome, took) = slow.join().unwrap();
        assert_eq!(outcome, Outcome::Exited(7));
        assert!(took >= Duration::from_secs(1), "{took:?}");
    }
}
