//! What ships beside the binaries: the example handlers of `contrib/handlers/` run against
//! fake events with fake tools first in `PATH` (each records its argv), the shipped rules
//! of `config/rules.d/` checked, matched and run in a real daemon, the init-system files
//! checked against the binaries' real options, the man pages against the code, and
//! `make install` / `make uninstall` into a temporary DESTDIR.
//!
//! The lint side (mandoc, groff, shellcheck, systemd-analyze) is scripts/check-contrib.sh.
//! A missing tool (make) or privilege (mknod) skips its part with the reason; under
//! `CI=true` a missing tool fails.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn handler(name: &str) -> PathBuf {
    root().join("contrib/handlers").join(name)
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory of fake tools: each appends `NAME [ARG1] [ARG2] ...` to one log, then runs
/// its own shell body. Real tools a handler needs besides can be linked in.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Fakes {
        let f = Fakes {
            dir: tempfile::Builder::new()
                .prefix("hotplugd-contrib")
                .tempdir()
                .unwrap(),
        };
        fs::create_dir(f.bin()).unwrap();
        f
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> PathBuf {
        self.path("calls.log")
    }

    /// A fake `name` that records its argv, then runs `body`.
    fn fake(&self, name: &str, body: &str) {
        let p = self.bin().join(name);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\n{{ printf '%s' '{name}'; for a in \"$@\"; do printf ' [%s]' \"$a\"; done; echo; }} >> '{log}'\n{body}\n",
                log = self.log().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The real `name`, for what a handler needs besides the faked tools.
    fn real(&self, name: &str) {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name} not found in /usr/bin, /bin, /usr/sbin, /sbin"));
        std::os::unix::fs::symlink(found, self.bin().join(name)).unwrap();
    }

    /// The recorded calls, one line each, and forget them.
    fn take(&self) -> Vec<String> {
        let calls = fs::read_to_string(self.log()).unwrap_or_default();
        let _ = fs::remove_file(self.log());
        calls.lines().map(str::to_owned).collect()
    }

    /// Run a handler as the daemon would: the event as the whole environment, with the
    /// fakes as its PATH.
    fn run(&self, prog: &Path, args: &[&str], event: &[(&str, &str)]) -> Output {
        Command::new(prog)
            .args(args)
            .env_clear()
            .env("PATH", self.bin())
            .env("HOTPLUGD_RULE", "test")
            .envs(event.iter().copied())
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn status(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A device node made with mknod(2), or why it could not be.
fn mknod(path: &Path, block: bool) -> Result<(), String> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let (kind, dev) = if block {
        (libc::S_IFBLK, libc::makedev(7, 0))
    } else {
        (libc::S_IFCHR, libc::makedev(1, 3))
    };
    // SAFETY: a NUL-terminated path; mknod has no memory effects.
    if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "mknod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

// ---- the shipped configuration ------------------------------------------------------

/// The uncommented `[[rule]]` tables of the shipped rule files.
fn shipped_rule_count() -> usize {
    let mut n = 0;
    for e in fs::read_dir(root().join("config/rules.d")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            n += fs::read_to_string(&p)
                .unwrap()
                .lines()
                .filter(|l| l.trim() == "[[rule]]")
                .count();
        }
    }
    n
}

#[test]
fn shipped_configs_pass_check_config() {
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(root().join("config/hotplugd.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let n = shipped_rule_count();
    assert!(n >= 6, "{n}");
    assert!(
        text(&out.stdout).ends_with(&format!(": ok, {n} rules\n")),
        "{}",
        describe(&out)
    );

    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(root().join("contrib/initramfs-tools/hotplugd.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).ends_with(": ok, 1 rules\n"),
        "{}",
        describe(&out)
    );
}

#[test]
fn shipped_rules_name_shipped_handlers() {
    let prefix = "/usr/local/libexec/hotplugd/";
    let mut seen = 0;
    for e in fs::read_dir(root().join("config/rules.d")).unwrap() {
        let p = e.unwrap().path();
        let body = fs::read_to_string(&p).unwrap();
        for line in body.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for (i, _) in line.match_indices(prefix) {
                let name: String = line[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                let h = handler(&name);
                let mode = fs::metadata(&h)
                    .unwrap_or_else(|e| panic!("{}: {prefix}{name}: {e}", p.display()))
                    .permissions()
                    .mode();
                assert!(mode & 0o111 != 0, "{} is not executable", h.display());
                seen += 1;
            }
            if line.contains("/etc/hotplugd/devperms.conf") {
                assert!(handler("devperms.conf").is_file());
            }
        }
    }
    assert!(seen >= 4, "{seen} handler references");
}

/// `hotplugctl test` with the shipped rules: rule name and argv of each match.
fn plan(vars: &[&str]) -> Vec<String> {
    let out = Command::new(CTL)
        .args(["test", "--config"])
        .arg(root().join("config/hotplugd.toml"))
        .args(vars)
        .output()
        .unwrap();
    assert!(out.status.success(), "{vars:?}: {}", describe(&out));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("rule "))
        .map(|l| l.rsplit_once(" (timeout ").map_or(l, |(a, _)| a).to_owned())
        .collect()
}

#[test]
fn shipped_rules_match_the_events_they_are_for() {
    let usb = "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1";
    let sata = "/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1";
    let syslog = |a: &str, d: &str, s: &str, n: &str| {
        format!("syslog: logger -t hotplugd -p daemon.info -- '{a} {d} ({s}) SEQNUM={n}'")
    };
    let modalias = "pci:v00008086d0000A348sv00001028sd0000085Cbc04sc03i00";
    assert_eq!(
        plan(&[
            "ACTION=add",
            "SUBSYSTEM=pci",
            "DEVPATH=/devices/pci0000:00/0000:00:1f.3",
            &format!("MODALIAS={modalias}"),
            "SEQNUM=7",
        ]),
        [
            format!("modules: modprobe -b -q {modalias}"),
            syslog("add", "/devices/pci0000:00/0000:00:1f.3", "pci", "7"),
        ]
    );
    for iface in ["eth0", "enp3s0", "wlan0", "usb0"] {
        let dev = format!("/devices/pci0000:00/0000:00:1c.0/net/{iface}");
        let vars = |a: &str| {
            [
                format!("ACTION={a}"),
                "SUBSYSTEM=net".into(),
                format!("DEVPATH={dev}"),
                format!("INTERFACE={iface}"),
                "SEQNUM=8".into(),
            ]
        };
        let add = vars("add");
        assert_eq!(
            plan(&add.each_ref().map(String::as_str)),
            [
                format!("net-up: /usr/local/libexec/hotplugd/netif add {iface}"),
                syslog("add", &dev, "net", "8"),
            ]
        );
        let remove = vars("remove");
        assert_eq!(
            plan(&remove.each_ref().map(String::as_str)),
            [
                format!("net-down: /usr/local/libexec/hotplugd/netif remove {iface}"),
                syslog("remove", &dev, "net", "8"),
            ]
        );
    }
    // Loopback, bridges, veth and container interfaces are left alone.
    for iface in ["lo", "br0", "veth1a2b", "docker0"] {
        let dev = format!("/devices/virtual/net/{iface}");
        assert_eq!(
            plan(&[
                "ACTION=add",
                "SUBSYSTEM=net",
                &format!("DEVPATH={dev}"),
                &format!("INTERFACE={iface}"),
            ]),
            [syslog("add", &dev, "net", "")],
            "{iface}"
        );
    }
    // A partition on a USB disk: its node's permissions, then the mount.
    assert_eq!(
        plan(&[
            "ACTION=add",
            "SUBSYSTEM=block",
            &format!("DEVPATH={usb}"),
            "DEVNAME=sdb1",
            "DEVTYPE=partition",
            "SEQNUM=9",
        ]),
        [
            "devperms: /usr/local/libexec/hotplugd/devperms /etc/hotplugd/devperms.conf /dev/sdb1"
                .to_owned(),
            "usb-disk: /usr/local/libexec/hotplugd/usb-mount add /dev/sdb1 /media ro,nosuid,nodev,noexec"
                .to_owned(),
            syslog("add", usb, "block", "9"),
        ]
    );
    assert_eq!(
        plan(&[
            "ACTION=remove",
            "SUBSYSTEM=block",
            &format!("DEVPATH={usb}"),
            "DEVNAME=sdb1",
            "SEQNUM=10",
        ]),
        [
            "usb-disk: /usr/local/libexec/hotplugd/usb-mount remove /dev/sdb1 /media ro,nosuid,nodev,noexec"
                .to_owned(),
            syslog("remove", usb, "block", "10"),
        ]
    );
    // A SATA disk is not mounted.
    assert_eq!(
        plan(&[
            "ACTION=add",
            "SUBSYSTEM=block",
            &format!("DEVPATH={sata}"),
            "DEVNAME=sda1",
        ]),
        [
            "devperms: /usr/local/libexec/hotplugd/devperms /etc/hotplugd/devperms.conf /dev/sda1"
                .to_owned(),
            syslog("add", sata, "block", ""),
        ]
    );
    // Values stay one argument each, whatever they hold.
    assert_eq!(
        plan(&[
            "ACTION=add",
            "SUBSYSTEM=net",
            "DEVPATH=/devices/x/net/eth0",
            "INTERFACE=eth0; rm -rf /",
        ]),
        [
            "net-up: /usr/local/libexec/hotplugd/netif add 'eth0; rm -rf /'".to_owned(),
            syslog("add", "/devices/x/net/eth0", "net", ""),
        ]
    );
    // Batteries send `change` every few seconds: nothing runs.
    assert!(plan(&[
        "ACTION=change",
        "SUBSYSTEM=power_supply",
        "DEVPATH=/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/BAT0",
    ])
    .is_empty());
}

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
        eprintln!("SKIP devperms on a real node: {why} (needs root with CAP_MKNOD)");
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
fn block_node(f: &Fakes) -> Option<PathBuf> {
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
        assert!(!ci(), "no block device node to test usb-mount add with");
        eprintln!("SKIP usb-mount add: no block device node (mknod needs root)");
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

// ---- the shipped rules in a real daemon -----------------------------------------------

#[test]
fn shipped_rules_run_their_handlers_in_a_real_daemon() {
    let env = Env::new();
    let f = Fakes::new();
    f.fake("modprobe", "exit 0");
    f.fake("logger", "exit 0");
    f.fake("ip", "exit 0");
    // The shipped rules, with the handlers taken from the source tree.
    let rules = env.path("rules.d");
    fs::create_dir(&rules).unwrap();
    let handlers = format!("{}/", root().join("contrib/handlers").display());
    for e in fs::read_dir(root().join("config/rules.d")).unwrap() {
        let p = e.unwrap().path();
        let body = fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/local/libexec/hotplugd/", &handlers)
            .replace(
                "/etc/hotplugd/devperms.conf",
                handler("devperms.conf").to_str().unwrap(),
            );
        fs::write(rules.join(p.file_name().unwrap()), body).unwrap();
    }
    let config = env.path("hotplugd.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nseqnum_file = \"{}\"\ngap_timeout = \"20s\"\nrules_dir = \"rules.d\"\nsources = [\"fifo\"]\n",
            env.path("seqnum").display()
        ),
    )
    .unwrap();
    let daemon = env.start(&config);

    let path = f.bin();
    let path = path.to_str().unwrap();
    let alias = "pci:v00008086d0000A348sv00001028sd0000085Cbc04sc03i00";
    let pci = "/devices/pci0000:00/0000:00:1f.3";
    let eth0 = "/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/net/eth0";
    let eth1 = "/devices/pci0000:00/0000:00:1c.1/0000:03:00.0/net/eth1";
    let usb = "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdz/sdz9";
    let bat = "/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/BAT0";
    let events: [&[(&str, &str)]; 5] = [
        &[
            ("ACTION", "add"),
            ("DEVPATH", pci),
            ("SUBSYSTEM", "pci"),
            ("MODALIAS", alias),
        ],
        &[
            ("ACTION", "add"),
            ("DEVPATH", eth0),
            ("SUBSYSTEM", "net"),
            ("INTERFACE", "eth0"),
        ],
        &[
            ("ACTION", "remove"),
            ("DEVPATH", eth1),
            ("SUBSYSTEM", "net"),
            ("INTERFACE", "eth1"),
        ],
        // No /dev/sdz9 here: devperms and usb-mount find no node and do nothing.
        &[
            ("ACTION", "add"),
            ("DEVPATH", usb),
            ("SUBSYSTEM", "block"),
            ("DEVNAME", "sdz9"),
        ],
        &[
            ("ACTION", "change"),
            ("DEVPATH", bat),
            ("SUBSYSTEM", "power_supply"),
        ],
    ];
    for (i, vars) in events.iter().enumerate() {
        let seq = (i + 1).to_string();
        let mut vars = vars.to_vec();
        vars.extend([("SEQNUM", seq.as_str()), ("PATH", path)]);
        assert!(env.shim(&vars).success());
    }
    env.ctl_ok(&["settle", "--seq", "5", "--timeout", "60"]);

    let logger = |a: &str, d: &str, s: &str, n: u32| {
        format!("logger [-t] [hotplugd] [-p] [daemon.info] [--] [{a} {d} ({s}) SEQNUM={n}]")
    };
    assert_eq!(
        f.take(),
        [
            format!("modprobe [-b] [-q] [{alias}]"),
            logger("add", pci, "pci", 1),
            "ip [link] [set] [dev] [eth0] [up]".to_owned(),
            logger("add", eth0, "net", 2),
            logger("remove", eth1, "net", 3),
            logger("add", usb, "block", 4),
        ],
        "daemon log:\n{}",
        daemon.log_text()
    );
    let status = env.ctl_ok(&["status"]);
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    assert_eq!(
        (field("handled"), field("failed"), field("timed out")),
        ("5".into(), "0".into(), "0".into()),
        "{status}\n{}",
        daemon.log_text()
    );
    assert!(daemon.stop().success());
}

// ---- contrib files against the binaries ---------------------------------------------

fn help(bin: &str) -> String {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success(), "{bin} --help: {}", describe(&out));
    text(&out.stdout)
}

/// `hotplugctl CMD... --help`: a command's own options are only in its own help.
fn ctl_help(cmd: &[&str]) -> String {
    let out = Command::new(CTL).args(cmd).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "hotplugctl {cmd:?} --help: {}",
        describe(&out)
    );
    text(&out.stdout)
}

/// The commands a `Commands:` list of a --help names.
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_lowercase))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// hotplugctl's --help and every command's, `helper`'s actions included.
fn ctl_help_all() -> String {
    let top = help(CTL);
    let mut all = top.clone();
    for cmd in commands_in(&top) {
        let sub = ctl_help(&[&cmd]);
        for action in commands_in(&sub) {
            all.push_str(&ctl_help(&[&cmd, &action]));
        }
        all.push_str(&sub);
    }
    all
}

/// Every file below `dir`, recursively, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The commands the init-system files run with our binaries: (binary, words after it),
/// up to a redirection or a shell operator; comments skipped, continued lines joined.
fn invocations(body: &str) -> Vec<(String, Vec<String>)> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in body.lines() {
        if cur.is_empty() && line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(l) => cur.push_str(l),
            None => {
                cur.push_str(line);
                joined.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut out = Vec::new();
    for line in joined {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            // `/usr/local/sbin/hotplugctl`, `ExecStart=/usr/local/sbin/hotplugd`,
            // `"$hotplugctl"`, `"$HOTPLUGCTL"`; not `/run/hotplugd` or `DAEMON=...`.
            let w = w.trim_matches('"');
            if w.contains('=') && !w.starts_with("Exec") {
                continue;
            }
            let cmd = w.strip_prefix("Exec").map_or(w, |e| {
                e.split_once('=')
                    .map_or(e, |(_, v)| v.trim_start_matches(['-', '@', '+', '!']))
            });
            let bin = ["hotplugd", "hotplugctl"].into_iter().find(|b| {
                cmd.ends_with(&format!("sbin/{b}")) || cmd.eq_ignore_ascii_case(&format!("${b}"))
            });
            let Some(bin) = bin else { continue };
            let bin = bin.to_owned();
            let args: Vec<String> = words[i + 1..]
                .iter()
                .take_while(|a| !a.contains('>') && !["||", "&&", ";", "|", "&"].contains(a))
                .map(|a| a.trim_matches('"').to_owned())
                .collect();
            out.push((bin, args));
        }
    }
    out
}

/// Whether `word` occurs in `text` not as part of a longer option or name.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word)
        .any(|(i, _)| !text[..i].ends_with(part) && !text[i + word.len()..].starts_with(part))
}

#[test]
fn contrib_files_use_real_commands_and_options() {
    let daemon_help = help(DAEMON);
    let commands = commands_in(&help(CTL));
    for c in ["settle", "trigger", "helper", "reload", "status"] {
        assert!(commands.iter().any(|k| k == c), "{c} not in {commands:?}");
    }
    let mut checked = Vec::new();
    for path in files_below(&root().join("contrib")) {
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let body = fs::read_to_string(&path).unwrap();
        for (bin, args) in invocations(&body) {
            let what = format!("{}: {bin} {}", path.display(), args.join(" "));
            let help = if bin == "hotplugd" {
                daemon_help.clone()
            } else {
                // The command's own help lists its options and the global ones.
                let words: Vec<&str> = args
                    .iter()
                    .map(String::as_str)
                    .filter(|a| !a.starts_with('-') && !a.starts_with('/'))
                    .collect();
                let cmd = match words[..] {
                    ["helper", action, ..] => vec!["helper", action],
                    [c, ..] => vec![c],
                    [] => vec![],
                };
                ctl_help(&cmd)
            };
            for a in args.iter().filter(|a| a.starts_with("--")) {
                let opt = a.split('=').next().unwrap();
                assert!(
                    has_word(&help, opt),
                    "{what}: {opt} is not an option of {bin}"
                );
            }
            if bin == "hotplugctl" {
                let mut words = args.iter().map(String::as_str);
                let mut cmd = words.next();
                if cmd == Some("--runtime-dir") {
                    cmd = words.nth(1);
                }
                let cmd = cmd.unwrap_or_else(|| panic!("{what}: no command"));
                assert!(
                    commands.iter().any(|k| k == cmd),
                    "{what}: {cmd} is not a command"
                );
                if cmd == "helper" {
                    let action = words.next();
                    assert!(
                        matches!(action, Some("status" | "enable" | "disable")),
                        "{what}"
                    );
                }
            }
            checked.push(what);
        }
    }
    let all = checked.join("\n");
    for expected in [
        "hotplugd.service: hotplugd",
        "hotplugctl helper enable",
        "hotplugctl settle --timeout",
        "hotplugctl trigger --action add",
        "hotplugd --ready-fd 3",
        "--runtime-dir /run/hotplugd",
    ] {
        assert!(all.contains(expected), "no {expected:?} among:\n{all}");
    }

    // The socket unit holds what src/activation.rs takes: the FIFO and the control socket
    // at the paths the shim and hotplugctl use by default.
    let socket = fs::read_to_string(root().join("contrib/systemd/hotplugd.socket")).unwrap();
    for line in [
        "ListenFIFO=/run/hotplugd/events",
        "ListenStream=/run/hotplugd/control",
        "Service=hotplugd.service",
    ] {
        assert!(
            socket.lines().any(|l| l == line),
            "hotplugd.socket: no {line}"
        );
    }
    let service = fs::read_to_string(root().join("contrib/systemd/hotplugd.service")).unwrap();
    for line in ["Type=notify", "Sockets=hotplugd.socket"] {
        assert!(
            service.lines().any(|l| l == line),
            "hotplugd.service: no {line}"
        );
    }
    // s6 waits for the newline the daemon writes to the fd it names.
    let fd = fs::read_to_string(root().join("contrib/s6/hotplugd/notification-fd")).unwrap();
    let run = fs::read_to_string(root().join("contrib/s6/hotplugd/run")).unwrap();
    assert!(run.contains(&format!("--ready-fd {}", fd.trim())), "{run}");
}

#[test]
fn helper_enable_status_disable_on_a_file() {
    let f = Fakes::new();
    let file = f.path("hotplug");
    fs::write(&file, "\n").unwrap();
    let ctl = |args: &[&str]| {
        Command::new(CTL)
            .args(["helper"])
            .args(args)
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = ctl(&["enable", SHIM]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::read_to_string(&file).unwrap(), format!("{SHIM}\n"));
    let out = ctl(&["status"]);
    assert_eq!(
        text(&out.stdout).lines().next(),
        Some(format!("{}: {SHIM} (hotplugd's shim)", file.display()).as_str())
    );
    let out = ctl(&["disable"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), "");
    // Not an absolute path to a file: refused, the setting unchanged.
    let out = ctl(&["enable", "hotplug"]);
    assert_eq!(status(&out), 1, "{}", describe(&out));
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), "");
}

// ---- man pages against the code -----------------------------------------------------

fn man(name: &str) -> String {
    // Roff escapes the hyphens of options and paths.
    fs::read_to_string(root().join("man").join(name))
        .unwrap()
        .replace("\\-", "-")
}

/// The keys an `unknown field` error lists for a table, from the real parser.
fn known_keys(bad_toml: &str) -> Vec<String> {
    let f = Fakes::new();
    let p = f.path("bad.toml");
    fs::write(&p, bad_toml).unwrap();
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    let list = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("{err}"))
        .1
        .lines()
        .next()
        .unwrap();
    list.split(", ")
        .map(|k| k.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn man_pages_document_every_config_key_and_option() {
    let toml5 = man("hotplugd.toml.5");
    let section = |name: &str| -> String {
        let start = toml5
            .find(&format!("\n.SH {name}\n"))
            .unwrap_or_else(|| panic!("no {name} section"));
        let rest = &toml5[start + 1..];
        let end = rest[4..].find("\n.SH ").map_or(rest.len(), |e| e + 4);
        rest[..end].to_owned()
    };
    let daemon = section("THE [daemon] TABLE");
    let documented = |sec: &str, key: &str| {
        sec.contains(&format!("\n.BR {key} \"")) || sec.contains(&format!("\n.B {key}\n"))
    };
    let keys = known_keys("[daemon]\nno_such_key = 1\n");
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        assert!(
            documented(&daemon, key),
            "hotplugd.toml(5) does not document the [daemon] key {key}"
        );
    }
    let rules = section("RULES");
    let keys = known_keys("[[rule]]\nname = \"a\"\nrun = [\"/x\"]\nno_such_key = 1\n");
    assert_eq!(keys, ["name", "match", "run", "timeout", "last"]);
    for key in &keys {
        assert!(
            documented(&rules, key),
            "hotplugd.toml(5) does not document the rule key {key}"
        );
    }

    // Every option in the binaries' --help is in their pages, and every hotplugctl
    // command has its own subsection.
    let options = |help: &str| -> Vec<String> {
        let mut v: Vec<String> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let daemon8 = man("hotplugd.8");
    let opts = options(&help(DAEMON));
    assert!(opts.contains(&"--demo".to_owned()), "{opts:?}");
    for o in &opts {
        assert!(has_word(&daemon8, o), "hotplugd(8) lacks {o}");
    }
    let ctl8 = man("hotplugctl.8");
    let opts = options(&ctl_help_all());
    assert!(opts.contains(&"--seqnum-file".to_owned()), "{opts:?}");
    for o in &opts {
        assert!(has_word(&ctl8, o), "hotplugctl(8) lacks {o}");
    }
    let top_help = help(CTL);
    let subsections: Vec<&str> = ctl8.lines().filter(|l| l.starts_with(".SS ")).collect();
    for line in top_help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
    {
        let Some(cmd) = line
            .strip_prefix("  ")
            .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_lowercase))
            .and_then(|l| l.split_whitespace().next())
        else {
            continue;
        };
        assert!(
            subsections.iter().any(|s| s
                .trim_start_matches(".SS ")
                .trim_start_matches('"')
                .starts_with(cmd)),
            "hotplugctl(8) has no subsection for {cmd}: {subsections:?}"
        );
    }
    // The exit statuses the binaries document in their --help are the pages' too.
    for (page, codes) in [
        (&daemon8, &["0", "1", "2"][..]),
        (&ctl8, &["0", "1", "2", "3"]),
    ] {
        let exit = &page[page.find("\n.SH EXIT STATUS\n").unwrap()..];
        for c in codes {
            assert!(exit.contains(&format!("\n.B {c}\n")), "exit status {c}");
        }
    }
}

// ---- make install / uninstall -------------------------------------------------------

/// Whether an ELF file asks for a program interpreter (dynamic loader).
fn has_interp(path: &Path) -> bool {
    let b = fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{}", path.display());
    assert_eq!(b[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

fn make(args: &[&str], destdir: &Path) -> Output {
    let bindir = Path::new(DAEMON).parent().unwrap();
    Command::new("make")
        .arg("-s")
        .args(args)
        .arg("PREFIX=/usr")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BUILDDIR={}", bindir.display()))
        .current_dir(root())
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The shipped rule files that act on hardware by themselves, installed only as examples.
const EXAMPLE_RULES: [&str; 2] = ["50-net.toml", "60-usb-disk.toml"];

fn example_rule_count() -> usize {
    EXAMPLE_RULES
        .iter()
        .map(|f| {
            fs::read_to_string(root().join("config/rules.d").join(f))
                .unwrap()
                .lines()
                .filter(|l| l.trim() == "[[rule]]")
                .count()
        })
        .sum()
}

#[test]
fn make_install_enables_no_rule_that_acts_on_hardware() {
    if Command::new("make").arg("--version").output().is_err() {
        assert!(!ci(), "make is missing (Debian package make)");
        eprintln!("SKIP make install: make not found");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("hotplugd-destdir")
        .tempdir()
        .unwrap();
    let dest = tmp.path();
    let out = make(&["install"], dest);
    assert!(out.status.success(), "make install: {}", describe(&out));
    let config = dest.join("etc/hotplugd/hotplugd.toml");
    // What the installed config runs for a USB disk and for a new Ethernet interface, as
    // the installed daemon's own parser reads it.
    let usb = "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1";
    for event in [
        &[
            "ACTION=add",
            "SUBSYSTEM=block",
            "DEVTYPE=partition",
            "DEVNAME=sdb1",
            "SEQNUM=5",
        ][..],
        &["ACTION=add", "SUBSYSTEM=net", "INTERFACE=eth0", "SEQNUM=6"][..],
    ] {
        let devpath = if event[1] == "SUBSYSTEM=net" {
            "DEVPATH=/devices/pci0000:00/0000:00:1c.0/net/eth0".to_owned()
        } else {
            format!("DEVPATH={usb}")
        };
        let out = Command::new(dest.join("usr/sbin/hotplugctl"))
            .args(["test", "--config"])
            .arg(&config)
            .args(event)
            .arg(&devpath)
            .output()
            .unwrap();
        assert!(out.status.success(), "{event:?}: {}", describe(&out));
        let plan = text(&out.stdout);
        // The event itself matched something (the log rule), so the check is live.
        assert!(plan.contains("rule syslog:"), "{event:?}: {plan}");
        for acting in ["usb-mount", "netif", "mount ", "ifup", "dhclient", " ip "] {
            assert!(
                !plan.contains(acting),
                "the installed config runs {acting:?} for {event:?}:\n{plan}"
            );
        }
    }
    for f in EXAMPLE_RULES {
        assert!(
            !dest.join("etc/hotplugd/rules.d").join(f).exists(),
            "{f} is enabled"
        );
        let example = dest.join("usr/share/hotplugd/examples/rules.d").join(f);
        let body =
            fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        assert!(body.contains("/usr/libexec/hotplugd/"), "{f}: {body}");
    }
    // An example copied into place is valid as it is.
    fs::copy(
        dest.join("usr/share/hotplugd/examples/rules.d/60-usb-disk.toml"),
        dest.join("etc/hotplugd/rules.d/60-usb-disk.toml"),
    )
    .unwrap();
    let out = Command::new(dest.join("usr/sbin/hotplugd"))
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn make_install_and_uninstall_into_destdir() {
    if Command::new("make").arg("--version").output().is_err() {
        assert!(!ci(), "make is missing (Debian package make)");
        eprintln!("SKIP make install: make not found");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("hotplugd-destdir")
        .tempdir()
        .unwrap();
    let dest = tmp.path();
    let out = make(&["install"], dest);
    assert!(out.status.success(), "make install: {}", describe(&out));
    let at = |p: &str| dest.join(p.trim_start_matches('/'));
    let mode = |p: &str| {
        fs::metadata(at(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };

    // The binaries, as built; the shim without a dynamic loader.
    for (name, built) in [("hotplug", SHIM), ("hotplugd", DAEMON), ("hotplugctl", CTL)] {
        let p = format!("/usr/sbin/{name}");
        assert_eq!(mode(&p), 0o755, "{p}");
        assert!(fs::read(at(&p)).unwrap() == fs::read(built).unwrap(), "{p}");
    }
    // A plain `cargo test` links dynamically; scripts/test.sh (CI) builds through
    // scripts/cargo-static, as `make` does, and there the shim must come out static.
    assert!(
        !has_interp(&at("/usr/sbin/hotplug")) || !ci(),
        "the installed shim is dynamically linked"
    );
    for p in [
        "/usr/share/man/man8/hotplug.8",
        "/usr/share/man/man8/hotplugd.8",
        "/usr/share/man/man8/hotplugctl.8",
        "/usr/share/man/man5/hotplugd.toml.5",
        "/usr/share/man/man7/hotplugd.7",
        "/etc/hotplugd/hotplugd.toml",
        "/etc/hotplugd/devperms.conf",
        "/usr/share/doc/hotplugd/README.md",
        "/usr/share/bash-completion/completions/hotplugctl",
        "/usr/share/zsh/site-functions/_hotplugctl",
        "/usr/share/fish/vendor_completions.d/hotplugctl.fish",
    ] {
        assert_eq!(mode(p), 0o644, "{p}");
    }
    // The completions know the commands and their options.
    for p in [
        "/usr/share/bash-completion/completions/hotplugctl",
        "/usr/share/zsh/site-functions/_hotplugctl",
        "/usr/share/fish/vendor_completions.d/hotplugctl.fish",
    ] {
        let body = fs::read_to_string(at(p)).unwrap();
        // fish names options without their dashes.
        for word in ["settle", "timeout", "runtime-dir", "subsystem-match"] {
            assert!(body.contains(word), "{p} lacks {word}");
        }
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        let out = Command::new("bash")
            .arg("-n")
            .arg(at("/usr/share/bash-completion/completions/hotplugctl"))
            .output()
            .unwrap();
        assert!(out.status.success(), "bash -n: {}", describe(&out));
    }
    for h in ["devperms", "netif", "usb-mount"] {
        assert_eq!(mode(&format!("/usr/libexec/hotplugd/{h}")), 0o755, "{h}");
    }
    // Paths rewritten to PREFIX=/usr in what names them.
    let read = |p: &str| fs::read_to_string(at(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let service = read("/usr/lib/systemd/system/hotplugd.service");
    assert!(
        service.contains("\nExecStart=/usr/sbin/hotplugd\n"),
        "{service}"
    );
    assert!(
        service.contains("helper enable /usr/sbin/hotplug\n"),
        "{service}"
    );
    assert!(read("/usr/share/hotplugd/examples/rules.d/50-net.toml")
        .contains("\"/usr/libexec/hotplugd/netif\""));
    assert!(read("/usr/share/man/man8/hotplugd.8").contains("/usr/sbin/hotplug\n"));
    for p in files_below(dest) {
        if p.starts_with(at("/usr/sbin")) || p.ends_with("README.md") {
            continue;
        }
        let body = fs::read_to_string(&p).unwrap();
        for bad in [
            "/usr/local/sbin/",
            "/usr/local/libexec/",
            "/usr/local/lib/systemd",
        ] {
            assert!(!body.contains(bad), "{} still names {bad}", p.display());
        }
    }
    // Every file of contrib/ is installed somewhere.
    let installed: Vec<PathBuf> = files_below(dest);
    for f in files_below(&root().join("contrib")) {
        let rel = f.strip_prefix(root().join("contrib")).unwrap();
        // Handlers go to PKGLIBEXECDIR and units to the unit directory, by name.
        let by_name = rel.starts_with("handlers") || rel.starts_with("systemd");
        let found = installed
            .iter()
            .any(|i| i.ends_with(rel) || (by_name && i.file_name() == rel.file_name()));
        assert!(found, "contrib/{} is not installed", rel.display());
    }
    // The installed config, with its rules.d, is valid and has every rule.
    let out = Command::new(at("/usr/sbin/hotplugd"))
        .args(["--check-config", "--config"])
        .arg(at("/etc/hotplugd/hotplugd.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).ends_with(&format!(
            "ok, {} rules\n",
            shipped_rule_count() - example_rule_count()
        )),
        "{}",
        describe(&out)
    );

    // An admin's edit survives a second install and the uninstall.
    let edited = at("/etc/hotplugd/rules.d/90-syslog.toml");
    let mut body = fs::read_to_string(&edited).unwrap();
    body.push_str("# edited\n");
    fs::write(&edited, &body).unwrap();
    let out = make(&["install"], dest);
    assert!(
        out.status.success(),
        "make install again: {}",
        describe(&out)
    );
    assert!(text(&out.stdout).contains("keeping"), "{}", describe(&out));
    assert_eq!(fs::read_to_string(&edited).unwrap(), body);

    let out = make(&["uninstall"], dest);
    assert!(out.status.success(), "make uninstall: {}", describe(&out));
    let left: Vec<PathBuf> = files_below(dest);
    assert_eq!(left, [edited], "left after make uninstall");
}
