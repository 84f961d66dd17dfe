//! The shipped configuration of `config/`: checked, matched against the events it is for,
//! and run in a real daemon.

use super::*;

// ---- the shipped configuration --------------------------------------------------------

/// The uncommented `[[rule]]` tables of the shipped rule files.
pub(crate) fn shipped_rule_count() -> usize {
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
    assert!(seen >= 3, "{seen} handler references");
}

/// What `hotplugctl test` with the shipped rules prints for `vars` (it must succeed).
fn shipped_test(vars: &[&str]) -> String {
    let out = Command::new(CTL)
        .args(["test", "--config"])
        .arg(root().join("config/hotplugd.toml"))
        .args(vars)
        .output()
        .unwrap();
    assert!(out.status.success(), "{vars:?}: {}", describe(&out));
    text(&out.stdout)
}

/// `hotplugctl test` with the shipped rules: rule name and argv of each match.
pub(crate) fn plan(vars: &[&str]) -> Vec<String> {
    shipped_test(vars)
        .lines()
        .filter_map(|l| l.strip_prefix("rule "))
        .map(|l| l.rsplit_once(" (timeout ").map_or(l, |(a, _)| a).to_owned())
        .collect()
}

/// net-up may wait minutes for DHCP: it runs in the background, so no other device waits.
#[test]
fn the_shipped_net_up_rule_runs_in_the_background() {
    let out = Command::new(CTL)
        .args(["test", "--json", "--config"])
        .arg(root().join("config/hotplugd.toml"))
        .args([
            "ACTION=add",
            "SUBSYSTEM=net",
            "DEVPATH=/devices/x/net/eth0",
            "INTERFACE=eth0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = t["jobs"].as_array().unwrap();
    let background = |rule: &str| {
        jobs.iter()
            .find(|j| j["rule"] == rule)
            .unwrap_or_else(|| panic!("{rule} in {t}"))["background"]
            .clone()
    };
    assert_eq!(background("net-up"), true, "{t}");
    assert_eq!(background("syslog"), false, "{t}");
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
    // A partition on a USB disk: its node's group and mode (see `shipped_node_rules`),
    // then the mount.
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
            "blkid: /usr/local/libexec/hotplugd/blkid-import /dev/sdb1".to_owned(),
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
    // A SATA disk is not mounted; its file system is probed, and an imported UUID makes
    // its by-uuid link.
    assert_eq!(
        plan(&[
            "ACTION=add",
            "SUBSYSTEM=block",
            &format!("DEVPATH={sata}"),
            "DEVNAME=sda1",
        ]),
        [
            "blkid: /usr/local/libexec/hotplugd/blkid-import /dev/sda1".to_owned(),
            syslog("add", sata, "block", ""),
        ]
    );
    let out = Command::new(CTL)
        .args(["test", "--config"])
        .arg(root().join("config/hotplugd.toml"))
        .args([
            "ACTION=add",
            "SUBSYSTEM=block",
            "DEVNAME=sda1",
            "ID_FS_UUID=0f3c-9a21",
        ])
        .arg(format!("DEVPATH={sata}"))
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains(" links disk/by-uuid/0f3c-9a21\n"),
        "{}",
        describe(&out)
    );
    // An input event node is classified; the input device above it is not.
    let input = "/devices/platform/i8042/serio0/input/input3";
    assert_eq!(
        plan(&[
            "ACTION=add",
            "SUBSYSTEM=input",
            &format!("DEVPATH={input}/event3"),
            "DEVNAME=input/event3",
        ]),
        [
            "input-id: /usr/local/libexec/hotplugd/input-import".to_owned(),
            syslog("add", &format!("{input}/event3"), "input", ""),
        ]
    );
    assert_eq!(
        plan(&["ACTION=add", "SUBSYSTEM=input", &format!("DEVPATH={input}")]),
        [syslog("add", input, "input", "")]
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

/// The `node:` line of `hotplugctl test` with the shipped rules, if any.
fn node(vars: &[&str]) -> Option<String> {
    shipped_test(vars)
        .lines()
        .find_map(|l| l.strip_prefix("node: "))
        .map(str::to_owned)
}

fn gid(name: &str) -> u32 {
    let groups = fs::read_to_string("/etc/group").unwrap();
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no group {name}"))
}

#[test]
fn shipped_node_rules_replace_devperms() {
    let add = |sub: &str, name: &str, extra: &[&str]| {
        let mut v = vec![
            "ACTION=add".to_owned(),
            format!("SUBSYSTEM={sub}"),
            format!("DEVPATH=/devices/x/{sub}/{name}"),
            format!("DEVNAME={name}"),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        node(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let g = |n: &str| gid(n);
    assert_eq!(
        add("tty", "tty1", &[]),
        Some(format!("group {} mode 0620", g("tty")))
    );
    for t in ["ttyS0", "ttyUSB1", "ttyACM0"] {
        assert_eq!(
            add("tty", t, &[]),
            Some(format!("group {} mode 0660", g("dialout")))
        );
    }
    assert_eq!(
        add("block", "sda", &["DEVTYPE=disk", "DISKSEQ=7"]),
        Some(format!(
            "group {} mode 0660 links disk/by-diskseq/7",
            g("disk")
        ))
    );
    assert_eq!(
        add("block", "nvme0n1p2", &["DEVTYPE=partition", "PARTN=2"]),
        Some(format!("group {} mode 0660", g("disk")))
    );
    assert_eq!(
        add("video4linux", "video0", &[]),
        Some(format!("group {} mode 0660", g("video")))
    );
    assert_eq!(
        add("sound", "snd/pcmC0D0p", &[]),
        Some(format!("group {} mode 0660", g("audio")))
    );
    // Nodes nothing is said about, and removes, get no node line.
    assert_eq!(add("mem", "null", &[]), None);
    assert_eq!(
        node(&[
            "ACTION=remove",
            "SUBSYSTEM=tty",
            "DEVPATH=/devices/x/tty/ttyS0",
            "DEVNAME=ttyS0"
        ]),
        None
    );
}

// ---- the shipped rules in a real daemon -----------------------------------------------

#[test]
fn shipped_rules_run_their_handlers_in_a_real_daemon() {
    let env = Env::new();
    let f = Fakes::new();
    f.fake("modprobe", "exit 0");
    f.fake("logger", "exit 0");
    f.fake("ip", "exit 0");
    // No file system on the USB partition: blkid-import imports nothing.
    f.fake("blkid", "exit 2");
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
    // The node rules act on a private dev_dir, never the host's /dev.
    fs::create_dir(env.path("dev")).unwrap();
    let config = env.bare_config(
        &format!(
            "gap_timeout = \"20s\"\nrules_dir = \"rules.d\"\ndev_dir = \"{}\"",
            env.path("dev").display()
        ),
        "",
    );
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
        // No /dev/sdz9 here: the node rules and usb-mount find no node and do nothing.
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
    // net-up runs in the background: settle does not wait for it.
    wait_for("net-up to end", || {
        env.ctl_ok(&["status"])
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["background", "ended:", "1"])
    });

    let logger = |a: &str, d: &str, s: &str, n: u32| {
        format!("logger [-t] [hotplugd] [-p] [daemon.info] [--] [{a} {d} ({s}) SEQNUM={n}]")
    };
    let mut ran = f.take();
    let ip = "ip [link] [set] [dev] [eth0] [up]";
    let n = ran.len();
    ran.retain(|r| r != ip);
    assert_eq!(
        n - ran.len(),
        1,
        "net-up ran once in the background: {ran:?}"
    );
    assert_eq!(
        ran,
        [
            format!("modprobe [-b] [-q] [{alias}]"),
            logger("add", pci, "pci", 1),
            logger("add", eth0, "net", 2),
            logger("remove", eth1, "net", 3),
            "blkid [-o] [udev] [-p] [/dev/sdz9]".to_owned(),
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

/// The blkid example with its handler in a real daemon: a fake blkid's UUID is imported
/// and becomes a by-uuid link in a private dev_dir, which goes with the device.
#[test]
fn shipped_blkid_rules_link_a_disk_by_its_uuid() {
    let env = Env::new();
    let f = Fakes::new();
    f.fake(
        "blkid",
        "printf 'ID_FS_UUID=0f3c-9a21\\nID_FS_UUID_ENC=0f3c-9a21\\nID_FS_TYPE=ext4\\n'",
    );
    let seen = f.path("seen");
    f.fake(
        "seen",
        &format!("echo \"$ID_FS_TYPE $1\" >> '{}'", seen.display()),
    );
    let rules = fs::read_to_string(root().join("config/rules.d/40-blkid.toml"))
        .unwrap()
        .replace(
            "/usr/local/libexec/hotplugd/",
            &format!("{}/", root().join("contrib/handlers").display()),
        );
    // A later rule of the admin's sees the imported keys too.
    let rules = format!(
        "{rules}\n[[rule]]\nname = \"seen\"\nmatch = {{ ID_FS_TYPE = \"ext4\" }}\nrun = [\"seen\", \"$ID_FS_UUID\"]\n"
    );
    let dev = env.path("dev");
    fs::create_dir(&dev).unwrap();
    let config = env.config(
        &format!("dev_dir = \"{}\"\ndevice_db = true", dev.display()),
        &rules,
    );
    let daemon = env.start(&config);
    let path = f.bin();
    let devpath = "/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sdz/sdz1";
    let fire = |seq: &str, action: &str| {
        assert!(env
            .shim(&[
                ("ACTION", action),
                ("DEVPATH", devpath),
                ("SUBSYSTEM", "block"),
                ("DEVNAME", "sdz1"),
                ("SEQNUM", seq),
                ("PATH", path.to_str().unwrap()),
            ])
            .success());
    };
    fire("1", "add");
    env.wait_handled(1);
    assert_eq!(
        fs::read_link(dev.join("disk/by-uuid/0f3c-9a21"))
            .map(|t| t.to_string_lossy().into_owned())
            .ok()
            .as_deref(),
        Some("../../sdz1"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(fs::read_to_string(&seen).unwrap(), "ext4 0f3c-9a21\n");
    assert_eq!(f.take()[0], "blkid [-o] [udev] [-p] [/dev/sdz1]");
    fire("2", "remove");
    env.wait_handled(2);
    wait_for("the link to go", || {
        fs::symlink_metadata(dev.join("disk/by-uuid/0f3c-9a21")).is_err()
    });
    // The remove probes nothing.
    assert_eq!(f.take(), Vec::<String>::new());
    assert!(daemon.stop().success());
}
