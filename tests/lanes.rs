//! Lanes (`[daemon] workers = N`): handlers of unrelated devices run at once, while an
//! event still waits for every earlier event of its own device, its ancestors and its
//! descendants; exclusive events run alone; `pending`, `status` and the timeline show the
//! lanes. Handlers append `start`/`end` lines to one file with O_APPEND, so the file's
//! line order is the real order of starts and ends: every ordering check reads that
//! order, never the clock.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use common::*;
use serde_json::Value;

/// A handler that appends `start SEQNUM DEVPATH NANOS` and, after `pause` seconds (or,
/// when `gated`, once `gate-SEQNUM` exists), `end SEQNUM DEVPATH NANOS` to `lanes.log`.
fn handler(env: &Env, pause: &str, gated: bool) -> PathBuf {
    let d = env.path("");
    let wait = if gated {
        format!(
            "i=0; while [ ! -e {d}/gate-$SEQNUM ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
            d = d.display()
        )
    } else {
        format!("sleep {pause}")
    };
    env.script(
        "lane.sh",
        &format!(
            "#!/bin/sh\necho \"start $SEQNUM $DEVPATH $(date +%s%N)\" >> {d}/lanes.log\n{wait}\n\
             echo \"end $SEQNUM $DEVPATH $(date +%s%N)\" >> {d}/lanes.log\n",
            d = d.display()
        ),
    )
}

fn config(env: &Env, workers: usize, run: &std::path::Path, extra_rules: &str) -> PathBuf {
    env.bare_config(
        // No coalescing: the tree test's adds and removes all run.
        &format!("workers = {workers}\ngap_timeout = \"20s\"\ncoalesce = false\n"),
        &format!(
            "{extra_rules}\n[[rule]]\nname = \"lane\"\nmatch = {{ ACTION = \"*\" }}\nrun = [\"{}\"]\n",
            run.display()
        ),
    )
}

#[derive(Debug, Clone, PartialEq)]
struct Line {
    start: bool,
    seq: u64,
    devpath: String,
    nanos: u128,
}

fn lines(env: &Env) -> Vec<Line> {
    fs::read_to_string(env.path("lanes.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            Line {
                start: w[0] == "start",
                seq: w[1].parse().unwrap(),
                devpath: w[2].to_owned(),
                nanos: w[3].parse().unwrap(),
            }
        })
        .collect()
}

fn wait_ended(env: &Env, n: usize) -> Vec<Line> {
    wait_for(&format!("{n} handlers ended"), || {
        lines(env).iter().filter(|l| !l.start).count() >= n
    });
    lines(env)
}

fn related(a: &str, b: &str) -> bool {
    let (s, l) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    l.starts_with(s) && (l.len() == s.len() || l.as_bytes()[s.len()] == b'/')
}

/// What the log says: each SEQNUM ran once; related events never overlapped and ran in
/// SEQNUM order; how many ran at once at most.
fn check(log: &[Line], n: usize) -> usize {
    let mut starts: HashMap<u64, usize> = HashMap::new();
    let mut ends: HashMap<u64, usize> = HashMap::new();
    for (i, l) in log.iter().enumerate() {
        let map = if l.start { &mut starts } else { &mut ends };
        assert!(map.insert(l.seq, i).is_none(), "SEQNUM {} ran twice", l.seq);
    }
    assert_eq!(starts.len(), n, "every event ran: {log:?}");
    let dev: HashMap<u64, &str> = log.iter().map(|l| (l.seq, l.devpath.as_str())).collect();
    for (&a, &da) in &dev {
        for (&b, &db) in &dev {
            if a < b && related(da, db) {
                assert!(
                    ends[&a] < starts[&b],
                    "SEQNUM {b} ({db}) started before the earlier {a} ({da}) ended"
                );
            }
        }
    }
    let mut now = 0usize;
    let mut most = 0;
    for l in log {
        if l.start {
            now += 1;
            most = most.max(now);
        } else {
            now -= 1;
        }
    }
    most
}

/// A device tree under four roots, each with a child and a grandchild; each device gets
/// an add (parents first), a change, and a remove (children first). Shims for all of
/// them are started at once in a shuffled order, as racing kernel helpers arrive.
#[test]
fn relatives_keep_their_order_and_strangers_overlap() {
    let env = Env::new();
    let run = handler(&env, "0.05", false);
    let cfg = config(&env, 4, &run, "");
    let _d = env.start(&cfg);
    let mut events = Vec::new();
    for r in 0..4 {
        let root = format!("/devices/lanes/r{r}");
        let child = format!("{root}/c");
        let grandchild = format!("{child}/g");
        for (action, dev) in [
            ("add", &root),
            ("add", &child),
            ("add", &grandchild),
            ("change", &child),
            ("change", &root),
            ("remove", &grandchild),
            ("remove", &child),
            ("remove", &root),
        ] {
            events.push((action, dev.clone()));
        }
    }
    // SEQNUMs interleave two roots at a time: among any four in a row, two are of one
    // device tree, so taking events in SEQNUM order alone would run relatives at once.
    let mut numbered: Vec<(u64, &str, String)> = Vec::new();
    for pair in [[0, 1], [2, 3]] {
        for i in 0..8 {
            for r in pair {
                let (a, d) = &events[r * 8 + i];
                numbered.push((numbered.len() as u64 + 1, a, d.clone()));
            }
        }
    }
    let mut arrival = numbered.clone();
    shuffle(&mut arrival, 0x1a2e5);
    let children: Vec<_> = arrival
        .iter()
        .map(|(seq, action, dev)| {
            let s = seq.to_string();
            env.spawn_shim(&[
                ("ACTION", action),
                ("DEVPATH", dev),
                ("SUBSYSTEM", "test"),
                ("SEQNUM", &s),
            ])
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let log = wait_ended(&env, numbered.len());
    let most = check(&log, numbered.len());
    assert!(most <= 4, "at most 4 at once, saw {most}");
    assert!(
        most >= 2,
        "handlers of unrelated devices overlapped: at most {most} at once"
    );
}

/// Sixteen unrelated devices, a handler that sleeps 0.2 s each: with four lanes the
/// handlers' own clocks say the load ran close to four times as fast as one at a time
/// would (the sum of their run times over the span from first start to last end).
#[test]
fn a_handler_bound_load_runs_close_to_n_times_faster() {
    let env = Env::new();
    let run = handler(&env, "0.2", false);
    let cfg = config(&env, 4, &run, "");
    let _d = env.start(&cfg);
    for seq in 1..=16u64 {
        assert!(env
            .event(seq, "add", &format!("/devices/fast/d{seq}"))
            .success());
    }
    let log = wait_ended(&env, 16);
    let most = check(&log, 16);
    assert_eq!(most, 4, "four lanes busy at once");
    let mut start = HashMap::new();
    let mut busy = 0u128;
    for l in &log {
        if l.start {
            start.insert(l.seq, l.nanos);
        } else {
            busy += l.nanos - start[&l.seq];
        }
    }
    let first = log.iter().map(|l| l.nanos).min().unwrap();
    let last = log.iter().map(|l| l.nanos).max().unwrap();
    let speedup = busy as f64 / (last - first) as f64;
    eprintln!("16 handlers of 0.2 s on 4 lanes: {speedup:.2}x one at a time");
    assert!(
        speedup > 2.4,
        "4 lanes ran only {speedup:.2}x as fast as one"
    );
}

/// A `SUBSYSTEM=module` event and an event of an `exclusive = true` rule each run alone:
/// nothing else runs when they start, and nothing starts before they end.
#[test]
fn exclusive_events_run_alone() {
    let env = Env::new();
    let run = handler(&env, "0.05", false);
    let cfg = config(
        &env,
        4,
        &run,
        "[[rule]]\nname = \"alone\"\nmatch = { DEVPATH = \"/devices/solo\" }\nrun = [\"/bin/true\"]\nexclusive = true\n",
    );
    let _d = env.start(&cfg);
    let mut seq = 0;
    let mut fire = |devpath: &str, subsystem: &str| {
        seq += 1;
        let s = seq.to_string();
        assert!(env
            .shim(&[
                ("ACTION", "add"),
                ("DEVPATH", devpath),
                ("SUBSYSTEM", subsystem),
                ("SEQNUM", &s),
            ])
            .success());
    };
    for i in 0..4 {
        fire(&format!("/devices/x{i}"), "test");
    }
    fire("/module/snd", "module");
    for i in 4..8 {
        fire(&format!("/devices/x{i}"), "test");
    }
    fire("/devices/solo", "test");
    for i in 8..12 {
        fire(&format!("/devices/x{i}"), "test");
    }
    let log = wait_ended(&env, 14);
    let most = check(&log, 14);
    assert!(most >= 2, "the others overlapped");
    for alone in [5, 10] {
        let i = log.iter().position(|l| l.start && l.seq == alone).unwrap();
        let before = &log[..i];
        let started = before.iter().filter(|l| l.start).count();
        let ended = before.iter().filter(|l| !l.start).count();
        assert_eq!(
            started, ended,
            "SEQNUM {alone} started while others ran: {log:?}"
        );
        assert_eq!(
            started as u64,
            alone - 1,
            "every earlier event ran before {alone}"
        );
        assert!(
            log[i + 1].seq == alone && !log[i + 1].start,
            "nothing started while {alone} ran: {log:?}"
        );
    }
}

/// Two lanes and gated handlers: SEQNUM 1 (/devices/slow) and 3 (/devices/other) run,
/// 2 (/devices/slow/child) waits for 1. Returns once 1 and 3 have started.
fn parent_child_stranger(env: &Env) -> Daemon {
    let run = handler(env, "", true);
    let cfg = config(env, 2, &run, "");
    let d = env.start(&cfg);
    assert!(env.event(1, "add", "/devices/slow").success());
    assert!(env.event(2, "add", "/devices/slow/child").success());
    assert!(env.event(3, "add", "/devices/other").success());
    wait_for("1 and 3 running", || {
        let l = lines(env);
        [1, 3]
            .iter()
            .all(|s| l.iter().any(|x| x.start && x.seq == *s))
    });
    d
}

/// A child's event held back by its parent's slow handler shows in `pending` and
/// `status` as waiting for the parent's SEQNUM, while a stranger's event runs in another
/// lane; recall takes the held-back event but not the one running ahead of it; settle
/// waits for every lane; the timeline puts runs in their lanes.
#[test]
fn a_blocked_event_shows_what_it_waits_for() {
    let env = Env::new();
    let _d = parent_child_stranger(&env);
    let pending = env.ctl_ok(&["pending"]);
    assert!(
        pending.contains("2 add /devices/slow/child (test): waiting for SEQNUM 1 (/devices/slow)"),
        "{pending}"
    );
    assert!(
        pending.contains("running 1 add /devices/slow (test) in lane 0"),
        "{pending}"
    );
    assert!(
        pending.contains("running 3 add /devices/other (test) in lane 1"),
        "{pending}"
    );
    let status: Value = serde_json::from_str(env.ctl_ok(&["status", "--json"]).trim()).unwrap();
    assert_eq!(status["workers"], 2);
    assert_eq!(status["running"], 2);
    assert_eq!(
        status["blocked"],
        "SEQNUM 2: waiting for SEQNUM 1 (/devices/slow)"
    );
    let json: Value = serde_json::from_str(env.ctl_ok(&["pending", "--json"]).trim()).unwrap();
    let child = &json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seqnum"] == 2)
        .unwrap()["waiting_on"];
    assert_eq!(child["seqnum"], 1);
    assert_eq!(child["devpath"], "/devices/slow");
    // Recall: an event held back is still queued; one a lane took ahead of it is not.
    assert!(env.event(4, "add", "/devices/slow/child2").success());
    wait_for("4 queued", || {
        env.ctl_ok(&["pending"])
            .contains("4 add /devices/slow/child2")
    });
    env.ctl_ok(&["recall", "4"]);
    assert!(!env.ctl(&["recall", "3"]).status.success(), "3 runs: taken");
    // Settle waits for every lane: 3's end is not enough while 1 runs.
    fs::write(env.path("gate-3"), "").unwrap();
    wait_ended(&env, 1);
    assert!(!env
        .ctl(&["settle", "--seq", "4", "--timeout", "500ms"])
        .status
        .success());
    for seq in 1..=2 {
        fs::write(env.path(&format!("gate-{seq}")), "").unwrap();
    }
    env.ctl_ok(&["settle", "--seq", "4", "--timeout", "60s"]);
    let log = lines(&env);
    check(&log, 3);
    let timeline: Value = serde_json::from_str(env.ctl_ok(&["timeline", "--json"]).trim()).unwrap();
    let lanes: Vec<(u64, u64)> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "run")
        .map(|s| (s["seqnum"].as_u64().unwrap(), s["lane"].as_u64().unwrap()))
        .collect();
    assert!(
        lanes.contains(&(1, 0)) && lanes.contains(&(3, 1)),
        "{lanes:?}"
    );
}

/// Pause holds every lane; resume starts as many as may start.
#[test]
fn pause_holds_every_lane() {
    let env = Env::new();
    let run = handler(&env, "0.05", false);
    let cfg = config(&env, 4, &run, "");
    let _d = env.start(&cfg);
    env.ctl_ok(&["pause"]);
    for seq in 1..=6u64 {
        assert!(env.event(seq, "add", &format!("/devices/p{seq}")).success());
    }
    wait_for("6 queued", || {
        env.ctl_ok(&["status", "--json"]).contains("\"queued\":6")
    });
    assert!(lines(&env).is_empty(), "nothing ran while paused");
    env.ctl_ok(&["resume"]);
    let log = wait_ended(&env, 6);
    assert!(check(&log, 6) >= 2);
}

/// An event that ended while an older one waited is finished once that one is gone:
/// here the older one is recalled while paused, and a settle returns at once, without
/// another event finishing to move things on.
#[test]
fn a_recall_of_the_event_others_wait_behind_lets_them_finish() {
    let env = Env::new();
    let _d = parent_child_stranger(&env);
    fs::write(env.path("gate-3"), "").unwrap();
    wait_ended(&env, 1);
    env.ctl_ok(&["pause"]);
    fs::write(env.path("gate-1"), "").unwrap();
    wait_ended(&env, 2);
    // 3 is done but waits, unfinished, behind 2, which is paused.
    assert!(!env
        .ctl(&["settle", "--seq", "3", "--timeout", "300ms"])
        .status
        .success());
    env.ctl_ok(&["recall", "2"]);
    env.ctl_ok(&["settle", "--seq", "3", "--timeout", "10s"]);
    assert_eq!(lines(&env).iter().filter(|l| l.start).count(), 2);
}

/// Each runner thread's voluntary context switches so far, by thread name.
fn runner_switches(pid: u32) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("runner") {
            continue;
        }
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        out.insert(comm.to_owned(), n);
    }
    out
}

/// One device's events run one at a time whatever `workers` says. The lane whose event
/// ends takes the next one itself, so the idle lane is not woken for each event only to
/// find nothing (on a busy machine such a wake-up cost a scheduler tick: a one-device
/// storm ran at half the rate of one worker). Counted in the runner threads' voluntary
/// context switches, not timed.
#[test]
fn a_lane_going_free_takes_the_next_event_without_waking_an_idle_one() {
    const N: u64 = 40;
    let env = Env::new();
    let cfg = env.bare_config(
        "workers = 2\ngap_timeout = \"20s\"\n",
        "[[rule]]\nname = \"true\"\nrun = [\"/bin/true\"]\n",
    );
    let d = env.start(&cfg);
    let pid = d.child.id();
    env.ctl_ok(&["pause"]);
    for seq in 1..=N {
        assert!(env.event(seq, "change", "/devices/one/dev").success());
    }
    wait_for("every event queued", || {
        env.ctl_ok(&["status", "--json"])
            .contains(&format!("\"received\":{N}"))
    });
    let before = runner_switches(pid);
    assert_eq!(before.len(), 2, "two runner threads: {before:?}");
    env.ctl_ok(&["resume"]);
    env.ctl_ok(&["settle", "--seq", &N.to_string(), "--timeout", "60"]);
    let after = runner_switches(pid);
    let woken: Vec<u64> = before.iter().map(|(t, n)| after[t] - n).collect();
    eprintln!("voluntary switches of the two lanes for {N} events of one device: {woken:?}");
    let least = *woken.iter().min().unwrap();
    assert!(
        least < N / 4,
        "both lanes were woken about once per event ({woken:?} voluntary switches for {N} events of one device)"
    );
}
