//! Imported properties and the device database, with the real daemon: an importer's
//! `KEY=VALUE` lines flow into later rules' matches, `$VAR`s and links, and into
//! `RUNTIME/db/`, which outlives a restart.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const DEVPATH: &str = "/devices/virtual/block/sdz";

fn db_file(env: &Env) -> PathBuf {
    env.runtime()
        .join("db")
        .join(hotplugd::db::file_name(DEVPATH.as_bytes()).unwrap())
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
    hotplugd::db::parse(&fs::read(db_file(env)).unwrap())
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
    wait_for("the db entry", || db_file(&env).exists());

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

    // A remove deletes the entry and the link.
    disk(&env, 2, "remove");
    env.wait_handled(2);
    wait_for("the db entry to go", || !db_file(&env).exists());
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
    wait_for("the db entry", || db_file(&env).exists());
    let before = fs::read(db_file(&env)).unwrap();
    assert!(d.stop().success());
    assert_eq!(
        fs::read(db_file(&env)).unwrap(),
        before,
        "after a clean stop"
    );

    let mut d = env.start(&config);
    assert_eq!(fs::read(db_file(&env)).unwrap(), before, "after a start");
    d.kill9();
    let d = env.start(&config);
    assert_eq!(
        fs::read(db_file(&env)).unwrap(),
        before,
        "after a kill and a start"
    );
    // And it is still kept up to date.
    disk(&env, 2, "change");
    env.wait_handled(2);
    wait_for("the db entry of SEQNUM 2", || db(&env).seqnum == Some(2));
    d.stop();
}
