//! `hotplug SUBSYSTEM`: the shim the kernel runs for every uevent.
//!
//! It frames `argv[1]` and its whole environment as one message, writes it to the daemon's
//! FIFO with a single non-blocking `write()` (≤ PIPE_BUF, so concurrent shims never
//! interleave) and exits. When nobody reads the FIFO, it is missing, or the pipe is full,
//! the message goes to `spool/` (temp file, then rename) for the daemon to pick up.
//! It never blocks the kernel and never drops an event silently.
//!
//! The kernel runs this once per event, so start-up is the whole cost: `no_main` skips
//! std's runtime set-up (~20 syscalls), the binary is static, it reads no config and links
//! no logging. Only `message` and `spool` come from the library.
//!
//! Exit status: 0 delivered or spooled; 1 neither worked (one line on stderr says why);
//! 2 usage, or run by one of hotplugd's own handlers (`HOTPLUGD_RULE` set).
//! `hotplug --help` and `hotplug --version` print and exit 0: no subsystem has such a name.

#![no_main]

use core::ffi::{c_char, c_int, CStr};

use hotplugd::message::{self, HEADER_LEN, MAX_FIFO_PAYLOAD, PIPE_BUF};
use hotplugd::spool;

/// A NUL-terminated path built on the stack.
struct CPath {
    buf: [u8; 512],
    len: usize,
}

impl CPath {
    fn new(parts: &[&[u8]]) -> Option<CPath> {
        let mut p = CPath {
            buf: [0; 512],
            len: 0,
        };
        for part in parts {
            let end = p.len + part.len();
            if end >= p.buf.len() {
                return None;
            }
            p.buf[p.len..end].copy_from_slice(part);
            p.len = end;
        }
        Some(p)
    }
    fn ptr(&self) -> *const c_char {
        self.buf.as_ptr() as *const c_char
    }
}

fn errno() -> c_int {
    // SAFETY: __errno_location always returns a valid thread-local pointer.
    unsafe { *libc::__errno_location() }
}

const USAGE: &[u8] = b"usage: hotplug SUBSYSTEM

The shim the kernel runs for every uevent (/proc/sys/kernel/hotplug): it hands
the event in its environment to hotplugd through RUNTIME_DIR/events, or writes
it to RUNTIME_DIR/spool/ when no daemon reads. RUNTIME_DIR is /run/hotplugd, or
$HOTPLUGD_RUNTIME_DIR. Exit: 0 delivered or spooled, 1 neither, 2 usage.
See hotplug(8).
";

/// `buf` to stdout (help and version only).
fn out(buf: &[u8]) {
    // SAFETY: writing a valid buffer to fd 1, which main made valid.
    unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
}

fn say(parts: &[&[u8]]) {
    let mut line = [0u8; 1024];
    let mut n = 0;
    for part in parts.iter().chain(core::iter::once(&&b"\n"[..])) {
        let take = part.len().min(line.len() - n);
        line[n..n + take].copy_from_slice(&part[..take]);
        n += take;
    }
    // SAFETY: writing a valid buffer to fd 2, which main made valid.
    unsafe { libc::write(2, line.as_ptr().cast(), n) };
}

fn strerror(e: c_int) -> &'static [u8] {
    // SAFETY: strerror returns a pointer to a static, NUL-terminated string.
    unsafe { CStr::from_ptr(libc::strerror(e)) }.to_bytes()
}

/// The kernel may start us with fds 0-2 closed; anything we open would then land there and
/// a later write to "stderr" would go into the FIFO. Fill the holes with /dev/null.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: fcntl on an integer fd has no memory effects.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: static NUL-terminated path. open() returns the lowest free fd,
            // which is this hole; if that fails there is nothing better to do.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

enum Delivery {
    Sent,
    /// Why the FIFO could not take it (errno), to report if spooling fails too.
    Spool(c_int),
}

/// One non-blocking write to the FIFO. Refuses anything but a FIFO owned by our own uid,
/// so a planted regular file or another user's pipe never receives the event.
fn send_to_fifo(path: &CPath, frame: &[u8]) -> Delivery {
    if frame.len() > PIPE_BUF {
        return Delivery::Spool(libc::EMSGSIZE);
    }
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: path is NUL-terminated.
    let fd = unsafe { libc::open(path.ptr(), flags) };
    if fd < 0 {
        return Delivery::Spool(errno());
    }
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fd is open, st is a valid out-parameter.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFIFO
        // SAFETY: geteuid cannot fail.
        && st.st_uid == unsafe { libc::geteuid() };
    let result = if !ok {
        Delivery::Spool(libc::EPERM)
    } else {
        // SAFETY: frame is a valid buffer; fd is open.
        let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        if n == frame.len() as isize {
            Delivery::Sent
        } else {
            // EAGAIN (full), EPIPE (reader left between open and write; SIGPIPE is
            // ignored), or a short write, which cannot happen for ≤ PIPE_BUF bytes.
            Delivery::Spool(if n < 0 { errno() } else { libc::EIO })
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

// The error carries the failing path on the stack: the shim allocates nothing on this path.
#[allow(clippy::result_large_err)]
/// Write the frame as a spool entry: create the runtime dir and spool/ if this is early
/// boot and nothing made them yet, write a temp file, rename it to its sorted name.
fn spool(dir: &[u8], frame: &[u8], seqnum: Option<u64>) -> Result<(), (c_int, CPath)> {
    let fail = |p: &CPath| {
        (
            errno(),
            CPath::new(&[&p.buf[..p.len]]).unwrap_or_else(empty),
        )
    };
    let spool_dir = CPath::new(&[dir, b"/", spool::SPOOL.as_bytes(), b"\0"]).ok_or_else(toolong)?;
    let top = CPath::new(&[dir, b"\0"]).ok_or_else(toolong)?;
    for d in [&top, &spool_dir] {
        // SAFETY: NUL-terminated path.
        if unsafe { libc::mkdir(d.ptr(), 0o700) } != 0 && errno() != libc::EEXIST {
            return Err(fail(d));
        }
    }
    // SAFETY: getpid and clock_gettime (vDSO) have no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let mut ts: libc::timespec = unsafe { core::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let nanos = (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64);
    let mut name = [0u8; spool::MAX_NAME];
    let n = spool::file_name(seqnum, pid, nanos, &mut name);
    let name = &name[..n];
    let sd = &spool_dir.buf[..spool_dir.len - 1];
    let tmp = CPath::new(&[sd, b"/.tmp-", name, b"\0"]).ok_or_else(toolong)?;
    let dest = CPath::new(&[sd, b"/", name, b"\0"]).ok_or_else(toolong)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(tmp.ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(fail(&tmp));
    }
    let mut done = 0;
    while done < frame.len() {
        // SAFETY: valid buffer slice, open fd.
        let w = unsafe { libc::write(fd, frame[done..].as_ptr().cast(), frame.len() - done) };
        if w <= 0 {
            let e = if w < 0 { errno() } else { libc::ENOSPC };
            // SAFETY: fd is ours; tmp is NUL-terminated.
            unsafe {
                libc::close(fd);
                libc::unlink(tmp.ptr());
            }
            return Err((e, tmp));
        }
        done += w as usize;
    }
    // SAFETY: fd is ours.
    if unsafe { libc::close(fd) } != 0 {
        let e = (
            errno(),
            CPath::new(&[&tmp.buf[..tmp.len]]).unwrap_or_else(empty),
        );
        // SAFETY: a NUL-terminated path.
        unsafe { libc::unlink(tmp.ptr()) };
        return Err(e);
    }
    // SAFETY: NUL-terminated paths.
    if unsafe { libc::rename(tmp.ptr(), dest.ptr()) } != 0 {
        let e = fail(&dest);
        // SAFETY: a NUL-terminated path.
        unsafe { libc::unlink(tmp.ptr()) };
        return Err(e);
    }
    Ok(())
}

fn empty() -> CPath {
    CPath {
        buf: [0; 512],
        len: 0,
    }
}

fn toolong() -> (c_int, CPath) {
    (libc::ENAMETOOLONG, empty())
}

/// # Safety
/// Called by the C runtime with valid argc/argv/envp.
#[no_mangle]
pub unsafe extern "C" fn main(
    argc: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    ensure_std_fds();
    // A reader that leaves between our open and write must cost an EPIPE, not our life.
    libc::signal(libc::SIGPIPE, libc::SIG_IGN);

    if argc != 2 {
        say(&[b"usage: hotplug SUBSYSTEM (run by the kernel, event in the environment)"]);
        return 2;
    }
    let arg1 = CStr::from_ptr(*argv.add(1)).to_bytes();
    // No subsystem is named like an option: these are a person asking.
    match arg1 {
        b"--help" | b"-h" => {
            out(USAGE);
            return 0;
        }
        b"--version" | b"-V" => {
            out(concat!("hotplug ", env!("CARGO_PKG_VERSION"), "\n").as_bytes());
            return 0;
        }
        _ => {}
    }

    // Frame the message on the stack; only a message too big for the FIFO (never one
    // from the kernel, whose whole environment is ≤ 2048 bytes) goes to the heap.
    let mut stack = [0u8; PIPE_BUF];
    let mut heap: Vec<u8> = Vec::new();
    let mut len = HEADER_LEN;
    let mut runtime_dir: &[u8] = spool::DEFAULT_RUNTIME_DIR.as_bytes();
    let mut seqnum = None;
    let mut push = |bytes: &[u8], len: &mut usize| {
        let end = *len + bytes.len() + 1;
        if heap.is_empty() && end > stack.len() {
            heap.extend_from_slice(&stack[..*len]);
        }
        if heap.is_empty() {
            stack[*len..end - 1].copy_from_slice(bytes);
            stack[end - 1] = 0;
        } else {
            heap.extend_from_slice(bytes);
            heap.push(0);
        }
        *len = end;
    };
    push(arg1, &mut len);
    let mut e = envp;
    while !e.is_null() && !(*e).is_null() {
        let var = CStr::from_ptr(*e).to_bytes();
        if let Some(v) = var.strip_prefix(b"HOTPLUGD_RULE=") {
            say(&[
                b"hotplug: run by hotplugd's own handler (HOTPLUGD_RULE=",
                v,
                b"), not by the kernel; refusing to loop",
            ]);
            return 2;
        }
        if let Some(v) = var.strip_prefix(b"HOTPLUGD_RUNTIME_DIR=") {
            // Where to deliver, not part of the event.
            if !v.is_empty() {
                runtime_dir = v;
            }
            e = e.add(1);
            continue;
        } else if let Some(v) = var.strip_prefix(b"SEQNUM=") {
            seqnum = hotplugd::event::parse_seqnum(v);
        }
        push(var, &mut len);
        e = e.add(1);
    }
    let frame: &mut [u8] = if heap.is_empty() {
        &mut stack[..len]
    } else {
        &mut heap[..]
    };
    let (header, payload) = frame.split_at_mut(HEADER_LEN);
    let mut h = [0u8; HEADER_LEN];
    message::write_header(&mut h, payload);
    header.copy_from_slice(&h);
    let frame: &[u8] = frame;

    let why = if frame.len() - HEADER_LEN > MAX_FIFO_PAYLOAD {
        libc::EMSGSIZE
    } else {
        let Some(fifo) = CPath::new(&[runtime_dir, b"/", spool::FIFO.as_bytes(), b"\0"]) else {
            say(&[b"hotplug: runtime dir path too long"]);
            return 1;
        };
        match send_to_fifo(&fifo, frame) {
            Delivery::Sent => return 0,
            Delivery::Spool(e) => e,
        }
    };
    match spool(runtime_dir, frame, seqnum) {
        Ok(()) => 0,
        Err((e, path)) => {
            say(&[
                b"hotplug: event LOST: FIFO ",
                runtime_dir,
                b"/events: ",
                strerror(why),
                b"; spool ",
                &path.buf[..path.len.saturating_sub(1)],
                b": ",
                strerror(e),
            ]);
            1
        }
    }
}
