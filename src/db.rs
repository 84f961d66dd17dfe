//! The device database: for each device, what its latest event left, under
//! `RUNTIME/db/`, for `hotplugctl info` and anyone else who wants to know.
//!
//! One append-only file, `RUNTIME/db/devices`, a sequence of records. Each record is a
//! header line, the length of its text in decimal, then exactly that many bytes of text:
//!
//! ```text
//! 161                                the header: the text's length in bytes
//! D:/devices/virtual/block/loop0     the DEVPATH
//! S:4711                             the SEQNUM of the event that wrote it (if any)
//! P:ACTION=add                       each property of the event, the kernel's and the
//! P:ID_FS_UUID=1234-ABCD               imported ones, in the event's order
//! I:ID_FS_UUID                       each key an import set
//! L:disk/by-uuid/1234-ABCD           each link under dev_dir the device holds
//! R:blkid                            each rule (or hotplug.d script) that ran, in order
//! ```
//!
//! In every line a newline is written `\x0a` and a backslash `\x5c`, so each line of the
//! text is one line whatever the values hold. Readers ignore line types they do not know.
//! A `remove` appends a removal: the `D:` line, then the line `X:`. A reader takes the
//! last record of each DEVPATH ([`lookup`], [`load`]); a removal means no entry.
//!
//! A record whose header is not a number, or whose text does not start with `D:`, end
//! with a newline, or fit before the end of the file, ends the readable part: readers
//! stop there, so a reader sees a device's whole latest entry or the one before it. The
//! writer (one daemon, under the runtime dir's lock) cuts such a torn tail off when it
//! opens the file, and after a write that failed half-way, so what it appends later is
//! readable.
//!
//! Appending costs an event one `write()`, where a file per device cost the creation of
//! an inode, a rename and a page. The file is compacted when it passes twice its live
//! bytes (the last record of each device, not removed) plus [`COMPACT_SLACK`]: the live
//! records are written to `devices.tmp~`, renamed over `devices`. An older version's file
//! per device, left in the directory, is ignored (and left there).
//!
//! Written after each event a rule acted on (ran a handler, imported, or set node keys);
//! an event no rule acted on leaves the entry alone (so a storm of events for devices no
//! rule cares about costs nothing), and so a trigger (`hotplugctl trigger`) rewrites the
//! entries of every device a rule cares about. The directory is under the runtime dir
//! and the daemon never clears it: it outlives a restart, clean or not, and is lost only
//! with the runtime dir itself (at a reboot, for `/run`), when a coldplug rebuilds it.

use std::collections::HashMap;
use std::fs;
use std::hash::BuildHasher;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::event::Event;

/// The database's directory under the runtime dir.
pub const DIR: &str = "db";

/// The database file in [`DIR`].
pub const FILE: &str = "devices";

/// The compacted file, before its rename over [`FILE`].
pub const TMP: &str = "devices.tmp~";

/// Bytes the file may hold past twice its live ones before it is compacted: a device
/// rewritten over and over costs a compaction per MiB of its records, not per record.
pub const COMPACT_SLACK: u64 = 1 << 20;

/// Digits a header may have: a record is far below a GB.
const MAX_DIGITS: usize = 9;

/// `RUNTIME/db/devices`.
pub fn file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(DIR).join(FILE)
}

/// What one entry records besides the event itself.
pub struct Entry<'a> {
    pub event: &'a Event,
    /// Keys set by an import.
    pub imported: &'a [Vec<u8>],
    pub links: Vec<&'a [u8]>,
    pub rules: Vec<&'a str>,
}

fn escaped(out: &mut Vec<u8>, mut value: &[u8]) {
    // Runs copied whole: most values have nothing to escape.
    while let Some(i) = value.iter().position(|&b| b == b'\n' || b == b'\\') {
        out.extend_from_slice(&value[..i]);
        out.extend_from_slice(if value[i] == b'\n' {
            b"\\x0a"
        } else {
            b"\\x5c"
        });
        value = &value[i + 1..];
    }
    out.extend_from_slice(value);
}

fn line(out: &mut Vec<u8>, tag: &[u8], value: &[u8]) {
    out.extend_from_slice(tag);
    escaped(out, value);
    out.push(b'\n');
}

/// An entry's text, as [`Db::update`] puts it on file (inside a record, [`frame`]).
pub fn render(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.event.payload().len() + 256);
    render_into(&mut out, entry);
    out
}

/// [`render`] into `out`, cleared first.
fn render_into(out: &mut Vec<u8>, entry: &Entry) {
    let ev = entry.event;
    out.clear();
    line(out, b"D:", ev.devpath());
    if let Some(seq) = ev.seqnum() {
        out.extend_from_slice(b"S:");
        // Digits only: nothing to escape.
        use std::io::Write;
        let _ = writeln!(out, "{seq}");
    }
    for var in ev.var_strings() {
        // Without its NUL.
        line(out, b"P:", &var[..var.len().saturating_sub(1)]);
    }
    for key in entry.imported {
        line(out, b"I:", key);
    }
    for link in &entry.links {
        line(out, b"L:", link);
    }
    for rule in &entry.rules {
        line(out, b"R:", rule.as_bytes());
    }
}

/// The text of `devpath`'s removal, into `out` (cleared first).
fn removal_into(out: &mut Vec<u8>, devpath: &[u8]) {
    out.clear();
    line(out, b"D:", devpath);
    out.extend_from_slice(b"X:\n");
}

/// Append `text` (an entry's text, or a removal's) to `out` as one record.
pub fn frame(out: &mut Vec<u8>, text: &[u8]) {
    use std::io::Write;
    let _ = writeln!(out, "{}", text.len());
    out.extend_from_slice(text);
}

/// The length of a record of `text_len` bytes of text, its header included.
fn framed_len(text_len: usize) -> u64 {
    let digits = text_len.checked_ilog10().unwrap_or(0) + 1;
    text_len as u64 + u64::from(digits) + 1
}

/// The whole records at the start of a file's bytes, each as its byte range (header
/// included) and its text; they end at the first torn or malformed one, where
/// [`Records::end`] is then.
pub struct Records<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Records<'a> {
        Records { data, pos: 0 }
    }

    /// Where the records read so far end: after the iterator is done, the end of the
    /// readable part.
    pub fn end(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (Range<usize>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().take(MAX_DIGITS + 1).position(|&b| b == b'\n')?;
        let digits = &rest[..nl];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let text = rest.get(nl + 1..nl + 1 + len)?;
        if !text.starts_with(b"D:") || !text.ends_with(b"\n") {
            return None;
        }
        let start = self.pos;
        self.pos += nl + 1 + len;
        Some((start..self.pos, text))
    }
}

/// The DEVPATH of a record's text (its first line, `D:`).
fn devpath_of(text: &[u8]) -> Vec<u8> {
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    unescape(first.get(2..).unwrap_or_default())
}

/// Whether a record's text is a removal (has the line `X:`).
fn is_removal(text: &[u8]) -> bool {
    text.split(|&b| b == b'\n').any(|l| l == b"X:")
}

/// A record's bytes in the file (header included), and its DEVPATH.
type Live = (Range<usize>, Vec<u8>);

/// The live records of a file's bytes: the last record of each DEVPATH, unless it is a
/// removal, in the order of the file; and where the readable part ends.
fn live_records(data: &[u8]) -> (Vec<Live>, usize) {
    let mut records = Records::new(data);
    let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut all = Vec::new();
    for (range, text) in records.by_ref() {
        let devpath = devpath_of(text);
        let removal = is_removal(text);
        last.insert(devpath.clone(), all.len());
        all.push((range, devpath, removal));
    }
    let live = all
        .into_iter()
        .enumerate()
        .filter(|(i, (_, devpath, removal))| !removal && last.get(devpath) == Some(i))
        .map(|(_, (range, devpath, _))| (range, devpath))
        .collect();
    (live, records.end())
}

/// What a failed write was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    OpenDir,
    Open,
    Read,
    Truncate,
    Write,
    Compact,
}

/// `RUNTIME/db/devices`, and what goes into it.
///
/// The daemon's writer runs while a handler runs ([`Deferred`]), and keeps what it can
/// between events: the directory and the file open (a check that the file is still
/// linked is one `fstat`), what each device's live record weighs (so it knows when to
/// compact without reading the file), the records of a flush put together in one reused
/// buffer and appended with one `write()`. No `fsync`: the directory is on the runtime
/// dir's tmpfs, which a power loss empties anyway.
#[derive(Debug)]
pub struct Db {
    dir: PathBuf,
    /// `dir`, opened at the first write; dropped when it is found gone, to open again.
    dir_fd: Option<OwnedFd>,
    /// The file, `O_APPEND`, opened (and its torn tail cut) at the first write, and
    /// again when it is found removed.
    file: Option<fs::File>,
    /// The file's size: the end of its last whole record.
    size: u64,
    /// The length of each device's live record (its last, not a removal), by a hash of
    /// its DEVPATH. A collision only moves a compaction, which reads the file itself.
    live: HashMap<u64, u64>,
    /// The sum of `live`.
    live_bytes: u64,
    slack: u64,
    /// No compaction before the file reaches this size: after one failed, the next
    /// try waits for another `slack` of records.
    compact_from: u64,
    buf: Vec<u8>,
    /// The failures logged since the last entry written: each cause (step and errno)
    /// once, so a full or missing directory costs one warning, not one per event.
    logged: Vec<(Step, Errno)>,
    failed: u64,
}

fn key(devpath: &[u8]) -> u64 {
    // Fixed keys: the map lives as long as the process, and its hashes must agree.
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(devpath)
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// All of `file`'s bytes, whatever its offset.
fn read_all(file: &fs::File) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match file.read_at(&mut chunk, data.len() as u64) {
            Ok(0) => return Ok(data),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write all of `buf` at the end of `file` (`O_APPEND`).
fn append_all(file: &fs::File, mut buf: &[u8]) -> io::Result<()> {
    use std::io::Write;
    while !buf.is_empty() {
        match (&*file).write(buf) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Db {
    pub fn new(runtime_dir: &Path) -> Db {
        Db::with_slack(runtime_dir, COMPACT_SLACK)
    }

    /// A writer that compacts once the file passes twice its live bytes plus `slack`.
    pub fn with_slack(runtime_dir: &Path, slack: u64) -> Db {
        Db {
            dir: runtime_dir.join(DIR),
            dir_fd: None,
            file: None,
            size: 0,
            live: HashMap::new(),
            live_bytes: 0,
            slack,
            compact_from: 0,
            buf: Vec::with_capacity(4096),
            logged: Vec::new(),
            failed: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Create the directory (mode 0700) if missing; it is never emptied.
    pub fn create(&self) -> io::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Record the event's device, or for a `remove` forget it, now. The database is for
    /// the curious: a failure never costs the event. It is logged with the file, once
    /// per cause until an entry is written again.
    pub fn update(&mut self, entry: &Entry) {
        let mut p = Prepared::default();
        p.prepare(entry);
        self.write(std::slice::from_ref(&p));
    }

    /// Append the prepared entries (and removals) in one write, then compact if due.
    fn write(&mut self, batch: &[Prepared]) {
        let Some(first) = batch.first() else {
            return;
        };
        self.buf.clear();
        for p in batch {
            frame(&mut self.buf, &p.text);
        }
        let mut result = self.append();
        if let Err((_, Errno::ENOENT)) = result {
            // The directory went away (removed by hand, or the runtime dir's contents
            // cleared): made again, as at start, and tried once more.
            self.dir_fd = None;
            self.file = None;
            if self.create().is_ok() {
                result = self.append();
            }
        }
        match result {
            Ok(()) => {
                for p in batch {
                    let len = if p.remove {
                        None
                    } else {
                        // The record as framed: the header's digits and newline too.
                        Some(framed_len(p.text.len()))
                    };
                    self.set_live(key(&p.devpath), len);
                }
                if self.failed > 0 {
                    log::info!(
                        "database {}: entries written again, after {} failed",
                        self.path().display(),
                        self.failed
                    );
                    self.failed = 0;
                    self.logged.clear();
                }
                self.compact_if_due();
            }
            Err((step, e)) => {
                self.failed += batch.len() as u64;
                self.log_failure(step, e, &first.devpath);
            }
        }
    }

    fn set_live(&mut self, key: u64, len: Option<u64>) {
        let old = match len {
            Some(len) => self.live.insert(key, len),
            None => self.live.remove(&key),
        };
        self.live_bytes = self.live_bytes - old.unwrap_or(0) + len.unwrap_or(0);
    }

    fn log_failure(&mut self, step: Step, e: Errno, devpath: &[u8]) {
        if self.logged.contains(&(step, e)) {
            return;
        }
        self.logged.push((step, e));
        let file = match step {
            Step::OpenDir => self.dir.clone(),
            Step::Compact => self.dir.join(TMP),
            _ => self.path(),
        };
        log::warn!(
            "database {}: {}: {e}, for {} (the event went on; until an entry is written \
             again, further failures of this kind are not logged)",
            file.display(),
            match step {
                Step::OpenDir | Step::Open => "open",
                Step::Read => "read",
                Step::Truncate => "truncate",
                Step::Write => "write",
                Step::Compact => "compact",
            },
            String::from_utf8_lossy(devpath),
        );
    }

    fn dir_fd(&mut self) -> Result<i32, (Step, Errno)> {
        if let Some(fd) = &self.dir_fd {
            return Ok(fd.as_raw_fd());
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd =
            nix::fcntl::open(&self.dir, flags, Mode::empty()).map_err(|e| (Step::OpenDir, e))?;
        // SAFETY: open returned it, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(self.dir_fd.insert(fd).as_raw_fd())
    }

    /// Append `self.buf`, opening the file first if it is not open or was removed.
    fn append(&mut self) -> Result<(), (Step, Errno)> {
        if let Some(f) = &self.file {
            // Removed under the daemon (by hand, or with its directory): made again.
            match nix::sys::stat::fstat(f.as_raw_fd()) {
                Ok(st) if st.st_nlink > 0 => {}
                _ => self.file = None,
            }
        }
        if self.file.is_none() {
            self.open()?;
        }
        let Some(f) = &self.file else {
            return Err((Step::Open, Errno::EBADF));
        };
        if let Err(e) = append_all(f, &self.buf) {
            // Half a record would end the readable part for every record after it.
            if f.set_len(self.size).is_err() {
                // Opened again (and cut) at the next write.
                self.file = None;
            }
            return Err((Step::Write, errno(&e)));
        }
        self.size += self.buf.len() as u64;
        Ok(())
    }

    /// Open (or create) the file, learn its live records, and cut a torn tail off.
    fn open(&mut self) -> Result<(), (Step, Errno)> {
        let dir = self.dir_fd()?;
        let flags =
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(Some(dir), FILE, flags, Mode::from_bits_truncate(0o644))
            .map_err(|e| (Step::Open, e))?;
        // SAFETY: openat returned it, and nothing else owns it.
        let file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let data = read_all(&file).map_err(|e| (Step::Read, errno(&e)))?;
        let (live, end) = live_records(&data);
        if end < data.len() {
            file.set_len(end as u64)
                .map_err(|e| (Step::Truncate, errno(&e)))?;
            log::warn!(
                "database {}: {} bytes past the last whole record (a torn write) cut off",
                self.path().display(),
                data.len() - end
            );
        }
        self.adopt(file, end as u64, live.iter().map(|(r, d)| (d, r.len())));
        Ok(())
    }

    fn adopt<'a>(
        &mut self,
        file: fs::File,
        size: u64,
        live: impl Iterator<Item = (&'a Vec<u8>, usize)>,
    ) {
        self.file = Some(file);
        self.size = size;
        self.live.clear();
        self.live_bytes = 0;
        for (devpath, len) in live {
            self.set_live(key(devpath), Some(len as u64));
        }
        self.compact_from = 0;
    }

    fn compact_if_due(&mut self) {
        if self.size <= 2 * self.live_bytes + self.slack || self.size < self.compact_from {
            return;
        }
        if let Err((step, e)) = self.compact() {
            self.compact_from = self.size + self.slack;
            self.log_failure(step, e, b"(compaction)");
        }
    }

    /// Write the live records to [`TMP`] and rename it over the file.
    fn compact(&mut self) -> Result<(), (Step, Errno)> {
        let fail = |e: io::Error| (Step::Compact, errno(&e));
        let dir = self.dir_fd()?;
        let Some(file) = &self.file else {
            return Ok(());
        };
        let data = read_all(file).map_err(fail)?;
        let (live, _) = live_records(&data);
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(Some(dir), TMP, flags, Mode::from_bits_truncate(0o644))
            .map_err(|e| (Step::Compact, e))?;
        // SAFETY: openat returned it, and nothing else owns it.
        let tmp = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        self.buf.clear();
        for (range, _) in &live {
            self.buf.extend_from_slice(&data[range.clone()]);
        }
        let written = append_all(&tmp, &self.buf).map_err(fail).and_then(|()| {
            nix::fcntl::renameat(Some(dir), TMP, Some(dir), FILE).map_err(|e| (Step::Compact, e))
        });
        if let Err(e) = written {
            let _ = nix::unistd::unlinkat(Some(dir), TMP, UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        log::debug!(
            "database {}: compacted, {} bytes to {}",
            self.path().display(),
            self.size,
            self.buf.len()
        );
        // The new file is `tmp`, opened O_APPEND already.
        let size = self.buf.len() as u64;
        self.adopt(tmp, size, live.iter().map(|(r, d)| (d, r.len())));
        Ok(())
    }
}

/// One entry (or removal) made ready to write: its text, built under the owner's lock
/// while the event is at hand; the system calls come later.
#[derive(Debug, Default)]
struct Prepared {
    text: Vec<u8>,
    remove: bool,
    devpath: Vec<u8>,
}

impl Prepared {
    fn prepare(&mut self, entry: &Entry) {
        let ev = entry.event;
        self.remove = ev.action() == b"remove";
        if self.remove {
            removal_into(&mut self.text, ev.devpath());
        } else {
            render_into(&mut self.text, entry);
        }
        self.devpath.clear();
        self.devpath.extend_from_slice(ev.devpath());
    }
}

/// The daemon's database: entries are made ready under the owner's lock
/// ([`Deferred::submit`]) and put on file by [`Deferred::flush`], so the records are
/// appended while a handler runs rather than between one handler's exit and the next
/// one's spawn. A runner, right after it spawned a handler, writes them once they are
/// worth a `write()` ([`Deferred::flush_due`]: [`BATCH`] of them, or [`MAX_DELAY`] old,
/// or a waiter waits for nothing else), and the rest when that handler has run `MAX_DELAY`; one write per
/// event cost dispatch some 2 % on two vCPUs, the caches cold after each exec. The main
/// thread flushes after each message (events that ran no handler), a runner before it
/// waits for work, and the stop at the end.
///
/// Entries go on file in the order they were submitted (one flush at a time), and
/// [`Deferred::pending`] counts the ones not yet there: a settle waits for them, so once
/// it returns every handled event's entry is on file. A crash may lose the entries
/// still pending (their events' done records may be on file already): at most `BATCH`,
/// about `MAX_DELAY`'s worth; a coldplug (`hotplugctl trigger`) rewrites them.
#[derive(Debug, Clone)]
pub struct Deferred {
    shared: std::sync::Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: std::sync::Mutex<Queue>,
    writer: std::sync::Mutex<Db>,
    pending: std::sync::atomic::AtomicUsize,
    /// Someone waits for entries (a settle): wake the owner after a flush.
    wanted: std::sync::atomic::AtomicBool,
    wake: std::sync::Mutex<Option<crossbeam_channel::Sender<()>>>,
}

#[derive(Debug, Default)]
struct Queue {
    items: Vec<Prepared>,
    /// When [`Deferred::flush_due`] first saw entries waiting since the last flush.
    since: Option<std::time::Instant>,
    /// Written ones, kept for their buffers.
    free: Vec<Prepared>,
}

impl Deferred {
    pub fn new(runtime_dir: &Path) -> Deferred {
        Deferred {
            shared: std::sync::Arc::new(Shared {
                queue: Default::default(),
                writer: std::sync::Mutex::new(Db::new(runtime_dir)),
                pending: Default::default(),
                wanted: Default::default(),
                wake: Default::default(),
            }),
        }
    }

    /// Where a flush that wrote something while [`Deferred::want_wake`] is set says so.
    pub fn set_waker(&self, wake: crossbeam_channel::Sender<()>) {
        *lock(&self.shared.wake) = Some(wake);
    }

    /// Whether someone waits for [`Deferred::pending`] to reach 0.
    pub fn want_wake(&self, wanted: bool) {
        use std::sync::atomic::Ordering;
        if self.shared.wanted.load(Ordering::Relaxed) != wanted {
            self.shared.wanted.store(wanted, Ordering::Relaxed);
        }
    }

    /// Entries submitted and not yet on file.
    pub fn pending(&self) -> usize {
        self.shared
            .pending
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Make the entry ready; [`Deferred::flush`] writes it.
    pub fn submit(&self, entry: &Entry) {
        let mut q = lock(&self.shared.queue);
        let mut p = q.free.pop().unwrap_or_default();
        p.prepare(entry);
        self.shared
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        q.items.push(p);
    }

    /// Write every submitted entry, in order, with one `write()`; compact the file when
    /// due (never under the owner's lock, which [`Deferred::submit`] alone needs).
    pub fn flush(&self) {
        use std::sync::atomic::Ordering;
        if self.pending() == 0 {
            return;
        }
        let mut db = lock(&self.shared.writer);
        let batch = {
            let mut q = lock(&self.shared.queue);
            q.since = None;
            std::mem::take(&mut q.items)
        };
        if batch.is_empty() {
            return;
        }
        db.write(&batch);
        drop(db);
        let n = batch.len();
        {
            let mut q = lock(&self.shared.queue);
            if q.free.len() < 64 {
                q.free.extend(batch);
            }
        }
        self.shared.pending.fetch_sub(n, Ordering::AcqRel);
        if self.shared.wanted.load(Ordering::Relaxed) {
            if let Some(wake) = &*lock(&self.shared.wake) {
                let _ = wake.try_send(());
            }
        }
    }

    /// After a handler's spawn: write the entries waiting when they are worth a
    /// `write()`: [`BATCH`] of them, or the oldest [`MAX_DELAY`] old, or someone waits
    /// for them, or `late` (the handler has run `MAX_DELAY` since this said to call again).
    /// Else they wait, and this returns when to call again while the handler runs.
    pub fn flush_due(&self, late: bool) -> Option<std::time::Duration> {
        use std::sync::atomic::Ordering;
        let n = self.pending();
        if n == 0 {
            return None;
        }
        if !late && n < BATCH && !self.shared.wanted.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            let since = *lock(&self.shared.queue).since.get_or_insert(now);
            if let Some(left) = MAX_DELAY.checked_sub(now.duration_since(since)) {
                if !left.is_zero() {
                    return Some(left);
                }
            }
        }
        self.flush();
        None
    }

    /// Create the directory now, as [`Db::create`].
    pub fn create(&self) -> io::Result<()> {
        lock(&self.shared.writer).create()
    }
}

/// Entries a runner lets wait for more before it writes them ([`Deferred::flush_due`]).
pub const BATCH: usize = 32;

/// How long an entry waits at most for more while handlers run, give or take a
/// handler's spawn.
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// A poisoned lock only means a panic elsewhere, which aborts the daemon anyway.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One parsed entry, for readers ([`parse`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Record {
    pub devpath: Vec<u8>,
    pub seqnum: Option<u64>,
    pub properties: Vec<(Vec<u8>, Vec<u8>)>,
    pub imported: Vec<Vec<u8>>,
    pub links: Vec<Vec<u8>>,
    pub rules: Vec<String>,
    /// A removal (the line `X:`): the device has no entry.
    pub removed: bool,
}

fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && i + 3 < v.len() && v[i + 1] == b'x' {
            if let Some(b) = std::str::from_utf8(&v[i + 2..i + 4])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// Read a record's text back.
pub fn parse(text: &[u8]) -> Record {
    let mut r = Record::default();
    for line in text.split(|&b| b == b'\n') {
        let (Some(tag), Some(b':')) = (line.first(), line.get(1)) else {
            continue;
        };
        let v = unescape(&line[2..]);
        match tag {
            b'D' => r.devpath = v,
            b'S' => r.seqnum = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
            b'P' => {
                if let Some(eq) = v.iter().position(|&b| b == b'=') {
                    r.properties.push((v[..eq].to_vec(), v[eq + 1..].to_vec()));
                }
            }
            b'I' => r.imported.push(v),
            b'L' => r.links.push(v),
            b'R' => r.rules.push(String::from_utf8_lossy(&v).into_owned()),
            b'X' if line == b"X:" => r.removed = true,
            _ => {}
        }
    }
    r
}

/// `devpath`'s entry in the database under `runtime_dir`: the file read once, its last
/// record of the device taken. `None` when there is none: no file (a daemon that keeps
/// no database), no record, or a removal last.
pub fn lookup(runtime_dir: &Path, devpath: &[u8]) -> io::Result<Option<Record>> {
    let data = match fs::read(file(runtime_dir)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Records::new(&data)
        .filter(|(_, text)| devpath_of(text) == devpath)
        .last()
        .map(|(_, text)| parse(text))
        .filter(|r| !r.removed))
}

/// Every entry in the database under `runtime_dir`, in the order of their records;
/// none when there is no file.
pub fn load(runtime_dir: &Path) -> io::Result<Vec<Record>> {
    let data = match fs::read(file(runtime_dir)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (live, _) = live_records(&data);
    Ok(live
        .into_iter()
        .map(|(r, _)| {
            let record = &data[r];
            // Past the header.
            let text = record
                .iter()
                .position(|&b| b == b'\n')
                .map_or(record, |nl| &record[nl + 1..]);
            parse(text)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, extra: &[(&str, &str)]) -> Event {
        let mut vars = vec![
            ("ACTION", action),
            ("DEVPATH", "/devices/a b/sd\\a"),
            ("SUBSYSTEM", "block"),
            ("SEQNUM", "9"),
        ];
        vars.extend_from_slice(extra);
        Event::from_vars(
            b"block",
            vars.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        )
        .unwrap()
    }

    fn update(db: &mut Db, e: &Event) {
        db.update(&Entry {
            event: e,
            imported: &[],
            links: vec![],
            rules: vec!["r"],
        });
    }

    fn dev(action: &str, devpath: &str, seq: u64) -> Event {
        let seq = seq.to_string();
        Event::from_vars(
            b"block",
            [
                (&b"ACTION"[..], action.as_bytes()),
                (b"DEVPATH", devpath.as_bytes()),
                (b"SUBSYSTEM", b"block"),
                (b"SEQNUM", seq.as_bytes()),
            ],
        )
        .unwrap()
    }

    fn seqs(dir: &Path) -> Vec<(String, Option<u64>)> {
        load(dir)
            .unwrap()
            .into_iter()
            .map(|r| (String::from_utf8(r.devpath).unwrap(), r.seqnum))
            .collect()
    }

    #[test]
    fn a_record_round_trips_hostile_values() {
        let tmp = tempfile::tempdir().unwrap();
        let mut db = Db::new(tmp.path());
        db.create().unwrap();
        let e = ev("add", &[("ID_FS_UUID", "12\n34"), ("ID_X", "a\\x0ab")]);
        let imported = vec![b"ID_FS_UUID".to_vec()];
        db.update(&Entry {
            event: &e,
            imported: &imported,
            links: vec![b"disk/by-uuid/x"],
            rules: vec!["blkid", "log"],
        });
        let text = "D:/devices/a b/sd\\x5ca\nS:9\nP:ACTION=add\nP:DEVPATH=/devices/a b/sd\\x5ca\n\
                    P:SUBSYSTEM=block\nP:SEQNUM=9\nP:ID_FS_UUID=12\\x0a34\nP:ID_X=a\\x5cx0ab\n\
                    I:ID_FS_UUID\nL:disk/by-uuid/x\nR:blkid\nR:log\n";
        assert_eq!(
            String::from_utf8(fs::read(db.path()).unwrap()).unwrap(),
            format!("{}\n{text}", text.len())
        );
        let r = lookup(tmp.path(), b"/devices/a b/sd\\a").unwrap().unwrap();
        assert_eq!(r.devpath, b"/devices/a b/sd\\a");
        assert_eq!(r.seqnum, Some(9));
        assert_eq!(
            r.properties[4],
            (b"ID_FS_UUID".to_vec(), b"12\n34".to_vec())
        );
        assert_eq!(r.properties[5], (b"ID_X".to_vec(), b"a\\x0ab".to_vec()));
        assert_eq!(r.imported, [b"ID_FS_UUID".to_vec()]);
        assert_eq!(r.links, [b"disk/by-uuid/x".to_vec()]);
        assert_eq!(r.rules, ["blkid", "log"]);
        assert!(!r.removed);
        // Another DEVPATH, a prefix of it, or its text as written: no entry.
        for other in [
            &b"/devices/a b"[..],
            b"/devices/a b/sd\\x5ca",
            b"/devices/a",
        ] {
            assert_eq!(lookup(tmp.path(), other).unwrap(), None);
        }
        assert_eq!(fs::read_dir(db.dir()).unwrap().count(), 1, "only the file");
    }

    #[test]
    fn the_last_record_wins_and_a_removal_means_no_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(lookup(dir, b"/devices/a").unwrap(), None, "no file");
        let mut db = Db::new(dir);
        db.create().unwrap();
        update(&mut db, &dev("add", "/devices/a", 1));
        update(&mut db, &dev("add", "/devices/b", 2));
        update(&mut db, &dev("change", "/devices/a", 3));
        assert_eq!(lookup(dir, b"/devices/a").unwrap().unwrap().seqnum, Some(3));
        assert_eq!(
            seqs(dir),
            [
                ("/devices/b".into(), Some(2)),
                ("/devices/a".into(), Some(3))
            ]
        );
        update(&mut db, &dev("remove", "/devices/a", 4));
        let data = fs::read(db.path()).unwrap();
        assert!(data.ends_with(b"\n16\nD:/devices/a\nX:\n"), "{data:?}");
        assert_eq!(lookup(dir, b"/devices/a").unwrap(), None);
        assert_eq!(seqs(dir), [("/devices/b".into(), Some(2))]);
        // A removal of a device without an entry is fine; a new add is an entry again.
        update(&mut db, &dev("remove", "/devices/c", 5));
        update(&mut db, &dev("add", "/devices/a", 6));
        assert_eq!(lookup(dir, b"/devices/a").unwrap().unwrap().seqnum, Some(6));
        assert_eq!(lookup(dir, b"/devices/c").unwrap(), None);
    }

    #[test]
    fn a_torn_tail_is_ignored_by_readers_and_cut_by_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut db = Db::new(dir);
        db.create().unwrap();
        update(&mut db, &dev("add", "/devices/a", 1));
        update(&mut db, &dev("add", "/devices/b", 2));
        drop(db);
        let whole = fs::read(file(dir)).unwrap();
        // Torn: the header promises more than is there; malformed: no number, or text
        // that is not a record's.
        let mut torn = Vec::new();
        frame(&mut torn, b"D:/devices/a\nS:3\n");
        torn.truncate(torn.len() - 3);
        let tails: [&[u8]; 5] = [
            &torn,
            b"x12\nD:/devices/a\nS:3\n",
            b"4\nS:3\n",
            b"12",
            b"\n",
        ];
        for tail in tails {
            let mut data = whole.clone();
            data.extend_from_slice(tail);
            fs::write(file(dir), &data).unwrap();
            let what = String::from_utf8_lossy(tail);
            assert_eq!(
                lookup(dir, b"/devices/a").unwrap().unwrap().seqnum,
                Some(1),
                "{what}: the entry before"
            );
            assert_eq!(seqs(dir).len(), 2, "{what}");
            // A writer, as after a restart: the tail cut, so what it appends is read.
            let mut db = Db::new(dir);
            update(&mut db, &dev("add", "/devices/c", 4));
            update(&mut db, &dev("change", "/devices/a", 5));
            assert_eq!(
                seqs(dir),
                [
                    ("/devices/b".into(), Some(2)),
                    ("/devices/c".into(), Some(4)),
                    ("/devices/a".into(), Some(5))
                ],
                "{what}"
            );
            assert!(fs::read(file(dir)).unwrap().starts_with(&whole));
        }
    }

    #[test]
    fn a_removed_file_or_directory_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut db = Db::new(dir);
        db.create().unwrap();
        update(&mut db, &dev("add", "/devices/a", 1));
        fs::remove_file(file(dir)).unwrap();
        update(&mut db, &dev("add", "/devices/b", 2));
        assert_eq!(seqs(dir), [("/devices/b".into(), Some(2))]);
        fs::remove_dir_all(dir.join(DIR)).unwrap();
        update(&mut db, &dev("add", "/devices/c", 3));
        assert_eq!(seqs(dir), [("/devices/c".into(), Some(3))]);
        assert_eq!(db.failed, 0);
    }

    #[test]
    fn compaction_keeps_exactly_the_live_entries_and_shrinks_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let slack = 600;
        let mut db = Db::with_slack(dir, slack);
        db.create().unwrap();
        let mut want = std::collections::BTreeMap::new();
        let (mut appended, mut compactions, mut last_size) = (0, 0, 0);
        for seq in 1..=400u64 {
            // Ten devices, rewritten over and over; every seventh event a removal.
            let devpath = format!("/devices/d{}", seq % 10);
            let action = if seq % 7 == 0 { "remove" } else { "change" };
            let e = dev(action, &devpath, seq);
            update(&mut db, &e);
            let mut text = render(&Entry {
                event: &e,
                imported: &[],
                links: vec![],
                rules: vec!["r"],
            });
            if action == "remove" {
                removal_into(&mut text, devpath.as_bytes());
                want.remove(&devpath);
            } else {
                want.insert(devpath, Some(seq));
            }
            appended += framed_len(text.len());
            assert_eq!(
                seqs(dir)
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
                want,
                "after {seq}"
            );
            let data = fs::read(file(dir)).unwrap();
            let size = data.len() as u64;
            let (live, end) = live_records(&data);
            assert_eq!(end, data.len());
            let live_bytes: u64 = live.iter().map(|(r, _)| r.len() as u64).sum();
            assert_eq!(live_bytes, db.live_bytes, "after {seq}");
            assert!(size <= 2 * live_bytes + slack, "after {seq}: {size} bytes");
            if size < last_size {
                compactions += 1;
                // Just compacted: nothing but the live records.
                assert_eq!(size, live_bytes, "after {seq}");
            }
            last_size = size;
        }
        assert!(compactions >= 3, "{compactions} compactions");
        assert!(last_size < appended / 4, "{last_size} of {appended} bytes");
        assert_eq!(fs::read_dir(db.dir()).unwrap().count(), 1, "no {TMP} left");
    }

    #[test]
    fn a_runner_writes_entries_in_batches_bounded_by_count_delay_and_waiters() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let d = Deferred::new(dir);
        d.create().unwrap();
        let submit = |seq: u64| {
            d.submit(&Entry {
                event: &dev("add", &format!("/devices/d{seq}"), seq),
                imported: &[],
                links: vec![],
                rules: vec!["r"],
            })
        };
        assert_eq!(d.flush_due(false), None, "nothing waits");
        for seq in 1..BATCH as u64 {
            submit(seq);
            let left = d.flush_due(false).expect("not yet worth a write");
            assert!(left <= MAX_DELAY);
        }
        assert_eq!(d.pending(), BATCH - 1);
        assert!(seqs(dir).is_empty());
        submit(BATCH as u64);
        assert_eq!(d.flush_due(false), None, "a batch is worth a write");
        assert_eq!((d.pending(), seqs(dir).len()), (0, BATCH));
        // Put off, then called again late (the handler ran MAX_DELAY): written.
        submit(100);
        assert!(d.flush_due(false).is_some());
        assert_eq!(d.flush_due(true), None);
        assert_eq!((d.pending(), seqs(dir).len()), (0, BATCH + 1));
        // Someone waits for them (a settle): written at once.
        submit(101);
        d.want_wake(true);
        assert_eq!(d.flush_due(false), None);
        assert_eq!(d.pending(), 0);
        d.want_wake(false);
        // Waiting longer than MAX_DELAY since first seen: written at the next spawn.
        submit(102);
        assert!(d.flush_due(false).is_some());
        std::thread::sleep(MAX_DELAY);
        assert_eq!(d.flush_due(false), None);
        assert_eq!(seqs(dir).len(), BATCH + 3);
    }

    #[test]
    fn files_of_an_older_layout_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut db = Db::new(dir);
        db.create().unwrap();
        // The older layout's name of /devices/a (a backslash, which clippy's
        // join_absolute_paths takes for a separator: hence no `join`).
        let mut old = db.dir().as_os_str().to_owned();
        old.push("/\\x2fdevices\\x2fa");
        let old = PathBuf::from(old);
        fs::write(&old, "D:/devices/a\nS:1\n").unwrap();
        assert_eq!(lookup(dir, b"/devices/a").unwrap(), None);
        update(&mut db, &dev("add", "/devices/a", 2));
        assert_eq!(lookup(dir, b"/devices/a").unwrap().unwrap().seqnum, Some(2));
        assert!(old.exists());
    }
}
