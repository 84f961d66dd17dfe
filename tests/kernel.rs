//! The real-kernel test: boots Debian's User-Mode Linux (a Linux 6.1 kernel that runs as an
//! ordinary process) with a host directory as its root (hostfs), makes the kernel run our
//! `hotplug` shim as its uevent helper and `hotplugd` as the daemon, provokes real uevents
//! (modules, a dummy net device, loop devices, uevent writes, a ubd disk hot-added and
//! removed from the host through `uml_mconsole`) and checks on the host what the handler
//! recorded against what the kernel sent. How it works: `tests/kernel/README.md`.
//!
//! Seven boots, one per scenario, each its own `#[test]`:
//! * `burst_is_handled_once_in_order`: daemon first, then the events.
//! * `early_events_spool_until_the_daemon_starts`: helper set with no daemon.
//! * `sigkill_mid_burst_loses_nothing`: the daemon is SIGKILLed while a handler runs and
//!   restarted.
//! * `netlink_source_without_a_helper`: helper path empty, events from the kernel's
//!   netlink broadcast only.
//! * `both_sources_run_each_event_once`: helper and netlink together.
//! * `remove_coalesces_with_its_queued_add`: a device that comes and goes while
//!   handlers are paused.
//! * `netlink_overflow_is_counted_and_rescanned`: the daemon is stopped (SIGSTOP) while
//!   events overflow a tiny netlink receive buffer.
//!
//! Needs root and the Debian packages `user-mode-linux uml-utilities busybox-static`
//! (`scripts/install-test-deps.sh`). Without them each test prints why and passes, unless
//! `CI=true`, where a missing prerequisite fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write as _};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);
/// From starting the kernel to the guest saying all events are made.
const PROVOKE_DEADLINE: Duration = Duration::from_secs(90);
/// From then until every event the helper ran for has been handled.
const HANDLED_DEADLINE: Duration = Duration::from_secs(60);
/// Give up earlier when the handler record has not grown for this long: longer than the
/// longest gap timeout the test configures (20 s), and a handler takes under a second.
const NO_PROGRESS: Duration = Duration::from_secs(30);
/// How long the record must stay unchanged once complete.
const QUIET: Duration = Duration::from_millis(500);
/// From asking the guest to power off until the kernel process is gone.
const POWEROFF_DEADLINE: Duration = Duration::from_secs(20);

/// Variables the kernel adds for the helper only (not part of the uevent itself).
const HELPER_ONLY: &[&str] = &["HOME", "PATH"];

// ---------------------------------------------------------------------------------------
// Prerequisites

struct Prereqs {
    kernel: PathBuf,
    busybox: PathBuf,
    mconsole: PathBuf,
}

/// Everything the test needs, or None (skip) with the reason printed. Under `CI=true` a
/// missing prerequisite is a failure instead.
fn prerequisites() -> Option<Prereqs> {
    match find_prerequisites() {
        Ok(p) => Some(p),
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("kernel test prerequisites missing under CI=true: {why} (run scripts/install-test-deps.sh as root)");
            }
            // Straight to fd 2: eprintln! is captured by the test harness and a passing
            // test's output is never shown.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED kernel test: {why} (scripts/install-test-deps.sh installs what it needs)"
            );
            None
        }
    }
}

fn find_prerequisites() -> Result<Prereqs, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    let kernel = ["/usr/bin/linux.uml", "/usr/bin/linux"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("no User-Mode Linux kernel (/usr/bin/linux.uml; package user-mode-linux)")?;
    let modules = PathBuf::from("/usr/lib/uml/modules");
    if !fs::read_dir(&modules)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err("no UML modules in /usr/lib/uml/modules (package user-mode-linux)".into());
    }
    let mconsole = PathBuf::from("/usr/bin/uml_mconsole");
    if !mconsole.is_file() {
        return Err("no /usr/bin/uml_mconsole (package uml-utilities)".into());
    }
    let busybox = PathBuf::from("/bin/busybox");
    match is_static(&busybox) {
        Ok(true) => {}
        Ok(false) => {
            return Err("/bin/busybox is dynamically linked (package busybox-static)".into())
        }
        Err(e) => return Err(format!("/bin/busybox: {e} (package busybox-static)")),
    }
    for bin in [
        env!("CARGO_BIN_EXE_hotplug"),
        env!("CARGO_BIN_EXE_hotplugd"),
        env!("CARGO_BIN_EXE_hotplugctl"),
    ] {
        // The guest has no libc. A plain `cargo test` links dynamically; scripts/test.sh
        // builds through scripts/cargo-static, and under CI=true a missing one fails.
        if !is_static(Path::new(bin)).unwrap_or(false) {
            return Err(format!(
                "{bin} is not statically linked and the guest root has no libc \
                 (run through scripts/cargo-static test, as scripts/test.sh does)"
            ));
        }
    }
    Ok(Prereqs {
        kernel,
        busybox,
        mconsole,
    })
}

/// An ELF file with no program interpreter (PT_INTERP) needs no dynamic loader or libc.
fn is_static(path: &Path) -> Result<bool, String> {
    let data = fs::read(path).map_err(|e| e.to_string())?;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not a 64-bit ELF file".into());
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("truncated ELF header".into());
    };
    for i in 0..phnum {
        match u32_at(phoff + i * phentsize) {
            Some(3) => return Ok(false), // PT_INTERP
            Some(_) => {}
            None => return Err("truncated program headers".into()),
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// The guest root and the kernel process

/// What a scenario's host side does while the guest runs.
#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Main,
    Early,
    Kill,
    Netlink,
    Both,
    Coalesce,
    Overflow,
    /// A benchmark, not a check: `storm_bench` (ignored by default).
    Storm,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Main => "main",
            Scenario::Early => "early",
            Scenario::Kill => "kill",
            Scenario::Netlink => "netlink",
            Scenario::Both => "both",
            Scenario::Coalesce => "coalesce",
            Scenario::Overflow => "overflow",
            Scenario::Storm => "storm",
        }
    }
    /// How long the handler stays busy (µs): long enough that handlers would overlap if
    /// the daemon ran two at once, and in `kill` long enough to be caught mid-run.
    fn handler_usleep(self) -> u32 {
        match self {
            Scenario::Kill => 200_000,
            _ => 30_000,
        }
    }
    /// How long the daemon waits for a missing SEQNUM. `main` has real gaps (the network
    /// namespace) and keeps the default 2 s; a helper that a loaded host starts later
    /// than that may then be run late (see [`declared_late`]). The others have no gaps,
    /// and a long timeout makes their order check strict.
    fn gap_timeout(self) -> &'static str {
        match self {
            Scenario::Main | Scenario::Overflow => "2s",
            _ => "20s",
        }
    }
    fn sources(self) -> &'static str {
        match self {
            Scenario::Netlink | Scenario::Overflow => r#"["netlink"]"#,
            Scenario::Both => r#"["fifo", "netlink"]"#,
            _ => r#"["fifo"]"#,
        }
    }
}

/// `overflow`: room for a handful of datagrams, so a stopped daemon overflows it at
/// once; and the rescan's events (no SEQNUM) go to their own record.
const OVERFLOW_CONFIG: &str = r#"netlink_buffer = 4096

[[rule]]
name = "rescan"
match = { SEQNUM = "!*", DEVPATH = "/devices/virtual/net/lo" }
run = ["/bin/sh", "-c", "echo \"$$1 $$2\" >> /results/rescan.log", "sh", "$ACTION", "$DEVPATH"]
last = true
"#;

/// `storm`: the benchmark's one rule, the static C handler of benches/c/handler.c.
/// No real gaps here, and UML starts a helper seconds late under a storm: a long gap
/// timeout keeps the order strict.
const STORM_CONFIG: &str = r#"# Written by tests/kernel.rs (storm benchmark).
[daemon]
seqnum_file = "/sys/kernel/uevent_seqnum"
gap_timeout = "60s"
sources = ["fifo"]

[[rule]]
name = "record"
run = ["/test/handler", "/results/records"]
"#;

/// The daemon's config: one rule for every event, running the recording handler.
/// Coalescing is off but in `coalesce`: the other scenarios' contract is every SEQNUM
/// handled exactly once, and they make add/remove pairs (d0, d1, ubdb) that coalescing
/// may legitimately drop.
fn daemon_config(scenario: Scenario) -> String {
    if scenario == Scenario::Storm {
        return STORM_CONFIG.to_owned();
    }
    format!(
        r#"# Written by tests/kernel.rs.
[daemon]
seqnum_file = "/sys/kernel/uevent_seqnum"
coalesce = {}
gap_timeout = "{}"
sources = {}
{}

[[rule]]
name = "record"
match.SEQNUM = "?*"
run = ["/test/handler.sh"]
"#,
        scenario == Scenario::Coalesce,
        scenario.gap_timeout(),
        scenario.sources(),
        if scenario == Scenario::Overflow {
            OVERFLOW_CONFIG
        } else {
            ""
        }
    )
}

fn build_root(pre: &Prereqs, root: &Path, scenario: Scenario) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("building the guest root: {what}: {e}");
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "lib/modules",
        "test/bin",
        "results/kernel",
    ] {
        fs::create_dir_all(root.join(d)).map_err(|e| io(d, e))?;
    }
    link_or_copy(&pre.busybox, &root.join("bin/busybox")).map_err(|e| io("busybox", e))?;
    let list = Command::new(&pre.busybox)
        .arg("--list")
        .output()
        .map_err(|e| io("busybox --list", e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).map_err(|e| io(applet, e))?;
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel");
    for script in [
        "init.sh",
        "trace-helper.sh",
        "trace-netlink.sh",
        "handler.sh",
    ] {
        let to = root.join("test").join(script);
        fs::copy(src.join(script), &to).map_err(|e| io(script, e))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).map_err(|e| io(script, e))?;
    }
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_hotplug"), "hotplug"),
        (env!("CARGO_BIN_EXE_hotplugd"), "hotplugd"),
        (env!("CARGO_BIN_EXE_hotplugctl"), "hotplugctl"),
    ] {
        link_or_copy(Path::new(bin), &root.join("test/bin").join(name)).map_err(|e| io(name, e))?;
    }
    let files = [
        ("test/hotplugd.toml", daemon_config(scenario)),
        ("test/scenario", format!("{}\n", scenario.name())),
        (
            "test/handler-usleep",
            format!("{}\n", scenario.handler_usleep()),
        ),
    ];
    for (name, text) in files {
        fs::write(root.join(name), text).map_err(|e| io(name, e))?;
    }
    // Modules: init.sh mounts the host's /usr/lib/uml/modules on /lib/modules (hostfs).
    Ok(())
}

/// A hard link where possible (the binaries are big, and nothing here writes to them),
/// else a copy.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ()))
}

/// The running kernel. Dropping it makes sure it and every process it started are gone.
struct Uml {
    child: Child,
    mconsole_bin: PathBuf,
    socket: PathBuf,
    console: PathBuf,
    started: Instant,
}

impl Uml {
    fn boot(pre: &Prereqs, dir: &Path, root: &Path, umid: &str) -> Result<Uml, String> {
        let uml_dir = dir.join("uml");
        fs::create_dir_all(&uml_dir).map_err(|e| e.to_string())?;
        let console = dir.join("console.log");
        let out = fs::File::create(&console).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = Command::new(&pre.kernel)
            .args([
                "mem=256M".to_string(),
                format!("umid={umid}"),
                format!("uml_dir={}", uml_dir.display()),
                "rootfstype=hostfs".to_string(),
                format!("rootflags={}", root.display()),
                "rw".to_string(),
                "init=/test/init.sh".to_string(),
                "con=null".to_string(),
                "con0=null,fd:1".to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: UML runs every guest address space as a host
            // process, and all of them must go when the test ends.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", pre.kernel.display()))?;
        Ok(Uml {
            child,
            mconsole_bin: pre.mconsole.clone(),
            socket: uml_dir.join(umid).join("mconsole"),
            console,
            started,
        })
    }

    fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Err if the kernel process already ended (with what the console said).
    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the kernel exited early ({status}); console ends with:\n{}",
                tail(&self.console, 30)
            )),
            Err(e) => Err(format!("waiting for the kernel: {e}")),
        }
    }

    /// One uml_mconsole command, with a deadline. Returns its stdout ("OK ..." or "ERR ...").
    fn mconsole(&self, command: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.mconsole_bin);
        cmd.arg(&self.socket).args(command.split(' '));
        let out = run_with_deadline(cmd, Duration::from_secs(10))?;
        Ok(out.trim().to_string())
    }

    /// Wait for the guest's own poweroff; Err (and kill) if it does not come in time.
    fn wait_exit(&mut self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < end => sleep(POLL),
                Ok(None) => return Err(format!("the guest did not power off within {deadline:?}")),
                Err(e) => return Err(format!("waiting for the kernel: {e}")),
            }
        }
        // The main process is gone; its helpers must follow (they die with it).
        let end = Instant::now() + Duration::from_secs(5);
        while !group_members(self.pgid()).is_empty() {
            if Instant::now() > end {
                return Err(format!(
                    "UML processes left after poweroff: {:?}",
                    group_members(self.pgid())
                ));
            }
            sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Uml {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Politely first (the kernel tears its processes down itself), then by force.
            let _ = self.mconsole("halt");
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                sleep(POLL);
            }
        }
        let pgid = self.pgid();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: kill has no memory effects; the group is the one we created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = self.child.try_wait();
            if group_members(pgid).is_empty() || Instant::now() > end {
                break;
            }
            sleep(POLL);
        }
        let _ = self.child.wait();
        let left = group_members(pgid);
        if !left.is_empty() {
            eprintln!("WARNING: UML processes still there after SIGKILL: {left:?}");
        }
    }
}

/// Live processes in process group `pgid` (from /proc/*/stat), zombies excluded.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {deadline:?}"));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    Ok(out)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// What the guest left in /results

/// One helper run as the kernel started it: argv[1] and its environment, in order.
#[derive(Debug)]
struct KernelEvent {
    argv1: String,
    env: Vec<(String, String)>,
}

impl KernelEvent {
    fn get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// /results/kernel/<SEQNUM>, written by trace-helper.sh.
fn read_trace(results: &Path) -> BTreeMap<u64, KernelEvent> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(results.join("kernel")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(seq) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut ev = KernelEvent {
            argv1: String::new(),
            env: Vec::new(),
        };
        for line in text.lines() {
            if let Some(a) = line.strip_prefix("argv1=") {
                ev.argv1 = a.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                ev.env.push((k.to_string(), v.to_string()));
            }
        }
        out.insert(seq, ev);
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Rec {
    Start {
        seq: u64,
        action: String,
        devpath: String,
        subsystem: String,
    },
    Env {
        seq: u64,
        key: String,
        value: String,
    },
    Overlap {
        seq: u64,
        holder: String,
    },
    End {
        seq: u64,
    },
    Killed,
    Restarted,
}

/// /results/handler.log, written by handler.sh (and the `killed`/`restarted` marks of
/// init.sh). A line that parses as nothing is an error: the record must not be garbled.
fn read_handler_log(results: &Path) -> Result<Vec<Rec>, String> {
    let text = match fs::read_to_string(results.join("handler.log")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("handler.log: {e}")),
    };
    let mut recs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || format!("handler.log:{}: garbled line {line:?}", i + 1);
        let mut words = line.splitn(2, ' ');
        let kind = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        let seq_of = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let rec = match kind {
            "start" => {
                let f: Vec<&str> = rest.split(' ').collect();
                if f.len() != 4 {
                    return Err(bad());
                }
                Rec::Start {
                    seq: seq_of(f[0])?,
                    action: f[1].into(),
                    devpath: f[2].into(),
                    subsystem: f[3].into(),
                }
            }
            "env" => {
                let (seq, kv) = rest.split_once(' ').ok_or_else(bad)?;
                let (key, value) = kv.split_once('=').ok_or_else(bad)?;
                Rec::Env {
                    seq: seq_of(seq)?,
                    key: key.into(),
                    value: value.into(),
                }
            }
            "overlap" => {
                let (seq, holder) = rest.split_once(' ').unwrap_or((rest, ""));
                Rec::Overlap {
                    seq: seq_of(seq)?,
                    holder: holder.into(),
                }
            }
            "end" => Rec::End { seq: seq_of(rest)? },
            "killed" => Rec::Killed,
            "restarted" => Rec::Restarted,
            _ => return Err(bad()),
        };
        recs.push(rec);
    }
    Ok(recs)
}

fn started(recs: &[Rec]) -> Vec<u64> {
    recs.iter()
        .filter_map(|r| match r {
            Rec::Start { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn read_num(results: &Path, name: &str) -> Result<u64, String> {
    let text =
        fs::read_to_string(results.join(name)).map_err(|e| format!("/results/{name}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("/results/{name}: not a number: {text:?}"))
}

/// SEQNUMs in (from, to]: the ones the kernel spent on a network namespace's devices.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    from: u64,
    to: u64,
}

impl Span {
    fn contains(&self, s: &u64) -> bool {
        self.from < *s && *s <= self.to
    }
    fn iter(&self) -> impl Iterator<Item = u64> {
        self.from + 1..=self.to
    }
}

/// /results/netns "FROM TO": the SEQNUMs in (FROM, TO] the kernel spent on a network
/// namespace's devices, which may have no helper run. Empty if the scenario made none.
fn read_netns(results: &Path) -> Span {
    let text = fs::read_to_string(results.join("netns")).unwrap_or_default();
    let nums: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [from, to] => Span { from, to },
        _ => Span::default(),
    }
}

/// Everything one boot produced.
struct Run {
    /// SEQNUMs that may lack a helper run (network namespace events).
    netns: Span,
    before: u64,
    after: u64,
    trace: BTreeMap<u64, KernelEvent>,
    recs: Vec<Rec>,
    results: PathBuf,
    boot_to_init: Duration,
    total: Duration,
}

// ---------------------------------------------------------------------------------------
// Running a scenario

/// Boots the guest for `scenario`, drives it, waits for the handler to catch up, powers
/// off. Returns the records, or Err with what went wrong (the kernel is gone either way).
fn run(pre: &Prereqs, scenario: Scenario, dir: &Path) -> Result<Run, String> {
    let root = dir.join("root");
    let results = root.join("results");
    build_root(pre, &root, scenario)?;
    let umid = format!("hpt-{}-{}", scenario.name(), std::process::id());
    let t0 = Instant::now();
    let mut uml = Uml::boot(pre, dir, &root, &umid)?;

    // Until the guest has made all its events (answering its mconsole request on the way).
    let guest_log = results.join("guest.log");
    let mut boot_to_init = None;
    let end = Instant::now() + PROVOKE_DEADLINE;
    let mut mconsole_done = false;
    while !results.join("provoked").exists() {
        uml.check_running()?;
        if boot_to_init.is_none() && guest_log.exists() {
            boot_to_init = Some(uml.started.elapsed());
        }
        if !mconsole_done && results.join("mconsole.request").exists() {
            let outcome = hot_add_and_remove_ubd(&uml, dir);
            let note = match &outcome {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            fs::write(results.join("mconsole.done"), note).map_err(|e| e.to_string())?;
            outcome?;
            mconsole_done = true;
        }
        if Instant::now() > end {
            return Err(format!(
                "the guest did not finish making events within {PROVOKE_DEADLINE:?}; guest.log:\n{}",
                tail(&guest_log, 20)
            ));
        }
        sleep(POLL);
    }
    let before = read_num(&results, "before")?;
    let after = read_num(&results, "after")?;
    let netns = read_netns(&results);

    // Until every SEQNUM in (before, after] has reached the helper and every helper run
    // has been handled. On the deadline go on: the checks below say what is missing.
    let end = Instant::now() + HANDLED_DEADLINE;
    let (mut last_len, mut last_change) = (0, Instant::now());
    loop {
        uml.check_running()?;
        let trace = read_trace(&results);
        let log = fs::read_to_string(results.join("handler.log")).unwrap_or_default();
        let handled: BTreeSet<u64> = read_handler_log(&results)
            .map(|r| started(&r).into_iter().collect())
            .unwrap_or_default();
        // `overflow` has no record of the kernel's events (a second listener would
        // overflow too): its window is all broadcast, and its last event must be handled.
        let window_traced = if scenario == Scenario::Overflow {
            handled.contains(&after)
        } else {
            (before + 1..=after).all(|s| trace.contains_key(&s) || netns.contains(&s))
        };
        // Coalesced events never run: they count as done. (Only `coalesce` coalesces;
        // the others need not reread the daemon's log every poll.)
        let gone = match scenario {
            Scenario::Coalesce => coalesced(&results).unwrap_or_default(),
            _ => BTreeSet::new(),
        };
        let all_handled = trace
            .keys()
            .all(|s| handled.contains(s) || gone.contains(s));
        // The last handler must have finished too.
        let last_ended = log.lines().last().is_some_and(|l| l.starts_with("end "));
        if log.len() != last_len {
            (last_len, last_change) = (log.len(), Instant::now());
        }
        // ...and the record must stay still a moment, so that a stray extra run (a
        // duplicate) shows up before the guest goes down.
        if window_traced && all_handled && last_ended && last_change.elapsed() > QUIET {
            break;
        }
        if Instant::now() > end || last_change.elapsed() > NO_PROGRESS {
            eprintln!(
                "[{}] gave up waiting for the handler after {:.1?} (record unchanged for {:.1?})",
                scenario.name(),
                t0.elapsed(),
                last_change.elapsed()
            );
            break;
        }
        sleep(POLL);
    }

    fs::write(results.join("poweroff"), "").map_err(|e| e.to_string())?;
    uml.wait_exit(POWEROFF_DEADLINE)?;
    let total = t0.elapsed();
    drop(uml);
    Ok(Run {
        netns,
        before,
        after,
        trace: read_trace(&results),
        recs: read_handler_log(&results)?,
        results,
        boot_to_init: boot_to_init.unwrap_or_default(),
        total,
    })
}

/// Real device hotplug from outside: plug a disk image in as ubdb, then pull it out.
fn hot_add_and_remove_ubd(uml: &Uml, dir: &Path) -> Result<(), String> {
    let disk = dir.join("ubdb.img");
    let f = fs::File::create(&disk).map_err(|e| e.to_string())?;
    f.set_len(1 << 20).map_err(|e| e.to_string())?;
    let out = uml.mconsole(&format!("config ubdb={}", disk.display()))?;
    if !out.starts_with("OK") {
        return Err(format!("mconsole config ubdb: {out}"));
    }
    // The kernel may still hold the new disk open for a moment (partition scan).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let out = uml.mconsole("remove ubdb")?;
        if out.starts_with("OK") {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("mconsole remove ubdb: {out}"));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Runs the scenario in a temp dir; on failure keeps the dir and panics with the story.
fn scenario(pre: &Prereqs, scenario: Scenario, check: impl FnOnce(&Run) -> Result<String, String>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("hotplugd-kernel-{}-", scenario.name()))
        .tempdir()
        .expect("temp dir");
    let outcome = run(pre, scenario, dir.path()).and_then(|run| {
        // `overflow` has no record of what the kernel sent to compare with.
        let common = match scenario {
            Scenario::Overflow => Ok(()),
            _ => common_checks(&run),
        };
        let checks = common.and_then(|_| check(&run));
        match checks {
            Ok(summary) => {
                eprintln!(
                    "[{}] kernel reached init in {:.2?}, whole boot {:.2?}; window ({}, {}]: {summary}",
                    scenario.name(),
                    run.boot_to_init,
                    run.total,
                    run.before,
                    run.after
                );
                Ok(())
            }
            Err(e) => Err(format!("{e}\n{}", diagnostics(&run.results))),
        }
    });
    if let Err(e) = outcome {
        let kept = dir.keep();
        panic!(
            "[{}] {e}\n(guest root kept in {})",
            scenario.name(),
            kept.display()
        );
    }
}

fn diagnostics(results: &Path) -> String {
    format!(
        "--- guest.log:\n{}\n--- daemon.log (tail):\n{}\n--- runtime dir at the end:\n{}",
        tail(&results.join("guest.log"), 40),
        tail(&results.join("daemon.log"), 40),
        tail(&results.join("runtime-dir.txt"), 20)
    )
}

// ---------------------------------------------------------------------------------------
// Checks

/// What holds in every scenario: the kernel ran the helper for the whole window, and
/// each handled event carries the kernel's own environment.
fn common_checks(run: &Run) -> Result<(), String> {
    if run.after <= run.before {
        return Err(format!(
            "no events made: before {} after {}",
            run.before, run.after
        ));
    }
    // The helper runs for every SEQNUM of the window except those of a network
    // namespace's net devices (kobj_usermode_filter); exec failures would show here too.
    let untraced: Vec<u64> = (run.before + 1..=run.after)
        .filter(|s| !run.trace.contains_key(s) && !run.netns.contains(s))
        .collect();
    if !untraced.is_empty() {
        return Err(format!(
            "the kernel never ran the helper for SEQNUM {untraced:?} of ({}, {}] \
             (a kernel/harness problem, not the daemon's)",
            run.before, run.after
        ));
    }
    let outside: Vec<u64> = run
        .trace
        .keys()
        .copied()
        .filter(|s| *s <= run.before || *s > run.after)
        .collect();
    if !outside.is_empty() {
        return Err(format!(
            "helper runs outside the window ({}, {}]: {outside:?}",
            run.before, run.after
        ));
    }
    for (seq, ev) in &run.trace {
        for key in ["ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"] {
            if ev.get(key).is_none() {
                return Err(format!("the kernel's env for {seq} has no {key}: {ev:?}"));
            }
        }
        if ev.get("SEQNUM") != Some(&seq.to_string()) || ev.get("SUBSYSTEM") != Some(&ev.argv1) {
            return Err(format!("helper record {seq} is inconsistent: {ev:?}"));
        }
    }

    // Handled events: only ones the kernel sent, each with the kernel's environment.
    let mut env: BTreeMap<u64, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in &run.recs {
        if let Rec::Env { seq, key, value } = r {
            env.entry(*seq)
                .or_default()
                .insert((key.clone(), value.clone()));
        }
    }
    for r in &run.recs {
        let Rec::Start {
            seq,
            action,
            devpath,
            subsystem,
        } = r
        else {
            continue;
        };
        let Some(k) = run.trace.get(seq) else {
            return Err(format!(
                "handled SEQNUM {seq}, which the kernel never sent to the helper"
            ));
        };
        if k.get("ACTION") != Some(action)
            || k.get("DEVPATH") != Some(devpath)
            || k.get("SUBSYSTEM") != Some(subsystem)
        {
            return Err(format!(
                "handler for {seq} saw {action} {devpath} {subsystem}; the kernel sent {:?} {:?} {:?}",
                k.get("ACTION"),
                k.get("DEVPATH"),
                k.get("SUBSYSTEM")
            ));
        }
        let got = env.get(seq).cloned().unwrap_or_default();
        for (key, value) in &k.env {
            if !got.contains(&(key.clone(), value.clone())) {
                return Err(format!(
                    "handler for {seq} did not get {key}={value} from the kernel's env; it got {got:?}"
                ));
            }
        }
        let extra: Vec<&String> = got
            .iter()
            .filter(|(key, value)| {
                !key.starts_with("HOTPLUGD_") && k.get(key) != Some(value.as_str())
            })
            .map(|(key, _)| key)
            .collect();
        if !extra.is_empty() {
            return Err(format!(
                "handler for {seq} got variables the kernel did not send: {extra:?}"
            ));
        }
    }
    Ok(())
}

/// The kernel's events in the window, each with its variables, for a human to read.
fn describe(trace: &BTreeMap<u64, KernelEvent>, seq: u64) -> String {
    let Some(ev) = trace.get(&seq) else {
        return format!("{seq}: ?");
    };
    let vars: Vec<String> = ev
        .env
        .iter()
        .filter(|(k, _)| !HELPER_ONLY.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.join(" ")
}

/// Strict serialization: start/end strictly alternate (start s, end s, start t, end t,
/// ...), and no handler saw the lock held. `exempt` may overlap (the orphan of a kill).
fn check_serialized(recs: &[Rec], exempt: Option<u64>) -> Result<(), String> {
    let mut running: Vec<u64> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        match r {
            Rec::Start { seq, .. } => {
                let others: Vec<u64> = running
                    .iter()
                    .copied()
                    .filter(|s| Some(*s) != exempt)
                    .collect();
                if !others.is_empty() && Some(*seq) != exempt {
                    return Err(format!(
                        "two handlers at once: {seq} started while {others:?} ran (record {i})"
                    ));
                }
                running.push(*seq);
            }
            Rec::End { seq } => {
                let Some(pos) = running.iter().position(|s| s == seq) else {
                    return Err(format!("end {seq} without a start (record {i})"));
                };
                running.remove(pos);
            }
            Rec::Overlap { seq, holder } => {
                let holder_seq = holder.parse::<u64>().ok();
                if exempt.is_none() || (Some(*seq) != exempt && holder_seq != exempt) {
                    return Err(format!("handler {seq} found the lock held by {holder:?}"));
                }
            }
            _ => {}
        }
    }
    if !running.is_empty() {
        return Err(format!("handlers that never ended: {running:?}"));
    }
    Ok(())
}

fn counts(seqs: &[u64]) -> BTreeMap<u64, usize> {
    let mut c = BTreeMap::new();
    for s in seqs {
        *c.entry(*s).or_insert(0) += 1;
    }
    c
}

/// SEQNUMs the daemon itself says it ran out of order because their helper came after
/// the gap had timed out: it logged both `SEQNUM A..=B did not arrive within ...` with
/// the SEQNUM in A..=B and then `late SEQNUM ...`. Only `main`, with its short gap
/// timeout, tolerates these.
fn declared_late(results: &Path) -> BTreeSet<u64> {
    let log = fs::read_to_string(results.join("daemon.log")).unwrap_or_default();
    let mut skipped = Vec::new();
    let mut late = BTreeSet::new();
    for line in log.lines() {
        if let Some((_, r)) = line.split_once("] SEQNUM ") {
            let range = r.split(' ').next().unwrap_or("");
            if let Some((a, b)) = range.split_once("..=") {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    skipped.push(a..=b);
                }
            }
        } else if let Some((_, r)) = line.split_once("] late ") {
            if let Some(Ok(n)) = r.split(' ').next().map(str::parse::<u64>) {
                if skipped.iter().any(|g| g.contains(&n)) {
                    late.insert(n);
                }
            }
        }
    }
    late
}

/// Each traced SEQNUM handled exactly once, in ascending order; `late` ones (declared by
/// the daemon) may come after higher ones.
fn check_once_in_order(run: &Run, late: &BTreeSet<u64>) -> Result<(), String> {
    let seqs = started(&run.recs);
    let missing: Vec<u64> = run
        .trace
        .keys()
        .copied()
        .filter(|s| !seqs.contains(s))
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|s| describe(&run.trace, *s)).collect();
        return Err(format!(
            "never handled ({} of {}):\n  {}",
            missing.len(),
            run.trace.len(),
            list.join("\n  ")
        ));
    }
    let dups: Vec<(u64, usize)> = counts(&seqs).into_iter().filter(|(_, n)| *n > 1).collect();
    if !dups.is_empty() {
        return Err(format!("handled more than once (SEQNUM, times): {dups:?}"));
    }
    let ordered: Vec<u64> = seqs.iter().copied().filter(|s| !late.contains(s)).collect();
    if let Some(w) = ordered.windows(2).find(|w| w[0] > w[1]) {
        return Err(format!(
            "out of order: {} handled before {}; whole order {seqs:?} (declared late: {late:?})",
            w[0], w[1]
        ));
    }
    Ok(())
}

/// The scenario really made the kind of event it claims to.
fn expect_event(run: &Run, what: &str, pred: impl Fn(&KernelEvent) -> bool) -> Result<(), String> {
    if run.trace.values().any(pred) {
        Ok(())
    } else {
        let all: Vec<String> = run.trace.keys().map(|s| describe(&run.trace, *s)).collect();
        Err(format!(
            "the kernel sent no {what}; it sent:\n  {}",
            all.join("\n  ")
        ))
    }
}

fn is(ev: &KernelEvent, pairs: &[(&str, &str)]) -> bool {
    pairs.iter().all(|(k, v)| match v.strip_prefix('*') {
        Some(suffix) => ev.get(k).is_some_and(|x| x.ends_with(suffix)),
        None => ev.get(k) == Some(*v),
    })
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn burst_is_handled_once_in_order() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Main, |run| {
        expect_event(run, "dummy net device add", |e| {
            is(
                e,
                &[
                    ("ACTION", "add"),
                    ("SUBSYSTEM", "net"),
                    ("DEVPATH", "*/net/d0"),
                ],
            )
        })?;
        expect_event(run, "dummy net device remove", |e| {
            is(
                e,
                &[
                    ("ACTION", "remove"),
                    ("SUBSYSTEM", "net"),
                    ("DEVPATH", "*/net/d0"),
                ],
            )
        })?;
        expect_event(run, "module add", |e| {
            is(
                e,
                &[
                    ("ACTION", "add"),
                    ("SUBSYSTEM", "module"),
                    ("DEVPATH", "/module/loop"),
                ],
            )
        })?;
        expect_event(run, "loop block device with DEVNAME/MAJOR/MINOR", |e| {
            is(
                e,
                &[
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "loop0"),
                    ("MAJOR", "7"),
                    ("MINOR", "0"),
                ],
            )
        })?;
        expect_event(run, "synthetic add from a uevent write", |e| {
            is(
                e,
                &[("ACTION", "add"), ("DEVPATH", "/devices/virtual/net/lo")],
            )
        })?;
        expect_event(run, "ubdb hot-add with DEVNAME", |e| {
            is(
                e,
                &[
                    ("ACTION", "add"),
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "ubdb"),
                ],
            )
        })?;
        expect_event(run, "ubdb removal", |e| {
            is(
                e,
                &[
                    ("ACTION", "remove"),
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "ubdb"),
                ],
            )
        })?;
        expect_event(run, "platform device with MODALIAS", |e| {
            is(
                e,
                &[
                    ("SUBSYSTEM", "platform"),
                    ("MODALIAS", "platform:uml-blkdev"),
                ],
            )
        })?;
        // The network namespace really cost SEQNUMs without a helper run: a gap.
        let gaps: Vec<u64> = run
            .netns
            .iter()
            .filter(|s| !run.trace.contains_key(s))
            .collect();
        if gaps.is_empty() {
            return Err(format!(
                "the network namespace events {:?} made no SEQNUM gap",
                run.netns
            ));
        }
        let late = declared_late(&run.results);
        check_once_in_order(run, &late)?;
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{} events handled once each, in order, one at a time, past the gaps {gaps:?} \
             (helpers that came after their gap timed out, run late: {late:?})",
            run.trace.len()
        ))
    });
}

#[test]
fn early_events_spool_until_the_daemon_starts() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Early, |run| {
        let spooled_to = read_num(&run.results, "spooled_to")?;
        let spooled = read_num(&run.results, "spooled")?;
        if spooled != spooled_to - run.before {
            return Err(format!(
                "with no daemon, the spool should hold all {} events of ({}, {spooled_to}], it holds {spooled}",
                spooled_to - run.before,
                run.before
            ));
        }
        check_once_in_order(run, &BTreeSet::new())?;
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{spooled} spooled events then {} live, handled once each, in order, one at a time",
            run.after - spooled_to
        ))
    });
}

#[test]
fn sigkill_mid_burst_loses_nothing() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Kill, |run| {
        let kill_at = run
            .recs
            .iter()
            .position(|r| *r == Rec::Killed)
            .ok_or("no kill happened (see guest.log)")?;
        // (The new daemon may start a handler before init.sh writes this mark.)
        if !run.recs.contains(&Rec::Restarted) {
            return Err("no restart happened (see guest.log)".into());
        }
        // The handler running at the kill: started before it, not ended before it.
        let mut open: Vec<u64> = Vec::new();
        for r in &run.recs[..kill_at] {
            match r {
                Rec::Start { seq, .. } => open.push(*seq),
                Rec::End { seq } => open.retain(|s| s != seq),
                _ => {}
            }
        }
        if open.len() > 1 {
            return Err(format!("several handlers running at the kill: {open:?}"));
        }
        let orphan = open.first().copied();
        let seqs = started(&run.recs);
        let missing: Vec<u64> = run
            .trace
            .keys()
            .copied()
            .filter(|s| !seqs.contains(s))
            .collect();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|s| describe(&run.trace, *s)).collect();
            return Err(format!(
                "lost across the SIGKILL ({}):\n  {}",
                missing.len(),
                list.join("\n  ")
            ));
        }
        let dups: Vec<(u64, usize)> = counts(&seqs).into_iter().filter(|(_, n)| *n > 1).collect();
        let allowed = |s: u64, n: usize| Some(s) == orphan && n == 2;
        if let Some(bad) = dups.iter().find(|(s, n)| !allowed(*s, *n)) {
            return Err(format!(
                "handled more than once: {bad:?} (only the handler running at the kill, {orphan:?}, may run twice); all: {dups:?}"
            ));
        }
        // Each daemon's own starts ascend; the new one starts no lower than the orphan
        // (or than the last one finished, if nothing was running).
        let first_gen: Vec<u64> = started(&run.recs[..kill_at]);
        let second_gen: Vec<u64> = started(&run.recs[kill_at..]);
        for (name, g) in [
            ("before the kill", &first_gen),
            ("after the restart", &second_gen),
        ] {
            if let Some(w) = g.windows(2).find(|w| w[0] >= w[1]) {
                return Err(format!(
                    "out of order {name}: {} then {}; {g:?}",
                    w[0], w[1]
                ));
            }
        }
        let floor = orphan.unwrap_or_else(|| first_gen.last().map_or(0, |s| s + 1));
        if let Some(first) = second_gen.first() {
            if *first < floor {
                return Err(format!(
                    "after the restart the first handled was {first}, below {floor} (already handled)"
                ));
            }
        }
        check_serialized(&run.recs, orphan)?;
        Ok(format!(
            "{} events, {} handled before the SIGKILL, handler running at the kill: {orphan:?}, run twice: {}",
            run.trace.len(),
            first_gen.len(),
            dups.len()
        ))
    });
}

/// Lines of the daemon's log that contain `what`.
fn daemon_log_lines(results: &Path, what: &str) -> Vec<String> {
    fs::read_to_string(results.join("daemon.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// The SEQNUMs the daemon logged as coalesced, adds and removes:
/// "... coalesced 812 remove /devices/virtual/net/d0 (net) with its add (SEQNUM 809) ...".
fn coalesced(results: &Path) -> Result<BTreeSet<u64>, String> {
    let mut dropped = BTreeSet::new();
    for line in daemon_log_lines(results, "] coalesced ") {
        let rest = line.split_once("] coalesced ").map_or("", |(_, r)| r);
        let remove = rest.split(' ').next().and_then(|s| s.parse::<u64>().ok());
        let add = rest
            .split_once("(SEQNUM ")
            .and_then(|(_, r)| r.split(')').next())
            .and_then(|s| s.parse::<u64>().ok());
        let (Some(r), Some(a)) = (remove, add) else {
            return Err(format!("unreadable coalesce line: {line}"));
        };
        dropped.insert(r);
        dropped.insert(a);
    }
    Ok(dropped)
}

#[test]
fn netlink_source_without_a_helper() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Netlink, |run| {
        if daemon_log_lines(&run.results, "events from netlink)").is_empty() {
            return Err("the daemon did not say it reads netlink only".into());
        }
        // init.sh lists the runtime dir before powering off.
        let listing = fs::read_to_string(run.results.join("runtime-dir.txt")).unwrap_or_default();
        if listing.lines().any(|l| l.ends_with(" events")) {
            return Err(format!(
                "netlink only, yet the daemon made a FIFO:
{listing}"
            ));
        }
        expect_event(run, "dummy net device add", |e| {
            is(e, &[("ACTION", "add"), ("DEVPATH", "*/net/d0")])
        })?;
        expect_event(run, "ubdb hot-add with DEVNAME", |e| {
            is(e, &[("ACTION", "add"), ("DEVNAME", "ubdb")])
        })?;
        check_once_in_order(run, &BTreeSet::new())?;
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{} events broadcast on netlink with no helper, handled once each, in order, \
             with the helper's environment",
            run.trace.len()
        ))
    });
}

#[test]
fn both_sources_run_each_event_once() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Both, |run| {
        check_once_in_order(run, &BTreeSet::new())?;
        check_serialized(&run.recs, None)?;
        // Each event came twice, once from each source: the second copy was dropped.
        let dups = daemon_log_lines(&run.results, "] duplicate ").len();
        if dups != run.trace.len() {
            return Err(format!(
                "{} events but {dups} duplicates dropped: every event should arrive on \
                 both the FIFO and netlink",
                run.trace.len()
            ));
        }
        Ok(format!(
            "{} events each arrived on the FIFO and on netlink and ran once",
            run.trace.len()
        ))
    });
}

#[test]
fn remove_coalesces_with_its_queued_add() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Coalesce, |run| {
        let dropped = coalesced(&run.results)?;
        let net_pair = daemon_log_lines(&run.results, "] coalesced ")
            .iter()
            .any(|l| l.contains("/net/d0 (net) with its add"));
        if !net_pair {
            return Err("the d0 net device's add and remove were not coalesced".into());
        }
        let seqs = started(&run.recs);
        for s in run.trace.keys() {
            let n = seqs.iter().filter(|x| *x == s).count();
            match (dropped.contains(s), n) {
                (true, 0) | (false, 1) => {}
                (true, _) => return Err(format!("{s} was coalesced, yet it ran {n} times")),
                (false, _) => {
                    return Err(format!(
                        "{s} ({}) ran {n} times; expected once",
                        describe(&run.trace, *s)
                    ))
                }
            }
        }
        if let Some(w) = seqs.windows(2).find(|w| w[0] > w[1]) {
            return Err(format!("out of order: {} before {}", w[0], w[1]));
        }
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{} events: {} coalesced in add/remove pairs, {} handled in order",
            run.trace.len(),
            dropped.len(),
            seqs.len()
        ))
    });
}

#[test]
fn netlink_overflow_is_counted_and_rescanned() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Overflow, |run| {
        if daemon_log_lines(&run.results, "receive buffer overflowed (ENOBUFS)").is_empty() {
            return Err("no overflow was reported".into());
        }
        // "netlink: lost 83 events in the overflow: SEQNUM 760..=842"
        let lines = daemon_log_lines(&run.results, "events in the overflow: SEQNUM ");
        let [line] = lines.as_slice() else {
            return Err(format!("expected one loss count, got {lines:?}"));
        };
        let range = line.rsplit("SEQNUM ").next().unwrap_or("");
        let (lo, hi) = range
            .split_once("..=")
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .ok_or_else(|| format!("unreadable loss line: {line}"))?;
        if lo <= run.before || hi >= run.after {
            return Err(format!(
                "lost {lo}..={hi}, outside the window ({}, {})",
                run.before, run.after
            ));
        }
        // Every SEQNUM of the window ran once, in order, but those counted as lost.
        let seqs = started(&run.recs);
        let want: Vec<u64> = (run.before + 1..=run.after)
            .filter(|s| !(lo..=hi).contains(s))
            .collect();
        if seqs != want {
            return Err(format!(
                "handled {seqs:?}; expected the window ({}, {}] less the lost {lo}..={hi}: {want:?}",
                run.before, run.after
            ));
        }
        check_serialized(&run.recs, None)?;
        // The rescan queued an add for devices that exist.
        let rescan = fs::read_to_string(run.results.join("rescan.log")).unwrap_or_default();
        if !rescan.lines().any(|l| l == "add /devices/virtual/net/lo") {
            return Err(format!(
                "the rescan queued no add for lo; rescan.log:\n{rescan}"
            ));
        }
        Ok(format!(
            "{} lost of ({}, {}], counted exactly; {} handled in order; the rescan queued {} adds",
            hi - lo + 1,
            run.before,
            run.after,
            seqs.len(),
            rescan.lines().count()
        ))
    });
}

// ---------------------------------------------------------------------------------------
// The storm benchmark (not run by benches/run.sh: BENCHMARKS.md gives its command)

/// The kernel itself runs the helper for N `add` events written to a uevent file, one
/// boot per variant: hotplugd (shim, daemon, one handler at a time), busybox mdev with
/// /dev/mdev.seq, and a legacy helper script that runs the handler itself. Every variant
/// runs the same static handler (benches/c/handler.c, path in HOTPLUGD_BENCH_HANDLER),
/// which appends "SEQNUM MONOTONIC_NS". Prints one markdown row per variant. Needs what
/// the other kernel tests need. Not a check: ignored unless asked for.
#[test]
#[ignore]
fn storm_bench() {
    let Some(pre) = prerequisites() else { return };
    let handler = PathBuf::from(
        std::env::var("HOTPLUGD_BENCH_HANDLER")
            .expect("HOTPLUGD_BENCH_HANDLER: the static handler benches/run.sh builds"),
    );
    let n: u64 = std::env::var("HOTPLUGD_STORM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let variants =
        std::env::var("HOTPLUGD_STORM_VARIANTS").unwrap_or_else(|_| "hotplugd,mdev,legacy".into());
    println!("| helper (UML, N = {n}) | wall s (first write → last handler) | events/s | ordering violations | handler runs (distinct) |");
    println!("| --- | --- | --- | --- | --- |");
    for variant in variants.split(',') {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hotplugd-kstorm-{variant}-"))
            .tempdir()
            .expect("temp dir");
        let row = storm_once(&pre, &handler, variant, n, dir.path())
            .unwrap_or_else(|e| panic!("[storm {variant}] {e}"));
        println!("{row}");
    }
}

fn storm_once(
    pre: &Prereqs,
    handler: &Path,
    variant: &str,
    n: u64,
    dir: &Path,
) -> Result<String, String> {
    let root = dir.join("root");
    let results = root.join("results");
    build_root(pre, &root, Scenario::Storm)?;
    fs::create_dir_all(root.join("etc")).map_err(|e| e.to_string())?;
    fs::copy(handler, root.join("test/handler"))
        .map_err(|e| format!("{}: {e}", handler.display()))?;
    fs::write(root.join("test/storm-variant"), format!("{variant}\n"))
        .map_err(|e| e.to_string())?;
    fs::write(root.join("test/storm-n"), format!("{n}\n")).map_err(|e| e.to_string())?;
    let umid = format!("hpt-storm-{variant}-{}", std::process::id());
    let mut uml = Uml::boot(pre, dir, &root, &umid)?;
    uml.wait_exit(Duration::from_secs(600))?;
    let t0: i64 = fs::read_to_string(results.join("t0"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| {
            format!(
                "no t0; guest.log:\n{}",
                tail(&results.join("guest.log"), 20)
            )
        })?;
    let text = fs::read_to_string(results.join("records")).unwrap_or_default();
    let recs: Vec<(u64, i64)> = text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    if recs.len() as u64 != n {
        return Err(format!(
            "{} handler runs for {n} events; guest.log:\n{}",
            recs.len(),
            tail(&results.join("guest.log"), 20)
        ));
    }
    let last = recs.iter().map(|r| r.1).max().unwrap_or(t0);
    let wall = (last - t0) as f64 / 1e9;
    let violations = recs.windows(2).filter(|w| w[1].0 < w[0].0).count();
    let distinct: BTreeSet<u64> = recs.iter().map(|r| r.0).collect();
    Ok(format!(
        "| {variant} | {wall:.2} | {:.0} | {violations} | {} ({}) |",
        n as f64 / wall,
        recs.len(),
        distinct.len()
    ))
}
