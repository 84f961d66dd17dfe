//! Nothing lost, ever: SIGKILL at random moments during a storm, restart from the
//! journal, socket activation by a supervisor that holds the FIFO, and readiness.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    fifo: OwnedFd,
    listener: OwnedFd,
    log: std::path::PathBuf,
    config: std::path::PathBuf,
    runtime: std::path::PathBuf,
}

/// Duplicate `fd` high, away from 0-4, so the child's dup2 onto 3 and 4 cannot clobber.
fn high(fd: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own.
    unsafe { OwnedFd::from_raw_fd(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100)) }
}

impl Supervisor {
    fn new(env: &Env, config: std::path::PathBuf) -> Supervisor {
        let runtime = env.runtime();
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let fifo_path = runtime.join("events");
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_path)
            .unwrap();
        let listener = UnixListener::bind(runtime.join("control")).unwrap();
        Supervisor {
            fifo: high(f.as_raw_fd()),
            listener: high(listener.as_raw_fd()),
            log: env.path("daemon.log"),
            config,
            runtime,
        }
    }

    fn start(&self) -> Child {
        let readies = self.log_text().matches(" ready on ").count();
        let (fifo, sock) = (self.fifo.as_raw_fd(), self.listener.as_raw_fd());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=events:control exec "$0" "$@""#)
            .arg(DAEMON)
            .arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: only dup2, which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fifo, 3) < 0 || libc::dup2(sock, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        wait_for("the restarted daemon to be ready", || {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("daemon exited ({st}):\n{}", self.log_text());
            }
            self.log_text().matches(" ready on ").count() > readies
        });
        child
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigkill_during_a_storm_loses_nothing_and_repeats_only_the_running_handler() {
    let env = Env::new();
    let out = env.path("handled");
    let config = env.path("storm.toml");
    fs::write(
        &config,
        format!(
            r#"[daemon]
seqnum_file = "{}"
gap_timeout = "30s"
[[rule]]
name = "append"
run = ["/bin/sh", "-c", "echo $SEQNUM >> {}"]
"#,
            env.path("seqnum").display(),
            out.display()
        ),
    )
    .unwrap();
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
                    .env("DEVPATH", format!("/devices/storm/{}", seq % 97))
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
        kill9(&mut daemon);
        kills += 1;
        daemon = sup.start();
        assert!(started.elapsed() < DEADLINE * 3, "storm took too long");
        if kills >= 12 && done.load(Ordering::SeqCst) {
            break;
        }
    }
    storm.join().unwrap();
    let settle = Command::new(CTL)
        .arg("--runtime-dir")
        .arg(env.runtime())
        .args(["settle", "--seq", &N.to_string(), "--timeout", "120"])
        .output()
        .unwrap();
    assert!(
        settle.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&settle.stderr),
        sup.log_text()
    );
    kill9(&mut daemon);

    let text = fs::read_to_string(&out).unwrap();
    let seqs: Vec<u64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut firsts = Vec::new();
    for s in &seqs {
        if seen.insert(*s) {
            firsts.push(*s);
        }
    }
    let duplicates = seqs.len() - firsts.len();
    eprintln!(
        "{N} events, {kills} kills, {duplicates} duplicate handler runs, {:?}",
        started.elapsed()
    );
    assert_eq!(firsts.len() as u64, N, "events lost");
    let unordered = firsts.windows(2).filter(|w| w[0] > w[1]).count();
    assert_eq!(unordered, 0, "handled out of SEQNUM order");
    assert!(
        duplicates as u64 <= kills,
        "{duplicates} duplicates for {kills} kills"
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
    let fd = high(file.as_raw_fd());
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(DAEMON)
        .arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(env.runtime());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fd 3"), "{err}");
    assert!(err.contains("neither a FIFO nor a socket"), "{err}");
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
