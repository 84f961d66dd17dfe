//! Firmware requests against a fake sysfs tree: the built-in loader answers at once, even
//! while the runner is busy with a handler that waits for that very firmware (a
//! `modprobe` whose driver asked for it); with `firmware_dirs = []` an ordinary rule
//! answers them in the queue's order, as before.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;

const DEVPATH: &str = "/devices/virtual/firmware/acme-fw.bin";

/// A request pending in `sys/`: its `loading` and `data` as plain files.
fn fake_request(env: &Env) -> PathBuf {
    let dir = env.path("sys").join(&DEVPATH[1..]);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("loading"), "").unwrap();
    fs::write(dir.join("data"), "").unwrap();
    dir
}

fn fire_request(env: &Env, seq: &str) {
    assert!(env
        .shim(&[
            ("ACTION", "add"),
            ("DEVPATH", DEVPATH),
            ("SUBSYSTEM", "firmware"),
            ("FIRMWARE", "acme/fw.bin"),
            ("SEQNUM", seq),
        ])
        .success());
}

#[test]
fn built_in_loader_answers_while_a_handler_waits_for_the_firmware() {
    let env = Env::new();
    let request = fake_request(&env);
    let (fw1, fw2) = (env.path("fw1"), env.path("fw2"));
    fs::create_dir_all(fw1.join("acme")).unwrap();
    fs::create_dir_all(fw2.join("acme")).unwrap();
    fs::write(fw2.join("acme/fw.bin"), b"\x7fFIRMWARE\x00blob").unwrap();
    // The "modprobe": its driver asked for the firmware and waits for it, as the kernel
    // does, up to its own timeout. Behind it in a queue, the request would never come.
    let modprobe = env.script(
        "modprobe.sh",
        &format!(
            r#"#!/bin/sh
i=0
while [ "$(cat {loading})" != 0 ]; do
    i=$((i + 1))
    [ $i -gt 400 ] && {{ echo timed-out > "$0.out"; exit 1; }}
    sleep 0.05
done
echo loaded > "$0.out"
"#,
            loading = request.join("loading").display()
        ),
    );
    // A loader rule from before the built-in one: it must not answer a second time.
    let old_loader = env.script("old-loader.sh", "#!/bin/sh\necho ran >> \"$0.out\"\n");
    let config = env.config(
        &format!(
            "firmware_dirs = [\"{}\", \"{}\"]\nsysfs_dir = \"{}\"\n",
            fw1.display(),
            fw2.display(),
            env.path("sys").display()
        ),
        &format!(
            r#"
[[rule]]
name = "modprobe"
match = {{ SUBSYSTEM = "test" }}
run = ["{modprobe}"]
timeout = "60s"

[[rule]]
name = "old-loader"
match = {{ SUBSYSTEM = "firmware", FIRMWARE = "?*" }}
run = ["{old_loader}"]
"#,
            modprobe = modprobe.display(),
            old_loader = old_loader.display()
        ),
    );
    let daemon = env.start(&config);
    assert!(env.event(1, "add", "/devices/acme").success());
    fire_request(&env, "2");
    // Both events are handled, in order: the request's own turn comes after the load.
    let record = env.wait_handled(2);
    assert_eq!(record.seqs, [1, 2], "{}", daemon.log_text());
    assert_eq!(
        fs::read_to_string(env.path("modprobe.sh.out")).unwrap(),
        "loaded\n",
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        fs::read(request.join("data")).unwrap(),
        b"\x7fFIRMWARE\x00blob"
    );
    assert_eq!(fs::read_to_string(request.join("loading")).unwrap(), "0\n");
    assert!(!env.path("old-loader.sh.out").exists());
    let log = daemon.log_text();
    assert!(log.contains("firmware acme/fw.bin: loaded"), "{log}");
    assert!(log.contains("rule old-loader not run"), "{log}");
}

#[test]
fn built_in_loader_says_minus_1_for_a_missing_file() {
    let env = Env::new();
    let request = fake_request(&env);
    let config = env.config(
        &format!(
            "firmware_dirs = [\"{}\"]\nsysfs_dir = \"{}\"\n",
            env.path("empty").display(),
            env.path("sys").display()
        ),
        "",
    );
    let daemon = env.start(&config);
    fire_request(&env, "1");
    env.wait_handled(1);
    wait_for("-1 in loading", || {
        fs::read_to_string(request.join("loading")).unwrap() == "-1\n"
    });
    daemon.wait_log("firmware acme/fw.bin: not found in");
}

#[test]
fn with_no_firmware_dirs_an_ordinary_rule_loads_firmware() {
    let env = Env::new();
    let request = fake_request(&env);
    let fw = env.path("fw");
    fs::create_dir_all(fw.join("acme")).unwrap();
    fs::write(fw.join("acme/fw.bin"), "by a rule").unwrap();
    // The loader of the kernel's documentation, as a handler.
    let loader = env.script(
        "firmware-load.sh",
        &format!(
            r#"#!/bin/sh
f={fw}/$FIRMWARE
req={sys}$DEVPATH
if [ -f "$f" ]; then
    echo 1 > "$req/loading"; cat "$f" > "$req/data"; echo 0 > "$req/loading"
else
    echo -1 > "$req/loading"
fi
echo ran >> "$0.out"
"#,
            fw = fw.display(),
            sys = env.path("sys").display()
        ),
    );
    let config = env.config(
        &format!(
            "firmware_dirs = []\nsysfs_dir = \"{}\"\n",
            env.path("sys").display()
        ),
        &format!(
            r#"
[[rule]]
name = "firmware"
match = {{ SUBSYSTEM = "firmware", ACTION = "add", FIRMWARE = "?*" }}
run = ["{}"]
"#,
            loader.display()
        ),
    );
    let daemon = env.start(&config);
    fire_request(&env, "1");
    env.wait_handled(1);
    assert_eq!(
        fs::read_to_string(env.path("firmware-load.sh.out")).unwrap(),
        "ran\n",
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        fs::read_to_string(request.join("data")).unwrap(),
        "by a rule"
    );
    assert_eq!(fs::read_to_string(request.join("loading")).unwrap(), "0\n");
    assert!(!daemon.log_text().contains("firmware acme/fw.bin: loaded"));
}
