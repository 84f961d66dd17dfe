//! Imported properties and the device database, with the real daemon: an importer's
//! `KEY=VALUE` lines flow into later rules' matches, `$VAR`s and links, and into
//! `RUNTIME/db/`, which outlives a restart.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const DEVPATH: &str = "/devices/virtual/block/sdz";

/// The database file's bytes (empty if there is none).
fn db_bytes(env: &Env) -> Vec<u8> {
    fs::read(hotplugd::db::file(&env.runtime())).unwrap_or_default()
}

fn has_entry(env: &Env) -> bool {
    entry_of(env, DEVPATH).is_some()
}

fn disk(env: &Env, seq: u64, action: &str) {
    let seq = seq.to_string();
    let st = env.shim(&[
        ("ACTION", action),
        ("DEVPATH", DEVPATH),
        ("SUBSYSTEM", "block"),
        ("DEVNAME", "sdz"),
        ("SEQNUM", &seq),
    ]);
    assert!(st.success());
}

fn setup(env: &Env) -> (PathBuf, PathBuf) {
    let dev = env.path("dev");
    fs::create_dir(&dev).unwrap();
    // Prints properties, protected keys, noise, and 18 KiB of padding past the cap.
    let importer = env.script(
        "importer.sh",
        "#!/bin/sh\necho ID_FS_UUID=1234-ABCD\necho ID_FS_TYPE=vfat\necho DEVNAME=evil\n\
         echo SUBSYSTEM=evil\necho 'just a log line'\n\
         pad=$(printf '%0900d' 0)\n\
         i=0; while [ $i -lt 20 ]; do echo PAD_$i=$pad; i=$((i+1)); done\n\
         echo ID_PAST_CAP=1\n",
    );
    let seen = env.script(
        "seen.sh",
        "#!/bin/sh\necho \"$1 $ID_FS_UUID $DEVNAME $SUBSYSTEM ${ID_PAST_CAP:-unset}\" >> \"$0.log\"\n",
    );
    let rules = format!(
        r#"
[[rule]]
name = "blkid"
match = {{ SUBSYSTEM = "block", ACTION = ["add", "change"] }}
run = ["{importer}"]
import = true

[[rule]]
name = "by-uuid"
match = {{ SUBSYSTEM = "block", ID_FS_TYPE = "vfat" }}
links = ["disk/by-uuid/$ID_FS_UUID"]
run = ["{seen}", "$ID_FS_UUID"]
"#,
        importer = importer.display(),
        seen = seen.display()
    );
    let config = env.config(
        &format!("dev_dir = \"{}\"\ndevice_db = true", dev.display()),
        &rules,
    );
    (config, dev)
}

fn seen(env: &Env) -> Vec<String> {
    fs::read_to_string(env.path("seen.sh.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn db(env: &Env) -> hotplugd::db::Record {
    entry_of(env, DEVPATH).expect("an entry")
}

fn prop<'a>(r: &'a hotplugd::db::Record, key: &str) -> Option<&'a [u8]> {
    r.properties
        .iter()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| &v[..])
}

fn link(dev: &Path, l: &str) -> Option<String> {
    fs::read_link(dev.join(l))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

#[test]
fn properties_flow_from_import_to_match_run_link_and_db() {
    let env = Env::new();
    let (config, dev) = setup(&env);
    let d = env.start(&config);
    disk(&env, 1, "add");
    env.wait_handled(1);
    wait_for("the db entry", || has_entry(&env));

    // A later rule matched on an imported key, and its run saw it (argv and env); the
    // protected keys kept the kernel's values; past the cap nothing was taken.
    assert_eq!(seen(&env), ["1234-ABCD 1234-ABCD sdz block unset"]);
    assert_eq!(
        link(&dev, "disk/by-uuid/1234-ABCD").as_deref(),
        Some("../../sdz")
    );
    let log = d.log_text();
    assert!(log.contains("import of DEVNAME refused"), "{log}");
    assert!(log.contains("import output capped"), "{log}");
    assert!(log.contains("just a log line"), "{log}");

    let r = db(&env);
    assert_eq!(r.devpath, DEVPATH.as_bytes());
    assert_eq!(r.seqnum, Some(1));
    assert_eq!(prop(&r, "ID_FS_UUID"), Some(&b"1234-ABCD"[..]));
    assert_eq!(prop(&r, "DEVNAME"), Some(&b"sdz"[..]));
    assert_eq!(prop(&r, "ID_PAST_CAP"), None);
    assert!(r.imported.contains(&b"ID_FS_TYPE".to_vec()));
    assert_eq!(r.links, [b"disk/by-uuid/1234-ABCD".to_vec()]);
    assert_eq!(r.rules, ["blkid", "by-uuid", "record"]);

    // A remove ends the entry (a removal record) and deletes the link.
    disk(&env, 2, "remove");
    env.wait_handled(2);
    wait_for("the db entry to go", || !has_entry(&env));
    assert!(db_bytes(&env).ends_with(format!("D:{DEVPATH}\nX:\n").as_bytes()));
    assert_eq!(link(&dev, "disk/by-uuid/1234-ABCD"), None);
    d.stop();
}

#[test]
fn the_database_survives_a_clean_stop_and_a_kill() {
    let env = Env::new();
    let (config, _dev) = setup(&env);
    let d = env.start(&config);
    disk(&env, 1, "add");
    env.wait_handled(1);
    // The entry is written once the event's last handler has ended.
    wait_for("the db entry", || has_entry(&env));
    let before = db_bytes(&env);
    assert!(d.stop().success());
    assert_eq!(db_bytes(&env), before, "after a clean stop");

    let mut d = env.start(&config);
    assert_eq!(db_bytes(&env), before, "after a start");
    d.kill9();
    let d = env.start(&config);
    assert_eq!(db_bytes(&env), before, "after a kill and a start");
    // And it is still kept up to date.
    disk(&env, 2, "change");
    env.wait_handled(2);
    wait_for("the db entry of SEQNUM 2", || db(&env).seqnum == Some(2));
    d.stop();
}

/// A monitor's output lines, read by a thread so that a line that never comes fails the
/// test (in [`next_line`]) instead of hanging it.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>) -> String {
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no line from the monitor: {e}"))
}

/// Lines up to and without the empty line that ends an `--env` block.
fn block(rx: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    std::iter::from_fn(|| Some(next_line(rx)).filter(|l| !l.is_empty())).collect()
}

#[test]
fn monitors_show_imported_properties_on_processed_events_not_queued_ones() {
    let env = Env::new();
    let (config, _dev) = setup(&env);
    let d = env.start(&config);
    let spawn = |args: &[&str]| env.monitor(args);
    let mut processed = spawn(&["--processed", "--env"]);
    let mut queued = spawn(&["--queued", "--env"]);
    // Both kinds, the default.
    let mut json = spawn(&["--json", "--env"]);
    wait_for("three monitors", || {
        let s: serde_json::Value =
            serde_json::from_str(&env.ctl_ok(&["status", "--json"])).unwrap();
        s["monitors"] == 3
    });
    disk(&env, 1, "add");
    env.wait_handled(1);

    let summary = format!("1 add {DEVPATH} (block)");
    let got = block(&lines_of(&mut processed));
    assert_eq!(got[0], format!("PROCESSED {summary}"), "{got:?}");
    for want in ["ID_FS_UUID=1234-ABCD", "ID_FS_TYPE=vfat", "DEVNAME=sdz"] {
        assert!(got.iter().any(|l| l == want), "{want}: {got:?}");
    }
    let got = block(&lines_of(&mut queued));
    assert_eq!(got[0], format!("QUEUED {summary}"), "{got:?}");
    assert!(got.iter().any(|l| l == "DEVNAME=sdz"), "{got:?}");
    assert!(!got.iter().any(|l| l.starts_with("ID_FS_")), "{got:?}");

    let rx = lines_of(&mut json);
    let next = || {
        let line = next_line(&rx);
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let uuid = serde_json::json!(["ID_FS_UUID", "1234-ABCD"]);
    let first = next();
    assert_eq!(first["kind"], "queued", "{first}");
    assert_eq!(first["seqnum"], 1, "{first}");
    assert!(!first["env"].as_array().unwrap().contains(&uuid), "{first}");
    let second = next();
    assert_eq!(second["kind"], "processed", "{second}");
    assert_eq!(second["seqnum"], 1, "{second}");
    assert!(
        second["env"].as_array().unwrap().contains(&uuid),
        "{second}"
    );

    for mut c in [processed, queued, json] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    d.stop();
}

/// The entry of `devpath` under this env's runtime dir, parsed; `None` if there is none.
fn entry_of(env: &Env, devpath: &str) -> Option<hotplugd::db::Record> {
    hotplugd::db::lookup(&env.runtime(), devpath.as_bytes()).unwrap()
}

#[test]
fn a_trigger_rebuilds_entries_current_stale_and_missing() {
    let env = Env::new();
    // A fake sysfs: three devices, each with the `uevent` file a trigger writes to.
    let names = ["a", "b", "c"];
    let sys = fake_sysfs(&env, &names);
    let config = env.config("device_db = true", "");
    let d = env.start(&config);
    // a: an entry of its own from an earlier event, with what it had then.
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/fake/a"),
        ("SUBSYSTEM", "test"),
        ("MODEL", "old"),
        ("SEQNUM", "1"),
    ]);
    env.ctl_ok(&["settle", "--seq", "1"]);
    let a = entry_of(&env, "/devices/fake/a").expect("an entry");
    assert!(a.properties.contains(&(b"MODEL".to_vec(), b"old".to_vec())));
    // b: a stale entry, appended by hand; c: none.
    let mut stale = Vec::new();
    hotplugd::db::frame(
        &mut stale,
        b"D:/devices/fake/b\nS:0\nP:MODEL=stale\nR:gone\n",
    );
    fs::OpenOptions::new()
        .append(true)
        .open(hotplugd::db::file(&env.runtime()))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &stale))
        .unwrap();
    assert_eq!(
        entry_of(&env, "/devices/fake/b").unwrap().seqnum,
        Some(0),
        "the stale entry"
    );
    assert!(entry_of(&env, "/devices/fake/c").is_none());

    // As the kernel would: each write to a `uevent` file becomes an event, with the
    // device's properties as they are now.
    let (trigger, tag) = trigger_as_kernel(&env, &sys, &names, 2, &[("MODEL", "new")]);
    let out = trigger.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "trigger --settle: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // --settle returned, so the entries are on file already: each is the trigger's
    // event, and nothing of what was there before.
    for (i, name) in names.iter().enumerate() {
        let devpath = format!("/devices/fake/{name}");
        let r = entry_of(&env, &devpath).unwrap_or_else(|| panic!("no entry for {devpath}"));
        assert_eq!(r.devpath, devpath.as_bytes());
        assert_eq!(r.seqnum, Some(i as u64 + 2), "{devpath}");
        let props: Vec<String> = r
            .properties
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        let seq = format!("SEQNUM={}", i + 2);
        for want in [
            "ACTION=add",
            &format!("DEVPATH={devpath}"),
            "SUBSYSTEM=test",
            &format!("DEVNAME={name}"),
            "MODEL=new",
            &seq,
            &format!("SYNTH_UUID={tag}"),
        ] {
            assert!(
                props.iter().any(|p| p == want),
                "{devpath}: {want} in {props:?}"
            );
        }
        assert_eq!(
            props.iter().filter(|p| p.starts_with("MODEL=")).count(),
            1,
            "{devpath}: {props:?}"
        );
        assert_eq!(r.rules, ["record"], "{devpath}");
    }
    d.stop();
}

#[test]
fn a_failing_database_write_is_logged_once_and_costs_no_event() {
    let env = Env::new();
    let d = env.start(&env.config("device_db = true", ""));
    let db = env.runtime().join("db");
    // Where the entries go, a directory: every write fails.
    let tmp = hotplugd::db::file(&env.runtime());
    fs::create_dir(&tmp).unwrap();
    for seq in 1..=3 {
        env.event(seq, "add", &format!("/devices/fail/{seq}"));
    }
    env.ctl_ok(&["settle", "--seq", "3"]);
    assert_eq!(env.record().seqs, [1, 2, 3], "every event was handled");
    let log = d.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("database")).collect();
    assert_eq!(warnings.len(), 1, "one warning for one cause:\n{log}");
    assert!(
        warnings[0].contains(&tmp.display().to_string()),
        "it names the file: {}",
        warnings[0]
    );

    // The cause gone, entries are written again, and that is said once.
    fs::remove_dir(&tmp).unwrap();
    assert!(entry_of(&env, "/devices/fail/1").is_none());
    env.event(4, "add", "/devices/fail/4");
    env.ctl_ok(&["settle", "--seq", "4"]);
    assert_eq!(entry_of(&env, "/devices/fail/4").unwrap().seqnum, Some(4));
    d.wait_log("entries written again, after 3 failed");

    // The whole directory removed under the daemon: made again at the next write.
    fs::remove_dir_all(&db).unwrap();
    env.event(5, "add", "/devices/fail/5");
    env.ctl_ok(&["settle", "--seq", "5"]);
    assert_eq!(entry_of(&env, "/devices/fail/5").unwrap().seqnum, Some(5));
    let log = d.log_text();
    assert_eq!(
        log.lines().filter(|l| l.contains("database")).count(),
        2,
        "a missing directory is made again without a warning:\n{log}"
    );
    d.stop();
}

/// The database's cost per event, off the daemon: what `Deferred::flush` does for one
/// event's entry (one record appended). Run with
/// `scripts/cargo-static test --release --test props db_bench -- --ignored --nocapture`
/// (HOTPLUGD_DB_N events per round, default 20000), on /dev/shm when it is a tmpfs as
/// /run is. The end-to-end number is dispatch in `benches/run.sh` (BENCHMARKS.md).
#[test]
#[ignore]
fn db_bench() {
    use std::time::Instant;
    let n: u64 = std::env::var("HOTPLUGD_DB_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // The 11-variable USB event of benches/c/event.h; a new device each time (a boot,
    // or the dispatch bench) or the same one again (a trigger, `change` events).
    let ev = |seq: u64, new: bool| {
        let devpath = format!(
            "/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/bench{}",
            if new { seq } else { 0 }
        );
        let seq = seq.to_string();
        let vars: [(&[u8], &[u8]); 11] = [
            (b"ACTION", b"add"),
            (b"DEVPATH", devpath.as_bytes()),
            (b"SUBSYSTEM", b"usb"),
            (b"DEVTYPE", b"usb_interface"),
            (b"PRODUCT", b"46d/c52b/1211"),
            (b"TYPE", b"0/0/0"),
            (b"INTERFACE", b"3/1/1"),
            (
                b"MODALIAS",
                b"usb:v046DpC52Bd1211dc00dsc00dp00ic03isc01ip01in00",
            ),
            (b"HOME", b"/"),
            (b"PATH", b"/sbin:/bin:/usr/sbin:/usr/bin"),
            (b"SEQNUM", seq.as_bytes()),
        ];
        hotplugd::event::Event::from_vars(b"usb", vars).unwrap()
    };
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| database write (N = {n} per round, median of 5) | µs/event |");
    println!("| --- | --- |");
    for new in [true, false] {
        let events: Vec<_> = (1..=n).map(|s| ev(s, new)).collect();
        let what = if new {
            "a new device"
        } else {
            "the same device"
        };
        let (mut db_us, mut path_us) = (Vec::new(), Vec::new());
        for round in 0..5 {
            let run = base.path().join(format!("{new}-{round}"));
            fs::create_dir(&run).unwrap();
            let mut db = hotplugd::db::Db::new(&run);
            db.create().unwrap();
            let t = Instant::now();
            for e in &events {
                db.update(&hotplugd::db::Entry {
                    event: e,
                    imported: &[],
                    links: vec![],
                    rules: vec!["true"],
                });
            }
            db_us.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
            // The layout before the log, for comparison: a file per device (its name
            // the DEVPATH with `/` escaped), written to a temporary file and renamed.
            let dir = run.join("db");
            let t = Instant::now();
            for e in &events {
                let text = hotplugd::db::render(&hotplugd::db::Entry {
                    event: e,
                    imported: &[],
                    links: vec![],
                    rules: vec!["true"],
                });
                let name = String::from_utf8_lossy(e.devpath()).replace('/', "\\x2f");
                let path = dir.join(name);
                let mut tmp = path.as_os_str().to_owned();
                tmp.push(".tmp");
                fs::write(&tmp, &text).unwrap();
                fs::rename(&tmp, &path).unwrap();
            }
            path_us.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
            fs::remove_dir_all(&run).unwrap();
        }
        println!("| Db::update, {what} | {:.2} |", median(db_us));
        println!(
            "| a file per device (std::fs), {what} | {:.2} |",
            median(path_us)
        );
    }
}

/// The database is on by default, and its entries are written while the next handler
/// runs (or, for an event that ran none, right after the main thread finished it): a
/// settle returns only once every handled event's entry is on file, so a reader right
/// after it finds them all, and finds a removed device's entry gone.
#[test]
fn the_database_is_on_by_default_and_a_settle_waits_for_its_entries() {
    let env = Env::new();
    let config = env.bare_config(
        "",
        "[[rule]]\nname = \"on-add\"\nmatch = { ACTION = \"add\" }\nrun = [\"/bin/true\"]\n",
    );
    assert!(!fs::read_to_string(&config).unwrap().contains("device_db"));
    let _d = env.start(&config);
    for seq in 1..=40u64 {
        assert!(env
            .event(seq, "add", &format!("/devices/dbdefault/d{seq}"))
            .success());
    }
    env.ctl_ok(&["settle", "--seq", "40", "--timeout", "60s"]);
    for seq in 1..=40u64 {
        let r = entry_of(&env, &format!("/devices/dbdefault/d{seq}"))
            .unwrap_or_else(|| panic!("no entry for d{seq} after the settle"));
        assert_eq!(r.seqnum, Some(seq));
        assert_eq!(r.rules, ["on-add"]);
    }
    // No rule matches a remove: the main thread finishes it and deletes the entry.
    assert!(env.event(41, "remove", "/devices/dbdefault/d7").success());
    env.ctl_ok(&["settle", "--seq", "41", "--timeout", "60s"]);
    assert!(entry_of(&env, "/devices/dbdefault/d7").is_none());
}

/// Entries wait for more to be written with them while handlers run, but not for a long
/// handler: the entry of the event before it is on file while it still runs.
#[test]
fn an_entry_is_written_while_a_long_handler_runs() {
    let env = Env::new();
    let done = env.path("slow.done");
    let config = env.bare_config(
        "",
        &format!(
            "[[rule]]\nname = \"quick\"\nmatch = {{ DEVPATH = \"/devices/quick\" }}\n\
             run = [\"/bin/true\"]\n\n\
             [[rule]]\nname = \"slow\"\nmatch = {{ DEVPATH = \"/devices/slow\" }}\n\
             run = [\"/bin/sh\", \"-c\", \"sleep 5; touch {}\"]\n",
            done.display()
        ),
    );
    let d = env.start(&config);
    assert!(env.event(1, "add", "/devices/quick").success());
    assert!(env.event(2, "add", "/devices/slow").success());
    wait_for("the quick event's entry", || {
        entry_of(&env, "/devices/quick").is_some()
    });
    assert!(
        !done.exists(),
        "the entry waited for the slow handler to end"
    );
    env.ctl_ok(&["settle", "--seq", "2", "--timeout", "60s"]);
    assert!(done.exists());
    assert_eq!(entry_of(&env, "/devices/slow").unwrap().rules, ["slow"]);
    d.stop();
}
