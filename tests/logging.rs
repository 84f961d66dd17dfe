//! Log format: syslog-style `<N>` priority prefixes without our own timestamp under
//! journald (JOURNAL_STREAM naming our stderr) or with `--log-format=syslog`; plain
//! `[TIME LEVEL]` lines otherwise.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// Starts the daemon with stderr to `log`, a seqnum file that provokes a warning at start,
/// and the given extra arguments and JOURNAL_STREAM; waits until ready, stops it, and
/// returns the log.
fn run_daemon(
    env: &Env,
    args: &[&str],
    journal_stream: Option<&dyn Fn(&Path) -> String>,
) -> String {
    fs::write(env.path("seqnum"), "garbage\n").unwrap();
    let config = env.config("", "");
    let log = env.path("daemon.log");
    // There before the start: JOURNAL_STREAM may name it.
    fs::File::create(&log).unwrap();
    let mut cmd = env
        .daemon(&config)
        .log(log.clone())
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG");
    if let Some(value) = journal_stream {
        cmd = cmd.env("JOURNAL_STREAM", value(&log));
    }
    let d = cmd.start();
    d.wait_log("is not a SEQNUM");
    let text = d.log_text();
    assert!(d.stop().success(), "{text}");
    text
}

fn assert_syslog(text: &str) {
    let warning = text
        .lines()
        .find(|l| l.contains("is not a SEQNUM"))
        .unwrap();
    assert!(warning.starts_with("<4>"), "warning without <4>: {text}");
    let ready = text.lines().find(|l| l.contains(" ready on ")).unwrap();
    assert!(ready.starts_with("<6>hotplugd "), "ready line: {text}");
    for line in text.lines() {
        let p = line.as_bytes();
        assert!(
            p.len() > 3 && p[0] == b'<' && (b'0'..=b'7').contains(&p[1]) && p[2] == b'>',
            "a line without a priority prefix: {line:?} in\n{text}"
        );
        // Plain lines begin "[2026-11-25T11:13:46Z INFO ]": the journal stamps its own.
        assert!(!line[3..].starts_with('['), "a timestamp: {line:?}");
    }
}

#[test]
fn log_format_syslog_prefixes_priorities_without_timestamps() {
    let env = Env::new();
    assert_syslog(&run_daemon(&env, &["--log-format=syslog"], None));
}

#[test]
fn journal_stream_naming_stderr_selects_syslog_format() {
    let env = Env::new();
    let same = |log: &Path| {
        let m = fs::metadata(log).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    assert_syslog(&run_daemon(&env, &[], Some(&same)));
}

#[test]
fn journal_stream_naming_another_file_or_plain_flag_keeps_plain_lines() {
    // Inherited from a journald-started parent while stderr went elsewhere: not ours.
    let env = Env::new();
    let other = |_: &Path| {
        let m = fs::metadata("/").unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let text = run_daemon(&env, &[], Some(&other));
    let warning = text
        .lines()
        .find(|l| l.contains("is not a SEQNUM"))
        .unwrap();
    assert!(
        warning.starts_with('[') && warning.contains(" WARN "),
        "{text}"
    );

    let env = Env::new();
    let same = |log: &Path| {
        let m = fs::metadata(log).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let text = run_daemon(&env, &["--log-format", "plain"], Some(&same));
    let warning = text
        .lines()
        .find(|l| l.contains("is not a SEQNUM"))
        .unwrap();
    assert!(
        warning.starts_with('[') && warning.contains(" WARN "),
        "{text}"
    );
}
