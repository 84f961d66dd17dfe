//! No loss without a supervisor: a daemon started by a plain command (no socket
//! activation), SIGKILLed during a storm and restarted, loses nothing, because a FIFO
//! holder process keeps the pipe and its buffer alive; and the holder's lifecycle (a clean
//! stop ends it, a restart adopts it, two never pile up, a supervisor's FIFO needs none).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The pid in `RUNTIME/holder` if a process holds that file's lock, else None.
fn live_holder(runtime: &Path) -> Option<u32> {
    let path = runtime.join("holder");
    let file = fs::OpenOptions::new().read(true).open(&path).ok()?;
    // SAFETY: flock on an fd we own; a lock we get goes with the file at its drop.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None;
    }
    fs::read_to_string(&path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    pid_alive(pid)
}

/// A daemon started by a plain command, as sysvinit, OpenRC, runit or s6 would, and
/// restarted by the same command. Kills the daemon and any holder on drop, so a failed
/// test leaves no process behind.
struct Plain {
    runtime: PathBuf,
    cmd: DaemonCmd,
    log: PathBuf,
    daemon: Option<Daemon>,
    /// Every holder pid seen, killed on drop too (one may have gone unadopted).
    holders: Vec<u32>,
}

impl Plain {
    fn new(env: &Env, config: PathBuf) -> Plain {
        Plain::with(env, env.daemon(&config))
    }

    /// The daemon `cmd` starts, logging to one file.
    fn with(env: &Env, cmd: DaemonCmd) -> Plain {
        let log = env.path("daemon.log");
        Plain {
            runtime: env.runtime(),
            cmd: cmd
                .log(log.clone())
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID"),
            log,
            daemon: None,
            holders: Vec::new(),
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start the daemon; return without waiting for it to be ready.
    fn spawn(&mut self) {
        assert!(self.daemon.is_none());
        self.daemon = Some(self.cmd.spawn());
    }

    fn wait_ready(&mut self) {
        self.daemon.as_mut().unwrap().wait_ready();
        if let Some(pid) = live_holder(&self.runtime) {
            if !self.holders.contains(&pid) {
                self.holders.push(pid);
            }
        }
    }

    fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn kill9(&mut self) {
        self.daemon.take().unwrap().kill9();
    }

    /// SIGTERM, and the daemon's exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        self.daemon.take().unwrap().stop()
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(CTL)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        // The daemon's own Drop kills it.
        self.daemon = None;
        let mut pids = self.holders.clone();
        pids.extend(live_holder(&self.runtime));
        for pid in pids {
            if alive(pid) {
                // SAFETY: a pid this test saw holding its own runtime dir's holder lock.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// The issue's storm: 3000 events from 16 parallel shims, the daemon SIGKILLed 5 times
/// while they write and restarted 0.2 s later by the same command. Every SEQNUM is
/// handled; only the handler running at a kill may run twice.
#[test]
fn plain_restarts_during_a_storm_lose_nothing() {
    let env = Env::new();
    let out = env.path("handled");
    let config = env.bare_config(
        "gap_timeout = \"30s\"",
        &format!(
            r#"[[rule]]
name = "append"
run = ["/bin/sh", "-c", "echo $SEQNUM >> {}"]"#,
            out.display()
        ),
    );
    let mut daemon = Plain::new(&env, config);
    daemon.start();

    const N: u64 = 3000;
    const WRITERS: usize = 16;
    const KILLS: u64 = 5;
    // Each writer paces itself, so the storm outlasts five kill-and-restart rounds (a
    // restart takes 0.2 s and a start-up) and every kill lands while shims write.
    const PACE: Duration = Duration::from_millis(25);
    // Like the kernel: SEQNUMs handed out in order, 16 helpers racing.
    let next = Arc::new(AtomicU64::new(1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let next = next.clone();
            let runtime = env.runtime();
            std::thread::spawn(move || loop {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if seq > N {
                    return;
                }
                let st = Command::new(SHIM)
                    .arg("test")
                    .env_clear()
                    .env("HOTPLUGD_RUNTIME_DIR", &runtime)
                    .env("ACTION", "change")
                    .env("DEVPATH", format!("/devices/storm/{}", seq % 97))
                    .env("SUBSYSTEM", "test")
                    .env("SEQNUM", seq.to_string())
                    .stdin(Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success(), "shim for SEQNUM {seq}: {st}");
                std::thread::sleep(PACE);
            })
        })
        .collect();

    // Kills spread over the storm: each once another sixth of it has been written.
    let started = Instant::now();
    let mut kills = 0;
    let mut killed_at = Vec::new();
    while kills < KILLS {
        let at = N * (kills + 1) / (KILLS + 1);
        wait_for("the storm to go on", || next.load(Ordering::SeqCst) > at);
        killed_at.push(next.load(Ordering::SeqCst) - 1);
        daemon.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(200));
        daemon.start();
    }
    for w in writers {
        w.join().unwrap();
    }
    let written_by = started.elapsed();
    // Every shim has delivered or spooled its event: wait until each is handled. A lost
    // one leaves a gap that holds up the rest for gap_timeout, so rather than wait out
    // every gap, stop at the deadline and count as lost what is neither handled nor
    // queued.
    let handled = || -> BTreeMap<u64, u32> {
        let mut runs = BTreeMap::new();
        for l in fs::read_to_string(&out).unwrap_or_default().lines() {
            *runs.entry(l.trim().parse().unwrap()).or_default() += 1;
        }
        runs
    };
    let wait_start = Instant::now();
    while handled().len() < N as usize && wait_start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Queued first, handled after: an event handled in between is then in the second.
    let pending = daemon.ctl(&["pending"]);
    let queued: Vec<u64> = String::from_utf8_lossy(&pending.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("running ").unwrap_or(l);
            l.split(' ').next()?.parse().ok()
        })
        .collect();
    let runs = handled();
    let lost: Vec<u64> = (1..=N)
        .filter(|s| !runs.contains_key(s) && !queued.contains(s))
        .collect();
    let repeated: Vec<(u64, u32)> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    let duplicates: u32 = repeated.iter().map(|(_, n)| n - 1).sum();
    // Each loss belongs to the kill before it.
    let per_kill: Vec<usize> = (0..killed_at.len())
        .map(|i| {
            let end = killed_at.get(i + 1).copied().unwrap_or(N);
            lost.iter()
                .filter(|s| **s > killed_at[i] && **s <= end)
                .count()
        })
        .collect();
    eprintln!(
        "{N} events from {WRITERS} shims written in {written_by:?}, {kills} kills with plain \
         restarts (after SEQNUM {killed_at:?} was handed out): {} lost {lost:?}, per kill \
         {per_kill:?}, {} still queued, {duplicates} duplicate runs, SEQNUMs \
         that repeated (SEQNUM, runs): {repeated:?}",
        lost.len(),
        queued.len()
    );
    assert!(lost.is_empty(), "{} SEQNUMs lost: {lost:?}", lost.len());
    assert_eq!(
        runs.len() as u64,
        N,
        "not all handled, none lost: {queued:?}"
    );
    assert!(
        u64::from(duplicates) <= kills,
        "{duplicates} duplicate runs for {kills} kills: {repeated:?}"
    );

    // A clean stop leaves no holder behind.
    let holders = daemon.holders.clone();
    assert!(daemon.stop().success(), "{}", daemon.log_text());
    assert_eq!(live_holder(&env.runtime()), None);
    for pid in holders {
        wait_for("the holder to exit", || !alive(pid));
    }
}

/// `status --json`'s value for `key`, as text.
fn status_field(d: &Plain, key: &str) -> String {
    let out = d.ctl(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    json_field(&out, key)
}

/// The processes named `hotplugd-holder` that have `fifo` open.
fn holders_of(fifo: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::metadata(fifo) else {
        return Vec::new();
    };
    let want = (m.dev(), m.ino());
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "hotplugd-holder" || !alive(pid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .filter_map(|f| fs::metadata(f.ok()?.path()).ok())
            .any(|f| (f.dev(), f.ino()) == want)
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_restart_adopts_the_holder_and_a_clean_stop_ends_it() {
    let env = Env::new();
    let mut d = Plain::new(&env, env.config("", ""));
    d.start();
    let runtime = env.runtime();
    let fifo = runtime.join("events");
    let pid = live_holder(&runtime).expect("a holder after the start");
    assert_eq!(status_field(&d, "holder"), pid.to_string());
    assert_eq!(holders_of(&fifo), vec![pid]);
    assert!(d
        .log_text()
        .contains(&format!("started FIFO holder pid {pid}")));

    // The daemon dies; the holder keeps the pipe, so a shim still delivers into it.
    d.kill9();
    assert!(alive(pid));
    assert!(env.event(1, "add", "/devices/a").success());
    assert!(env.spool_files().is_empty(), "{:?}", env.spool_files());

    // A holder started by hand while one lives exits at once: never two.
    let by_hand = Command::new(DAEMON)
        .arg("--fifo-holder")
        .arg(&runtime)
        .output()
        .unwrap();
    assert!(by_hand.status.success());
    let said = String::from_utf8_lossy(&by_hand.stderr);
    assert!(said.contains(&format!("(pid {pid}) already")), "{said}");
    assert_eq!(holders_of(&fifo), vec![pid]);

    // The restart adopts it, and reads what the pipe kept.
    d.start();
    assert!(d
        .log_text()
        .contains(&format!("adopted FIFO holder pid {pid}")));
    assert_eq!(status_field(&d, "holder"), pid.to_string());
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
    assert_eq!(holders_of(&fifo), vec![pid]);

    // A clean stop leaves none.
    assert!(d.stop().success(), "{}", d.log_text());
    wait_for("the holder to exit", || !alive(pid));
    assert_eq!(live_holder(&runtime), None);
    let log = d.log_text();
    assert!(
        log.contains(&format!("FIFO holder pid {pid} stopped")),
        "{log}"
    );
    assert!(!log.contains("starting a new one"), "{log}");
}

#[test]
fn a_holder_that_dies_is_replaced_and_one_whose_fifo_goes_exits() {
    let env = Env::new();
    let mut d = Plain::new(&env, env.config("", ""));
    d.start();
    let runtime = env.runtime();
    let first = live_holder(&runtime).unwrap();
    // SAFETY: the holder this test's daemon started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    wait_for("a new holder", || {
        live_holder(&runtime).is_some_and(|p| p != first)
    });
    let second = live_holder(&runtime).unwrap();
    d.holders.push(second);
    assert_eq!(status_field(&d, "holder"), second.to_string());
    assert!(d.log_text().contains(&format!(
        "FIFO holder pid {first} exited; starting a new one"
    )));
    assert_eq!(holders_of(&runtime.join("events")), vec![second]);

    // A daemon killed and never restarted: removing its FIFO ends the holder too.
    d.kill9();
    fs::remove_file(runtime.join("events")).unwrap();
    wait_for("the orphaned holder to exit", || !alive(second));
}

#[test]
fn no_holder_when_the_supervisor_holds_the_fifo() {
    let env = Env::new();
    let config = env.config("", "");
    let runtime = env.runtime();
    let (fifo_path, fifo) = env.supervisor_fifo();
    let mut d = Plain::with(
        &env,
        env.daemon(&config).listen(&[(fifo.as_raw_fd(), "events")]),
    );
    d.start();
    assert_eq!(status_field(&d, "holder"), "supervisor");
    assert!(!runtime.join("holder").exists());
    assert!(holders_of(&fifo_path).is_empty());
    assert!(d.stop().success(), "{}", d.log_text());
}
