//! Matching on sysfs: the rule keys that look at the device's directory under `sysfs_dir`
//! rather than at the event's variables. `ATTR{name}` and `DRIVER` look at the device
//! itself; `ATTRS{name}`, `DRIVERS`, `KERNELS` and `SUBSYSTEMS` at the device or any
//! parent up its DEVPATH, all of one rule's on the same device, as in udev.
//!
//! Lazily: these keys cost syscalls, so a rule's event keys are checked first and the
//! device's directory is opened only when a rule got that far; what was read is kept for
//! the rest of the event's plan (up to [`CACHE_MAX`] bytes) and dropped with it. What
//! outlives the event is a few open attribute files of sysfs ([`OpenAttrs`]), read again
//! from offset 0 for each event that finds them.
//!
//! No symlink followed: sysfs is full of them (`device`, `subsystem`, `driver`,
//! `firmware_node`) leading anywhere, and a DEVPATH is whatever the event said. The
//! device's directory is opened once per event refusing a symlink anywhere past
//! `sysfs_dir` ([`open_below`]); on sysfs every other lookup is relative to it, `../`
//! once per parent level then the name ([`Device::relative`]), refusing symlinks and
//! mount points ([`Rel::open`]), so a read never leaves `sysfs_dir + DEVPATH` or, should
//! the kernel move the device meanwhile, the sysfs mount. Anywhere else (a fake tree)
//! each lookup starts from `sysfs_dir`, as `..` from a directory someone moved could
//! climb above it ([`Device::relative_here`]). Only the links `driver` and `subsystem`
//! are read, as links (their target's last component is the name).
//!
//! Fast because sysfs path lookups are dear: each component of a path costs about a
//! system call's worth (kernfs checks every directory in a locked slow walk), while `..`
//! costs a fraction and a failed `fstatat` costs less than a failed open. Where the
//! kernel has no `openat2`, every lookup is an absolute path as when the base is opened.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::sys::statfs::{fstatfs, SYSFS_MAGIC};

use super::Pattern;
use crate::event::Event;

/// Where sysfs is mounted unless `sysfs_dir` says otherwise.
pub const DEFAULT_SYSFS_DIR: &str = "/sys";

/// A longer attribute counts as missing: sysfs text attributes fit in a page, and a
/// value cut short could match a pattern the whole would not.
const ATTR_MAX: usize = 4096;

/// Bytes of values one event's cache holds; past it values are read again each time.
pub const CACHE_MAX: usize = 64 << 10;

/// What a sysfs key looks at, on one device directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum What {
    /// A file below the directory: a relative path of plain components.
    Attr(Box<[u8]>),
    /// The last component of the `driver` link's target.
    Driver,
    /// The last component of the `subsystem` link's target.
    Subsystem,
    /// The directory's own name, the DEVPATH component: no read.
    Kernel,
}

/// Which phase a `match` key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// An event variable (KERNEL included: it is DEVPATH's last component).
    Event,
    /// Read on the event's device: `ATTR{name}`, `DRIVER`.
    Own(What),
    /// Read on the device or a parent, all on the same one: `ATTRS{name}`, `DRIVERS`,
    /// `KERNELS`, `SUBSYSTEMS`.
    Parent(What),
}

/// Sort a `match` key, or say what is wrong with it (the caller adds file:line:col).
pub(crate) fn classify(key: &str) -> Result<KeyKind, String> {
    match key {
        "DRIVER" => return Ok(KeyKind::Own(What::Driver)),
        "DRIVERS" => return Ok(KeyKind::Parent(What::Driver)),
        "KERNELS" => return Ok(KeyKind::Parent(What::Kernel)),
        "SUBSYSTEMS" => return Ok(KeyKind::Parent(What::Subsystem)),
        "ATTR" | "ATTRS" => {
            return Err(format!(
                "`{key}` needs an attribute name: write \"{key}{{name}}\" (quoted, as a TOML key)"
            ))
        }
        _ => {}
    }
    let Some(open) = key.find('{') else {
        if key.contains('}') {
            return Err(format!("unexpected `}}` in match key {key:?}"));
        }
        return Ok(KeyKind::Event);
    };
    let head = &key[..open];
    if head != "ATTR" && head != "ATTRS" {
        return Err(format!(
            "unknown match key {key:?}: only ATTR{{name}} and ATTRS{{name}} take a name in braces"
        ));
    }
    let rest = &key[open + 1..];
    let Some(close) = rest.find('}') else {
        return Err(format!("unclosed `{{` in match key {key:?}"));
    };
    if close + 1 != rest.len() {
        return Err(format!("unexpected text after `}}` in match key {key:?}"));
    }
    let name = attr_name(&rest[..close]).map_err(|e| format!("in match key {key:?}: {e}"))?;
    let what = What::Attr(name.as_bytes().into());
    Ok(if head == "ATTR" {
        KeyKind::Own(what)
    } else {
        KeyKind::Parent(what)
    })
}

/// An attribute name is a path below the device's directory (`power/control`, as udev
/// allows): relative, plain components only, so it cannot climb out.
fn attr_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("empty attribute name".into());
    }
    if name.starts_with('/') {
        return Err("the attribute name must be relative to the device's directory".into());
    }
    for part in name.split('/') {
        match part {
            "" => return Err("empty path component in the attribute name".into()),
            "." | ".." => {
                return Err(format!(
                    "`{part}` in the attribute name: it must name a file below the device"
                ))
            }
            _ if part.contains(['{', '}']) => {
                return Err("braces in the attribute name".into());
            }
            _ => {}
        }
    }
    Ok(name)
}

/// One sysfs key of a rule, with its patterns (any may match, as for event keys).
#[derive(Debug, Clone)]
pub(crate) struct SysKey {
    what: What,
    patterns: Box<[Pattern]>,
}

/// A rule's sysfs keys, checked only after its event keys matched.
#[derive(Debug, Clone, Default)]
pub(crate) struct SysMatch {
    own: Vec<SysKey>,
    parent: Vec<SysKey>,
}

impl SysMatch {
    /// Add a key that [`classify`] sorted as `Own` or `Parent` (an `Event` one is ignored).
    pub(crate) fn push(&mut self, kind: KeyKind, patterns: Box<[Pattern]>) {
        match kind {
            KeyKind::Own(what) => self.own.push(SysKey { what, patterns }),
            KeyKind::Parent(what) => self.parent.push(SysKey { what, patterns }),
            KeyKind::Event => {}
        }
    }

    pub(crate) fn matches<'e>(&'e self, dev: &mut Device<'e>) -> bool {
        dev.open();
        let Some(me) = dev.device_level() else {
            // No device to read: every value is missing.
            return self
                .own
                .iter()
                .chain(&self.parent)
                .all(|k| k.patterns.iter().any(|p| p.matches(None)));
        };
        if !self.own.iter().all(|k| dev.key_matches(me, k)) {
            return false;
        }
        if self.parent.is_empty() {
            return true;
        }
        // The device first, then up DEVPATH to the top directory (`/devices`, never
        // matched), skipping directories that are not devices, as udev does.
        // Whether a parent is a device costs a lookup: asked only where the keys hold.
        std::iter::once(me).chain((1..me).rev()).any(|level| {
            self.parent.iter().all(|k| dev.key_matches(level, k))
                && (level == me || dev.is_device(level))
        })
    }
}

impl SysKey {
    /// The key as a rule writes it.
    fn name(&self, parent: bool) -> String {
        let s = if parent { "S" } else { "" };
        match &self.what {
            What::Attr(n) => format!("ATTR{s}{{{}}}", String::from_utf8_lossy(n)),
            What::Driver => format!("DRIVER{s}"),
            What::Subsystem => "SUBSYSTEMS".into(),
            What::Kernel => "KERNELS".into(),
        }
    }
}

impl SysMatch {
    /// Each key with the value it saw, for [`super::RuleSet::explain`]: own keys on the
    /// device; parent keys on the level where they all hold, else each on the first level
    /// where it alone holds (the rule then fails: they must hold on one), else on the
    /// device itself.
    pub(crate) fn explain<'e>(&'e self, dev: &mut Device<'e>) -> Vec<super::KeyCheck> {
        dev.open();
        let Some(me) = dev.device_level() else {
            return self
                .own
                .iter()
                .map(|k| (k, false))
                .chain(self.parent.iter().map(|k| (k, true)))
                .map(|(k, parent)| super::KeyCheck {
                    key: k.name(parent),
                    seen: None,
                    matched: k.patterns.iter().any(|p| p.matches(None)),
                    at: None,
                })
                .collect();
        };
        let mut out: Vec<_> = self.own.iter().map(|k| dev.check(me, k, false)).collect();
        let levels: Vec<usize> = std::iter::once(me).chain((1..me).rev()).collect();
        let together = levels.iter().copied().find(|&level| {
            self.parent.iter().all(|k| dev.key_matches(level, k))
                && (level == me || dev.is_device(level))
        });
        for k in &self.parent {
            let level = together.unwrap_or_else(|| {
                levels
                    .iter()
                    .copied()
                    .find(|&l| dev.key_matches(l, k) && (l == me || dev.is_device(l)))
                    .unwrap_or(me)
            });
            out.push(dev.check(level, k, true));
        }
        out
    }
}

struct Cached<'e> {
    level: usize,
    what: &'e What,
    value: Option<Box<[u8]>>,
}

/// The deepest directory of DEVPATH that opened (the device's own, unless it is gone):
/// every lookup is relative to it, `..` once per level up.
struct Base {
    fd: OwnedFd,
    level: usize,
    /// Its file system (`st_dev`), once a lookup needed it.
    fs: Option<u64>,
    /// Whether it is on sysfs, where only the kernel moves a directory: see
    /// [`Device::relative_here`].
    sysfs: bool,
}

/// One event's view of its device's directory and parents: opened on first use, read
/// lazily, cached until the event's plan is made.
pub(crate) struct Device<'e> {
    root: &'e Path,
    ev: &'e Event,
    opened: bool,
    /// Where each DEVPATH component ends; level `i` is the directory of the first `i+1`.
    ends: Vec<usize>,
    /// Whether each level has a `uevent` file, once looked at.
    is_dev: Vec<Option<bool>>,
    /// `None` until a value is read; then `Some(None)` if no directory opened at all.
    base: Option<Option<Base>>,
    cache: Vec<Cached<'e>>,
    cached_bytes: usize,
    /// A value read past the cache's cap, lent out until the next read.
    spare: Option<Box<[u8]>>,
    /// The path being looked up, reused: absolute (`sysfs_dir` first) to open the base
    /// or where the kernel has no `openat2`, else relative to the base.
    path: Vec<u8>,
}

impl<'e> Device<'e> {
    /// Costs nothing until a rule needs it: built for every event.
    pub(crate) fn new(root: &'e Path, ev: &'e Event) -> Device<'e> {
        Device {
            root,
            ev,
            opened: false,
            ends: Vec::new(),
            is_dev: Vec::new(),
            base: None,
            cache: Vec::new(),
            cached_bytes: 0,
            spare: None,
            path: Vec::new(),
        }
    }

    fn open(&mut self) {
        if std::mem::replace(&mut self.opened, true) {
            return;
        }
        let devpath = self.ev.devpath();
        let Some(rest) = devpath.strip_prefix(b"/") else {
            return;
        };
        // Sized once: grown a step at a time, these were a good part of the work done
        // outside the kernel.
        self.ends
            .reserve(devpath.iter().filter(|&&b| b == b'/').count());
        self.path
            .reserve(self.root.as_os_str().len() + devpath.len() + 64);
        // A DEVPATH the kernel would not send reads nothing at all.
        let mut end = 0;
        for part in rest.split(|&b| b == b'/') {
            if matches!(part, b"" | b"." | b"..") {
                self.ends.clear();
                return;
            }
            end += 1 + part.len();
            self.ends.push(end);
        }
        self.is_dev = vec![None; self.ends.len()];
    }

    fn device_level(&self) -> Option<usize> {
        self.ends.len().checked_sub(1)
    }

    /// The directory of `level`, or `file` in it: `sysfs_dir/DEVPATH-prefix[/file]`.
    fn set_path(&mut self, level: usize, file: &[u8]) {
        self.path.clear();
        self.path
            .extend_from_slice(self.root.as_os_str().as_bytes());
        self.path
            .extend_from_slice(&self.ev.devpath()[..self.ends[level]]);
        if !file.is_empty() {
            self.path.push(b'/');
            self.path.extend_from_slice(file);
        }
    }

    /// The current path as [`open_below`] takes it.
    fn below(&self) -> Below<'_> {
        Below {
            path: &self.path,
            root_len: self.root.as_os_str().len(),
        }
    }

    /// Open the device's directory, once per event, or the deepest parent's where it is
    /// gone (a remove): a path from `sysfs_dir` is looked up component by component,
    /// each a sysfs lookup that costs about as much as a system call, so it is done once
    /// and every file after is a short walk up from here.
    fn base(&mut self) -> Option<&mut Base> {
        if self.base.is_none() {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let mut found = None;
            for level in (0..self.ends.len()).rev() {
                self.set_path(level, b"");
                if let Ok(fd) = open_below(self.below(), flags) {
                    let sysfs = fstatfs(&fd).is_ok_and(|s| s.filesystem_type() == SYSFS_MAGIC);
                    found = Some(Base {
                        fd,
                        level,
                        fs: None,
                        sysfs,
                    });
                    break;
                }
            }
            self.base = Some(found);
        }
        self.base.as_mut().and_then(Option::as_mut)
    }

    /// Whether this event's lookups go relative to the base ([`Device::relative`]), or
    /// each from `sysfs_dir` ([`open_below`]). Relative only on sysfs: `..` of the base
    /// is the directory DEVPATH names above it only while nothing moves it, and the
    /// number of `..` is bounded by DEVPATH, not by where the base is now. In a fake
    /// tree (tests, `hotplugctl test`) anyone who may write there could move the device's
    /// directory up, out of `sysfs_dir`, between the open and the reads, and the `..`
    /// would climb above `sysfs_dir`; on sysfs only the kernel moves a device, and the
    /// opens refuse to leave its mount (`RESOLVE_NO_XDEV`), the stats compare `st_dev`.
    fn relative_here(&mut self) -> bool {
        if OPENAT2.load(Ordering::Relaxed) == 2 {
            return false;
        }
        match self.base() {
            Some(base) => base.sysfs && fast(),
            // Nothing of DEVPATH opened: nothing in it exists, no lookup needed.
            None => fast(),
        }
    }

    /// `file` in the directory of `level`, as a path relative to the base: `../` once
    /// per level up, so no component but the file's own is ever a name from sysfs, and
    /// `..` of a directory opened without following a symlink is the one DEVPATH names.
    /// `None`: that directory did not open, so nothing in it exists.
    fn relative(&mut self, level: usize, file: &[u8]) -> Option<RawFd> {
        let base = self.base()?;
        let up = base.level.checked_sub(level)?;
        let fd = base.fd.as_raw_fd();
        self.path.clear();
        for _ in 0..up {
            self.path.extend_from_slice(b"../");
        }
        self.path.extend_from_slice(file);
        Some(fd)
    }

    /// For log lines: the absolute path of `file` at `level`.
    fn shown(&self, level: usize, file: &[u8]) -> String {
        let dir = &self.ev.devpath()[..self.ends[level]];
        format!(
            "{}{}/{}",
            self.root.display(),
            String::from_utf8_lossy(dir),
            String::from_utf8_lossy(file)
        )
    }

    fn is_device(&mut self, level: usize) -> bool {
        if let Some(known) = self.is_dev[level] {
            return known;
        }
        let known = if self.relative_here() {
            self.relative(level, b"uevent")
                .is_some_and(|fd| self.is_device_at(fd))
        } else {
            self.set_path(level, b"uevent");
            let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            open_below(self.below(), flags)
                .is_ok_and(|fd| fstat(fd.as_raw_fd()).is_ok_and(|st| is_reg(&st)))
        };
        self.is_dev[level] = Some(known);
        known
    }

    /// One `fstatat`, which opens nothing. A stat cannot refuse a mount point in the
    /// walk as `RESOLVE_NO_XDEV` does, so the file must be on the base's file system:
    /// with sysfs mounted at `sysfs_dir`, `..` cannot leave it even if the device's
    /// directory is moved meanwhile (which the kernel may do).
    fn is_device_at(&mut self, fd: RawFd) -> bool {
        let Ok(st) = fstatat(Some(fd), &self.path[..], AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return false;
        };
        let Some(base) = self.base.as_mut().and_then(Option::as_mut) else {
            return false;
        };
        let fs = match base.fs {
            Some(fs) => fs,
            None => match fstat(fd) {
                Ok(b) => *base.fs.insert(b.st_dev),
                Err(_) => return false,
            },
        };
        is_reg(&st) && st.st_dev == fs
    }

    fn check(&mut self, level: usize, key: &'e SysKey, parent: bool) -> super::KeyCheck {
        let matched = self.key_matches(level, key);
        super::KeyCheck {
            key: key.name(parent),
            seen: self.value(level, &key.what).map(<[u8]>::to_vec),
            matched,
            at: Some(self.ev.devpath()[..self.ends[level]].to_vec()),
        }
    }

    fn key_matches(&mut self, level: usize, key: &'e SysKey) -> bool {
        let value = self.value(level, &key.what);
        key.patterns.iter().any(|p| p.matches(value))
    }

    fn value(&mut self, level: usize, what: &'e What) -> Option<&[u8]> {
        let ev = self.ev;
        let me = Some(level) == self.device_level();
        let file: &[u8] = match what {
            What::Kernel => {
                let start = level.checked_sub(1).map_or(1, |l| self.ends[l] + 1);
                return Some(&ev.devpath()[start..self.ends[level]]);
            }
            // The event's own word first: it is what the kernel said when it sent it,
            // and on a remove the directory is gone.
            What::Driver if me && ev.get(b"DRIVER").is_some() => return ev.get(b"DRIVER"),
            What::Subsystem if me && !ev.subsystem().is_empty() => return Some(ev.subsystem()),
            What::Attr(name) => name,
            What::Driver => b"driver",
            What::Subsystem => b"subsystem",
        };
        if let Some(i) = self
            .cache
            .iter()
            .position(|c| c.level == level && c.what == what)
        {
            return self.cache[i].value.as_deref();
        }
        let value = if self.relative_here() {
            match self.relative(level, file) {
                None => None,
                Some(fd) => {
                    let at = Rel {
                        dir: fd,
                        path: &self.path,
                    };
                    let value = match what {
                        What::Attr(_) => read_attr_at(at),
                        _ => read_link_at(at),
                    };
                    value.unwrap_or_else(|e| {
                        log::debug!("{}: {e}", self.shown(level, file));
                        None
                    })
                }
            }
        } else {
            self.set_path(level, file);
            match what {
                What::Attr(_) => read_attr(self.below()),
                _ => read_link(self.below()),
            }
        };
        let cost = value.as_ref().map_or(0, |v| v.len()) + std::mem::size_of::<Cached>();
        if self.cached_bytes + cost > CACHE_MAX {
            self.spare = value;
            return self.spare.as_deref();
        }
        self.cached_bytes += cost;
        self.cache.push(Cached { level, what, value });
        self.cache.last().and_then(|c| c.value.as_deref())
    }
}

fn is_reg(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Whether lookups go relative to the base: where `openat2` is known to work (opening
/// the base found out), as each open there needs `RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`.
fn fast() -> bool {
    OPENAT2.load(Ordering::Relaxed) == 1
}

/// A path relative to the base, as [`Device::relative`] made it.
#[derive(Clone, Copy)]
struct Rel<'p> {
    dir: RawFd,
    path: &'p [u8],
}

impl Rel<'_> {
    /// No symlink followed, and no mount point crossed: `..` stays in the file system
    /// of the base, which is sysfs itself on a real system.
    fn open(self, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
        let fd = openat2(self.dir, self.path, how)?;
        // SAFETY: openat2 returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// An attribute relative to the base; `Ok(None)` where it is missing, an `Err` (logged by
/// the caller) also counts as missing. Most attributes a rule names are missing on most
/// levels, so a plain name is looked at with `fstatat` first: a failed stat costs less
/// than a failed open (no file is set up), and only a stat that found something is
/// followed by the open that reads it. A path with a `/` is opened straight away: its
/// inner components could be symlinks, which only `openat2` refuses.
///
/// Only ever on sysfs ([`Device::relative_here`]), so the file the stat found can be
/// read through an fd kept open since an earlier event ([`OpenAttrs`]).
fn read_attr_at(at: Rel<'_>) -> nix::Result<Option<Box<[u8]>>> {
    let mut node = None;
    if is_plain(at.path) {
        match fstatat(Some(at.dir), at.path, AtFlags::AT_SYMLINK_NOFOLLOW) {
            // The open would refuse it.
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
                return Ok(None)
            }
            Ok(st) if is_reg(&st) => {
                node = Some(Node::of(&st));
                if let Some(value) = OPEN_ATTRS.with_borrow_mut(|c| c.read(Node::of(&st))) {
                    return Ok(Some(value));
                }
            }
            Ok(_) => {}
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let fd = match at.open(ATTR_FLAGS) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let value = read_value(&fd)?;
    // Kept only if the open reached the node the stat found: the directory could have
    // been renamed and another made in its place between the two.
    if let (Some(node), Ok(st)) = (node, fstat(fd.as_raw_fd())) {
        if Node::of(&st) == node {
            OPEN_ATTRS.with_borrow_mut(|c| c.keep(node, fd));
        }
    }
    Ok(value)
}

/// A sysfs file by identity: kernfs numbers its nodes with a 64-bit id (a 32-bit
/// number and a generation, Linux 5.5), which is `st_ino` where `ino_t` has 64 bits,
/// and never hands out an id twice. So while a lookup finds a node with this
/// `(st_dev, st_ino)`, it is the very node an fd kept under that key was opened on,
/// wherever it has moved since.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Node {
    dev: u64,
    ino: u64,
}

impl Node {
    fn of(st: &FileStat) -> Node {
        Node {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// How many attribute files each thread keeps open between events.
const OPEN_ATTRS_MAX: usize = 32;

/// Sysfs attribute files kept open between events, most recently used first. Opening
/// one is the dearest step of a match (about 2 µs: kernfs sets up a `seq_file` per
/// open, and closing tears it down) while reading an open one again from offset 0
/// costs about 0.4: the value is not kept, only the file, and a `pread` at 0 asks the
/// driver for it afresh, as a new open would. An fd is used only after a lookup
/// this event, from the device's directory, found its node ([`Node`]), so it reads
/// exactly what opening that path would have.
#[derive(Default)]
struct OpenAttrs {
    open: Vec<(Node, OwnedFd)>,
}

thread_local! {
    static OPEN_ATTRS: std::cell::RefCell<OpenAttrs> = std::cell::RefCell::default();
}

impl OpenAttrs {
    /// `None` where no fd is kept for the node, or it failed (then it is closed, and
    /// the caller opens the path).
    fn read(&mut self, node: Node) -> Option<Box<[u8]>> {
        if !cfg!(target_pointer_width = "64") {
            return None;
        }
        let i = self.open.iter().position(|(n, _)| *n == node)?;
        let mut buf = [0u8; ATTR_MAX + 1];
        match nix::sys::uio::pread(&self.open[i].1, &mut buf, 0) {
            Ok(n) if n <= ATTR_MAX => {
                self.open[..=i].rotate_right(1);
                Some(trimmed(&buf[..n]))
            }
            _ => {
                self.open.remove(i);
                None
            }
        }
    }

    fn keep(&mut self, node: Node, fd: OwnedFd) {
        if !cfg!(target_pointer_width = "64") {
            return;
        }
        self.open.truncate(OPEN_ATTRS_MAX - 1);
        self.open.insert(0, (node, fd));
    }
}

/// Whether a relative path is `..` components and then one name.
fn is_plain(path: &[u8]) -> bool {
    let mut parts = path.rsplit(|&b| b == b'/');
    parts.next();
    parts.all(|p| p == b"..")
}

/// The last component of a link's target, relative to the base.
fn read_link_at(at: Rel<'_>) -> nix::Result<Option<Box<[u8]>>> {
    let fd = match at.open(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(link_name(&fd))
}

/// Whether this kernel has `openat2` (Linux 5.6): 0 not known yet, 1 yes, 2 no.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// A file's absolute path, `sysfs_dir` (its first `root_len` bytes, symlinks resolved
/// when the config was read) then a relative part without `.`, `..` or empty components.
#[derive(Clone, Copy)]
struct Below<'p> {
    path: &'p [u8],
    root_len: usize,
}

/// Open a file below `sysfs_dir` without following a symlink anywhere past it; a symlink
/// at the end is opened itself with `O_PATH | O_NOFOLLOW`, else refused. One `openat2`
/// with RESOLVE_NO_SYMLINKS where the kernel has it (Linux 5.6), else `sysfs_dir` and a
/// walk of `openat`s, each with O_NOFOLLOW. (No fd for `sysfs_dir` is kept: a file
/// system mounted there later must be seen, as a path would see it.)
fn open_below(at: Below<'_>, flags: OFlag) -> nix::Result<OwnedFd> {
    if OPENAT2.load(Ordering::Relaxed) != 2 {
        let how = OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(libc::AT_FDCWD, at.path, how) {
            // SAFETY: openat2 returned a new fd that nothing else owns.
            Ok(fd) => {
                OPENAT2.store(1, Ordering::Relaxed);
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            // Old kernels, and seccomp filters that do not know it.
            Err(Errno::ENOSYS | Errno::EPERM) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                OPENAT2.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    open_walk(at, flags)
}

fn open_walk(at: Below<'_>, flags: OFlag) -> nix::Result<OwnedFd> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = OsStr::from_bytes(&at.path[..at.root_len]);
    // SAFETY: openat returned a new fd that nothing else owns (here and below).
    let mut dir = unsafe { OwnedFd::from_raw_fd(openat(None, root, dir_flags, Mode::empty())?) };
    let rel = &at.path[at.root_len..];
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    let mut parts = rel.split(|&b| b == b'/').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        let f = if last { flags } else { dir_flags } | OFlag::O_NOFOLLOW;
        let fd = openat(
            Some(dir.as_raw_fd()),
            OsStr::from_bytes(part),
            f,
            Mode::empty(),
        )?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if last {
            return Ok(fd);
        }
        dir = fd;
    }
    Err(Errno::ENOENT)
}

/// The last component of a link's target (`driver`, `subsystem`).
fn read_link(at: Below<'_>) -> Option<Box<[u8]>> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open_below(at, flags).ok()?;
    link_name(&fd)
}

/// The last component of the target of the link an `O_PATH | O_NOFOLLOW` fd stands for.
fn link_name(fd: &OwnedFd) -> Option<Box<[u8]>> {
    // An empty path reads the link an O_PATH fd stands for.
    let target = readlinkat(Some(fd.as_raw_fd()), "").ok()?;
    let name = Path::new(&target).file_name()?;
    Some(name.as_bytes().into())
}

/// O_NONBLOCK: in a fake tree a FIFO must not stall the daemon.
const ATTR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// An attribute, trimmed; anything that fails is a missing value.
fn read_attr(at: Below<'_>) -> Option<Box<[u8]>> {
    let value = match open_below(at, ATTR_FLAGS) {
        Ok(fd) => read_value(&fd),
        Err(Errno::ENOENT) => return None,
        Err(e) => Err(e),
    };
    value.unwrap_or_else(|e| {
        log::debug!("{}: {e}", String::from_utf8_lossy(at.path));
        None
    })
}

/// An open attribute's value, trimmed; EFBIG if it is longer than [`ATTR_MAX`].
fn read_value(fd: &OwnedFd) -> nix::Result<Option<Box<[u8]>>> {
    let mut buf = [0u8; ATTR_MAX + 1];
    // One read: sysfs hands out an attribute whole, and a regular file reads short only
    // at its end; a value that fills the buffer is too long either way.
    match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
        Ok(n) if n <= ATTR_MAX => Ok(Some(trimmed(&buf[..n]))),
        // Logged by the caller, with the path, as any error: taken as missing.
        Ok(_) => Err(Errno::EFBIG),
        Err(e) => Err(e),
    }
}

/// udev trims trailing whitespace: sysfs values end in a newline.
fn trimmed(value: &[u8]) -> Box<[u8]> {
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    value[..end].into()
}

/// `KERNEL`: DEVPATH's last component.
pub(crate) fn kernel_name(devpath: &[u8]) -> &[u8] {
    devpath.rsplit(|&b| b == b'/').next().unwrap_or(devpath)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::rules::RuleSet;
    use std::fs::{self, File};
    use std::os::unix::fs::symlink;

    /// A tree shaped like the real one: a USB serial adapter's tty, four devices deep,
    /// with a directory between that is not a device (`tty`, no `uevent`), `driver` and
    /// `subsystem` links, and the traps: symlinks out of the device, a subdirectory,
    /// an oversized value, a FIFO.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let usb1 = "devices/pci0000:00/0000:00:14.0/usb1";
        let dev = |p: &str, files: &[(&str, &str)]| {
            let d = r.join(p);
            fs::create_dir_all(&d).unwrap();
            for (name, text) in files {
                fs::write(d.join(name), text).unwrap();
            }
        };
        dev("devices/pci0000:00", &[("uevent", "")]);
        dev(
            "devices/pci0000:00/0000:00:14.0",
            &[("uevent", ""), ("vendor", "0x8086\n")],
        );
        dev(usb1, &[("uevent", ""), ("idVendor", "1d6b\n")]);
        let port = format!("{usb1}/1-1");
        dev(
            &port,
            &[
                ("uevent", ""),
                ("idVendor", "0403\n"),
                ("idProduct", "6001\n"),
                ("product", "FT232R USB UART  \n\n"),
            ],
        );
        let intf = format!("{port}/1-1:1.0");
        dev(&intf, &[("uevent", ""), ("bInterfaceClass", "ff\n")]);
        // Not a device: its attribute must never match.
        dev(&format!("{intf}/tty"), &[("idVendor", "dead\n")]);
        let tty = format!("{intf}/tty/ttyUSB0");
        dev(&tty, &[("uevent", ""), ("dev", "188:0\n")]);
        dev(&format!("{tty}/power"), &[("control", "auto\n")]);
        fs::write(r.join(&tty).join("big"), vec![b'x'; ATTR_MAX + 1]).unwrap();
        fs::write(r.join(&tty).join("page"), vec![b'y'; ATTR_MAX]).unwrap();
        nix::unistd::mkfifo(&r.join(&tty).join("fifo"), Mode::S_IRUSR).unwrap();
        dev("bus/usb/drivers/usb", &[]);
        dev("bus/usb/drivers/ftdi_sio", &[]);
        dev("class/tty", &[]);
        dev("secret", &[("idVendor", "0403\n"), ("dev", "1:3\n")]);
        let up = |p: &str| "../".repeat(p.matches('/').count() + 1);
        for (p, driver) in [(&port, "usb"), (&intf, "ftdi_sio")] {
            let to = format!("{}bus/usb/drivers/{driver}", up(p));
            symlink(to, r.join(p).join("driver")).unwrap();
            symlink(format!("{}bus/usb", up(p)), r.join(p).join("subsystem")).unwrap();
        }
        symlink(
            format!("{}class/tty", up(&tty)),
            r.join(&tty).join("subsystem"),
        )
        .unwrap();
        // Symlinks a read must not follow: out of the tree, and up to the parent.
        symlink(r.join("secret/dev"), r.join(&tty).join("evil")).unwrap();
        symlink("../../..", r.join(&tty).join("device")).unwrap();
        symlink(r.join("secret"), r.join(&tty).join("sub")).unwrap();
        t
    }

    const TTY: &str = "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/tty/ttyUSB0";

    fn rules(root: &Path, body: &str) -> RuleSet {
        let text = format!("[daemon]\nsysfs_dir = {:?}\n{body}", root.to_str().unwrap());
        match Config::parse(&text, Path::new("test.toml")) {
            Ok(c) => c.rules,
            Err(e) => panic!("{e}"),
        }
    }

    fn ev(devpath: &str, vars: &[(&str, &str)]) -> Event {
        let mut all = vec![("ACTION", "add"), ("DEVPATH", devpath)];
        all.extend_from_slice(vars);
        Event::from_vars(
            b"tty",
            all.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        )
        .unwrap()
    }

    /// One rule per `(name, match)`; the names of those that run for `e`.
    fn ran(root: &Path, cases: &[(&str, &str)], e: &Event) -> Vec<String> {
        let body: String = cases
            .iter()
            .map(|(n, m)| {
                format!("[[rule]]\nname = {n:?}\nmatch = {{ {m} }}\nrun = [\"/bin/true\"]\n")
            })
            .collect();
        rules(root, &body)
            .plan(e)
            .into_iter()
            .map(|j| j.rule)
            .collect()
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("r.toml")) {
            Ok(_) => panic!("no error for {text}"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn key_syntax() {
        use KeyKind::*;
        let attr = |n: &str| What::Attr(n.as_bytes().into());
        assert_eq!(classify("SUBSYSTEM"), Ok(Event));
        assert_eq!(classify("KERNEL"), Ok(Event));
        assert_eq!(classify("DRIVER"), Ok(Own(What::Driver)));
        assert_eq!(classify("DRIVERS"), Ok(Parent(What::Driver)));
        assert_eq!(classify("KERNELS"), Ok(Parent(What::Kernel)));
        assert_eq!(classify("SUBSYSTEMS"), Ok(Parent(What::Subsystem)));
        assert_eq!(classify("ATTR{dev}"), Ok(Own(attr("dev"))));
        assert_eq!(classify("ATTRS{idVendor}"), Ok(Parent(attr("idVendor"))));
        assert_eq!(
            classify("ATTR{power/control}"),
            Ok(Own(attr("power/control")))
        );
        for (key, why) in [
            ("ATTR", "needs an attribute name"),
            ("ATTRS", "needs an attribute name"),
            ("ATTR{}", "empty attribute name"),
            ("ATTRS{idVendor", "unclosed `{`"),
            ("ATTR{a}b", "unexpected text after `}`"),
            ("ATTR{a}}", "unexpected text after `}`"),
            ("ATTR{../../etc/passwd}", "`..` in the attribute name"),
            ("ATTR{a/./b}", "`.` in the attribute name"),
            ("ATTR{/etc/passwd}", "relative to the device's directory"),
            ("ATTR{a//b}", "empty path component"),
            ("ATTR{a/}", "empty path component"),
            ("ATTR{a{b}", "braces"),
            ("DRIVERS{x}", "only ATTR{name} and ATTRS{name}"),
            ("ENV{x}", "only ATTR{name} and ATTRS{name}"),
            ("FOO}", "unexpected `}`"),
        ] {
            let e = classify(key).unwrap_err();
            assert!(e.contains(why), "{key}: {e}");
        }
    }

    #[test]
    fn check_config_names_the_key() {
        let text = "[[rule]]\nname = \"a\"\nrun = [\"/bin/true\"]\n\
                    match = { SUBSYSTEM = \"usb\", \"ATTRS{../x}\" = \"1\" }\n\
                    [[rule]]\nname = \"b\"\nrun = [\"/bin/true\"]\n\
                    match.\"ATTR{}\" = \"1\"\nmatch.\"ATTR{ok}\" = \"[\"\n\
                    [daemon]\nsysfs_dir = \"sys\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("r.toml:4:30: in match key \"ATTRS{../x}\": `..`"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("r.toml:8:7: in match key \"ATTR{}\": empty"),
            "{}",
            e[1]
        );
        assert!(e[2].starts_with("r.toml:9:20: bad pattern"), "{}", e[2]);
        assert!(
            e[3].starts_with("r.toml:11:13: sysfs_dir must be an absolute"),
            "{}",
            e[3]
        );
    }

    #[test]
    fn own_attributes() {
        let t = tree();
        let r = t.path();
        let cases = [
            ("dev", r#""ATTR{dev}" = "188:0""#),
            ("dev-glob", r#""ATTR{dev}" = "188:*""#),
            ("dev-array", r#""ATTR{dev}" = ["4:*", "188:?"]"#),
            ("dev-not", r#""ATTR{dev}" = "!188:0""#),
            ("subdir", r#""ATTR{power/control}" = "auto""#),
            ("missing", r#""ATTR{nope}" = "*""#),
            ("missing-not", r#""ATTR{nope}" = "!x""#),
            ("parent-attr-not-own", r#""ATTR{idVendor}" = "*""#),
            ("symlink-out", r#""ATTR{evil}" = "*""#),
            ("symlink-up", r#""ATTR{device/idVendor}" = "*""#),
            ("symlink-dir", r#""ATTR{sub/dev}" = "*""#),
            ("oversized", r#""ATTR{big}" = "*""#),
            ("one-page", r#""ATTR{page}" = "y*y""#),
            ("fifo", r#""ATTR{fifo}" = "*""#),
            ("kernel", r#"KERNEL = "ttyUSB*""#),
            (
                "event-then-attr",
                r#"SUBSYSTEM = "tty", "ATTR{dev}" = "188:0""#,
            ),
        ];
        assert_eq!(
            ran(r, &cases, &ev(TTY, &[])),
            [
                "dev",
                "dev-glob",
                "dev-array",
                "subdir",
                "missing-not",
                "one-page",
                "fifo",
                "kernel",
                "event-then-attr"
            ]
        );
    }

    #[test]
    fn trailing_whitespace_is_trimmed() {
        let t = tree();
        let cases = [
            ("exact", r#""ATTRS{product}" = "FT232R USB UART""#),
            ("with-space", r#""ATTRS{product}" = "FT232R USB UART *""#),
        ];
        assert_eq!(ran(t.path(), &cases, &ev(TTY, &[])), ["exact"]);
    }

    #[test]
    fn parents_all_keys_on_one_device() {
        let t = tree();
        let cases = [
            ("vendor", r#""ATTRS{idVendor}" = "0403""#),
            ("root-hub", r#""ATTRS{idVendor}" = "1d6b""#),
            ("pci", r#""ATTRS{vendor}" = "0x8086""#),
            (
                "same",
                r#""ATTRS{idVendor}" = "0403", "ATTRS{idProduct}" = "6001""#,
            ),
            (
                "split",
                r#""ATTRS{idVendor}" = "0403", "ATTRS{bInterfaceClass}" = "ff""#,
            ),
            ("drivers", r#"DRIVERS = "ftdi_sio""#),
            (
                "drivers-usb",
                r#"DRIVERS = "usb", "ATTRS{idProduct}" = "6001""#,
            ),
            (
                "drivers-split",
                r#"DRIVERS = "ftdi_sio", "ATTRS{idProduct}" = "6001""#,
            ),
            ("kernels", r#"KERNELS = "1-1", SUBSYSTEMS = "usb""#),
            ("kernels-self", r#"KERNELS = "ttyUSB0", SUBSYSTEMS = "tty""#),
            ("not-a-device", r#""ATTRS{idVendor}" = "dead""#),
            ("top", r#"KERNELS = "devices""#),
            ("missing", r#""ATTRS{nope}" = "*""#),
            ("missing-not", r#""ATTRS{nope}" = "!x""#),
            ("no-driver", r#"DRIVER = "*""#),
            (
                "own-and-parents",
                r#""ATTR{dev}" = "188:0", "ATTRS{idVendor}" = "0403""#,
            ),
        ];
        assert_eq!(
            ran(t.path(), &cases, &ev(TTY, &[])),
            [
                "vendor",
                "root-hub",
                "pci",
                "same",
                "drivers",
                "drivers-usb",
                "kernels",
                "kernels-self",
                "missing-not",
                "own-and-parents"
            ]
        );
    }

    #[test]
    fn driver_from_the_event_then_the_link() {
        let t = tree();
        let intf = "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0";
        let cases = [
            ("driver", r#"DRIVER = "ftdi_sio""#),
            ("driver-other", r#"DRIVER = "pl2303""#),
            ("subsystems", r#"SUBSYSTEMS = "usb", KERNELS = "1-1:1.0""#),
        ];
        let e = ev(intf, &[("SUBSYSTEM", "usb")]);
        assert_eq!(ran(t.path(), &cases, &e), ["driver", "subsystems"]);
        // The event's own DRIVER and SUBSYSTEM win: the kernel said so when it sent it.
        let e = ev(intf, &[]);
        assert_eq!(ran(t.path(), &cases, &e), ["driver"]);
        let e = ev(intf, &[("SUBSYSTEM", "usb"), ("DRIVER", "pl2303")]);
        assert_eq!(ran(t.path(), &cases, &e), ["driver-other", "subsystems"]);
    }

    #[test]
    fn gone_or_odd_devices() {
        let t = tree();
        let cases = [
            ("attr", r#""ATTR{dev}" = "*""#),
            ("attr-not", r#""ATTR{dev}" = "!1""#),
            ("parent", r#""ATTRS{idVendor}" = "0403""#),
            ("kernels-not", r#"KERNELS = "!x""#),
        ];
        // Removed: the parents are still there.
        let gone = TTY.replace("ttyUSB0", "ttyUSB1");
        assert_eq!(
            ran(t.path(), &cases, &ev(&gone, &[])),
            ["attr-not", "parent", "kernels-not"]
        );
        // A DEVPATH that would climb, or is not absolute, reads nothing.
        for bad in [
            "/devices/../secret",
            "/../secret",
            "secret",
            "/",
            "/devices//x",
        ] {
            assert_eq!(
                ran(t.path(), &cases, &ev(bad, &[])),
                ["attr-not", "kernels-not"],
                "{bad}"
            );
        }
        // A symlink in DEVPATH is not followed.
        symlink(t.path().join("secret"), t.path().join("devices/link")).unwrap();
        assert_eq!(
            ran(t.path(), &cases, &ev("/devices/link", &[])),
            ["attr-not", "kernels-not"]
        );
        // A sysfs_dir behind a symlink is resolved when the config is read.
        let via = tempfile::tempdir().unwrap();
        symlink(t.path(), via.path().join("sys")).unwrap();
        assert_eq!(
            ran(&via.path().join("sys"), &cases, &ev(TTY, &[])),
            ["attr", "attr-not", "parent", "kernels-not"]
        );
        // A missing sysfs_dir: every value is missing.
        let none = t.path().join("none");
        assert_eq!(
            ran(&none, &cases, &ev(TTY, &[])),
            ["attr-not", "kernels-not"]
        );
    }

    #[test]
    fn a_parent_is_a_device_only_by_a_regular_uevent() {
        let t = tree();
        let intf = t
            .path()
            .join("devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0");
        let tty = intf.join("tty");
        let cases = [("tty", r#""ATTRS{idVendor}" = "dead""#)];
        // A symlink named uevent, even to a real one, or a directory, is not the file.
        symlink(intf.join("uevent"), tty.join("uevent")).unwrap();
        assert!(ran(t.path(), &cases, &ev(TTY, &[])).is_empty());
        fs::remove_file(tty.join("uevent")).unwrap();
        fs::create_dir(tty.join("uevent")).unwrap();
        assert!(ran(t.path(), &cases, &ev(TTY, &[])).is_empty());
        fs::remove_dir(tty.join("uevent")).unwrap();
        fs::write(tty.join("uevent"), "").unwrap();
        assert_eq!(ran(t.path(), &cases, &ev(TTY, &[])), ["tty"]);
        // Also from a removed device's deepest parent that is still there.
        let gone = TTY.replace("ttyUSB0", "ttyUSB9/sub");
        assert_eq!(ran(t.path(), &cases, &ev(&gone, &[])), ["tty"]);
    }

    #[test]
    fn lazy_and_cached() {
        let t = tree();
        let rs = rules(
            t.path(),
            "[[rule]]\nname = \"a\"\nmatch = { SUBSYSTEM = \"usb\", \"ATTR{dev}\" = \"*\" }\n\
             run = [\"/bin/true\"]\n",
        );
        let rule = &rs.rules[0];
        let e = ev(TTY, &[]);
        let mut dev = Device::new(t.path(), &e);
        assert!(!rule.matches(&e, &mut dev));
        assert!(
            !dev.opened,
            "sysfs opened though the event's keys did not match"
        );

        let dev_attr = What::Attr(b"dev"[..].into());
        let mut dev = Device::new(t.path(), &e);
        dev.open();
        let me = dev.device_level().unwrap();
        assert_eq!(dev.value(me, &dev_attr), Some(&b"188:0"[..]));
        fs::write(t.path().join(&TTY[1..]).join("dev"), "1:1\n").unwrap();
        assert_eq!(dev.value(me, &dev_attr), Some(&b"188:0"[..]), "not cached");

        // Past the cap values are still right, read each time.
        let names: Vec<What> = (0..40)
            .map(|i| {
                let name = format!("a{i}");
                fs::write(
                    t.path().join(&TTY[1..]).join(&name),
                    vec![b'0' + i % 10; 4000],
                )
                .unwrap();
                What::Attr(name.as_bytes().into())
            })
            .collect();
        for (i, w) in names.iter().enumerate() {
            let v = dev.value(me, w).unwrap();
            assert!(v.len() == 4000 && v[0] == b'0' + i as u8 % 10, "{i}");
        }
        assert!(dev.cached_bytes <= CACHE_MAX);
        assert!(dev.cache.len() < names.len());
        assert_eq!(dev.value(me, &names[39]).unwrap()[0], b'9');
    }

    /// A fake `sysfs_dir` inside another directory: the device's directory moved up and
    /// out of it while its event is planned must not let a parent's lookup climb to what
    /// lies above `sysfs_dir` (with `..` counted from DEVPATH, it did).
    #[test]
    fn a_nested_sysfs_dir_is_never_left() {
        let t = tempfile::tempdir().unwrap();
        let outer = t.path();
        fs::write(outer.join("id"), "secret\n").unwrap();
        let root = outer.join("in/sys");
        for d in ["devices/a", "devices/a/b", "devices/a/b/c"] {
            fs::create_dir_all(root.join(d)).unwrap();
            fs::write(root.join(d).join("uevent"), "").unwrap();
        }
        fs::write(root.join("devices/a/b/c/dev"), "1:2\n").unwrap();
        let e = ev("/devices/a/b/c", &[]);
        let mut dev = Device::new(&root, &e);
        dev.open();
        let me = dev.device_level().unwrap();
        // Two reads: the first one finds out whether openat2 works, the second one
        // opens the device's directory.
        let own = What::Attr(b"dev"[..].into());
        let none = What::Attr(b"nope"[..].into());
        assert_eq!(dev.value(me, &own), Some(&b"1:2"[..]));
        assert_eq!(dev.value(me, &none), None);
        fs::rename(root.join("devices/a/b/c"), outer.join("in/c")).unwrap();
        let id = What::Attr(b"id"[..].into());
        assert_eq!(dev.value(1, &id), None, "read above sysfs_dir");
        assert!(!dev.relative_here(), "relative lookups outside sysfs");

        // This machine's sysfs, where they are safe, keeps them.
        let sys = Path::new("/sys");
        if nix::sys::statfs::statfs(sys).is_ok_and(|s| s.filesystem_type() == SYSFS_MAGIC) && fast()
        {
            let e = ev("/devices/system/cpu", &[]);
            let mut dev = Device::new(sys, &e);
            dev.open();
            assert!(dev.relative_here(), "no relative lookups on sysfs");
        }
    }

    /// At most [`OPEN_ATTRS_MAX`] files stay open, the last used kept; one that fails
    /// to read is closed and counts as not kept (the caller opens the path again).
    #[test]
    fn open_attributes_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let mut c = OpenAttrs::default();
        let node = |i: u64| Node { dev: 1, ino: i };
        for i in 0..40u64 {
            let p = t.path().join(i.to_string());
            fs::write(&p, format!("{i}\n")).unwrap();
            c.keep(node(i), File::open(&p).unwrap().into());
            if i == 20 {
                assert_eq!(c.read(node(0)).as_deref(), Some(&b"0"[..]));
            }
        }
        assert_eq!(c.open.len(), OPEN_ATTRS_MAX);
        assert_eq!(c.read(node(39)).as_deref(), Some(&b"39"[..]));
        assert_eq!(c.read(node(0)).as_deref(), Some(&b"0"[..]), "used, kept");
        assert_eq!(c.read(node(1)), None, "not used, closed");
        let dir = t.path().join("d");
        fs::create_dir(&dir).unwrap();
        c.keep(node(99), File::open(&dir).unwrap().into());
        assert_eq!(c.read(node(99)), None);
        assert!(
            c.open.iter().all(|(n, _)| *n != node(99)),
            "a failed one is closed"
        );
    }

    #[test]
    fn openat2_and_the_walk_agree() {
        let t = tree();
        let root = t.path().as_os_str().as_bytes();
        let tty = &TTY[1..];
        let read = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let link = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let intf = "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0";
        symlink(t.path().join("secret"), t.path().join("devices/link")).unwrap();
        for (path, flags, ok) in [
            (format!("{tty}/dev"), read, true),
            (format!("{tty}/power/control"), read, true),
            (format!("{tty}/evil"), read, false),
            (format!("{tty}/device/uevent"), read, false),
            (format!("{tty}/sub/dev"), read, false),
            ("devices/link/dev".into(), read, false),
            (format!("{tty}/nope"), read, false),
            (format!("{intf}/driver"), link, true),
            (format!("{intf}/driver/uevent"), link, false),
        ] {
            let full = [root, b"/", path.as_bytes()].concat();
            let at = Below {
                path: &full,
                root_len: root.len(),
            };
            let two = open_below(at, flags);
            let walk = open_walk(at, flags);
            assert_eq!(two.is_ok(), ok, "openat2 {path}: {two:?}");
            assert_eq!(walk.is_ok(), ok, "walk {path}: {walk:?}");
        }
        let driver = [root, b"/", intf.as_bytes(), b"/driver"].concat();
        let at = Below {
            path: &driver,
            root_len: root.len(),
        };
        assert_eq!(read_link(at).as_deref(), Some(&b"ftdi_sio"[..]));
    }
}
