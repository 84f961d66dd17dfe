//! Rebroadcast (issue 17): a real daemon sends each handled event again on netlink group
//! mask 4, heard by a listener as strict as libudev-zero: it binds group 4, reads the
//! properties from the message itself, and drops anything malformed. Only this file's
//! daemons rebroadcast, and each test's DEVPATHs share a prefix of their own, so other
//! daemons on the host and other tests here never mix in.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;
use nix::sys::socket::{
    bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// One message as libudev-zero takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heard {
    seqnum: u64,
    action: String,
    devpath: String,
    subsystem: String,
    props: HashMap<String, String>,
}

/// Parse `ACTION@DEVPATH\0KEY=VALUE\0...`, or `None` for anything libudev-zero would
/// drop: no header, a variable without `=`, ACTION, DEVPATH, SUBSYSTEM or SEQNUM missing
/// or repeated, a header that disagrees with them, a SEQNUM that is not a number.
fn strict_parse(msg: &[u8]) -> Option<Heard> {
    let text = std::str::from_utf8(msg).ok()?;
    let text = text.strip_suffix('\0')?;
    let mut parts = text.split('\0');
    let (h_action, h_devpath) = parts.next()?.split_once('@')?;
    let mut props = HashMap::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for var in parts {
        let (k, v) = var.split_once('=')?;
        if k.is_empty() {
            return None;
        }
        *counts.entry(k).or_default() += 1;
        props.insert(k.to_owned(), v.to_owned());
    }
    for key in ["ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"] {
        if counts.get(key) != Some(&1) {
            return None;
        }
    }
    if props["ACTION"] != h_action || props["DEVPATH"] != h_devpath {
        return None;
    }
    Some(Heard {
        seqnum: props["SEQNUM"].parse().ok()?,
        action: props["ACTION"].clone(),
        devpath: props["DEVPATH"].clone(),
        subsystem: props["SUBSYSTEM"].clone(),
        props,
    })
}

struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Bound to group mask 4, as libudev-zero; `None` (and a skip) without root.
    fn open() -> Option<Listener> {
        if !nix::unistd::Uid::effective().is_root() {
            skip_or_fail("sending uevents to a netlink group needs CAP_NET_ADMIN (root)");
            return None;
        }
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .unwrap();
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000)).unwrap();
        setsockopt(&fd, sockopt::RcvBuf, &(4 << 20)).unwrap();
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 4)).unwrap();
        Some(Listener { fd })
    }

    /// Collect the well-formed messages under `prefix` until one for `last` arrives
    /// (within the deadline). `check` runs on each as it is received.
    fn until(&self, prefix: &str, last: &str, mut check: impl FnMut(&Heard)) -> Vec<Heard> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "no rebroadcast of {last} within {DEADLINE:?}; heard {got:#?}"
            );
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => panic!("recv: {e}"),
            };
            let Some(h) = strict_parse(&buf[..n]) else {
                // Malformed: dropped, as libudev-zero does. Ours must never be.
                assert!(
                    !String::from_utf8_lossy(&buf[..n]).contains(prefix),
                    "a malformed message of ours: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                );
                continue;
            };
            if !h.devpath.starts_with(prefix) {
                continue;
            }
            check(&h);
            let done = h.devpath == last;
            got.push(h);
            if done {
                return got;
            }
        }
    }
}

fn prefix() -> String {
    format!(
        "/devices/rebroadcast-test-{}-{}",
        std::process::id(),
        nanos()
    )
}

fn fire(env: &Env, seq: Option<u64>, action: &str, devpath: &str, subsystem: &str) {
    let s = seq.map(|s| s.to_string());
    let mut vars = vec![
        ("ACTION", action),
        ("DEVPATH", devpath),
        ("SUBSYSTEM", subsystem),
        ("DEVNAME", "rbnode"),
        ("MAJOR", "240"),
        ("MINOR", "7"),
    ];
    if let Some(s) = &s {
        vars.push(("SEQNUM", s));
    }
    assert!(env.shim(&vars).success());
}

/// Queue an event with no SEQNUM through the control socket, as `trigger --synthesize`.
fn inject(env: &Env, devpath: &str, subsystem: &str) {
    let mut s = UnixStream::connect(env.runtime().join("control")).unwrap();
    write!(
        s,
        "inject\nACTION=add\nDEVPATH={devpath}\nSUBSYSTEM={subsystem}\nDEVNAME=rbsynth\n\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("queued"), "{reply}");
}

/// A handler that leaves a file named after its device, so the listener can tell it ran
/// before the event was sent.
fn mark_rule(env: &Env, subsystem: &str) -> String {
    let mark = env.script(
        "mark.sh",
        &format!(
            "#!/bin/sh\ntouch \"{}/ran-${{DEVPATH##*/}}\"\n",
            env.dir.path().display()
        ),
    );
    format!(
        "[[rule]]\nname = \"mark-{subsystem}\"\nmatch = {{ SUBSYSTEM = \"{subsystem}\" }}\n\
         run = [\"{}\"]\n",
        mark.display()
    )
}

fn ran(env: &Env, devpath: &str) -> bool {
    let name = devpath.rsplit('/').next().unwrap();
    env.path(&format!("ran-{name}")).exists()
}

#[test]
fn each_event_once_after_its_handler_in_seqnum_order() {
    let Some(listener) = Listener::open() else {
        return;
    };
    let env = Env::new();
    let p = prefix();
    let config = env.bare_config("rebroadcast = 4", &mark_rule(&env, "rbtest"));
    let d = env.start(&config);

    // Out of order: sent in SEQNUM order all the same. "rbnone" has no rule: sent when
    // it is done at dispatch.
    fire(&env, Some(1), "add", &format!("{p}/e1"), "rbtest");
    fire(&env, Some(3), "add", &format!("{p}/e3"), "rbnone");
    fire(&env, Some(2), "change", &format!("{p}/e2"), "rbtest");
    // An add and its remove while the add is queued: neither runs, neither is sent.
    env.ctl_ok(&["settle", "--seq", "3"]);
    env.ctl_ok(&["pause"]);
    fire(&env, Some(4), "add", &format!("{p}/e4"), "rbtest");
    fire(&env, Some(5), "remove", &format!("{p}/e4"), "rbtest");
    d.wait_log("coalesced 5 remove");
    // A recalled event is not sent either.
    fire(&env, Some(6), "add", &format!("{p}/recalled"), "rbtest");
    env.ctl_ok(&["recall", "6"]);
    env.ctl_ok(&["resume"]);
    // No SEQNUM: sent with SEQNUM=0.
    inject(&env, &format!("{p}/synth"), "rbtest");
    wait_for("the injected event's handler", || ran(&env, "/synth"));
    fire(&env, Some(7), "add", &format!("{p}/last"), "rbtest");

    let heard = listener.until(&p, &format!("{p}/last"), |h| {
        if h.subsystem == "rbtest" {
            assert!(ran(&env, &h.devpath), "sent before its handler ran: {h:?}");
        }
    });
    let got: Vec<(u64, &str, String)> = heard
        .iter()
        .map(|h| (h.seqnum, h.action.as_str(), h.devpath.replace(&p, "")))
        .collect();
    assert_eq!(
        got,
        [
            (1, "add", "/e1".to_owned()),
            (2, "change", "/e2".to_owned()),
            (3, "add", "/e3".to_owned()),
            (0, "add", "/synth".to_owned()),
            (7, "add", "/last".to_owned()),
        ]
    );
    // Every kernel property rides along; the helper's HOME and PATH do not.
    let first = &heard[0];
    assert_eq!(first.props["DEVNAME"], "rbnode");
    assert_eq!(first.props["MAJOR"], "240");
    assert_eq!(first.props["MINOR"], "7");
    assert!(!first.props.contains_key("HOME") && !first.props.contains_key("PATH"));
    assert_eq!(heard[3].props["DEVNAME"], "rbsynth");
    let status = env.ctl_ok(&["status", "--json"]);
    assert!(status.contains("\"rebroadcast_sent\":5,"), "{status}");
    assert!(status.contains("\"rebroadcast_lost\":0,"), "{status}");
}

#[test]
fn the_subsystem_filter_sends_only_the_listed() {
    let Some(listener) = Listener::open() else {
        return;
    };
    let env = Env::new();
    let p = prefix();
    let rules = format!(
        "{}\n{}",
        mark_rule(&env, "rbtest"),
        mark_rule(&env, "rbother")
    );
    let config = env.bare_config(
        "rebroadcast = 4\nrebroadcast_subsystems = [\"rbtest\"]",
        &rules,
    );
    let _d = env.start(&config);
    fire(&env, Some(1), "add", &format!("{p}/a"), "rbtest");
    fire(&env, Some(2), "add", &format!("{p}/b"), "rbother");
    fire(&env, Some(3), "add", &format!("{p}/c"), "rbtest");
    let heard = listener.until(&p, &format!("{p}/c"), |_| {});
    let got: Vec<u64> = heard.iter().map(|h| h.seqnum).collect();
    assert_eq!(got, [1, 3]);
    assert!(ran(&env, &format!("{p}/b")), "its handler ran all the same");
}

#[test]
fn a_crash_before_the_send_sends_it_after_the_restart_and_nothing_twice() {
    let Some(listener) = Listener::open() else {
        return;
    };
    let env = Env::new();
    let p = prefix();
    // The handler of `boom` kills the daemon the first time, before its event is done:
    // the restart runs it again and sends it then, once; 1 is not sent again.
    let boom = env.script(
        "boom.sh",
        &format!(
            "#!/bin/sh\nif [ ! -e {flag} ]; then touch {flag}; kill -9 $PPID; sleep 5; fi\n",
            flag = env.path("boomed").display()
        ),
    );
    let rules = format!(
        "{}\n[[rule]]\nname = \"boom\"\nmatch = {{ SUBSYSTEM = \"rbboom\" }}\nrun = [\"{}\"]\n",
        mark_rule(&env, "rbtest"),
        boom.display()
    );
    let config = env.bare_config("rebroadcast = 4", &rules);
    let mut d = env.start(&config);
    fire(&env, Some(1), "add", &format!("{p}/one"), "rbtest");
    fire(&env, Some(2), "add", &format!("{p}/boom"), "rbboom");
    wait_for("the daemon to die", || !d.alive());
    let _d2 = env.start(&config);
    fire(&env, Some(3), "add", &format!("{p}/last"), "rbtest");
    let heard = listener.until(&p, &format!("{p}/last"), |_| {});
    let got: Vec<u64> = heard.iter().map(|h| h.seqnum).collect();
    assert_eq!(got, [1, 2, 3]);
}

#[test]
fn a_mask_with_the_kernels_group_is_a_config_error() {
    let env = Env::new();
    let file = env.path("bad.toml");
    fs::write(&file, "[daemon]\nrebroadcast = 3\n").unwrap();
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:2:15: rebroadcast 3 includes group 1",
        Path::new(&file).display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn without_cap_net_admin_the_error_says_so() {
    if !nix::unistd::Uid::effective().is_root() {
        return skip_or_fail("dropping a capability to test its error needs root");
    }
    if !Path::new("/usr/bin/setpriv").exists() {
        return skip_or_fail("setpriv (util-linux) is not installed");
    }
    let env = Env::new();
    let p = prefix();
    let config = env.bare_config("rebroadcast = 4", &mark_rule(&env, "rbtest"));
    let d = env
        .daemon(&config)
        .level("info")
        .wrapper([
            "/usr/bin/setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
        ])
        .start();
    fire(&env, Some(1), "add", &format!("{p}/a"), "rbtest");
    d.wait_log("needs CAP_NET_ADMIN");
    assert!(ran(&env, &format!("{p}/a")), "handled all the same");
    let status = env.ctl_ok(&["status", "--json"]);
    assert!(status.contains("\"rebroadcast_lost\":1,"), "{status}");
}

/// With lanes (`workers = 4`), a slow first event's handler ends after the later ones',
/// yet the listener hears every event in SEQNUM order, each after its own handler: the
/// owner finishes events in release order. Unrelated devices, so the later ones really
/// run (and end) while the first still runs; an event without a handler waits its turn too.
#[test]
fn with_lanes_events_are_still_sent_in_seqnum_order() {
    let Some(listener) = Listener::open() else {
        return;
    };
    let env = Env::new();
    let p = prefix();
    let dir = env.dir.path().display().to_string();
    let run = env.script(
        "lane.sh",
        &format!(
            "#!/bin/sh\n[ \"$SEQNUM\" = 1 ] && sleep 0.5\ntouch \"{dir}/ran-${{DEVPATH##*/}}\"\n\
             echo \"$SEQNUM\" >> \"{dir}/ended\"\n"
        ),
    );
    let rule = format!(
        "[[rule]]\nname = \"lane\"\nmatch = {{ SUBSYSTEM = \"rbtest\" }}\nrun = [\"{}\"]\n",
        run.display()
    );
    let config = env.bare_config("rebroadcast = 4\nworkers = 4", &rule);
    let _d = env.start(&config);
    for seq in 1..=6u64 {
        let subsystem = if seq == 4 { "rbnone" } else { "rbtest" };
        fire(&env, Some(seq), "add", &format!("{p}/l{seq}"), subsystem);
    }
    let heard = listener.until(&p, &format!("{p}/l6"), |h| {
        if h.subsystem == "rbtest" {
            assert!(ran(&env, &h.devpath), "sent before its handler ran: {h:?}");
        }
    });
    let seqs: Vec<u64> = heard.iter().map(|h| h.seqnum).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let ended = fs::read_to_string(env.path("ended")).unwrap();
    assert_ne!(
        ended.lines().next(),
        Some("1"),
        "the later handlers ended first: {ended}"
    );
}
