//! Match keys read from sysfs (`ATTR{..}`, `ATTRS{..}`, `DRIVER`, `DRIVERS`, `KERNEL`,
//! `KERNELS`), against this machine's real /sys: a device with a parent is picked at run
//! time, an event for its DEVPATH goes through the shim and the daemon, and the rules that
//! ran are the ones whose keys hold on the real tree. `hotplugctl test` reads the same.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A device of the real /sys, with what the rules below look for.
#[derive(Debug)]
struct Real {
    devpath: String,
    kernel: String,
    subsystem: String,
    /// An attribute of the device itself, and its value as sysfs gives it.
    own: (String, String),
    /// A parent device (with a `uevent` file) and an attribute of it the device lacks.
    parent_kernel: String,
    parent: (String, String),
    /// The device's own `driver` link, if it has one.
    driver: Option<String>,
    /// The first `driver` link from the device up.
    drivers: String,
}

/// Attributes whose values do not change while a test runs.
const STABLE: &[&str] = &[
    "dev",
    "modalias",
    "vendor",
    "device",
    "class",
    "revision",
    "subsystem_vendor",
    "subsystem_device",
    "idVendor",
    "idProduct",
    "type",
    "id",
];

fn is_device(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join("uevent")).is_ok_and(|m| m.is_file())
}

fn link_name(dir: &Path, link: &str) -> Option<String> {
    let target = fs::read_link(dir.join(link)).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// A stable attribute of `dir` (a regular file, not a symlink), trimmed as udev does.
fn attr(dir: &Path, name: &str) -> Option<String> {
    let p = dir.join(name);
    if !fs::symlink_metadata(&p).ok()?.is_file() {
        return None;
    }
    let v = fs::read_to_string(p).ok()?;
    let v = v.trim_end().to_owned();
    (!v.is_empty() && v.len() < 4096 && !v.contains('\n')).then_some(v)
}

fn real_device() -> Option<Real> {
    let mut stack = vec![PathBuf::from("/sys/devices")];
    let mut candidates = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        if is_device(&dir) && dir.join("driver").is_symlink() {
            candidates.push(dir);
        }
    }
    // Deepest first: the longest parent chain.
    candidates.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    candidates.into_iter().find_map(|dir| describe(&dir))
}

fn describe(dir: &Path) -> Option<Real> {
    let own = STABLE
        .iter()
        .find_map(|n| Some((n.to_string(), attr(dir, n)?)))?;
    let top = Path::new("/sys/devices");
    let mut parents = dir.ancestors().skip(1).take_while(|p| *p != top);
    let (parent_dir, parent) = parents.by_ref().filter(|p| is_device(p)).find_map(|p| {
        STABLE
            .iter()
            .filter(|n| !dir.join(n).exists())
            .find_map(|n| Some((p.to_owned(), (n.to_string(), attr(p, n)?))))
    })?;
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    Some(Real {
        devpath: format!("/{}", dir.strip_prefix("/sys").ok()?.to_str()?),
        kernel: name(dir),
        subsystem: link_name(dir, "subsystem").unwrap_or_else(|| "test".into()),
        own,
        parent_kernel: name(&parent_dir),
        parent,
        driver: link_name(dir, "driver"),
        drivers: dir.ancestors().find_map(|p| link_name(p, "driver"))?,
    })
}

/// A glob that matches exactly `s`.
fn literal(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "*?[]\\!".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// TOML basic string.
fn q(s: &str) -> String {
    format!("{s:?}")
}

/// `(name, match table body, should run)`.
fn cases(d: &Real) -> Vec<(&'static str, String, bool)> {
    let (oa, ov) = (&d.own.0, literal(&d.own.1));
    let (pa, pv) = (&d.parent.0, literal(&d.parent.1));
    let own = format!("\"ATTR{{{oa}}}\"");
    let parents = format!("\"ATTRS{{{pa}}}\"");
    let mut v = vec![
        (
            "own",
            format!("SUBSYSTEM = {}, {own} = {}", q(&d.subsystem), q(&ov)),
            true,
        ),
        (
            "own-glob",
            format!("{own} = [\"no\", {}]", q(&format!("{}*", &ov[..1]))),
            true,
        ),
        (
            "own-negated",
            format!("{own} = {}", q(&format!("!{ov}"))),
            false,
        ),
        (
            "own-other-event",
            format!("SUBSYSTEM = \"no\", {own} = \"*\""),
            false,
        ),
        ("parent", format!("{parents} = {}", q(&pv)), true),
        (
            "parent-wrong",
            format!("{parents} = {}", q(&format!("{pv}-no"))),
            false,
        ),
        (
            "parent-attr-not-own",
            format!("\"ATTR{{{pa}}}\" = \"*\""),
            false,
        ),
        (
            "kernel",
            format!(
                "KERNEL = {}, KERNELS = {}, {parents} = {}",
                q(&literal(&d.kernel)),
                q(&literal(&d.parent_kernel)),
                q(&pv)
            ),
            true,
        ),
        (
            "drivers",
            format!("DRIVERS = {}", q(&literal(&d.drivers))),
            true,
        ),
        (
            "drivers-wrong",
            "DRIVERS = \"no-such-driver\"".into(),
            false,
        ),
        (
            "missing",
            "\"ATTR{no_such_attribute}\" = \"*\"".into(),
            false,
        ),
        (
            "missing-negated",
            "\"ATTRS{no_such_attribute}\" = \"!x\"".into(),
            true,
        ),
    ];
    if let Some(driver) = &d.driver {
        v.push((
            "driver",
            format!("DRIVER = {}, {parents} = {}", q(&literal(driver)), q(&pv)),
            true,
        ));
    }
    v
}

fn rules(d: &Real, mark: &Path) -> String {
    cases(d)
        .iter()
        .map(|(name, m, _)| {
            format!(
                "[[rule]]\nname = \"{name}\"\nmatch = {{ {m} }}\nrun = [{}, \"{name}\"]\n\n",
                q(mark.to_str().unwrap())
            )
        })
        .collect()
}

#[test]
fn rules_match_attributes_and_parents_of_a_real_device() {
    let Some(dev) = real_device() else {
        skip_or_fail("no device in /sys/devices with a driver and a parent with attributes");
        return;
    };
    let env = Env::new();
    let mark = env.script("mark.sh", "#!/bin/sh\necho \"$1\" >> \"$0.log\"\n");
    let config = env.config("", &rules(&dev, &mark));
    let expected: Vec<&str> = cases(&dev).iter().filter(|c| c.2).map(|c| c.0).collect();

    let _daemon = env.start(&config);
    let status = env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", &dev.devpath),
        ("SUBSYSTEM", &dev.subsystem),
        ("SEQNUM", "1"),
    ]);
    assert!(status.success());
    env.wait_handled(1);
    let log = fs::read_to_string(env.path("mark.sh.log")).unwrap_or_default();
    assert_eq!(log.lines().collect::<Vec<_>>(), expected, "{dev:#?}");

    // `hotplugctl test` reads the same sysfs, without a daemon.
    let out = env.ctl_ok(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        "ACTION=add",
        &format!("DEVPATH={}", dev.devpath),
        &format!("SUBSYSTEM={}", dev.subsystem),
    ]);
    let ran: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("rule ")?.split(':').next())
        .filter(|r| *r != "record")
        .collect();
    assert_eq!(ran, expected, "{out}");
}

#[test]
fn hotplugctl_test_reads_sysfs_dir() {
    // A tree of its own: the config's sysfs_dir, not /sys, is what `test` reads.
    let env = Env::new();
    let dev = env.path("sys/devices/platform/serial8250/tty/ttyS9");
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("uevent"), "").unwrap();
    fs::write(dev.join("../../uevent"), "").unwrap();
    fs::write(dev.join("../../driver_override"), "(null)\n").unwrap();
    fs::write(dev.join("dev"), "4:73\n").unwrap();
    let config = env.bare_config(
        &format!("sysfs_dir = {}", q(env.path("sys").to_str().unwrap())),
        "[[rule]]\nname = \"serial\"\n\
         match = { KERNEL = \"ttyS*\", \"ATTR{dev}\" = \"4:*\", \"ATTRS{driver_override}\" = \"(null)\" }\n\
         run = [\"/bin/true\"]\n",
    );
    let test = |devpath: &str| {
        env.ctl_ok(&[
            "test",
            "--config",
            config.to_str().unwrap(),
            "ACTION=add",
            &format!("DEVPATH={devpath}"),
        ])
    };
    let out = test("/devices/platform/serial8250/tty/ttyS9");
    assert!(out.contains("rule serial: /bin/true"), "{out}");
    let out = test("/devices/platform/serial8250/tty/ttyS8");
    assert!(out.contains("no rule matches"), "{out}");
}

#[test]
fn check_config_names_malformed_keys() {
    let env = Env::new();
    let config = env.bare_config(
        "",
        "[[rule]]\nname = \"a\"\nrun = [\"/bin/true\"]\n\
         match = { \"ATTRS{idVendor\" = \"1\", \"ATTR{../../etc/shadow}\" = \"*\", \"ATTR\" = \"x\" }\n",
    );
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = config.display();
    let line = 9;
    for (col, what) in [
        (11, "unclosed `{`"),
        (35, "`..` in the attribute name"),
        (67, "needs an attribute name"),
    ] {
        let at = format!("{file}:{line}:{col}: ");
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.contains(what)),
            "no {at}...{what} in:\n{err}"
        );
    }
}
