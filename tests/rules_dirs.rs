//! Rule files from several directories (`rules_dirs`), merged by file name as systemd and
//! udev do: a later directory overrides, an empty file or a link to /dev/null masks, and
//! the rules run in name order across directories. `hotplugd --check-config` lists it all.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::*;

fn rule(name: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\nrun = [\"/bin/true\", \"{name}\"]\n")
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn later_dirs_override_and_mask_by_name_and_rules_run_in_name_order() {
    let env = Env::new();
    let (lib, etc, run) = (env.path("lib"), env.path("etc"), env.path("run.d"));
    write(&lib.join("10-a.toml"), &rule("vendor-a"));
    write(&lib.join("30-c.toml"), &rule("vendor-c"));
    write(&lib.join("50-net.toml"), &rule("vendor-net"));
    write(&lib.join("60-usb.toml"), &rule("vendor-usb"));
    write(&etc.join("20-b.toml"), &rule("admin-b"));
    write(&etc.join("30-c.toml"), &rule("admin-c"));
    write(&etc.join("50-net.toml"), "");
    write(&run.join("30-c.toml"), &rule("runtime-c"));
    symlink("/dev/null", run.join("60-usb.toml")).unwrap();
    let config = env.path("main.toml");
    // The relative middle entry resolves against the main file's directory.
    write(
        &config,
        &format!(
            "[daemon]\nseqnum_file = \"\"\nrules_dirs = [{:?}, \"etc\", {:?}]\n",
            lib.to_str().unwrap(),
            run.to_str().unwrap()
        ),
    );

    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |d: &Path, f: &str| d.join(f).display().to_string();
    let expected = [
        format!("read {}", p(&lib, "10-a.toml")),
        format!("read {}", p(&etc, "20-b.toml")),
        format!("read {}", p(&run, "30-c.toml")),
        format!(
            "overridden {} (by {})",
            p(&lib, "30-c.toml"),
            p(&run, "30-c.toml")
        ),
        format!(
            "overridden {} (by {})",
            p(&etc, "30-c.toml"),
            p(&run, "30-c.toml")
        ),
        format!("masked {}", p(&etc, "50-net.toml")),
        format!(
            "overridden {} (by {})",
            p(&lib, "50-net.toml"),
            p(&etc, "50-net.toml")
        ),
        format!("masked {}", p(&run, "60-usb.toml")),
        format!(
            "overridden {} (by {})",
            p(&lib, "60-usb.toml"),
            p(&run, "60-usb.toml")
        ),
        format!("{}: ok, 3 rules", config.display()),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);

    // What an event runs: name order across directories, the winners only.
    let out = Command::new(CTL)
        .args(["test", "--config"])
        .arg(&config)
        .args([
            "ACTION=add",
            "DEVPATH=/devices/x",
            "SUBSYSTEM=x",
            "SEQNUM=1",
        ])
        .output()
        .unwrap();
    let plan: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("rule "))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(plan, ["vendor-a", "admin-b", "runtime-c"]);
}

#[test]
fn rules_dir_still_works_and_goes_last() {
    let env = Env::new();
    write(&env.path("old/10-x.toml"), &rule("old-x"));
    write(&env.path("lib/10-x.toml"), &rule("lib-x"));
    write(&env.path("lib/20-y.toml"), &rule("lib-y"));
    let config = env.path("main.toml");
    write(
        &config,
        "[daemon]\nseqnum_file = \"\"\nrules_dir = \"old\"\nrules_dirs = [\"lib\"]\n",
    );
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("read {}", env.path("old/10-x.toml").display())),
        "{stdout}"
    );
    assert!(stdout.ends_with("ok, 2 rules\n"), "{stdout}");
}
