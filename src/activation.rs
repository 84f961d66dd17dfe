//! What a supervisor hands the daemon and wants to hear back: systemd socket activation
//! (`LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`: the event FIFO from `ListenFIFO=` and the
//! control socket from `ListenStream=`), `sd_notify` readiness (`NOTIFY_SOCKET`), and
//! s6-style readiness (`--ready-fd N`: a newline written to fd N).
//! Every other fd a process was started with is closed ([`close_inherited_fds`]).
//!
//! A FIFO held by the supervisor outlives the daemon, and so do the events buffered in it:
//! a restart loses nothing that the kernel's helpers wrote. Each fd is checked to be what it
//! claims (a FIFO; a listening Unix stream socket) before it is used.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{fstat, SFlag};

/// The first fd systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// The fds a supervisor passed.
#[derive(Debug, Default)]
pub struct Activated {
    pub fifo: Option<OwnedFd>,
    pub control: Option<UnixListener>,
}

impl Activated {
    /// The fds it holds, which the daemon keeps when it closes what else it inherited.
    pub fn fds(&self) -> Vec<RawFd> {
        let fifo = self.fifo.as_ref().map(|f| f.as_raw_fd());
        let control = self.control.as_ref().map(|l| l.as_raw_fd());
        fifo.into_iter().chain(control).collect()
    }
}

/// Take the fds passed by socket activation, if `LISTEN_PID` is this process. The
/// variables are removed so nothing inherits them.
pub fn take_listen_fds() -> io::Result<Activated> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let mut out = Activated::default();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(out);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(out);
    }
    let n: RawFd = fds
        .parse()
        .map_err(|_| io::Error::other(format!("LISTEN_FDS={fds:?} is not a number")))?;
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    for i in 0..n {
        let raw = SD_LISTEN_FDS_START + i;
        let name = names.get(i as usize).copied().unwrap_or("");
        // SAFETY: systemd passes these fds to us to own; each is taken once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        let st = fstat(raw).map_err(io::Error::from)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFIFO {
            if out.fifo.is_some() {
                return Err(io::Error::other(format!(
                    "fd {raw} ({name}): a second FIFO"
                )));
            }
            out.fifo = Some(fd);
        } else if kind == SFlag::S_IFSOCK {
            let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
            let stream =
                getsockopt(&fd, sockopt::SockType).ok() == Some(nix::sys::socket::SockType::Stream);
            if !listening || !stream || out.control.is_some() {
                return Err(io::Error::other(format!(
                    "fd {raw} ({name}): not the one listening Unix stream socket expected"
                )));
            }
            out.control = Some(UnixListener::from(fd));
        } else {
            return Err(io::Error::other(format!(
                "fd {raw} ({name}): neither a FIFO nor a socket"
            )));
        }
    }
    Ok(out)
}

/// Readiness and status for the supervisor.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    ready_fd: Option<OwnedFd>,
}

impl Notifier {
    /// The fds it holds (the notify socket, the readiness fd), kept as [`Activated::fds`].
    pub fn fds(&self) -> Vec<RawFd> {
        let socket = self.socket.as_ref().map(|(s, _)| s.as_raw_fd());
        let ready = self.ready_fd.as_ref().map(|f| f.as_raw_fd());
        socket.into_iter().chain(ready).collect()
    }

    /// From `NOTIFY_SOCKET` (removed from the environment) and `--ready-fd`.
    pub fn new(ready_fd: Option<RawFd>) -> io::Result<Notifier> {
        let mut n = Notifier::default();
        if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
            std::env::remove_var("NOTIFY_SOCKET");
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(abs) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
            };
            n.socket = Some((UnixDatagram::unbound()?, addr));
        }
        if let Some(fd) = ready_fd {
            if fcntl(fd, FcntlArg::F_GETFD).is_err() {
                return Err(io::Error::other(format!("--ready-fd {fd}: not an open fd")));
            }
            // SAFETY: checked open just above, and the supervisor gave it to us to write one
            // line and close: owned from here on.
            n.ready_fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(n)
    }

    /// Send `KEY=VALUE` lines to systemd, if it listens.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::debug!("sd_notify: {e}");
            }
        }
    }

    /// Tell systemd a reload starts. systemd 253 and later (Type=notify-reload) ignore
    /// `RELOADING=1` without `MONOTONIC_USEC`, the time the reload began, which lets it
    /// tell this reload's `READY=1` from an earlier one's (sd_notify(3)).
    pub fn reloading(&self) {
        if self.socket.is_some() {
            self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
    }

    /// Tell every supervisor the daemon is ready.
    pub fn ready(&mut self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
        if let Some(fd) = self.ready_fd.take() {
            let _ = nix::unistd::write(&fd, b"\n");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd counts it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Close every fd above 2 but `keep` (the daemon's: socket activation's, readiness'; the
/// FIFO holder keeps none): handlers get exactly stdin, stdout and stderr; an fd the starter leaked (a pipe whose reader waits
/// for its end) is not held open for the daemon's life; and each handler's spawn copies
/// a small fd table, not one sized for the highest fd inherited. Without `close_range`
/// (before Linux 5.9) they are marked close-on-exec instead, as handlers must not get them.
pub fn close_inherited_fds(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok().filter(|&fd| fd > 2))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    // SAFETY: close_range on ranges that hold none of the fds this process owns (those
    // are in `keep`); whatever else is there was inherited and is ours to close.
    let close = |first: u32, last: u32, flags: u32| unsafe {
        libc::syscall(libc::SYS_close_range, first, last, flags)
    };
    let mut first = 3u32;
    for &k in &keep {
        if k > first && close(first, k - 1, 0) != 0 {
            return mark_cloexec();
        }
        first = k + 1;
    }
    if close(first, u32::MAX, 0) != 0 {
        mark_cloexec();
    }
}

/// Every fd above 2 close-on-exec, for kernels without `close_range`.
fn mark_cloexec() {
    // SAFETY: close_range with CLOEXEC only changes fd flags.
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
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for fd in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            if fd > 2 {
                // SAFETY: setting a flag on an fd number; harmless if it is gone.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}
