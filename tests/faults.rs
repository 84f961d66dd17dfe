//! Fault injection with the real binaries: a full spool/runtime filesystem (a tiny tmpfs
//! in a private mount namespace, so nothing leaks into the host's mounts even if a test
//! dies), runtime paths owned by another uid, and handlers that misbehave (flood their
//! output, leave daemons behind, ignore SIGTERM).
//!
//! The filesystem and ownership tests need root (mount, chown); without it they print why
//! they skip and pass, unless `CI=true`.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
const ENOSPC_TEXT: &str = "No space left on device";

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Why this test cannot run here, if it cannot: not root, or no private mount namespace.
fn cannot_mount() -> Option<String> {
    if !is_root() {
        return Some("needs root (mount, chown)".into());
    }
    match Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "unshare --mount failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no unshare(1): {e}")),
    }
}

macro_rules! skip_unless {
    ($why:expr) => {
        if let Some(why) = $why {
            skip_or_fail(&why);
            return;
        }
    };
}

/// The shell prologue that mounts a `size` tmpfs (mode 0700, as the daemon insists) on
/// `$1` inside the private namespace `unshare` made.
fn mount_tmpfs(size: &str) -> String {
    format!("mount -t tmpfs -o size={size},mode=0700 hotplugd-fault \"$1\" || exit 90\n")
}

/// A daemon with a `size` tmpfs (mode 0700, as the daemon insists) on its runtime dir,
/// mounted in a private mount namespace of its own, and ready. `unshare` and `sh` exec, so
/// the child is the daemon itself (and Drop kills it).
fn start_on_tmpfs(env: &Env, config: &Path, size: &str) -> Daemon {
    let rt = env.runtime();
    fs::create_dir(&rt).unwrap();
    let script = mount_tmpfs(size) + "shift\nexec \"$@\"";
    env.daemon(config)
        .level("debug")
        .log(env.path("daemon-full.log"))
        .wrapper([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            rt.to_str().unwrap(),
        ])
        .start()
}

/// Run the shim for an event delivered to `runtime`, with exactly the given environment.
fn shim_at(runtime: &Path, vars: &[(&str, &str)]) -> Output {
    Command::new(SHIM)
        .arg("test")
        .env_clear()
        .env("HOTPLUGD_RUNTIME_DIR", runtime)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write 4 KiB blocks to `path` until the filesystem says it is full.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let block = [0x55u8; 4096];
    for _ in 0..100_000 {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "filling {path:?}: {e}"
            );
            return;
        }
    }
    panic!("{path:?}: 400 MB written and the filesystem is not full: not the tiny tmpfs?");
}

/// An event with a padding variable, so each one takes most of a page in the journal.
fn padded(seq: &str, devpath: &str, pad: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ACTION", "add".into()),
        ("DEVPATH", devpath.into()),
        ("SUBSYSTEM", "test".into()),
        ("SEQNUM", seq.into()),
        ("PAD", pad.into()),
    ]
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn the_shim_on_a_full_spool_filesystem_fails_with_one_clear_line() {
    skip_unless!(cannot_mount());
    let env = Env::new();
    let rt = env.runtime();
    fs::create_dir(&rt).unwrap();
    // No daemon: the FIFO is missing, so the shim must spool, and the spool is full.
    let script = mount_tmpfs("16k")
        + r#"if dd if=/dev/zero of="$1/filler" bs=4096 2>/dev/null; then
    echo "dd filled nothing: $1 is not the tiny tmpfs" >&2; exit 91
fi
HOTPLUGD_RUNTIME_DIR="$1" "$2" test
rc=$?
ls -A "$1/spool"
exit $rc
"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(&rt)
        .arg(SHIM)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ACTION", "add")
        .env("DEVPATH", "/devices/full")
        .env("SEQNUM", "7")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{}: {err}", out.status);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.ends_with('\n'), "{err:?}");
    assert!(err.contains("event LOST"), "{err}");
    let spool = format!("{}/spool/", rt.display());
    assert!(
        err.contains(&spool),
        "does not name the spool {spool}: {err}"
    );
    assert!(err.contains(ENOSPC_TEXT), "{err}");
    // And it cleaned up after itself: no temp file left in the spool.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "left in the spool"
    );
    assert!(
        fs::read_dir(&rt).unwrap().next().is_none(),
        "the tmpfs leaked out of its namespace"
    );
}

#[test]
fn a_daemon_whose_runtime_filesystem_fills_keeps_handling_its_events() {
    skip_unless!(cannot_mount());
    let env = Env::new();
    let rt = env.runtime();
    let config = env.config("gap_timeout = \"60s\"", "");
    let mut daemon = start_on_tmpfs(&env, &config, "64k");
    // The runtime dir as the daemon sees it, through its mount namespace.
    let view = PathBuf::from(format!("/proc/{}/root{}", daemon.child.id(), rt.display()));
    assert!(view.join("events").exists(), "no FIFO in {view:?}");
    assert!(!rt.join("events").exists(), "the tmpfs is visible outside");

    let pad = "p".repeat(3000);
    for (seq, dev) in [("2", "/devices/b"), ("3", "/devices/c")] {
        let out = shim_at(&view, &as_refs(&padded(seq, dev, &pad)));
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    // Both wait for SEQNUM 1, in the queue (and the journal), when the disk fills.
    daemon.wait_log("queued 3 add /devices/c");
    fill(&view.join("filler"));

    // A message too big for the FIFO must be spooled, and cannot be: the shim says so.
    let big = "b".repeat(5000);
    let out = shim_at(
        &view,
        &[
            ("ACTION", "add"),
            ("DEVPATH", "/devices/big"),
            ("PAD", &big),
        ],
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(ENOSPC_TEXT) && err.contains("/spool/"),
        "{err}"
    );

    // New events still arrive through the FIFO, and everything runs, in order.
    for (seq, dev) in [
        ("1", "/devices/a"),
        ("4", "/devices/d"),
        ("5", "/devices/e"),
    ] {
        let out = shim_at(&view, &as_refs(&padded(seq, dev, &pad)));
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    let record = env.wait_handled(5);
    assert_eq!(record.seqs, vec![1, 2, 3, 4, 5], "{}", daemon.log_text());
    assert!(!record.overlapped);
    assert!(daemon.alive(), "{}", daemon.log_text());
    let text = daemon.log_text();
    assert!(
        text.contains(ENOSPC_TEXT),
        "the daemon never said its filesystem is full:\n{text}"
    );

    // Space comes back: business as usual, and a clean stop.
    fs::remove_file(view.join("filler")).unwrap();
    let out = shim_at(&view, &as_refs(&padded("6", "/devices/f", &pad)));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(env.wait_handled(6).seqs, vec![1, 2, 3, 4, 5, 6]);
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn runtime_paths_owned_by_another_uid_are_refused() {
    if !is_root() {
        skip_or_fail("needs root (chown)");
        return;
    }
    let env = Env::new();
    let config = env.config("", "");
    let run_daemon = |dir: &Path| {
        Command::new(DAEMON)
            .arg("--config")
            .arg(&config)
            .arg("--runtime-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // The runtime dir itself.
    let other = env.path("rt-nobody");
    fs::create_dir(&other).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&other, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = run_daemon(&other);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&other.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");

    // The FIFO in a good runtime dir.
    let rt = env.runtime();
    fs::create_dir(&rt).unwrap();
    fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
    let fifo = rt.join("events");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::chown(&fifo, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = run_daemon(&rt);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&fifo.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");

    // The shim, even with a reader on that FIFO (without one its open() fails with
    // ENXIO before any check), spools rather than write to another uid's pipe.
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    assert!(env.event(1, "add", "/devices/owned").success());
    assert_eq!(env.spool_files().len(), 1, "{:?}", env.spool_files());
    let mut buf = [0u8; 64];
    match reader.read(&mut buf) {
        // Nothing to read: EOF once the shim closed its end, or EAGAIN.
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the shim wrote into uid 65534's FIFO: {other:?}"),
    }
    drop(reader);

    // Once the FIFO is ours again, the daemon starts and runs the spooled event.
    std::os::unix::fs::chown(&fifo, Some(0), Some(0)).unwrap();
    let _daemon = env.start(&config);
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
    wait_for("the spool to empty", || env.spool_files().is_empty());
}

/// Processes a test's handlers left behind, killed by pid when the test ends.
struct Stragglers(Vec<PathBuf>);

impl Drop for Stragglers {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // SAFETY: kill on a pid our own handler wrote down.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn misbehaving_handlers_never_cost_the_events_after_them() {
    let env = Env::new();
    let detached = env.path("detached.pid");
    let holder = env.path("holder.pid");
    let _stragglers = Stragglers(vec![detached.clone(), holder.clone()]);
    let rules = format!(
        r#"
[[rule]]
name = "flood"
match = {{ SUBSYSTEM = "flood" }}
run = ["/bin/sh", "-c", "yes 'five megabytes of handler output, line after line' | head -c 5242880"]

[[rule]]
name = "detached"
match = {{ SUBSYSTEM = "detach" }}
run = ["/bin/sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $! > {detached}; exit 0"]

[[rule]]
name = "holder"
match = {{ SUBSYSTEM = "hold" }}
run = ["/bin/sh", "-c", "sleep 30 & echo $! > {holder}; echo still holding stdout; exit 0"]

[[rule]]
name = "stubborn"
match = {{ SUBSYSTEM = "stubborn" }}
run = ["/bin/sh", "-c", "trap '' TERM; sleep 30"]
timeout = "300ms"
"#,
        detached = detached.display(),
        holder = holder.display(),
    );
    let daemon = env.start(&env.config("", &rules));
    let started = Instant::now();
    let mut seq = 0;
    for sub in ["flood", "detach", "hold", "stubborn"] {
        for s in [sub, "test"] {
            seq += 1;
            let n = seq.to_string();
            let dev = format!("/devices/{s}{n}");
            let st = env.shim(&[
                ("ACTION", "add"),
                ("DEVPATH", &dev),
                ("SUBSYSTEM", s),
                ("SEQNUM", &n),
            ]);
            assert!(st.success());
        }
    }
    // The recording rule runs after each special one: all eight, in order, one at a time.
    let record = env.wait_handled(8);
    assert_eq!(record.seqs, (1..=8).collect::<Vec<_>>());
    assert!(!record.overlapped, "two handlers ran at once");
    // A hang guard, not a timing claim: waiting on either 30 s sleeper would exceed it.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );

    let log = daemon.log_text();
    assert!(
        log.contains("[flood 1] output truncated after"),
        "no truncation line:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(
        log.len() < 1 << 20,
        "5 MB of output reached the log ({} bytes)",
        log.len()
    );
    assert!(log.contains("[holder 5] still holding stdout"), "{log}");
    assert!(log.contains("rule holder: exit 0"), "{log}");
    assert!(log.contains("rule detached: exit 0"), "{log}");
    assert!(log.contains("[stubborn 7] timed out after"), "{log}");
    assert!(log.contains("[stubborn 7] still running"), "{log}");
    assert!(
        log.contains("rule stubborn: timed out, killed by SIGKILL"),
        "{log}"
    );
    // The grandchildren were left alone (a handler may start a daemon on purpose).
    for f in [&detached, &holder] {
        let pid = fs::read_to_string(f).unwrap();
        assert!(
            Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "{f:?}: the grandchild was killed"
        );
    }
}

/// One request on the control socket at `runtime`; the reply's last line.
fn request_at(runtime: &Path, body: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(runtime.join("control")).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn an_event_the_full_journal_cannot_take_keeps_its_spool_file_or_is_refused() {
    skip_unless!(cannot_mount());
    let env = Env::new();
    let rt = env.runtime();
    let config = env.config("", "");
    let mut daemon = start_on_tmpfs(&env, &config, "16m");
    let view = PathBuf::from(format!("/proc/{}/root{}", daemon.child.id(), rt.display()));
    // A spool file made on the same filesystem while it has room, put in place once it
    // has none (a rename takes no space).
    let stage = view.join("stage");
    fs::DirBuilder::new().mode(0o700).create(&stage).unwrap();
    let out = shim_at(
        &stage,
        &[
            ("ACTION", "add"),
            ("DEVPATH", "/devices/s"),
            ("SEQNUM", "1"),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let spooled = fs::read_dir(stage.join("spool"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    fill(&view.join("filler"));

    // Spooled: handled, and the file stays, the event's only durable copy.
    let kept = view.join("spool").join(spooled.file_name());
    fs::rename(spooled.path(), &kept).unwrap();
    assert_eq!(env.wait_handled(1).seqs, vec![1], "{}", daemon.log_text());
    assert!(kept.exists(), "{}", daemon.log_text());
    daemon.wait_log("kept until the next start");

    // Injected: refused, since "queued" would promise what the journal cannot keep.
    let reply = request_at(
        &view,
        "inject\nACTION=add\nDEVPATH=/devices/i\nSUBSYSTEM=test\n\n",
    );
    assert!(reply.starts_with("%error "), "{reply}");
    assert_eq!(env.record().seqs, vec![1], "{}", daemon.log_text());
    assert!(daemon.alive(), "{}", daemon.log_text());
}
