//! The daemon's configuration: the main TOML file (`[daemon]` settings and optionally
//! `[[rule]]`s), the `*.toml` rule files of `rules_dir`, the built-in default used when no
//! file exists, and the `file:line:col` errors for all of them. Every error of every file
//! is collected before giving up, so one `hotplugd --check-config` run shows the whole damage.

use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::rules::{RuleSet, RuleSetBuilder};
use crate::spanned::{Diag, Node, Value};
// Their home is `spanned`, below `rules`; these paths stay for every caller.
pub use crate::spanned::{parse_duration, ConfigError};

/// Where the daemon looks when not told otherwise.
pub const DEFAULT_PATH: &str = "/etc/hotplugd/hotplugd.toml";

/// The configuration used when [`DEFAULT_PATH`] does not exist: `[daemon]` defaults only.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The name errors in [`DEFAULT_TOML`] would carry.
const EMBEDDED_NAME: &str = "<built-in default config>";

const DAEMON_FIELDS: &[&str] = &[
    "gap_timeout",
    "handler_timeout",
    "coalesce",
    "rules_dir",
    "rules_dirs",
    "hotplug_d",
    "seqnum_file",
    "max_output_bytes",
    "max_queue_memory",
    "sources",
    "netlink_buffer",
    // Firmware (issue 16).
    "firmware_dirs",
    "sysfs_dir",
    // Nodes and links.
    "dev_dir",
    // Background handlers.
    "max_background",
    // Rebroadcast (issue 17).
    "rebroadcast",
    "rebroadcast_subsystems",
    // The device database (issue 17).
    "device_db",
    // Lanes (issue 18).
    "workers",
    "exclusive_subsystems",
];

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// The kernel's uevent helper: our shim writing to the FIFO (and the spool).
    pub fifo: bool,
    /// The kernel's uevent broadcast on a `NETLINK_KOBJECT_UEVENT` socket.
    pub netlink: bool,
}

/// `fifo`, `netlink` or `fifo,netlink`, as the status line shows them.
impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.fifo, "fifo"), (self.netlink, "netlink")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&names.join(","))
    }
}

/// The `sources` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcesSetting {
    /// `"auto"`: what the kernel offers. Netlink always, since every kernel broadcasts;
    /// the FIFO too when the kernel has a uevent helper setting, since only then can the
    /// shim run (and an admin may point the setting at it while the daemon runs).
    Auto,
    /// `["fifo", "netlink"]` or a part of it: exactly these.
    Listed(Sources),
}

impl SourcesSetting {
    /// The sources to open, given whether the kernel has a uevent helper setting.
    pub fn resolve(self, kernel_has_helper: bool) -> Sources {
        match self {
            SourcesSetting::Auto => Sources {
                fifo: kernel_has_helper,
                netlink: true,
            },
            SourcesSetting::Listed(s) => s,
        }
    }
}

/// `auto` or the listed names, as the `sources_config` status line shows it.
impl fmt::Display for SourcesSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcesSetting::Auto => f.write_str("auto"),
            SourcesSetting::Listed(s) => s.fmt(f),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// How long to wait for a missing SEQNUM before giving up on it.
    pub gap_timeout: Duration,
    /// A handler's run time limit unless its rule sets `timeout`.
    pub handler_timeout: Duration,
    pub coalesce: bool,
    /// Resolved against the main file's directory if it was relative.
    pub rules_dir: Option<PathBuf>,
    /// Rule directories, lowest priority first (vendor, admin, runtime): a file of the
    /// same name in a later one replaces the earlier. Relative ones as `rules_dir`.
    pub rules_dirs: Vec<PathBuf>,
    /// Resolved against the main file's directory if it was relative.
    pub hotplug_d: Option<PathBuf>,
    /// `None` when configured as `""`: the first event then sets the start.
    pub seqnum_file: Option<PathBuf>,
    pub max_output_bytes: usize,
    /// Past this many bytes of queued events in memory, new ones spill to the journal.
    pub max_queue_memory: usize,
    pub sources: SourcesSetting,
    /// The netlink socket's receive buffer, bytes.
    pub netlink_buffer: usize,

    // Firmware (issue 16).
    /// Where the built-in loader looks for requested firmware, in order; empty: no
    /// built-in loader, rules answer firmware requests.
    pub firmware_dirs: Vec<PathBuf>,
    /// The sysfs mount: rules' `ATTR{..}`, `ATTRS{..}` and `DRIVER(S)` keys read devices
    /// below it (DEVPATH is relative to it), and firmware requests' `loading` and `data`
    /// are there.
    pub sysfs_dir: PathBuf,
    /// Where the rules' node keys act: `dev_dir/$DEVNAME` and the links below it.
    pub dev_dir: PathBuf,
    // Background handlers.
    /// Background handlers running at once; past it, the next one waits for a slot.
    /// 0 runs `background` rules in the foreground.
    pub max_background: usize,

    // Rebroadcast (issue 17).
    /// Netlink multicast groups each handled event is sent to again, as a mask (mdevd's
    /// `-O`); 0: none. Never includes the kernel's group 1.
    pub rebroadcast: u32,
    /// The device database (issue 17): keep RUNTIME/db/ entries (`crate::db`). Written
    /// while the next handler runs, so its cost is off the dispatch path.
    pub device_db: bool,
    /// Only events of these subsystems are rebroadcast; empty: all.
    pub rebroadcast_subsystems: Vec<String>,

    // Lanes (issue 18).
    /// Events whose handlers may run at once (see [`crate::lanes`]); 1, the default,
    /// runs one handler at a time in SEQNUM order.
    pub workers: usize,
    /// Events of these subsystems run alone, as a rule's `exclusive = true` makes its
    /// events do.
    pub exclusive_subsystems: Vec<String>,
}

/// Most `workers`: far past what a machine's devices need, so a typo does not fork a
/// thousand threads.
pub const MAX_WORKERS: usize = 64;

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            gap_timeout: Duration::from_secs(2),
            handler_timeout: Duration::from_secs(30),
            coalesce: true,
            rules_dir: None,
            rules_dirs: Vec::new(),
            hotplug_d: None,
            seqnum_file: Some(PathBuf::from("/sys/kernel/uevent_seqnum")),
            max_output_bytes: 65536,
            max_queue_memory: 64 << 20,
            sources: SourcesSetting::Auto,
            netlink_buffer: crate::netlink::RCVBUF,

            // Firmware (issue 16).
            firmware_dirs: crate::firmware::default_dirs(),
            sysfs_dir: PathBuf::from("/sys"),
            dev_dir: PathBuf::from("/dev"),
            // Background handlers.
            max_background: 16,
            // Rebroadcast (issue 17).
            rebroadcast: 0,
            rebroadcast_subsystems: Vec::new(),
            device_db: true,
            // Lanes (issue 18).
            workers: 1,
            exclusive_subsystems: vec!["module".to_owned()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub rules: RuleSet,
    /// The main file; `None` for the built-in default.
    pub path: Option<PathBuf>,
    /// Every rule file name found in the rule directories, in the order their rules run.
    pub rule_files: Vec<RuleFile>,
}

/// One rule file name across the rule directories: the file that counts, and those it
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFile {
    /// The copy in the directory of highest priority.
    pub path: PathBuf,
    /// An empty file or a symlink to /dev/null: no rules under this name at all, as
    /// systemd and udev mask a unit or rule file.
    pub masked: bool,
    /// Same-named files in directories of lower priority, not read.
    pub overridden: Vec<PathBuf>,
}

/// Every error found, in file order; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl Config {
    /// Load `path`, or with `None` [`DEFAULT_PATH`] if it exists, else the built-in default.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let path = match path {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
            None => {
                let mut c = Config::parse(DEFAULT_TOML, Path::new(EMBEDDED_NAME))?;
                c.path = None;
                return Ok(c);
            }
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
        Config::parse(&text, path)
    }

    /// Parse a main config from text; `file` names it in errors, and relative `rules_dir`
    /// and `hotplug_d` are resolved against its directory. Reads the rules_dir files.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut daemon = DaemonConfig::default();
        let mut rules = RuleSetBuilder::default();
        let mut d = Diag {
            file,
            text,
            errors: &mut errors,
        };
        parse_file(&mut d, Some(&mut daemon), &mut rules);

        let base = file.parent().unwrap_or(Path::new(""));
        let dirs = daemon
            .rules_dirs
            .iter_mut()
            .chain(daemon.rules_dir.as_mut());
        for p in dirs.chain(daemon.hotplug_d.as_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // `rules_dir` is the older spelling of a single-entry `rules_dirs`; with both,
        // it is the last and so wins, where an admin who added it would expect.
        let dirs: Vec<PathBuf> = daemon
            .rules_dirs
            .iter()
            .chain(daemon.rules_dir.as_ref())
            .cloned()
            .collect();
        let rule_files = merge_rule_dirs(&dirs, &mut errors);
        for f in rule_files.iter().filter(|f| !f.masked) {
            match std::fs::read_to_string(&f.path) {
                Ok(text) => {
                    let mut d = Diag {
                        file: &f.path,
                        text: &text,
                        errors: &mut errors,
                    };
                    parse_file(&mut d, None, &mut rules);
                }
                Err(e) => errors.push(ConfigError::io(&f.path, &e)),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            rules: rules
                .build(daemon.hotplug_d.clone())
                .with_sysfs_dir(&daemon.sysfs_dir),
            daemon,
            path: Some(file.to_path_buf()),
            rule_files,
        })
    }
}

/// One file's top level. `daemon` is `None` for a rules_dir file, where `[daemon]` is an
/// error: settings scattered over drop-ins would be order-dependent.
fn parse_file(d: &mut Diag, mut daemon: Option<&mut DaemonConfig>, rules: &mut RuleSetBuilder) {
    let Some(doc) = d.document() else { return };
    for (key, value) in doc {
        match (key.name.as_str(), daemon.as_deref_mut()) {
            ("rule", _) => rules.add(d, value),
            ("daemon", Some(cfg)) => parse_daemon(d, value, cfg),
            ("daemon", None) => d.error(
                &key.span,
                "a [daemon] table is only allowed in the main config file",
            ),
            (_, Some(_)) => d.unknown_field(&key, &["daemon", "rule"]),
            (_, None) => d.unknown_field(&key, &["rule"]),
        }
    }
}

fn parse_daemon(d: &mut Diag, value: Value, cfg: &mut DaemonConfig) {
    let Some(table) = d.table(value, "a table") else {
        return;
    };
    for (key, v) in table {
        match key.name.as_str() {
            "gap_timeout" => set(&mut cfg.gap_timeout, d.duration(&v)),
            "handler_timeout" => set(&mut cfg.handler_timeout, d.duration(&v)),
            "coalesce" => set(&mut cfg.coalesce, d.boolean(&v)),
            "rules_dir" => set(&mut cfg.rules_dir, path(d, &v)),
            "rules_dirs" => set(&mut cfg.rules_dirs, paths(d, &v)),
            "hotplug_d" => set(&mut cfg.hotplug_d, path(d, &v)),
            "seqnum_file" => set(&mut cfg.seqnum_file, path(d, &v)),
            "max_output_bytes" => set(&mut cfg.max_output_bytes, d.unsigned(&v)),
            "max_queue_memory" => set(&mut cfg.max_queue_memory, d.bytes(&v)),
            "sources" => set(&mut cfg.sources, sources(d, &v)),
            "netlink_buffer" => set(&mut cfg.netlink_buffer, d.bytes(&v)),

            // Firmware (issue 16).
            "firmware_dirs" => {
                let dirs = paths(d, &v);
                set(&mut cfg.firmware_dirs, absolute(d, &v, dirs, Vec::as_slice))
            }
            "sysfs_dir" => set(&mut cfg.sysfs_dir, sysfs_dir(d, &v)),
            "dev_dir" => set(&mut cfg.dev_dir, dev_dir(d, &v)),
            // Background handlers.
            "max_background" => set(&mut cfg.max_background, d.unsigned(&v)),
            // Rebroadcast (issue 17).
            "rebroadcast" => set(&mut cfg.rebroadcast, rebroadcast(d, &v)),
            "rebroadcast_subsystems" => set(&mut cfg.rebroadcast_subsystems, subsystems(d, &v)),
            "device_db" => set(&mut cfg.device_db, d.boolean(&v)),
            // Lanes (issue 18).
            "workers" => set(&mut cfg.workers, workers(d, &v)),
            "exclusive_subsystems" => set(&mut cfg.exclusive_subsystems, subsystems(d, &v)),
            _ => d.unknown_field(&key, DAEMON_FIELDS),
        }
    }
}

// ---- Rebroadcast (issue 17) -------------------------------------------------------------

/// `rebroadcast`: a netlink group mask of 32 bits, without the kernel's group 1 (a
/// listener there would take our copy for the kernel's event).
fn rebroadcast(d: &mut Diag, v: &Value) -> Option<u32> {
    let n = d.unsigned(v)?;
    let Ok(mask) = u32::try_from(n) else {
        d.error(
            &v.span,
            format!("rebroadcast {n} is not a 32-bit group mask"),
        );
        return None;
    };
    if mask & 1 != 0 {
        d.error(
            &v.span,
            format!(
                "rebroadcast {mask} includes group 1, the kernel's own uevents; \
                 libudev listens on 4 (rebroadcast = 4)"
            ),
        );
        return None;
    }
    Some(mask)
}

/// `rebroadcast_subsystems`: an array of subsystem names.
fn subsystems(d: &mut Diag, v: &Value) -> Option<Vec<String>> {
    let Node::Array(items) = &v.node else {
        d.invalid_type(v, "an array of subsystem names");
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        match d.string(item) {
            Some("") => d.error(&item.span, "an empty subsystem name"),
            Some(s) => out.push(s.to_owned()),
            None => return None,
        }
    }
    Some(out)
}

// ---- end of rebroadcast -----------------------------------------------------------------

/// `workers`: 1 to [`MAX_WORKERS`].
fn workers(d: &mut Diag, v: &Value) -> Option<usize> {
    let n = d.unsigned(v)?;
    if n == 0 || n > MAX_WORKERS {
        d.error(
            &v.span,
            format!("workers {n} is out of range: 1 (one handler at a time) to {MAX_WORKERS}"),
        );
        return None;
    }
    Some(n)
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// `dev_dir`: an absolute path, as it names where nodes are made whatever the daemon's
/// working directory.
fn dev_dir(d: &mut Diag, v: &Value) -> Option<PathBuf> {
    match &v.node {
        Node::Str(s) if s.starts_with('/') => Some(PathBuf::from(s)),
        Node::Str(s) => {
            d.error(&v.span, format!("dev_dir {s:?} must be an absolute path"));
            None
        }
        _ => {
            d.invalid_type(v, "an absolute path string");
            None
        }
    }
}

/// `sources = "auto"`, or `["fifo", "netlink"]`: a non-empty list, each name once.
fn sources(d: &mut Diag, v: &Value) -> Option<SourcesSetting> {
    let items = match &v.node {
        Node::Array(items) => items,
        Node::Str(s) if s == "auto" => return Some(SourcesSetting::Auto),
        Node::Str(s) => {
            let msg = format!(
                "unknown sources {s:?}, expected \"auto\" or an array of \"fifo\" and \"netlink\""
            );
            d.error(&v.span, msg);
            return None;
        }
        _ => {
            d.invalid_type(v, "\"auto\" or an array of \"fifo\" and \"netlink\"");
            return None;
        }
    };
    let mut out = Sources {
        fifo: false,
        netlink: false,
    };
    let mut ok = true;
    for item in items {
        let flag = match d.string(item) {
            Some("fifo") => &mut out.fifo,
            Some("netlink") => &mut out.netlink,
            Some(other) => {
                let msg = format!("unknown source {other:?}, expected \"fifo\" or \"netlink\"");
                d.error(&item.span, msg);
                ok = false;
                continue;
            }
            None => {
                ok = false;
                continue;
            }
        };
        if *flag {
            d.error(&item.span, "source listed twice");
            ok = false;
        }
        *flag = true;
    }
    if ok && !out.fifo && !out.netlink {
        d.error(&v.span, "sources is empty: no event would ever arrive");
        ok = false;
    }
    ok.then_some(SourcesSetting::Listed(out))
}

/// A path setting; `""` switches it off (`Some(None)`).
fn path(d: &mut Diag, v: &Value) -> Option<Option<PathBuf>> {
    if let Node::Str(s) = &v.node {
        return Some((!s.is_empty()).then(|| PathBuf::from(s)));
    }
    d.invalid_type(v, "a path string");
    None
}

/// Paths the daemon uses as they are, `None` if one is relative: with the daemon's cwd
/// at /, a relative one would be a surprise.
fn absolute<T>(
    d: &mut Diag,
    v: &Value,
    value: Option<T>,
    paths: fn(&T) -> &[PathBuf],
) -> Option<T> {
    let value = value?;
    if paths(&value).iter().any(|p| p.is_relative()) {
        d.error(&v.span, "a relative path: give an absolute one");
        return None;
    }
    Some(value)
}

/// Attribute matching's `sysfs_dir`: an absolute directory, never switched off (a rule
/// with sysfs keys would then silently see every attribute missing).
fn sysfs_dir(d: &mut Diag, v: &Value) -> Option<PathBuf> {
    let p = path(d, v)?;
    match p {
        Some(p) if p.is_absolute() => Some(p),
        _ => {
            d.error(
                &v.span,
                "sysfs_dir must be an absolute path, such as \"/sys\"",
            );
            None
        }
    }
}

/// `rules_dirs = ["/usr/lib/…", "/etc/…"]`: a list of path strings (empty ones skipped).
fn paths(d: &mut Diag, v: &Value) -> Option<Vec<PathBuf>> {
    let Node::Array(items) = &v.node else {
        d.invalid_type(v, "an array of directory paths");
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        if let Some(p) = path(d, item)? {
            out.push(p);
        }
    }
    Some(out)
}

/// The rule files of several directories, merged by file name as systemd and udev do: a
/// name in a later directory replaces the same name in earlier ones, whatever its
/// contents; the result runs in byte order of the names, whichever directory each came
/// from.
fn merge_rule_dirs(dirs: &[PathBuf], errors: &mut Vec<ConfigError>) -> Vec<RuleFile> {
    let mut by_name: std::collections::BTreeMap<std::ffi::OsString, RuleFile> = Default::default();
    for dir in dirs {
        for path in rule_files(dir, errors) {
            let name = path.file_name().unwrap_or_default().to_owned();
            let masked = is_mask(&path);
            match by_name.entry(name) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(RuleFile {
                        path,
                        masked,
                        overridden: Vec::new(),
                    });
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let f = e.get_mut();
                    let old = std::mem::replace(&mut f.path, path);
                    f.overridden.push(old);
                    f.masked = masked;
                }
            }
        }
    }
    by_name.into_values().collect()
}

/// An empty file or a symlink to /dev/null masks its name.
fn is_mask(path: &Path) -> bool {
    if std::fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null")) {
        return true;
    }
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// The `*.toml` files of a rules directory in byte order of their names. Dot files are
/// skipped (editor leftovers, like the shell's `*.toml`); a missing directory has none.
fn rule_files(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::debug!("{}: no rules directory", dir.display());
            return Vec::new();
        }
        Err(e) => {
            errors.push(ConfigError::io(dir, &e));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errors.push(ConfigError::io(dir, &e));
                continue;
            }
        };
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: a link to a rule file is a rule file; a dangling one is an
        // error worth seeing.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => files.push(path),
            Err(e) => errors.push(ConfigError::io(&path, &e)),
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn err_lines(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("main.toml")) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    fn one_err(text: &str) -> String {
        let lines = err_lines(text);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        lines.into_iter().next().unwrap()
    }

    #[test]
    fn defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.daemon, DaemonConfig::default());
        assert!(c.rules.is_empty());
        assert_eq!(c.path.as_deref(), Some(Path::new("x.toml")));
        let d = DaemonConfig::default();
        assert_eq!(d.gap_timeout, Duration::from_secs(2));
        assert_eq!(d.handler_timeout, Duration::from_secs(30));
        assert!(d.coalesce);
        assert_eq!(d.max_output_bytes, 65536);
        assert_eq!(d.max_background, 16);
        assert_eq!(
            d.seqnum_file.unwrap(),
            Path::new("/sys/kernel/uevent_seqnum")
        );
    }

    #[test]
    fn embedded_default_matches_defaults() {
        let c = Config::parse(DEFAULT_TOML, Path::new(EMBEDDED_NAME)).unwrap();
        assert_eq!(c.daemon, DaemonConfig::default());
        assert!(c.rules.is_empty());
    }

    #[test]
    fn daemon_settings() {
        let c = Config::parse(
            r#"
            [daemon]
            gap_timeout = "500ms"
            handler_timeout = 90
            coalesce = false
            rules_dir = "rules.d"
            hotplug_d = "/etc/hotplug.d"
            seqnum_file = ""
            max_output_bytes = 0
            sources = ["netlink", "fifo"]
            netlink_buffer = "1MiB"
            max_background = 0
            "#,
            Path::new("/nonexistent/etc/main.toml"),
        )
        .unwrap();
        let d = c.daemon;
        assert_eq!(d.gap_timeout, Duration::from_millis(500));
        assert_eq!(d.handler_timeout, Duration::from_secs(90));
        assert!(!d.coalesce);
        assert_eq!(d.rules_dir.unwrap(), Path::new("/nonexistent/etc/rules.d"));
        assert_eq!(d.hotplug_d.as_deref(), Some(Path::new("/etc/hotplug.d")));
        assert_eq!(c.rules.hotplug_d(), Some(Path::new("/etc/hotplug.d")));
        assert_eq!(d.seqnum_file, None);
        assert_eq!(d.max_output_bytes, 0);
        assert_eq!(
            d.sources,
            SourcesSetting::Listed(Sources {
                fifo: true,
                netlink: true
            })
        );
        assert_eq!(d.netlink_buffer, 1 << 20);
        assert_eq!(d.max_background, 0);
    }

    // Rebroadcast (issue 17).
    #[test]
    fn rebroadcast_mask_and_subsystems() {
        let c = Config::parse("", Path::new("/nonexistent/main.toml")).unwrap();
        assert_eq!(c.daemon.rebroadcast, 0, "off by default");
        assert!(c.daemon.rebroadcast_subsystems.is_empty());
        let c = Config::parse(
            "[daemon]\nrebroadcast = 6\nrebroadcast_subsystems = [\"input\", \"block\"]\n",
            Path::new("/nonexistent/main.toml"),
        )
        .unwrap();
        assert_eq!(c.daemon.rebroadcast, 6);
        assert_eq!(c.daemon.rebroadcast_subsystems, ["input", "block"]);
        assert_eq!(
            one_err("[daemon]\nrebroadcast = 5\n"),
            "main.toml:2:15: rebroadcast 5 includes group 1, the kernel's own uevents; \
             libudev listens on 4 (rebroadcast = 4)"
        );
        assert_eq!(
            one_err("[daemon]\nrebroadcast = 4294967296\n"),
            "main.toml:2:15: rebroadcast 4294967296 is not a 32-bit group mask"
        );
        assert_eq!(
            one_err("[daemon]\nrebroadcast_subsystems = [\"\"]\n"),
            "main.toml:2:27: an empty subsystem name"
        );
    }

    #[test]
    fn bad_sources() {
        assert_eq!(
            one_err("[daemon]\nsources = [\"fifo\", \"kobject\"]\n"),
            "main.toml:2:20: unknown source \"kobject\", expected \"fifo\" or \"netlink\""
        );
        assert_eq!(
            one_err("[daemon]\nsources = [\"netlink\", \"netlink\"]\n"),
            "main.toml:2:23: source listed twice"
        );
        assert_eq!(
            one_err("[daemon]\nsources = []\n"),
            "main.toml:2:11: sources is empty: no event would ever arrive"
        );
        assert_eq!(
            one_err("[daemon]\nsources = \"netlink\"\n"),
            "main.toml:2:11: unknown sources \"netlink\", expected \"auto\" or an array of \"fifo\" and \"netlink\""
        );
        assert_eq!(
            one_err("[daemon]\nsources = 1\n"),
            "main.toml:2:11: invalid type: integer `1`, expected \"auto\" or an array of \"fifo\" and \"netlink\""
        );
    }

    #[test]
    fn sources_auto_is_the_default_and_follows_the_kernel() {
        assert_eq!(DaemonConfig::default().sources, SourcesSetting::Auto);
        let c = Config::parse("[daemon]\nsources = \"auto\"\n", Path::new("m.toml")).unwrap();
        assert_eq!(c.daemon.sources, SourcesSetting::Auto);
        assert_eq!(c.daemon.sources.to_string(), "auto");
        // Without a helper setting the shim never runs: netlink alone.
        let no_helper = SourcesSetting::Auto.resolve(false);
        assert_eq!((no_helper.fifo, no_helper.netlink), (false, true));
        assert_eq!(no_helper.to_string(), "netlink");
        assert_eq!(
            SourcesSetting::Auto.resolve(true).to_string(),
            "fifo,netlink"
        );
        let fifo = SourcesSetting::Listed(Sources {
            fifo: true,
            netlink: false,
        });
        assert_eq!(fifo.resolve(false).to_string(), "fifo");
        assert_eq!(fifo.to_string(), "fifo");
    }

    #[test]
    fn dotted_keys_work() {
        let c = Config::parse(
            "daemon.coalesce = false\n[[rule]]\nname = \"a\"\nmatch.ACTION = \"add\"\nrun = [\"/x\"]\n",
            Path::new("m.toml"),
        )
        .unwrap();
        assert!(!c.daemon.coalesce);
        assert_eq!(c.rules.len(), 1);
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", 500),
            ("2s", 2000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("3", 3000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for s in [
            "",
            "0",
            "0s",
            "s",
            "2x",
            "-1s",
            "1.5s",
            " 2s",
            "2 s",
            "99999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn error_kinds_with_positions() {
        // TOML syntax.
        assert_eq!(
            one_err("[daemon]\ngap_timeout = \"2s\nx = 1\n"),
            "main.toml:2:18: invalid basic string"
        );
        // Unknown keys at every level.
        assert_eq!(
            one_err("[daemon]\nbogus = 1\n"),
            "main.toml:2:1: unknown field `bogus`, expected one of `gap_timeout`, \
             `handler_timeout`, `coalesce`, `rules_dir`, `rules_dirs`, `hotplug_d`, `seqnum_file`, \
             `max_output_bytes`, `max_queue_memory`, `sources`, `netlink_buffer`, `firmware_dirs`, `sysfs_dir`, `dev_dir`, `max_background`, `rebroadcast`, \
             `rebroadcast_subsystems`, `device_db`, `workers`, `exclusive_subsystems`"
        );
        assert_eq!(
            one_err("top = 1\n"),
            "main.toml:1:1: unknown field `top`, expected `daemon` or `rule`"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nrun = [\"/x\"]\n  when = 1\n"),
            "main.toml:4:3: unknown field `when`, expected one of `name`, `match`, `run`, \
             `timeout`, `last`, `owner`, `group`, `mode`, `links`, `link_priority`, `background`, `import`, `exclusive`"
        );
        // Bad glob.
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nmatch = { DEVNAME = \"sd[a\" }\nrun = [\"/x\"]\n"),
            "main.toml:3:21: bad pattern \"sd[a\": unclosed `[` in pattern"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nmatch = { X = [\"ok\", 5] }\nrun = [\"/x\"]\n"),
            "main.toml:3:22: invalid type: integer `5`, expected a string"
        );
        // Empty and malformed run.
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nrun = []\n"),
            "main.toml:3:7: `run` must not be empty"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nrun = [\"/x\", \"${A\"]\n"),
            "main.toml:3:14: in `run[1]`: unclosed `${`"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nrun = \"/x\"\n"),
            "main.toml:3:7: invalid type: string \"/x\", expected an array of strings (program and arguments)"
        );
        // Missing and empty name.
        assert_eq!(
            one_err("\n[[rule]]\nrun = [\"/x\"]\n"),
            "main.toml:2:1: missing field `name`"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"\"\nrun = [\"/x\"]\n"),
            "main.toml:2:8: rule `name` must not be empty"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\n"),
            "main.toml:1:1: missing field `run` (or a node key: `owner`, `group`, `mode`, `links`)"
        );
        // Bad durations.
        assert_eq!(
            one_err("[daemon]\ngap_timeout = \"2 s\"\n"),
            "main.toml:2:15: invalid duration \"2 s\" (expected e.g. \"500ms\", \"2s\", \"1m\", \
             \"1h\" or an integer number of seconds)"
        );
        assert_eq!(
            one_err("[daemon]\nhandler_timeout = 0\n"),
            "main.toml:2:19: a duration must be greater than zero"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nrun = [\"/x\"]\ntimeout = \"0s\"\n"),
            "main.toml:4:11: a duration must be greater than zero"
        );
        // Other types.
        assert_eq!(
            one_err("[daemon]\ncoalesce = \"yes\"\n"),
            "main.toml:2:12: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            one_err("[daemon]\nmax_output_bytes = -1\n"),
            "main.toml:2:20: expected a non-negative integer, got -1"
        );
        assert_eq!(
            one_err("[daemon]\nworkers = 0\n"),
            "main.toml:2:11: workers 0 is out of range: 1 (one handler at a time) to 64"
        );
        assert_eq!(
            one_err("[daemon]\nmax_background = -1\n"),
            "main.toml:2:18: expected a non-negative integer, got -1"
        );
        assert_eq!(
            one_err("[[rule]]\nname = \"a\"\nrun = [\"/x\"]\nbackground = 1\n"),
            "main.toml:4:14: invalid type: integer `1`, expected a boolean"
        );
        assert_eq!(
            one_err("[rule]\nname = \"a\"\n"),
            "main.toml:1:1: invalid type: table, expected an array of tables (write `[[rule]]`)"
        );
    }

    #[test]
    fn all_errors_collected() {
        let text = r#"[daemon]
gap_timeout = "soon"
extra = true

[[rule]]
name = "a"
match = { X = "[", Y = [] }
run = []
last = "yes"

[[rule]]
name = "a"
run = ["/x"]
"#;
        assert_eq!(
            err_lines(text),
            [
                "main.toml:2:15: invalid duration \"soon\" (expected e.g. \"500ms\", \"2s\", \"1m\", \"1h\" or an integer number of seconds)",
                "main.toml:3:1: unknown field `extra`, expected one of `gap_timeout`, `handler_timeout`, `coalesce`, `rules_dir`, `rules_dirs`, `hotplug_d`, `seqnum_file`, `max_output_bytes`, `max_queue_memory`, `sources`, `netlink_buffer`, `firmware_dirs`, `sysfs_dir`, `dev_dir`, `max_background`, `rebroadcast`, `rebroadcast_subsystems`, `device_db`, `workers`, `exclusive_subsystems`",
                "main.toml:7:15: bad pattern \"[\": unclosed `[` in pattern",
                "main.toml:7:24: empty pattern list for `Y` (it would never match)",
                "main.toml:8:7: `run` must not be empty",
                "main.toml:9:8: invalid type: string \"yes\", expected a boolean",
                "main.toml:12:8: duplicate rule name \"a\" (first defined at main.toml:6:8)",
            ]
        );
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    #[test]
    fn rules_dir_order_and_duplicates_across_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rules.d");
        fs::create_dir(&dir).unwrap();
        let main = tmp.path().join("hotplugd.toml");
        write(
            &main,
            "[daemon]\nrules_dir = \"rules.d\"\n[[rule]]\nname = \"main\"\nrun = [\"/m\"]\n",
        );
        write(
            &dir.join("50-b.toml"),
            "[[rule]]\nname = \"b\"\nrun = [\"/b\"]\n",
        );
        write(
            &dir.join("10-a.toml"),
            "[[rule]]\nname = \"a\"\nrun = [\"/a\"]\n",
        );
        write(&dir.join("README"), "not toml");
        write(&dir.join(".50-b.toml.swp"), "junk");
        write(&dir.join(".hidden.toml"), "junk");
        fs::create_dir(dir.join("sub.toml")).unwrap();
        let c = Config::load(Some(&main)).unwrap();
        assert_eq!(c.rules.names().collect::<Vec<_>>(), ["main", "a", "b"]);
        assert_eq!(c.daemon.rules_dir.as_deref(), Some(dir.as_path()));
        assert_eq!(c.path.as_deref(), Some(main.as_path()));

        // The same name in a later file points back at the first.
        write(
            &dir.join("60-dup.toml"),
            "# comment\n[[rule]]\nname = \"a\"\nrun = [\"/a2\"]\n",
        );
        // A [daemon] table in a rules file.
        write(&dir.join("70-daemon.toml"), "[daemon]\ncoalesce = false\n");
        // Broken syntax in one file does not hide errors in others.
        write(&dir.join("65-broken.toml"), "[[rule]\n");
        let err = Config::load(Some(&main)).unwrap_err();
        let d = dir.display();
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(
            lines[0],
            format!("{d}/60-dup.toml:3:8: duplicate rule name \"a\" (first defined at {d}/10-a.toml:2:8)")
        );
        assert!(
            lines[1].starts_with(&format!("{d}/65-broken.toml:1:")),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2],
            format!(
                "{d}/70-daemon.toml:1:2: a [daemon] table is only allowed in the main config file"
            )
        );
        assert_eq!(err.0[2].line, 1);
    }

    #[test]
    fn missing_rules_dir_is_fine() {
        let c = Config::parse(
            "[daemon]\nrules_dir = \"/nonexistent/rules.d\"\n",
            Path::new("m.toml"),
        )
        .unwrap();
        assert!(c.rules.is_empty());
    }

    #[test]
    fn unreadable_files() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope.toml");
        let err = Config::load(Some(&missing)).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, 0);
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{err}"
        );

        // A rules_dir that is a file, and a dangling link inside a real one.
        let file = tmp.path().join("file");
        write(&file, "");
        let text = format!("[daemon]\nrules_dir = {:?}\n", file.to_str().unwrap());
        let err = Config::parse(&text, Path::new("m.toml")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("{}: ", file.display())));

        let dir = tmp.path().join("rules.d");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x.toml", dir.join("x.toml")).unwrap();
        let text = format!("[daemon]\nrules_dir = {:?}\n", dir.to_str().unwrap());
        let err = Config::parse(&text, Path::new("m.toml")).unwrap_err();
        assert_eq!(err.0[0].file, dir.join("x.toml"));
    }

    #[test]
    fn error_display() {
        let e = ConfigError {
            file: "a.toml".into(),
            line: 3,
            col: 7,
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "a.toml:3:7: boom");
        let whole = ConfigError {
            line: 0,
            col: 0,
            ..e.clone()
        };
        assert_eq!(whole.to_string(), "a.toml: boom");
        assert_eq!(
            ConfigErrors(vec![e, whole]).to_string(),
            "a.toml:3:7: boom\na.toml: boom"
        );
    }

    #[test]
    fn firmware_settings() {
        let c = Config::parse(
            "[daemon]\nfirmware_dirs = [\"/a\", \"\", \"/b\"]\nsysfs_dir = \"/tmp/sys\"\n",
            Path::new("main.toml"),
        )
        .unwrap();
        assert_eq!(c.daemon.firmware_dirs, [Path::new("/a"), Path::new("/b")]);
        assert_eq!(c.daemon.sysfs_dir, Path::new("/tmp/sys"));
        let off = Config::parse("[daemon]\nfirmware_dirs = []\n", Path::new("m.toml")).unwrap();
        assert!(off.daemon.firmware_dirs.is_empty());
        assert_eq!(DaemonConfig::default().sysfs_dir, Path::new("/sys"));
        assert_eq!(
            one_err("[daemon]\nsysfs_dir = \"\"\n"),
            "main.toml:2:13: sysfs_dir must be an absolute path, such as \"/sys\""
        );
        assert_eq!(
            one_err("[daemon]\nfirmware_dirs = [\"/a\", \"b\"]\n"),
            "main.toml:2:17: a relative path: give an absolute one"
        );
        assert_eq!(
            one_err("[daemon]\nsysfs_dir = \"sys\"\n"),
            "main.toml:2:13: sysfs_dir must be an absolute path, such as \"/sys\""
        );
    }

    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        // The example's admin dir is relative, so it finds config/rules.d here and
        // /etc/hotplugd/rules.d when installed.
        let c = match Config::load(Some(&root.join("hotplugd.toml"))) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.daemon.rules_dirs[1], root.join("rules.d"));
        // A new user's kernel may have no uevent helper: the shipped config must hear it.
        assert_eq!(c.daemon.sources, SourcesSetting::Auto);
        let files = fs::read_dir(root.join("rules.d")).unwrap().count();
        assert!(files >= 2);
        assert!(
            c.rules.len() >= files,
            "{:?}",
            c.rules.names().collect::<Vec<_>>()
        );

        let d = Config::parse(DEFAULT_TOML, &root.join("default.toml")).unwrap();
        assert_eq!(d.daemon, DaemonConfig::default());
        assert!(d.rules.is_empty());
        assert_eq!(
            fs::read_to_string(root.join("default.toml")).unwrap(),
            DEFAULT_TOML
        );
    }
}
