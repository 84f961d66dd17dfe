//! `hotplugd`: the serializing daemon. Parses arguments, sets up logging, calls the library.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use hotplugd::config::Config;
use hotplugd::daemon::{self, Options};
use hotplugd::holder::{self, Held, HOLDER_ARG};
use hotplugd::spool::{DEFAULT_RUNTIME_DIR, RUNTIME_DIR_ENV};

const USAGE: &str = "\
usage: hotplugd [--config FILE] [--runtime-dir DIR] [--log-level LEVEL]
                [--log-format syslog|plain] [--ready-fd N]
       hotplugd --check-config [--config FILE]
       hotplugd --demo
       hotplugd --version | --help

Receives the kernel's hotplug events from the `hotplug` shim through DIR/events, orders
them by SEQNUM and runs the matching handler rules one at a time. Stays in the
foreground and logs to stderr.

  --config FILE       config file (default /etc/hotplugd/hotplugd.toml if it exists,
                      else the embedded default: log every event, run nothing)
  --runtime-dir DIR   runtime directory (default /run/hotplugd, or $HOTPLUGD_RUNTIME_DIR)
  --log-level LEVEL   error, warn, info (default), debug, trace; RUST_LOG works too
  --log-format FMT    syslog: each line starts with its priority (<3> error, <4> warn,
                      <6> info, <7> debug) and has no timestamp, for journald and
                      syslog collectors; plain: [TIME LEVEL] message. Default: syslog
                      when JOURNAL_STREAM names our stderr (started by systemd), else
                      plain
  --check-config      validate the config and rules, print FILE:LINE:COL: errors
  --demo              replay this machine's devices from /sys through the shim into a
                      daemon in a temporary dir (harmless echo rules), show them flow,
                      print a summary, clean up; no root needed
  --ready-fd N        write a newline to fd N once ready (s6 readiness); with
                      NOTIFY_SOCKET set, systemd is told READY=1 as well

Socket activation: a FIFO and a listening Unix socket passed with LISTEN_FDS
(systemd ListenFIFO= and ListenStream=) are used instead of DIR/events and
DIR/control; the FIFO, and the events buffered in it, then outlive a restart.

Signals: SIGHUP reloads the config (a broken one is rejected, the old rules stay);
SIGTERM/SIGINT stop intake, let the running handler finish, spool queued events, exit 0.

Exit status: 0 ok; 1 config error or the daemon could not start; 2 usage.";

struct Args {
    config: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    check: bool,
    demo: bool,
    ready_fd: Option<i32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        runtime_dir: None,
        log_level: None,
        log_format: None,
        check: false,
        demo: false,
        ready_fd: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy().into_owned();
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<std::ffi::OsString, String> {
            match &inline {
                Some(v) => Ok(v.into()),
                None => it.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--config" | "-c" => args.config = Some(value("--config")?.into()),
            "--runtime-dir" => args.runtime_dir = Some(value("--runtime-dir")?.into()),
            "--log-level" => {
                args.log_level = Some(value("--log-level")?.to_string_lossy().into_owned())
            }
            "--log-format" => {
                let v = value("--log-format")?;
                args.log_format = Some(match v.to_string_lossy().as_ref() {
                    "syslog" => LogFormat::Syslog,
                    "plain" => LogFormat::Plain,
                    other => return Err(format!("--log-format: {other:?} is not syslog or plain")),
                });
            }
            "--check-config" => args.check = true,
            "--demo" => args.demo = true,
            "--ready-fd" => {
                let v = value("--ready-fd")?;
                let v = v.to_string_lossy();
                args.ready_fd = Some(
                    v.parse()
                        .ok()
                        .filter(|fd: &i32| *fd > 2)
                        .ok_or_else(|| format!("--ready-fd: {v:?} is not an fd above 2"))?,
                );
            }
            "--version" | "-V" => {
                println!("hotplugd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// `[TIME LEVEL] message`, for a terminal or a plain log file.
    Plain,
    /// `<N>message`: journald and syslog collectors take the priority from the prefix and
    /// stamp the time themselves, so `journalctl -p warning` shows our warnings.
    Syslog,
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` is `DEV:INODE`
/// of that stream (systemd.exec(5)), which a child whose stderr was redirected inherits
/// without being connected to the journal any more; comparing with fstat(2) tells.
fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let var = var.to_string_lossy();
    let Some((dev, ino)) = var.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // MetadataExt gives u64 on every target, whatever width st_dev and st_ino have.
    use std::os::unix::fs::MetadataExt;
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(stderr).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// sd-daemon(3)'s levels: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// env_logger filters nothing itself (unless RUST_LOG asks for per-module filters); the
/// level lives in `log`'s max level, which `hotplugctl log-level` changes at run time.
fn init_logging(level: Option<&str>, format: Option<LogFormat>) -> Result<(), String> {
    let mut level_filter = log::LevelFilter::Info;
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
        level_filter = log::LevelFilter::Trace;
    }
    if let Some(level) = level {
        level_filter = level
            .parse()
            .map_err(|_| format!("--log-level: unknown level {level:?}"))?;
    }
    let format = format.unwrap_or(if stderr_is_journal() {
        LogFormat::Syslog
    } else {
        LogFormat::Plain
    });
    if format == LogFormat::Syslog {
        builder.format(|buf, record| {
            use std::io::Write;
            let p = syslog_priority(record.level());
            // journald reads each line as its own entry: every line carries the prefix.
            let text = record.args().to_string();
            for line in text.split('\n') {
                writeln!(buf, "<{p}>{line}")?;
            }
            Ok(())
        });
    }
    builder.format_target(false).init();
    log::set_max_level(level_filter);
    Ok(())
}

/// `hotplugd --fifo-holder DIR`, started by the daemon (see `hotplugd::holder`): before
/// logging or config, so the holder is nothing but its fds.
fn hold_fifo(mut rest: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let (Some(dir), None) = (rest.next(), rest.next()) else {
        eprintln!("usage: hotplugd {HOLDER_ARG} DIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match holder::hold(&dir) {
        Ok(Held::Done) => ExitCode::SUCCESS,
        Ok(Held::Busy(pid)) => {
            eprintln!(
                "hotplugd {HOLDER_ARG}: {} is held by another holder{} already",
                dir.join(hotplugd::spool::FIFO).display(),
                pid.map_or(String::new(), |p| format!(" (pid {p})"))
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hotplugd {HOLDER_ARG}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `hotplugd --listen-uevents MASK`: the real-kernel suite's rebroadcast listener (see
/// `hotplugd::broadcast::listen`). Undocumented: a test tool, not a user's.
fn listen_uevents(mut rest: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let arg = hotplugd::broadcast::LISTEN_ARG;
    let mask = match (rest.next(), rest.next()) {
        (Some(m), None) => m.to_str().and_then(|m| m.parse::<u32>().ok()),
        _ => None,
    };
    let Some(mask) = mask else {
        eprintln!("usage: hotplugd {arg} MASK");
        return ExitCode::from(2);
    };
    match hotplugd::broadcast::listen(mask, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotplugd {arg} {mask}: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args_os().skip(1);
    let first = argv.next();
    if first.as_ref().is_some_and(|a| a == HOLDER_ARG) {
        return hold_fifo(argv);
    }
    if first.is_some_and(|a| a == hotplugd::broadcast::LISTEN_ARG) {
        return listen_uevents(argv);
    }
    let args = match parse_args()
        .and_then(|a| init_logging(a.log_level.as_deref(), a.log_format).map(|_| a))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hotplugd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.demo {
        return match hotplugd::demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hotplugd --demo: {e}");
                ExitCode::from(1)
            }
        };
    }
    if args.check {
        return match Config::load(args.config.as_deref()) {
            Ok(c) => {
                let from = c
                    .path
                    .as_ref()
                    .map_or("the embedded default".into(), |p| p.display().to_string());
                // Which files made the rules, so an override or a mask is never a guess.
                for f in &c.rule_files {
                    let state = if f.masked { "masked" } else { "read" };
                    println!("{state} {}", f.path.display());
                    for o in &f.overridden {
                        println!("overridden {} (by {})", o.display(), f.path.display());
                    }
                }
                println!("{from}: ok, {} rules", c.rules.len());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        };
    }
    let runtime_dir = args
        .runtime_dir
        .or_else(|| std::env::var_os(RUNTIME_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    // The daemon chdirs to / so handlers start there: make relative paths absolute first.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let opts = Options {
        config: args.config.map(absolute),
        runtime_dir: absolute(runtime_dir),
        ready_fd: args.ready_fd,
    };
    match daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
