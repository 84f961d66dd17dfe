//! `make install` / `make uninstall` into a temporary DESTDIR.

use super::*;

/// Whether an ELF file asks for a program interpreter (dynamic loader).
pub(crate) fn has_interp(path: &Path) -> bool {
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

pub(crate) fn make(args: &[&str], destdir: &Path) -> Output {
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
pub(crate) const EXAMPLE_RULES: [&str; 4] = [
    "40-blkid.toml",
    "41-input.toml",
    "50-net.toml",
    "60-usb-disk.toml",
];

pub(crate) fn example_rule_count() -> usize {
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

/// `make install` into a new DESTDIR, which is returned; `None` (skipped, or failed under
/// `CI=true`) without make.
fn installed() -> Option<tempfile::TempDir> {
    if Command::new("make").arg("--version").output().is_err() {
        skip_or_fail("make install: make is missing (Debian package make)");
        return None;
    }
    let tmp = tempfile::Builder::new()
        .prefix("hotplugd-destdir")
        .tempdir()
        .unwrap();
    let out = make(&["install"], tmp.path());
    assert!(out.status.success(), "make install: {}", describe(&out));
    Some(tmp)
}

#[test]
fn make_install_enables_no_rule_that_acts_on_hardware() {
    let Some(tmp) = installed() else {
        return;
    };
    let dest = tmp.path();
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
    let Some(tmp) = installed() else {
        return;
    };
    let dest = tmp.path();
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
    for h in [
        "blkid-import",
        "devperms",
        "input-import",
        "netif",
        "usb-mount",
    ] {
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
