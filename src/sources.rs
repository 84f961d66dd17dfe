//! Where events come from: the FIFO the shims write to, and the spool directory they fall
//! back to. Each source runs on its own thread and only feeds the queue's owner over a
//! channel; none of them touches the queue.
//!
//! The FIFO reader reads the pipe straight into the crash journal's mapped segment and
//! splits whole messages where they lie (see `journal`). It keeps draining while handlers
//! run (a full pipe would push shims to the slower spool path) and reads all the pipe
//! holds at once. Any byte sequence is survivable: bad bytes are counted, logged
//! (rate-limited) and skipped, and the next good message is found. A partial message held
//! while the writers have gone quiet for [`STALE_AFTER`] was truncated and is dropped.
//!
//! The reader never `poll()`s the FIFO: it waits for the next event in a blocking
//! `read()`. Once anyone has polled a pipe, Linux wakes its wait queue on every write
//! after, not only on a write to an empty pipe, and that costs every shim's write a
//! fifth more CPU (see BENCHMARKS.md). A signal, [`wake_signal`], takes the reader out of
//! that read to stop.
//!
//! The spool watcher waits on inotify for finished files (`rename` into `spool/` shows as
//! `IN_MOVED_TO`) and sends their events with their paths; the owner deletes a file only
//! once its event is queued, so a crash in between re-reads it rather than losing it.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::event::Event;
use crate::journal::{self, FifoJournal, FifoSegment};
use crate::message::{self, Item, Splitter};
use crate::spool::{Spool, SpoolError};

/// How long a partial message may wait for the rest of its bytes. Real writers write whole
/// messages at once, so a partial one that stays this long was truncated.
pub const STALE_AFTER: Duration = Duration::from_millis(200);
/// How often the reader looks at the pipe when it cannot sleep in it: while a partial
/// message is held (to know when [`STALE_AFTER`] has passed), after an end of file, or
/// when the fd cannot be made blocking.
const STALE_CHECK: Duration = Duration::from_millis(10);
/// After the journal failed (a full runtime fs), how long the reader reads plainly before
/// it tries a new segment.
const JOURNAL_RETRY: Duration = Duration::from_secs(5);

/// Bytes read from the FIFO per `read()` without a journal.
const CHUNK: usize = 256 * 1024;

/// A read below this size finds the writers no faster than the reader: wait
/// [`BUSY_WAIT`] before the next (see `FifoReader::drain`). About 200 messages.
const BIG_READ: usize = 64 * 1024;
/// At a million events a second, ~100 arrive meanwhile; a handler's fork+exec alone is
/// ten times longer.
const BUSY_WAIT: Duration = Duration::from_micros(100);

/// What sources tell the queue's owner.
#[derive(Debug)]
pub enum Input {
    /// Events read from the FIFO, in pipe order.
    Fifo(Vec<Event>),
    /// Events from the kernel's netlink broadcast (see `netlink`), or a rescan after it
    /// overflowed.
    Netlink(Vec<Event>),
    /// Bytes or messages from the FIFO, or netlink datagrams, that were dropped.
    Bad(u64),
    /// Events read from spool files; delete each file once its event is queued.
    Spooled(Vec<(Event, PathBuf)>),
    /// The FIFO reader drained the pipe after being told to stop, and exited.
    FifoClosed,
    /// A journal segment will get no more events.
    Sealed(u32),
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

/// The signal that takes the FIFO reader out of a `read()` asleep in the pipe, to look at
/// its stop flag: the first real-time signal glibc leaves to programs (34). Its handler
/// does nothing; only the FIFO thread has it unblocked, so that one sent to the whole
/// daemon interrupts nothing else.
pub fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Block [`wake_signal`] in the calling thread and every thread it starts later: call
/// before the first thread starts.
pub fn block_wake_signal() -> std::io::Result<()> {
    wake_mask(libc::SIG_BLOCK)
}

fn wake_mask(how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a local sigset_t, filled by sigemptyset before use. libc, not nix: nix's
    // `SigSet` takes a `Signal`, which has no real-time signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, wake_signal());
        match libc::pthread_sigmask(how, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

extern "C" fn on_wake(_: libc::c_int) {}

/// Stops the FIFO reader.
pub struct FifoStop {
    stop: Arc<AtomicBool>,
    /// Kept unjoined, so the thread's id stays valid for `pthread_kill` even after it
    /// exited.
    thread: thread::JoinHandle<()>,
}

impl FifoStop {
    /// Ask the reader to drain and exit, and wake it. A wake that lands between its look
    /// at the flag and its `read()` is lost: call again until it sends `FifoClosed`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the thread is not joined (see `thread`), so its pthread_t is valid.
        // libc, not nix: nix's `pthread_kill` takes a `Signal`, which has no real-time
        // signals.
        unsafe { libc::pthread_kill(self.thread.as_pthread_t(), wake_signal()) };
    }
}

/// Start the FIFO reader on `fifo` (opened O_RDWR|O_NONBLOCK by the daemon). Once stopped
/// (see [`FifoStop`]) it drains what the pipe holds (`drain_on_stop`; a supervisor that
/// holds the FIFO keeps the rest for the next start otherwise), sends `FifoClosed` and
/// exits.
pub fn spawn_fifo_reader(
    fifo: OwnedFd,
    journal: FifoJournal,
    drain_on_stop: bool,
    tx: Sender<Input>,
) -> std::io::Result<FifoStop> {
    // No SA_RESTART: the read() the signal lands in must return EINTR.
    // SAFETY: installs a handler that does nothing, so it is async-signal-safe. libc, not
    // nix: nix's `sigaction` takes a `Signal`, which has no real-time signals.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(wake_signal(), &sa, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let pipe_size = match fcntl(fifo.as_raw_fd(), FcntlArg::F_GETPIPE_SZ) {
        Ok(n) if n > 0 => n as usize,
        _ => 1 << 20,
    };
    let mut reader = FifoReader::new(journal, pipe_size, tx)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop);
    let thread = thread::Builder::new().name("fifo".into()).spawn(move || {
        if let Err(e) = wake_mask(libc::SIG_UNBLOCK) {
            log::error!(
                "unblocking the FIFO reader's wake signal: {e}; a stop will wait 5 s for it"
            );
        }
        reader.run(fifo.as_fd(), &stop_flag, drain_on_stop)
    })?;
    Ok(FifoStop { stop, thread })
}

struct FifoReader {
    tx: Sender<Input>,
    /// Without a journal: splits what plain reads into `buf` bring.
    splitter: Splitter,
    buf: Vec<u8>,
    taken: Taken,
    journal: FifoJournal,
    pipe_size: usize,
    /// The segment the pipe is read into; None if the journal failed and the reader fell
    /// back to plain reads.
    segment: Option<FifoSegment>,
    /// How much of the segment was split into messages.
    parsed: usize,
    /// Without a journal: when to try a new segment.
    retry_at: Option<Instant>,
}

impl FifoReader {
    fn new(journal: FifoJournal, pipe_size: usize, tx: Sender<Input>) -> std::io::Result<Self> {
        let segment = FifoSegment::create(&journal, pipe_size)?;
        Ok(FifoReader {
            tx,
            splitter: Splitter::new(),
            buf: Vec::new(),
            taken: Taken {
                batch: Vec::with_capacity(1024),
                bad: 0,
                warn: RateLimit::new(10, Duration::from_secs(10)),
            },
            journal,
            pipe_size,
            segment: Some(segment),
            parsed: 0,
            retry_at: None,
        })
    }

    fn run(&mut self, fifo: BorrowedFd, stop: &AtomicBool, drain_on_stop: bool) {
        // All the bits kept, known to nix or not: F_SETFL puts them back as they were.
        let flags = fcntl(fifo.as_raw_fd(), FcntlArg::F_GETFL)
            .ok()
            .map(OFlag::from_bits_retain);
        while !stop.load(Ordering::SeqCst) {
            if self.pending() > 0 {
                self.await_rest(fifo, stop);
                continue;
            }
            match self.wait(fifo, flags) {
                Some(0) => {} // the journal failed: plain reads from now on
                Some(_) => {
                    self.drain(fifo, Drain::Running { stop });
                }
                // A signal (the flag says whether it was ours), or end of file, which only
                // a read-only fd with no writer left gives: do not spin on it.
                None if !stop.load(Ordering::SeqCst) => thread::sleep(STALE_CHECK),
                None => {}
            }
        }
        if drain_on_stop {
            self.drain(fifo, Drain::Final);
            // A shim that opened the FIFO just before it was unlinked may still be
            // between its open() and its write(): give it a moment, drain again.
            thread::sleep(Duration::from_millis(50));
            self.drain(fifo, Drain::Final);
        }
        let _ = self.tx.send(Input::FifoClosed);
    }

    /// Sleep in a blocking read() until the pipe has bytes, and take them, as
    /// [`Self::read`] does; None also when a signal came first. The fd is blocking only
    /// for this read: `flags` are its usual ones, O_NONBLOCK among them (None: unknown).
    fn wait(&mut self, fifo: BorrowedFd, flags: Option<OFlag>) -> Option<usize> {
        let set = |flags: OFlag| fcntl(fifo.as_raw_fd(), FcntlArg::F_SETFL(flags));
        let Some(flags) = flags.filter(|&f| set(f - OFlag::O_NONBLOCK).is_ok()) else {
            // Cannot block in read(): look every STALE_CHECK instead.
            thread::sleep(STALE_CHECK);
            return self.read(fifo);
        };
        let got = self.read(fifo);
        let _ = set(flags);
        got
    }

    /// Read the pipe once and split what came: how many bytes, None when it was empty
    /// (or a signal interrupted a blocking read), Some(0) when the journal just failed.
    fn read(&mut self, fifo: BorrowedFd) -> Option<usize> {
        if self.segment.is_some() {
            self.fill_segment(fifo)
        } else {
            self.read_plain(fifo)
        }
    }

    /// A partial message is held, which only a writer that broke the one-write rule
    /// leaves: look at the pipe every [`STALE_CHECK`] rather than sleeping in it, and drop
    /// the partial message once the writers have been quiet for [`STALE_AFTER`].
    fn await_rest(&mut self, fifo: BorrowedFd, stop: &AtomicBool) {
        let mut quiet_since = Instant::now();
        while self.pending() > 0 && !stop.load(Ordering::SeqCst) {
            thread::sleep(STALE_CHECK);
            if self.drain(fifo, Drain::Running { stop }) > 0 {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= STALE_AFTER {
                self.flush_stale();
                self.send();
                quiet_since = Instant::now();
            }
        }
    }

    /// Bytes held as the start of a message not yet complete.
    fn pending(&self) -> usize {
        match &self.segment {
            Some(seg) => seg.written() - self.parsed,
            None => self.splitter.pending(),
        }
    }

    /// Take what the pipe holds into the journal and split it, until the pipe is empty.
    /// A read that finds only a little means the writers are about as fast as this
    /// reader: the batch goes out and the reader waits [`BUSY_WAIT`] before reading again,
    /// so that under a stream of events each read takes many (a read costs a few µs
    /// whatever it carries, and a reader asleep outside the pipe's wait queue spares
    /// every writer a wake-up). An event arriving alone is sent before the wait. See
    /// [`Drain`] for how a drain ends. Returns how many bytes it read.
    fn drain(&mut self, fifo: BorrowedFd, how: Drain) -> usize {
        let mut budget = match how {
            Drain::Running { .. } => usize::MAX,
            Drain::Final => pipe_holds(fifo),
        };
        let mut total = 0;
        while let Some(n) = self.read(fifo) {
            total += n;
            budget = budget.saturating_sub(n);
            if self.taken.batch.len() >= 4096 {
                self.send();
            }
            if self.segment.as_ref().is_some_and(FifoSegment::is_full) {
                self.rotate();
            }
            match how {
                Drain::Running { stop } => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if n > 0 && n < BIG_READ {
                        self.send();
                        thread::sleep(BUSY_WAIT);
                    }
                }
                Drain::Final if budget == 0 => break,
                Drain::Final => {}
            }
        }
        self.send();
        self.rotate();
        if let Some(seg) = &mut self.segment {
            seg.release_below(self.parsed);
        }
        total
    }

    /// Read the pipe into the segment and split the new bytes: how many, None when the
    /// pipe was empty. A journal that fails (a full runtime fs) is given up for plain
    /// reads.
    fn fill_segment(&mut self, fifo: BorrowedFd) -> Option<usize> {
        let seg = self.segment.as_mut()?;
        match seg.fill_from(fifo) {
            Ok(0) => None,
            Ok(n) => {
                let (taken, number) = (&mut self.taken, seg.number);
                self.parsed +=
                    message::split(seg.bytes(self.parsed), self.parsed as u64, |item, off| {
                        taken.take(item, number, off)
                    });
                Some(n)
            }
            Err(e) => {
                log::error!(
                    "journal {}: {e}; reading the FIFO without a journal until it can be written",
                    self.journal.dir.display()
                );
                self.leave_segment();
                Some(0)
            }
        }
    }

    /// The journal failed: seal the segment and go on with plain reads, keeping a partial
    /// message it holds, until a new segment is tried [`JOURNAL_RETRY`] from now.
    fn leave_segment(&mut self) {
        self.retry_at = Some(Instant::now() + JOURNAL_RETRY);
        if let Some(seg) = self.segment.take() {
            self.splitter = Splitter::new();
            let taken = &mut self.taken;
            // Only the start of a message is left; nothing comes out until the rest does.
            self.splitter
                .feed_at(seg.bytes(self.parsed), |item, off| taken.take(item, 0, off));
            self.parsed = 0;
            self.seal(seg);
        }
    }

    /// Tell the owner no more events come from `seg`. Its last events go first: once
    /// sealed, a segment none of whose events are pending is wiped, and events of it still
    /// in the batch would then exist only in memory. (The channel keeps the order.)
    fn seal(&mut self, seg: FifoSegment) {
        self.send();
        let _ = self.tx.send(Input::Sealed(seg.seal()));
    }

    /// The writers went quiet with a partial message held: it was truncated. Drop it and
    /// split what follows.
    fn flush_stale(&mut self) {
        let taken = &mut self.taken;
        match &self.segment {
            Some(seg) => {
                let number = seg.number;
                self.parsed += message::split_stale(
                    seg.bytes(self.parsed),
                    self.parsed as u64,
                    |item, off| taken.take(item, number, off),
                );
            }
            None => self
                .splitter
                .flush_stale_at(|item, off| taken.take(item, 0, off)),
        }
    }

    /// Without a journal: read and split; how many bytes, None when the pipe was empty.
    fn read_plain(&mut self, fifo: BorrowedFd) -> Option<usize> {
        if self.buf.is_empty() {
            self.buf = vec![0; CHUNK];
        }
        match nix::unistd::read(fifo.as_raw_fd(), &mut self.buf) {
            Ok(0) => None,
            Ok(n) => {
                let taken = &mut self.taken;
                self.splitter
                    .feed_at(&self.buf[..n], |item, off| taken.take(item, 0, off));
                Some(n)
            }
            // Only a blocking read sleeps, and a signal ends its wait.
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => None,
            Err(e) => {
                log::error!("reading the FIFO: {e}");
                None
            }
        }
    }

    /// Start a new segment once the current one is full, or, after the journal failed
    /// (a full runtime fs), try again every few seconds. A partial message (only a writer
    /// that broke the one-write rule leaves one at a read's end) moves to the new segment.
    fn rotate(&mut self) {
        match &self.segment {
            Some(seg) if !seg.is_full() => return,
            None if self.retry_at.is_some_and(|t| Instant::now() < t) => return,
            _ => {}
        }
        let made = FifoSegment::create(&self.journal, self.pipe_size).and_then(|mut new| {
            let carry = match &self.segment {
                Some(old) => old.bytes(self.parsed),
                None => self.splitter.held(),
            };
            new.put(carry).map(|()| new)
        });
        match made {
            Ok(new) => {
                if self.segment.is_none() {
                    log::warn!("journal {}: writable again", self.journal.dir.display());
                }
                self.retry_at = None;
                self.splitter = Splitter::new();
                self.parsed = 0;
                if let Some(old) = self.segment.replace(new) {
                    self.seal(old);
                }
            }
            Err(e) => {
                if self.segment.is_some() || self.retry_at.is_none() {
                    log::error!("journal {}: {e}", self.journal.dir.display());
                }
                // A full segment has no room for the next read: go on without a journal.
                self.leave_segment();
            }
        }
    }

    fn send(&mut self) {
        if !self.taken.batch.is_empty() {
            let batch = std::mem::replace(&mut self.taken.batch, Vec::with_capacity(1024));
            let _ = self.tx.send(Input::Fifo(batch));
        }
        if self.taken.bad > 0 {
            let _ = self
                .tx
                .send(Input::Bad(std::mem::take(&mut self.taken.bad)));
        }
    }
}

/// How [`FifoReader::drain`] ends.
#[derive(Clone, Copy)]
enum Drain<'a> {
    /// When the pipe is empty, or when `stop` is set: looked at after each read (they are
    /// big, or a pause follows), so a stream that never lets the pipe run empty cannot
    /// keep the reader from noticing.
    Running { stop: &'a AtomicBool },
    /// At shutdown: what the pipe holds now and no more, without pauses, so a writer that
    /// keeps an fd open and never stops cannot hold the daemon up.
    Final,
}

/// Bytes in the pipe now (FIONREAD); all of it as far as the caller can tell if unknown.
fn pipe_holds(fifo: BorrowedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, into `n`. libc: nix has no safe FIONREAD, only
    // the unsafe functions its ioctl macros make.
    if unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return usize::MAX;
    }
    n.max(0) as usize
}

/// What the FIFO reader took out of the stream since its last send.
struct Taken {
    batch: Vec<Event>,
    /// Bad messages and garbage runs.
    bad: u64,
    warn: RateLimit,
}

impl Taken {
    /// One item split out of segment `segment` (0: no journal) at `offset`.
    fn take(&mut self, item: Item<'_>, segment: u32, offset: u64) {
        match item {
            Item::Message(payload) => match Event::from_payload(payload) {
                Ok(mut ev) => {
                    if segment != 0 {
                        ev.set_id(journal::event_id(segment, offset));
                    }
                    self.batch.push(ev)
                }
                Err(e) => {
                    self.bad += 1;
                    if self.warn.allow("bad messages") {
                        log::warn!(
                            "FIFO: bad message ({e}), {} bytes: ignoring it",
                            payload.len()
                        );
                    }
                }
            },
            Item::Garbage { bytes, error } => {
                self.bad += 1;
                if self.warn.allow("bad messages") {
                    log::warn!("FIFO: skipped {bytes} bytes ({error}): resynchronising");
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, Reader};

    fn ev(seq: u64) -> Event {
        let s = seq.to_string();
        Event::from_vars(
            b"t",
            [
                (&b"ACTION"[..], &b"add"[..]),
                (b"DEVPATH", b"/devices/x"),
                (b"SEQNUM", s.as_bytes()),
            ],
        )
        .unwrap()
    }

    /// What the owner does with the reader's inputs, with every event handled at once:
    /// each event must still be in its segment on disk when it arrives, for it exists
    /// nowhere else but in memory.
    fn own(journal: &mut Journal, input: Input, seen: &mut Vec<u64>) {
        match input {
            Input::Fifo(events) => {
                let mut disk = Reader::new(journal.dir());
                for e in events {
                    let seq = e.seqnum().unwrap();
                    assert_eq!(
                        disk.load(e.id()).and_then(|d| d.seqnum()),
                        Some(seq),
                        "SEQNUM {seq} arrived after its segment was wiped"
                    );
                    journal.queued(e.id());
                    journal.done(&e, true);
                    seen.push(seq);
                }
                journal.flush().unwrap();
            }
            Input::Sealed(n) => journal.sealed(n),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_full_segment_is_sealed_only_after_its_last_events_are_sent() {
        let rt = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(rt.path()).unwrap();
        // A segment fills after a few events, so one read of the pipe fills it and more.
        let fifo = journal.fifo().with_segment_size(512);
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut reader = FifoReader::new(fifo, 1 << 16, tx).unwrap();
        let mut seen = Vec::new();
        let mut next = 1;
        for _ in 0..20 {
            for _ in 0..8 {
                nix::unistd::write(&w, &message::encode(ev(next).payload())).unwrap();
                next += 1;
            }
            reader.drain(r.as_fd(), Drain::Final);
            for input in rx.try_iter() {
                own(&mut journal, input, &mut seen);
            }
        }
        assert_eq!(seen, (1..next).collect::<Vec<_>>());
    }
}
