//! One device of a real sysfs, for `hotplugctl info`, `test DEVICE` and `wait DEVICE`:
//! which device an argument names (a sysfs path, a `/dev` node, a DEVPATH), the event the
//! kernel would send for it, the walk of its attributes up its parents as rule keys, and
//! its entry in the device database.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A longer attribute is left out of the walk, as the rules' reader takes it as missing.
const ATTR_MAX: usize = 4096;

/// A device found under `sysfs_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `/devices/...`, as an event names it.
    pub devpath: String,
    /// Its directory: `sysfs_dir` + DEVPATH.
    pub dir: PathBuf,
}

/// Which device `arg` names: a path under `sysfs` (symlinks such as `/sys/class/net/lo`
/// resolved), a block or character node (through `sysfs/dev/{block,char}/MAJ:MIN`), or a
/// DEVPATH (`/devices/...`). The directory must have a `uevent` file.
pub fn resolve(arg: &Path, sysfs: &Path) -> Result<Found, String> {
    let root = fs::canonicalize(sysfs).map_err(|e| format!("{}: {e}", sysfs.display()))?;
    let shown = arg.display();
    let dir = if arg.starts_with("/devices") {
        root.join(arg.strip_prefix("/").unwrap_or(arg))
    } else if arg.starts_with(sysfs) || arg.starts_with(&root) {
        arg.to_owned()
    } else if arg.starts_with("/dev") {
        let meta = fs::metadata(arg).map_err(|e| format!("{shown}: {e}"))?;
        let kind = match meta.file_type() {
            t if t.is_block_device() => "block",
            t if t.is_char_device() => "char",
            _ => return Err(format!("{shown}: not a device node")),
        };
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let link = root.join(format!("dev/{kind}/{major}:{minor}"));
        if fs::symlink_metadata(&link).is_err() {
            return Err(format!(
                "{shown}: {kind} device {major}:{minor} has no {}",
                link.display()
            ));
        }
        link
    } else {
        return Err(format!(
            "{shown}: not a device: give a path under {}, a node under /dev, or a DEVPATH \
             (/devices/...)",
            sysfs.display()
        ));
    };
    let dir = fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let rel = dir
        .strip_prefix(&root)
        .ok()
        .filter(|r| r.starts_with("devices"))
        .ok_or_else(|| {
            format!(
                "{shown}: {} is not below {}/devices",
                dir.display(),
                root.display()
            )
        })?;
    if !fs::symlink_metadata(dir.join("uevent")).is_ok_and(|m| m.is_file()) {
        return Err(format!("{shown}: {} has no uevent file", dir.display()));
    }
    let devpath = format!("/{}", rel.to_str().ok_or(format!("{shown}: not UTF-8"))?);
    Ok(Found { devpath, dir })
}

/// The last component of a link's target (`subsystem`, `driver`).
pub fn link_name(dir: &Path, link: &str) -> Option<String> {
    let target = fs::read_link(dir.join(link)).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The variables of the event the kernel sends for the device: ACTION, DEVPATH, SUBSYSTEM
/// (from the `subsystem` link), then its `uevent` file's, as `udevadm test` builds it.
pub fn event_vars(dev: &Found, action: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = vec![
        ("ACTION".to_owned(), action.to_owned()),
        ("DEVPATH".to_owned(), dev.devpath.clone()),
    ];
    if let Some(s) = link_name(&dev.dir, "subsystem") {
        vars.push(("SUBSYSTEM".into(), s));
    }
    let more = crate::sysfs::device_vars(&dev.dir)
        .map_err(|e| format!("{}/uevent: {e}", dev.dir.display()))?;
    vars.extend(more);
    Ok(vars)
}

/// A glob that matches exactly `s`: the pattern characters and a leading `!` escaped.
pub fn glob_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "*?[]\\!".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `KEY = "pattern"`: one line of a `[rule.match]` table matching `value` exactly.
fn match_line(key: &str, value: &str) -> String {
    let key = if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        key.to_owned()
    } else {
        crate::spanned::toml_quote(key)
    };
    format!(
        "{key} = {}",
        crate::spanned::toml_quote(&glob_literal(value))
    )
}

/// An attribute as the rules' sysfs reader sees it: a regular file (no symlink), readable,
/// at most [`ATTR_MAX`] bytes, trailing whitespace trimmed; text only (UTF-8 with no
/// control characters but newlines and tabs), so binary attributes are left out.
fn read_text_attr(path: &Path) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.mode() & 0o444 == 0 {
        return None;
    }
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut buf = vec![0u8; ATTR_MAX + 1];
    let n = f.read(&mut buf).ok()?;
    if n > ATTR_MAX {
        return None;
    }
    let end = buf[..n]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    (!text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t'))
    .then(|| text.to_owned())
}

/// `hotplugctl info --attribute-walk`: the device, then each parent with a `uevent` file
/// up to (not including) `/devices`, as lines of a `[rule.match]` table: `KERNEL`,
/// `SUBSYSTEM`, `DRIVER` and `"ATTR{name}"` for the device; `KERNELS`, `SUBSYSTEMS`,
/// `DRIVERS` and `"ATTRS{name}"` for a parent. A rule may take the device's keys plus those
/// of one parent: its parent keys must all hold on the same one.
pub fn attribute_walk(dev: &Found) -> String {
    let mut out = String::from(
        "# Paste the device's keys and those of at most one parent into a rule's\n\
         # [rule.match] table (or between the braces of match = { ... }, with commas).\n",
    );
    let parts: Vec<&str> = dev.devpath.trim_start_matches('/').split('/').collect();
    let Some(root) = dev.dir.ancestors().nth(parts.len()) else {
        return out;
    };
    for n in (2..=parts.len()).rev() {
        let first = n == parts.len();
        let devpath = parts[..n].join("/");
        let dir = &root.join(&devpath);
        if !fs::symlink_metadata(dir.join("uevent")).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let s = if first { "" } else { "S" };
        let what = if first { "the device" } else { "parent" };
        out.push_str(&format!("\n# {what} /{devpath}\n"));
        let kernel = dir.file_name().map_or(String::new(), |n| {
            String::from_utf8_lossy(n.as_bytes()).into_owned()
        });
        out.push_str(&match_line(&format!("KERNEL{s}"), &kernel));
        out.push('\n');
        for (key, link) in [("SUBSYSTEM", "subsystem"), ("DRIVER", "driver")] {
            if let Some(v) = link_name(dir, link) {
                out.push_str(&match_line(&format!("{key}{s}"), &v));
                out.push('\n');
            }
        }
        let mut names: Vec<_> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != OsStr::new("uevent"))
            .collect();
        names.sort();
        for name in names {
            let Some(n) = name.to_str() else { continue };
            if n.contains(['{', '}']) {
                continue;
            }
            if let Some(v) = read_text_attr(&dir.join(n)) {
                out.push_str(&match_line(&format!("ATTR{s}{{{n}}}"), &v));
                out.push('\n');
            }
        }
    }
    out
}

/// A device's entry in the device database, as far as `hotplugctl info` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DbEntry {
    /// Its file.
    pub path: String,
    /// The latest properties, kernel and imported, as `KEY=VALUE`.
    pub properties: Vec<(String, String)>,
    /// Links below `dev_dir` pointing at its node.
    pub links: Vec<String>,
    /// The rules that matched its latest event.
    pub rules: Vec<String>,
}

/// The device's database entry; `Ok(None)` when there is none (no database at all, as
/// with a daemon that keeps none, is the same). The one reader is [`crate::db::lookup`].
pub fn read_db(runtime_dir: &Path, devpath: &str) -> Result<Option<DbEntry>, String> {
    let path = crate::db::file(runtime_dir);
    let Some(rec) = crate::db::lookup(runtime_dir, devpath.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?
    else {
        return Ok(None);
    };
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(Some(DbEntry {
        path: path.display().to_string(),
        properties: rec
            .properties
            .iter()
            .map(|(k, v)| (lossy(k), lossy(v)))
            .collect(),
        links: rec.links.iter().map(|l| lossy(l)).collect(),
        rules: rec.rules,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_toml() {
        // Pasted under a rule's [rule.match], each line matches exactly its value.
        for s in [
            "plain",
            "a \"q\" \\ b",
            "tab\there\nnl",
            "\u{1}ctl",
            "*[x]?!",
            "!neg",
        ] {
            let text = format!(
                "[[rule]]\nname = \"r\"\nrun = [\"/bin/true\"]\n[rule.match]\n{}\n",
                match_line("ATTR_X", s)
            );
            let rules = crate::config::Config::parse(&text, Path::new("t.toml"))
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .rules;
            let ev = |v: &str| {
                crate::event::Event::from_vars(
                    b"",
                    [
                        (&b"ACTION"[..], &b"add"[..]),
                        (b"DEVPATH", b"/devices/x"),
                        (b"ATTR_X", v.as_bytes()),
                    ],
                )
                .unwrap()
            };
            assert_eq!(rules.plan(&ev(s)).len(), 1, "{text}");
            assert!(rules.plan(&ev("other")).is_empty(), "{text}");
        }
    }

    #[test]
    fn resolves_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dev = root.join("devices/virtual/net/lo");
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(root.join("class/net")).unwrap();
        fs::write(dev.join("uevent"), "INTERFACE=lo\n").unwrap();
        std::os::unix::fs::symlink("../../devices/virtual/net/lo", root.join("class/net/lo"))
            .unwrap();
        let want = Found {
            devpath: "/devices/virtual/net/lo".into(),
            dir: fs::canonicalize(&dev).unwrap(),
        };
        assert_eq!(
            resolve(Path::new("/devices/virtual/net/lo"), root),
            Ok(want.clone())
        );
        assert_eq!(resolve(&root.join("class/net/lo"), root), Ok(want));
        assert!(resolve(Path::new("/devices/virtual"), root)
            .unwrap_err()
            .contains("no uevent file"));
        assert!(resolve(Path::new("lo"), root)
            .unwrap_err()
            .contains("not a device"));
        let db = tempfile::tempdir().unwrap();
        assert_eq!(read_db(db.path(), "/devices/virtual/net/lo"), Ok(None));
        fs::create_dir(db.path().join("db")).unwrap();
        let mut records = Vec::new();
        crate::db::frame(
            &mut records,
            b"D:/devices/virtual/net/lo\nP:ID_NET=1\nL:net/lo\nR:net\nZ:other\n",
        );
        fs::write(crate::db::file(db.path()), records).unwrap();
        let e = read_db(db.path(), "/devices/virtual/net/lo")
            .unwrap()
            .unwrap();
        assert_eq!(e.properties, [("ID_NET".to_owned(), "1".to_owned())]);
        assert_eq!(
            (e.links, e.rules),
            (vec!["net/lo".into()], vec!["net".into()])
        );
    }
}
