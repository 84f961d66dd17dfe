//! A lane's io_uring: how one runner among several learns that its handler exited
//! without a new file per handler.
//!
//! * **The exit** is an `IORING_OP_WAITID` completion for the child's pid, which also
//!   reaps it. The kernel checks the pid before it wakes a waiter, so a handler's exit
//!   wakes its own lane only: what the daemon's one SIGCHLD signalfd cannot do for
//!   several threads (every exit would wake every lane).
//! * **The output pipe** is a poll completion, armed when the pipe is first waited on and
//!   left armed across handlers while the runner keeps the pipe; it is cancelled before
//!   the pipe is closed ([`Uring::forget_pipe`]), since the request holds the file open.
//! * **The deadline** is the wait's own timeout.
//!
//! Why not a pidfd per handler, as before: `pidfd_open` and the close of the new pidfs
//! file cost 7 µs of the runner's CPU per run on the reference VM, 2 % of a `/bin/true`
//! run with two lanes on two CPUs (BENCHMARKS.md); a WAITID costs what `waitpid` does.
//! It needs Linux 6.7. [`Uring::new`] says `None` where the kernel lacks it or a seccomp
//! filter or `kernel.io_uring_disabled` refuses io_uring, and the runner then takes a
//! pidfd per handler.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use io_uring::{opcode, types, IoUring, Probe};

use super::wait::FALLBACK_TICK;

/// `user_data` of the three kinds of request.
const WAIT: u64 = 1;
const PIPE: u64 = 2;
const CANCEL: u64 = 3;

/// Set once io_uring turned out unusable, so later lanes do not try again (and log once).
static UNUSABLE: AtomicBool = AtomicBool::new(false);

pub(super) struct Uring {
    ring: IoUring,
    /// Where the kernel writes how the child ended. Boxed: its address is in the WAITID
    /// request until that completes.
    info: Box<libc::siginfo_t>,
    /// A WAITID is in flight.
    waiting: bool,
    /// How the child ended, once its WAITID completed and until [`Uring::wait`] says so.
    exit: Option<io::Result<libc::c_int>>,
    /// A poll request on the output pipe is in flight.
    polling: bool,
    /// The pipe poll completed since the last [`Uring::wait`].
    pipe_ready: bool,
    /// The last `io_uring_enter` failed: said once, not at every retry.
    failing: bool,
}

impl Uring {
    /// A ring of its own for the calling thread's runner, or `None` (logged once per
    /// process) where io_uring or its WAITID is not to be had.
    pub(super) fn new() -> Option<Uring> {
        if UNUSABLE.load(Ordering::Relaxed) {
            return None;
        }
        match Self::try_new() {
            Ok(uring) => Some(uring),
            Err(why) => {
                if !UNUSABLE.swap(true, Ordering::Relaxed) {
                    log::info!("io_uring waitid unavailable ({why}): lanes wait with pidfds");
                }
                None
            }
        }
    }

    fn try_new() -> Result<Uring, String> {
        // Two requests in flight at most (the exit, the pipe) and a cancel.
        let ring = IoUring::new(4).map_err(|e| e.to_string())?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("probe: {e}"))?;
        if !probe.is_supported(opcode::WaitId::CODE) {
            return Err("no IORING_OP_WAITID before Linux 6.7".into());
        }
        Ok(Uring {
            ring,
            // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
            info: Box::new(unsafe { std::mem::zeroed() }),
            waiting: false,
            exit: None,
            polling: false,
            pipe_ready: false,
            failing: false,
        })
    }

    /// Queue the wait for `pid`'s exit; it goes to the kernel with the next
    /// [`Uring::wait`]. Fails only if a wait is already queued or the ring is full,
    /// which one run at a time never makes.
    pub(super) fn watch(&mut self, pid: libc::pid_t) -> io::Result<()> {
        if self.waiting || self.exit.is_some() {
            return Err(io::Error::other(
                "a handler's exit is already being waited for",
            ));
        }
        let entry = opcode::WaitId::new(libc::P_PID, pid as libc::id_t, libc::WEXITED)
            .infop(&*self.info)
            .build()
            .user_data(WAIT);
        // SAFETY: `info` is boxed and outlives the request: the ring is dropped before
        // it (field order), and a dropped ring cancels what is in flight.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.waiting = true;
        Ok(())
    }

    /// Wait until the child exited or the pipe is readable, or `wait` passes (`None`:
    /// forever). Returns how the child ended, once, and whether the pipe may have
    /// something to read. Interruptions and failures count as a wakeup with nothing
    /// ready; the caller re-checks everything.
    pub(super) fn wait(
        &mut self,
        pipe: Option<&File>,
        wait: Option<Duration>,
    ) -> (Option<io::Result<libc::c_int>>, bool) {
        if let Some(pipe) = pipe {
            if !self.polling && !self.pipe_ready {
                let entry = opcode::PollAdd::new(types::Fd(pipe.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(PIPE);
                // SAFETY: a poll request holds no pointer into our memory.
                if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                    self.polling = true;
                }
            }
        }
        if self.exit.is_none() && !self.pipe_ready {
            let submitted = match wait {
                None => self.ring.submit_and_wait(1),
                Some(w) => {
                    let ts = types::Timespec::from(w);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            match submitted {
                Ok(_) => self.failing = false,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        log::warn!("io_uring_enter: {e}; trying again every {FALLBACK_TICK:?}");
                    }
                    std::thread::sleep(FALLBACK_TICK);
                }
            }
        }
        self.complete();
        (self.exit.take(), std::mem::take(&mut self.pipe_ready))
    }

    /// Take what completed.
    fn complete(&mut self) {
        for cqe in self.ring.completion() {
            match cqe.user_data() {
                WAIT => {
                    self.waiting = false;
                    self.exit = Some(match cqe.result() {
                        r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                        _ => Ok(wait_status(&self.info)),
                    });
                }
                PIPE => {
                    // Readable, or the poll failed or was cancelled: either way a read
                    // tells, and the next wait arms a new poll.
                    self.polling = false;
                    self.pipe_ready = true;
                }
                _ => {}
            }
        }
    }

    /// Before the runner closes its output pipe: cancel the poll on it, which holds the
    /// pipe open, and wait until the kernel let go of it.
    pub(super) fn forget_pipe(&mut self) {
        self.pipe_ready = false;
        if !self.polling {
            return;
        }
        let cancel = opcode::AsyncCancel::new(PIPE).build().user_data(CANCEL);
        // SAFETY: a cancel request holds no pointer into our memory.
        if unsafe { self.ring.submission().push(&cancel) }.is_err() {
            log::error!("io_uring: cannot cancel the output pipe's poll: queue full");
            return;
        }
        while self.polling {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    log::error!("io_uring: cancelling the output pipe's poll: {e}");
                    return;
                }
            }
            self.complete();
        }
        self.pipe_ready = false;
    }
}

/// The `waitpid` status word for the child a WAITID saw end, so one decoder serves
/// every way of waiting.
fn wait_status(info: &libc::siginfo_t) -> libc::c_int {
    // SAFETY: the kernel filled in a SIGCHLD siginfo, which carries si_status.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    }
}
