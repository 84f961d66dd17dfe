//! hotplugctl against a real daemon over the real control socket.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn status_field(env: &Env, key: &str) -> String {
    let out = env.ctl_ok(&["status", "--json"]);
    json_field(&out, key)
}

#[test]
fn status_reports_counters_and_json() {
    let env = Env::new();
    let _d = env.start(&env.config("", ""));
    env.event(1, "add", "/devices/a");
    env.event(2, "add", "/devices/b");
    env.wait_handled(2);
    wait_for("handled 2", || status_field(&env, "handled") == "2");
    assert_eq!(status_field(&env, "received"), "2");
    assert_eq!(status_field(&env, "last_handled"), "2");
    assert_eq!(status_field(&env, "paused"), "false");
    let human = env.ctl_ok(&["status"]);
    assert!(human.contains("handled:"), "{human}");
    assert!(
        human.contains(&format!("pid:               {}", _d.child.id())),
        "{human}"
    );
}

#[test]
fn settle_waits_for_a_slow_handler_and_times_out_listing_what_is_pending() {
    let env = Env::new();
    let rules = r#"
[[rule]]
name = "slow"
match = { SUBSYSTEM = "slow" }
run = ["/bin/sleep", "0.5"]

[[rule]]
name = "slower"
match = { SUBSYSTEM = "slower" }
run = ["/bin/sleep", "3"]
last = true
"#;
    let _d = env.start(&env.config("", rules));
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/s"),
        ("SUBSYSTEM", "slow"),
        ("SEQNUM", "1"),
    ]);
    env.ctl_ok(&["settle", "--seq", "1", "--timeout", "30"]);
    assert_eq!(
        env.record().seqs,
        vec![1],
        "settle returned before the handler ran"
    );
    assert_eq!(status_field(&env, "queued"), "0");

    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/t"),
        ("SUBSYSTEM", "slower"),
        ("SEQNUM", "2"),
    ]);
    env.event(3, "add", "/devices/u");
    let out = env.ctl(&["settle", "--seq", "3", "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains("running 2 add /devices/t (slower)"), "{err}");
    assert!(err.contains("3 add /devices/u (test)"), "{err}");
    // With the kernel's SEQNUM from a file, as settle reads /sys/kernel/uevent_seqnum.
    fs::write(env.path("kseq"), "3\n").unwrap();
    let k = env.path("kseq");
    env.ctl_ok(&[
        "settle",
        "--seqnum-file",
        k.to_str().unwrap(),
        "--timeout",
        "30",
    ]);
    assert_eq!(env.record().seqs, vec![1, 3]);
}

#[test]
fn settle_for_a_seqnum_that_never_comes_ends_after_the_gap_timeout() {
    let env = Env::new();
    let _d = env.start(&env.config("gap_timeout = \"300ms\"", ""));
    env.event(1, "add", "/devices/a");
    // SEQNUM 2 was spent on an event the kernel never ran the helper for.
    env.ctl_ok(&["settle", "--seq", "2", "--timeout", "30"]);
    assert_eq!(env.record().seqs, vec![1]);
}

#[test]
fn monitors_see_every_event_in_order_with_env_and_outcomes() {
    let env = Env::new();
    let _d = env.start(&env.config("", ""));
    let spawn_monitor = |args: &[&str]| env.monitor(args);
    let mut plain = spawn_monitor(&["--queued"]);
    // Both kinds, the default: an event's QUEUED line comes first.
    let mut with_env = spawn_monitor(&["--env", "--subsystem", "test"]);
    let mut handled = spawn_monitor(&["--handled"]);
    wait_for("three monitors", || status_field(&env, "monitors") == "3");
    for s in [2, 1, 3] {
        env.event(s, "add", &format!("/devices/m{s}"));
    }
    env.wait_handled(3);
    env.ctl_ok(&["settle", "--seq", "3"]);
    let read_lines = |child: &mut std::process::Child, n: usize| {
        let mut r = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..n {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            lines.push(l.trim_end().to_owned());
        }
        lines
    };
    assert_eq!(
        read_lines(&mut plain, 3),
        vec![
            "QUEUED 1 add /devices/m1 (test)",
            "QUEUED 2 add /devices/m2 (test)",
            "QUEUED 3 add /devices/m3 (test)"
        ]
    );
    let lines = read_lines(&mut with_env, 7);
    assert_eq!(lines[0], "QUEUED 1 add /devices/m1 (test)");
    assert!(lines.contains(&"SEQNUM=1".to_owned()), "{lines:?}");
    assert!(
        lines.contains(&"DEVPATH=/devices/m1".to_owned()),
        "{lines:?}"
    );
    let out = read_lines(&mut handled, 3);
    assert!(out[0].starts_with("1 record exit_0 "), "{out:?}");
    assert!(out[2].starts_with("3 record exit_0 "), "{out:?}");
    for mut c in [plain, with_env, handled] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    wait_for("monitors gone", || {
        env.event(4, "change", "/devices/m1");
        status_field(&env, "monitors") == "0"
    });
}

/// Events 1..=n straight into the FIFO in batches, each with a 200-byte variable, on
/// DEVPATH `{prefix}{seq:06}{suffix}`; returns once all are handled.
fn flood(env: &Env, n: u64, prefix: &str, suffix: &str) {
    let mut batch = Vec::new();
    for s in 1..=n {
        let payload = format!(
            "test\0ACTION=add\0DEVPATH={prefix}{s:06}{suffix}\0SEQNUM={s}\0PAD={}\0",
            "x".repeat(200)
        );
        batch.extend_from_slice(&hotplugd::message::encode(payload.as_bytes()));
        if batch.len() > 3000 {
            env.write_fifo(&batch);
            batch.clear();
        }
    }
    env.write_fifo(&batch);
    wait_for("all handled", || {
        status_field(env, "handled") == n.to_string()
    });
}

#[test]
fn a_monitor_that_stops_reading_is_dropped_and_handlers_keep_their_pace() {
    let env = Env::new();
    // No rule matches, so the runner takes events as fast as they come.
    let config = env.bare_config("", "");
    let _d = env.start(&config);
    let mut stuck = UnixStream::connect(env.runtime().join("control")).unwrap();
    stuck.write_all(b"monitor env\n").unwrap();
    wait_for("the monitor", || status_field(&env, "monitors") == "1");
    let n = 15_000u64;
    flood(&env, n, "/devices/flood/", "/with/a/longer/path");
    wait_for("the overrun", || {
        status_field(&env, "monitor_overruns") == "1"
    });
    assert_eq!(status_field(&env, "monitors"), "0");
    wait_for("memory freed", || status_field(&env, "queue_bytes") == "0");
    // The stuck client, once it reads, finds the overrun marker at the end.
    stuck
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut all = String::new();
    let _ = stuck.read_to_string(&mut all);
    assert!(
        all.contains("%error overrun"),
        "{}",
        &all[all.len().saturating_sub(200)..]
    );
}

#[test]
fn a_monitor_that_falls_behind_on_processed_events_loses_some_and_is_told_how_many() {
    let env = Env::new();
    let _d = env.start(&env.bare_config("", ""));
    let mut slow = UnixStream::connect(env.runtime().join("control")).unwrap();
    slow.write_all(b"monitor processed env\n").unwrap();
    wait_for("the monitor", || status_field(&env, "monitors") == "1");
    // More than its socket's buffer, the batch being written and the 1024 held can take.
    let n = 5_000u64;
    flood(&env, n, "/devices/slow/", "");
    // Now it reads: every event is either shown or counted lost, and it stays.
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut r = BufReader::new(slow.try_clone().unwrap());
    let (mut shown, mut lost, mut last) = (0u64, 0u64, 0u64);
    while shown + lost < n {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "the monitor ended");
        if let Some(rest) = line.strip_prefix("PROCESSED ") {
            let seq: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            assert!(seq > last, "{seq} after {last}");
            last = seq;
            shown += 1;
        } else if let Some(k) = line.strip_prefix("LOST ") {
            lost += k.trim_end().parse::<u64>().unwrap();
        } else {
            assert!(!line.starts_with('%'), "{line}");
        }
    }
    assert_eq!(shown + lost, n);
    assert!(lost > 0 && shown > 0, "shown {shown}, lost {lost}");
    assert_eq!(status_field(&env, "monitors"), "1");
    assert_eq!(status_field(&env, "monitor_overruns"), "0");
}

#[test]
fn pause_holds_handlers_resume_releases_in_order_and_recall_removes() {
    let env = Env::new();
    let d = env.start(&env.config("", ""));
    env.ctl_ok(&["pause"]);
    for s in [3, 1, 2, 4] {
        env.event(s, "add", &format!("/devices/p{s}"));
    }
    d.wait_log("queued 4 add");
    wait_for("4 queued", || status_field(&env, "queued") == "4");
    assert!(env.record().seqs.is_empty());
    assert_eq!(status_field(&env, "paused"), "true");
    env.ctl_ok(&["recall", "2"]);
    let out = env.ctl(&["recall", "2"]);
    assert_eq!(out.status.code(), Some(1));
    env.ctl_ok(&["resume"]);
    assert_eq!(env.wait_handled(3).seqs, vec![1, 3, 4]);
    let out = env.ctl(&["recall", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SEQNUM 3"));
    assert_eq!(status_field(&env, "recalled"), "1");
}

#[test]
fn reload_reports_errors_and_log_level_changes() {
    let env = Env::new();
    let config = env.config("", "");
    let d = env.start(&config);
    let good = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        good.replace("name = \"record\"", "name = \"record\"\nbogus = 1"),
    )
    .unwrap();
    let out = env.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hotplugd.toml:"), "{text}");
    assert!(text.contains("bogus"), "{text}");
    fs::write(&config, &good).unwrap();
    assert!(env.ctl_ok(&["reload"]).contains("1 rules"));
    env.ctl_ok(&["log-level", "trace"]);
    d.wait_log("log level now TRACE");
    assert_eq!(env.ctl(&["log-level", "loud"]).status.code(), Some(2));
}

#[test]
fn silent_and_vanishing_clients_block_nobody() {
    let env = Env::new();
    let _d = env.start(&env.config("", ""));
    let _silent = UnixStream::connect(env.runtime().join("control")).unwrap();
    let mut half = UnixStream::connect(env.runtime().join("control")).unwrap();
    half.write_all(b"stat").unwrap();
    drop(half);
    let mut gone = UnixStream::connect(env.runtime().join("control")).unwrap();
    gone.write_all(b"status\n").unwrap();
    drop(gone);
    env.event(1, "add", "/devices/a");
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
    env.ctl_ok(&["status"]);
    let mut raw = UnixStream::connect(env.runtime().join("control")).unwrap();
    raw.write_all(b"frobnicate\n").unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "%error unknown command \"frobnicate\"\n");
}

#[test]
fn trigger_synthesize_over_a_fake_sysfs_and_dry_run_on_the_real_one() {
    let env = Env::new();
    let sys = env.path("sys");
    let dev = sys.join("devices/platform/serial8250");
    fs::create_dir_all(dev.join("tty/ttyS0")).unwrap();
    fs::create_dir_all(sys.join("bus/platform")).unwrap();
    fs::create_dir_all(sys.join("class/tty")).unwrap();
    fs::write(
        dev.join("uevent"),
        "DRIVER=serial8250\nMODALIAS=platform:serial8250\n",
    )
    .unwrap();
    fs::write(
        dev.join("tty/ttyS0/uevent"),
        "MAJOR=4\nMINOR=64\nDEVNAME=ttyS0\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../../../bus/platform", dev.join("subsystem")).unwrap();
    std::os::unix::fs::symlink("../../../../../class/tty", dev.join("tty/ttyS0/subsystem"))
        .unwrap();
    env.script(
        "env.sh",
        &format!(
            "#!/bin/sh\nprintf '%s %s %s %s\\n' \"$DEVPATH\" \"$SUBSYSTEM\" \"$DEVNAME\" \"$MODALIAS\" >> {}\n",
            env.path("env.out").display()
        ),
    );
    let rules = format!(
        "[[rule]]\nname = \"env\"\nrun = [\"{}\"]\nlast = true\n",
        env.path("env.sh").display()
    );
    let _d = env.start(&env.config("", &rules));
    let sys_s = sys.to_str().unwrap();
    let out = env.ctl_ok(&["trigger", "--synthesize", "--sysfs", sys_s, "--settle"]);
    assert!(
        out.starts_with("2 devices queued (add, SYNTH_UUID="),
        "{out}"
    );
    // --settle returned: both handlers already ran.
    let got = fs::read_to_string(env.path("env.out")).unwrap();
    assert_eq!(
        got,
        "/devices/platform/serial8250 platform  platform:serial8250\n\
         /devices/platform/serial8250/tty/ttyS0 tty ttyS0 \n"
    );
    let out = env.ctl_ok(&[
        "trigger",
        "--synthesize",
        "--sysfs",
        sys_s,
        "--subsystem-match",
        "tty",
        "--action",
        "change",
        "--settle",
    ]);
    assert!(out.starts_with("1 devices queued (change"), "{out}");

    if std::path::Path::new("/sys/devices").is_dir() {
        let out = env.ctl(&["trigger", "--dry-run"]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let n: usize = err.split(' ').next().unwrap().parse().unwrap();
        assert!(n > 0, "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
    }
}

#[test]
fn test_shows_matching_rules_and_exact_argv_without_running_anything() {
    let env = Env::new();
    let config = env.path("t.toml");
    fs::write(
        &config,
        r#"
[[rule]]
name = "modules"
match = { ACTION = "add", MODALIAS = "?*" }
run = ["/sbin/modprobe", "-bq", "$MODALIAS"]

[[rule]]
name = "disk"
match = { SUBSYSTEM = "block", DEVTYPE = "disk" }
run = ["/usr/local/sbin/usb-disk", "${DEVNAME}", "x; rm -rf /"]
timeout = "60s"
last = true

[[rule]]
name = "never"
run = ["/bin/false"]
"#,
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let out = env.ctl_ok(&[
        "test",
        "--config",
        c,
        "ACTION=add",
        "DEVPATH=/devices/sda",
        "SUBSYSTEM=block",
        "DEVTYPE=disk",
        "DEVNAME=/dev/sda",
        "MODALIAS=scsi:t-0x00",
    ]);
    assert!(
        out.contains("rule modules: /sbin/modprobe -bq scsi:t-0x00 (timeout 30s)"),
        "{out}"
    );
    assert!(
        out.contains("rule disk: /usr/local/sbin/usb-disk /dev/sda 'x; rm -rf /' (timeout 60s)"),
        "{out}"
    );
    assert!(!out.contains("never"), "{out}");
    let out = env.ctl_ok(&[
        "test",
        "--config",
        c,
        "ACTION=remove",
        "DEVPATH=/devices/x",
        "SUBSYSTEM=net",
    ]);
    assert!(out.contains("rule never: /bin/false"), "{out}");
    assert_eq!(
        env.ctl(&["test", "--config", c, "ACTION=add"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn errors_name_the_socket_and_other_uids_are_refused() {
    let env = Env::new();
    let out = env.ctl(&["status"]);
    // Its own code, so init scripts tell "not started" from a timeout (1).
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daemon not running at"), "{err}");
    assert!(err.contains("/control"), "{err}");
    assert_eq!(env.ctl(&["frob"]).status.code(), Some(2));

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("the other-uid check needs root to run a client as nobody");
        return;
    }
    let d = env.start(&env.config("", ""));
    // Let nobody reach the socket, so that SO_PEERCRED is what refuses it.
    use std::os::unix::fs::PermissionsExt;
    for p in [env.dir.path().to_owned(), env.runtime()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o711)).unwrap();
    }
    fs::set_permissions(
        env.runtime().join("control"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            CTL,
            "--runtime-dir",
        ])
        .arg(env.runtime())
        .args(["pause"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    d.wait_log("refused a request from uid 65534");
    assert_eq!(status_field(&env, "paused"), "false");
}

#[test]
fn helper_enable_disable_and_status_write_the_kernel_setting() {
    let env = Env::new();
    let file = env.path("hotplug-setting");
    fs::write(&file, "\n").unwrap();
    let f = file.to_str().unwrap();
    assert!(env
        .ctl_ok(&["helper", "status", "--file", f])
        .contains("no helper"));
    let out = env.ctl_ok(&["helper", "enable", SHIM, "--file", f]);
    assert!(out.contains(SHIM), "{out}");
    assert_eq!(fs::read_to_string(&file).unwrap(), format!("{SHIM}\n"));
    assert!(env
        .ctl_ok(&["helper", "status", "--file", f])
        .contains(SHIM));
    env.ctl_ok(&["helper", "disable", "--file", f]);
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), "");
    let out = env.ctl(&["helper", "enable", "relative/hotplug", "--file", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an absolute path"));
    // On a kernel built without CONFIG_UEVENT_HELPER (like Debian's), status says what
    // to do and succeeds; enable cannot.
    fs::remove_file(env.helper_file()).unwrap();
    let out = env.ctl_ok(&["helper", "status"]);
    assert!(
        out.contains("CONFIG_UEVENT_HELPER") && out.contains("sources = \"auto\""),
        "{out}"
    );
    let out = env.ctl(&["helper", "enable"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CONFIG_UEVENT_HELPER") && err.contains("netlink"),
        "{err}"
    );
}

/// Headless Chromium, if installed: `--dump-dom` of the rendered SVG.
fn chromium_dom(svg: &std::path::Path) -> Option<String> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", svg.display()))
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn timeline_draws_a_bar_per_handler_run_and_the_gap_waits() {
    let env = Env::new();
    let rules = r#"
[[rule]]
name = "fails"
match = { SUBSYSTEM = "bad" }
run = ["/bin/false"]
last = true
"#;
    let _d = env.start(&env.config("gap_timeout = \"200ms\"", rules));
    env.event(1, "add", "/devices/a");
    env.event(3, "add", "/devices/c");
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/d"),
        ("SUBSYSTEM", "bad"),
        ("SEQNUM", "4"),
    ]);
    env.ctl_ok(&["settle", "--seq", "4"]);
    let table = env.ctl_ok(&["timeline"]);
    assert_eq!(table.matches("record: exit 0").count(), 2, "{table}");
    assert!(table.contains("fails: exit 1"), "{table}");
    assert!(table.contains("waited for SEQNUM 2..=2"), "{table}");
    let svg = env.path("timeline.svg");
    env.ctl_ok(&["timeline", "--svg", svg.to_str().unwrap()]);
    let text = fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches("<rect class=\"run").count(), 3, "{text}");
    match chromium_dom(&svg) {
        Some(dom) => {
            // The browser parsed it as SVG and kept every bar and the wait band.
            assert_eq!(dom.matches("<rect class=\"run").count(), 3, "{dom}");
            assert_eq!(dom.matches("<rect class=\"wait\"").count(), 1, "{dom}");
            assert!(dom.contains("3 record"), "{dom}");
        }
        None => skip_or_fail("the browser check: chromium is not installed"),
    }
}

#[test]
fn trigger_settle_counts_tagged_events_that_were_coalesced_or_recalled() {
    let env = Env::new();
    let names = ["a", "b", "c"];
    let sys = fake_sysfs(&env, &names);
    let d = env.start(&env.config("", ""));
    env.ctl_ok(&["pause"]);
    // As the kernel would: each write to a `uevent` file becomes an event with the tag.
    let (trigger, _) = trigger_as_kernel(&env, &sys, &names, 1, &[]);
    d.wait_log("queued 3 add");
    // One tagged add is recalled, another coalesces with an untagged remove: neither
    // will ever be handled, and the trigger must not wait for them.
    env.ctl_ok(&["recall", "2"]);
    env.event(4, "remove", "/devices/fake/a");
    d.wait_log("coalesced 4 remove");
    env.ctl_ok(&["resume"]);
    let out = trigger.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "trigger --settle: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.record().seqs, vec![3]);
}

#[test]
fn settle_before_the_daemon_knows_its_start_waits_for_the_first_event() {
    let env = Env::new();
    // No SEQNUM file: the first numbered event sets where SEQNUMs start.
    let config = env.config("gap_timeout = \"300ms\"", "");
    let text = fs::read_to_string(&config).unwrap();
    let seq_line = format!("seqnum_file = \"{}\"", env.path("seqnum").display());
    fs::write(&config, text.replace(&seq_line, "seqnum_file = \"\"")).unwrap();
    let _d = env.start(&config);
    let out = env.ctl(&["settle", "--seq", "3", "--timeout", "0.3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not know where SEQNUMs start"), "{err}");
    assert!(err.contains("has still seen no numbered event"), "{err}");

    let mut settle = env
        .ctl_command(&["settle", "--seq", "3", "--timeout", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(settle.stderr.take().unwrap());
    let mut notice = String::new();
    stderr.read_line(&mut notice).unwrap();
    assert!(notice.contains("waiting for the first one"), "{notice}");
    // 2 never comes: once 1 has set the start, it is skipped after the gap timeout.
    env.event(1, "add", "/devices/a");
    env.event(3, "add", "/devices/c");
    assert!(settle.wait().unwrap().success());
    assert_eq!(env.record().seqs, vec![1, 3]);
}

/// `hotplugctl ARGS` with the files `ro` not writable for it. Root gets read-only bind
/// mounts in a mount namespace of its own (EROFS, as in a container with a read-only
/// /sys), since permissions do not stop root; anyone else gets the write bits taken
/// away (EACCES, as a user triggering /sys gets). None if root may not mount here.
fn ctl_with_read_only(
    env: &Env,
    ro: &[std::path::PathBuf],
    args: &[&str],
) -> Option<std::process::Output> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let mut cmd = env.ctl_command(args);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        for p in ro {
            fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        }
        return Some(cmd.output().unwrap());
    }
    let paths: Vec<CString> = ro
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap())
        .collect();
    // SAFETY: only unshare and mount, on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let root = c"/".as_ptr();
            let none = std::ptr::null();
            if libc::mount(
                none,
                root,
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ) != 0
            {
                return fail();
            }
            for p in &paths {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                if libc::mount(p.as_ptr(), p.as_ptr(), none, libc::MS_BIND, none.cast()) != 0
                    || libc::mount(none, p.as_ptr(), none, flags, none.cast()) != 0
                {
                    return fail();
                }
            }
            Ok(())
        });
    }
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) => {
            skip_or_fail(&format!("no read-only bind mount for root here: {e}"));
            None
        }
    }
}

#[test]
fn trigger_exits_1_when_uevent_writes_fail() {
    let env = Env::new();
    let names = ["a", "b", "c"];
    let sys = fake_sysfs(&env, &names);
    let uevent = |name: &str| sys.join("devices/fake").join(name).join("uevent");
    let sys_s = sys.to_str().unwrap();
    // One device that cannot be triggered among others: they are triggered, and the
    // command still fails, naming it.
    let Some(out) = ctl_with_read_only(&env, &[uevent("c")], &["trigger", "--sysfs", sys_s]) else {
        return;
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.starts_with("2 devices triggered (add"), "{stdout}");
    assert!(
        stderr.contains(&uevent("c").display().to_string()),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 of 3 devices could not be triggered"),
        "{stderr}"
    );
    assert!(fs::read_to_string(uevent("b")).unwrap().starts_with("add "));
    // Not one: exit 1, and no wait for events that will never come.
    let all: Vec<_> = names.iter().map(|n| uevent(n)).collect();
    let out = ctl_with_read_only(&env, &all, &["trigger", "--sysfs", sys_s, "--settle"]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.starts_with("0 devices triggered (add"), "{stdout}");
    assert!(
        stderr.contains("3 of 3 devices could not be triggered"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&uevent("a").display().to_string()),
        "{stderr}"
    );
}
