//! hotplugctl's command line as a contract: help per command, global options on either
//! side of the command, durations, JSON that stays JSON whatever rules are called, bytes
//! that stay bytes, and the exit status that says "no daemon".

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;

fn run(args: &[&OsStr]) -> Output {
    Command::new(CTL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn strs(args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run(&args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The commands listed under `Commands:` in a --help.
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn every_command_has_its_own_help() {
    let top = strs(&["--help"]);
    assert!(top.status.success(), "{}", stderr(&top));
    let cmds = commands(&stdout(&top));
    for c in [
        "status",
        "monitor",
        "settle",
        "reload",
        "recall",
        "pause",
        "resume",
        "log-level",
        "trigger",
        "test",
        "pending",
        "timeline",
        "helper",
    ] {
        assert!(cmds.iter().any(|k| k == c), "{c} not in {cmds:?}");
    }
    let mut seen = 0;
    for cmd in &cmds {
        for flag in ["--help", "-h"] {
            let out = strs(&[cmd, flag]);
            assert_eq!(out.status.code(), Some(0), "{cmd} {flag}: {}", stderr(&out));
            let text = stdout(&out);
            assert!(
                text.contains(&format!("Usage: hotplugctl {cmd}")),
                "{cmd} {flag}: {text}"
            );
            // Global options show in every command's help.
            assert!(text.contains("--runtime-dir"), "{cmd}: {text}");
        }
        for action in commands(&stdout(&strs(&[cmd, "--help"]))) {
            let out = strs(&[cmd, &action, "--help"]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{cmd} {action}: {}",
                stderr(&out)
            );
            assert!(stdout(&out).contains(&format!("Usage: hotplugctl {cmd} {action}")));
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "helper status|enable|disable");
    // Each option says what it is for.
    let settle = stdout(&strs(&["settle", "--help"]));
    assert!(settle.contains("--timeout <DURATION>"), "{settle}");
    assert!(settle.contains("Give up after"), "{settle}");
    // Usage errors are still 2, and the completions are generated from the same parser.
    assert_eq!(strs(&["status", "--bogus"]).status.code(), Some(2));
    // Handler runs are not events: they do not mix with either kind.
    assert_eq!(
        strs(&["monitor", "--handled", "--udev"]).status.code(),
        Some(2)
    );
    assert_eq!(strs(&[]).status.code(), Some(2));
    let bash = strs(&["completions", "bash"]);
    assert!(stdout(&bash).contains("--subsystem-nomatch"));
}

#[test]
fn no_daemon_has_its_own_exit_code() {
    let env = Env::new();
    let sys = env.path("sys");
    fs::create_dir_all(sys.join("devices/a")).unwrap();
    fs::write(sys.join("devices/a/uevent"), "").unwrap();
    let sys = sys.to_str().unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["pending"],
        &["pending", "--json"],
        &["pause"],
        &["resume"],
        &["reload"],
        &["recall", "1"],
        &["log-level", "info"],
        &["settle", "--seq", "1"],
        &["monitor"],
        &["timeline"],
        &["trigger", "--synthesize", "--sysfs", sys],
    ] {
        let out = env.ctl(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("daemon not running at"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A timeout is 1, which is what init scripts tell apart from 3.
    let _d = env.start(&env.config(
        "",
        "[[rule]]\nname = \"slow\"\nmatch = { SUBSYSTEM = \"slow\" }\nrun = [\"/bin/sleep\", \"3\"]\nlast = true\n",
    ));
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/s"),
        ("SUBSYSTEM", "slow"),
        ("SEQNUM", "1"),
    ]);
    let out = env.ctl(&["settle", "--seq", "1", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // 300ms is 0.3 s, not 300.
    assert!(
        stderr(&out).contains("timed out after 0.3 s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn global_options_go_before_or_after_the_command() {
    let env = Env::new();
    let rt = env.runtime();
    let rt = rt.to_str().unwrap();
    // No daemon yet: the runtime dir named on either side is the one asked.
    for args in [
        &["--runtime-dir", rt, "status"][..],
        &["status", "--runtime-dir", rt],
        &["--json", "status", "--runtime-dir", rt],
        &["status", "--runtime-dir", rt, "--json"],
        &["--runtime-dir=/nonexistent", "status", "--runtime-dir", rt],
    ] {
        let out = strs(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(stderr(&out).contains(rt), "{args:?}: {}", stderr(&out));
    }
    let _d = env.start(&env.config("", ""));
    env.event(1, "add", "/devices/a");
    env.wait_handled(1);
    for args in [
        &["--json", "--runtime-dir", rt, "status"][..],
        &["status", "--json", "--runtime-dir", rt],
        &["--runtime-dir", rt, "status", "--json"],
        &["--json", "status", "--runtime-dir", rt],
    ] {
        let out = strs(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let v = json(&stdout(&out));
        assert_eq!(v["received"], 1, "{args:?}: {v}");
    }
    // A command's own option after a global one, and `--opt=value`.
    let out = strs(&["--runtime-dir", rt, "settle", "--timeout=2m", "--seq=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // --json where a command has no JSON is a usage error, not ignored.
    assert_eq!(
        strs(&["pause", "--json", "--runtime-dir", rt])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(json(&env.ctl_ok(&["status", "--json"]))["paused"], false);
}

#[test]
fn durations_are_accepted_wherever_a_timeout_is_taken() {
    let env = Env::new();
    let _d = env.start(&env.config("", ""));
    env.event(1, "add", "/devices/a");
    env.wait_handled(1);
    for t in ["500ms", "2s", "2m", "1h", "1m30s", "5", "1.5"] {
        env.ctl_ok(&["settle", "--seq", "1", "--timeout", t]);
        env.ctl_ok(&["settle", "--seq", "1", "-t", t]);
    }
    let sys = env.path("sys");
    fs::create_dir_all(sys.join("devices/a")).unwrap();
    fs::write(sys.join("devices/a/uevent"), "").unwrap();
    let sys = sys.to_str().unwrap();
    env.ctl_ok(&["trigger", "--dry-run", "--sysfs", sys, "--timeout", "2m"]);
    for bad in ["abc", "", "-1", "5x", "1.5.2", "nan", "inf", "2 m"] {
        for cmd in [
            &["settle", "--timeout", bad][..],
            &["trigger", "--timeout", bad],
        ] {
            let out = env.ctl(cmd);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", stderr(&out));
            if bad != "-1" {
                assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
            }
        }
    }
}

/// Rule names that a text-sniffing JSON writer turns into a number, a boolean or broken
/// JSON.
const HOSTILE: [&str; 6] = ["nan", "007", "yes", "1e5", "say \"hi\" \\ there", "-"];

fn hostile_rules() -> String {
    let mut rules = format!(
        "[[rule]]\nname = \"{}\"\nmatch = {{ SUBSYSTEM = \"slow\" }}\nrun = [\"/bin/sleep\", \"5\"]\n\n",
        HOSTILE[0]
    );
    for name in &HOSTILE[1..] {
        rules.push_str(&format!(
            "[[rule]]\nname = {}\nmatch = {{ ACTION = \"add\" }}\nrun = [\"/bin/true\"]\n\n",
            toml_string(name)
        ));
    }
    rules
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn json_stays_valid_with_hostile_rule_names() {
    let env = Env::new();
    let rules = hostile_rules();
    let config = env.config("", &rules);
    let _d = env.start(&config);
    env.shim(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/slow"),
        ("SUBSYSTEM", "slow"),
        ("SEQNUM", "1"),
    ]);
    env.event(2, "add", "/devices/b");

    // status while "nan" runs: a string, and the numbers are numbers.
    let mut status = Value::Null;
    wait_for("nan running", || {
        status = json(&env.ctl_ok(&["status", "--json"]));
        status["running_rule"] == "nan"
    });
    assert!(status["running_rule"].is_string(), "{status}");
    assert_eq!(status["running_seqnum"], 1, "{status}");
    assert!(status["pid"].is_u64(), "{status}");
    assert!(status["running_for_ms"].is_f64(), "{status}");
    assert_eq!(status["paused"], false, "{status}");
    assert!(status["waiting_for"].is_null(), "{status}");

    // pending: the running one first, then the queued one, typed.
    let pending = json(&env.ctl_ok(&["pending", "--json"]));
    let events = pending["events"].as_array().unwrap();
    assert_eq!(events[0]["state"], "running", "{pending}");
    assert_eq!(events[0]["seqnum"], 1, "{pending}");
    assert_eq!(events[0]["subsystem"], "slow", "{pending}");
    assert_eq!(events[1]["state"], "queued", "{pending}");
    assert_eq!(events[1]["devpath"], "/devices/b", "{pending}");
    assert!(pending["waiting_for"].is_null(), "{pending}");
    // The human form is the one it was.
    let human = env.ctl_ok(&["pending"]);
    assert!(human.starts_with("running 1 add /devices/slow (slow)\n2 add /devices/b ("));

    env.ctl_ok(&["settle", "--seq", "2", "--timeout", "1m"]);
    let timeline = json(&env.ctl_ok(&["timeline", "--json"]));
    let runs: Vec<&Value> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "run")
        .collect();
    for name in HOSTILE {
        assert!(
            runs.iter().any(|r| r["rule"] == name),
            "{name:?} not among {timeline}"
        );
    }
    assert!(runs.iter().all(|r| r["seqnum"].is_u64()), "{timeline}");
    assert!(runs.iter().all(|r| r["start"].is_f64()), "{timeline}");

    // test: the jobs' rule names, in order, all strings.
    let c = config.to_str().unwrap();
    let out = env.ctl_ok(&[
        "test",
        "--json",
        "--config",
        c,
        "ACTION=add",
        "DEVPATH=/devices/x",
        "SUBSYSTEM=slow",
        "SEQNUM=007",
    ]);
    let t = json(&out);
    let names: Vec<&Value> = t["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["rule"])
        .collect();
    let mut want: Vec<Value> = HOSTILE.iter().map(|n| Value::from(*n)).collect();
    want.push("record".into());
    assert_eq!(names, want.iter().collect::<Vec<_>>(), "{t}");
    assert_eq!(t["event"]["seqnum"], 7, "{t}");
    assert_eq!(t["jobs"][0]["argv"][1], "5", "{t}");
    assert_eq!(t["jobs"][0]["timeout_s"], 30.0, "{t}");
}

#[test]
fn values_that_are_not_utf8_pass_through_as_bytes() {
    let env = Env::new();
    let config = env.path("echo.toml");
    fs::write(
        &config,
        "[[rule]]\nname = \"echo\"\nrun = [\"/bin/echo\", \"$FOO\"]\n",
    )
    .unwrap();
    let args: Vec<&OsStr> = vec![
        OsStr::new("test"),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("ACTION=add"),
        OsStr::new("DEVPATH=/devices/x"),
        OsStr::from_bytes(b"FOO=caf\xe9 \xff"),
    ];
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = &out.stdout;
    assert!(
        raw.windows(8).any(|w| w == b"'caf\xe9 \xff'"),
        "{}",
        String::from_utf8_lossy(raw)
    );
    let mut with_json = args.clone();
    with_json.push(OsStr::new("--json"));
    let v = json(&stdout(&run(&with_json)));
    assert_eq!(v["jobs"][0]["argv"][1], "caf\\xe9 \\xff", "{v}");

    // monitor: --env writes the value's bytes, --json the escaped form.
    let _d = env.start(&env.config("", ""));
    let spawn = |args: &[&str]| env.monitor(args);
    let mut raw_mon = spawn(&["--env"]);
    let mut json_mon = spawn(&["--json", "--env"]);
    let mut handled = spawn(&["--handled", "--json"]);
    wait_for("three monitors", || {
        json(&env.ctl_ok(&["status", "--json"]))["monitors"] == 3
    });
    let payload = b"test\0ACTION=add\0DEVPATH=/devices/bytes\0SUBSYSTEM=test\0SEQNUM=1\0X=\xff\\\0";
    env.write_fifo(&hotplugd::message::encode(payload));
    env.wait_handled(1);
    let mut r = BufReader::new(raw_mon.stdout.take().unwrap());
    let mut block = Vec::new();
    loop {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).unwrap();
        if line == b"\n" || line.is_empty() {
            break;
        }
        block.extend_from_slice(&line);
    }
    assert!(
        block.windows(5).any(|w| w == b"X=\xff\\\n"),
        "{}",
        String::from_utf8_lossy(&block)
    );
    let mut line = String::new();
    BufReader::new(json_mon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ev = json(&line);
    assert_eq!(ev["seqnum"], 1, "{ev}");
    assert_eq!(ev["kind"], "queued", "{ev}");
    assert_eq!(ev["devpath"], "/devices/bytes", "{ev}");
    assert!(ev["timestamp"].as_f64().unwrap() > 1.6e9, "{ev}");
    let env_list = ev["env"].as_array().unwrap();
    assert!(
        env_list.contains(&serde_json::json!(["X", "\\xff\\x5c"])),
        "{ev}"
    );
    let mut line = String::new();
    BufReader::new(handled.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run = json(&line);
    assert_eq!(run["rule"], "record", "{run}");
    assert_eq!(run["outcome"], "exit 0", "{run}");
    assert!(run["duration_ms"].is_f64(), "{run}");
    for mut c in [raw_mon, json_mon, handled] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
