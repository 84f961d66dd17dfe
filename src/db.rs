//! The device database: for each device, what its latest event left, under
//! `RUNTIME/db/`, for `hotplugctl info` and anyone else who wants to know.
//!
//! One file per device, named by its DEVPATH escaped ([`file_name`]): every byte outside
//! `[A-Za-z0-9_.:@+-]` is written `\xHH` (two lowercase hex digits), so `/devices/virtual/
//! net/lo` is `\x2fdevices\x2fvirtual\x2fnet\x2flo`. A DEVPATH whose name would pass 255
//! bytes gets no entry (logged). The file is text, one record a line, in this order:
//!
//! ```text
//! D:/devices/virtual/block/loop0     the DEVPATH
//! S:4711                             the SEQNUM of the event that wrote it (if any)
//! P:ACTION=add                       each property of the event, the kernel's and the
//! P:ID_FS_UUID=1234-ABCD               imported ones, in the event's order
//! I:ID_FS_UUID                       each key an import set
//! L:disk/by-uuid/1234-ABCD           each link under dev_dir the device holds
//! R:blkid                            each rule (or hotplug.d script) that ran, in order
//! ```
//!
//! In every line a newline is written `\x0a` and a backslash `\x5c`, so each record is
//! one line whatever the values hold. Readers ignore record types they do not know.
//!
//! Written after each event a rule acted on (ran a handler, imported, or set node keys):
//! a temporary file, then `rename`, so a reader sees the old entry or the new one, never
//! half of one. A `remove` deletes the entry; an event no rule acted on leaves it alone
//! (so a storm of events for devices no rule cares about costs no file each), and so a
//! trigger (`hotplugctl trigger`) rewrites the entries of every device a rule cares about.
//! The directory is under the runtime dir and the daemon never clears it: it outlives a
//! restart, clean or not, and is lost only with the runtime dir itself (at a reboot, for
//! `/run`), when a coldplug rebuilds it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::event::Event;

/// The database's directory under the runtime dir.
pub const DIR: &str = "db";

/// The temporary file an entry is written to before its rename. `~` is outside the
/// bytes a [`file_name`] keeps, so no device's entry can have this name.
pub const TMP: &str = ".entry.tmp~";

/// What one entry records besides the event itself.
pub struct Entry<'a> {
    pub event: &'a Event,
    /// Keys set by an import.
    pub imported: &'a [Vec<u8>],
    pub links: Vec<&'a [u8]>,
    pub rules: Vec<&'a str>,
}

/// `RUNTIME/db`, and what goes in and out of it.
///
/// The daemon's writer is on the path from one handler's exit to the next one's spawn,
/// so it keeps what it can between events: the directory open (every call is `*at`
/// relative to it, no path walked), the entry and its name built into reused buffers,
/// the entry written with one `write()`. No `fsync`: the directory is on the runtime
/// dir's tmpfs, which a power loss empties anyway.
#[derive(Debug)]
pub struct Db {
    dir: PathBuf,
    /// `dir`, opened at the first write; dropped when it is found gone, to open again.
    fd: Option<OwnedFd>,
    name: Vec<u8>,
    /// The failures logged since the last entry written: each cause (step and errno)
    /// once, so a full or missing directory costs one warning, not one per event.
    logged: Vec<(Step, Errno)>,
    failed: u64,
}

/// What a failed write was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    OpenDir,
    Write,
    Rename,
    Remove,
}

/// The file name for `devpath`; `None` if it would pass 255 bytes.
pub fn file_name(devpath: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(devpath.len() + 16);
    // Only ASCII goes in.
    name_into(&mut out, devpath).then(|| String::from_utf8(out).unwrap_or_default())
}

/// [`file_name`] into `out` (cleared first); false if it would pass 255 bytes.
fn name_into(out: &mut Vec<u8>, devpath: &[u8]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.clear();
    for &b in devpath {
        if b.is_ascii_alphanumeric() || b"_.:@+-".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
    !out.is_empty() && out.len() <= 255
}

fn escaped(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        match b {
            b'\n' => out.extend_from_slice(b"\\x0a"),
            b'\\' => out.extend_from_slice(b"\\x5c"),
            _ => out.push(b),
        }
    }
}

fn record(out: &mut Vec<u8>, tag: &[u8], value: &[u8]) {
    out.extend_from_slice(tag);
    escaped(out, value);
    out.push(b'\n');
}

/// An entry's text, as [`Db::update`] puts it on file.
pub fn render(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(entry.event.payload().len() + 256);
    render_into(&mut out, entry);
    out
}

/// [`render`] into `out`, cleared first.
fn render_into(out: &mut Vec<u8>, entry: &Entry) {
    let ev = entry.event;
    out.clear();
    record(out, b"D:", ev.devpath());
    if let Some(seq) = ev.seqnum() {
        out.extend_from_slice(b"S:");
        // Digits only: nothing to escape.
        use std::io::Write;
        let _ = writeln!(out, "{seq}");
    }
    for var in ev.var_strings() {
        // Without its NUL.
        record(out, b"P:", &var[..var.len().saturating_sub(1)]);
    }
    for key in entry.imported {
        record(out, b"I:", key);
    }
    for link in &entry.links {
        record(out, b"L:", link);
    }
    for rule in &entry.rules {
        record(out, b"R:", rule.as_bytes());
    }
}

impl Db {
    pub fn new(runtime_dir: &Path) -> Db {
        Db {
            dir: runtime_dir.join(DIR),
            fd: None,
            name: Vec::with_capacity(256),
            logged: Vec::new(),
            failed: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create the directory (mode 0700) if missing; it is never emptied.
    pub fn create(&self) -> io::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// The path of `devpath`'s entry.
    pub fn path(&self, devpath: &[u8]) -> Option<PathBuf> {
        file_name(devpath).map(|n| self.dir.join(n))
    }

    /// Record the event's device, or for a `remove` forget it, now. The database is for
    /// the curious: a failure never costs the event. It is logged with the file, once
    /// per cause until an entry is written again.
    pub fn update(&mut self, entry: &Entry) {
        let mut p = Prepared::default();
        if p.prepare(entry) {
            self.write(&p);
        }
    }

    /// Put one prepared entry on file (or remove it).
    fn write(&mut self, p: &Prepared) {
        self.name.clear();
        self.name.extend_from_slice(&p.name);
        let remove = p.remove;
        let mut result = self.apply(remove, &p.text);
        if let Err((_, Errno::ENOENT)) = result {
            // The directory went away (removed by hand, or the runtime dir's contents
            // cleared): made again, as at start, and tried once more.
            self.fd = None;
            if self.create().is_ok() {
                result = self.apply(remove, &p.text);
            }
        }
        match result {
            Ok(()) => {
                if self.failed > 0 {
                    log::info!(
                        "database {}: entries written again, after {} failed",
                        self.dir.display(),
                        self.failed
                    );
                    self.failed = 0;
                    self.logged.clear();
                }
            }
            Err((step, e)) => {
                self.failed += 1;
                if !self.logged.contains(&(step, e)) {
                    self.logged.push((step, e));
                    let file = match step {
                        Step::OpenDir => self.dir.clone(),
                        Step::Write => self.dir.join(TMP),
                        Step::Rename | Step::Remove => self.dir.join(OsStr::from_bytes(&self.name)),
                    };
                    log::warn!(
                        "database {}: {}: {e}, for {} (the event went on; until an entry is \
                         written again, further failures of this kind are not logged)",
                        file.display(),
                        match step {
                            Step::OpenDir => "open",
                            Step::Write => "write",
                            Step::Rename => "rename",
                            Step::Remove => "remove",
                        },
                        String::from_utf8_lossy(&p.devpath),
                    );
                }
            }
        }
    }

    /// Write `self.text` as the entry `self.name` (or remove it): a temporary file of
    /// a fixed name (one writer, the owner under its lock) renamed over the entry, so a
    /// reader sees the old entry or the new one, whole.
    fn apply(&mut self, remove: bool, text: &[u8]) -> Result<(), (Step, Errno)> {
        let dir = match &self.fd {
            Some(fd) => fd.as_raw_fd(),
            None => {
                let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                let fd = nix::fcntl::open(&self.dir, flags, Mode::empty())
                    .map_err(|e| (Step::OpenDir, e))?;
                // SAFETY: open returned it, and nothing else owns it.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                self.fd.insert(fd).as_raw_fd()
            }
        };
        let name = OsStr::from_bytes(&self.name);
        if remove {
            return match nix::unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {
                    // ENOENT of the directory itself shows as a failed open next time;
                    // here it is the usual case of a device without an entry.
                    Ok(())
                }
                Err(e) => Err((Step::Remove, e)),
            };
        }
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        let tmp = nix::fcntl::openat(Some(dir), TMP, flags, Mode::from_bits_truncate(0o644))
            .map_err(|e| (Step::Write, e))?;
        // SAFETY: openat returned it, and nothing else owns it.
        let tmp = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(tmp) };
        let mut rest = text;
        while !rest.is_empty() {
            match nix::unistd::write(&tmp, rest) {
                Ok(n) if n > 0 => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                r => {
                    // A full file system keeps no half entry either.
                    let _ = nix::unistd::unlinkat(Some(dir), TMP, UnlinkatFlags::NoRemoveDir);
                    return Err((Step::Write, r.err().unwrap_or(Errno::ENOSPC)));
                }
            }
        }
        drop(tmp);
        nix::fcntl::renameat(Some(dir), TMP, Some(dir), name).map_err(|e| (Step::Rename, e))
    }
}

/// One entry made ready to write: its file name and text (or a remove), built under the
/// owner's lock while the event is at hand; the system calls come later.
#[derive(Debug, Default)]
struct Prepared {
    name: Vec<u8>,
    text: Vec<u8>,
    remove: bool,
    devpath: Vec<u8>,
}

impl Prepared {
    /// False (logged) when the DEVPATH is too long for a file name.
    fn prepare(&mut self, entry: &Entry) -> bool {
        let ev = entry.event;
        if !name_into(&mut self.name, ev.devpath()) {
            log::warn!("{}: DEVPATH too long for a database entry", ev.summary());
            return false;
        }
        self.remove = ev.action() == b"remove";
        self.text.clear();
        if !self.remove {
            render_into(&mut self.text, entry);
        }
        self.devpath.clear();
        self.devpath.extend_from_slice(ev.devpath());
        true
    }
}

/// The daemon's database: entries are made ready under the owner's lock
/// ([`Deferred::submit`]) and put on file by [`Deferred::flush`], which a runner thread
/// calls right after it spawned a handler, so the files are written while the handler
/// runs rather than between one handler's exit and the next one's spawn (where they
/// cost dispatch some 6 %). The main thread flushes after each message (events that ran
/// no handler), a runner before it waits for work, and the stop at the end.
///
/// Entries go on file in the order they were submitted (one flush at a time), and
/// [`Deferred::pending`] counts the ones not yet there: a settle waits for them, so once
/// it returns every handled event's entry is on file. A crash may lose the entries
/// still pending (their events' done records may be on file already); a coldplug
/// (`hotplugctl trigger`) rewrites them.
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
        if p.prepare(entry) {
            self.shared
                .pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            q.items.push(p);
        } else {
            q.free.push(p);
        }
    }

    /// Write every submitted entry, in order.
    pub fn flush(&self) {
        use std::sync::atomic::Ordering;
        if self.pending() == 0 {
            return;
        }
        let mut db = lock(&self.shared.writer);
        let batch = std::mem::take(&mut lock(&self.shared.queue).items);
        if batch.is_empty() {
            return;
        }
        for p in &batch {
            db.write(p);
        }
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

    /// Create the directory now, as [`Db::create`].
    pub fn create(&self) -> io::Result<()> {
        lock(&self.shared.writer).create()
    }
}

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

/// Read an entry's text back.
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
            _ => {}
        }
    }
    r
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

    #[test]
    fn names() {
        assert_eq!(
            file_name(b"/devices/virtual/net/lo").unwrap(),
            "\\x2fdevices\\x2fvirtual\\x2fnet\\x2flo"
        );
        assert_eq!(file_name(b"/a:b.c-d_e@f+g").unwrap(), "\\x2fa:b.c-d_e@f+g");
        assert!(file_name(b"").is_none());
        assert!(file_name(&[b'/'; 64]).is_none(), "64 * 4 bytes is too long");
    }

    #[test]
    fn write_read_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let mut db = Db::new(tmp.path());
        db.create().unwrap();
        let e = ev("add", &[("ID_FS_UUID", "12\n34")]);
        let imported = vec![b"ID_FS_UUID".to_vec()];
        db.update(&Entry {
            event: &e,
            imported: &imported,
            links: vec![b"disk/by-uuid/x"],
            rules: vec!["blkid", "log"],
        });
        let path = db.path(e.devpath()).unwrap();
        let text = fs::read(&path).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&text),
            "D:/devices/a b/sd\\x5ca\nS:9\nP:ACTION=add\nP:DEVPATH=/devices/a b/sd\\x5ca\n\
             P:SUBSYSTEM=block\nP:SEQNUM=9\nP:ID_FS_UUID=12\\x0a34\nI:ID_FS_UUID\n\
             L:disk/by-uuid/x\nR:blkid\nR:log\n"
        );
        let r = parse(&text);
        assert_eq!(r.devpath, b"/devices/a b/sd\\a");
        assert_eq!(r.seqnum, Some(9));
        assert_eq!(
            r.properties[4],
            (b"ID_FS_UUID".to_vec(), b"12\n34".to_vec())
        );
        assert_eq!(r.imported, [b"ID_FS_UUID".to_vec()]);
        assert_eq!(r.links, [b"disk/by-uuid/x".to_vec()]);
        assert_eq!(r.rules, ["blkid", "log"]);
        // Nothing temporary left behind.
        assert_eq!(fs::read_dir(db.dir()).unwrap().count(), 1);

        db.update(&Entry {
            event: &ev("remove", &[]),
            imported: &[],
            links: vec![],
            rules: vec![],
        });
        assert!(!path.exists());
        // A remove of a device without an entry is fine.
        db.update(&Entry {
            event: &ev("remove", &[]),
            imported: &[],
            links: vec![],
            rules: vec![],
        });
    }
}
