//! Device nodes and links under `dev_dir`, as the rules' `owner`, `group`, `mode`, `links`
//! and `link_priority` ask: the node made from MAJOR/MINOR where devtmpfs has not made
//! it, its owner and mode set, its links made atomically (a temporary name, then
//! `rename`); on remove, the links that still point at the device and the node if we
//! made it are deleted.
//!
//! Every path is walked from an `O_DIRECTORY | O_NOFOLLOW` fd of `dev_dir`, one component
//! at a time with `O_NOFOLLOW`, and acted on with the `*at` calls: no symlink inside
//! `dev_dir` is ever followed, and `..` is refused, so a hostile variable in a link name
//! cannot reach outside. The mode is set through an `O_PATH | O_NOFOLLOW` fd checked to be
//! a device node (`chmod` of `/proc/self/fd/N`, as Linux has no `fchmod` for `O_PATH` fds
//! before `fchmodat2`); the owner with `fchownat(fd, "", AT_EMPTY_PATH)` on the same fd.
//!
//! What the daemon made (nodes, and who holds which link: [`links`]) is remembered in
//! memory only: after a restart, a node made by the previous run is left in place at its
//! remove, and links are re-derived from the events that follow.

pub mod links;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use crate::event::Event;
use links::{Change, Links};

/// What the matching rules ask for one add or change event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeActions {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Expanded link paths relative to `dev_dir`, each with its rule's `link_priority`.
    pub links: Vec<(Vec<u8>, i32)>,
}

/// Whether a relative path stays inside its directory: not empty, not absolute, no `..`
/// component, no NUL. Empty and `.` components are tolerated (skipped when walking).
pub fn safe_relative(p: &[u8]) -> bool {
    !p.is_empty()
        && p[0] != b'/'
        && !p.contains(&0)
        && p.split(|&b| b == b'/').all(|c| c != b"..")
        && components(p).next().is_some()
}

/// The id of `name` in a passwd or group file (`name:x:ID:...`).
pub fn id_from_file(file: &Path, name: &str) -> std::io::Result<Option<u32>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
    }))
}

fn components(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// The symlink text for `link` pointing at `node`, both relative to `dev_dir`:
/// `disk/by-id/x` to `sda` is `../../sda`.
pub fn relative_target(link: &[u8], node: &[u8]) -> Vec<u8> {
    let depth = components(link).count().saturating_sub(1);
    let mut out = b"../".repeat(depth);
    let parts: Vec<&[u8]> = components(node).collect();
    out.extend_from_slice(&parts.join(&b'/'));
    out
}

fn fd(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was just returned by a successful open and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn open_dir_at(dir: Option<RawFd>, name: &[u8]) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    nix::fcntl::openat(dir, OsStr::from_bytes(name), flags, Mode::empty()).map(fd)
}

/// The directory holding `path`'s last component, walked without following symlinks,
/// made (mode 0755) where missing if `create`; and that last component.
fn parent<'p>(root: &OwnedFd, path: &'p [u8], create: bool) -> nix::Result<(OwnedFd, &'p [u8])> {
    let parts: Vec<&[u8]> = components(path).collect();
    let (last, dirs) = parts.split_last().ok_or(Errno::EINVAL)?;
    let mut cur = open_dir_at(Some(root.as_raw_fd()), b".")?;
    for d in dirs {
        let next = match open_dir_at(Some(cur.as_raw_fd()), d) {
            Err(Errno::ENOENT) if create => {
                let name = OsStr::from_bytes(d);
                match nix::sys::stat::mkdirat(
                    Some(cur.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                open_dir_at(Some(cur.as_raw_fd()), d)?
            }
            r => r?,
        };
        cur = next;
    }
    Ok((cur, last))
}

/// A node we made: its DEVNAME and device number.
type Made = (Box<[u8]>, u64);

/// The daemon's side of nodes and links: the bookkeeping and the I/O.
#[derive(Debug, Default)]
pub struct DevNodes {
    links: Links,
    /// Nodes we made, by DEVPATH.
    created: HashMap<Box<[u8]>, Made>,
}

impl DevNodes {
    /// Whether any device has links or a node of ours to clean up at its remove.
    pub fn active(&self) -> bool {
        !self.links.is_empty() || !self.created.is_empty()
    }

    /// The links `devpath`'s device holds, for the device database.
    pub fn links_of<'a>(&'a self, devpath: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.links.held_by(devpath)
    }

    /// An add or change event with node actions: make and set the node, claim the links.
    pub fn apply(&mut self, dev_dir: &Path, ev: &Event, actions: &NodeActions) {
        let summary = ev.summary();
        let root = match open_dir_at(None, dev_dir.as_os_str().as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("{summary}: dev_dir {}: {e}", dev_dir.display());
                return;
            }
        };
        let Some(devname) = ev.get(b"DEVNAME").filter(|n| safe_relative(n)) else {
            log::warn!("{summary}: no usable DEVNAME (relative, without `..`): no node actions");
            return;
        };
        let devpath = ev.devpath();
        let rdev = device_number(ev);
        match self.node(&root, devname, rdev, ev, actions) {
            Ok(Some(made)) => {
                log::info!("{summary}: made node {}", show(dev_dir, devname));
                self.created.insert(devpath.into(), (devname.into(), made));
            }
            Ok(None) => {}
            Err(e) => log::warn!("{summary}: node {}: {e}", show(dev_dir, devname)),
        }
        let mut wanted = Vec::with_capacity(actions.links.len());
        for (link, prio) in &actions.links {
            if safe_relative(link) && components(link).ne(components(devname)) {
                wanted.push((link.clone(), *prio));
            } else {
                let link = String::from_utf8_lossy(link);
                log::warn!("{summary}: link {link:?} refused: it must stay below dev_dir and not be the node");
            }
        }
        let changes = self.links.claim(devpath, devname, &wanted);
        apply_changes(&root, dev_dir, &summary.to_string(), changes);
    }

    /// A remove event: release the device's links, delete the node if we made it.
    pub fn remove(&mut self, dev_dir: &Path, ev: &Event) {
        let devpath = ev.devpath();
        let changes = self.links.release(devpath);
        let created = self.created.remove(devpath);
        if changes.is_empty() && created.is_none() {
            return;
        }
        let summary = ev.summary().to_string();
        let root = match open_dir_at(None, dev_dir.as_os_str().as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("{summary}: dev_dir {}: {e}", dev_dir.display());
                return;
            }
        };
        apply_changes(&root, dev_dir, &summary, changes);
        if let Some((devname, rdev)) = created {
            let res = parent(&root, &devname, false).and_then(|(dir, name)| {
                let st = nix::sys::stat::fstatat(
                    Some(dir.as_raw_fd()),
                    OsStr::from_bytes(name),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                // Only the node we made: the kernel or an admin may have put another there.
                if is_device(st.st_mode) && st.st_rdev == rdev {
                    nix::unistd::unlinkat(
                        Some(dir.as_raw_fd()),
                        OsStr::from_bytes(name),
                        UnlinkatFlags::NoRemoveDir,
                    )?;
                }
                Ok(())
            });
            match res {
                Ok(()) | Err(Errno::ENOENT) => {
                    log::info!("{summary}: deleted node {}", show(dev_dir, &devname))
                }
                Err(e) => log::warn!("{summary}: node {}: {e}", show(dev_dir, &devname)),
            }
        }
    }

    /// Make the node if missing and MAJOR/MINOR say what it is, then set owner and mode.
    /// Returns the device number if it made the node.
    fn node(
        &self,
        root: &OwnedFd,
        devname: &[u8],
        rdev: Option<(SFlag, u64)>,
        ev: &Event,
        a: &NodeActions,
    ) -> nix::Result<Option<u64>> {
        let (dir, name) = parent(root, devname, rdev.is_some())?;
        let name = OsStr::from_bytes(name);
        let mut made = None;
        if let Some((kind, dev)) = rdev {
            let perm = Mode::from_bits_truncate(a.mode.unwrap_or(0o600));
            match nix::sys::stat::mknodat(Some(dir.as_raw_fd()), name, kind, perm, dev) {
                Ok(()) => made = Some(dev),
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        if a.mode.is_none() && a.uid.is_none() && a.gid.is_none() {
            return Ok(made);
        }
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let node = fd(nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name,
            flags,
            Mode::empty(),
        )?);
        let st = nix::sys::stat::fstat(node.as_raw_fd())?;
        if !is_device(st.st_mode) {
            // A symlink (O_PATH|O_NOFOLLOW opens the link itself), a file, a directory.
            return Err(Errno::ENOTBLK);
        }
        if let Some((_, dev)) = rdev {
            if st.st_rdev != dev {
                log::warn!(
                    "{}: the node's device number is not MAJOR:MINOR; setting it anyway",
                    ev.summary()
                );
            }
        }
        if a.uid.is_some() || a.gid.is_some() {
            nix::unistd::fchownat(
                Some(node.as_raw_fd()),
                "",
                a.uid.map(Uid::from_raw),
                a.gid.map(Gid::from_raw),
                AtFlags::AT_EMPTY_PATH,
            )?;
        }
        if let Some(mode) = a.mode {
            use nix::sys::stat::{fchmodat, FchmodatFlags::FollowSymlink};
            let mode = Mode::from_bits_truncate(mode);
            let proc = format!("/proc/self/fd/{}", node.as_raw_fd());
            match fchmodat(None, proc.as_str(), mode, FollowSymlink) {
                // No /proc (an early boot): by name, checked a device node just above;
                // only whoever can write dev_dir (root) could swap in a symlink between.
                Err(Errno::ENOENT) => fchmodat(Some(dir.as_raw_fd()), name, mode, FollowSymlink)?,
                r => r?,
            }
        }
        Ok(made)
    }
}

fn is_device(mode: u32) -> bool {
    let kind = mode & libc::S_IFMT;
    kind == libc::S_IFBLK || kind == libc::S_IFCHR
}

/// S_IFBLK for `SUBSYSTEM=block`, else S_IFCHR, with MAJOR:MINOR; `None` without both.
fn device_number(ev: &Event) -> Option<(SFlag, u64)> {
    let num = |k: &[u8]| std::str::from_utf8(ev.get(k)?).ok()?.parse::<u32>().ok();
    let (major, minor) = (num(b"MAJOR")?, num(b"MINOR")?);
    let kind = if ev.subsystem() == b"block" {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    Some((kind, nix::sys::stat::makedev(major.into(), minor.into())))
}

fn show(dev_dir: &Path, rel: &[u8]) -> String {
    dev_dir.join(OsStr::from_bytes(rel)).display().to_string()
}

fn apply_changes(root: &OwnedFd, dev_dir: &Path, summary: &str, changes: Vec<Change>) {
    for c in changes {
        let (link, res) = match c {
            Change::Point { link, target } => {
                let res = point(root, &link, &relative_target(&link, &target));
                (link, res)
            }
            Change::Remove { link, target } => {
                let res = unlink_if(root, &link, &relative_target(&link, &target));
                (link, res)
            }
        };
        match res {
            Ok(Some(what)) => log::info!("{summary}: link {} {what}", show(dev_dir, &link)),
            Ok(None) => {}
            Err(e) => log::warn!("{summary}: link {}: {e}", show(dev_dir, &link)),
        }
    }
}

/// Make `link` a symlink to `text` atomically; anything there but a symlink stays.
fn point(root: &OwnedFd, link: &[u8], text: &[u8]) -> nix::Result<Option<&'static str>> {
    let (dir, name) = parent(root, link, true)?;
    let at = Some(dir.as_raw_fd());
    let name_os = OsStr::from_bytes(name);
    match nix::fcntl::readlinkat(at, name_os) {
        Ok(t) if t.as_bytes() == text => return Ok(None),
        Ok(_) | Err(Errno::ENOENT) => {}
        // Not a symlink: a node or a directory an admin put there is not ours to replace.
        Err(Errno::EINVAL) => return Err(Errno::EEXIST),
        Err(e) => return Err(e),
    }
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(name);
    tmp.extend_from_slice(format!(".hotplugd-{}", std::process::id()).as_bytes());
    let tmp = OsStr::from_bytes(&tmp);
    let _ = nix::unistd::unlinkat(at, tmp, UnlinkatFlags::NoRemoveDir);
    nix::unistd::symlinkat(OsStr::from_bytes(text), at, tmp)?;
    if let Err(e) = nix::fcntl::renameat(at, tmp, at, name_os) {
        let _ = nix::unistd::unlinkat(at, tmp, UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    Ok(Some("made"))
}

/// Delete `link` if it is a symlink to `text`, then its parent directories that became
/// empty (as udev leaves no empty `disk/by-id`).
fn unlink_if(root: &OwnedFd, link: &[u8], text: &[u8]) -> nix::Result<Option<&'static str>> {
    let (dir, name) = match parent(root, link, false) {
        Err(Errno::ENOENT) => return Ok(None),
        r => r?,
    };
    let at = Some(dir.as_raw_fd());
    match nix::fcntl::readlinkat(at, OsStr::from_bytes(name)) {
        Ok(t) if t.as_bytes() == text => {}
        Ok(_) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    }
    nix::unistd::unlinkat(at, OsStr::from_bytes(name), UnlinkatFlags::NoRemoveDir)?;
    let dirs: Vec<&[u8]> = components(link).collect();
    for depth in (1..dirs.len()).rev() {
        let sub = dirs[..depth].join(&b'/');
        let Ok((d, n)) = parent(root, &sub, false) else {
            break;
        };
        if nix::unistd::unlinkat(
            Some(d.as_raw_fd()),
            OsStr::from_bytes(n),
            UnlinkatFlags::RemoveDir,
        )
        .is_err()
        {
            break;
        }
    }
    Ok(Some("deleted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert!(safe_relative(b"disk/by-id/x"));
        assert!(safe_relative(b"sda"));
        for bad in [
            &b""[..],
            b"/x",
            b"../x",
            b"a/../b",
            b"a/..",
            b"a\0b",
            b".",
            b"//",
        ] {
            assert!(!safe_relative(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(relative_target(b"disk/by-id/x", b"sda"), b"../../sda");
        assert_eq!(relative_target(b"cdrom", b"sr0"), b"sr0");
        assert_eq!(
            relative_target(b"input/by-path/x", b"input/event3"),
            b"../../input/event3"
        );
        assert_eq!(relative_target(b"a//./b", b"./x"), b"../x");
    }
}
