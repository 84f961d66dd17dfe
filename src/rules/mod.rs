//! Handler rules: the compiled `[[rule]]` tables and the plan for one event, i.e. which
//! handlers run, in which order, with which argv. Loading lives in [`crate::config`]
//! (which owns the files) and `schema` (which owns a rule table's shape); this module
//! owns the semantics: every matching rule runs, in file order, until one with
//! `last = true` matches; then, unless such a rule stopped it, the old-style
//! `hotplug.d` scripts.
//!
//! Matching: all keys of a rule's `match` must match. A key's value is one pattern or an
//! array of patterns that matches if *any* element matches (so `["!a", "!b"]` matches
//! everything: list the positives, or use one negated glob like `"![ab]"`). A variable
//! missing from the event matches only a negated pattern. `SUBSYSTEM` falls back to the
//! shim's `argv[1]` like the old `/sbin/hotplug` contract; `KERNEL` is DEVPATH's last
//! component; other keys are event variables. Keys that read sysfs (`ATTR{name}`,
//! `ATTRS{name}`, `DRIVER`, `DRIVERS`, `KERNELS`, `SUBSYSTEMS`) live in `attrs` and are
//! checked only once a rule's event keys all matched.

mod attrs;
mod expand;
mod glob;
mod schema;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use expand::{ExpandError, Template};
pub use glob::{glob_match, GlobError, Pattern};

use crate::devnodes::NodeActions;
use crate::event::Event;
use crate::spanned::{Diag, Node, Value};

/// One handler run the daemon should make for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The rule's name, or `hotplug.d/<dir>/<file>` for a hotplug.d script.
    pub rule: String,
    pub argv: Vec<OsString>,
    /// The rule's own `timeout`; `None` means the daemon's `handler_timeout`.
    pub timeout: Option<Duration>,
    /// Started without waiting for its exit (the rule's `background`); see
    /// `crate::runner::background`.
    pub background: bool,
    /// The rule's `import`: its `KEY=VALUE` output is merged into the event, and the
    /// rules after it are planned again against the merged event ([`RuleSet::plan_after`]).
    pub import: bool,
    /// The rule's index in the set, where planning goes on after an import; `usize::MAX`
    /// for a hotplug.d script.
    pub pos: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    key: Box<[u8]>,
    patterns: Box<[Pattern]>,
}

impl Matcher {
    fn matches(&self, ev: &Event) -> bool {
        self.check(ev).1
    }

    /// The value the key sees and whether a pattern matches it.
    fn check<'e>(&self, ev: &'e Event) -> (Option<&'e [u8]>, bool) {
        let value = lookup(ev, &self.key);
        (value, self.patterns.iter().any(|p| p.matches(value)))
    }
}

/// One `match` key as [`RuleSet::explain`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    /// As written in the rule: `ACTION`, `ATTRS{idVendor}`.
    pub key: String,
    /// The value it saw; `None` when the variable or the file is missing.
    pub seen: Option<Vec<u8>>,
    pub matched: bool,
    /// For keys read on the device or a parent: the DEVPATH of the directory read.
    pub at: Option<Vec<u8>>,
}

/// One rule as [`RuleSet::explain`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCheck {
    pub rule: String,
    pub keys: Vec<KeyCheck>,
    /// What the daemon would decide: the same test as [`RuleSet::plan`] makes.
    pub matched: bool,
    /// Its handler, when it matched and has one.
    pub job: Option<Job>,
    /// A `last = true` rule: when it matched, no rule after it was looked at.
    pub last: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    name: String,
    matchers: Vec<Matcher>,
    /// Empty for a rule with node keys only.
    run: Box<[Template]>,
    timeout: Option<Duration>,
    last: bool,
    nodes: Option<NodeSpec>,
    background: bool,
    /// `import = true`: see [`Job::import`].
    import: bool,
    /// `exclusive = true`: its events run alone (see [`crate::lanes`]).
    exclusive: bool,
    /// Keys read from sysfs; `None` for most rules, which then never touch it.
    sysfs: Option<Box<attrs::SysMatch>>,
}

/// A rule's node keys, resolved at load (see [`crate::devnodes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeSpec {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    links: Box<[Template]>,
    link_priority: i32,
}

impl Rule {
    fn matches<'e>(&'e self, ev: &Event, dev: &mut attrs::Device<'e>) -> bool {
        self.matchers.iter().all(|m| m.matches(ev))
            && self.sysfs.as_ref().is_none_or(|s| s.matches(dev))
    }

    fn job(&self, ev: &Event, pos: usize) -> Job {
        Job {
            rule: self.name.clone(),
            argv: self
                .run
                .iter()
                .map(|t| OsString::from_vec(t.expand(|k| lookup(ev, k))))
                .collect(),
            timeout: self.timeout,
            background: self.background,
            import: self.import,
            pos,
        }
    }
}

/// A variable as rules see it: `SUBSYSTEM` through [`Event::subsystem`] (absent only if
/// neither the variable nor argv[1] gave one), everything else through [`Event::get`].
fn lookup<'e>(ev: &'e Event, key: &[u8]) -> Option<&'e [u8]> {
    if key == b"SUBSYSTEM" {
        let s = ev.subsystem();
        if !s.is_empty() {
            return Some(s);
        }
    }
    if key == b"KERNEL" {
        return Some(attrs::kernel_name(ev.devpath()));
    }
    ev.get(key)
}

/// The loaded rules, in order, plus the hotplug.d directory if configured.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    hotplug_d: Option<PathBuf>,
    has_nodes: bool,
    /// Some rule has `import = true`: its events are planned again after each import.
    has_imports: bool,
    /// Some rule has `exclusive = true`.
    has_exclusive: bool,
    /// `sysfs_dir`; `None` is [`attrs::DEFAULT_SYSFS_DIR`].
    sysfs_dir: Option<PathBuf>,
}

impl RuleSet {
    /// The handlers for one event, in the order they must run. Reads the hotplug.d
    /// directories (if configured) on every call, so scripts added while the daemon runs
    /// take effect without a reload.
    pub fn plan(&self, ev: &Event) -> Vec<Job> {
        self.plan_from(ev, 0)
    }

    /// The handlers that follow an import by rule `pos`, planned against the event with
    /// its imported properties: the rules after `pos`, then hotplug.d. Empty when `pos`
    /// is a hotplug.d script's, or when a `last` rule ended the plan there.
    pub fn plan_after(&self, ev: &Event, pos: usize) -> Vec<Job> {
        match pos.checked_add(1) {
            Some(start) if pos < self.rules.len() => {
                if self.rules[pos].last {
                    return Vec::new();
                }
                self.plan_from(ev, start)
            }
            _ => Vec::new(),
        }
    }

    fn plan_from(&self, ev: &Event, start: usize) -> Vec<Job> {
        let mut jobs = Vec::new();
        let mut dev = attrs::Device::new(self.sysfs_root(), ev);
        for (pos, rule) in self.rules.iter().enumerate().skip(start) {
            if rule.matches(ev, &mut dev) {
                if !rule.run.is_empty() {
                    jobs.push(rule.job(ev, pos));
                }
                if rule.last {
                    return jobs;
                }
            }
        }
        if let Some(dir) = &self.hotplug_d {
            hotplug_d_jobs(dir, ev.subsystem(), &mut jobs);
        }
        jobs
    }

    /// Each rule up to the first `last` one that matches, with every one of its keys and
    /// the value it saw, for `hotplugctl test`. Unlike [`RuleSet::plan`], it reads every
    /// key of a rule even after one failed, so the reader sees them all; whether the rule
    /// matched is still the plan's own test.
    pub fn explain(&self, ev: &Event) -> Vec<RuleCheck> {
        let mut out = Vec::new();
        let mut dev = attrs::Device::new(self.sysfs_root(), ev);
        for (pos, rule) in self.rules.iter().enumerate() {
            let mut keys: Vec<KeyCheck> = rule
                .matchers
                .iter()
                .map(|m| {
                    let (seen, matched) = m.check(ev);
                    KeyCheck {
                        key: String::from_utf8_lossy(&m.key).into_owned(),
                        seen: seen.map(<[u8]>::to_vec),
                        matched,
                        at: None,
                    }
                })
                .collect();
            if let Some(s) = &rule.sysfs {
                keys.extend(s.explain(&mut dev));
            }
            let matched = rule.matches(ev, &mut dev);
            out.push(RuleCheck {
                rule: rule.name.clone(),
                keys,
                matched,
                job: (matched && !rule.run.is_empty()).then(|| rule.job(ev, pos)),
                last: rule.last,
            });
            if matched && rule.last {
                break;
            }
        }
        out
    }

    /// Where the rules' sysfs keys read devices.
    fn sysfs_root(&self) -> &Path {
        self.sysfs_dir
            .as_deref()
            .unwrap_or(Path::new(attrs::DEFAULT_SYSFS_DIR))
    }

    /// Whether some rule has `import = true`.
    pub fn has_imports(&self) -> bool {
        self.has_imports
    }

    /// Whether `ev` must run alone when handlers run in parallel lanes: it matches an
    /// `exclusive = true` rule (its `match`, whatever a `last` rule before it does: the
    /// cautious answer), or its subsystem is one of `subsystems`.
    pub fn exclusive(&self, ev: &Event, subsystems: &[String]) -> bool {
        if subsystems.iter().any(|s| s.as_bytes() == ev.subsystem()) {
            return true;
        }
        if !self.has_exclusive {
            return false;
        }
        let mut dev = attrs::Device::new(self.sysfs_root(), ev);
        self.rules
            .iter()
            .any(|r| r.exclusive && r.matches(ev, &mut dev))
    }

    /// Whether some rule has node keys: without, events skip [`RuleSet::node_actions`].
    pub fn has_nodes(&self) -> bool {
        self.has_nodes
    }

    /// What the matching rules (up to a `last` one, as [`RuleSet::plan`]) ask of an add or
    /// change event's node: a later rule's owner, group or mode overrides an earlier's;
    /// links add up. `None` for other actions, or when no matching rule has node keys.
    pub fn node_actions(&self, ev: &Event) -> Option<NodeActions> {
        if !self.has_nodes || !matches!(ev.action(), b"add" | b"change") {
            return None;
        }
        let mut out: Option<NodeActions> = None;
        let mut dev = attrs::Device::new(self.sysfs_root(), ev);
        for rule in &self.rules {
            if !rule.matches(ev, &mut dev) {
                continue;
            }
            if let Some(n) = &rule.nodes {
                let a = out.get_or_insert_with(NodeActions::default);
                a.uid = n.uid.or(a.uid);
                a.gid = n.gid.or(a.gid);
                a.mode = n.mode.or(a.mode);
                for t in n.links.iter() {
                    let Some(link) = t.expand_all_set(|k| lookup(ev, k)) else {
                        continue;
                    };
                    // Claimed by two rules: at the higher of their priorities.
                    match a.links.iter_mut().find(|(l, _)| *l == link) {
                        Some((_, p)) => *p = (*p).max(n.link_priority),
                        None => a.links.push((link, n.link_priority)),
                    }
                }
            }
            if rule.last {
                break;
            }
        }
        out
    }

    /// Number of TOML rules (hotplug.d scripts not counted).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names in order, for listings.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    pub fn hotplug_d(&self) -> Option<&Path> {
        self.hotplug_d.as_deref()
    }

    /// Where sysfs keys read devices: the config's `sysfs_dir`, with its symlinks resolved
    /// now, as no read follows one later.
    pub(crate) fn with_sysfs_dir(mut self, dir: &Path) -> RuleSet {
        self.sysfs_dir = Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()));
        self
    }
}

/// `dir/$SUBSYSTEM/*.hotplug`, then `dir/default/*.hotplug`, each run as `[path,
/// SUBSYSTEM]`. A subsystem that could leave `dir` (`/`, `.`, `..`) or is empty only
/// gets the default scripts.
fn hotplug_d_jobs(dir: &Path, subsystem: &[u8], jobs: &mut Vec<Job>) {
    let safe = !subsystem.is_empty()
        && subsystem != b"."
        && subsystem != b".."
        && !subsystem.contains(&b'/')
        && subsystem != b"default";
    let subdirs: &[&[u8]] = if safe {
        &[subsystem, b"default"]
    } else {
        &[b"default"]
    };
    for sub in subdirs {
        let sub_dir = dir.join(std::ffi::OsStr::from_bytes(sub));
        for (name, path) in hotplug_scripts(&sub_dir) {
            jobs.push(Job {
                rule: format!(
                    "hotplug.d/{}/{}",
                    String::from_utf8_lossy(sub),
                    String::from_utf8_lossy(&name)
                ),
                argv: vec![
                    path.into_os_string(),
                    OsString::from_vec(subsystem.to_vec()),
                ],
                timeout: None,
                background: false,
                import: false,
                pos: usize::MAX,
            });
        }
    }
}

/// Regular executable `*.hotplug` files (symlinks followed, dot files skipped as the
/// shell's `*.hotplug` would), sorted by name. A missing directory has none.
fn hotplug_scripts(dir: &Path) -> Vec<(Vec<u8>, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{}: {e}", dir.display());
            }
            return Vec::new();
        }
    };
    let mut scripts: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_vec();
            if name.starts_with(b".") || !name.ends_with(b".hotplug") {
                return None;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path).ok()?;
            (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some((name, path))
        })
        .collect();
    scripts.sort();
    scripts
}

/// Collects rules across files, in order, catching duplicate names.
#[derive(Default)]
pub(crate) struct RuleSetBuilder {
    rules: Vec<Rule>,
    first_seen: HashMap<String, String>,
}

impl RuleSetBuilder {
    /// Add the value of a file's `rule` key (an array of tables).
    pub(crate) fn add(&mut self, d: &mut Diag, v: Value) {
        let Node::Array(items) = v.node else {
            let what = "an array of tables (write `[[rule]]`)";
            d.invalid_type(&v, what);
            return;
        };
        for item in items {
            let parsed = schema::rule(d, item);
            if let Some((name, span)) = &parsed.name {
                if let Some(first) = self.first_seen.get(name) {
                    let msg = format!("duplicate rule name {name:?} (first defined at {first})");
                    d.error(span, msg);
                    continue;
                }
                let here = d.location(span);
                let here = format!("{}:{}:{}", here.file.display(), here.line, here.col);
                self.first_seen.insert(name.clone(), here);
            }
            if let Some(rule) = parsed.rule {
                self.rules.push(rule);
            }
        }
    }

    pub(crate) fn build(self, hotplug_d: Option<PathBuf>) -> RuleSet {
        RuleSet {
            has_nodes: self.rules.iter().any(|r| r.nodes.is_some()),
            has_imports: self.rules.iter().any(|r| r.import),
            has_exclusive: self.rules.iter().any(|r| r.exclusive),
            rules: self.rules,
            hotplug_d,
            sysfs_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::fs;

    fn ev(arg1: &str, vars: &[(&str, &str)]) -> Event {
        let mut all = vec![("ACTION", "add"), ("DEVPATH", "/devices/x")];
        all.extend_from_slice(vars);
        Event::from_vars(
            arg1.as_bytes(),
            all.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        )
        .unwrap()
    }

    fn rules(text: &str) -> RuleSet {
        match Config::parse(text, Path::new("test.toml")) {
            Ok(c) => c.rules,
            Err(e) => panic!("{e}"),
        }
    }

    fn names(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|j| j.rule.as_str()).collect()
    }

    fn argv(job: &Job) -> Vec<&str> {
        job.argv.iter().map(|a| a.to_str().unwrap()).collect()
    }

    const RULES: &str = r#"
        [[rule]]
        name = "modules"
        match = { ACTION = "add", MODALIAS = "?*" }
        run = ["/sbin/modprobe", "-bq", "$MODALIAS"]

        [[rule]]
        name = "usb-disk"
        match = { SUBSYSTEM = "block", DEVTYPE = "disk", ID_BUS = ["usb", "ieee1394"] }
        run = ["/usr/local/sbin/usb-disk", "${DEVNAME}"]
        timeout = "60s"
        last = true

        [[rule]]
        name = "log-all"
        run = ["/bin/logger", "$ACTION $DEVPATH"]

        [[rule]]
        name = "not-net"
        match = { SUBSYSTEM = "!net" }
        run = ["/bin/true"]
    "#;

    #[test]
    fn plan_order_and_last() {
        let rs = rules(RULES);
        assert_eq!(rs.len(), 4);
        assert!(!rs.is_empty());
        assert_eq!(
            rs.names().collect::<Vec<_>>(),
            ["modules", "usb-disk", "log-all", "not-net"]
        );

        let jobs = rs.plan(&ev("usb", &[("MODALIAS", "usb:v1")]));
        assert_eq!(names(&jobs), ["modules", "log-all", "not-net"]);
        assert_eq!(argv(&jobs[0]), ["/sbin/modprobe", "-bq", "usb:v1"]);
        assert_eq!(argv(&jobs[1]), ["/bin/logger", "add /devices/x"]);
        assert_eq!(jobs[0].timeout, None);

        // `?*` needs a non-empty MODALIAS; `!net` excludes net.
        let jobs = rs.plan(&ev("net", &[("MODALIAS", "")]));
        assert_eq!(names(&jobs), ["log-all"]);

        // A `last` rule stops the plan after itself.
        let disk = [
            ("DEVTYPE", "disk"),
            ("ID_BUS", "ieee1394"),
            ("DEVNAME", "sdb"),
        ];
        let jobs = rs.plan(&ev("block", &disk));
        assert_eq!(names(&jobs), ["usb-disk"]);
        assert_eq!(argv(&jobs[0]), ["/usr/local/sbin/usb-disk", "sdb"]);
        assert_eq!(jobs[0].timeout, Some(Duration::from_secs(60)));

        let jobs = rs.plan(&ev("block", &[("DEVTYPE", "disk"), ("ID_BUS", "ata")]));
        assert_eq!(names(&jobs), ["log-all", "not-net"]);
    }

    #[test]
    fn background_is_carried_to_the_job() {
        let rs = rules(
            r#"
            [[rule]]
            name = "slow"
            run = ["/bin/slow"]
            background = true

            [[rule]]
            name = "after"
            run = ["/bin/true"]
            "#,
        );
        let jobs = rs.plan(&ev("net", &[]));
        assert_eq!(names(&jobs), ["slow", "after"]);
        assert_eq!((jobs[0].background, jobs[1].background), (true, false));
    }

    #[test]
    fn exclusive_events_by_rule_or_subsystem() {
        let rs = rules(
            r#"
            [[rule]]
            name = "firmware-reload"
            match = { SUBSYSTEM = "drm", ACTION = "change" }
            run = ["/bin/true"]
            exclusive = true
            "#,
        );
        let module = ["module".to_owned()];
        assert!(rs.exclusive(&ev("drm", &[("ACTION", "change")]), &module));
        assert!(!rs.exclusive(&ev("drm", &[("ACTION", "add")]), &module));
        assert!(rs.exclusive(&ev("module", &[]), &module));
        assert!(!rs.exclusive(&ev("module", &[]), &[]));
        assert!(!rules(RULES).exclusive(&ev("drm", &[("ACTION", "change")]), &module));
    }

    #[test]
    fn subsystem_falls_back_to_arg1() {
        let rs = rules(RULES);
        // The variable wins over argv[1].
        let jobs = rs.plan(&ev("block", &[("SUBSYSTEM", "net")]));
        assert_eq!(names(&jobs), ["log-all"]);
        // No subsystem at all: absent, so `!net` matches.
        let jobs = rs.plan(&ev("", &[]));
        assert_eq!(names(&jobs), ["log-all", "not-net"]);
    }

    #[test]
    fn absent_and_negated_keys() {
        let rs = rules(
            r#"
            [[rule]]
            name = "star"
            match = { FOO = "*" }
            run = ["star"]
            [[rule]]
            name = "neg"
            match = { FOO = "!bar" }
            run = ["neg"]
            [[rule]]
            name = "any-of-negations"
            match = { FOO = ["!a", "!b"] }
            run = ["any"]
            [[rule]]
            name = "empty"
            match = { FOO = "" }
            run = ["empty"]
        "#,
        );
        assert_eq!(names(&rs.plan(&ev("", &[]))), ["neg", "any-of-negations"]);
        assert_eq!(
            names(&rs.plan(&ev("", &[("FOO", "")]))),
            ["star", "neg", "any-of-negations", "empty"]
        );
        assert_eq!(
            names(&rs.plan(&ev("", &[("FOO", "bar")]))),
            ["star", "any-of-negations"]
        );
        assert_eq!(
            names(&rs.plan(&ev("", &[("FOO", "a")]))),
            ["star", "neg", "any-of-negations"]
        );
    }

    #[test]
    fn hostile_values_stay_one_argument() {
        let rs = rules(
            r#"
            [[rule]]
            name = "r"
            run = ["/bin/h", "$X", "${X}B", "$$X", "$UNSET", "pre-${UNSET}-post"]
        "#,
        );
        let jobs = rs.plan(&ev("", &[("X", "x; rm -rf /")]));
        assert_eq!(
            argv(&jobs[0]),
            [
                "/bin/h",
                "x; rm -rf /",
                "x; rm -rf /B",
                "$X",
                "",
                "pre--post"
            ]
        );
        // Non-UTF-8 values pass through as bytes.
        let e = Event::from_vars(
            b"",
            [
                (&b"ACTION"[..], &b"add"[..]),
                (b"DEVPATH", b"/x"),
                (b"X", b"\xff\xfe"),
            ],
        )
        .unwrap();
        assert_eq!(rs.plan(&e)[0].argv[1].as_bytes(), b"\xff\xfe");
    }

    fn script(path: &Path, mode: u32) {
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn hotplug_d_order() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for sub in ["usb", "default", "net"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        script(&d.join("usb/20-b.hotplug"), 0o755);
        script(&d.join("usb/10-a.hotplug"), 0o755);
        script(&d.join("usb/05-noexec.hotplug"), 0o644);
        script(&d.join("usb/30-other.sh"), 0o755);
        script(&d.join("usb/.hidden.hotplug"), 0o755);
        fs::create_dir(d.join("usb/40-dir.hotplug")).unwrap();
        script(&d.join("default/99-log.hotplug"), 0o755);
        script(&d.join("default/01-first.hotplug"), 0o755);
        script(&d.join("net/50-net.hotplug"), 0o755);
        std::os::unix::fs::symlink(d.join("usb/10-a.hotplug"), d.join("usb/15-link.hotplug"))
            .unwrap();

        let text = format!(
            "[daemon]\nhotplug_d = {:?}\n[[rule]]\nname = \"first\"\nrun = [\"/bin/a\"]\n\
             [[rule]]\nname = \"stop\"\nmatch = {{ STOP = \"1\" }}\nrun = [\"/bin/b\"]\nlast = true\n",
            d.to_str().unwrap()
        );
        let rs = rules(&text);
        assert_eq!(rs.hotplug_d(), Some(d));
        let jobs = rs.plan(&ev("usb", &[]));
        assert_eq!(
            names(&jobs),
            [
                "first",
                "hotplug.d/usb/10-a.hotplug",
                "hotplug.d/usb/15-link.hotplug",
                "hotplug.d/usb/20-b.hotplug",
                "hotplug.d/default/01-first.hotplug",
                "hotplug.d/default/99-log.hotplug",
            ]
        );
        let a = d.join("usb/10-a.hotplug");
        assert_eq!(jobs[1].argv, [a.as_os_str(), "usb".as_ref()]);
        assert_eq!(jobs[1].timeout, None);

        // A `last` rule that matched skips hotplug.d.
        assert_eq!(
            names(&rs.plan(&ev("usb", &[("STOP", "1")]))),
            ["first", "stop"]
        );

        // Unknown subsystem: only the defaults; argv[1] is still the subsystem.
        let jobs = rs.plan(&ev("input", &[]));
        assert_eq!(
            names(&jobs)[1..],
            [
                "hotplug.d/default/01-first.hotplug",
                "hotplug.d/default/99-log.hotplug"
            ]
        );
        assert_eq!(jobs[1].argv[1], "input");

        // `default` itself runs once.
        assert_eq!(rs.plan(&ev("default", &[])).len(), 3);

        // Subsystems that would leave the directory get only the defaults.
        for bad in ["..", ".", "../usb", "usb/..", ""] {
            let jobs = rs.plan(&ev("", &[("SUBSYSTEM", bad)]));
            assert_eq!(jobs.len(), 3, "{bad:?}: {jobs:?}");
        }

        // A missing hotplug.d is fine.
        let text = "[daemon]\nhotplug_d = \"/nonexistent/hotplug.d\"\n";
        assert!(rules(text).plan(&ev("usb", &[])).is_empty());
    }

    #[test]
    fn node_keys() {
        let rs = rules(
            r#"
            [[rule]]
            name = "disk"
            match = { SUBSYSTEM = "block" }
            group = "root"
            mode = "0660"
            links = ["disk/by-diskseq/$DISKSEQ", "disk/by-diskseq/$DISKSEQ"]
            [[rule]]
            name = "owner"
            match = { DEVNAME = "sda" }
            owner = 7
            mode = "640"
            links = ["disk/first"]
            link_priority = -3
            [[rule]]
            name = "log"
            run = ["/bin/log"]
        "#,
        );
        assert!(rs.has_nodes());
        let add = ev("block", &[("DEVNAME", "sda"), ("DISKSEQ", "9")]);
        // A node-only rule plans no handler.
        assert_eq!(names(&rs.plan(&add)), ["log"]);
        let a = rs.node_actions(&add).unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (Some(7), Some(0), Some(0o640)));
        assert_eq!(
            a.links,
            [
                (b"disk/by-diskseq/9".to_vec(), 0),
                (b"disk/first".to_vec(), -3)
            ]
        );
        let remove = Event::from_vars(
            b"block",
            [(&b"ACTION"[..], &b"remove"[..]), (b"DEVPATH", b"/x")],
        )
        .unwrap();
        assert_eq!(rs.node_actions(&remove), None);
        // A link naming an unset variable is not made.
        let no_seq = rs
            .node_actions(&ev("block", &[("DEVNAME", "sda")]))
            .unwrap();
        assert_eq!(no_seq.links, [(b"disk/first".to_vec(), -3)]);
        assert_eq!(rs.node_actions(&ev("usb", &[])), None);
        assert!(!rules(RULES).has_nodes());
    }

    #[test]
    fn node_key_errors() {
        let err = |text: &str| match Config::parse(text, Path::new("r.toml")) {
            Ok(_) => panic!("no error for {text}"),
            Err(e) => e.to_string(),
        };
        let rule = |body: &str| format!("[[rule]]\nname = \"a\"\n{body}\n");
        assert_eq!(
            err(&rule("links = [\"ok\", \"disk/../../etc/passwd\"]")),
            "r.toml:3:16: bad link \"disk/../../etc/passwd\": a path relative to dev_dir, without `..`"
        );
        assert_eq!(
            err(&rule("links = [\"/abs\"]")),
            "r.toml:3:10: bad link \"/abs\": a path relative to dev_dir, without `..`"
        );
        assert_eq!(
            err(&rule("group = \"no-such-group-hotplugd\"")),
            "r.toml:3:9: unknown group \"no-such-group-hotplugd\" (not in /etc/group)"
        );
        assert_eq!(
            err(&rule("owner = \"no-such-user-hotplugd\"")),
            "r.toml:3:9: unknown user \"no-such-user-hotplugd\" (not in /etc/passwd)"
        );
        assert_eq!(
            err(&rule("mode = \"0998\"")),
            "r.toml:3:8: bad mode \"0998\": expected 1 to 4 octal digits such as \"0660\""
        );
        assert_eq!(
            err(&rule("mode = 660")),
            "r.toml:3:8: invalid type: integer `660`, expected an octal string such as \"0660\""
        );
        assert_eq!(
            err(&rule("link_priority = 1")),
            "r.toml:1:1: missing field `run` (or a node key: `owner`, `group`, `mode`, `links`)"
        );
    }

    #[test]
    fn empty_set() {
        let rs = RuleSet::default();
        assert!(rs.is_empty());
        assert_eq!(rs.len(), 0);
        assert!(rs.plan(&ev("usb", &[])).is_empty());
    }
}
