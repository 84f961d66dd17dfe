//! Reading sysfs for coldplug: the devices under `SYSFS/devices` (every directory with a
//! `uevent` file), their subsystem and `uevent` variables, and the kernel's last SEQNUM.
//! The root is a parameter so tests run against fake trees.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel says the last SEQNUM it handed out.
pub const SEQNUM_FILE: &str = "/sys/kernel/uevent_seqnum";

/// One device directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The directory, e.g. `/sys/devices/virtual/net/lo`.
    pub dir: PathBuf,
    /// Its DEVPATH, relative to the sysfs root: `/devices/virtual/net/lo`.
    pub devpath: String,
    /// The name the `subsystem` link points to, if it has one.
    pub subsystem: Option<String>,
}

/// Every device under `sysfs/devices`, parents before children, siblings sorted by name.
/// Symlinks are never followed (sysfs is full of them, pointing back up the tree).
pub fn devices(sysfs: &Path) -> io::Result<Vec<Device>> {
    let mut out = Vec::new();
    walk(sysfs, &sysfs.join("devices"), &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Device>) -> io::Result<()> {
    let uevent = dir.join("uevent");
    if fs::symlink_metadata(&uevent).is_ok_and(|m| m.is_file()) {
        let devpath = format!(
            "/{}",
            dir.strip_prefix(root).unwrap_or(dir).to_string_lossy()
        );
        let subsystem = fs::read_link(dir.join("subsystem"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        out.push(Device {
            dir: dir.to_owned(),
            devpath,
            subsystem,
        });
    }
    let mut children: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        // A device may vanish while we walk; its absence is not an error.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if dir != root.join("devices") => {
            log::debug!("{}: {e}", dir.display());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    children.sort();
    for child in children {
        walk(root, &child, out)?;
    }
    Ok(())
}

/// The `KEY=VALUE` lines of a device's `uevent` file.
pub fn read_uevent(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let text = fs::read_to_string(dir.join("uevent"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// The variables of a device's `uevent` file that an event for it carries besides those
/// the event sets itself (ACTION, DEVPATH, SUBSYSTEM, SEQNUM): what coldplug, the demo
/// and the netlink rescan add to the events they make.
pub fn device_vars(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut vars = read_uevent(dir)?;
    vars.retain(|(k, _)| !matches!(k.as_str(), "ACTION" | "DEVPATH" | "SUBSYSTEM" | "SEQNUM"));
    Ok(vars)
}

/// The kernel's last SEQNUM, from `path` (normally [`SEQNUM_FILE`]).
pub fn kernel_seqnum(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {:?} is not a SEQNUM", path.display(), text.trim()),
        )
    })
}

/// A random version 4 UUID, as the kernel accepts in `echo "add UUID" > uevent`.
pub fn random_uuid() -> io::Result<String> {
    let mut b = [0u8; 16];
    let mut f = fs::File::open("/dev/urandom")?;
    io::Read::read_exact(&mut f, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dev = root.join("devices/pci0000:00/0000:00:01.0");
        fs::create_dir_all(dev.join("net/eth0")).unwrap();
        fs::create_dir_all(root.join("class/net")).unwrap();
        fs::create_dir_all(root.join("bus/pci")).unwrap();
        fs::write(dev.join("uevent"), "DRIVER=e1000\nPCI_ID=8086:100E\n").unwrap();
        fs::write(dev.join("net/eth0/uevent"), "INTERFACE=eth0\nIFINDEX=2\n").unwrap();
        std::os::unix::fs::symlink("../../../../bus/pci", dev.join("subsystem")).unwrap();
        std::os::unix::fs::symlink("../../../../../class/net", dev.join("net/eth0/subsystem"))
            .unwrap();
        // A symlink back up the tree must not be followed.
        std::os::unix::fs::symlink("../..", dev.join("net/eth0/device")).unwrap();
        let devs = devices(root).unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].devpath, "/devices/pci0000:00/0000:00:01.0");
        assert_eq!(devs[0].subsystem.as_deref(), Some("pci"));
        assert_eq!(devs[1].devpath, "/devices/pci0000:00/0000:00:01.0/net/eth0");
        assert_eq!(devs[1].subsystem.as_deref(), Some("net"));
        assert_eq!(
            read_uevent(&devs[1].dir).unwrap(),
            vec![
                ("INTERFACE".into(), "eth0".into()),
                ("IFINDEX".into(), "2".into())
            ]
        );
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
