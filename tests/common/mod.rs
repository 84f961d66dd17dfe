//! A small harness for running the real binaries in a temp runtime dir: a `Daemon` that is
//! awaited until it says it is ready on its `--ready-fd` (never a fixed sleep, never the
//! log), a config skeleton that keeps the host's events out, shims fired with an event environment, and a
//! recording handler whose log tells what ran, in which order, and whether two overlapped.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
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

    /// Make the runtime dir (mode 0700) before any daemon, as a supervisor or the shims of
    /// an early boot would; returns it.
    pub fn make_runtime(&self) -> PathBuf {
        let runtime = self.runtime();
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        runtime
    }

    /// The runtime dir made and its FIFO in it, opened read-write as systemd's
    /// `ListenFIFO=` holds it: the FIFO's path and the open file.
    pub fn supervisor_fifo(&self) -> (PathBuf, fs::File) {
        let fifo_path = self.make_runtime().join("events");
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_path)
            .unwrap();
        (fifo_path, fifo)
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
    /// everything not matched by an earlier `last` rule. As [`Env::bare_config`], with a
    /// long gap timeout unless `daemon_extra` sets one.
    pub fn config(&self, daemon_extra: &str, rules: &str) -> PathBuf {
        let mut extra = daemon_extra.to_owned();
        if !extra.contains("gap_timeout") {
            // Long: on a loaded machine a shim among 1000 can take a second to arrive,
            // and a gap skipped under load would fail an ordering test.
            extra.insert_str(0, "gap_timeout = \"20s\"\n");
        }
        let rules = format!(
            r#"{rules}

[[rule]]
name = "record"
match = {{ ACTION = "*" }}
run = ["{record}"]
"#,
            record = self.path("record.sh").display(),
        );
        self.bare_config(&extra, &rules)
    }

    /// `hotplugd.toml` with the given `[daemon]` extras and rules, and nothing else: this
    /// env's SEQNUM file and events from the FIFO only, unless `daemon_extra` sets
    /// `seqnum_file` or `sources`. The host's own kernel events on netlink would otherwise
    /// land among a test's SEQNUMs.
    pub fn bare_config(&self, daemon_extra: &str, rules: &str) -> PathBuf {
        let mut extra = daemon_extra.to_owned();
        if !extra.contains("sources") {
            extra.insert_str(0, "sources = [\"fifo\"]\n");
        }
        if !extra.contains("seqnum_file") {
            extra.insert_str(
                0,
                &format!("seqnum_file = \"{}\"\n", self.path("seqnum").display()),
            );
        }
        let p = self.path("hotplugd.toml");
        fs::write(&p, format!("[daemon]\n{extra}\n\n{rules}\n")).unwrap();
        p
    }

    /// Start a daemon on this env's runtime dir at debug level and wait until it is ready.
    pub fn start(&self, config: &Path) -> Daemon {
        self.start_at_level(config, "debug")
    }

    pub fn start_at_level(&self, config: &Path, level: &str) -> Daemon {
        self.daemon(config).level(level).start()
    }

    /// The command that starts a daemon on this env's runtime dir, with its helper file,
    /// for a test to add to before `start` or `spawn`.
    pub fn daemon(&self, config: &Path) -> DaemonCmd {
        DaemonCmd {
            dir: self.dir.path().to_owned(),
            runtime: self.runtime(),
            config: Some(config.to_owned()),
            level: None,
            args: Vec::new(),
            envs: vec![(HELPER_FILE_ENV.into(), Some(self.helper_file().into()))],
            log: None,
            listen: Vec::new(),
            wrapper: Vec::new(),
        }
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

    /// `hotplugctl --runtime-dir RUNTIME ARGS...` with stdin on /dev/null, to be run.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CTL);
        cmd.arg("--runtime-dir")
            .arg(self.runtime())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Run `hotplugctl --runtime-dir RUNTIME ARGS...` to completion.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args)
            .env(HELPER_FILE_ENV, self.helper_file())
            .output()
            .unwrap()
    }

    /// `hotplugctl monitor ARGS...` running, its stdout piped.
    pub fn monitor(&self, args: &[&str]) -> Child {
        self.ctl_command(&[&["monitor"], args].concat())
            .stdout(Stdio::piped())
            .spawn()
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

/// How a test daemon is started: `hotplugd --config C --runtime-dir R --ready-fd N` and
/// whatever a test adds. Reusable, for tests that restart the same daemon.
pub struct DaemonCmd {
    dir: PathBuf,
    runtime: PathBuf,
    config: Option<PathBuf>,
    level: Option<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    log: Option<PathBuf>,
    listen: Vec<(RawFd, String)>,
    wrapper: Vec<OsString>,
}

impl DaemonCmd {
    /// No `--config`: the daemon reads its default.
    pub fn no_config(mut self) -> Self {
        self.config = None;
        self
    }

    pub fn level(mut self, level: &str) -> Self {
        self.level = Some(level.to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    /// One log that every start appends to, rather than a new file each.
    pub fn log(mut self, path: PathBuf) -> Self {
        self.log = Some(path);
        self
    }

    /// Socket activation, as systemd does it: `fds` become 3, 4, ... in the daemon,
    /// named in `LISTEN_FDNAMES`, with `LISTEN_PID` its own pid. The caller keeps them open.
    pub fn listen(mut self, fds: &[(RawFd, &str)]) -> Self {
        self.listen = fds.iter().map(|&(fd, n)| (fd, n.to_owned())).collect();
        self
    }

    /// A command that ends by exec'ing its arguments, run with the daemon's command line
    /// appended (an `unshare`, say), so the child is still the daemon.
    pub fn wrapper<S: AsRef<OsStr>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.wrapper = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Start a daemon and wait until it is ready.
    pub fn start(&self) -> Daemon {
        let mut d = self.spawn();
        d.wait_ready();
        d
    }

    /// Start a daemon without waiting for it.
    pub fn spawn(&self) -> Daemon {
        let (ready, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // The fds the daemon gets, each first duplicated high, so no dup2 onto 3, 4, ...
        // in the child overwrites one still to be moved.
        let ready_fd = 3 + self.listen.len() as RawFd;
        let mut moves: Vec<(OwnedFd, RawFd)> = (self.listen.iter().map(|(fd, _)| *fd))
            .chain([w.as_raw_fd()])
            .enumerate()
            .map(|(i, fd)| (high(fd), 3 + i as RawFd))
            .collect();
        drop(w);
        let mut argv: Vec<OsString> = self.wrapper.clone();
        if !self.listen.is_empty() {
            let names: Vec<&str> = self.listen.iter().map(|(_, n)| n.as_str()).collect();
            argv.extend(["/bin/sh".into(), "-c".into()]);
            argv.push(
                format!(
                    r#"LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={} exec "$0" "$@""#,
                    names.len(),
                    names.join(":")
                )
                .into(),
            );
        }
        argv.push(DAEMON.into());
        if let Some(config) = &self.config {
            argv.extend(["--config".into(), config.into()]);
        }
        argv.extend(["--runtime-dir".into(), self.runtime.clone().into()]);
        if let Some(level) = &self.level {
            argv.extend(["--log-level".into(), level.into()]);
        }
        argv.extend(["--ready-fd".into(), ready_fd.to_string().into()]);
        argv.extend(self.args.iter().cloned());
        let log = self
            .log
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("daemon-{}.log", nanos())));
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let raw: Vec<(RawFd, RawFd)> = moves.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect();
        // SAFETY: only dup2, which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &(from, to) in &raw {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        moves.clear();
        Daemon {
            child,
            log,
            ready: Some(fs::File::from(ready)),
            was_ready: false,
        }
    }
}

/// `fd` duplicated at 100 or above, close-on-exec.
fn high(fd: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd, owned from here on.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(
        new >= 0,
        "F_DUPFD_CLOEXEC {fd}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: just made, and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(new) }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// The read end of the `--ready-fd` pipe, until the daemon's newline came.
    ready: Option<fs::File>,
    was_ready: bool,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the daemon's newline on `--ready-fd`; if it exits first, or the deadline
    /// passes, panic with its log.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        while !self.poll_ready(10) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited before it was ready ({st}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for the daemon to be ready:\n{}",
                self.log_text()
            );
        }
    }

    /// Whether the daemon has said it is ready, by now; a daemon killed since still
    /// counts if it had.
    pub fn was_ready(&mut self) -> bool {
        self.poll_ready(0)
    }

    fn poll_ready(&mut self, timeout_ms: i32) -> bool {
        let Some(pipe) = &self.ready else {
            return self.was_ready;
        };
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } <= 0 {
            return false;
        }
        let mut b = [0u8; 1];
        match (&*pipe).read(&mut b) {
            Ok(1) => self.was_ready = true,
            // Closed without a newline: the daemon is gone (try_wait tells).
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return false,
            Err(e) => panic!("reading the ready pipe: {e}"),
        }
        self.ready = None;
        self.was_ready
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

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// SIGTERM and wait for the exit status, keeping the `Daemon` (and its log).
    pub fn terminate(&mut self) -> ExitStatus {
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

/// The FIFO holders of runtime dirs under the test's dir go with it. A holder outlives a
/// killed daemon by design, and ends by itself once `DIR/events` is removed; but a daemon
/// run on a tmpfs in a private mount namespace (`tests/faults.rs`) leaves its holder in a
/// namespace where nothing removes anything, and it would hold that tmpfs for good.
impl Drop for Env {
    fn drop(&mut self) {
        let root = self.dir.path().as_os_str().as_encoded_bytes();
        let Ok(procs) = fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let mut args = cmdline.split(|&b| b == 0);
            let holds_ours = args.any(|a| a == b"--fifo-holder")
                && args.next().is_some_and(|dir| {
                    dir.strip_prefix(root)
                        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
                });
            if holds_ours {
                // SAFETY: kill(2) with a pid read from /proc and a constant signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// True under `CI=true`, where a missing prerequisite fails a test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// For a test (or the rest of one) that cannot run here for want of `why`: fails under
/// `CI=true`; elsewhere says so, and the caller returns. Straight to fd 2: eprintln! is
/// captured by the test harness, and a passing test's output is never shown.
pub fn skip_or_fail(why: &str) {
    assert!(
        !ci(),
        "{why} (under CI=true a missing prerequisite fails; scripts/install-test-deps.sh)"
    );
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
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

/// Whether `pid` still runs. A zombie has exited: /proc still lists it, with state Z
/// (an orphan's zombie lingers where pid 1 is slow to reap).
pub fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// A fake sysfs under the env with a device per name under `/devices/fake`, each with a
/// `uevent` file and a `subsystem` link to `class/test`, for `hotplugctl trigger --sysfs`.
pub fn fake_sysfs(env: &Env, names: &[&str]) -> PathBuf {
    let sys = env.path("sys");
    fs::create_dir_all(sys.join("class/test")).unwrap();
    for name in names {
        let dev = sys.join("devices/fake").join(name);
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("uevent"), format!("DEVNAME={name}\n")).unwrap();
        std::os::unix::fs::symlink("../../../class/test", dev.join("subsystem")).unwrap();
    }
    sys
}

/// Start `hotplugctl trigger --sysfs SYS --settle` over [`fake_sysfs`]'s `names`, and play
/// the kernel: each `uevent` write (checked) becomes an event through the shim, SEQNUMs
/// from `first_seq`, with the trigger's tag, the device's DEVNAME and `extra`. Returns the
/// trigger, still waiting for its settle, and the tag.
pub fn trigger_as_kernel(
    env: &Env,
    sys: &Path,
    names: &[&str],
    first_seq: u64,
    extra: &[(&str, &str)],
) -> (Child, String) {
    let mut trigger = env
        .ctl_command(&["trigger", "--sysfs"])
        .arg(sys)
        .args(["--settle", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(trigger.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let tag = first
        .strip_prefix(&format!(
            "{} devices triggered (add, SYNTH_UUID=",
            names.len()
        ))
        .and_then(|r| r.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_owned();
    for (i, name) in names.iter().enumerate() {
        let dev = sys.join("devices/fake").join(name);
        assert_eq!(
            fs::read_to_string(dev.join("uevent")).unwrap(),
            format!("add {tag}")
        );
        let seq = (first_seq + i as u64).to_string();
        let devpath = format!("/devices/fake/{name}");
        let mut vars = vec![
            ("ACTION", "add"),
            ("DEVPATH", devpath.as_str()),
            ("SUBSYSTEM", "test"),
            ("DEVNAME", name),
            ("SEQNUM", seq.as_str()),
            ("SYNTH_UUID", tag.as_str()),
        ];
        vars.extend_from_slice(extra);
        assert!(env.shim(&vars).success());
    }
    (trigger, tag)
}

/// The text of `key`'s value in one line of flat JSON, such as `status --json`'s (quotes
/// dropped): enough for the numbers and names tests compare.
pub fn json_field(out: &str, key: &str) -> String {
    let needle = format!("\"{key}\":");
    let start = out
        .find(&needle)
        .unwrap_or_else(|| panic!("{key} in {out}"))
        + needle.len();
    out[start..]
        .split([',', '}'])
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}
