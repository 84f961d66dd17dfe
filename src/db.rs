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

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::event::Event;

/// The database's directory under the runtime dir.
pub const DIR: &str = "db";

/// What one entry records besides the event itself.
pub struct Entry<'a> {
    pub event: &'a Event,
    /// Keys set by an import.
    pub imported: &'a [Vec<u8>],
    pub links: Vec<&'a [u8]>,
    pub rules: Vec<&'a str>,
}

/// `RUNTIME/db`, and what goes in and out of it.
#[derive(Debug, Clone)]
pub struct Db {
    dir: PathBuf,
}

/// The file name for `devpath`; `None` if it would pass 255 bytes.
pub fn file_name(devpath: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(devpath.len() + 16);
    for &b in devpath {
        if b.is_ascii_alphanumeric() || b"_.:@+-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    (!out.is_empty() && out.len() <= 255).then_some(out)
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

/// An entry's text, as [`Db::write`] puts it on file.
pub fn render(entry: &Entry) -> Vec<u8> {
    let ev = entry.event;
    let mut out = Vec::with_capacity(ev.payload().len() + 256);
    record(&mut out, b"D:", ev.devpath());
    if let Some(seq) = ev.seqnum() {
        record(&mut out, b"S:", seq.to_string().as_bytes());
    }
    for var in ev.var_strings() {
        // Without its NUL.
        record(&mut out, b"P:", &var[..var.len().saturating_sub(1)]);
    }
    for key in entry.imported {
        record(&mut out, b"I:", key);
    }
    for link in &entry.links {
        record(&mut out, b"L:", link);
    }
    for rule in &entry.rules {
        record(&mut out, b"R:", rule.as_bytes());
    }
    out
}

impl Db {
    pub fn new(runtime_dir: &Path) -> Db {
        Db {
            dir: runtime_dir.join(DIR),
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

    /// Record the event's device, or for a `remove` forget it. Failures are logged with
    /// the event and the file: the database is for the curious, the event goes on.
    pub fn update(&self, entry: &Entry) {
        let ev = entry.event;
        let Some(path) = self.path(ev.devpath()) else {
            log::warn!("{}: DEVPATH too long for a database entry", ev.summary());
            return;
        };
        let result = if ev.action() == b"remove" {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        } else {
            self.write(&path, &render(entry))
        };
        if let Err(e) = result {
            log::warn!("{}: database {}: {e}", ev.summary(), path.display());
        }
    }

    fn write(&self, path: &Path, text: &[u8]) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(text)?;
        drop(f);
        fs::rename(&tmp, path)
    }
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
        let db = Db::new(tmp.path());
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
