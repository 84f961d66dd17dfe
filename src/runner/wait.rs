//! Learning that a handler exited: its pidfd or the daemon's SIGCHLD signalfd in a
//! `poll()` beside the output pipe, then `waitpid`. Kernels without `pidfd_open` (before
//! 5.3) fall back to polling every [`FALLBACK_TICK`]. (A lane's ring is `uring`.)

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;

use crate::spawn::Child;

/// Poll interval when there is no pidfd to wait on.
pub(super) const FALLBACK_TICK: Duration = Duration::from_millis(10);

/// Set once `pidfd_open` turned out not to exist, so later runs skip the syscall.
static NO_PIDFD: AtomicBool = AtomicBool::new(false);

/// Reap `child`: `Some(status)` once it has exited, `None` if `nohang` and it is still
/// running. Not nix's `waitpid`: its `WaitStatus` has no room for a real-time signal, and
/// a handler killed by one would lose its status after the child was already reaped.
pub(super) fn reap(child: Child, nohang: bool) -> io::Result<Option<libc::c_int>> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
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

pub(super) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
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
pub(super) fn poll2(
    exit_fd: Option<RawFd>,
    pipe: Option<&File>,
    wait: Option<Duration>,
) -> (bool, bool) {
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
