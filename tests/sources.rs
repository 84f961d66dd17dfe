//! Which event sources the daemon opens, and what it says about them: `sources = "auto"`
//! (the default) follows the kernel's uevent helper setting, a FIFO-only daemon that can
//! hear nothing says so loudly, and the default config hears a real kernel event on a
//! kernel without a helper.
//!
//! The helper setting is the harness's stand-in file (`HOTPLUGD_HELPER_FILE`), never the
//! host's. Tests that make a real kernel event (`echo change > .../uevent`, which only
//! emits an event) need root and a writable /sys; without them they print why and pass,
//! unless `CI=true`.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use hotplugd::control::{Client, End};

/// A harmless device to make the kernel announce: writing its `uevent` emits an event
/// and changes nothing.
const DEVICE: &str = "/sys/devices/virtual/mem/null";

fn status(env: &Env) -> Vec<(String, String)> {
    let (lines, end) = hotplugd::control::call(&env.runtime(), "status").unwrap();
    assert!(matches!(end, End::Ok(_)), "{end:?}");
    lines
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn field(env: &Env, key: &str) -> String {
    status(env)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in status"))
        .1
}

/// Ask the kernel for a `change` of [`DEVICE`] tagged `SYNTH_UUID=tag`; false (after
/// saying why) if this machine does not let us, which fails under `CI=true`.
fn kernel_event(tag: &str) -> bool {
    let uevent = Path::new(DEVICE).join("uevent");
    match fs::write(&uevent, format!("change {tag}")) {
        Ok(()) => true,
        Err(e) => {
            skip_or_fail(&format!(
                "{}: {e} (needs root and a writable /sys, as CI has)",
                uevent.display()
            ));
            false
        }
    }
}

/// Wait (bounded) until the daemon has handled `count` events tagged `tag`.
fn wait_tag(runtime: &Path, tag: &str, count: u64) {
    let client = Client::request(runtime, &format!("wait-tag {tag} {count}\n")).unwrap();
    client.set_timeout(Some(DEADLINE));
    let (_, end) = client
        .finish()
        .unwrap_or_else(|e| panic!("waiting for {count} events tagged {tag}: {e}"));
    assert!(matches!(end, End::Ok(_)), "{end:?}");
}

#[test]
fn fifo_only_with_no_helper_of_ours_warns_at_start_and_in_status() {
    let env = Env::new();
    // A kernel built without CONFIG_UEVENT_HELPER.
    fs::remove_file(env.helper_file()).unwrap();
    let config = env.config("sources = [\"fifo\"]", "");
    let d = env.start(&config);
    let log = d.log_text();
    assert!(
        log.contains("WARN ] events come from the FIFO only, but this kernel has no uevent helper"),
        "{log}"
    );
    assert!(
        log.contains("kernel helper none (CONFIG_UEVENT_HELPER off); events from the FIFO)"),
        "{log}"
    );
    assert_eq!(field(&env, "sources"), "fifo");
    assert_eq!(
        field(&env, "kernel_helper"),
        "none (CONFIG_UEVENT_HELPER off)"
    );
    assert!(field(&env, "warning").contains("no kernel event will arrive"));
    let out = env.ctl_ok(&["helper", "status"]);
    assert!(out.contains("daemon: running, sources fifo"), "{out}");
    assert!(
        out.contains("warning: events come from the FIFO only"),
        "{out}"
    );
    assert!(out.contains("sources = \"auto\""), "{out}");

    // Status reads the setting afresh: empty, someone else's, then ours.
    fs::write(env.helper_file(), "\n").unwrap();
    assert_eq!(field(&env, "kernel_helper"), "empty");
    assert!(field(&env, "warning").contains("kernel-hotplug is empty"));
    fs::write(env.helper_file(), "/sbin/mdev\n").unwrap();
    assert_eq!(field(&env, "kernel_helper"), "/sbin/mdev (not ours)");
    assert!(field(&env, "warning").contains("names /sbin/mdev, not hotplugd's shim"));
    let out = env.ctl_ok(&["helper", "status"]);
    assert!(out.contains("(not hotplugd's shim)"), "{out}");
    assert!(out.contains("hotplugctl helper enable"), "{out}");
    env.ctl_ok(&["helper", "enable", SHIM]);
    assert_eq!(field(&env, "kernel_helper"), format!("{SHIM} (ours)"));
    assert_eq!(field(&env, "warning"), "-");
    // ... and the FIFO it listens on works.
    env.event(1, "add", "/devices/x");
    assert_eq!(env.wait_handled(1).seqs, [1]);
}

#[test]
fn auto_opens_the_fifo_only_where_the_kernel_can_run_the_shim() {
    let env = Env::new();
    fs::remove_file(env.helper_file()).unwrap();
    let config = env.config("sources = \"auto\"", "");
    let d = env.start(&config);
    let log = d.log_text();
    assert!(
        log.contains(
            "kernel helper none (CONFIG_UEVENT_HELPER off); sources auto: events from netlink)"
        ),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{log}");
    assert_eq!(field(&env, "sources"), "netlink");
    assert_eq!(field(&env, "warning"), "-");
    // No FIFO: a shim run anyway spools, rather than writing into a pipe nobody reads.
    assert!(!env.runtime().join("events").exists());
    assert!(env
        .ctl_ok(&["helper", "status"])
        .contains("nothing to do: the daemon hears the kernel on netlink"));
    d.stop();

    // With the setting (naming our shim), the FIFO too.
    fs::write(env.helper_file(), format!("{SHIM}\n")).unwrap();
    let d = env.start(&config);
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "kernel helper {SHIM} (ours); sources auto: events from the FIFO and netlink)"
        )),
        "{log}"
    );
    assert_eq!(field(&env, "sources"), "fifo,netlink");
    env.event(1, "add", "/devices/x");
    assert_eq!(env.wait_handled(1).seqs, [1]);
}

/// The kernel runs the helper and broadcasts on netlink: with both sources each SEQNUM
/// arrives twice and runs once.
#[test]
fn auto_with_the_shim_as_helper_runs_a_real_event_once() {
    let env = Env::new();
    let tag = hotplugd::sysfs::random_uuid().unwrap();
    // The kernel's own SEQNUMs, and a rule for this test's event only: other events
    // the host makes meanwhile run nothing.
    let config = env.bare_config(
        "sources = \"auto\"\nseqnum_file = \"/sys/kernel/uevent_seqnum\"\ngap_timeout = \"1s\"",
        &format!(
            r#"[[rule]]
name = "mine"
match = {{ SYNTH_UUID = "{tag}" }}
run = ["{}"]"#,
            env.path("record.sh").display()
        ),
    );
    let _d = env.start(&config);
    assert_eq!(field(&env, "sources"), "fifo,netlink");
    if !kernel_event(&tag) {
        return;
    }
    wait_tag(&env.runtime(), &tag, 1);
    let rec = env.record();
    assert_eq!(rec.seqs.len(), 1, "{rec:?}");
    let seq = rec.seqs[0].to_string();
    // The helper's copy of the same event, as the kernel would have run the shim.
    let st = env.shim(&[
        ("ACTION", "change"),
        ("DEVPATH", "/devices/virtual/mem/null"),
        ("SUBSYSTEM", "mem"),
        ("SEQNUM", &seq),
        ("SYNTH_UUID", &tag),
    ]);
    assert!(st.success());
    wait_for("the FIFO's copy to be dropped", || {
        field(&env, "duplicates") == "1"
    });
    assert_eq!(env.record().seqs, rec.seqs);
}

/// The issue's new user: no config file, a kernel without a helper, `echo change` into a
/// uevent file. The built-in default must hear it.
#[test]
fn the_default_config_hears_a_real_kernel_event_without_a_helper() {
    let env = Env::new();
    fs::remove_file(env.helper_file()).unwrap();
    // The built-in default is read when /etc/hotplugd/hotplugd.toml is absent; where an
    // admin has one, the shipped copy of the built-in default stands in (a unit test
    // keeps the two identical).
    let installed = Path::new(hotplugd::config::DEFAULT_PATH).exists();
    let copy = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let mut cmd = env.daemon(&copy).log(env.path("daemon.log"));
    if !installed {
        cmd = cmd.no_config();
    }
    let d = cmd.start();
    let text = d.log_text();
    if !installed {
        assert!(
            text.contains("0 rules from the embedded default;"),
            "{text}"
        );
    }
    assert!(!text.contains("WARN"), "{text}");
    assert_eq!(field(&env, "sources"), "netlink");
    let tag = hotplugd::sysfs::random_uuid().unwrap();
    if !kernel_event(&tag) {
        return;
    }
    wait_tag(&env.runtime(), &tag, 1);
    assert!(field(&env, "netlink_in").parse::<u64>().unwrap() >= 1);
}
