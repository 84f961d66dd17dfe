//! The FIFO holder: a small process that only keeps the event FIFO open, so that the pipe
//! and the events buffered in it outlive a daemon that is SIGKILLed or crashes, whatever
//! init system restarts it (or none). Under systemd, `ListenFIFO=` does this job and no
//! holder is started.
//!
//! Why: a pipe's buffer lives only as long as some process has the pipe open. Without a
//! supervisor that holds it, the daemon is its one steady opener, so at a kill the kernel
//! frees what the daemon had not read yet. Issue 13's storm (3000 events from 16 shims,
//! 5 SIGKILLs, each followed by a plain restart 0.2 s later) lost 36 events that way;
//! `tests/holder.rs` lost 23 to 30 per run (up to 13 at one kill) on the code before the
//! holder, and 0 with it.
//!
//! The holder is the daemon's own binary, exec'd (`hotplugd --fifo-holder DIR`), so it
//! carries none of the daemon's heap. It takes an exclusive `flock` on `DIR/holder`
//! (another holder has it: exit 0 at once, so two never pile up), opens `DIR/events`
//! read-only after the checks the daemon makes, forks, and the child writes nothing but
//! its pid into `DIR/holder`, leaves the session, and sleeps until SIGTERM. It ignores
//! SIGINT, SIGHUP and SIGPIPE. It exits by itself when `DIR/events` is removed or replaced
//! (inotify on `DIR`), so a crashed daemon that is never restarted, or a removed test dir,
//! leaves no holder forever.
//!
//! The daemon's side ([`Holder`]): after it has locked the runtime dir (so daemons are
//! serialized) and opened the FIFO, it adopts the holder of a run that was killed, if it
//! holds this very FIFO, or starts one and waits until it holds the lock; the lock is the
//! one truth about whether a holder lives. A thread sleeps in a blocking `flock` on
//! `DIR/holder` and so learns at once when the holder dies, and starts a new one. A clean
//! stop ends the holder and waits until its lock is free, then removes the FIFO and
//! drains the pipe with its own descriptor: a byte a shim writes after that gets EPIPE and
//! is spooled, rather than landing in a pipe only a dying holder still holds.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::runtime::{io_err, RuntimeError};
use crate::spool::{self, FIFO};

/// The hidden argument that makes `hotplugd` the holder: `hotplugd --fifo-holder DIR`.
pub const HOLDER_ARG: &str = "--fifo-holder";
/// In the runtime dir: locked by the live holder, and holding its pid.
pub const HOLDER_FILE: &str = "holder";
/// The holder's process name (`comm`), apart from the daemon's in `ps` and `pkill -x`.
const HOLDER_NAME: &[u8] = b"hotplugd-holder\0";
/// How long a holder gets to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The runtime directory's own errors: a path that failed, or one refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the FIFO holder ({cmd}) {status}")]
    Failed { cmd: String, status: String },
}

fn errno_err(path: &Path) -> impl FnOnce(nix::errno::Errno) -> RuntimeError + '_ {
    move |e| io_err(path)(e.into())
}

// ---- The holder process ------------------------------------------------------------

/// What `hotplugd --fifo-holder DIR` did, for its exit status.
pub enum Held {
    /// The FIFO was held until SIGTERM, or until it was removed or replaced.
    Done,
    /// Another holder (this pid, if it said) holds it already.
    Busy(Option<u32>),
}

/// Be the holder of `dir`'s FIFO. Returns in the first process once the forked holder
/// holds the lock and its pid is on file; the holder itself exits in here.
pub fn hold(dir: &Path) -> Result<Held, HolderError> {
    // Started by the daemon it inherits nothing (its fds are close-on-exec); by hand, a
    // shell's descriptors must not stay open for as long as this lives.
    // Nothing here has opened any yet.
    crate::activation::close_inherited_fds(&[]);
    spool::check_private_dir(dir).map_err(RuntimeError::Refused)?;
    let lock_path = dir.join(HOLDER_FILE);
    let lock = crate::runtime::open_lock_file(&lock_path)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(Held::Busy(read_pid(&lock_path)));
        }
        return Err(io_err(&lock_path)(e).into());
    }
    // An earlier holder's pid must not be read as ours: empty until ours is written.
    lock.set_len(0).map_err(io_err(&lock_path))?;
    // Watched before the FIFO is looked at: a removal in between is then seen.
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(errno_err(dir))?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR,
        )
        .map_err(errno_err(dir))?;
    let fifo_path = dir.join(FIFO);
    let meta = fs::symlink_metadata(&fifo_path).map_err(io_err(&fifo_path))?;
    crate::runtime::check_fifo_meta(&fifo_path, meta.file_type().is_symlink(), &meta)
        .map_err(|e| RuntimeError::Refused(e.to_string()))?;
    // Read-only and non-blocking: it opens at once with no writer, and never reads.
    let fifo = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&fifo_path)
        .map_err(io_err(&fifo_path))?;
    let held = fifo.metadata().map_err(io_err(&fifo_path))?;
    if (held.dev(), held.ino()) != (meta.dev(), meta.ino()) {
        return Err(RuntimeError::Refused(format!(
            "{}: replaced while it was opened",
            fifo_path.display()
        ))
        .into());
    }
    let sigfd = term_signalfd().map_err(io_err(dir))?;

    // SAFETY: this process has one thread (it was just exec'd), so the child may run
    // anything.
    match unsafe { nix::unistd::fork() }.map_err(errno_err(dir))? {
        nix::unistd::ForkResult::Parent { child } => {
            // Before this process exits: whoever waits for it then finds the pid on file.
            let write = io::Write::write_all(&mut &lock, format!("{child}\n").as_bytes());
            if let Err(e) = write {
                // SAFETY: our own child, holding the lock nobody could then name.
                unsafe { libc::kill(child.as_raw(), libc::SIGKILL) };
                return Err(io_err(&lock_path)(e).into());
            }
            Ok(Held::Done)
        }
        nix::unistd::ForkResult::Child => {
            detach();
            // Held until the exit: the lock, and the pipe with its buffer.
            let _keep = (&lock, &fifo);
            let ours = [
                (fifo_path, (held.dev(), held.ino())),
                (
                    lock_path,
                    lock.metadata().map_or((0, 0), |m| (m.dev(), m.ino())),
                ),
            ];
            sleep_until_done(&sigfd, &inotify, &ours);
            std::process::exit(0);
        }
    }
}

/// A signalfd for SIGTERM (blocked, so it arrives only there); SIGINT, SIGHUP and SIGPIPE
/// ignored: a terminal's ^C or hang-up and a `kill -HUP` meant for a reload never end
/// the holder.
fn term_signalfd() -> io::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{signal, SigHandler, SigSet, Signal};
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN runs no code.
        unsafe { signal(sig, SigHandler::SigIgn) }?;
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.thread_block()?;
    Ok(nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )?)
}

/// Out of the daemon's session (a terminal's or supervisor's signals to its group never
/// reach the holder), off any mount (cwd /), and no stdio.
fn detach() {
    // SAFETY: plain system calls on this process; failures leave it as it was.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
        libc::prctl(libc::PR_SET_NAME, HOLDER_NAME.as_ptr());
    }
}

/// Sleep in poll() until SIGTERM, or until a path in `ours` no longer names the file held
/// (dev, ino): the FIFO, or the lock file (were it replaced, a new holder could lock the
/// new one while this one still held the FIFO).
fn sleep_until_done(
    sigfd: &nix::sys::signalfd::SignalFd,
    inotify: &Inotify,
    ours: &[(PathBuf, (u64, u64))],
) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sigfd.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: inotify.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            // What changed does not matter: only whether the paths still name our files.
            while inotify.read_events().is_ok_and(|evs| !evs.is_empty()) {}
            let same = |(path, held): &(PathBuf, (u64, u64))| {
                fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *held)
            };
            if !ours.iter().all(same) {
                return;
            }
        }
    }
}

/// The pid written in a holder file, if there is one.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---- The daemon's side -------------------------------------------------------------

/// Who keeps the daemon's FIFO open across its death, for `hotplugctl status`.
#[derive(Debug, Clone, Default)]
pub enum Keeper {
    /// No FIFO source: nothing to keep.
    #[default]
    NoFifo,
    /// The supervisor passed the FIFO (socket activation) and holds it.
    Supervisor,
    /// A holder process, or None when it could not be started.
    Holder(Option<Holder>),
}

impl Keeper {
    /// The value of `status`'s `holder` line.
    pub fn status(&self) -> String {
        match self {
            Keeper::NoFifo => "-".into(),
            Keeper::Supervisor => "supervisor".into(),
            Keeper::Holder(h) => h
                .as_ref()
                .and_then(Holder::pid)
                .map_or("none".into(), |p| p.to_string()),
        }
    }
}

/// The daemon's handle on its FIFO holder.
#[derive(Debug, Clone)]
pub struct Holder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// The FIFO the daemon reads, as (dev, ino): a holder must hold this one.
    fifo: (u64, u64),
    state: Mutex<State>,
    gone_tx: Sender<()>,
    gone_rx: Receiver<()>,
}

#[derive(Debug, Default)]
struct State {
    /// The live holder; None once it is gone and none could be started.
    pid: Option<u32>,
    stopping: bool,
}

impl Holder {
    /// Adopt the live holder of `dir`'s FIFO if it holds `fifo`, else start one; then
    /// watch it. Call with the runtime dir locked, so no other daemon starts holders.
    pub fn start(dir: &Path, fifo: &OwnedFd) -> Result<Holder, HolderError> {
        let st = nix::sys::stat::fstat(fifo.as_raw_fd()).map_err(errno_err(dir))?;
        let (gone_tx, gone_rx) = bounded(1);
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            fifo: (st.st_dev, st.st_ino),
            state: Mutex::new(State::default()),
            gone_tx,
            gone_rx,
        });
        let pid = match live_holder(dir)? {
            Some(pid) if holds(pid, inner.fifo) => {
                log::info!("adopted FIFO holder pid {pid}");
                pid
            }
            Some(pid) => {
                log::warn!(
                    "FIFO holder pid {pid} holds another FIFO than {}; replacing it",
                    dir.join(FIFO).display()
                );
                end(pid, dir);
                inner.spawn()?
            }
            None => inner.spawn()?,
        };
        inner.lock().pid = Some(pid);
        let watched = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("holder".into())
            .spawn(move || watched.watch())
            .map_err(io_err(dir))?;
        Ok(Holder { inner })
    }

    pub fn pid(&self) -> Option<u32> {
        self.inner.lock().pid
    }

    /// End the holder and wait until it is gone: part of a clean stop, before the FIFO is
    /// removed and the daemon's last drain. (Removing the FIFO first would end the holder
    /// too, but the watcher could then take that for a death and start another.)
    pub fn stop(&self) {
        let pid = {
            let mut st = self.inner.lock();
            st.stopping = true;
            st.pid
        };
        let Some(pid) = pid else { return };
        // SAFETY: the pid holds the holder lock: the watcher, which takes the pid away
        // under the same mutex, has not seen it go.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        if self.inner.gone_rx.recv_timeout(STOP_GRACE).is_ok() {
            log::info!("FIFO holder pid {pid} stopped");
            return;
        }
        log::warn!("FIFO holder pid {pid} did not exit {STOP_GRACE:?} after SIGTERM; killing it");
        // SAFETY: as above; it still holds the lock.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        if self.inner.gone_rx.recv_timeout(STOP_GRACE).is_err() {
            log::error!("FIFO holder pid {pid} survived SIGKILL; leaving it");
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start a holder and wait until it holds the lock and our FIFO: its pid.
    fn spawn(&self) -> Result<u32, HolderError> {
        let exe = if Path::new("/proc/self/exe").exists() {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?
        };
        let cmd = format!("hotplugd {HOLDER_ARG} {}", self.dir.display());
        // std's spawn (posix_spawn) starts it with an empty signal mask, default SIGPIPE,
        // and none of our fds (all close-on-exec). Its stderr is ours, for its errors.
        let status = Command::new(&exe)
            .arg0("hotplugd")
            .arg(HOLDER_ARG)
            .arg(&self.dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(io_err(&exe))?;
        if !status.success() {
            return Err(HolderError::Failed {
                cmd,
                status: status.to_string(),
            });
        }
        match live_holder(&self.dir)? {
            Some(pid) if holds(pid, self.fifo) => {
                log::info!("started FIFO holder pid {pid}");
                Ok(pid)
            }
            Some(pid) => {
                end(pid, &self.dir);
                Err(RuntimeError::Refused(format!(
                    "{}: not the FIFO this daemon reads (replaced?); no holder",
                    self.dir.join(FIFO).display()
                ))
                .into())
            }
            None => Err(HolderError::Failed {
                cmd,
                status: "exited without holding the FIFO".into(),
            }),
        }
    }

    /// The watcher thread: sleeps in a blocking flock on the holder file, which returns
    /// when the holder exits; starts a new one unless the daemon is stopping.
    fn watch(&self) {
        let path = self.dir.join(HOLDER_FILE);
        loop {
            let waited = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .and_then(|f| {
                    // SAFETY: flock on an fd we own. Blocking; EINTR only if a signal
                    // handler runs on this thread.
                    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EINTR) {
                            return Err(e);
                        }
                    }
                    Ok(())
                });
            // The lock went with the file: a new holder can take it.
            let mut st = self.lock();
            let old = st.pid.take();
            if st.stopping {
                let _ = self.gone_tx.try_send(());
                return;
            }
            if let Err(e) = waited {
                log::error!(
                    "{}: {e}; no longer watching FIFO holder pid {}",
                    path.display(),
                    old.map_or("-".into(), |p| p.to_string())
                );
                st.pid = old;
                return;
            }
            log::warn!(
                "FIFO holder pid {} exited; starting a new one",
                old.map_or("-".into(), |p| p.to_string())
            );
            match self.spawn() {
                Ok(pid) => st.pid = Some(pid),
                Err(e) => {
                    log::error!("{e}; events in the FIFO's buffer will be lost if the daemon dies");
                    return;
                }
            }
        }
    }
}

/// The pid of the process holding `dir`'s holder lock, if one does.
fn live_holder(dir: &Path) -> Result<Option<u32>, HolderError> {
    let path = dir.join(HOLDER_FILE);
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e).into()),
    };
    // A holder between its lock and its pid (the fork) is there for a moment only.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        // SAFETY: flock on an fd we own; a lock we get is dropped with `file`, at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(&path)(e).into());
        }
        if let Some(pid) = read_pid(&path) {
            return Ok(Some(pid));
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::Refused(format!(
                "{}: locked, but names no pid",
                path.display()
            ))
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether process `pid` has the FIFO `(dev, ino)` open. Without /proc, assumed.
fn holds(pid: u32, fifo: (u64, u64)) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        log::debug!("/proc/{pid}/fd unreadable; trusting the holder lock");
        return true;
    };
    fds.filter_map(|e| fs::metadata(e.ok()?.path()).ok())
        .any(|m| (m.dev(), m.ino()) == fifo)
}

/// End the holder `pid` of `dir` and wait (bounded) for its lock to be free.
fn end(pid: u32, dir: &Path) {
    // SAFETY: pid holds dir's holder lock.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while live_holder(dir).ok().flatten().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
