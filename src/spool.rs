//! The runtime directory's layout and the spool: files in `RUNTIME/spool/` each holding one
//! whole message (the same bytes the shim would have written to the FIFO).
//!
//! Writers (the shim when nobody reads the FIFO, the daemon when it shuts down with events
//! still queued) write `spool/.tmp-*` and rename it to its final name, so a reader never
//! sees half a file. Final names sort by SEQNUM: 20 zero-padded digits, then `-` and the
//! writer's pid (two writers of one SEQNUM never clobber each other; the queue drops the
//! duplicate). Events without a SEQNUM are named `~-NANOS-PID`, after every numbered one.
//! Names starting with `.` are unfinished and never read.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::event::Event;
use crate::message;

/// Default runtime directory.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/hotplugd";
/// Environment variable naming the runtime directory (the kernel never sets it; tests do).
pub const RUNTIME_DIR_ENV: &str = "HOTPLUGD_RUNTIME_DIR";
/// The FIFO the shim writes to.
pub const FIFO: &str = "events";
/// Messages waiting to be queued.
pub const SPOOL: &str = "spool";
/// Held with `flock` by the running daemon.
pub const LOCK: &str = "lock";
/// The control socket.
pub const CONTROL: &str = "control";

/// Longest spool file name: 20 digits, '-', 10 digits of pid, plus slack.
pub const MAX_NAME: usize = 48;

/// Format the spool file name for an event into `out`; returns its length. No allocation:
/// the shim calls this.
pub fn file_name(seqnum: Option<u64>, pid: u32, nanos: u64, out: &mut [u8; MAX_NAME]) -> usize {
    let mut n = 0;
    match seqnum {
        Some(seq) => n = put_digits(out, n, seq, 20),
        None => {
            out[..2].copy_from_slice(b"~-");
            n = put_digits(out, 2, nanos, 20);
        }
    }
    out[n] = b'-';
    put_digits(out, n + 1, pid as u64, 10)
}

/// Write `v` as exactly `width` zero-padded digits at `at`; returns the end offset.
fn put_digits(out: &mut [u8], at: usize, mut v: u64, width: usize) -> usize {
    for i in (at..at + width).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    at + width
}

/// Why a spool entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {error}")]
    Frame {
        path: PathBuf,
        error: message::FrameError,
    },
    #[error("{path}: {error}")]
    Event {
        path: PathBuf,
        error: crate::event::EventError,
    },
    #[error("{path}: owned by uid {uid}, not by us: ignoring it")]
    Owner { path: PathBuf, uid: u32 },
}

/// The spool directory of a runtime dir.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn new(runtime_dir: &Path) -> Spool {
        Spool {
            dir: runtime_dir.join(SPOOL),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create the directory (mode 0700) if missing.
    pub fn create(&self) -> io::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Finished entries, sorted by name (so by SEQNUM).
    pub fn entries(&self) -> io::Result<Vec<PathBuf>> {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
            .map(|e| e.path())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Read one entry. Only files owned by the daemon's own uid are trusted: the spool
    /// directory is 0700, so anything else got there by a privileged mistake.
    pub fn read(&self, path: &Path) -> Result<Event, SpoolError> {
        let io_err = |source| SpoolError::Io {
            path: path.to_owned(),
            source,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(SpoolError::Owner {
                path: path.to_owned(),
                uid: meta.uid(),
            });
        }
        let bytes = io::Read::bytes(io::Read::take(
            file,
            (message::MAX_PAYLOAD + message::HEADER_LEN + 1) as u64,
        ))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(io_err)?;
        let payload = message::decode_whole(&bytes).map_err(|error| SpoolError::Frame {
            path: path.to_owned(),
            error,
        })?;
        Event::from_payload(payload).map_err(|error| SpoolError::Event {
            path: path.to_owned(),
            error,
        })
    }

    /// Write an event as a finished entry (temp file, then rename). Used at shutdown to
    /// hand queued events to the next start.
    pub fn write(&self, ev: &Event) -> Result<PathBuf, SpoolError> {
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut name = [0u8; MAX_NAME];
        let n = file_name(ev.seqnum(), pid, nanos, &mut name);
        let name = std::str::from_utf8(&name[..n]).unwrap_or("invalid");
        let tmp = self.dir.join(format!(".tmp-{name}"));
        let path = self.dir.join(name);
        let io_err = |p: &Path| {
            let p = p.to_owned();
            move |source| SpoolError::Io { path: p, source }
        };
        let bytes = message::encode(ev.payload());
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| io::Write::write_all(&mut f, &bytes))
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(path)
    }
}

/// Ensure `path` is a directory we own, not a symlink, and writable by nobody else.
pub fn check_private_dir(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!("{}: is a symlink; refusing it", path.display()));
    }
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", path.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{}: owned by uid {}, not by uid {me}; refusing it",
            path.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o}); refusing it",
            path.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_seqnum() {
        let mut a = [0u8; MAX_NAME];
        let n = file_name(Some(9), 123, 0, &mut a);
        assert_eq!(&a[..n], b"00000000000000000009-0000000123");
        let mut b = [0u8; MAX_NAME];
        let m = file_name(Some(10), 1, 0, &mut b);
        assert!(a[..n] < b[..m]);
        let mut c = [0u8; MAX_NAME];
        let k = file_name(None, 1, 5, &mut c);
        assert!(c[..k] > b[..m]);
        assert!(c.starts_with(b"~-"));
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        spool.create().unwrap();
        let ev = Event::from_payload(b"usb\0ACTION=add\0DEVPATH=/x\0SEQNUM=7\0").unwrap();
        let path = spool.write(&ev).unwrap();
        assert_eq!(spool.entries().unwrap(), vec![path.clone()]);
        assert_eq!(spool.read(&path).unwrap(), ev);
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(spool.read(&path), Err(SpoolError::Frame { .. })));
    }
}
