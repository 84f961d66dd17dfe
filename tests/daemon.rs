//! The end-to-end core, with the real shim and daemon in a temp runtime dir: ordering,
//! spooling, gaps, coalescing, hostile input, injection, hanging handlers, reload and
//! shutdown, and the config check.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn concurrent_shims_are_handled_once_in_order_one_at_a_time() {
    let env = Env::new();
    let daemon = env.start(&env.config("", ""));
    let mut seqs: Vec<u64> = (1..=1000).collect();
    shuffle(&mut seqs, 7);
    let started = Instant::now();
    let children: Vec<_> = seqs
        .iter()
        .map(|s| {
            let s = s.to_string();
            env.spawn_shim(&[
                ("ACTION", "add"),
                ("DEVPATH", &format!("/devices/test/{s}")),
                ("SEQNUM", &s),
            ])
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let record = env.wait_handled(1000);
    eprintln!("1000 concurrent shims handled in {:?}", started.elapsed());
    assert_eq!(record.seqs, (1..=1000).collect::<Vec<_>>());
    assert!(!record.overlapped, "two handlers ran at once");
    assert!(env.spool_files().is_empty());
    drop(daemon);
}

#[test]
fn shims_spool_without_a_daemon_and_the_daemon_runs_them_in_order() {
    let env = Env::new();
    assert!(!env.runtime().exists());
    let mut seqs: Vec<u64> = (1..=50).collect();
    shuffle(&mut seqs, 3);
    for s in &seqs {
        assert!(env.event(*s, "add", &format!("/devices/x{s}")).success());
    }
    assert_eq!(env.spool_files().len(), 50);
    let _daemon = env.start(&env.config("", ""));
    let record = env.wait_handled(50);
    assert_eq!(record.seqs, (1..=50).collect::<Vec<_>>());
    wait_for("the spool to empty", || env.spool_files().is_empty());
}

#[test]
fn a_missing_seqnum_holds_later_ones_until_the_gap_timeout() {
    let env = Env::new();
    let daemon = env.start(&env.config("gap_timeout = \"1500ms\"", ""));
    env.event(1, "change", "/devices/a");
    env.wait_handled(1);
    let sent = Instant::now();
    env.event(3, "change", "/devices/a");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.record().seqs, vec![1], "3 must wait for 2");
    let record = env.wait_handled(2);
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    assert_eq!(record.seqs, vec![1, 3]);
    daemon.wait_log("SEQNUM 2..=2 did not arrive");
    env.event(2, "change", "/devices/a");
    assert_eq!(env.wait_handled(3).seqs, vec![1, 3, 2]);
    daemon.wait_log("late 2 change");
}

#[test]
fn a_hundred_gaps_expire_together_not_one_after_another() {
    // Every third SEQNUM never comes (the kernel spent it elsewhere, as every container
    // start does): 200 events around 99 gaps, written in order. Each event waits at most
    // gap_timeout from its own arrival, so all is done about one gap_timeout after the
    // last event; gaps expiring one by one took 99 s.
    let env = Env::new();
    let out = env.path("handled");
    let config = env.bare_config(
        "seqnum_file = \"\"\ngap_timeout = \"1s\"",
        &format!(
            r#"[[rule]]
name = "append"
run = ["/bin/sh", "-c", "echo $SEQNUM >> {}"]"#,
            out.display()
        ),
    );
    let daemon = env.start(&config);
    let sent: Vec<u64> = (1..=300).filter(|s| s % 3 != 0).collect();
    for &seq in &sent {
        assert!(env
            .event(seq, "change", &format!("/devices/d{seq}"))
            .success());
    }
    let last = Instant::now();
    let handled = || -> Vec<u64> {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    wait_for("all 200 events handled", || handled().len() >= sent.len());
    let took = last.elapsed();
    eprintln!("the last event was handled {took:?} after it was sent");
    assert!(
        took < Duration::from_secs(8),
        "200 events behind 99 gaps took {took:?} after the last one; gaps expire one by one?"
    );
    assert_eq!(handled(), sent, "in SEQNUM order, each once");
    let log = daemon.log_text();
    for k in 1..=99u64 {
        let line = format!("SEQNUM {0}..={0} did not arrive", 3 * k);
        assert_eq!(log.matches(&line).count(), 1, "{line} logged once");
    }
    let status = env.ctl_ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["gaps", "skipped:", "99"])),
        "each skipped SEQNUM counted once:\n{status}"
    );
}

#[test]
fn add_and_remove_both_queued_coalesce_but_remove_after_add_runs() {
    let env = Env::new();
    let daemon = env.start(&env.config("gap_timeout = \"30s\"", ""));
    // SEQNUM 1 is missing, so 2 and 3 wait behind it, both still queued.
    env.event(2, "add", "/devices/gone");
    env.event(3, "remove", "/devices/gone");
    env.event(4, "add", "/devices/stays");
    daemon.wait_log("coalesced 3 remove /devices/gone");
    env.event(1, "change", "/devices/other");
    assert_eq!(env.wait_handled(2).seqs, vec![1, 4]);
    env.event(5, "remove", "/devices/stays");
    assert_eq!(env.wait_handled(3).seqs, vec![1, 4, 5]);
    // Helpers race: a remove (7) can arrive before its add (6). Both still queued: the
    // add coalesces with the waiting remove when it comes.
    env.event(7, "remove", "/devices/flicker");
    env.event(8, "change", "/devices/other");
    env.event(6, "add", "/devices/flicker");
    daemon.wait_log("coalesced 7 remove /devices/flicker (");
    assert_eq!(env.wait_handled(4).seqs, vec![1, 4, 5, 8]);
}

#[test]
fn garbage_truncated_and_oversized_input_never_costs_the_next_event() {
    let env = Env::new();
    let mut daemon = env.start(&env.config("", ""));
    env.write_fifo(b"\x00\x01garbage HPLG not a header at all\n");
    // A header announcing far more than a pipe message may hold.
    let mut oversized = b"HPLG\x01\x00\x00\x00".to_vec();
    oversized.extend_from_slice(&60000u32.to_le_bytes());
    oversized.extend_from_slice(&[0; 4]);
    env.write_fifo(&oversized);
    // A truncated message: the start of a valid one.
    let whole = hotplugd::message::encode(b"test\0ACTION=add\0DEVPATH=/devices/t\0SEQNUM=9\0");
    env.write_fifo(&whole[..whole.len() - 5]);
    // A well-framed message that is not an event (no DEVPATH), and a bad SEQNUM.
    env.write_fifo(&hotplugd::message::encode(b"test\0ACTION=add\0"));
    env.write_fifo(&hotplugd::message::encode(
        b"test\0ACTION=add\0DEVPATH=/x\0SEQNUM=12x\0",
    ));
    env.event(1, "add", "/devices/good");
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
    assert!(daemon.alive());
    let log = daemon.log_text();
    assert!(log.contains("FIFO: skipped"), "{log}");
    assert!(log.contains("no DEVPATH"), "{log}");
    assert!(log.contains("SEQNUM \"12x\""), "{log}");
    // And a version mismatch: another release's shim.
    let mut other = hotplugd::message::encode(b"test\0ACTION=add\0DEVPATH=/y\0SEQNUM=2\0");
    other[4] = 3;
    env.write_fifo(&other);
    env.event(2, "add", "/devices/good2");
    assert_eq!(env.wait_handled(2).seqs, vec![1, 2]);
    assert!(daemon.log_text().contains("message version 3"));
}

#[test]
fn event_values_reach_the_handler_as_literal_argv_never_through_a_shell() {
    let env = Env::new();
    let argv_log = env.path("argv.out");
    env.script(
        "argv.sh",
        &format!(
            "#!/bin/sh\nprintf '%s\\0' \"$#\" \"$@\" > {}\n",
            argv_log.display()
        ),
    );
    let rules = format!(
        r#"[[rule]]
name = "inject"
match = {{ SUBSYSTEM = "inject" }}
run = ["{}", "$EVIL", "pre-${{EVIL}}-post", "$UNSET"]
last = true
"#,
        env.path("argv.sh").display()
    );
    let _daemon = env.start(&env.config("", &rules));
    let pwned = env.path("pwned");
    let evil = format!(
        "x; touch {p}; $(touch {p}) `touch {p}` * ' \" \\",
        p = pwned.display()
    );
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/i"),
        ("SUBSYSTEM", "inject"),
        ("SEQNUM", "1"),
        ("EVIL", &evil),
    ]);
    wait_for("the handler's argv", || argv_log.exists());
    wait_for("the handler to finish writing", || {
        fs::read(&argv_log).unwrap().split(|&b| b == 0).count() >= 5
    });
    let got = fs::read(&argv_log).unwrap();
    let expected = format!("3\0{evil}\0pre-{evil}-post\0\0");
    assert_eq!(String::from_utf8_lossy(&got), expected);
    assert!(!pwned.exists(), "a value went through a shell");
}

#[test]
fn a_hanging_handler_is_killed_and_a_grandchild_holding_stdout_does_not_stall() {
    let env = Env::new();
    let rules = r#"
[[rule]]
name = "hang"
match = { SUBSYSTEM = "hang" }
run = ["/bin/sh", "-c", "trap '' TERM; sleep 60"]
timeout = "300ms"
last = true

[[rule]]
name = "daemonize"
match = { SUBSYSTEM = "fork" }
run = ["/bin/sh", "-c", "sleep 60 & echo left a grandchild"]
last = true
"#;
    let daemon = env.start(&env.config("", rules));
    let t = Instant::now();
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/h"),
        ("SUBSYSTEM", "hang"),
        ("SEQNUM", "1"),
    ]);
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/f"),
        ("SUBSYSTEM", "fork"),
        ("SEQNUM", "2"),
    ]);
    env.event(3, "add", "/devices/after");
    assert_eq!(env.wait_handled(1).seqs, vec![3]);
    // Well below the 60 s the handlers would take: a hang guard, not a timing claim.
    assert!(t.elapsed() < Duration::from_secs(30));
    let log = daemon.log_text();
    assert!(log.contains("rule hang: timed out"), "{log}");
    assert!(log.contains("SIGKILL"), "{log}");
    assert!(log.contains("left a grandchild"), "{log}");
}

#[test]
fn sighup_with_a_broken_file_keeps_the_old_rules() {
    let env = Env::new();
    let config = env.config("", "");
    let daemon = env.start(&config);
    fs::write(
        &config,
        "[daemon]\ngap_timeout = \"1s\"\n[[rule]]\nname = \"x\"\nrun = [\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("reload failed; keeping the old rules");
    assert!(daemon.log_text().contains("hotplugd.toml:"));
    env.event(1, "add", "/devices/a");
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
}

#[test]
fn sigterm_hands_queued_events_to_the_spool_and_the_next_start_runs_them() {
    let env = Env::new();
    let config = env.config("gap_timeout = \"1h\"", "");
    let daemon = env.start(&config);
    env.event(2, "add", "/devices/b");
    env.event(3, "add", "/devices/c");
    daemon.wait_log("queued 3 add");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let files = env.spool_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("00000000000000000002-"));
    assert!(files[1].starts_with("00000000000000000003-"));
    assert!(env.record().seqs.is_empty());
    assert!(!env.runtime().join("events").exists());
    let _daemon = env.start(&config);
    env.event(1, "add", "/devices/a");
    assert_eq!(env.wait_handled(3).seqs, vec![1, 2, 3]);
}

#[test]
fn the_idle_fifo_reader_sleeps_in_read_never_in_poll_and_a_stop_wakes_it() {
    // Once anyone has polled a pipe, Linux wakes its wait queue on every write after,
    // which costs every shim's write: the reader must wait in read() on the FIFO.
    let env = Env::new();
    let config = env.config("", "");
    let daemon = env.start(&config);
    env.event(1, "add", "/devices/a");
    env.wait_handled(1);
    let proc = PathBuf::from(format!("/proc/{}", daemon.child.id()));
    let fifo_fd = fs::read_dir(proc.join("fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| fs::read_link(e.path()).ok() == Some(env.runtime().join("events")))
        .map(|e| e.file_name().to_string_lossy().parse::<u64>().unwrap())
        .expect("the daemon holds the FIFO open");
    let fifo_task = fs::read_dir(proc.join("task"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| fs::read_to_string(e.path().join("comm")).unwrap_or_default() == "fifo\n")
        .expect("a thread named fifo")
        .path();
    let mut last = String::new();
    wait_for("the FIFO thread to sleep in read() on the FIFO", || {
        // "NR ARG1 ...": the system call a blocked thread is in, arguments in hex.
        last = fs::read_to_string(fifo_task.join("syscall")).unwrap_or_default();
        let f: Vec<&str> = last.split_whitespace().collect();
        f.len() > 1
            && f[0] == libc::SYS_read.to_string()
            && u64::from_str_radix(f[1].trim_start_matches("0x"), 16) == Ok(fifo_fd)
    });
    let log = daemon.log.clone();
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let log = fs::read_to_string(log).unwrap();
    assert!(
        !log.contains("did not finish"),
        "the stop did not wake the reader:\n{log}"
    );
}

#[test]
fn check_config_reports_file_line_and_column() {
    let env = Env::new();
    let bad = env.path("bad.toml");
    fs::write(
        &bad,
        "[daemon]\ngap_timeout = \"2s\"\n\n[[rule]]\nname = \"x\"\nmatch = { ACTION = \"[add\" }\nrun = [\"/bin/true\"]\n",
    )
    .unwrap();
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6:", bad.display())), "{err}");
    let good = env.config("", "");
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_daemon_refuses_unsafe_runtime_paths_and_a_second_daemon() {
    let env = Env::new();
    let config = env.config("", "");
    let run = |dir: &std::path::Path| {
        Command::new(DAEMON)
            .arg("--config")
            .arg(&config)
            .arg("--runtime-dir")
            .arg(dir)
            .output()
            .unwrap()
    };
    let daemon = env.start(&config);
    let out = run(&env.runtime());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another hotplugd"));
    drop(daemon);

    // The FIFO path is a regular file, then a symlink.
    let rt = env.path("rt2");
    fs::create_dir(&rt).unwrap();
    fs::write(rt.join("events"), b"").unwrap();
    let out = run(&rt);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a FIFO"));
    fs::remove_file(rt.join("events")).unwrap();
    std::os::unix::fs::symlink("/dev/null", rt.join("events")).unwrap();
    let out = run(&rt);
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));

    // The runtime dir itself a symlink, and one writable by others.
    let link = env.path("rt-link");
    std::os::unix::fs::symlink(env.runtime(), &link).unwrap();
    let out = run(&link);
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink"));
    let open = env.path("rt-open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = run(&open);
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by group or others"));
}

#[test]
fn the_shim_answers_help_and_version_without_sending_anything() {
    let env = Env::new();
    for (arg, want) in [
        ("--help", "usage: hotplug SUBSYSTEM"),
        ("--version", "hotplug "),
    ] {
        let out = Command::new(SHIM)
            .arg(arg)
            .env("HOTPLUGD_RUNTIME_DIR", env.runtime())
            .output()
            .unwrap();
        assert!(out.status.success(), "{arg}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(want),
            "{out:?}"
        );
        // Nothing was queued or spooled: the runtime dir was never made.
        assert!(!env.runtime().exists(), "{arg} sent an event");
    }
    let out = Command::new(SHIM).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: hotplug SUBSYSTEM"));
}

#[test]
fn the_shim_refuses_to_loop_and_survives_closed_std_fds() {
    let env = Env::new();
    let out = Command::new(SHIM)
        .arg("test")
        .env_clear()
        .env("HOTPLUGD_RUNTIME_DIR", env.runtime())
        .env("HOTPLUGD_RULE", "record")
        .env("ACTION", "add")
        .env("DEVPATH", "/x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to loop"));
    assert!(!env.runtime().exists());

    let _daemon = env.start(&env.config("", ""));
    // The kernel may start the helper with 0-2 closed: the FIFO must not become fd 1.
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {} test <&- >&- 2>&-", SHIM))
        .env_clear()
        .env("HOTPLUGD_RUNTIME_DIR", env.runtime())
        .env("ACTION", "add")
        .env("DEVPATH", "/devices/closed")
        .env("SEQNUM", "1")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
}

#[test]
fn the_demo_replays_this_machines_devices_and_cleans_up() {
    if !std::path::Path::new("/sys/devices").is_dir() {
        skip_or_fail("the demo: no /sys/devices here");
        return;
    }
    let out = Command::new(DAEMON).arg("--demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = text
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no device count in {text}"));
    assert!(n > 0, "{text}");
    assert!(
        text.contains(&format!(
            "{n} events through the shim (0 shims failed), {n} handled"
        )),
        "{text}"
    );
    assert!(text.contains("0 late, 0 duplicates"), "{text}");
    let dir = text.rsplit("cleaned up ").next().unwrap().trim();
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

#[test]
fn the_demo_piped_into_head_still_cleans_up() {
    if !std::path::Path::new("/sys/devices").is_dir() {
        skip_or_fail("the demo: no /sys/devices here");
        return;
    }
    // `hotplugd --demo | head -1`: stdout closes after the first line.
    let mut child = Command::new(DAEMON)
        .arg("--demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = child.wait();
    // "hotplugd demo: daemon in /tmp/hotplugd-demo-PID/run, ..."
    let run = first
        .split("daemon in ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no runtime dir in {first:?}"));
    let dir = std::path::Path::new(run).parent().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Nor is its daemon still running: it would still hold the runtime dir's name.
    for proc in fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = fs::read(proc.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(run),
            "the demo's daemon outlived it: pid {}",
            proc.file_name().to_string_lossy()
        );
    }
}

/// Started with stdin and stdout closed (some supervisors do), the daemon's own files must
/// not end up as a handler's stdio: Rust's start-up fills closed fds 0-2 with /dev/null,
/// and the spawn clears close-on-exec where an fd already sits on its target number.
#[test]
fn closed_std_fds_at_start_do_not_reach_handlers() {
    let env = Env::new();
    let fds = env.path("fds.out");
    env.script(
        "fds.sh",
        &format!(
            // In a command substitution, so the shell's own fds are the ones read.
            "#!/bin/sh\nfds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2)\n\
             printf '%s\\n' \"$fds\" > {}.tmp && mv {0}.tmp {0}\n",
            fds.display()
        ),
    );
    let rules = format!(
        "[[rule]]\nname = \"fds\"\nrun = [\"{}\"]\n",
        env.path("fds.sh").display()
    );
    let config = env.config("", &rules);
    let log = env.path("closed.log");
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" <&- >&-"#)
        .arg(DAEMON)
        .arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(env.runtime())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the control socket", || {
        env.runtime().join("control").exists()
    });
    env.event(1, "add", "/devices/closed");
    wait_for("the handler's fds", || fds.exists());
    let _ = child.kill();
    let _ = child.wait();
    let text = fs::read_to_string(&fds).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "/dev/null", "{text}");
    assert!(lines[1].starts_with("pipe:"), "{text}");
    assert_eq!(lines[1], lines[2], "{text}");
}

/// An fd the daemon's starter leaked (here the write end of a pipe, opened by a shell that
/// then execs the daemon) is closed at start, not only kept from handlers: a reader
/// waiting for that pipe's end would otherwise wait as long as the daemon runs.
#[test]
fn an_fd_the_starter_leaked_is_closed() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let env = Env::new();
    let pipe = env.path("leak");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&pipe)
        .unwrap();
    let script = format!("exec 9>{}; exec \"$0\" \"$@\"", pipe.display());
    let _d = env
        .daemon(&env.config("", ""))
        .wrapper(["/bin/sh", "-c", &script])
        .start();
    // Ready: the shell is gone, and the daemon is the only process that got fd 9.
    let mut buf = [0u8; 16];
    match reader.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the leaked write end is still open: read gave {other:?}"),
    }
}
