//! Nodes and links: the rules' `owner`, `group`, `mode`, `links` and `link_priority`
//! applied by a real daemon to a private `dev_dir`, before the event's handlers run.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn link(dev: &Path, l: &str) -> Option<String> {
    fs::read_link(dev.join(l))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

fn disk(env: &Env, seq: u64, action: &str, name: &str, minor: u32, diskseq: u32) {
    let (seq, minor, diskseq) = (seq.to_string(), minor.to_string(), diskseq.to_string());
    let devpath = format!("/devices/virtual/block/{name}");
    let st = env.shim(&[
        ("ACTION", action),
        ("DEVPATH", &devpath),
        ("SUBSYSTEM", "block"),
        ("DEVNAME", name),
        ("MAJOR", "8"),
        ("MINOR", &minor),
        ("DISKSEQ", &diskseq),
        ("SEQNUM", &seq),
    ]);
    assert!(st.success());
}

#[test]
fn nodes_and_links_in_a_private_dev_dir() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip_or_fail("making device nodes needs root");
    }
    let env = Env::new();
    let dev = env.path("dev");
    fs::create_dir(&dev).unwrap();
    // What a handler sees of its node: mode, owner, group, and where the link points.
    let seen = env.script(
        "seen.sh",
        &format!(
            "#!/bin/sh\necho \"$SEQNUM $(stat -c '%a %u %g %F' {dev}/$DEVNAME 2>&1)\" >> \"$0.log\"\n",
            dev = dev.display()
        ),
    );
    let rules = format!(
        r#"
[[rule]]
name = "disk-nodes"
match = {{ SUBSYSTEM = "block" }}
owner = 1234
group = "root"
mode = "0640"
links = ["disk/by-diskseq/$DISKSEQ", "disk/first"]

[[rule]]
name = "preferred"
match = {{ SUBSYSTEM = "block", DEVNAME = "sdc" }}
links = ["disk/first"]
link_priority = 10

[[rule]]
name = "seen"
match = {{ ACTION = ["add", "change"], SUBSYSTEM = "block" }}
run = ["{seen}"]
"#,
        seen = seen.display()
    );
    let config = env.config(&format!("dev_dir = \"{}\"", dev.display()), &rules);
    let _d = env.start(&config);

    disk(&env, 1, "add", "sda", 0, 1);
    env.wait_handled(1);
    let meta = fs::symlink_metadata(dev.join("sda")).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(8, 0));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (1234, 0));
    assert_eq!(
        link(&dev, "disk/by-diskseq/1").as_deref(),
        Some("../../sda")
    );
    assert_eq!(link(&dev, "disk/first").as_deref(), Some("../sda"));
    // The handler ran after the node was made and set.
    let seen_log = || fs::read_to_string(env.path("seen.sh.log")).unwrap_or_default();
    assert_eq!(seen_log(), "1 640 1234 0 block special file\n");

    // A second device of equal priority does not take the link, however often it asks.
    disk(&env, 2, "add", "sdb", 16, 2);
    disk(&env, 3, "change", "sdb", 16, 2);
    env.wait_handled(3);
    assert_eq!(link(&dev, "disk/first").as_deref(), Some("../sda"));
    assert_eq!(
        link(&dev, "disk/by-diskseq/2").as_deref(),
        Some("../../sdb")
    );

    // A higher priority takes it, and gives it back when it goes.
    disk(&env, 4, "add", "sdc", 32, 3);
    env.wait_handled(4);
    assert_eq!(link(&dev, "disk/first").as_deref(), Some("../sdc"));
    disk(&env, 5, "remove", "sdc", 32, 3);
    env.wait_handled(5);
    assert_eq!(link(&dev, "disk/first").as_deref(), Some("../sda"));
    assert!(!dev.join("sdc").exists());
    assert_eq!(link(&dev, "disk/by-diskseq/3"), None);

    // The holder goes: the waiting claimant takes the link; the node we made goes too.
    disk(&env, 6, "remove", "sda", 0, 1);
    env.wait_handled(6);
    assert_eq!(link(&dev, "disk/first").as_deref(), Some("../sdb"));
    assert!(fs::symlink_metadata(dev.join("sda")).is_err());
    assert_eq!(link(&dev, "disk/by-diskseq/1"), None);

    disk(&env, 7, "remove", "sdb", 16, 2);
    env.wait_handled(7);
    let left: Vec<_> = fs::read_dir(&dev)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        seen_log()
            .lines()
            .map(|l| l.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4"]
    );
}

#[test]
fn node_only_rules_and_symlinks_in_dev_dir_are_not_followed() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip_or_fail("making device nodes needs root");
    }
    let env = Env::new();
    let dev = env.path("dev");
    fs::create_dir(&dev).unwrap();
    let victim = env.path("victim");
    fs::write(&victim, "secret").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    // A symlink where the node should be, and one where a link's directory should be.
    symlink(&victim, dev.join("ttyS0")).unwrap();
    symlink(env.path("."), dev.join("serial")).unwrap();
    let rules = r#"
[[rule]]
name = "tty"
match = { SUBSYSTEM = "tty" }
mode = "0666"
links = ["serial/by-name/$DEVNAME", "ttyS0-link"]
"#;
    // No handler at all: the node actions still happen and the event is done.
    let config = env.bare_config(&format!("dev_dir = \"{}\"", dev.display()), rules);
    let d = env.start(&config);
    let st = env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/platform/serial8250/tty/ttyS0"),
        ("SUBSYSTEM", "tty"),
        ("DEVNAME", "ttyS0"),
        ("SEQNUM", "1"),
    ]);
    assert!(st.success());
    env.ctl_ok(&["settle", "--seq", "1", "--timeout", "30"]);
    assert_eq!(
        fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o600,
        "chmod followed a symlink"
    );
    assert!(
        !env.path("by-name").exists(),
        "a link went through a symlinked dir"
    );
    // The link that could be made is made.
    assert_eq!(link(&dev, "ttyS0-link").as_deref(), Some("ttyS0"));
    let log = d.log_text();
    assert!(log.contains("node actions only"), "{log}");
}

#[test]
fn bad_node_keys_are_config_errors_with_positions() {
    let env = Env::new();
    let config = env.bare_config(
        "",
        r#"[[rule]]
name = "bad"
links = ["ok/$DEVNAME", "by-id/../../etc/x"]
group = "no-such-group-hotplugd"
mode = "rw"
"#,
    );
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let c = config.display();
    for want in [
        format!(
            "{c}:8:25: bad link \"by-id/../../etc/x\": a path relative to dev_dir, without `..`"
        ),
        format!("{c}:9:9: unknown group \"no-such-group-hotplugd\" (not in /etc/group)"),
        format!("{c}:10:8: bad mode \"rw\": expected 1 to 4 octal digits such as \"0660\""),
    ] {
        assert!(err.contains(&want), "{want}\nnot in:\n{err}");
    }
}
