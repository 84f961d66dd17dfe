//! The daemon's runtime directory: made if missing, and trusted only when it is a real
//! directory (no symlink) owned by the daemon's uid and writable by nobody else. Inside it
//! the lock (so two daemons never share a directory), the FIFO and the spool. Every path
//! is checked with `lstat` and opened with `O_NOFOLLOW`, then checked again on the fd.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::spool::{self, Spool};

/// Size asked for the FIFO's buffer: the default 64 KiB holds only ~30 worst-case events
/// (and ~200 typical ones) before a shim would have to spool.
pub const PIPE_SIZE: i32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{path}: another hotplugd{pid} holds the lock on this runtime directory")]
    Locked { path: PathBuf, pid: String },
}

/// A lock file in the runtime dir, to `flock`: made 0600 if missing, never truncated
/// here (its pid line is the holder's to rewrite), a symlink refused.
pub(crate) fn open_lock_file(path: &Path) -> Result<fs::File, RuntimeError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An opened, checked runtime directory. Holding it holds the lock.
#[derive(Debug)]
pub struct Runtime {
    pub dir: PathBuf,
    pub spool: Spool,
    _lock: fs::File,
}

impl Runtime {
    /// Create (if needed), check and lock `dir`, and make sure `spool/` is usable.
    pub fn open(dir: &Path) -> Result<Runtime, RuntimeError> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(dir)(e)),
            _ => {}
        }
        spool::check_private_dir(dir).map_err(RuntimeError::Refused)?;
        let lock_path = dir.join(spool::LOCK);
        let lock = open_lock_file(&lock_path)?;
        // The lock goes with the open file, so a killed daemon never leaves a stale one;
        // but a handler it was starting holds a copy until its exec, so a restart right
        // after a kill may find it held for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        // SAFETY: flock on an fd we own.
        while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) && std::time::Instant::now() < deadline {
                log::debug!("{}: held; waiting up to 2 s", lock_path.display());
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = fs::read_to_string(&lock_path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(" (pid {s})"))
                    .unwrap_or_default();
                return Err(RuntimeError::Locked {
                    path: lock_path,
                    pid,
                });
            }
            return Err(io_err(&lock_path)(e));
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        io::Write::write_all(&mut &lock, format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_err(&lock_path))?;
        let spool = Spool::new(dir);
        spool.create().map_err(io_err(spool.dir()))?;
        spool::check_private_dir(spool.dir()).map_err(RuntimeError::Refused)?;
        // The device database: made if missing, never emptied (see `crate::db`).
        let db = crate::db::Db::new(dir);
        db.create().map_err(io_err(db.dir()))?;
        spool::check_private_dir(db.dir()).map_err(RuntimeError::Refused)?;
        Ok(Runtime {
            dir: dir.to_owned(),
            spool,
            _lock: lock,
        })
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.dir.join(spool::FIFO)
    }

    /// Make the FIFO if missing and open it for reading. `O_RDWR` so the daemon is always a
    /// writer too and never sees EOF when the last shim closes; non-blocking so the reader
    /// thread can drain it to empty.
    pub fn open_fifo(&self) -> Result<OwnedFd, RuntimeError> {
        let path = self.fifo_path();
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_err(&path)(e.into()))?;
            }
            Err(e) => return Err(io_err(&path)(e)),
            Ok(meta) => check_fifo_meta(&path, meta.file_type().is_symlink(), &meta)?,
        }
        let fd = open(
            &path,
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| io_err(&path)(e.into()))?;
        // SAFETY: open returned a new fd that nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        prepare_fifo(fd, &path)
    }
}

/// Check that `fd` is a FIFO (whoever opened it) and enlarge its buffer.
pub fn prepare_fifo(fd: OwnedFd, path: &Path) -> Result<OwnedFd, RuntimeError> {
    let st = fstat(fd.as_raw_fd()).map_err(|e| io_err(path)(e.into()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return Err(RuntimeError::Refused(format!(
            "{}: not a FIFO; refusing it",
            path.display()
        )));
    }
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) } < 0 {
        log::warn!(
            "{}: could not enlarge the pipe buffer to {PIPE_SIZE} bytes: {}; bursts may spool",
            path.display(),
            io::Error::last_os_error()
        );
    }
    // Non-blocking: the reader drains until EAGAIN, and makes the fd blocking only for the
    // read that waits for the next event (see `sources`). O_NOATIME too, where the
    // FIFO is ours: every read() would otherwise stamp the inode's atime (the shims'
    // writes move its mtime, so relatime never skips it).
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) | libc::O_NONBLOCK;
        if libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NOATIME) < 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags);
        }
    }
    Ok(fd)
}

pub(crate) fn check_fifo_meta(
    path: &Path,
    symlink: bool,
    meta: &fs::Metadata,
) -> Result<(), RuntimeError> {
    let refuse = |why: String| Err(RuntimeError::Refused(format!("{}: {why}", path.display())));
    if symlink {
        return refuse("is a symlink; refusing it".into());
    }
    if !meta.file_type().is_fifo() {
        return refuse("exists and is not a FIFO; refusing it".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!(
            "owned by uid {}, not by uid {me}; refusing it",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "mode {:o} lets others read or write events; expected 600",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}
