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

/// µs per event for `n` plans of `ev` (median of 7 rounds).
/// Attribute files stay open between events (opening one is the dearest step of a
/// match), but no value does: a counter read for one event is read again for the next,
/// and both times equal what reading the file says. The loopback's `rx_packets` under its
/// `statistics` directory (taken as the event's own directory) grows by one datagram.
#[test]
fn an_attribute_is_read_afresh_for_each_event() {
    let dir = Path::new("/sys/devices/virtual/net/lo/statistics");
    let file = dir.join("rx_packets");
    if !file.is_file() {
        skip_or_fail("no /sys/devices/virtual/net/lo/statistics/rx_packets");
        return;
    }
    let ev = hotplugd::event::Event::from_vars(
        b"net",
        [
            (&b"ACTION"[..], &b"change"[..]),
            (b"DEVPATH", b"/devices/virtual/net/lo/statistics"),
            (b"SEQNUM", b"1"),
        ],
    )
    .unwrap();
    let read = || fs::read_to_string(&file).unwrap().trim().to_owned();
    // Whether a rule for the value the file holds runs, where the file held it from
    // before the plan to after (other traffic on lo could change it meanwhile).
    let runs_for_the_current_value = || {
        for _ in 0..50 {
            let before = read();
            let m = format!("\"ATTR{{rx_packets}}\" = {}", q(&before));
            let ran = !bench_rules(Path::new("/sys"), &m).plan(&ev).is_empty();
            if read() == before {
                return (before, ran);
            }
        }
        panic!("{} never held still", file.display());
    };
    let (first, ran) = runs_for_the_current_value();
    assert!(ran, "rx_packets = {first} did not match");
    let kept = fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == file));
    let relative = fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| {
        let mut v = r.split(['.', '-']).map_while(|p| p.parse::<u32>().ok());
        (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (5, 6)
    });
    assert!(kept || !relative, "the attribute's file was not kept open");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"x", socket.local_addr().unwrap()).unwrap();
    let (second, ran) = runs_for_the_current_value();
    if first == second {
        skip_or_fail("a datagram on lo did not count (is /sys another network namespace's?)");
        return;
    }
    assert!(
        ran,
        "rx_packets = {second} did not match: an old value was used"
    );
}

/// Microseconds per event, the medians of 7 rounds: wall clock, and the thread's CPU
/// time, which other work on a shared machine inflates far less.
fn per_event(rules: &hotplugd::rules::RuleSet, ev: &hotplugd::event::Event, n: u32) -> (f64, f64) {
    let cpu = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to fill.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) },
            0
        );
        t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
    };
    let (mut wall, mut used): (Vec<f64>, Vec<f64>) = (0..7)
        .map(|_| {
            let (t, c) = (std::time::Instant::now(), cpu());
            for _ in 0..n {
                std::hint::black_box(rules.plan(std::hint::black_box(ev)));
            }
            (
                t.elapsed().as_secs_f64() * 1e6 / f64::from(n),
                (cpu() - c) / f64::from(n),
            )
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    used.sort_by(f64::total_cmp);
    (wall[3], used[3])
}

fn bench_rules(sysfs: &Path, m: &str) -> hotplugd::rules::RuleSet {
    let text = format!(
        "[daemon]\nsysfs_dir = {}\n[[rule]]\nname = \"r\"\nmatch = {{ {m} }}\nrun = [\"/bin/true\"]\n",
        q(sysfs.to_str().unwrap())
    );
    hotplugd::config::Config::parse(&text, Path::new("bench.toml"))
        .unwrap()
        .rules
}

/// A benchmark, not a check (ignored by default; BENCHMARKS.md has the numbers): what
/// choosing an event's handlers costs when a rule looks up `ATTRS` a 4-deep parent
/// chain, on a tree of its own and on this machine's /sys, next to rules that read no
/// sysfs. Each plan starts from nothing: the cache lives for one event only.
///
/// `scripts/cargo-static test --release --test attrs attrs_bench -- --ignored --nocapture`
#[test]
#[ignore]
fn attrs_bench() {
    let n: u32 = std::env::var("HOTPLUGD_ATTRS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ev = |devpath: &str, sub: &str| {
        let vars = [
            (&b"ACTION"[..], &b"add"[..]),
            (b"DEVPATH", devpath.as_bytes()),
            (b"SUBSYSTEM", sub.as_bytes()),
            (b"SEQNUM", b"1"),
        ];
        hotplugd::event::Event::from_vars(sub.as_bytes(), vars).unwrap()
    };
    println!("| matching (N = {n} per round, median of 7) | µs/event | CPU µs/event |");
    println!("| --- | --- | --- |");
    let row = |what: &str, (us, cpu): (f64, f64)| println!("| {what} | {us:.2} | {cpu:.2} |");

    // The device and four parents above it, each a device (`uevent`), the vendor and
    // product on the topmost, as a USB tty's are.
    let t = tempfile::tempdir().unwrap();
    let chain = "devices/pci0000:00/usb1/1-1/1-1:1.0/ttyUSB0";
    let mut dir = t.path().to_owned();
    for part in chain.split('/') {
        dir.push(part);
        fs::create_dir_all(&dir).unwrap();
        if part != "devices" {
            fs::write(dir.join("uevent"), "").unwrap();
        }
    }
    let top = t.path().join("devices/pci0000:00");
    fs::write(top.join("idVendor"), "0403\n").unwrap();
    fs::write(top.join("idProduct"), "6001\n").unwrap();
    let fake = ev(&format!("/{chain}"), "tty");
    let tree = t.path();
    for (what, m) in [
        (
            "fake tree: no sysfs keys",
            r#"SUBSYSTEM = "tty", KERNEL = "ttyUSB*""#,
        ),
        (
            "fake tree: event keys miss, ATTRS never read",
            r#"SUBSYSTEM = "net", "ATTRS{idVendor}" = "0403""#,
        ),
        (
            "fake tree: ATTRS{idVendor} + ATTRS{idProduct} match 4 parents up",
            r#"SUBSYSTEM = "tty", "ATTRS{idVendor}" = "0403", "ATTRS{idProduct}" = "6001""#,
        ),
        (
            "fake tree: ATTRS{idVendor} misses on all 5 devices",
            r#"SUBSYSTEM = "tty", "ATTRS{idVendor}" = "ffff""#,
        ),
    ] {
        row(what, per_event(&bench_rules(tree, m), &fake, n));
    }

    // This machine: the device with the most parent devices, an attribute of the topmost
    // one that none below has, and rules that match it there or miss on every level.
    let top = Path::new("/sys/devices");
    let mut deepest: Option<(usize, PathBuf)> = None;
    let mut stack = vec![top.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        if is_device(&d) {
            let parents = d
                .ancestors()
                .skip(1)
                .take_while(|p| *p != top)
                .filter(|p| is_device(p))
                .count();
            if deepest.as_ref().is_none_or(|(n, _)| parents > *n) {
                deepest = Some((parents, d));
            }
        }
    }
    let Some((parents, d)) = deepest else {
        skip_or_fail("no device in /sys/devices");
        return;
    };
    let devpath = format!("/{}", d.strip_prefix("/sys").unwrap().display());
    let real = ev(&devpath, "test");
    let sys = Path::new("/sys");
    let below: Vec<&Path> = d.ancestors().take_while(|p| *p != top).collect();
    // The topmost parent device with an attribute that no directory below it has.
    let unique = below[1..]
        .iter()
        .rev()
        .filter(|p| is_device(p))
        .find_map(|&p| {
            fs::read_dir(p).ok()?.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let value = attr(p, &name)?;
                let lower = below.iter().take_while(|q| **q != p);
                let elsewhere = lower.into_iter().any(|q| q.join(&name).exists());
                (!elsewhere && !name.contains(['{', '}'])).then_some((p, name, value))
            })
        });
    if let Some((parent, name, value)) = unique {
        row(
            &format!(
                "/sys {devpath} ({parents} parents): ATTRS{{{name}}} matches on {}",
                parent.file_name().unwrap().to_string_lossy()
            ),
            per_event(
                &bench_rules(
                    sys,
                    &format!("\"ATTRS{{{name}}}\" = {}", q(&literal(&value))),
                ),
                &real,
                n,
            ),
        );
    }
    row(
        &format!("/sys {devpath}: ATTRS{{no_such_attribute}} misses on all"),
        per_event(
            &bench_rules(sys, r#""ATTRS{no_such_attribute}" = "x""#),
            &real,
            n,
        ),
    );
    row(
        &format!("/sys {devpath}: no sysfs keys"),
        per_event(&bench_rules(sys, r#"KERNEL = "*""#), &real, n),
    );
}
