//! `hotplugctl`, the admin's tool: argument parsing and each command, over the control
//! socket's client half ([`crate::control`]). Exit codes: 0 ok; 1 failure or timeout
//! (the message names the socket path and the cause); 2 usage.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::{self, Client, ClientError, End};
use crate::event::Event;
use crate::helper;
use crate::rules::glob_match;
use crate::spool::{DEFAULT_RUNTIME_DIR, RUNTIME_DIR_ENV};
use crate::sysfs;

pub const USAGE: &str = "\
usage: hotplugctl [--runtime-dir DIR] COMMAND [ARGS]

Commands:
  status [--json]                     daemon state and counters
  monitor [--env] [--subsystem S]... [--handled]
                                      stream events as they are queued (--env: every
                                      variable; --handled: handler outcomes instead)
  settle [--timeout SECS] [--seq N] [--seqnum-file PATH]
                                      wait until every event up to the kernel's current
                                      SEQNUM (or N) is handled and the queue is empty
  reload                              reload config and rules; errors are printed
  recall SEQNUM                       remove a queued event before it runs
  pause | resume                      stop / restart starting handlers (queue keeps filling)
  log-level LEVEL                     error, warn, info, debug, trace
  trigger [--action add|change|remove] [--subsystem-match S]... [--subsystem-nomatch S]...
          [--sysfs DIR] [--dry-run] [--settle] [--synthesize] [--timeout SECS]
                                      coldplug: make the kernel (or, with --synthesize,
                                      the daemon directly) emit an event per device
  test [--config FILE] KEY=VALUE...   show which rules match an event and the argv each
                                      would run; runs nothing, needs no daemon
  pending                             list the events not yet handled
  timeline [--svg FILE]               the handler runs and gap waits the daemon
                                      remembers (last 10,000), as a table or a chart
  helper status|enable [PATH]|disable [--file FILE]
                                      read or set the kernel's uevent helper
                                      (/proc/sys/kernel/hotplug); enable defaults to
                                      the hotplug shim installed beside hotplugctl

The runtime dir defaults to $HOTPLUGD_RUNTIME_DIR, else /run/hotplugd.
Exit status: 0 ok; 1 failure or timeout; 2 usage.";

/// A failure to report: the message and the exit code.
struct Fail(String, u8);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail(e.to_string(), 1)
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 2)
}

/// Entry point for the binary.
pub fn main(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let args: Vec<String> = args
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("hotplugctl: {msg}");
            }
            if code == 2 {
                eprintln!("{USAGE}");
            }
            ExitCode::from(code)
        }
    }
}

/// A cursor over arguments with `--flag VALUE` and `--flag=VALUE`.
struct Args<'a> {
    rest: &'a [String],
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, Fail> {
        match inline {
            Some(v) => Ok(v),
            None => self
                .next()
                .ok_or_else(|| usage(format!("{flag} needs a value"))),
        }
    }

    /// The next argument split as (flag, inline value).
    fn flag(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        let a = self.next()?;
        match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => Some((f, Some(v))),
            _ => Some((a, None)),
        }
    }
}

fn run(args: &[String]) -> Result<(), Fail> {
    let mut it = Args { rest: args };
    let mut runtime: Option<PathBuf> = None;
    let cmd = loop {
        match it.flag() {
            Some(("--runtime-dir", v)) => runtime = Some(it.value("--runtime-dir", v)?.into()),
            Some(("--help" | "-h", _)) => {
                println!("{USAGE}");
                return Ok(());
            }
            Some(("--version" | "-V", _)) => {
                println!("hotplugctl {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            Some((cmd, None)) if !cmd.starts_with('-') => break cmd,
            Some((other, _)) => return Err(usage(format!("unknown option {other:?}"))),
            None => return Err(usage("no command given")),
        }
    };
    let dir = runtime
        .or_else(|| std::env::var_os(RUNTIME_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    match cmd {
        "status" => status(&dir, it),
        "monitor" => monitor(&dir, it),
        "settle" => settle_cmd(&dir, it),
        "reload" => simple(&dir, "reload", it),
        "pause" => simple(&dir, "pause", it),
        "resume" => simple(&dir, "resume", it),
        "pending" => simple(&dir, "pending", it),
        "recall" => match (it.next(), it.next()) {
            (Some(seq), None) if crate::event::parse_seqnum(seq.as_bytes()).is_some() => {
                one_shot(&dir, &format!("recall {seq}"))
            }
            _ => Err(usage("usage: recall SEQNUM")),
        },
        "log-level" => match (it.next(), it.next()) {
            (Some(level), None) if level.parse::<log::LevelFilter>().is_ok() => {
                one_shot(&dir, &format!("log-level {level}"))
            }
            _ => Err(usage("usage: log-level error|warn|info|debug|trace")),
        },
        "trigger" => trigger(&dir, it),
        "test" => test(it),
        "helper" => helper(&dir, it),
        "timeline" => timeline(&dir, it),
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

fn no_more(mut it: Args) -> Result<(), Fail> {
    match it.next() {
        Some(extra) => Err(usage(format!("unexpected argument {extra:?}"))),
        None => Ok(()),
    }
}

fn simple(dir: &Path, req: &str, it: Args) -> Result<(), Fail> {
    no_more(it)?;
    one_shot(dir, req)
}

/// Send one request, print its data lines, map the end marker to the exit status.
fn one_shot(dir: &Path, req: &str) -> Result<(), Fail> {
    let (lines, end) = control::call(dir, req)?;
    for l in &lines {
        println!("{l}");
    }
    match end {
        End::Ok(t) => {
            if !t.is_empty() && lines.is_empty() {
                println!("{t}");
            }
            Ok(())
        }
        End::Error(e) => Err(Fail(e, 1)),
    }
}

fn status(dir: &Path, mut it: Args) -> Result<(), Fail> {
    let mut json = false;
    while let Some((flag, _)) = it.flag() {
        match flag {
            "--json" => json = true,
            other => return Err(usage(format!("status: unknown option {other:?}"))),
        }
    }
    let (lines, end) = control::call(dir, "status")?;
    if let End::Error(e) = end {
        return Err(Fail(e, 1));
    }
    if !json {
        for l in &lines {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            println!("{:<18} {v}", format!("{}:", k.replace('_', " ")));
        }
        return Ok(());
    }
    let fields: Vec<String> = lines
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            let v = match v {
                "-" => "null".to_owned(),
                "yes" => "true".to_owned(),
                "no" => "false".to_owned(),
                v if v.parse::<f64>().is_ok() => v.to_owned(),
                v => json_string(v),
            };
            format!("{}:{v}", json_string(k))
        })
        .collect();
    println!("{{{}}}", fields.join(","));
    Ok(())
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn monitor(dir: &Path, mut it: Args) -> Result<(), Fail> {
    let mut req = String::from("monitor");
    while let Some((flag, v)) = it.flag() {
        match flag {
            "--env" | "--property" | "-p" => req.push_str(" env"),
            "--handled" => req.push_str(" handled"),
            "--subsystem" | "--subsystem-match" | "-s" => {
                req.push_str(&format!(" subsystem={}", it.value(flag, v)?))
            }
            other => return Err(usage(format!("monitor: unknown option {other:?}"))),
        }
    }
    let mut client = Client::request(dir, &format!("{req}\n"))?;
    let stdout = std::io::stdout();
    loop {
        match client.next_line()? {
            Ok(line) => {
                let mut out = stdout.lock();
                // A closed pipe (`| head`) ends the monitor quietly.
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    return Ok(());
                }
            }
            Err(End::Ok(_)) => return Ok(()),
            Err(End::Error(e)) => return Err(Fail(e, 1)),
        }
    }
}

fn settle_cmd(dir: &Path, mut it: Args) -> Result<(), Fail> {
    let mut timeout = Duration::from_secs(120);
    let mut seq = None;
    let mut seqnum_file = PathBuf::from(sysfs::SEQNUM_FILE);
    while let Some((flag, v)) = it.flag() {
        match flag {
            "--timeout" | "-t" => timeout = parse_secs(it.value(flag, v)?)?,
            "--seq" => {
                let s = it.value(flag, v)?;
                seq = Some(
                    crate::event::parse_seqnum(s.as_bytes())
                        .ok_or_else(|| usage(format!("--seq: bad SEQNUM {s:?}")))?,
                );
            }
            "--seqnum-file" => seqnum_file = it.value(flag, v)?.into(),
            other => return Err(usage(format!("settle: unknown option {other:?}"))),
        }
    }
    let seq = match seq {
        Some(s) => Some(s),
        None => match sysfs::kernel_seqnum(&seqnum_file) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "hotplugctl: {}: {e}; waiting for the queue only",
                    seqnum_file.display()
                );
                None
            }
        },
    };
    settle(dir, seq, timeout)
}

fn parse_secs(s: &str) -> Result<Duration, Fail> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| usage(format!("bad number of seconds {s:?}")))
}

/// Wait for the daemon to report settled, redrawing a progress line on a terminal.
fn settle(dir: &Path, seq: Option<u64>, timeout: Duration) -> Result<(), Fail> {
    let req = match seq {
        Some(s) => format!("settle {s}\n"),
        None => "settle\n".into(),
    };
    let deadline = Instant::now() + timeout;
    let mut client = Client::request(dir, &req)?;
    let tty = std::io::stderr().is_terminal();
    let clear = || {
        if tty {
            eprint!("\r\x1b[K");
        }
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.set_timeout(Some(left));
        match client.next_line() {
            Ok(Ok(line)) if line == "start-unknown" => {
                clear();
                eprintln!(
                    "hotplugctl: settle: the daemon has seen no numbered event yet and \
                     does not know where SEQNUMs start; waiting for the first one"
                );
            }
            Ok(Ok(line)) => {
                if let (true, Some(n)) = (tty, line.strip_prefix("pending ")) {
                    eprint!("\r\x1b[Ksettling: {n} events left");
                }
            }
            Ok(Err(End::Ok(_))) => {
                clear();
                return Ok(());
            }
            Ok(Err(End::Error(e))) => {
                clear();
                return Err(Fail(e, 1));
            }
            Err(ClientError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => {
                clear();
                return Err(e.into());
            }
        }
    }
    clear();
    let (lines, _) = control::call(dir, "pending")?;
    let mut msg = format!("settle: timed out after {:.1} s", timeout.as_secs_f64());
    if let Some(s) = seq {
        msg.push_str(&format!(" waiting for SEQNUM {s}"));
    }
    let (status, _) = control::call(dir, "status")?;
    if seq.is_some() && status.iter().any(|l| l == "next_expected -") {
        msg.push_str(
            "; the daemon has still seen no numbered event, so it cannot tell whether \
             that SEQNUM was handled",
        );
    }
    if lines.is_empty() {
        msg.push_str("; nothing queued (events not yet arrived)");
    } else {
        msg.push_str("; pending:");
        for l in &lines {
            msg.push_str("\n  ");
            msg.push_str(l);
        }
    }
    Err(Fail(msg, 1))
}

fn trigger(dir: &Path, mut it: Args) -> Result<(), Fail> {
    let mut action = "add".to_owned();
    let mut matches: Vec<String> = Vec::new();
    let mut nomatches: Vec<String> = Vec::new();
    let mut sysfs_root = PathBuf::from("/sys");
    let (mut dry, mut wait, mut synth) = (false, false, false);
    let mut timeout = Duration::from_secs(120);
    while let Some((flag, v)) = it.flag() {
        match flag {
            "--action" | "-c" => {
                action = it.value(flag, v)?.to_owned();
                if !["add", "change", "remove"].contains(&action.as_str()) {
                    return Err(usage(format!(
                        "--action: {action:?} is not add, change or remove"
                    )));
                }
            }
            "--subsystem-match" | "-s" => matches.push(it.value(flag, v)?.into()),
            "--subsystem-nomatch" | "-S" => nomatches.push(it.value(flag, v)?.into()),
            "--sysfs" => sysfs_root = it.value(flag, v)?.into(),
            "--dry-run" | "-n" => dry = true,
            "--settle" | "-w" => wait = true,
            "--synthesize" => synth = true,
            "--timeout" | "-t" => timeout = parse_secs(it.value(flag, v)?)?,
            other => return Err(usage(format!("trigger: unknown option {other:?}"))),
        }
    }
    let devices = sysfs::devices(&sysfs_root)
        .map_err(|e| Fail(format!("{}/devices: {e}", sysfs_root.display()), 1))?;
    let selected: Vec<_> = devices
        .into_iter()
        .filter(|d| {
            let sub = d.subsystem.as_deref().unwrap_or("").as_bytes();
            (matches.is_empty() || matches.iter().any(|m| glob_match(m.as_bytes(), sub)))
                && !nomatches.iter().any(|m| glob_match(m.as_bytes(), sub))
        })
        .collect();
    if dry {
        for d in &selected {
            println!(
                "{} ({})",
                d.dir.display(),
                d.subsystem.as_deref().unwrap_or("-")
            );
        }
        eprintln!("{} devices would get {action}", selected.len());
        return Ok(());
    }
    let tag = sysfs::random_uuid().map_err(|e| Fail(format!("/dev/urandom: {e}"), 1))?;
    let mut sent = 0u64;
    let mut failed = 0usize;
    let mut tagged = true;
    for (i, d) in selected.iter().enumerate() {
        if synth {
            match inject(dir, d, &action, &tag) {
                Ok(()) => sent += 1,
                Err(Fail(msg, _)) => return Err(Fail(msg, 1)),
            }
            continue;
        }
        let path = d.dir.join("uevent");
        match write_uevent(&path, &action, &tag, &mut tagged) {
            Ok(()) => sent += 1,
            // As udevadm: a device that went away since the walk, or a driver that
            // takes no uevent writes (ENODEV) or has no medium, is no failure of ours.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENODEV | libc::ENOMEDIUM)
                ) =>
            {
                eprintln!("hotplugctl: {}: {e} (skipped)", path.display())
            }
            Err(e) => {
                failed += 1;
                eprintln!("hotplugctl: {}: {e}", path.display());
                // A read-only sysfs (a container's) refuses every other write as well.
                if e.raw_os_error() == Some(libc::EROFS) {
                    let left = selected.len() - i - 1;
                    if left > 0 {
                        eprintln!(
                            "hotplugctl: sysfs is read-only: not trying the other {left} devices"
                        );
                        failed += left;
                    }
                    break;
                }
            }
        }
    }
    let how = if synth { "queued" } else { "triggered" };
    println!("{sent} devices {how} ({action}, SYNTH_UUID={tag})");
    // Exit 1 when any write failed, or when none got through (every device gone).
    let n = selected.len();
    let result = if failed > 0 {
        Err(Fail(
            format!("trigger: {failed} of {n} devices could not be triggered"),
            1,
        ))
    } else if sent == 0 && n > 0 {
        Err(Fail(
            format!("trigger: none of the {n} devices could be triggered"),
            1,
        ))
    } else {
        Ok(())
    };
    if !wait || sent == 0 {
        return result;
    }
    if !tagged {
        // A kernel older than 4.13 takes no UUID: fall back to its SEQNUM.
        let seq = sysfs::kernel_seqnum(&sysfs_root.join("kernel/uevent_seqnum")).ok();
        return settle(dir, seq, timeout).and(result);
    }
    let mut client = Client::request(dir, &format!("wait-tag {tag} {sent}\n"))?;
    client.set_timeout(Some(timeout));
    loop {
        match client.next_line() {
            Ok(Ok(_)) => {}
            Ok(Err(End::Ok(_))) => return result,
            Ok(Err(End::Error(e))) => return Err(Fail(e, 1)),
            Err(ClientError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Fail(
                    format!(
                        "trigger --settle: timed out after {:.1} s",
                        timeout.as_secs_f64()
                    ),
                    1,
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ask the kernel to emit the event: `echo "ACTION UUID" > uevent` (kernel ≥ 4.13 tags it
/// `SYNTH_UUID`); an older kernel refuses the UUID with EINVAL and gets the bare action.
fn write_uevent(
    path: &Path,
    action: &str,
    tag: &str,
    tagged: &mut bool,
) -> Result<(), std::io::Error> {
    let write = |text: &str| std::fs::write(path, text);
    if *tagged {
        match write(&format!("{action} {tag}")) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                *tagged = false;
                write(action)
            }
            r => r,
        }
    } else {
        write(action)
    }
}

/// Queue a synthetic event for a device straight into the daemon. It has no SEQNUM: it is
/// queued behind what the daemon has already released and never waits on a gap.
fn inject(dir: &Path, d: &sysfs::Device, action: &str, tag: &str) -> Result<(), Fail> {
    let vars =
        sysfs::device_vars(&d.dir).map_err(|e| Fail(format!("{}: {e}", d.dir.display()), 1))?;
    let mut body = String::from("inject\n");
    let mut push = |k: &str, v: &str| {
        body.push_str(&format!("{k}={}\n", control::escape(v.as_bytes())));
    };
    push("ACTION", action);
    push("DEVPATH", &d.devpath);
    if let Some(s) = &d.subsystem {
        push("SUBSYSTEM", s);
    }
    // Our own tag replaces any the device's uevent file shows.
    for (k, v) in vars.iter().filter(|(k, _)| k != "SYNTH_UUID") {
        push(k, v);
    }
    push("SYNTH_UUID", tag);
    body.push('\n');
    let (_, end) = Client::request(dir, &body)?.finish()?;
    match end {
        End::Ok(_) => Ok(()),
        End::Error(e) => Err(Fail(format!("{}: {e}", d.devpath), 1)),
    }
}

fn timeline(dir: &Path, mut it: Args) -> Result<(), Fail> {
    let mut svg: Option<PathBuf> = None;
    while let Some((flag, v)) = it.flag() {
        match flag {
            "--svg" => svg = Some(it.value(flag, v)?.into()),
            other => return Err(usage(format!("timeline: unknown option {other:?}"))),
        }
    }
    let (lines, end) = control::call(dir, "timeline")?;
    if let End::Error(e) = end {
        return Err(Fail(e, 1));
    }
    let spans = crate::timeline::parse(&lines);
    match svg {
        Some(path) => {
            std::fs::write(&path, crate::timeline::svg(&spans))
                .map_err(|e| Fail(format!("{}: {e}", path.display()), 1))?;
            println!("{}: {} entries", path.display(), spans.len());
        }
        None => print!("{}", crate::timeline::table(&spans)),
    }
    Ok(())
}

fn helper(dir: &Path, mut it: Args) -> Result<(), Fail> {
    let action = it
        .next()
        .ok_or_else(|| usage("usage: helper status|enable [PATH]|disable"))?;
    let mut path: Option<String> = None;
    let mut file: Option<PathBuf> = None;
    while let Some((arg, v)) = it.flag() {
        match arg {
            "--file" => file = Some(it.value(arg, v)?.into()),
            p if action == "enable" && path.is_none() && !p.starts_with('-') => {
                path = Some(p.to_owned())
            }
            other => return Err(usage(format!("helper: unexpected argument {other:?}"))),
        }
    }
    let file = file.or_else(helper::knob_file);
    if action == "status" {
        // Always succeeds: a kernel without the setting is a fact to report, not a failure.
        let daemon = helper::daemon_sources(dir);
        for line in helper::status_report(file.as_deref(), daemon) {
            println!("{line}");
        }
        return Ok(());
    }
    let file = file.ok_or_else(|| {
        Fail(
            "this kernel has no uevent helper (built without CONFIG_UEVENT_HELPER): \
             run hotplugd with the netlink source instead (sources = \"auto\", the default)"
                .into(),
            1,
        )
    })?;
    let fail = |e: std::io::Error| Fail(format!("{}: {e}", file.display()), 1);
    match action {
        "enable" => {
            let shim = match path {
                Some(p) => PathBuf::from(p),
                None => helper::our_shim()
                    .filter(|p| p.is_file())
                    .unwrap_or_else(|| PathBuf::from("/sbin/hotplug")),
            };
            if !shim.is_absolute() || !shim.is_file() {
                return Err(Fail(
                    format!("{}: not an absolute path to the shim", shim.display()),
                    1,
                ));
            }
            std::fs::write(&file, format!("{}\n", shim.display())).map_err(fail)?;
            println!("{}: {}", file.display(), shim.display());
            Ok(())
        }
        "disable" => {
            std::fs::write(&file, "\n").map_err(fail)?;
            println!("{}: no helper", file.display());
            Ok(())
        }
        other => Err(usage(format!("helper: unknown action {other:?}"))),
    }
}

fn test(mut it: Args) -> Result<(), Fail> {
    let mut config: Option<PathBuf> = None;
    let mut vars: Vec<(String, String)> = Vec::new();
    while let Some((arg, v)) = it.flag() {
        match arg {
            "--config" | "-c" => config = Some(it.value(arg, v)?.into()),
            kv => match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() && !k.starts_with('-') => {
                    vars.push((k.into(), v.into()))
                }
                _ => return Err(usage(format!("test: {kv:?} is not KEY=VALUE"))),
            },
        }
    }
    let config = Config::load(config.as_deref()).map_err(|e| Fail(e.to_string(), 1))?;
    let sub = vars
        .iter()
        .find(|(k, _)| k == "SUBSYSTEM")
        .map_or("", |(_, v)| v.as_str());
    let ev = Event::from_vars(
        sub.as_bytes(),
        vars.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
    )
    .map_err(|e| usage(format!("test: not an event: {e}")))?;
    let from = config
        .path
        .as_ref()
        .map_or("the embedded default".into(), |p| p.display().to_string());
    println!("event: {}", ev.summary());
    println!("config: {from} ({} rules)", config.rules.len());
    let jobs = config.rules.plan(&ev);
    if jobs.is_empty() {
        println!("no rule matches");
    }
    for job in jobs {
        let argv: Vec<String> = job
            .argv
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        let timeout = job
            .timeout
            .unwrap_or(config.daemon.handler_timeout)
            .as_secs_f64();
        println!("rule {}: {} (timeout {timeout}s)", job.rule, argv.join(" "));
    }
    Ok(())
}

/// Quote for display only (argv never goes through a shell).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.,:=+@%".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
