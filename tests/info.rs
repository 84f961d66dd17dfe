//! Debugging on real devices: `hotplugctl info`, `info --attribute-walk`, `test DEVICE`
//! against a device of this machine's /sys picked at run time, and `wait DEVICE` against
//! a daemon whose other device's handler is held by a gate.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn is_device(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join("uevent")).is_ok_and(|m| m.is_file())
}

/// The deepest device of /sys with a parent device, else any device.
fn real_device() -> Option<PathBuf> {
    let mut stack = vec![PathBuf::from("/sys/devices")];
    let mut found: Vec<PathBuf> = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        if is_device(&dir) {
            found.push(dir);
        }
    }
    let has_parent = |d: &PathBuf| d.ancestors().skip(1).any(is_device);
    found.sort_by_key(|d| (has_parent(d), d.components().count()));
    found.pop()
}

fn devpath(dir: &Path) -> String {
    format!("/{}", dir.strip_prefix("/sys").unwrap().display())
}

/// The device's block and its first parent's, as `--attribute-walk` printed them.
fn walk_blocks(env: &Env, dev: &str) -> Vec<Vec<String>> {
    let out = env.ctl_ok(&["info", "--attribute-walk", dev]);
    let mut blocks: Vec<Vec<String>> = Vec::new();
    for line in out.lines() {
        if line.starts_with("# the device /") || line.starts_with("# parent /") {
            blocks.push(Vec::new());
        } else if !line.is_empty() && !line.starts_with('#') {
            blocks
                .last_mut()
                .expect("a key before any block")
                .push(line.into());
        }
    }
    blocks
}

#[test]
fn info_and_attribute_walk_on_a_real_device() {
    let Some(dir) = real_device() else {
        return skip_or_fail("no device with a uevent file under /sys/devices");
    };
    let env = Env::new();
    let dp = devpath(&dir);
    // The same device by DEVPATH and by its sysfs path.
    for arg in [dp.as_str(), dir.to_str().unwrap()] {
        let out = env.ctl_ok(&["info", arg]);
        assert!(out.contains(&format!("\nDEVPATH={dp}\n")), "{out}");
        assert!(out.contains("db: no entry"), "{out}");
    }
    // A database entry is shown when there is one.
    let db = env.runtime().join("db");
    fs::create_dir_all(&db).unwrap();
    let mut records = Vec::new();
    hotplugd::db::frame(
        &mut records,
        format!("D:{dp}\nP:ID_TEST=yes\nL:test/link\nR:some-rule\n").as_bytes(),
    );
    fs::write(db.join(hotplugd::db::FILE), records).unwrap();
    let out = env.ctl_ok(&["info", &dp]);
    for want in [
        "  ID_TEST=yes\n",
        "links: test/link\n",
        "rules: some-rule\n",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    let json = env.ctl_ok(&["--json", "info", &dp]);
    assert!(json.contains("\"ID_TEST\",\"yes\""), "{json}");

    // A node under /dev finds its device through /sys/dev.
    if Path::new("/sys/dev/char/1:3").exists() && Path::new("/dev/null").exists() {
        let out = env.ctl_ok(&["info", "/dev/null"]);
        assert!(out.contains("DEVPATH=/devices/virtual/mem/null\n"), "{out}");
    }
    assert_eq!(
        env.ctl(&["info", "/devices/no/such"]).status.code(),
        Some(1)
    );
    assert_eq!(env.ctl(&["info", "nonsense"]).status.code(), Some(1));

    // The walk, pasted into a rule, matches the device: the device's keys and one
    // parent's. Attributes that changed between two walks (counters) are left out.
    let (a, b) = (walk_blocks(&env, &dp), walk_blocks(&env, &dp));
    assert!(!a.is_empty());
    assert!(a[0][0].starts_with("KERNEL = "), "{a:?}");
    let stable = |i: usize| -> Vec<String> {
        a.get(i)
            .map(|l| {
                l.iter()
                    .filter(|x| b.get(i).is_some_and(|bl| bl.contains(x)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut keys = stable(0);
    keys.extend(stable(1));
    if a.len() > 1 {
        assert!(keys.iter().any(|k| k.starts_with("KERNELS = ")), "{keys:?}");
    }
    let config = env.bare_config(
        "",
        &format!(
            "[[rule]]\nname = \"never\"\nmatch = {{ KERNEL = \"no-such-device-here\" }}\n\
             run = [\"/bin/false\"]\n\n\
             [[rule]]\nname = \"walk\"\nrun = [\"/bin/true\"]\n[rule.match]\n{}\n",
            keys.join("\n")
        ),
    );
    let out = env.ctl_ok(&["test", "--config", config.to_str().unwrap(), &dp]);
    assert!(out.contains("match never: no\n  ✗ KERNEL \""), "{out}");
    assert!(out.contains("match walk: yes\n  ✓ "), "{out}");
    assert!(!out.contains("  ✗ ATTR"), "{out}");
    assert!(out.contains("rule walk: /bin/true"), "{out}");
    assert!(out.starts_with(&format!("event: - add {dp} (")), "{out}");

    // --action, a variable on top, and the JSON checks.
    let out = env.ctl_ok(&[
        "--json",
        "test",
        "--config",
        config.to_str().unwrap(),
        "--action",
        "change",
        dir.to_str().unwrap(),
        "EXTRA=1",
    ]);
    assert!(out.contains("\"action\":\"change\""), "{out}");
    assert!(
        out.contains("\"checks\":[{\"rule\":\"never\",\"matched\":false"),
        "{out}"
    );
    // --import is accepted: it runs importer rules only, and these have none.
    let out = env.ctl_ok(&[
        "test",
        "--import",
        "--config",
        config.to_str().unwrap(),
        &dp,
    ]);
    assert!(out.contains("rule walk: /bin/true"), "{out}");

    // --import runs the importers, and only them: the rule after one sees what it
    // printed; a rule that is no importer does not run (its mark file stays away).
    let mark = env.path("ran");
    let importer = env.script(
        "importer.sh",
        &format!(
            "#!/bin/sh\necho ID_TEST_IMPORTED=yes\ntouch {}\n",
            mark.display()
        ),
    );
    let plain = env.script(
        "plain.sh",
        &format!("#!/bin/sh\ntouch {}.plain\n", mark.display()),
    );
    let config = env.bare_config(
        "",
        &format!(
            "[[rule]]\nname = \"plain\"\nrun = [\"{}\"]\n\n\
             [[rule]]\nname = \"importer\"\nimport = true\nrun = [\"{}\"]\n\n\
             [[rule]]\nname = \"after\"\nmatch = {{ ID_TEST_IMPORTED = \"yes\" }}\n\
             run = [\"/bin/echo\", \"$ID_TEST_IMPORTED\"]\n",
            plain.display(),
            importer.display()
        ),
    );
    let cfg = config.to_str().unwrap();
    let out = env.ctl_ok(&["test", "--config", cfg, &dp]);
    assert!(!out.contains("rule after:"), "without --import: {out}");
    assert!(!mark.exists(), "test ran a handler without --import");
    let out = env.ctl(&["test", "--import", "--config", cfg, &dp]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rule after: /bin/echo yes"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("imported by importer: ID_TEST_IMPORTED=yes"),
        "{out:?}"
    );
    assert!(mark.exists(), "the importer ran");
    assert!(
        !env.path("ran.plain").exists(),
        "a rule that is no importer ran"
    );
}

fn spawn_wait(env: &Env, args: &[&str]) -> std::process::Child {
    env.ctl_command(&[&["wait"], args].concat())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn wait_returns_for_its_device_while_another_is_held() {
    let env = Env::new();
    let gate = env.path("gate");
    let held = env.script(
        "held.sh",
        &format!(
            "#!/bin/sh\ni=0\nwhile [ ! -e {g} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n",
            g = gate.display()
        ),
    );
    let config = env.config(
        "",
        &format!(
            "[[rule]]\nname = \"held\"\nmatch = {{ DEVPATH = \"/devices/slow\" }}\nrun = [\"{}\"]\n",
            held.display()
        ),
    );
    // No daemon: exit 3.
    let out = env.ctl(&["wait", "/devices/fast"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let _daemon = env.start(&config);
    // Its event not yet handled (paused): wait holds until it is.
    env.ctl_ok(&["pause"]);
    assert!(env.event(1, "add", "/devices/fast").success());
    let mut w = spawn_wait(&env, &["--timeout", "60", "/devices/fast"]);
    assert_eq!(exit_within(&mut w, Duration::from_millis(500)), None);
    env.ctl_ok(&["resume"]);
    assert_eq!(exit_within(&mut w, DEADLINE), Some(0));
    assert_eq!(env.record().seqs, [1]);

    // /devices/slow's handler is held, /devices/other queued behind it.
    assert!(env.event(2, "add", "/devices/slow").success());
    assert!(env.event(3, "add", "/devices/other").success());
    wait_for("the held handler to run", || {
        env.ctl_ok(&["pending"]).contains("/devices/slow")
    });
    // Another device's event: answered at once, the queue notwithstanding.
    let mut w = spawn_wait(&env, &["--timeout", "60", "/devices/fast"]);
    assert_eq!(exit_within(&mut w, DEADLINE), Some(0));
    let out = env.ctl(&["wait", "--timeout", "0.3", "/devices/other"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );
    // Released: both handled once the wait for the last returns.
    fs::write(&gate, "").unwrap();
    env.ctl_ok(&["wait", "--timeout", "60", "/devices/other"]);
    assert_eq!(env.record().seqs, [1, 2, 3]);
}
