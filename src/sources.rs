//! Where events come from: the FIFO the shims write to, and the spool directory they fall
//! back to. Each source runs on its own thread and only feeds the queue's owner over a
//! channel; none of them touches the queue.
//!
//! The FIFO reader keeps draining while handlers run (a full pipe would push shims to the
//! slower spool path), reads big chunks, and splits whole messages with
//! [`message::Splitter`]. Any byte sequence is survivable: bad bytes are counted, logged
//! (rate-limited) and skipped, and the next good message is found. A partial message held
//! while the writers have gone quiet for [`STALE_AFTER`] was truncated and is dropped.
//!
//! The spool watcher waits on inotify for finished files (`rename` into `spool/` shows as
//! `IN_MOVED_TO`) and sends their events with their paths; the owner deletes a file only
//! once its event is queued, so a crash in between re-reads it rather than losing it.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::event::Event;
use crate::message::{Item, Splitter};
use crate::spool::{Spool, SpoolError};

/// How long a partial message may wait for the rest of its bytes. Real writers write whole
/// messages at once, so a partial one that stays this long was truncated.
pub const STALE_AFTER: Duration = Duration::from_millis(200);

/// Bytes read from the FIFO per `read()`.
const CHUNK: usize = 256 * 1024;

/// What sources tell the queue's owner.
#[derive(Debug)]
pub enum Input {
    /// Events read from the FIFO, in pipe order.
    Fifo(Vec<Event>),
    /// Bytes or messages from the FIFO that were dropped.
    Bad(u64),
    /// Events read from spool files; delete each file once its event is queued.
    Spooled(Vec<(Event, PathBuf)>),
    /// The FIFO reader drained the pipe after being told to stop, and exited.
    FifoClosed,
}

/// Logs at most `burst` warnings per `window`, then one line saying how many it held back.
pub struct RateLimit {
    window: Duration,
    burst: u32,
    start: Instant,
    shown: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            window,
            burst,
            start: Instant::now(),
            shown: 0,
            suppressed: 0,
        }
    }

    /// Whether to log this one. Starting a new window reports what the last one suppressed.
    pub fn allow(&mut self, what: &str) -> bool {
        let now = Instant::now();
        if now.duration_since(self.start) >= self.window {
            if self.suppressed > 0 {
                log::warn!("{} more {what} not logged", self.suppressed);
            }
            self.start = now;
            self.shown = 0;
            self.suppressed = 0;
        }
        if self.shown < self.burst {
            self.shown += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Start the FIFO reader on `fifo` (opened O_RDWR|O_NONBLOCK by the daemon). When `stop`
/// becomes readable it drains what the pipe holds, sends it, sends `FifoClosed` and exits.
pub fn spawn_fifo_reader(
    fifo: OwnedFd,
    stop: OwnedFd,
    tx: Sender<Input>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("fifo".into())
        .spawn(move || FifoReader::new(tx).run(fifo.as_fd(), stop.as_fd()))
}

struct FifoReader {
    tx: Sender<Input>,
    splitter: Splitter,
    buf: Vec<u8>,
    batch: Vec<Event>,
    bad: u64,
    warn: RateLimit,
}

impl FifoReader {
    fn new(tx: Sender<Input>) -> Self {
        FifoReader {
            tx,
            splitter: Splitter::new(),
            buf: vec![0; CHUNK],
            batch: Vec::with_capacity(1024),
            bad: 0,
            warn: RateLimit::new(10, Duration::from_secs(10)),
        }
    }

    fn run(&mut self, fifo: BorrowedFd, stop: BorrowedFd) {
        loop {
            let timeout = if self.splitter.pending() > 0 {
                PollTimeout::from(STALE_AFTER.as_millis() as u16)
            } else {
                PollTimeout::NONE
            };
            let mut fds = [
                PollFd::new(fifo, PollFlags::POLLIN),
                PollFd::new(stop, PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    let (bad, batch, warn) = (&mut self.bad, &mut self.batch, &mut self.warn);
                    self.splitter
                        .flush_stale(|item| take_item(item, batch, bad, warn));
                    self.send();
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("FIFO poll failed: {e}; the FIFO reader stops");
                    return;
                }
            }
            let stopping = fds[1].any().unwrap_or(false);
            self.drain(fifo);
            if stopping {
                // A shim that opened the FIFO just before it was unlinked may still be
                // between its open() and its write(): give it a moment, then drain again.
                thread::sleep(Duration::from_millis(50));
                self.drain(fifo);
                let _ = self.tx.send(Input::FifoClosed);
                return;
            }
        }
    }

    /// Read until the pipe is empty, splitting and sending whole messages.
    fn drain(&mut self, fifo: BorrowedFd) {
        loop {
            match nix::unistd::read(fifo.as_raw_fd(), &mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    let (bad, batch, warn) = (&mut self.bad, &mut self.batch, &mut self.warn);
                    self.splitter
                        .feed(&self.buf[..n], |item| take_item(item, batch, bad, warn));
                    if self.batch.len() >= 4096 {
                        self.send();
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    log::error!("reading the FIFO: {e}");
                    break;
                }
            }
        }
        self.send();
    }

    fn send(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(1024));
            let _ = self.tx.send(Input::Fifo(batch));
        }
        if self.bad > 0 {
            let _ = self.tx.send(Input::Bad(std::mem::take(&mut self.bad)));
        }
    }
}

fn take_item(item: Item<'_>, batch: &mut Vec<Event>, bad: &mut u64, warn: &mut RateLimit) {
    match item {
        Item::Message(payload) => match Event::from_payload(payload) {
            Ok(ev) => batch.push(ev),
            Err(e) => {
                *bad += 1;
                if warn.allow("bad messages") {
                    log::warn!(
                        "FIFO: bad message ({e}), {} bytes: ignoring it",
                        payload.len()
                    );
                }
            }
        },
        Item::Garbage { bytes, error } => {
            *bad += 1;
            if warn.allow("bad messages") {
                log::warn!("FIFO: skipped {bytes} bytes ({error}): resynchronising");
            }
        }
    }
}

/// Start the spool watcher. It sends every finished file once (the owner deletes it), at
/// start and whenever a file is renamed into the directory; bad files are renamed to
/// `.bad-NAME` so they are kept for a look but never read again.
pub fn spawn_spool_watcher(
    spool: Spool,
    stop: OwnedFd,
    tx: Sender<Input>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(
        spool.dir(),
        AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
    )?;
    thread::Builder::new().name("spool".into()).spawn(move || {
        let mut sent = HashSet::new();
        loop {
            scan_spool(&spool, &mut sent, &tx);
            let mut fds = [
                PollFd::new(inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) if fds[1].any().unwrap_or(false) => return,
                Ok(_) => {
                    while let Ok(events) = inotify.read_events() {
                        if events.is_empty() {
                            break;
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::error!("spool watcher: poll: {e}; it stops");
                    return;
                }
            }
        }
    })
}

/// Send the files not sent yet; forget names that are gone (the owner deleted them).
pub fn scan_spool(spool: &Spool, sent: &mut HashSet<PathBuf>, tx: &Sender<Input>) {
    let entries = match spool.entries() {
        Ok(e) => e,
        Err(e) => {
            log::error!("{}: {e}", spool.dir().display());
            return;
        }
    };
    sent.retain(|p| entries.contains(p));
    let mut batch = Vec::new();
    for path in entries {
        if sent.contains(&path) {
            continue;
        }
        match read_spooled(spool, &path) {
            Some(ev) => {
                sent.insert(path.clone());
                batch.push((ev, path));
            }
            None => continue,
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Input::Spooled(batch));
    }
}

/// Read one spool file; a bad one is logged and set aside.
pub fn read_spooled(spool: &Spool, path: &std::path::Path) -> Option<Event> {
    match spool.read(path) {
        Ok(ev) => Some(ev),
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            let aside = path.with_file_name(format!(
                ".bad-{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            log::warn!("spool: {e}; moved aside to {}", aside.display());
            if let Err(e) = std::fs::rename(path, &aside) {
                log::warn!("spool: {}: {e}", aside.display());
            }
            None
        }
    }
}
