//! The guest root and the kernel process.

use super::*;

/// What a scenario's host side does while the guest runs.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Scenario {
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
    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) fn handler_usleep(self) -> u32 {
        match self {
            Scenario::Kill => 200_000,
            _ => 30_000,
        }
    }
    /// How long the daemon waits for a missing SEQNUM. `main` has real gaps (the network
    /// namespace) and keeps the default 2 s; a helper that a loaded host starts later
    /// than that may then be run late (see [`declared_late`]). The others have no gaps,
    /// and a long timeout makes their order check strict.
    pub(crate) fn gap_timeout(self) -> &'static str {
        match self {
            Scenario::Main | Scenario::Overflow => "2s",
            _ => "20s",
        }
    }
    pub(crate) fn sources(self) -> &'static str {
        match self {
            Scenario::Netlink | Scenario::Overflow => r#"["netlink"]"#,
            Scenario::Both => r#"["fifo", "netlink"]"#,
            _ => r#"["fifo"]"#,
        }
    }
}

/// `overflow`: room for a handful of datagrams, so a stopped daemon overflows it at
/// once; and the rescan's events (no SEQNUM) go to their own record.
pub(crate) const OVERFLOW_CONFIG: &str = r#"netlink_buffer = 4096

[[rule]]
name = "rescan"
match = { SEQNUM = "!*", DEVPATH = "/devices/virtual/net/lo" }
run = ["/bin/sh", "-c", "echo \"$$1 $$2\" >> /results/rescan.log", "sh", "$ACTION", "$DEVPATH"]
last = true
"#;

/// `storm`: the benchmark's one rule, the static C handler of benches/c/handler.c.
/// No real gaps here, and UML starts a helper seconds late under a storm: a long gap
/// timeout keeps the order strict.
pub(crate) const STORM_CONFIG: &str = r#"# Written by tests/kernel/ (storm benchmark).
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
pub(crate) fn daemon_config(scenario: Scenario) -> String {
    if scenario == Scenario::Storm {
        return STORM_CONFIG.to_owned();
    }
    format!(
        r#"# Written by tests/kernel/.
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

# Node keys on a real hot-added disk: its mode, and a link that goes with it.
[[rule]]
name = "ubd-node"
match = {{ SUBSYSTEM = "block", DEVNAME = "ubd[b-z]" }}
mode = "0640"
links = ["disk/by-test/$DEVNAME"]
run = ["/test/node-snapshot.sh"]
"#,
        scenario == Scenario::Coalesce,
        scenario.gap_timeout(),
        scenario.sources(),
        match scenario {
            Scenario::Overflow => OVERFLOW_CONFIG,
            // Rebroadcast (issue 17): init.sh's listener on group 4 records each send.
            Scenario::Main => "rebroadcast = 4",
            _ => "",
        }
    )
}

pub(crate) fn build_root(pre: &Prereqs, root: &Path, scenario: Scenario) -> Result<(), String> {
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
        "node-snapshot.sh",
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
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ()))
}

/// The running kernel. Dropping it makes sure it and every process it started are gone.
pub(crate) struct Uml {
    pub(crate) child: Child,
    pub(crate) mconsole_bin: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) console: PathBuf,
    pub(crate) started: Instant,
}

impl Uml {
    pub(crate) fn boot(pre: &Prereqs, dir: &Path, root: &Path, umid: &str) -> Result<Uml, String> {
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

    pub(crate) fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Err if the kernel process already ended (with what the console said).
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
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
    pub(crate) fn mconsole(&self, command: &str) -> Result<String, String> {
        let mut cmd = Command::new(&self.mconsole_bin);
        cmd.arg(&self.socket).args(command.split(' '));
        let out = run_with_deadline(cmd, Duration::from_secs(10))?;
        Ok(out.trim().to_string())
    }

    /// Wait for the guest's own poweroff; Err (and kill) if it does not come in time.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> Result<(), String> {
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
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
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

pub(crate) fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Result<String, String> {
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

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
