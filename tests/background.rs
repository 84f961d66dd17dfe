//! Background handlers (`background = true`): started, not waited for, and still
//! supervised: their exits logged and counted, their timeouts enforced on the group, shown
//! in `status`, `pending` and the timeline, bounded by `max_background`, and seen to their
//! end at a stop. Every wait is on an effect (a file, a log line, a status field), and each
//! handler waits on a gate file the test creates, never on a timer.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A handler that appends `start SEQNUM` to `order`, waits (at most 60 s) for
/// `gate-SEQNUM`, appends `end SEQNUM` and exits with `code`.
fn gated(env: &Env, name: &str, code: i32) -> PathBuf {
    let dir = env.path("");
    env.script(
        name,
        &format!(
            "#!/bin/sh\necho \"start $SEQNUM\" >> {d}/order\n\
             i=0; while [ ! -e {d}/gate-$SEQNUM ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n\
             echo \"end $SEQNUM\" >> {d}/order\nexit {code}\n",
            d = dir.display()
        ),
    )
}

/// A foreground handler that appends `NAME SEQNUM` to `order`.
fn marker(env: &Env, name: &str) -> PathBuf {
    env.script(
        name,
        &format!(
            "#!/bin/sh\necho \"{name} $SEQNUM\" >> {}/order\n",
            env.path("").display()
        ),
    )
}

fn order(env: &Env) -> Vec<String> {
    fs::read_to_string(env.path("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_order(env: &Env, line: &str) {
    wait_for(&format!("{line:?} in the order file"), || {
        order(env).iter().any(|l| l == line)
    });
}

fn open_gate(env: &Env, seq: u64) {
    fs::write(env.path(&format!("gate-{seq}")), "").unwrap();
}

fn json(env: &Env, args: &[&str]) -> Value {
    let out = env.ctl_ok(args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn status(env: &Env) -> Value {
    json(env, &["status", "--json"])
}

fn rule(name: &str, subsystem_devpath: &str, run: &Path, extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nmatch = {{ DEVPATH = \"{subsystem_devpath}\" }}\n\
         run = [\"{}\"]\n{extra}\n",
        run.display()
    )
}

#[test]
fn a_background_handler_does_not_hold_up_the_queue_and_its_exit_is_counted() {
    let env = Env::new();
    let slow = gated(&env, "slow.sh", 3);
    let after = marker(&env, "after");
    let next = marker(&env, "next");
    let rules = [
        rule("slow", "/devices/slow", &slow, "background = true"),
        rule("after", "/devices/slow", &after, ""),
        rule("next", "/devices/next", &next, ""),
    ]
    .join("\n");
    let d = env.start(&env.bare_config("", &rules));
    env.event(1, "add", "/devices/slow");
    env.event(2, "add", "/devices/next");

    // The rest of event 1 and all of event 2 ran while `slow` waits at its gate.
    wait_order(&env, "next 2");
    wait_order(&env, "start 1");
    let lines = order(&env);
    let pos = |l: &str| lines.iter().position(|x| x == l).unwrap();
    assert!(pos("after 1") < pos("next 2"), "{lines:?}");
    assert!(!lines.contains(&"end 1".to_owned()), "{lines:?}");

    let s = status(&env);
    assert_eq!(s["background"], 1, "{s}");
    assert_eq!(s["background_ended"], 0, "{s}");
    assert_eq!(s["handled"], 2, "both events are done for the queue: {s}");
    let p = json(&env, &["pending", "--json"]);
    assert_eq!(p["events"], Value::Array(vec![]), "{p}");
    let bg = &p["background"][0];
    assert_eq!(bg["rule"], "slow", "{p}");
    assert_eq!(bg["event"]["seqnum"], 1, "{p}");
    assert_eq!(bg["event"]["state"], "background", "{p}");
    let human = env.ctl_ok(&["pending"]);
    assert!(
        human.starts_with("background 1 add /devices/slow (test): rule slow, pid "),
        "{human}"
    );
    // `settle` does not wait for it: the queue is drained.
    env.ctl_ok(&["settle", "--timeout", "20"]);

    open_gate(&env, 1);
    d.wait_log("1 add /devices/slow (test): rule slow (background): exit 3 in ");
    wait_for("background_ended 1", || {
        status(&env)["background_ended"] == 1
    });
    let s = status(&env);
    assert_eq!(s["background"], 0, "{s}");
    assert_eq!(s["failed"], 1, "{s}");
    assert_eq!(
        json(&env, &["pending", "--json"])["background"],
        Value::Array(vec![])
    );
    let timeline = env.ctl_ok(&["timeline"]);
    assert!(timeline.contains("slow (background): exit 3"), "{timeline}");
    assert_eq!(order(&env).last().map(String::as_str), Some("end 1"));
}

#[test]
fn a_background_handler_past_its_timeout_has_its_group_terminated() {
    let env = Env::new();
    // The handler's shell waits for a grandchild in its process group, which only the
    // group's SIGTERM (or SIGKILL after the grace) ends before its ten minutes are up.
    let hung = env.script(
        "hung.sh",
        &format!(
            "#!/bin/sh\nsleep 600 &\necho $! > {}/grandchild\nwait\n",
            env.path("").display()
        ),
    );
    let rules = rule(
        "hung",
        "/devices/hung",
        &hung,
        "background = true\ntimeout = \"300ms\"",
    );
    let d = env.start(&env.bare_config("", &rules));
    env.event(1, "add", "/devices/hung");
    d.wait_log("rule hung (background): timed out, killed by SIGTERM");
    wait_for("the grandchild's pid", || env.path("grandchild").exists());
    let pid: u32 = fs::read_to_string(env.path("grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the grandchild to die with its group", || !pid_alive(pid));
    wait_for("timed_out 1", || status(&env)["timed_out"] == 1);
    assert_eq!(status(&env)["background_ended"], 1);
}

#[test]
fn past_max_background_the_next_one_waits_and_the_queue_with_it() {
    let env = Env::new();
    let bg = gated(&env, "bg.sh", 0);
    let rules = rule("bg", "/devices/*", &bg, "background = true");
    let d = env.start(&env.bare_config("max_background = 1", &rules));
    env.event(1, "add", "/devices/a");
    env.event(2, "add", "/devices/b");
    wait_order(&env, "start 1");
    d.wait_log("2 add /devices/b (test): rule bg: 1 background handlers run (max_background)");
    // The runner holds event 2 until a slot is free.
    let s = status(&env);
    assert_eq!(s["background"], 1, "{s}");
    assert_eq!(s["running_rule"], "bg", "{s}");
    assert_eq!(s["running_seqnum"], 2, "{s}");
    assert_eq!(order(&env), ["start 1"]);

    open_gate(&env, 1);
    wait_order(&env, "start 2");
    assert_eq!(order(&env)[..3], ["start 1", "end 1", "start 2"]);
    open_gate(&env, 2);
    wait_for("both ended", || status(&env)["background_ended"] == 2);
}

#[test]
fn max_background_zero_runs_background_rules_in_the_foreground() {
    let env = Env::new();
    let bg = gated(&env, "bg.sh", 0);
    let next = marker(&env, "next");
    let rules = [
        rule("bg", "/devices/a", &bg, "background = true"),
        rule("next", "/devices/b", &next, ""),
    ]
    .join("\n");
    let d = env.start(&env.bare_config("max_background = 0", &rules));
    env.event(1, "add", "/devices/a");
    env.event(2, "add", "/devices/b");
    wait_order(&env, "start 1");
    open_gate(&env, 1);
    wait_order(&env, "next 2");
    assert_eq!(order(&env), ["start 1", "end 1", "next 2"]);
    assert!(!d.log_text().contains("(background)"), "{}", d.log_text());
}

#[test]
fn a_stop_waits_for_background_handlers() {
    let env = Env::new();
    let bg = gated(&env, "bg.sh", 0);
    let rules = rule("bg", "/devices/a", &bg, "background = true");
    let mut d = env.start(&env.bare_config("", &rules));
    env.event(1, "add", "/devices/a");
    wait_order(&env, "start 1");
    d.signal(libc::SIGTERM);
    d.wait_log("waiting for 1 background handlers to end: 1 add /devices/a (test): rule bg, pid ");
    assert!(d.alive());
    open_gate(&env, 1);
    assert!(d.terminate().success());
    let log = d.log_text();
    assert!(log.contains("rule bg (background): exit 0"), "{log}");
    assert_eq!(order(&env), ["start 1", "end 1"]);
}
