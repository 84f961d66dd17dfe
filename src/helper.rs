//! The kernel's uevent helper setting, as the daemon and `hotplugctl helper` read it:
//! which file holds it, what it names, whether that is our shim, and what to do when the
//! daemon's sources would hear nothing.
//!
//! The setting exists only in kernels built with `CONFIG_UEVENT_HELPER`, which Debian's and
//! Fedora's are not (systemd asks distributions to leave it off). There the kernel never
//! runs a helper and only netlink hears its events; that is why `sources = "auto"` decides
//! from this file.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::Sources;

/// Where the kernel keeps its uevent helper path: both name the same setting, and both
/// exist only with `CONFIG_UEVENT_HELPER`.
pub const HELPER_FILES: [&str; 2] = ["/proc/sys/kernel/hotplug", "/sys/kernel/uevent_helper"];

/// For tests: this file stands in for the kernel's setting (absent means the kernel has
/// none), so a test never reads or writes the host's real one.
pub const HELPER_FILE_ENV: &str = "HOTPLUGD_HELPER_FILE";

/// The shim's file name; it is installed beside `hotplugd` and `hotplugctl`.
pub const SHIM_NAME: &str = "hotplug";

/// What the kernel's helper setting says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Helper {
    /// No setting at all: built without `CONFIG_UEVENT_HELPER`, the kernel runs no helper.
    NoKnob,
    /// The setting is empty: the kernel runs nothing per event.
    Empty { file: PathBuf },
    /// Our shim: every event reaches the FIFO, or the spool when no daemon reads it.
    Ours { file: PathBuf, path: PathBuf },
    /// Another program (mdev, an old hotplug script, a path that does not exist): its
    /// events never reach us through the FIFO.
    Other { file: PathBuf, path: PathBuf },
    /// The setting exists but could not be read.
    Unreadable { file: PathBuf, error: String },
}

/// The file holding the kernel's helper setting, or `None` if this kernel has none.
/// [`HELPER_FILE_ENV`], when set, replaces the search.
pub fn knob_file() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os(HELPER_FILE_ENV).filter(|f| !f.is_empty()) {
        let f = PathBuf::from(f);
        return f.exists().then_some(f);
    }
    HELPER_FILES.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Our shim as installed: `hotplug` in the directory of the running program, which the
/// Makefile and packages install together.
pub fn our_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(SHIM_NAME))
}

impl Helper {
    /// Read the kernel's setting (see [`knob_file`]) and compare it with our shim.
    pub fn inspect() -> Helper {
        match knob_file() {
            Some(file) => Helper::read(&file, our_shim().as_deref()),
            None => Helper::NoKnob,
        }
    }

    /// Read the setting from `file` and compare what it names with `shim`.
    pub fn read(file: &Path, shim: Option<&Path>) -> Helper {
        let file = file.to_path_buf();
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) => {
                return Helper::Unreadable {
                    file,
                    error: e.to_string(),
                }
            }
        };
        let text = String::from_utf8_lossy(&text);
        // The kernel takes the path up to the first newline (and keeps no arguments).
        let named = text.lines().next().unwrap_or("").trim();
        if named.is_empty() {
            return Helper::Empty { file };
        }
        let path = PathBuf::from(named);
        if shim.is_some_and(|s| same_file(&path, s)) {
            Helper::Ours { file, path }
        } else {
            Helper::Other { file, path }
        }
    }

    pub fn has_knob(&self) -> bool {
        !matches!(self, Helper::NoKnob)
    }

    pub fn is_ours(&self) -> bool {
        matches!(self, Helper::Ours { .. })
    }

    /// The file holding the setting, if the kernel has one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Helper::NoKnob => None,
            Helper::Empty { file }
            | Helper::Ours { file, .. }
            | Helper::Other { file, .. }
            | Helper::Unreadable { file, .. } => Some(file),
        }
    }

    /// The warning when these are the daemon's only live sources and the kernel's events
    /// cannot reach them; `None` when they can.
    pub fn warning(&self, live: Sources) -> Option<String> {
        if live.netlink || !live.fifo || self.is_ours() {
            return None;
        }
        let fix = "set sources = \"auto\" (or add \"netlink\")";
        let why = match self {
            Helper::NoKnob => {
                return Some(format!(
                    "events come from the FIFO only, but this kernel has no uevent helper \
                     (CONFIG_UEVENT_HELPER is off): no kernel event will arrive; {fix}"
                ))
            }
            Helper::Empty { file } => format!("{} is empty", file.display()),
            Helper::Other { file, path } => format!(
                "{} names {}, not hotplugd's shim",
                file.display(),
                path.display()
            ),
            Helper::Unreadable { file, error } => format!("{}: {error}", file.display()),
            Helper::Ours { .. } => return None,
        };
        Some(format!(
            "events come from the FIFO only, but {why}: no kernel event will arrive; \
             {fix}, or run `hotplugctl helper enable`"
        ))
    }

    /// What to do about it, in a sentence or two, for `hotplugctl helper status`.
    /// `daemon` is the daemon's live sources if it answered.
    pub fn advice(&self, daemon: Option<Sources>) -> String {
        let netlink = daemon.is_some_and(|s| s.netlink);
        match self {
            Helper::Ours { .. } => "the kernel runs hotplugd's shim for every event: events \
                 reach the daemon's FIFO, or the spool while no daemon runs"
                .to_owned(),
            Helper::NoKnob if netlink => {
                "nothing to do: the daemon hears the kernel on netlink".to_owned()
            }
            Helper::NoKnob => "the kernel runs no helper, so only netlink hears its events: \
                 run hotplugd with sources = \"auto\" (the default) or [\"netlink\"]"
                .to_owned(),
            _ if netlink => "the daemon hears the kernel on netlink; `hotplugctl helper \
                 enable` also makes the kernel run the shim, so events from before the \
                 daemon starts wait in the spool"
                .to_owned(),
            _ => "run `hotplugctl helper enable` so the kernel runs hotplugd's shim, or run \
                 hotplugd with sources = \"auto\" (the default) to hear netlink"
                .to_owned(),
        }
    }
}

/// The `kernel_helper` status value: `/sbin/hotplug (ours)`, `none (CONFIG_UEVENT_HELPER
/// off)`, `empty`, `/sbin/mdev (not ours)`, `unreadable (ERROR)`.
impl fmt::Display for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Helper::NoKnob => f.write_str("none (CONFIG_UEVENT_HELPER off)"),
            Helper::Empty { .. } => f.write_str("empty"),
            Helper::Ours { path, .. } => write!(f, "{} (ours)", path.display()),
            Helper::Other { path, .. } => write!(f, "{} (not ours)", path.display()),
            Helper::Unreadable { error, .. } => write!(f, "unreadable ({error})"),
        }
    }
}

/// `hotplugctl helper status`: the setting in `file` (`None`: the kernel has none), the
/// daemon's live sources if it answered, a warning if they hear nothing, and what to do.
pub fn status_report(file: Option<&Path>, daemon: Option<Sources>) -> Vec<String> {
    let h = match file {
        Some(f) => Helper::read(f, our_shim().as_deref()),
        None => Helper::NoKnob,
    };
    let mut lines = vec![match &h {
        Helper::NoKnob => "no uevent helper setting: this kernel was built without \
                           CONFIG_UEVENT_HELPER and runs no helper"
            .to_owned(),
        Helper::Empty { file } => format!(
            "{}: no helper (the kernel runs nothing per event)",
            file.display()
        ),
        Helper::Ours { file, path } => {
            format!("{}: {} (hotplugd's shim)", file.display(), path.display())
        }
        Helper::Other { file, path } => {
            format!(
                "{}: {} (not hotplugd's shim)",
                file.display(),
                path.display()
            )
        }
        Helper::Unreadable { file, error } => format!("{}: {error}", file.display()),
    }];
    lines.push(match daemon {
        Some(s) => format!("daemon: running, sources {s}"),
        None => "daemon: not answering".to_owned(),
    });
    if let Some(w) = daemon.and_then(|s| h.warning(s)) {
        lines.push(format!("warning: {w}"));
    }
    lines.push(h.advice(daemon));
    lines
}

/// The live sources of the daemon on `runtime_dir`, from its `sources` status line;
/// `None` if it does not answer.
pub fn daemon_sources(runtime_dir: &Path) -> Option<Sources> {
    let (lines, end) = crate::control::call(runtime_dir, "status").ok()?;
    if !matches!(end, crate::control::End::Ok(_)) {
        return None;
    }
    let names = lines.iter().find_map(|l| l.strip_prefix("sources "))?;
    let has = |n: &str| names.split(',').any(|x| x == n);
    Some(Sources {
        fifo: has("fifo"),
        netlink: has("netlink"),
    })
}

/// Both name one file (through symlinks, `..` and the like). A path that does not exist
/// is nobody's shim.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const FIFO: Sources = Sources {
        fifo: true,
        netlink: false,
    };
    const BOTH: Sources = Sources {
        fifo: true,
        netlink: true,
    };

    #[test]
    fn reads_what_the_setting_names() {
        let tmp = tempfile::tempdir().unwrap();
        let shim = tmp.path().join("hotplug");
        fs::write(&shim, "").unwrap();
        std::os::unix::fs::symlink(&shim, tmp.path().join("link")).unwrap();
        let knob = tmp.path().join("knob");

        fs::write(&knob, "\n").unwrap();
        let h = Helper::read(&knob, Some(&shim));
        assert_eq!(h, Helper::Empty { file: knob.clone() });
        assert_eq!(h.to_string(), "empty");

        // A symlink to the shim is the shim.
        fs::write(&knob, format!("{}\n", tmp.path().join("link").display())).unwrap();
        let h = Helper::read(&knob, Some(&shim));
        assert!(h.is_ours(), "{h:?}");
        assert!(h.to_string().ends_with("/link (ours)"), "{h}");
        assert_eq!(h.warning(FIFO), None);

        fs::write(&knob, "/sbin/mdev").unwrap();
        let h = Helper::read(&knob, Some(&shim));
        assert_eq!(h.to_string(), "/sbin/mdev (not ours)");
        let w = h.warning(FIFO).unwrap();
        assert!(w.contains("names /sbin/mdev, not hotplugd's shim"), "{w}");
        // Netlink hears the kernel anyway.
        assert_eq!(h.warning(BOTH), None);

        let h = Helper::read(&tmp.path().join("gone"), Some(&shim));
        assert!(matches!(h, Helper::Unreadable { .. }), "{h:?}");
        assert!(h.warning(FIFO).is_some());

        assert_eq!(
            Helper::NoKnob.to_string(),
            "none (CONFIG_UEVENT_HELPER off)"
        );
        let w = Helper::NoKnob.warning(FIFO).unwrap();
        assert!(w.contains("CONFIG_UEVENT_HELPER is off"), "{w}");
        // No setting to point at the shim: only the sources can help.
        assert!(!w.contains("helper enable"), "{w}");
        assert!(Helper::NoKnob.advice(None).contains("netlink"));
    }
}
