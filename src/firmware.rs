//! The built-in firmware loader: answers the kernel's user-mode firmware requests
//! (`SUBSYSTEM=firmware`, `ACTION=add`, `FIRMWARE=name`), as mdev and mdevd do.
//!
//! A kernel with the user-helper fallback makes a device under `DEVPATH` with two files
//! and waits (60 s by default) for someone to use them, the protocol of the kernel's
//! Documentation/driver-api/firmware/fallback-mechanisms.rst:
//!
//! ```text
//!  SYSFS/DEVPATH/loading  <- "1"           found: start
//!  SYSFS/DEVPATH/data     <- the file     sequential writes, any chunk size
//!  SYSFS/DEVPATH/loading  <- "0"           done: the driver gets the data
//!                         <- "-1"          not found, or any error: the driver gets none
//! ```
//!
//! The file is looked up as `DIR/FIRMWARE` in each of `firmware_dirs` in turn, the first
//! regular file winning: the kernel's own search path by default. A name that is absolute
//! or has a `..` component is refused (the kernel refuses those too), so a request never
//! reaches outside the directories; symlinks inside them are followed, as the kernel does,
//! since distributions ship firmware as symlinks.
//!
//! The load must not wait for the queue: the request often comes from a driver probing
//! inside a `modprobe` that a handler runs, and that handler waits for its own firmware.
//! So the owner hands each request to the loader thread as it arrives ([`Intake::offer`]),
//! before ordering, gaps or a paused runner, and queues the event as usual after. When
//! the event's turn comes, rules that are only there for firmware requests are left out
//! ([`Intake::without_loaders`]): a request is answered once. `firmware_dirs = []`
//! switches the built-in loader off, and firmware requests are then ordinary events that
//! a rule may answer.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::event::Event;
use crate::rules::{Job, RuleSet};

/// The kernel's own search path (drivers/base/firmware_loader/main.c, `fw_path`) for the
/// running kernel, without the `firmware_class.path` module parameter.
pub fn default_dirs() -> Vec<PathBuf> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_owned())
        .ok();
    let mut dirs = Vec::with_capacity(4);
    for base in ["/lib/firmware/updates", "/lib/firmware"] {
        if let Some(r) = &release {
            dirs.push(Path::new(base).join(r));
        }
        dirs.push(PathBuf::from(base));
    }
    dirs
}

/// Whether the event is a firmware request: the kernel's `add` of a firmware device.
pub fn is_request(ev: &Event) -> bool {
    ev.subsystem() == b"firmware" && ev.action() == b"add"
}

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("no FIRMWARE variable")]
    NoName,
    #[error("refusing firmware name {0:?}: absolute or with a `..` component")]
    BadName(String),
    #[error("refusing DEVPATH {0:?}: not absolute, or with a `..` component")]
    BadDevpath(String),
    #[error("{}: no such request (answered already, or timed out)", .0.display())]
    Gone(PathBuf),
    #[error("not found in {}", list(.0))]
    NotFound(Vec<PathBuf>),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn list(dirs: &[PathBuf]) -> String {
    let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    names.join(", ")
}

/// A request answered: which file, how many bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Where firmware is looked up, and where the kernel's requests are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    pub dirs: Vec<PathBuf>,
    pub sysfs: PathBuf,
}

impl Loader {
    /// Answer one request: the file, or -1 when it cannot be had. The error says why.
    pub fn load(&self, ev: &Event) -> Result<Loaded, FirmwareError> {
        let dir = self.request_dir(ev.devpath())?;
        let loading = dir.join("loading");
        match std::fs::symlink_metadata(&loading) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FirmwareError::Gone(loading))
            }
            Err(source) => {
                return Err(FirmwareError::Read {
                    path: loading,
                    source,
                })
            }
        }
        let result = self.find(ev).and_then(|(file, path)| {
            put(&loading, "1\n")?;
            let bytes = copy(file, &path, &dir.join("data"))?;
            put(&loading, "0\n")?;
            Ok(Loaded { path, bytes })
        });
        if result.is_err() {
            // Whatever went wrong, the driver hears now rather than after its timeout.
            // Should even this fail, the error above is still the one worth logging.
            let _ = put(&loading, "-1\n");
        }
        result
    }

    fn request_dir(&self, devpath: &[u8]) -> Result<PathBuf, FirmwareError> {
        let p = Path::new(OsStr::from_bytes(devpath));
        let ok = p.is_absolute() && p.components().all(|c| c != Component::ParentDir);
        if !ok {
            return Err(FirmwareError::BadDevpath(lossy(devpath)));
        }
        Ok(self.sysfs.join(p.strip_prefix("/").unwrap_or(p)))
    }

    /// The first regular file named by FIRMWARE in the search path, open.
    fn find(&self, ev: &Event) -> Result<(File, PathBuf), FirmwareError> {
        let name = ev.get(b"FIRMWARE").ok_or(FirmwareError::NoName)?;
        let rel = Path::new(OsStr::from_bytes(name));
        let normal = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if name.is_empty() || !normal {
            return Err(FirmwareError::BadName(lossy(name)));
        }
        for dir in &self.dirs {
            let path = dir.join(rel);
            // O_NONBLOCK: a FIFO planted under the name must not hang the loader; it
            // fails the regular-file check below instead.
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            match file.and_then(|f| Ok((f.metadata()?.is_file(), f))) {
                Ok((true, f)) => return Ok((f, path)),
                Ok((false, _)) => log::warn!("{}: not a regular file; skipping it", path.display()),
                // Missing here; the kernel goes on to the next directory on any error too.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("{}: {e}; skipping it", path.display()),
            }
        }
        Err(FirmwareError::NotFound(self.dirs.clone()))
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One write to a request's `loading`, as `echo 1 > loading` does it.
fn put(path: &Path, text: &str) -> Result<(), FirmwareError> {
    open_w(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| FirmwareError::Write {
            path: path.to_owned(),
            source,
        })
}

fn open_w(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The file into `data`. Plain reads and writes: sysfs takes at most a page per write
/// and has no splice, so `std::io::copy`'s `copy_file_range` and `sendfile` buy nothing.
fn copy(mut from: File, from_path: &Path, data: &Path) -> Result<u64, FirmwareError> {
    let werr = |source| FirmwareError::Write {
        path: data.to_owned(),
        source,
    };
    let mut to = open_w(data).map_err(werr)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(FirmwareError::Read {
                    path: from_path.to_owned(),
                    source,
                })
            }
        };
        to.write_all(&buf[..n]).map_err(werr)?;
        total += n as u64;
    }
}

/// Most requests remembered between intake and their turn in the queue. Requests are
/// rare (one per firmware file a driver asks for); a request that never gets its turn
/// (coalesced with its remove, recalled) only ages out.
const REMEMBERED: usize = 256;

/// The owner's side: hands requests to the loader thread at intake, and remembers them
/// until their turn in the queue.
#[derive(Default)]
pub struct Intake {
    loader: Option<Arc<Loader>>,
    tx: Option<Sender<(Arc<Loader>, Event)>>,
    answered: VecDeque<Event>,
}

impl Intake {
    /// Start the loader thread. Until [`Intake::configure`] says where to look, it gets
    /// nothing.
    pub fn spawn() -> io::Result<Intake> {
        let (tx, rx) = crossbeam_channel::unbounded::<(Arc<Loader>, Event)>();
        std::thread::Builder::new()
            .name("firmware".into())
            .spawn(move || {
                for (loader, ev) in rx {
                    answer(&loader, &ev);
                }
            })?;
        Ok(Intake {
            tx: Some(tx),
            ..Intake::default()
        })
    }

    /// The settings of a (re)loaded config; no directories switch the loader off.
    pub fn configure(&mut self, dirs: &[PathBuf], sysfs: &Path) {
        self.loader = (!dirs.is_empty()).then(|| {
            Arc::new(Loader {
                dirs: dirs.to_vec(),
                sysfs: sysfs.to_owned(),
            })
        });
    }

    /// Take a firmware request as it arrives, before the queue: true if the loader has it.
    pub fn offer(&mut self, ev: &Event) -> bool {
        let (Some(loader), Some(tx)) = (&self.loader, &self.tx) else {
            return false;
        };
        if !is_request(ev) || tx.send((Arc::clone(loader), ev.clone())).is_err() {
            return false;
        }
        if self.answered.len() == REMEMBERED {
            self.answered.pop_front();
        }
        self.answered.push_back(ev.clone());
        true
    }

    /// At the event's turn in the queue: its jobs, less the rules that are there only to
    /// answer firmware requests, if the loader took this one. Such a rule matches the
    /// request but not the same event from another subsystem without `FIRMWARE`, so a
    /// rule for every `add` (logging, say) still runs.
    pub fn without_loaders(&mut self, ev: &Event, rules: &RuleSet, jobs: Vec<Job>) -> Vec<Job> {
        let Some(i) = self.answered.iter().position(|a| a == ev) else {
            return jobs;
        };
        self.answered.remove(i);
        let Some(twin) = generic_twin(ev) else {
            return jobs;
        };
        let generic: Vec<String> = rules.plan(&twin).into_iter().map(|j| j.rule).collect();
        jobs.into_iter()
            .filter(|j| {
                let keep = generic.contains(&j.rule);
                if !keep {
                    log::info!(
                        "{}: rule {} not run: the built-in firmware loader answered this \
                         request (firmware_dirs = [] leaves firmware to rules)",
                        ev.summary(),
                        j.rule
                    );
                }
                keep
            })
            .collect()
    }
}

/// The request as an event of no firmware kind: another subsystem and device, no
/// `FIRMWARE`.
fn generic_twin(ev: &Event) -> Option<Event> {
    const SUBSYSTEM: &[u8] = b"hotplugd-firmware-probe";
    let vars = ev.vars().filter_map(|(k, v)| match k {
        b"FIRMWARE" => None,
        b"SUBSYSTEM" => Some((k, SUBSYSTEM)),
        b"DEVPATH" => Some((k, b"/devices/virtual/hotplugd-firmware-probe".as_slice())),
        _ => Some((k, v)),
    });
    Event::from_vars(SUBSYSTEM, vars).ok()
}

/// The loader thread's work on one request, logged with the event.
fn answer(loader: &Loader, ev: &Event) {
    let name = lossy(ev.get(b"FIRMWARE").unwrap_or(b"-"));
    match loader.load(ev) {
        Ok(l) => log::info!(
            "{}: firmware {name}: loaded {} ({} bytes)",
            ev.summary(),
            l.path.display(),
            l.bytes
        ),
        Err(e @ FirmwareError::Gone(_)) => log::info!("{}: firmware {name}: {e}", ev.summary()),
        // No request dir to tell: the kernel's own timeout ends it.
        Err(e @ FirmwareError::BadDevpath(_)) => {
            log::error!("{}: firmware {name}: {e}", ev.summary())
        }
        Err(e) => log::error!(
            "{}: firmware {name}: {e}; told the kernel it failed",
            ev.summary()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const DEVPATH: &str = "/devices/virtual/firmware/fw.bin";

    /// A fake sysfs with one pending request, and two firmware dirs.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let f = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            fs::create_dir_all(f.request()).unwrap();
            fs::write(f.request().join("loading"), "").unwrap();
            fs::write(f.request().join("data"), "").unwrap();
            fs::create_dir_all(f.fw(0)).unwrap();
            fs::create_dir_all(f.fw(1)).unwrap();
            f
        }
        fn request(&self) -> PathBuf {
            self.dir.path().join("sys").join(&DEVPATH[1..])
        }
        fn fw(&self, i: usize) -> PathBuf {
            self.dir.path().join(format!("fw{i}"))
        }
        fn loader(&self) -> Loader {
            Loader {
                dirs: vec![self.fw(0), self.fw(1)],
                sysfs: self.dir.path().join("sys"),
            }
        }
        fn loading(&self) -> String {
            fs::read_to_string(self.request().join("loading")).unwrap()
        }
        fn data(&self) -> Vec<u8> {
            fs::read(self.request().join("data")).unwrap()
        }
        /// `loading` as a FIFO held open for reading: it keeps every write, in order.
        fn loading_fifo(&self) -> File {
            let p = self.request().join("loading");
            fs::remove_file(&p).unwrap();
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
                .unwrap()
        }
    }

    fn request(name: &str) -> Event {
        request_at(DEVPATH, name)
    }

    fn request_at(devpath: &str, name: &str) -> Event {
        let vars: [(&[u8], &[u8]); 5] = [
            (b"ACTION", b"add"),
            (b"DEVPATH", devpath.as_bytes()),
            (b"SUBSYSTEM", b"firmware"),
            (b"FIRMWARE", name.as_bytes()),
            (b"SEQNUM", b"7"),
        ];
        Event::from_vars(b"firmware", vars).unwrap()
    }

    fn drain(mut f: File) -> String {
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn found_in_the_second_dir_is_loaded() {
        let f = Fake::new();
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::create_dir_all(f.fw(1).join("vendor")).unwrap();
        fs::write(f.fw(1).join("vendor/fw.bin"), &blob).unwrap();
        let loaded = f.loader().load(&request("vendor/fw.bin")).unwrap();
        assert_eq!(loaded.path, f.fw(1).join("vendor/fw.bin"));
        assert_eq!(loaded.bytes, blob.len() as u64);
        assert_eq!(f.data(), blob);
        assert_eq!(f.loading(), "0\n");
    }

    #[test]
    fn the_first_dir_wins_and_symlinks_in_it_are_followed() {
        let f = Fake::new();
        fs::write(f.fw(1).join("real.bin"), "one").unwrap();
        std::os::unix::fs::symlink(f.fw(1).join("real.bin"), f.fw(0).join("fw.bin")).unwrap();
        fs::write(f.fw(1).join("fw.bin"), "two").unwrap();
        f.loader().load(&request("fw.bin")).unwrap();
        assert_eq!(f.data(), b"one");
    }

    #[test]
    fn loading_gets_1_then_0() {
        let f = Fake::new();
        fs::write(f.fw(0).join("fw.bin"), "blob").unwrap();
        let fifo = f.loading_fifo();
        f.loader().load(&request("fw.bin")).unwrap();
        assert_eq!(drain(fifo), "1\n0\n");
        assert_eq!(f.data(), b"blob");
    }

    #[test]
    fn missing_gets_minus_1_alone() {
        let f = Fake::new();
        let fifo = f.loading_fifo();
        let err = f.loader().load(&request("nope.bin")).unwrap_err();
        assert!(matches!(err, FirmwareError::NotFound(_)), "{err}");
        assert!(err.to_string().contains("fw1"), "{err}");
        assert_eq!(drain(fifo), "-1\n");
        assert_eq!(f.data(), b"");
    }

    #[test]
    fn names_that_leave_the_dirs_are_refused() {
        let f = Fake::new();
        // There is a file to be had through each, should the check fail.
        fs::write(f.dir.path().join("secret"), "x").unwrap();
        for name in ["../secret", "a/../../secret", "/etc/passwd", "", "./"] {
            let err = f.loader().load(&request(name)).unwrap_err();
            assert!(matches!(err, FirmwareError::BadName(_)), "{name}: {err}");
            assert_eq!(f.loading(), "-1\n", "{name}");
            assert_eq!(f.data(), b"", "{name}");
        }
    }

    #[test]
    fn no_name_gets_minus_1() {
        let f = Fake::new();
        let ev = Event::from_vars(
            b"firmware",
            [
                (b"ACTION".as_slice(), b"add".as_slice()),
                (b"DEVPATH", DEVPATH.as_bytes()),
            ],
        )
        .unwrap();
        assert!(matches!(f.loader().load(&ev), Err(FirmwareError::NoName)));
        assert_eq!(f.loading(), "-1\n");
    }

    #[test]
    fn a_gone_request_or_a_bad_devpath_is_left_alone() {
        let f = Fake::new();
        fs::write(f.fw(0).join("fw.bin"), "blob").unwrap();
        let gone = request_at("/devices/virtual/firmware/other", "fw.bin");
        assert!(matches!(
            f.loader().load(&gone),
            Err(FirmwareError::Gone(_))
        ));
        let up = request_at("/devices/../../fw0/x", "fw.bin");
        assert!(matches!(
            f.loader().load(&up),
            Err(FirmwareError::BadDevpath(_))
        ));
        assert_eq!(f.loading(), "");
    }

    #[test]
    fn a_directory_under_the_name_is_skipped() {
        let f = Fake::new();
        fs::create_dir(f.fw(0).join("fw.bin")).unwrap();
        fs::write(f.fw(1).join("fw.bin"), "blob").unwrap();
        f.loader().load(&request("fw.bin")).unwrap();
        assert_eq!(f.data(), b"blob");
    }

    #[test]
    fn default_dirs_are_the_kernels_search_path() {
        let r = nix::sys::utsname::uname().unwrap();
        let r = r.release().to_str().unwrap();
        let want: Vec<PathBuf> = [
            format!("/lib/firmware/updates/{r}"),
            "/lib/firmware/updates".into(),
            format!("/lib/firmware/{r}"),
            "/lib/firmware".into(),
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(default_dirs(), want);
    }

    #[test]
    fn only_rules_for_firmware_are_left_out_of_an_answered_request() {
        let text = r#"
[[rule]]
name = "loader"
match = { SUBSYSTEM = "firmware", FIRMWARE = "?*" }
run = ["/bin/true"]

[[rule]]
name = "by-name"
match = { FIRMWARE = "?*" }
run = ["/bin/true"]

[[rule]]
name = "log-adds"
match = { ACTION = "add" }
run = ["/bin/true"]
"#;
        let config = crate::config::Config::parse(text, Path::new("x.toml")).unwrap();
        let rules = &config.rules;
        let names = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.rule).collect::<Vec<_>>();
        let ev = request("fw.bin");
        let mut intake = Intake::default();
        // Not taken by the loader: every matching rule runs.
        let jobs = intake.without_loaders(&ev, rules, rules.plan(&ev));
        assert_eq!(names(jobs), ["loader", "by-name", "log-adds"]);

        let (tx, rx) = crossbeam_channel::unbounded();
        intake.tx = Some(tx);
        intake.configure(&[PathBuf::from("/nonexistent")], Path::new("/sys"));
        assert!(intake.offer(&ev));
        assert_eq!(rx.try_recv().unwrap().1, ev);
        let jobs = intake.without_loaders(&ev, rules, rules.plan(&ev));
        assert_eq!(names(jobs), ["log-adds"]);
        // Once: a second delivery of the same event is not the loader's.
        let jobs = intake.without_loaders(&ev, rules, rules.plan(&ev));
        assert_eq!(names(jobs).len(), 3);

        // Switched off: nothing taken.
        intake.configure(&[], Path::new("/sys"));
        assert!(!intake.offer(&ev));
        assert!(rx.try_recv().is_err());
    }
}
