//! Nothing lost, ever: SIGKILL at random moments during a storm, during journal recovery,
//! spool intake and a clean stop, restart from the journal, socket activation by a
//! supervisor that holds the FIFO, and readiness. Handler runs repeated after a kill are
//! named by SEQNUM.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Acts as systemd would with `ListenFIFO=` and `ListenStream=`: holds the FIFO and the
/// control socket, and passes them to each daemon it starts as fds 3 and 4.
struct Supervisor {
    _fifo: fs::File,
    _listener: UnixListener,
    cmd: DaemonCmd,
    log: std::path::PathBuf,
}

impl Supervisor {
    fn new(env: &Env, config: std::path::PathBuf) -> Supervisor {
        let (_, fifo) = env.supervisor_fifo();
        let listener = UnixListener::bind(env.runtime().join("control")).unwrap();
        let log = env.path("daemon.log");
        let cmd = env.daemon(&config).log(log.clone()).listen(&[
            (fifo.as_raw_fd(), "events"),
            (listener.as_raw_fd(), "control"),
        ]);
        Supervisor {
            _fifo: fifo,
            _listener: listener,
            cmd,
            log,
        }
    }

    fn start(&self) -> Daemon {
        self.cmd.start()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Handler runs repeated, as (SEQNUM, extra runs), from each SEQNUM's run count.
fn repeated(times: &std::collections::BTreeMap<u64, u64>) -> Vec<(u64, u64)> {
    times
        .iter()
        .filter(|(_, &t)| t > 1)
        .map(|(&s, &t)| (s, t - 1))
        .collect()
}

#[test]
fn sigkill_during_a_storm_loses_nothing_and_repeats_only_the_running_handler() {
    storm_with_kills(1);
}

/// The same with four lanes: nothing lost, each device's events in SEQNUM order; a kill
/// repeats the events running in the lanes and those done but waiting for an older one.
#[test]
fn sigkill_during_a_storm_with_lanes_loses_nothing() {
    storm_with_kills(4);
}

/// Devices of the storm: `/devices/storm/{seq % 97}`, none an ancestor of another.
const STORM_DEVICES: u64 = 97;

fn storm_with_kills(workers: u64) {
    let env = Env::new();
    let out = env.path("handled");
    let config = env.bare_config(
        &format!("gap_timeout = \"30s\"\nworkers = {workers}"),
        &format!(
            r#"[[rule]]
name = "append"
run = ["/bin/sh", "-c", "echo $SEQNUM >> {}"]"#,
            out.display()
        ),
    );
    let sup = Supervisor::new(&env, config);
    let mut daemon = sup.start();

    const N: u64 = 10_000;
    let done = Arc::new(AtomicBool::new(false));
    let storm = {
        let runtime = env.runtime();
        let done = done.clone();
        std::thread::spawn(move || {
            // Like the kernel: SEQNUMs handed out in order, helpers racing, 64 in flight.
            let mut flight: Vec<Child> = Vec::new();
            for seq in 1..=N {
                while flight.len() >= 64 {
                    flight.retain_mut(|c| c.try_wait().unwrap().is_none());
                    if flight.len() >= 64 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                let s = seq.to_string();
                let c = Command::new(SHIM)
                    .arg("test")
                    .env_clear()
                    .env("HOTPLUGD_RUNTIME_DIR", &runtime)
                    .env("ACTION", "change")
                    .env("DEVPATH", format!("/devices/storm/{}", seq % STORM_DEVICES))
                    .env("SUBSYSTEM", "test")
                    .env("SEQNUM", &s)
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap();
                flight.push(c);
            }
            for mut c in flight {
                assert!(c.wait().unwrap().success());
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // Kill at pseudo-random moments while the storm runs, and a few more times after.
    let mut kills = 0u64;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let started = Instant::now();
    while !done.load(Ordering::SeqCst) || kills < 4 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis(150 + (seed >> 33) % 600));
        daemon.kill9();
        kills += 1;
        daemon = sup.start();
        assert!(started.elapsed() < DEADLINE * 3, "storm took too long");
        if kills >= 12 && done.load(Ordering::SeqCst) {
            break;
        }
    }
    storm.join().unwrap();
    let settle = env
        .ctl_command(&["settle", "--seq", &N.to_string(), "--timeout", "120"])
        .output()
        .unwrap();
    assert!(
        settle.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&settle.stderr),
        sup.log_text()
    );
    daemon.kill9();

    let text = fs::read_to_string(&out).unwrap();
    let seqs: Vec<u64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    let mut times = std::collections::BTreeMap::<u64, u64>::new();
    let mut firsts = Vec::new();
    for s in &seqs {
        let t = times.entry(*s).or_default();
        if *t == 0 {
            firsts.push(*s);
        }
        *t += 1;
    }
    // Each should be the event a kill caught mid-handler.
    let repeated = repeated(&times);
    let duplicates = seqs.len() - firsts.len();
    eprintln!(
        "{N} events, {workers} workers, {kills} kills, {duplicates} duplicate handler runs \
         {repeated:?}, {:?}",
        started.elapsed()
    );
    let lost: Vec<u64> = (1..=N).filter(|s| !times.contains_key(s)).collect();
    assert!(
        lost.is_empty(),
        "{} events lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    // Per device with lanes (unrelated devices run side by side), all of them with one.
    let device = |s: u64| if workers == 1 { 0 } else { s % STORM_DEVICES };
    let mut last = std::collections::HashMap::new();
    for &s in &firsts {
        if let Some(prev) = last.insert(device(s), s) {
            assert!(prev < s, "{s} handled after {prev} of its device");
        }
    }
    // A kill repeats what was running (one event per lane), and with lanes also what
    // was done but waited for an older event to finish first (at most the lanes'
    // look-ahead of 64 behind it).
    let per_kill = if workers == 1 { 1 } else { workers + 64 };
    assert!(
        duplicates as u64 <= kills * per_kill,
        "handler runs repeated {repeated:?} for {kills} kills"
    );
}

#[test]
fn events_queued_at_a_kill_are_recovered_from_the_journal() {
    let env = Env::new();
    let config = env.config("gap_timeout = \"1h\"", "");
    let mut daemon = env.start(&config);
    // 1 is missing, so 2 and 3 wait in the queue; only the journal has them.
    env.event(2, "add", "/devices/b");
    env.event(3, "add", "/devices/c");
    daemon.wait_log("queued 3 add");
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(env.spool_files().is_empty());
    let d = env.start(&config);
    d.wait_log("2 events from the journal queued again");
    env.event(1, "add", "/devices/a");
    assert_eq!(env.wait_handled(3).seqs, vec![1, 2, 3]);
    let _ = env.ctl_ok(&["settle", "--seq", "3"]);
    // Once done, the journal holds no segment.
    let left: Vec<String> = fs::read_dir(env.runtime().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".aux"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn readiness_via_notify_socket_and_ready_fd() {
    let env = Env::new();
    let config = env.config("", "");
    let sock_path = env.path("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let wfd = w.as_raw_fd();
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(env.runtime())
        .args(["--ready-fd", "5"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wfd, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(w);
    let mut ready = [0u8; 1];
    fs::File::from(r).read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"\n");
    // Ready means the FIFO is open for reading: a shim now delivers, it does not spool.
    env.event(1, "add", "/devices/a");
    assert!(env.spool_files().is_empty());
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\nSTATUS="), "{msg}");
    let before = monotonic_usec();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let mut states = Vec::new();
    while !states.iter().any(|s: &String| s.starts_with("READY=1")) {
        let n = sock.recv(&mut buf).unwrap();
        states.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let after = monotonic_usec();
    // systemd 253+ (Type=notify-reload) ignores RELOADING=1 without MONOTONIC_USEC.
    let reloading = states
        .iter()
        .find(|s| s.starts_with("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {states:?}"));
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} not between {before} and {after}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if buf[..n].starts_with(b"STOPPING=1") {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn socket_activation_refuses_fds_that_are_not_what_they_claim() {
    let env = Env::new();
    let config = env.config("", "");
    let file = fs::File::create(env.path("not-a-fifo")).unwrap();
    let mut d = env
        .daemon(&config)
        .listen(&[(file.as_raw_fd(), "")])
        .spawn();
    let status = d.child.wait().unwrap();
    let err = d.log_text();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("fd 3"), "{err}");
    assert!(err.contains("neither a FIFO nor a socket"), "{err}");
}

/// Every `RUN_EVERY`th SEQNUM of a backlog runs a handler that appends it to `handled`;
/// the rest match no rule and are done at once (each logged "no rule matched"), so a
/// backlog big enough to take a while to recover still drains quickly.
const RUN_EVERY: u64 = 50;

fn backlog_payload(seq: u64) -> Vec<u8> {
    let sub = if seq % RUN_EVERY == 0 { "run" } else { "skip" };
    format!(
        "{sub}\0ACTION=add\0DEVPATH=/devices/backlog/{seq}\0SUBSYSTEM={sub}\0SEQNUM={seq}\0\
         MODALIAS=usb:v046DpC52Bd1211dc00dsc00dp00ic03isc01ip02in00\0"
    )
    .into_bytes()
}

/// A daemon run by hand, so a test can kill it at any point of its start or stop; every
/// run appends to one log at info level.
struct Backlog<'a> {
    env: &'a Env,
    cmd: DaemonCmd,
    log: std::path::PathBuf,
    /// SIGKILLs so far, and those that may have cut a handler short (after "ready").
    kills: u64,
    kills_while_running: u64,
}

impl<'a> Backlog<'a> {
    fn new(env: &'a Env) -> Backlog<'a> {
        let config = env.bare_config(
            "gap_timeout = \"30s\"",
            &format!(
                r#"[[rule]]
name = "append"
match = {{ SUBSYSTEM = "run" }}
run = ["/bin/sh", "-c", "echo $SEQNUM >> {}"]"#,
                env.path("handled").display()
            ),
        );
        let log = env.path("backlog.log");
        Backlog {
            env,
            cmd: env.daemon(&config).level("info").log(log.clone()),
            log,
            kills: 0,
            kills_while_running: 0,
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&self) -> Daemon {
        self.cmd.spawn()
    }

    fn start(&self) -> Daemon {
        self.cmd.start()
    }

    fn kill(&mut self, daemon: &mut Daemon) {
        daemon.kill9();
        self.kills += 1;
        if daemon.was_ready() {
            self.kills_while_running += 1;
        }
    }

    /// Start a daemon and SIGKILL it `delay` after the spawn. Whether the kill came
    /// before it was ready.
    fn kill_while_starting(&mut self, delay: Duration) -> bool {
        let mut daemon = self.spawn();
        std::thread::sleep(delay);
        self.kill(&mut daemon);
        !daemon.was_ready()
    }

    /// Queue `n` events with handlers paused: all of them wait in the journal.
    fn queue_paused(&self, n: u64) -> Daemon {
        let daemon = self.start();
        self.env.ctl_ok(&["pause"]);
        let mut batch = Vec::new();
        for seq in 1..=n {
            batch.extend_from_slice(&hotplugd::message::encode(&backlog_payload(seq)));
            if batch.len() > 900_000 {
                self.env.write_fifo(&batch);
                batch.clear();
            }
        }
        self.env.write_fifo(&batch);
        wait_for("the backlog queued", || {
            self.env
                .ctl_ok(&["status"])
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["queued:", &n.to_string()])
        });
        daemon
    }

    /// A last start: settle through `n`, then every SEQNUM must have been handled (by its
    /// handler, or as matching no rule), and each handler run again named by SEQNUM and
    /// covered by a kill that may have cut it short.
    fn finish(mut self, n: u64) {
        let mut daemon = self.start();
        let out = self
            .env
            .ctl(&["settle", "--seq", &n.to_string(), "--timeout", "120"]);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        self.kill(&mut daemon);
        let runs = fs::read_to_string(self.env.path("handled")).unwrap_or_default();
        let mut times = std::collections::BTreeMap::<u64, u64>::new();
        for l in runs.lines() {
            *times.entry(l.trim().parse().unwrap()).or_default() += 1;
        }
        let log = self.log_text();
        let unmatched: std::collections::HashSet<u64> = log
            .lines()
            .filter(|l| l.ends_with(": no rule matched"))
            .filter_map(|l| l.split("] ").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        let lost: Vec<u64> = (1..=n)
            .filter(|s| {
                if s % RUN_EVERY == 0 {
                    !times.contains_key(s)
                } else {
                    !unmatched.contains(s)
                }
            })
            .collect();
        let repeated = repeated(&times);
        let extra: u64 = repeated.iter().map(|(_, t)| t).sum();
        eprintln!(
            "{n} events, {} kills ({} after ready); handler runs repeated (SEQNUM, extra runs): {repeated:?}",
            self.kills, self.kills_while_running
        );
        assert!(
            lost.is_empty(),
            "{} SEQNUMs lost, first {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        assert!(
            extra <= self.kills_while_running,
            "handler runs repeated {repeated:?} for {} kills that could cut one short",
            self.kills_while_running
        );
    }
}

/// Kill starts before they are ready: the first as soon as the log shows a new `marker`
/// (the intake under test has begun), the others spread over the time that took.
fn kill_before_ready(b: &mut Backlog, marker: &str, kills: u32) {
    let marks = b.log_text().matches(marker).count();
    let mut daemon = b.spawn();
    let spawned = Instant::now();
    wait_for(&format!("{marker:?} in the log"), || {
        b.log_text().matches(marker).count() > marks
    });
    let until_mark = spawned.elapsed();
    b.kill(&mut daemon);
    let mut early = u32::from(!daemon.was_ready());
    for k in 1..kills {
        early += u32::from(b.kill_while_starting(until_mark * k / kills));
    }
    eprintln!("{marker:?} {until_mark:?} after the spawn; {early} of {kills} kills before ready");
    // Under load a start may outrun its share of the first one's time: most must land.
    assert!(2 * early >= kills, "kills after ready:\n{}", b.log_text());
}

#[test]
fn sigkill_during_journal_recovery_loses_nothing() {
    let env = Env::new();
    let mut b = Backlog::new(&env);
    const N: u64 = 40_000;
    let mut daemon = b.queue_paused(N);
    // Paused: nothing is running, and the journal holds the whole backlog.
    daemon.kill9();
    b.kills += 1;
    // Each start reads the journal back and queues it again before "ready".
    kill_before_ready(&mut b, "events from the journal queued again", 6);
    b.finish(N);
}

#[test]
fn sigkill_during_spool_intake_loses_nothing() {
    let env = Env::new();
    const N: u64 = 20_000;
    // What shims leave behind while no daemon runs.
    let runtime = env.make_runtime();
    let spool = hotplugd::spool::Spool::new(&runtime);
    spool.create().unwrap();
    for seq in 1..=N {
        let ev = hotplugd::event::Event::from_payload(&backlog_payload(seq)).unwrap();
        spool.write(&ev).unwrap();
    }
    let mut b = Backlog::new(&env);
    // Each start takes in the spool (journal first, then the file goes) before "ready".
    kill_before_ready(&mut b, "events from the spool", 6);
    b.finish(N);
}

#[test]
fn sigkill_during_a_clean_stop_loses_nothing() {
    let env = Env::new();
    let mut b = Backlog::new(&env);
    const N: u64 = 20_000;
    let mut daemon = b.queue_paused(N);
    // SIGTERM hands the backlog to the spool, one file per event: kill it halfway.
    daemon.signal(libc::SIGTERM);
    wait_for("the hand-over to begin", || env.spool_files().len() > 10);
    b.kill(&mut daemon);
    let log = b.log_text();
    assert!(
        !log.contains("stopped after"),
        "the hand-over finished:\n{log}"
    );
    // Then with handlers running: SIGTERM while one runs (the stop waits for it), and
    // SIGKILL during the wait or the hand-over that follows.
    for k in 0..4u64 {
        let mut daemon = b.start();
        std::thread::sleep(Duration::from_millis(30));
        daemon.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(5 * k));
        b.kill(&mut daemon);
    }
    b.finish(N);
}

/// CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC is on.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
