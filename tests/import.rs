//! `hotplugctl import-udev` and `import-mdev` on rule files in the shapes vendors and
//! distros ship (tests/data/import/): the output against a golden file, the lines left out
//! with their numbers on stderr and exit status 1, the output accepted by the real
//! daemon's `--check-config`, and what the imported rules do to events.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

const DATA: &str = "tests/data/import";

/// Run hotplugctl from the crate's root, so the file names in the output are relative.
fn import(args: &[&str]) -> Output {
    Command::new(CTL)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

/// The line numbers stderr lists as not translated.
fn skipped_lines(out: &Output, file: &str) -> Vec<usize> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(file)?.strip_prefix(':')?;
            let (n, why) = rest.split_once(':')?;
            why.starts_with(" not translated")
                .then(|| n.parse().unwrap())
        })
        .collect()
}

fn golden(name: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DATA).join(name)).unwrap()
}

#[test]
fn samples_translate_as_the_golden_files_say_and_list_what_they_leave_out() {
    let cases: [(&[&str], &str, &str, &[usize]); 4] = [
        (
            &["import-udev"],
            "60-persistent-storage-fragment.rules",
            "60-persistent-storage-fragment.toml",
            // %n; ENV from $attr; the TEST guard and the two lines under it.
            &[14, 17, 26, 28, 31],
        ),
        (
            &["import-udev", "--uaccess-group", "dialout"],
            "70-acme-dongle.rules",
            "70-acme-dongle.toml",
            &[13, 18],
        ),
        (
            // Without the group, both uaccess lines are refused.
            &["import-udev"],
            "70-acme-dongle.rules",
            "",
            &[7, 13, 14, 18],
        ),
        (
            &["import-mdev"],
            "mdev.conf",
            "mdev.toml",
            &[22, 33, 34, 37, 42, 43, 44, 46, 47],
        ),
    ];
    for (args, sample, expected, lines) in cases {
        let file = format!("{DATA}/{sample}");
        let mut argv = args.to_vec();
        argv.push(&file);
        let out = import(&argv);
        let stdout = String::from_utf8(out.stdout.clone()).unwrap();
        assert_eq!(out.status.code(), Some(1), "{sample}: {out:?}");
        assert_eq!(skipped_lines(&out, &file), lines, "{sample}: {out:?}");
        // The same lines head the TOML, each with its number.
        for n in lines {
            assert!(stdout.contains(&format!("#   line {n}: ")), "{sample}: {n}");
        }
        if !expected.is_empty() {
            assert_eq!(stdout, golden(expected), "{sample} differs from {expected}");
        }
    }
}

#[test]
fn a_fully_translated_file_exits_0() {
    let env = Env::new();
    let rules = env.path("99-clean.rules");
    fs::write(
        &rules,
        "# comment\n\nSUBSYSTEM==\"tty\", KERNEL==\"ttyUSB*\", MODE=\"660\", GROUP=\"dialout\"\n",
    )
    .unwrap();
    let out = import(&["import-udev", rules.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# Every line was translated."), "{stdout}");
    assert!(stdout.contains("name = \"99-clean-3\""), "{stdout}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // A missing file is a failure, not an empty translation.
    let out = import(&["import-mdev", env.path("nope").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// Every sample's output, as it is written, loads in the real daemon.
#[test]
fn imported_rules_pass_check_config() {
    let env = Env::new();
    let dir = env.path("rules.d");
    fs::create_dir(&dir).unwrap();
    for (args, sample, out_name) in [
        (
            &["import-udev"][..],
            "60-persistent-storage-fragment.rules",
            "60-storage.toml",
        ),
        (
            &["import-udev", "--uaccess-group", "dialout"],
            "70-acme-dongle.rules",
            "70-acme.toml",
        ),
        (&["import-mdev"], "mdev.conf", "80-mdev.toml"),
    ] {
        let file = format!("{DATA}/{sample}");
        let mut argv = args.to_vec();
        argv.push(&file);
        let out = import(&argv);
        assert!(!out.stdout.is_empty(), "{out:?}");
        fs::write(dir.join(out_name), &out.stdout).unwrap();
    }
    let config = env.bare_config(&format!("rules_dir = \"{}\"", dir.display()), "");
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ok, 36 rules"), "{err}");
}

/// The translated guard keeps a rule as narrow as its source: the storage link rule runs
/// for a disk's add, not for its remove, nor for a tty.
#[test]
fn folded_guards_keep_rules_narrow() {
    let env = Env::new();
    let dir = env.path("rules.d");
    fs::create_dir(&dir).unwrap();
    let out = import(&[
        "import-udev",
        &format!("{DATA}/60-persistent-storage-fragment.rules"),
    ]);
    fs::write(dir.join("60.toml"), &out.stdout).unwrap();
    let config = env.bare_config(&format!("rules_dir = \"{}\"", dir.display()), "");
    let test = |vars: &[&str]| {
        let mut args = vec!["test", "--config", config.to_str().unwrap()];
        args.extend_from_slice(vars);
        let out = env.ctl(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let disk = [
        "DEVPATH=/devices/virtual/block/vda",
        "SUBSYSTEM=block",
        "DEVTYPE=disk",
        "DISKSEQ=7",
        "DEVNAME=vda",
    ];
    let mut add = vec!["ACTION=add"];
    add.extend(disk);
    let mut remove = vec!["ACTION=remove"];
    remove.extend(disk);
    let mut flagged = add.clone();
    flagged.push("UDEV_DISABLE_PERSISTENT_STORAGE_RULES_FLAG=1");
    let mut loopdev = add.clone();
    loopdev[1] = "DEVPATH=/devices/virtual/block/zram0";
    let link = "links disk/by-diskseq/7";
    let out = test(&add);
    assert!(out.contains(link), "{out}");
    for vars in [&remove, &flagged, &loopdev] {
        let out = test(vars);
        assert!(!out.contains(link), "{vars:?}: {out}");
    }
}

/// An mdev command runs under /bin/sh as the admin wrote it, with MDEV set, and a device
/// name full of shell syntax reaches it as data, never as code.
#[test]
fn mdev_commands_get_the_name_as_data() {
    let env = Env::new();
    let out_file = env.path("mdev-out");
    let conf = env.path("mdev.conf");
    fs::write(
        &conf,
        format!(
            "evil.* root:root 0660 @printf '%s|%s' \"$MDEV\" \"$ACTION\" > {}\n",
            out_file.display()
        ),
    )
    .unwrap();
    let out = import(&["import-mdev", conf.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let dir = env.path("rules.d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("50-mdev.toml"), &out.stdout).unwrap();
    // The recording rule after the imported ones, in a later file.
    fs::write(
        dir.join("90-record.toml"),
        format!(
            "[[rule]]\nname = \"record\"\nrun = [\"{}\"]\n",
            env.path("record.sh").display()
        ),
    )
    .unwrap();
    let config = env.bare_config(&format!("rules_dir = \"{}\"", dir.display()), "");
    let _daemon = env.start(&config);
    let name = "evil;touch pwned$(touch pwned2)`touch pwned3`";
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", &format!("/devices/virtual/misc/{name}")),
        ("SUBSYSTEM", "misc"),
        ("SEQNUM", "1"),
    ]);
    env.event(2, "add", "/devices/after");
    // The mdev line has no `-`: it stops later rules for its event, so the recording rule
    // sees only the second event.
    let rec = env.wait_handled(1);
    assert_eq!(rec.seqs, [2]);
    wait_for("the command's output", || out_file.exists());
    assert_eq!(
        fs::read_to_string(&out_file).unwrap(),
        format!("{name}|add")
    );
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(
            !env.path(f).exists() && !Path::new("/dev").join(f).exists(),
            "{f}"
        );
    }
}
