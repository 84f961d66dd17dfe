//! A small harness for running the real binaries in a temp runtime dir: a `Daemon` that is
//! awaited until ready (never a fixed sleep), shims fired with an event environment, and a
//! recording handler whose log tells what ran, in which order, and whether two overlapped.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const SHIM: &str = env!("CARGO_BIN_EXE_hotplug");
pub const DAEMON: &str = env!("CARGO_BIN_EXE_hotplugd");
pub const CTL: &str = env!("CARGO_BIN_EXE_hotplugctl");
/// hotplugd's `HOTPLUGD_HELPER_FILE`, for tests (see `Env::helper_file`).
pub const HELPER_FILE_ENV: &str = "HOTPLUGD_HELPER_FILE";

/// Every wait in the tests ends by this deadline; it guards against hangs and asserts no
/// performance.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("hotplugd-test")
            .tempdir()
            .unwrap();
        let env = Env { dir };
        fs::write(env.path("seqnum"), "0\n").unwrap();
        fs::write(env.helper_file(), format!("{SHIM}\n")).unwrap();
        env.script(
            "record.sh",
            // Appends start/end lines around a short pause, so overlapping handlers would
            // interleave their lines.
            r#"#!/bin/sh
echo "start $SEQNUM $ACTION $DEVPATH" >> "$0.log"
sleep 0.002
echo "end $SEQNUM" >> "$0.log"
"#,
        );
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn runtime(&self) -> PathBuf {
        self.path("run")
    }

    /// What the daemon and hotplugctl started here take for the kernel's uevent helper
    /// setting (`/proc/sys/kernel/hotplug`), so no test reads or writes the host's. It
    /// names the shim, as on a machine set up for hotplugd; absent, the kernel has none.
    pub fn helper_file(&self) -> PathBuf {
        self.path("kernel-hotplug")
    }

    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A config with the given `[daemon]` extras and rules; the recording rule catches
    /// everything not matched by an earlier `last` rule. Events come from the FIFO only
    /// unless `daemon_extra` sets `sources`: the host's own kernel events on netlink would
    /// otherwise land among a test's SEQNUMs.
    pub fn config(&self, daemon_extra: &str, rules: &str) -> PathBuf {
        let text = format!(
            r#"[daemon]
seqnum_file = "{seq}"
{daemon_extra}

{rules}

[[rule]]
name = "record"
match = {{ ACTION = "*" }}
run = ["{record}"]
"#,
            seq = self.path("seqnum").display(),
            daemon_extra = {
                let mut extra = daemon_extra.to_owned();
                if !extra.contains("gap_timeout") {
                    // Long: on a loaded machine a shim among 1000 can take a second to
                    // arrive, and a gap skipped under load would fail an ordering test.
                    extra.insert_str(0, "gap_timeout = \"20s\"\n");
                }
                if !extra.contains("sources") {
                    extra.insert_str(0, "sources = [\"fifo\"]\n");
                }
                extra
            },
            record = self.path("record.sh").display(),
        );
        let p = self.path("hotplugd.toml");
        fs::write(&p, text).unwrap();
        p
    }

    /// Start a daemon on this env's runtime dir and wait until it says it is ready.
    pub fn start(&self, config: &Path) -> Daemon {
        self.start_at_level(config, "debug")
    }

    pub fn start_at_level(&self, config: &Path, level: &str) -> Daemon {
        let log = self.path(&format!("daemon-{}.log", nanos()));
        let child = Command::new(DAEMON)
            .arg("--config")
            .arg(config)
            .arg("--runtime-dir")
            .arg(self.runtime())
            .arg("--log-level")
            .arg(level)
            .env(HELPER_FILE_ENV, self.helper_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon { child, log };
        wait_for("the daemon to be ready", || {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("daemon exited early ({st}):\n{}", d.log_text());
            }
            let log = fs::read_to_string(&d.log).unwrap_or_default();
            // Below info the ready line is not logged: then the control socket answering
            // is the sign (it is bound after the FIFO is open).
            log.contains(" ready on ")
                || (level != "debug"
                    && level != "info"
                    && std::os::unix::net::UnixStream::connect(self.runtime().join("control"))
                        .is_ok())
        });
        d
    }

    /// Run one shim for an event and wait for it to exit.
    pub fn shim(&self, vars: &[(&str, &str)]) -> ExitStatus {
        self.spawn_shim(vars).wait().unwrap()
    }

    pub fn spawn_shim(&self, vars: &[(&str, &str)]) -> Child {
        let sub = vars
            .iter()
            .find(|(k, _)| *k == "SUBSYSTEM")
            .map_or("test", |(_, v)| v);
        Command::new(SHIM)
            .arg(sub)
            .env_clear()
            .env("HOTPLUGD_RUNTIME_DIR", self.runtime())
            .env("HOME", "/")
            .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Fire a simple event.
    pub fn event(&self, seq: u64, action: &str, devpath: &str) -> ExitStatus {
        let s = seq.to_string();
        self.shim(&[
            ("ACTION", action),
            ("DEVPATH", devpath),
            ("SUBSYSTEM", "test"),
            ("SEQNUM", &s),
        ])
    }

    /// What the recording handler saw.
    pub fn record(&self) -> Record {
        Record::parse(&fs::read_to_string(self.path("record.sh.log")).unwrap_or_default())
    }

    pub fn wait_handled(&self, n: usize) -> Record {
        wait_for(&format!("{n} handled events"), || {
            self.record().seqs.len() >= n
        });
        self.record()
    }

    pub fn spool_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.runtime().join("spool"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Run `hotplugctl --runtime-dir RUNTIME ARGS...` to completion.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL)
            .arg("--runtime-dir")
            .arg(self.runtime())
            .env(HELPER_FILE_ENV, self.helper_file())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctl` that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "hotplugctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write raw bytes into the daemon's FIFO.
    pub fn write_fifo(&self, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(self.runtime().join("events"))
            .unwrap();
        f.write_all(bytes).unwrap();
    }
}

/// The handled SEQNUMs in handler order, and whether any two handlers overlapped.
#[derive(Debug)]
pub struct Record {
    pub seqs: Vec<u64>,
    pub lines: Vec<String>,
    pub overlapped: bool,
}

impl Record {
    fn parse(text: &str) -> Record {
        let mut seqs = Vec::new();
        let mut open: Option<String> = None;
        let mut overlapped = false;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for line in &lines {
            let mut words = line.split(' ');
            match (words.next(), words.next()) {
                (Some("start"), Some(seq)) => {
                    if open.is_some() {
                        overlapped = true;
                    }
                    open = Some(seq.to_owned());
                    seqs.push(seq.parse().unwrap_or(0));
                }
                (Some("end"), Some(seq)) => {
                    if open.as_deref() != Some(seq) {
                        overlapped = true;
                    }
                    open = None;
                }
                _ => {}
            }
        }
        Record {
            seqs,
            lines,
            overlapped,
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_log(&self, what: &str) {
        wait_for(&format!("daemon log to say {what:?}"), || {
            self.log_text().contains(what)
        });
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < DEADLINE, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `cond` until true, panicking at the deadline.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A deterministic shuffle (no rand dependency): Fisher-Yates with an LCG.
pub fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
}
