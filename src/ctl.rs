//! `hotplugctl`, the admin's tool: argument parsing (clap) and each command, over the
//! control socket's client half ([`crate::control`]). Exit codes: 0 ok; 1 failure or
//! timeout (the message names the socket path and the cause); 2 usage; 3 no daemon at the
//! socket ([`EXIT_NOT_RUNNING`]), so an init script can tell "not started yet" from "slow".

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::Config;
use crate::control::{self, Client, ClientError, End};
use crate::event::Event;
use crate::helper;
use crate::import;
use crate::rules::glob_match;
use crate::spool::{DEFAULT_RUNTIME_DIR, RUNTIME_DIR_ENV};
use crate::status::{Pending, Status};
use crate::sysfs;

/// The exit status when no daemon listens at the control socket.
pub const EXIT_NOT_RUNNING: u8 = 3;

const AFTER_HELP: &str = "\
The runtime dir defaults to $HOTPLUGD_RUNTIME_DIR, else /run/hotplugd.
Durations: 500ms, 2s, 2m, 1h, or plain seconds (5, 1.5).
Exit status: 0 ok; 1 failure or timeout; 2 usage; 3 daemon not running.
See hotplugctl(8).";

/// Control and watch the hotplugd event dispatcher.
#[derive(Debug, Parser)]
#[command(
    name = "hotplugctl",
    version,
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
struct Cli {
    /// The daemon's runtime directory [default: $HOTPLUGD_RUNTIME_DIR, else /run/hotplugd]
    #[arg(long, global = true, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Print JSON (status, pending, monitor, test, timeline)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the daemon's state and counters
    Status,
    /// Stream events as they are queued and once processed, or handler outcomes
    Monitor(MonitorArgs),
    /// Wait until every event up to the kernel's SEQNUM is handled
    Settle(SettleArgs),
    /// Reload the configuration and rules; errors are printed
    Reload,
    /// Remove a queued event before it runs
    Recall {
        /// The event's SEQNUM
        #[arg(value_parser = parse_seqnum)]
        seqnum: u64,
    },
    /// Stop starting handlers (the queue keeps filling)
    Pause,
    /// Start handlers again after pause
    Resume,
    /// Set the daemon's log level
    LogLevel {
        /// The most verbose level to log
        #[arg(value_parser = ["off", "error", "warn", "info", "debug", "trace"])]
        level: String,
    },
    /// Coldplug: have an event sent for every device that exists
    Trigger(TriggerArgs),
    /// Show which rules match an event and what each would run; needs no daemon
    Test(TestArgs),
    /// Show a device: its kernel variables, database entry, links and rules; needs no daemon
    Info(InfoArgs),
    /// Wait until a device's latest event has been handled
    Wait(WaitArgs),
    /// List the events not yet handled
    Pending,
    /// Show the handler runs and gap waits the daemon remembers
    Timeline {
        /// Write an SVG chart to FILE instead of a table
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Read or set the kernel's uevent helper; needs no daemon
    Helper(HelperArgs),
    /// Translate a udev rules file into TOML rules on standard output; needs no daemon
    ImportUdev(ImportUdevArgs),
    /// Translate an mdev.conf into TOML rules on standard output; needs no daemon
    ImportMdev(ImportMdevArgs),
    /// Print a shell completion script (make install runs this)
    #[command(hide = true)]
    Completions {
        /// The shell to write it for
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct MonitorArgs {
    /// After each event, every variable as KEY=VALUE and an empty line
    #[arg(long, short = 'p', visible_alias = "property")]
    env: bool,
    /// Only events of this SUBSYSTEM (repeatable: any of them)
    #[arg(
        long,
        short = 's',
        visible_alias = "subsystem-match",
        value_name = "NAME"
    )]
    subsystem: Vec<String>,
    /// Events as they are queued, before any handler ran (udevadm's KERNEL events)
    #[arg(long, short = 'k', visible_alias = "kernel")]
    queued: bool,
    /// Events once processed: after their handlers, with what importers added (UDEV events)
    #[arg(long, short = 'u', visible_alias = "udev")]
    processed: bool,
    /// Show each handler run as it ends, instead of events
    #[arg(long, conflicts_with_all = ["queued", "processed"])]
    handled: bool,
}

#[derive(Debug, clap::Args)]
struct SettleArgs {
    /// Give up after this long and list what is pending
    #[arg(long, short = 't', value_name = "DURATION", default_value = "120", value_parser = parse_timeout)]
    timeout: Duration,
    /// Wait for this SEQNUM instead of the kernel's current one
    #[arg(long, value_name = "N", value_parser = parse_seqnum)]
    seq: Option<u64>,
    /// Where to read the kernel's current SEQNUM
    #[arg(long, value_name = "PATH", default_value = sysfs::SEQNUM_FILE)]
    seqnum_file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Action {
    Add,
    Change,
    Remove,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Change => "change",
            Action::Remove => "remove",
        }
    }
}

#[derive(Debug, clap::Args)]
struct TriggerArgs {
    /// The action to send
    #[arg(long, short = 'c', value_enum, default_value = "add")]
    action: Action,
    /// Only devices whose subsystem matches GLOB (repeatable: any of them)
    #[arg(long, short = 's', value_name = "GLOB")]
    subsystem_match: Vec<String>,
    /// Leave out devices whose subsystem matches GLOB (repeatable)
    #[arg(long, short = 'S', value_name = "GLOB")]
    subsystem_nomatch: Vec<String>,
    /// The sysfs tree to read
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs: PathBuf,
    /// Only list the devices
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Then wait until the events this trigger caused are handled
    #[arg(long, short = 'w')]
    settle: bool,
    /// Queue the events straight into the daemon instead of asking the kernel
    #[arg(long)]
    synthesize: bool,
    /// How long --settle waits
    #[arg(long, short = 't', value_name = "DURATION", default_value = "120", value_parser = parse_timeout)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// The configuration to load [default: /etc/hotplugd/hotplugd.toml if it exists, else
    /// the embedded one]
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// A device (a sysfs path, a /dev node or a DEVPATH) whose event to build from its
    /// uevent file, then variables to add or override; or only the event's variables
    /// (ACTION and DEVPATH required). Values are bytes, UTF-8 or not
    #[arg(value_name = "DEVICE|KEY=VALUE", required = true)]
    vars: Vec<OsString>,
    /// The ACTION of a DEVICE's event
    #[arg(long, short = 'a', value_name = "ACTION", default_value = "add")]
    action: String,
    /// The sysfs tree DEVICE is in and rules read [default: the config's sysfs_dir]
    #[arg(long, value_name = "DIR")]
    sys_dir: Option<PathBuf>,
    /// Run the importer rules too (the only thing test ever runs)
    #[arg(long)]
    import: bool,
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// A sysfs path, a /dev node or a DEVPATH (/devices/...)
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// Print the attributes of the device and its parents as rule match keys
    #[arg(long, short = 'a')]
    attribute_walk: bool,
    /// The sysfs tree to read
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sys_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct WaitArgs {
    /// A sysfs path, a /dev node or a DEVPATH (/devices/...)
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// Give up after this long
    #[arg(long, short = 't', value_name = "DURATION", default_value = "120", value_parser = parse_timeout)]
    timeout: Duration,
    /// The sysfs tree to resolve DEVICE in (a DEVPATH is taken as it is)
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sys_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ImportUdevArgs {
    /// The udev rules file
    #[arg(value_name = "FILE.rules")]
    file: PathBuf,
    /// Approximate TAG+="uaccess" by giving GROUP read-write access (else such lines are
    /// listed as not translated)
    #[arg(long, value_name = "GROUP")]
    uaccess_group: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ImportMdevArgs {
    /// The mdev.conf file
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct HelperArgs {
    #[command(subcommand)]
    action: HelperAction,
    /// Read or write FILE instead of the kernel's setting (for tests)
    #[arg(long, global = true, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
enum HelperAction {
    /// Print the helper the kernel runs for every event
    Status,
    /// Make the kernel run the hotplug shim for every event
    Enable {
        /// The shim, an absolute path [default: hotplug beside hotplugctl, else /sbin/hotplug]
        path: Option<PathBuf>,
    },
    /// Make the kernel run no helper
    Disable,
}

/// A timeout: `500ms`, `2s`, `2m`, `1h` (as in the config file), or plain seconds, which
/// may have a fraction (`1.5`) or be 0.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    if let Some(secs) = s.parse::<f64>().ok().filter(|v| {
        v.is_finite() && *v >= 0.0 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    }) {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    crate::config::parse_duration(s)
}

fn parse_seqnum(s: &str) -> Result<u64, String> {
    crate::event::parse_seqnum(s.as_bytes()).ok_or_else(|| format!("bad SEQNUM {s:?}"))
}

/// A failure to report: the message and the exit code.
struct Fail(String, u8);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        let code = match e {
            ClientError::NotRunning(_) => EXIT_NOT_RUNNING,
            _ => 1,
        };
        Fail(e.to_string(), code)
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(msg.into(), 2)
}

/// Entry point for the binary.
pub fn main(args: impl Iterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("hotplugctl: {msg}");
            }
            if code == 2 {
                eprintln!("For more information, try 'hotplugctl --help'.");
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    let dir = cli
        .runtime_dir
        .or_else(|| std::env::var_os(RUNTIME_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    let json = cli.json;
    let no_json = |name: &str| {
        if json {
            Err(usage(format!("{name} has no --json output")))
        } else {
            Ok(())
        }
    };
    match cli.cmd {
        Cmd::Status => status(&dir, json),
        Cmd::Monitor(a) => monitor(&dir, a, json),
        Cmd::Settle(a) => {
            no_json("settle")?;
            settle_cmd(&dir, a)
        }
        Cmd::Reload => no_json("reload").and_then(|_| one_shot(&dir, "reload")),
        Cmd::Pause => no_json("pause").and_then(|_| one_shot(&dir, "pause")),
        Cmd::Resume => no_json("resume").and_then(|_| one_shot(&dir, "resume")),
        Cmd::Pending => pending(&dir, json),
        Cmd::Recall { seqnum } => {
            no_json("recall").and_then(|_| one_shot(&dir, &format!("recall {seqnum}")))
        }
        Cmd::LogLevel { level } => {
            no_json("log-level").and_then(|_| one_shot(&dir, &format!("log-level {level}")))
        }
        Cmd::Trigger(a) => {
            no_json("trigger")?;
            trigger(&dir, a)
        }
        Cmd::Test(a) => test(a, json),
        Cmd::Info(a) => {
            if a.attribute_walk {
                no_json("info --attribute-walk")?;
            }
            info(&dir, a, json)
        }
        Cmd::Wait(a) => {
            no_json("wait")?;
            wait_device(&dir, a)
        }
        Cmd::Helper(a) => {
            no_json("helper")?;
            helper(&dir, a)
        }
        Cmd::Timeline { svg } => timeline(&dir, svg, json),
        Cmd::ImportUdev(a) => {
            no_json("import-udev")?;
            if let Some(g) = a.uaccess_group.as_deref().filter(|g| !import::plain_id(g)) {
                return Err(usage(format!("--uaccess-group {g:?} is not a group name")));
            }
            let opts = import::udev::Options {
                uaccess_group: a.uaccess_group,
            };
            import_file(&a.file, "udev rules", |src, stem| {
                import::udev::translate(src, stem, &opts)
            })
        }
        Cmd::ImportMdev(a) => {
            no_json("import-mdev")?;
            import_file(&a.file, "mdev.conf", import::mdev::translate)
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "hotplugctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// Read a file, print its rules as TOML and list the lines left out on stderr; exit 1
/// when any was, so a script notices a partial translation.
fn import_file(
    path: &Path,
    kind: &str,
    translate: impl FnOnce(&str, &str) -> import::Import,
) -> Result<(), Fail> {
    let bytes =
        std::fs::read(path).map_err(|e| Fail(format!("cannot read {}: {e}", path.display()), 1))?;
    // A stray Latin-1 byte in a comment should not lose the whole file.
    let src = String::from_utf8_lossy(&bytes);
    let mut imp = translate(&src, &import::stem(path));
    for w in imp.check_ids(Path::new("/etc/passwd"), Path::new("/etc/group")) {
        eprintln!("hotplugctl: warning: {w}");
    }
    let shown = path.display().to_string();
    let mut out = std::io::stdout().lock();
    out.write_all(imp.render(&shown, kind).as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Fail(format!("standard output: {e}"), 1))?;
    if imp.skipped.is_empty() {
        return Ok(());
    }
    eprint!("{}", imp.report(&shown));
    Err(Fail(
        format!(
            "{} of {shown}'s lines not translated (listed at the top of the output)",
            imp.skipped.len()
        ),
        1,
    ))
}

/// Print one value as a line of JSON.
fn print_json(value: &impl Serialize) -> Result<(), Fail> {
    let text = serde_json::to_string(value).map_err(|e| Fail(format!("JSON: {e}"), 1))?;
    println!("{text}");
    Ok(())
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

fn status(dir: &Path, json: bool) -> Result<(), Fail> {
    let (lines, end) = control::call(dir, "status")?;
    if let End::Error(e) = end {
        return Err(Fail(e, 1));
    }
    if json {
        return print_json(&Status::parse(&lines).map_err(|e| Fail(e, 1))?);
    }
    for l in &lines {
        let (k, v) = l.split_once(' ').unwrap_or((l, ""));
        println!("{:<18} {v}", format!("{}:", k.replace('_', " ")));
    }
    Ok(())
}

fn pending(dir: &Path, json: bool) -> Result<(), Fail> {
    if !json {
        return one_shot(dir, "pending");
    }
    let (lines, end) = control::call(dir, "pending json")?;
    if let End::Error(e) = end {
        return Err(Fail(e, 1));
    }
    let text = lines.first().map_or("", String::as_str);
    let pending: Pending = serde_json::from_str(text)
        .map_err(|e| Fail(format!("pending: the daemon's reply is not one: {e}"), 1))?;
    print_json(&pending)
}

/// Seconds since the Unix epoch, to the microsecond: when hotplugctl read the line.
fn now_epoch() -> f64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_micros() as f64) / 1e6
}

/// `monitor --json`: one event.
#[derive(Debug, Serialize)]
struct MonitorEvent {
    timestamp: f64,
    /// `queued` or `processed`.
    kind: String,
    seqnum: Option<u64>,
    action: String,
    devpath: String,
    subsystem: String,
    /// Every variable, with `--env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<Vec<(String, String)>>,
}

/// `monitor --json`: processed events this monitor was not sent, as it did not keep up.
#[derive(Debug, Serialize)]
struct MonitorLost {
    timestamp: f64,
    /// Always `lost`.
    kind: &'static str,
    lost: u64,
}

/// `monitor --handled --json`: one handler run.
#[derive(Debug, Serialize)]
struct MonitorRun {
    timestamp: f64,
    seqnum: Option<u64>,
    rule: String,
    outcome: String,
    duration_ms: f64,
}

/// The daemon's `SEQNUM RULE OUTCOME DURATIONms` line.
fn parse_run(line: &str) -> Option<MonitorRun> {
    let w: Vec<&str> = line.split(' ').collect();
    let [seq, rule, outcome, ms] = w[..] else {
        return None;
    };
    Some(MonitorRun {
        timestamp: now_epoch(),
        seqnum: match seq {
            "-" => None,
            s => Some(crate::event::parse_seqnum(s.as_bytes())?),
        },
        rule: String::from_utf8(control::unescape(rule)?).ok()?,
        outcome: outcome.replace('_', " "),
        duration_ms: ms.strip_suffix("ms")?.parse().ok()?,
    })
}

/// One event as the daemon sends it with `env`: its kind (`QUEUED` or `PROCESSED`), its
/// variables in the escaped form.
fn monitor_event(kind: &str, vars: Vec<(String, String)>, with_env: bool) -> MonitorEvent {
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    MonitorEvent {
        timestamp: now_epoch(),
        kind: kind.to_ascii_lowercase(),
        seqnum: crate::event::parse_seqnum(get("SEQNUM").as_bytes()),
        action: get("ACTION"),
        devpath: get("DEVPATH"),
        subsystem: get("SUBSYSTEM"),
        env: None,
    }
    .with_env(with_env.then_some(vars))
}

impl MonitorEvent {
    fn with_env(mut self, env: Option<Vec<(String, String)>>) -> MonitorEvent {
        self.env = env;
        self
    }
}

fn monitor(dir: &Path, args: MonitorArgs, json: bool) -> Result<(), Fail> {
    let MonitorArgs {
        env,
        subsystem,
        queued,
        processed,
        handled,
    } = args;
    let mut req = String::from("monitor");
    // JSON is built from the variables, so it always asks for them.
    if env || (json && !handled) {
        req.push_str(" env");
    }
    if handled {
        req.push_str(" handled");
    } else {
        // Neither picked: both, as udevadm monitor shows KERNEL and UDEV events.
        if queued || !processed {
            req.push_str(" queued");
        }
        if processed || !queued {
            req.push_str(" processed");
        }
    }
    for s in &subsystem {
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(usage(format!("--subsystem: {s:?} is not a subsystem name")));
        }
        req.push_str(&format!(" subsystem={s}"));
    }
    let mut client = Client::request(dir, &format!("{req}\n"))?;
    let stdout = std::io::stdout();
    // With env: the summary line (its first word is the kind), KEY=VALUE lines, an
    // empty line.
    let mut block: Option<(String, Vec<(String, String)>)> = None;
    loop {
        let line = match client.next_line()? {
            Ok(line) => line,
            Err(End::Ok(_)) => return Ok(()),
            Err(End::Error(e)) => return Err(Fail(e, 1)),
        };
        let mut out: Vec<u8> = Vec::new();
        if handled {
            if json {
                let run = parse_run(&line)
                    .ok_or_else(|| Fail(format!("monitor: unexpected line {line:?}"), 1))?;
                out = serde_json::to_vec(&run).map_err(|e| Fail(format!("JSON: {e}"), 1))?;
            } else {
                out.extend_from_slice(line.as_bytes());
            }
            out.push(b'\n');
        } else if let (None, Some(n)) = (&block, line.strip_prefix("LOST ")) {
            if json {
                let lost = MonitorLost {
                    timestamp: now_epoch(),
                    kind: "lost",
                    lost: n
                        .parse()
                        .map_err(|_| Fail(format!("monitor: unexpected line {line:?}"), 1))?,
                };
                out = serde_json::to_vec(&lost).map_err(|e| Fail(format!("JSON: {e}"), 1))?;
            } else {
                out.extend_from_slice(line.as_bytes());
            }
            out.push(b'\n');
        } else if !(env || json) {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        } else {
            match (&mut block, line.split_once('=')) {
                (None, _) => {
                    let kind = line.split(' ').next().unwrap_or_default();
                    block = Some((kind.to_owned(), Vec::new()));
                    if !json {
                        out.extend_from_slice(line.as_bytes());
                        out.push(b'\n');
                    }
                }
                (Some((_, vars)), Some((k, v))) if !line.is_empty() => {
                    if !json {
                        // The value's bytes as the event has them, UTF-8 or not.
                        let raw = control::unescape(v)
                            .ok_or_else(|| Fail(format!("monitor: bad escape in {line:?}"), 1))?;
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(&raw);
                        out.push(b'\n');
                    }
                    vars.push((k.to_owned(), v.to_owned()));
                }
                (Some(_), _) => {
                    let (kind, vars) = block.take().unwrap_or_default();
                    if json {
                        out = serde_json::to_vec(&monitor_event(&kind, vars, env))
                            .map_err(|e| Fail(format!("JSON: {e}"), 1))?;
                    }
                    out.push(b'\n');
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        let mut lock = stdout.lock();
        // A closed pipe (`| head`) ends the monitor quietly.
        if lock.write_all(&out).and_then(|_| lock.flush()).is_err() {
            return Ok(());
        }
    }
}

fn settle_cmd(dir: &Path, args: SettleArgs) -> Result<(), Fail> {
    let SettleArgs {
        timeout,
        seq,
        seqnum_file,
    } = args;
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

fn trigger(dir: &Path, args: TriggerArgs) -> Result<(), Fail> {
    let TriggerArgs {
        action,
        subsystem_match: matches,
        subsystem_nomatch: nomatches,
        sysfs: sysfs_root,
        dry_run: dry,
        settle: wait,
        synthesize: synth,
        timeout,
    } = args;
    let action = action.as_str();
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
            // Its own exit code: 3 when the daemon went away, 1 otherwise.
            inject(dir, d, action, &tag)?;
            sent += 1;
            continue;
        }
        let path = d.dir.join("uevent");
        match write_uevent(&path, action, &tag, &mut tagged) {
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
    await_end(&mut client, || {
        format!(
            "trigger --settle: timed out after {:.1} s",
            timeout.as_secs_f64()
        )
    })?;
    result
}

/// Read a reply to its end: `Ok` once the daemon says so, its error as exit 1, and the
/// client's timeout as exit 1 with `timed_out`'s message.
fn await_end(client: &mut Client, timed_out: impl FnOnce() -> String) -> Result<(), Fail> {
    loop {
        match client.next_line() {
            Ok(Ok(_)) => {}
            Ok(Err(End::Ok(_))) => return Ok(()),
            Ok(Err(End::Error(e))) => return Err(Fail(e, 1)),
            Err(ClientError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Fail(timed_out(), 1))
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

fn timeline(dir: &Path, svg: Option<PathBuf>, json: bool) -> Result<(), Fail> {
    if json && svg.is_some() {
        return Err(usage("timeline: --svg and --json exclude each other"));
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
        None if json => print_json(&spans)?,
        None => print!("{}", crate::timeline::table(&spans)),
    }
    Ok(())
}

fn helper(dir: &Path, args: HelperArgs) -> Result<(), Fail> {
    let HelperArgs { action, file } = args;
    let file = file.or_else(helper::knob_file);
    if let HelperAction::Status = action {
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
        HelperAction::Status => Ok(()),
        HelperAction::Enable { path } => {
            let shim = match path {
                Some(p) => p,
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
            let mut line = shim.as_os_str().as_bytes().to_vec();
            line.push(b'\n');
            std::fs::write(&file, line).map_err(fail)?;
            println!("{}: {}", file.display(), shim.display());
            Ok(())
        }
        HelperAction::Disable => {
            std::fs::write(&file, "\n").map_err(fail)?;
            println!("{}: no helper", file.display());
            Ok(())
        }
    }
}

/// `test --json`: the event, the configuration, and what would run.
#[derive(Debug, Serialize)]
struct TestResult {
    event: TestEvent,
    /// The file loaded, or null for the embedded default.
    config: Option<String>,
    rules: usize,
    jobs: Vec<TestJob>,
    /// With a DEVICE: each rule looked at, key by key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checks: Vec<TestRule>,
}

#[derive(Debug, Serialize)]
struct TestRule {
    rule: String,
    matched: bool,
    keys: Vec<TestKey>,
}

/// Values escaped as in [`TestEvent`]; `seen` null for a missing variable or file.
#[derive(Debug, Serialize)]
struct TestKey {
    key: String,
    seen: Option<String>,
    matched: bool,
    at: Option<String>,
}

/// Values in the control protocol's escaped form, so bytes that are not UTF-8 survive.
#[derive(Debug, Serialize)]
struct TestEvent {
    seqnum: Option<u64>,
    action: String,
    devpath: String,
    subsystem: String,
}

#[derive(Debug, Serialize)]
struct TestJob {
    rule: String,
    argv: Vec<String>,
    timeout_s: f64,
    /// A `background` rule: started, not waited for (when `max_background` allows).
    background: bool,
}

/// Whether a `test` argument names a device rather than a variable.
fn is_device_arg(arg: &OsString) -> bool {
    let b = arg.as_bytes();
    b.starts_with(b"/") && !b.contains(&b'=')
}

fn test(args: TestArgs, json: bool) -> Result<(), Fail> {
    let TestArgs {
        config,
        vars: mut args,
        action,
        sys_dir,
        import,
    } = args;
    let config = Config::load(config.as_deref()).map_err(|e| Fail(e.to_string(), 1))?;
    let sysfs_root = sys_dir.unwrap_or_else(|| config.daemon.sysfs_dir.clone());
    let rules = config.rules.clone().with_sysfs_dir(&sysfs_root);
    // A DEVICE first: its event's variables, then the arguments' on top.
    let mut device_vars: Vec<(String, String)> = Vec::new();
    let device = args.first().is_some_and(is_device_arg);
    if device {
        let arg = PathBuf::from(args.remove(0));
        let found = crate::device::resolve(&arg, &sysfs_root).map_err(|e| Fail(e, 1))?;
        device_vars = crate::device::event_vars(&found, &action).map_err(|e| Fail(e, 1))?;
    }
    let mut vars: Vec<(&[u8], &[u8])> = device_vars
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    for kv in &args {
        let kv = kv.as_bytes();
        match kv.iter().position(|&b| b == b'=') {
            Some(i) if i > 0 && kv[0] != b'-' => {
                vars.retain(|(k, _)| *k != &kv[..i]);
                vars.push((&kv[..i], &kv[i + 1..]))
            }
            _ => {
                return Err(usage(format!(
                    "test: {:?} is not KEY=VALUE",
                    String::from_utf8_lossy(kv)
                )))
            }
        }
    }
    let sub = vars
        .iter()
        .find(|(k, _)| *k == b"SUBSYSTEM")
        .map_or(&b""[..], |(_, v)| v);
    let mut ev = Event::from_vars(sub, vars.iter().copied())
        .map_err(|e| usage(format!("test: not an event: {e}")))?;
    if import {
        ev = run_importers(&rules, ev, config.daemon.handler_timeout);
    }
    let jobs = rules.plan(&ev);
    let checks = if device {
        rules.explain(&ev)
    } else {
        Vec::new()
    };
    let timeout = |t: Option<Duration>| t.unwrap_or(config.daemon.handler_timeout).as_secs_f64();
    let esc = control::escape;
    if json {
        return print_json(&TestResult {
            event: TestEvent {
                seqnum: ev.seqnum(),
                action: esc(ev.action()),
                devpath: esc(ev.devpath()),
                subsystem: esc(ev.subsystem()),
            },
            config: config.path.as_ref().map(|p| esc(p.as_os_str().as_bytes())),
            rules: config.rules.len(),
            jobs: jobs
                .iter()
                .map(|j| TestJob {
                    rule: j.rule.clone(),
                    argv: j.argv.iter().map(|a| esc(a.as_bytes())).collect(),
                    timeout_s: timeout(j.timeout),
                    background: j.background,
                })
                .collect(),
            checks: checks
                .iter()
                .map(|c| TestRule {
                    rule: c.rule.clone(),
                    matched: c.matched,
                    keys: c
                        .keys
                        .iter()
                        .map(|k| TestKey {
                            key: k.key.clone(),
                            seen: k.seen.as_deref().map(esc),
                            matched: k.matched,
                            at: k.at.as_deref().map(esc),
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    let from = config
        .path
        .as_ref()
        .map_or("the embedded default".into(), |p| p.display().to_string());
    // The event's and argv's bytes as they are, UTF-8 or not: argv is what would run.
    let mut out = b"event: ".to_vec();
    match ev.seqnum() {
        Some(n) => out.extend_from_slice(format!("{n} ").as_bytes()),
        None => out.extend_from_slice(b"- "),
    }
    for (part, sep) in [
        (ev.action(), &b" "[..]),
        (ev.devpath(), b" ("),
        (ev.subsystem(), b")\n"),
    ] {
        out.extend_from_slice(part);
        out.extend_from_slice(sep);
    }
    out.extend_from_slice(format!("config: {from} ({} rules)\n", config.rules.len()).as_bytes());
    for c in &checks {
        out.extend_from_slice(&check_lines(c));
    }
    let nodes = rules.node_actions(&ev);
    if let Some(n) = &nodes {
        out.extend_from_slice(&node_line(n));
    }
    if jobs.is_empty() && nodes.is_none() {
        out.extend_from_slice(b"no rule matches\n");
    }
    for job in &jobs {
        out.extend_from_slice(format!("rule {}: ", job.rule).as_bytes());
        for (i, a) in job.argv.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(&shell_quote(a.as_bytes()));
        }
        let bg = if job.background { ", background" } else { "" };
        out.extend_from_slice(format!(" (timeout {}s{bg})\n", timeout(job.timeout)).as_bytes());
    }
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Fail(format!("stdout: {e}"), 1))
}

/// `test --import`: run the importers (`import = true` rules) the event matches, in
/// order, as the daemon would, merging what each prints into the event, so the rules
/// after them are planned against the merged event. Nothing else runs.
fn run_importers(rules: &crate::rules::RuleSet, ev: Event, handler_timeout: Duration) -> Event {
    let mut ev = ev;
    let mut runner = crate::runner::Runner::new();
    let mut jobs = rules.plan(&ev);
    let mut i = 0;
    while i < jobs.len() {
        let job = &jobs[i];
        i += 1;
        if !job.import {
            continue;
        }
        let report = runner.run(&crate::runner::Spec {
            rule: &job.rule,
            argv: &job.argv,
            event: &ev,
            timeout: job.timeout.unwrap_or(handler_timeout),
            kill_grace: crate::daemon::KILL_GRACE,
            max_output_bytes: 64 * 1024,
            import: true,
        });
        let who = format!("importer {}", job.rule);
        if !report.outcome.success() {
            eprintln!("hotplugctl: {who}: {}; nothing imported", report.outcome);
            continue;
        }
        let props = crate::props::parse(&report.captured, &who);
        for (k, v) in &props {
            eprintln!(
                "imported by {}: {}={}",
                job.rule,
                String::from_utf8_lossy(k),
                control::escape(v)
            );
        }
        if props.is_empty() {
            continue;
        }
        match crate::props::merge(&ev, &props) {
            Ok(merged) => {
                let pos = job.pos;
                ev = merged;
                jobs = rules.plan_after(&ev, pos);
                i = 0;
            }
            Err(e) => eprintln!("hotplugctl: {who}: import ignored: {e}"),
        }
    }
    ev
}

/// `match NAME: yes|no` and a `  ✓ KEY VALUE` / `  ✗ KEY VALUE` line per key.
fn check_lines(c: &crate::rules::RuleCheck) -> Vec<u8> {
    let verdict = match (c.matched, c.last) {
        (true, true) => "yes (last: no rule after it is looked at)",
        (true, false) => "yes",
        (false, _) => "no",
    };
    let mut out = format!("match {}: {verdict}\n", c.rule).into_bytes();
    if c.keys.is_empty() {
        out.extend_from_slice("  ✓ (no match keys: every event)\n".as_bytes());
    }
    for k in &c.keys {
        let mark = if k.matched { "✓" } else { "✗" };
        out.extend_from_slice(format!("  {mark} {} ", k.key).as_bytes());
        match &k.seen {
            Some(v) => {
                out.push(b'"');
                out.extend_from_slice(control::escape(v).replace('"', "\\x22").as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"(missing)"),
        }
        if let Some(at) = &k.at {
            out.extend_from_slice(b" at ");
            out.extend_from_slice(at);
        }
        out.push(b'\n');
    }
    if !c.matched && c.keys.iter().all(|k| k.matched) {
        out.extend_from_slice(
            "  ✗ the parent keys hold on different parents; they must all hold on one\n".as_bytes(),
        );
    }
    out
}

/// `node: owner 0 group 6 mode 0660 links a b`: what the node keys would do (text only).
fn node_line(n: &crate::devnodes::NodeActions) -> Vec<u8> {
    let mut out = b"node:".to_vec();
    if let Some(u) = n.uid {
        out.extend_from_slice(format!(" owner {u}").as_bytes());
    }
    if let Some(g) = n.gid {
        out.extend_from_slice(format!(" group {g}").as_bytes());
    }
    if let Some(m) = n.mode {
        out.extend_from_slice(format!(" mode {m:04o}").as_bytes());
    }
    if !n.links.is_empty() {
        out.extend_from_slice(b" links");
        for (l, p) in &n.links {
            out.push(b' ');
            out.extend_from_slice(&shell_quote(l));
            if *p != 0 {
                out.extend_from_slice(format!(" (priority {p})").as_bytes());
            }
        }
    }
    out.push(b'\n');
    out
}

/// Quote for display only (argv never goes through a shell).
fn shell_quote(s: &[u8]) -> Vec<u8> {
    if !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.,:=+@%".contains(b))
    {
        s.to_vec()
    } else {
        let mut out = vec![b'\''];
        for &b in s {
            if b == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(b);
            }
        }
        out.push(b'\'');
        out
    }
}

/// `info --json`.
#[derive(Debug, Serialize)]
struct InfoReport {
    devpath: String,
    syspath: String,
    /// The event's variables from the device's uevent file, DEVPATH and SUBSYSTEM first.
    kernel: Vec<(String, String)>,
    /// Its database entry, if the daemon keeps one for it.
    db: Option<crate::device::DbEntry>,
}

fn info(dir: &Path, args: InfoArgs, json: bool) -> Result<(), Fail> {
    let InfoArgs {
        device,
        attribute_walk,
        sys_dir,
    } = args;
    let found = crate::device::resolve(&device, &sys_dir).map_err(|e| Fail(e, 1))?;
    if attribute_walk {
        print!("{}", crate::device::attribute_walk(&found));
        return Ok(());
    }
    let mut kernel = crate::device::event_vars(&found, "").map_err(|e| Fail(e, 1))?;
    kernel.retain(|(k, _)| k != "ACTION");
    let db = crate::device::read_db(dir, &found.devpath).map_err(|e| Fail(e, 1))?;
    if json {
        return print_json(&InfoReport {
            devpath: found.devpath,
            syspath: found.dir.display().to_string(),
            kernel,
            db,
        });
    }
    println!("device: {}", found.dir.display());
    for (k, v) in &kernel {
        println!("{k}={v}");
    }
    let Some(db) = db else {
        let file = crate::db::file(dir);
        println!("db: no entry ({})", file.display());
        return Ok(());
    };
    println!("db: {}", db.path);
    for (k, v) in &db.properties {
        println!("  {k}={v}");
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(" ")
        }
    };
    println!("links: {}", list(&db.links));
    println!("rules: {}", list(&db.rules));
    Ok(())
}

fn wait_device(dir: &Path, args: WaitArgs) -> Result<(), Fail> {
    let WaitArgs {
        device,
        timeout,
        sys_dir,
    } = args;
    // A DEVPATH is taken as given: the device may be gone, its remove event the one to wait for.
    let devpath = if device.starts_with("/devices") {
        device.display().to_string()
    } else {
        crate::device::resolve(&device, &sys_dir)
            .map_err(|e| Fail(e, 1))?
            .devpath
    };
    let req = format!("wait-device {}\n", control::escape_word(devpath.as_bytes()));
    let mut client = Client::request(dir, &req)?;
    client.set_timeout(Some(timeout));
    await_end(&mut client, || {
        format!(
            "wait: timed out after {:.1} s: an event for {devpath} is still pending",
            timeout.as_secs_f64()
        )
    })
}
