//! The example handlers of `contrib/handlers/` against fake events and fake tools:
//! blkid-import, devperms, input-import, netif, usb-mount.

use super::*;

// ---- devperms -------------------------------------------------------------------------

#[test]
fn devperms_applies_the_first_matching_line_of_the_shipped_table() {
    let f = Fakes::new();
    f.fake("chown", "exit 0");
    f.fake("chmod", "exit 0");
    let table = handler("devperms.conf");
    let table = table.to_str().unwrap();
    // /dev/null is a character device on every Linux system; the fakes leave it alone.
    let cases = [
        ("sda", Some(("root:disk", "0660"))),
        ("sdb1", Some(("root:disk", "0660"))),
        ("nvme0n1p2", Some(("root:disk", "0660"))),
        ("sr0", Some(("root:cdrom", "0660"))),
        ("snd/pcmC0D0p", Some(("root:audio", "0660"))),
        ("dri/card0", Some(("root:video", "0660"))),
        ("tty1", Some(("root:tty", "0620"))),
        ("ttyS0", Some(("root:dialout", "0660"))),
        ("ttyUSB3", Some(("root:dialout", "0660"))),
        ("kvm", None),
        ("input/event3", None),
        ("ttyprintk", None),
    ];
    for (devname, want) in cases {
        let out = f.run(
            &handler("devperms"),
            &[table, "/dev/null"],
            &[("ACTION", "add"), ("DEVNAME", devname)],
        );
        assert_eq!(status(&out), 0, "{devname}: {}", describe(&out));
        let expected: Vec<String> = match want {
            Some((owner, mode)) => vec![
                format!("chown [-h] [--] [{owner}] [/dev/null]"),
                format!("chmod [--] [{mode}] [/dev/null]"),
            ],
            None => vec![],
        };
        assert_eq!(f.take(), expected, "{devname}");
    }
}

#[test]
fn devperms_refuses_what_it_must_not_touch() {
    let f = Fakes::new();
    f.fake("chown", "exit 0");
    f.fake("chmod", "exit 0");
    let table = f.path("perms.conf");
    fs::write(&table, "# comment\n\n*   1:2   0640\n").unwrap();
    let t = table.to_str().unwrap();
    let regular = f.path("regular");
    fs::write(&regular, "").unwrap();
    let link = f.path("link");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let devperms = handler("devperms");
    let ev = [("ACTION", "add"), ("DEVNAME", "x")];

    // Not a device node, or a symbolic link to one: nothing, exit 0.
    for node in [&regular, &link, &f.path("missing")] {
        let out = f.run(&devperms, &[t, node.to_str().unwrap()], &ev);
        assert_eq!(status(&out), 0, "{}: {}", node.display(), describe(&out));
        assert!(f.take().is_empty(), "{}", node.display());
    }
    // No table, or no DEVNAME: nothing to do.
    let out = f.run(&devperms, &["/nonexistent/perms.conf", "/dev/null"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let out = f.run(&devperms, &[t, "/dev/null"], &[("ACTION", "add")]);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(f.take().is_empty());
    // A DEVNAME that climbs out of /dev.
    let out = f.run(
        &devperms,
        &[t, "/dev/null"],
        &[("ACTION", "add"), ("DEVNAME", "../etc/shadow")],
    );
    assert_eq!(status(&out), 1, "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("refusing DEVNAME"),
        "{}",
        describe(&out)
    );
    assert!(f.take().is_empty());
    // Usage.
    let out = f.run(&devperms, &[t], &ev);
    assert_eq!(status(&out), 2, "{}", describe(&out));
    // A bad line before the match stops it, with the line number.
    let bad = f.path("bad.conf");
    fs::write(&bad, "# x\nsd*  root:disk  rw\n*  0:0  0600\n").unwrap();
    let out = f.run(&devperms, &[bad.to_str().unwrap(), "/dev/null"], &ev);
    assert_eq!(status(&out), 1, "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("bad.conf:2: expected PATTERN USER:GROUP MODE"),
        "{}",
        describe(&out)
    );
    assert!(f.take().is_empty());
    // chown fails: exit 1, and chmod is not tried.
    f.fake("chown", "exit 1");
    let out = f.run(&devperms, &[t, "/dev/null"], &ev);
    assert_eq!(status(&out), 1, "{}", describe(&out));
    assert_eq!(f.take(), ["chown [-h] [--] [1:2] [/dev/null]"]);
}

#[test]
fn devperms_changes_a_real_node() {
    let f = Fakes::new();
    let node = f.path("testnode0");
    if let Err(why) = mknod(&node, false) {
        skip_or_fail(&format!(
            "devperms on a real node: {why} (needs root with CAP_MKNOD)"
        ));
        return;
    }
    let table = f.path("perms.conf");
    fs::write(&table, "other*  0:0  0600\ntestnode[0-9]  1:2  0640\n").unwrap();
    let out = Command::new(handler("devperms"))
        .arg(&table)
        .arg(&node)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEVNAME", "testnode0")
        .output()
        .unwrap();
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let m = fs::symlink_metadata(&node).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1, 2, 0o640));
}

// ---- netif ----------------------------------------------------------------------------

#[test]
fn netif_brings_interfaces_up_with_ip_or_ifupdown() {
    let f = Fakes::new();
    let netif = handler("netif");
    f.fake("ip", "exit 0");
    let ev = [("SUBSYSTEM", "net"), ("ACTION", "add")];

    // Without ifupdown: only the link goes up.
    let out = f.run(&netif, &["add", "eth0"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(f.take(), ["ip [link] [set] [dev] [eth0] [up]"]);
    // ip's failure is the handler's.
    f.fake("ip", "exit 3");
    let out = f.run(&netif, &["add", "eth0"], &ev);
    assert_eq!(status(&out), 3, "{}", describe(&out));
    assert_eq!(f.take(), ["ip [link] [set] [dev] [eth0] [up]"]);
    f.fake("ip", "exit 0");
    // Removing an interface nobody configured: nothing.
    let out = f.run(&netif, &["remove", "eth0"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(f.take().is_empty());

    // With ifupdown, which has `allow-hotplug eth0` and has eth0 configured.
    f.real("grep");
    f.fake(
        "ifquery",
        r#"case "$1" in
--allow=hotplug) echo eth0; echo eth10 ;;
--state) [ "$2" = eth0 ] ;;
*) exit 1 ;;
esac"#,
    );
    f.fake("ifup", "exit 0");
    f.fake("ifdown", "exit 0");
    let out = f.run(&netif, &["add", "eth0"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        f.take(),
        [
            "ifquery [--allow=hotplug] [--list]",
            "ifup [--allow=hotplug] [eth0]"
        ]
    );
    // An interface ifupdown does not list for hotplug (`eth1`, not a prefix of `eth10`).
    let out = f.run(&netif, &["add", "eth1"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        f.take(),
        [
            "ifquery [--allow=hotplug] [--list]",
            "ip [link] [set] [dev] [eth1] [up]"
        ]
    );
    let out = f.run(&netif, &["remove", "eth0"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(
        f.take(),
        ["ifquery [--state] [eth0]", "ifdown [--force] [eth0]"]
    );
    let out = f.run(&netif, &["remove", "eth1"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(f.take(), ["ifquery [--state] [eth1]"]);

    // Names that could pass for options or paths, and usage errors.
    for args in [
        &["add", "-x"][..],
        &["add", "a/b"],
        &["add", "a b"],
        &["add", ""],
        &["add"],
        &["up", "eth0"],
    ] {
        let out = f.run(&netif, args, &ev);
        assert_eq!(status(&out), 2, "{args:?}: {}", describe(&out));
        assert!(f.take().is_empty(), "{args:?}");
    }
}

// ---- usb-mount ------------------------------------------------------------------------

/// A block device node to hand usb-mount: made with mknod, else an existing one.
pub(crate) fn block_node(f: &Fakes) -> Option<PathBuf> {
    let made = f.path("dev").join("sdz1");
    fs::create_dir_all(made.parent().unwrap()).unwrap();
    match mknod(&made, true) {
        Ok(()) => return Some(made),
        Err(why) => eprintln!("{why}; looking for a block device in /dev"),
    }
    fs::read_dir("/dev")
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        .map(|e| e.path())
}

#[test]
fn usb_mount_mounts_known_file_systems_and_unmounts() {
    let f = Fakes::new();
    let usb = handler("usb-mount");
    for tool in ["mkdir", "rmdir", "awk"] {
        f.real(tool);
    }
    f.fake("mount", "exit 0");
    f.fake("umount", "exit 0");
    let base = f.path("media");
    fs::create_dir(&base).unwrap();
    let b = base.to_str().unwrap();
    let ev = [("SUBSYSTEM", "block")];

    // remove: a mount point is unmounted lazily and its directory removed.
    let dir = base.join("sdz1");
    fs::create_dir(&dir).unwrap();
    f.fake("mountpoint", "exit 0");
    let out = f.run(&usb, &["remove", "/dev/sdz1", b], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    let d = dir.display();
    assert_eq!(
        f.take(),
        [
            format!("mountpoint [-q] [{d}]"),
            format!("umount [-l] [{d}]")
        ]
    );
    assert!(!dir.exists());
    assert_eq!(text(&out.stdout), format!("unmounted {d}\n"));
    // ... and nothing is done when it is not one.
    f.fake("mountpoint", "exit 1");
    let out = f.run(&usb, &["remove", "/dev/sdz1", b], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(f.take(), [format!("mountpoint [-q] [{d}]")]);

    // Usage and refused nodes.
    for args in [
        &["add", "sdz1", b][..],
        &["add", "/dev/-x", b],
        &["add", "/dev/..", b],
        &["add", "/dev/sdz1"],
        &["eject", "/dev/sdz1", b],
    ] {
        let out = f.run(&usb, args, &ev);
        assert_eq!(status(&out), 2, "{args:?}: {}", describe(&out));
        assert!(f.take().is_empty(), "{args:?}");
    }

    // add of something that is not a block device: nothing.
    f.fake("blkid", "echo vfat");
    let out = f.run(&usb, &["add", "/dev/null", b], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert!(f.take().is_empty());

    let Some(node) = block_node(&f) else {
        skip_or_fail("usb-mount add: no block device node (mknod needs root)");
        return;
    };
    let n = node.to_str().unwrap();
    let name = node.file_name().unwrap().to_str().unwrap();
    let dir = base.join(name);
    let d = dir.display();

    // A known file system: mounted with the rule's options, or the default ones.
    for (opts, want) in [
        (Some("ro,nosuid,nodev,noexec"), "ro,nosuid,nodev,noexec"),
        (Some("rw,nosuid"), "rw,nosuid"),
        (None, "ro,nosuid,nodev,noexec"),
    ] {
        let mut args = vec!["add", n, b];
        args.extend(opts);
        let out = f.run(&usb, &args, &ev);
        assert_eq!(status(&out), 0, "{}", describe(&out));
        assert_eq!(
            f.take(),
            [
                format!("blkid [-o] [value] [-s] [TYPE] [{n}]"),
                format!("mount [-t] [vfat] [-o] [{want}] [{n}] [{d}]"),
            ]
        );
        assert!(dir.is_dir());
        assert_eq!(text(&out.stdout), format!("mounted {n} (vfat) at {d}\n"));
        fs::remove_dir(&dir).unwrap();
    }
    // swap, LUKS, or no file system at all (blkid fails): not ours to mount.
    for body in ["echo swap", "echo crypto_LUKS", "exit 2"] {
        f.fake("blkid", body);
        let out = f.run(&usb, &["add", n, b], &ev);
        assert_eq!(status(&out), 0, "{body}: {}", describe(&out));
        assert_eq!(
            f.take(),
            [format!("blkid [-o] [value] [-s] [TYPE] [{n}]")],
            "{body}"
        );
        assert!(!dir.exists(), "{body}");
    }
    // mount fails: its status, and the directory is gone again.
    f.fake("blkid", "echo ext4");
    f.fake("mount", "exit 32");
    let out = f.run(&usb, &["add", n, b], &ev);
    assert_eq!(status(&out), 32, "{}", describe(&out));
    assert_eq!(f.take().len(), 2);
    assert!(!dir.exists());
}

// ---- blkid-import ---------------------------------------------------------------------

#[test]
fn blkid_import_prints_the_file_system_lines_of_blkid() {
    let f = Fakes::new();
    let h = handler("blkid-import");
    // What `blkid -o udev -p` prints for a partition, with a label that is shell syntax,
    // and lines that are not ID_FS_* or not KEY=VALUE at all.
    f.fake(
        "blkid",
        "printf '%s\\n' ID_FS_UUID=0F3C-9A21 ID_FS_UUID_ENC=0F3C-9A21 ID_FS_VERSION=FAT32 \
         ID_FS_TYPE=vfat ID_FS_USAGE=filesystem 'ID_FS_LABEL=$(touch${IFS}/tmp/pwned)' \
         ID_PART_ENTRY_UUID=abcd DEVNAME=evil 'ID_FS_x y=1' 'not a property' ID_FS_",
    );
    let ev = [("ACTION", "add"), ("DEVNAME", "sdb1")];
    let out = f.run(&h, &["/dev/sdb1"], &ev);
    assert_eq!(status(&out), 0, "{}", describe(&out));
    assert_eq!(f.take(), ["blkid [-o] [udev] [-p] [/dev/sdb1]"]);
    assert_eq!(
        text(&out.stdout),
        "ID_FS_UUID=0F3C-9A21\nID_FS_UUID_ENC=0F3C-9A21\nID_FS_VERSION=FAT32\n\
         ID_FS_TYPE=vfat\nID_FS_USAGE=filesystem\nID_FS_LABEL=$(touch${IFS}/tmp/pwned)\n"
    );
    // No file system (2: nothing identified, or no node), an ambivalent probe (8): no
    // properties, and no failure. Whatever blkid printed before failing is not merged.
    for code in [2, 8] {
        f.fake("blkid", &format!("echo ID_FS_TYPE=half; exit {code}"));
        let out = f.run(&h, &["/dev/sdb1"], &ev);
        assert_eq!(status(&out), 0, "{code}: {}", describe(&out));
        assert_eq!(text(&out.stdout), "", "{code}");
        assert_eq!(f.take().len(), 1);
    }
    // Any other failure is blkid's status, again with nothing printed.
    f.fake("blkid", "echo ID_FS_TYPE=half; exit 4");
    let out = f.run(&h, &["/dev/sdb1"], &ev);
    assert_eq!(status(&out), 4, "{}", describe(&out));
    assert_eq!(text(&out.stdout), "");
    // Usage.
    f.take();
    for args in [&[][..], &[""][..], &["/dev/a", "/dev/b"][..]] {
        let out = f.run(&h, args, &ev);
        assert_eq!(status(&out), 2, "{args:?}: {}", describe(&out));
    }
    assert!(f.take().is_empty());
}

// ---- input-import ---------------------------------------------------------------------

/// An input device `inputN` below `parent` in a fake sysfs, with its capability bitmaps
/// (as the kernel prints them, 64-bit words) and an event node; the event's DEVPATH.
fn fake_input(
    sys: &Path,
    parent: &str,
    ev: &str,
    key: &str,
    rel: &str,
    abs: &str,
    props: &str,
) -> String {
    let input = format!("{parent}/input/input3");
    let dir = sys.join(input.trim_start_matches('/'));
    fs::create_dir_all(dir.join("capabilities")).unwrap();
    fs::create_dir_all(dir.join("event3")).unwrap();
    for (name, v) in [("ev", ev), ("key", key), ("rel", rel), ("abs", abs)] {
        fs::write(dir.join("capabilities").join(name), format!("{v}\n")).unwrap();
    }
    fs::write(dir.join("properties"), format!("{props}\n")).unwrap();
    format!("{input}/event3")
}

#[test]
fn input_import_classifies_devices_by_their_capabilities() {
    let f = Fakes::new();
    let sys = f.path("sys");
    let h = handler("input-import");
    // Bitmaps copied from real devices: an AT keyboard, a PS/2 wheel mouse, a Synaptics
    // touchpad, an Xbox pad, a touchscreen.
    let cases = [
        (
            "kbd",
            [
                "120013",
                "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe",
                "0",
                "0",
                "0",
            ],
            &["ID_INPUT_KEY=1", "ID_INPUT_KEYBOARD=1"][..],
        ),
        (
            "mouse",
            ["17", "1f0000 0 0 0 0", "143", "0", "0"],
            &["ID_INPUT_MOUSE=1"][..],
        ),
        (
            "touchpad",
            ["b", "e520 10000 0 0 0 0", "0", "660800011000003", "5"],
            &["ID_INPUT_TOUCHPAD=1"][..],
        ),
        (
            "pad",
            ["20000b", "7cdb000000000000 0 0 0 0", "0", "3003f", "0"],
            &["ID_INPUT_JOYSTICK=1"][..],
        ),
        // BTN_TOUCH and INPUT_PROP_DIRECT: none of our classes.
        ("screen", ["b", "400 0 0 0 0 0", "0", "3", "2"], &[][..]),
        // Power button: a key, not a keyboard.
        (
            "power",
            ["3", "10000000000000 0", "0", "0", "0"],
            &["ID_INPUT_KEY=1"][..],
        ),
    ];
    for (name, [ev, key, rel, abs, props], want) in cases {
        let devpath = fake_input(&sys, &format!("/devices/{name}"), ev, key, rel, abs, props);
        let mut expected = vec!["ID_INPUT=1"];
        expected.extend(want);
        // The tree as the first argument, and as $SYSFS.
        let out = f.run(&h, &[sys.to_str().unwrap()], &[("DEVPATH", &devpath)]);
        assert_eq!(status(&out), 0, "{name}: {}", describe(&out));
        assert_eq!(
            text(&out.stdout).lines().collect::<Vec<_>>(),
            expected,
            "{name}"
        );
        let out = f.run(
            &h,
            &[],
            &[("DEVPATH", &devpath), ("SYSFS", sys.to_str().unwrap())],
        );
        assert_eq!(
            text(&out.stdout).lines().collect::<Vec<_>>(),
            expected,
            "{name}"
        );
    }
    // No capabilities (not an input node, gone, or a DEVPATH that climbs): nothing.
    for devpath in [
        "/devices/none/event1",
        "/devices/kbd/../kbd/input/input3/event3",
        "",
    ] {
        let out = f.run(&h, &[sys.to_str().unwrap()], &[("DEVPATH", devpath)]);
        assert_eq!(status(&out), 0, "{devpath}: {}", describe(&out));
        assert_eq!(text(&out.stdout), "", "{devpath}");
    }
    // The handler needs no tool at all (getconf is optional).
    assert!(f.take().is_empty());
}
