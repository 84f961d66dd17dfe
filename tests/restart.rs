//! What a restart keeps: an event handled before a kill or a clean stop stays handled, so
//! a second copy of it (the other source's, or a spool file) is a duplicate, not late.

mod common;

use common::*;

/// Handle SEQNUM 1, stop the daemon with `stop`, start it again and feed SEQNUM 1 once
/// more, then 2: only 2 runs, and the copy of 1 is logged as a duplicate.
fn a_copy_after_a_restart_is_a_duplicate(stop: impl FnOnce(Daemon)) {
    let env = Env::new();
    let config = env.config("gap_timeout = \"1h\"", "");
    let daemon = env.start(&config);
    env.event(1, "add", "/devices/a");
    assert_eq!(env.wait_handled(1).seqs, vec![1]);
    let _ = env.ctl_ok(&["settle", "--seq", "1"]);
    stop(daemon);

    let daemon = env.start(&config);
    // One FIFO, written in turn: the copy is taken in before 2.
    env.event(1, "add", "/devices/a");
    env.event(2, "add", "/devices/b");
    let _ = env.ctl_ok(&["settle", "--seq", "2"]);
    let log = daemon.log_text();
    assert_eq!(env.record().seqs, vec![1, 2], "{log}");
    assert!(log.contains("duplicate 1 add /devices/a"), "{log}");
    let status = env.ctl_ok(&["status"]);
    let count = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    assert_eq!(count("duplicates:"), Some(1), "{status}");
    assert_eq!(count("late:"), Some(0), "{status}");
}

#[test]
fn an_event_handled_before_a_kill_stays_handled() {
    a_copy_after_a_restart_is_a_duplicate(|mut d| {
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    });
}

#[test]
fn an_event_handled_before_a_clean_stop_stays_handled() {
    a_copy_after_a_restart_is_a_duplicate(|d| assert!(d.stop().success()));
}
