//! `hotplugd --demo`: the whole path on this machine's real devices, without root and
//! without touching anything. A daemon runs in a temporary runtime dir with demo rules
//! (the shapes of the example rules, with `/bin/echo` in place of the commands, so nothing
//! is loaded or changed); every device under `/sys/devices` is replayed as an `add` event
//! through the real shim, many at once and out of order as the kernel does it; outcomes
//! stream as they are handled; then a summary, and everything is cleaned up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::control::{self, Client, End};
use crate::sysfs;
use crate::timeline::{self, Span};

const DEMO_CONFIG: &str = r#"# hotplugd --demo: the example rules' shapes, echoing instead of acting.
[daemon]
seqnum_file = "SEQNUM_FILE"
gap_timeout = "1s"
# Its own numbered events through the shim only: the host's on netlink would not fit.
sources = ["fifo"]

[[rule]]
name = "modules"
match = { ACTION = "add", MODALIAS = "?*" }
run = ["/bin/echo", "would run: modprobe -bq", "$MODALIAS"]

[[rule]]
name = "net-up"
match = { ACTION = "add", SUBSYSTEM = "net", INTERFACE = "!lo" }
run = ["/bin/echo", "would run: ip link set", "$INTERFACE", "up"]

[[rule]]
name = "log"
run = ["/bin/echo", "$ACTION", "$DEVPATH", "($SUBSYSTEM)"]
"#;

/// Shims in flight at once, like a burst from the kernel.
const IN_FLIGHT: usize = 32;
/// Outcome lines shown before the rest are only counted.
const SHOWN: usize = 12;

/// `println!` that ignores a closed stdout (`hotplugd --demo | head`): with
/// `panic = "abort"` a panic there would skip `Cleanup` and leave the daemon running.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

struct Cleanup {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = kill(Pid::from_raw(d.id() as i32), Signal::SIGTERM);
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run the demo; the error is a message for the user.
pub fn run() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let shim = exe.with_file_name("hotplug");
    if !shim.is_file() {
        return Err(format!(
            "{}: the shim is not built beside hotplugd (cargo build --release builds both)",
            shim.display()
        ));
    }
    let devices = sysfs::devices(Path::new("/sys")).map_err(|e| format!("/sys/devices: {e}"))?;
    let dir = std::env::temp_dir().join(format!("hotplugd-demo-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        daemon: None,
    };
    let config = dir.join("demo.toml");
    let runtime = dir.join("run");
    // The replayed events are numbered from 1: tell the daemon the "kernel" is at 0.
    let seqnum = dir.join("seqnum");
    std::fs::write(&seqnum, "0\n").map_err(|e| format!("{}: {e}", seqnum.display()))?;
    let text = DEMO_CONFIG.replace("SEQNUM_FILE", &seqnum.to_string_lossy());
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    say!(
        "hotplugd demo: daemon in {}, {} devices from /sys replayed as add events",
        runtime.display(),
        devices.len()
    );

    // Here the demo is the kernel, running the shim for each event: its stand-in helper
    // setting names the shim, so the daemon does not warn that no kernel event can come.
    let helper_file = dir.join("kernel-hotplug");
    std::fs::write(&helper_file, format!("{}\n", shim.display()))
        .map_err(|e| format!("{}: {e}", helper_file.display()))?;
    let daemon = Command::new(&exe)
        .arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(&runtime)
        .args(["--log-level", "warn"])
        .env(crate::helper::HELPER_FILE_ENV, &helper_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    cleanup.daemon = Some(daemon);
    wait_ready(&runtime, cleanup.daemon.as_mut())?;

    // Stream outcomes as the runner reports them.
    let monitor = {
        let runtime = runtime.clone();
        let names: Vec<String> = devices
            .iter()
            .map(|d| format!("{} ({})", d.devpath, d.subsystem.as_deref().unwrap_or("-")))
            .collect();
        std::thread::spawn(move || {
            let Ok(mut client) = Client::request(&runtime, "monitor handled\n") else {
                return 0usize;
            };
            let mut n = 0;
            while let Ok(Ok(line)) = client.next_line() {
                n += 1;
                if n <= SHOWN {
                    say!("  {}", outcome(&line, &names));
                } else if n == SHOWN + 1 {
                    say!("  ... (the rest are counted)");
                }
            }
            n
        })
    };

    let started = Instant::now();
    let mut flight: Vec<Child> = Vec::new();
    let mut failed = 0;
    for (i, dev) in devices.iter().enumerate() {
        while flight.len() >= IN_FLIGHT {
            flight.retain_mut(|c| match c.try_wait() {
                Ok(Some(st)) => {
                    failed += usize::from(!st.success());
                    false
                }
                _ => true,
            });
            std::thread::sleep(Duration::from_micros(200));
        }
        let vars = sysfs::device_vars(&dev.dir).unwrap_or_default();
        let sub = dev.subsystem.clone().unwrap_or_default();
        let mut cmd = Command::new(&shim);
        cmd.arg(&sub)
            .env_clear()
            .env(crate::spool::RUNTIME_DIR_ENV, &runtime)
            .env("ACTION", "add")
            .env("DEVPATH", &dev.devpath)
            .env("SUBSYSTEM", &sub)
            .env("SEQNUM", (i + 1).to_string())
            .stdin(Stdio::null());
        cmd.envs(vars);
        flight.push(
            cmd.spawn()
                .map_err(|e| format!("{}: {e}", shim.display()))?,
        );
    }
    for mut c in flight {
        failed += usize::from(!c.wait().map(|s| s.success()).unwrap_or(false));
    }
    let n = devices.len();
    let (_, end) = control::call(&runtime, &format!("settle {n}")).map_err(|e| e.to_string())?;
    if let End::Error(e) = end {
        return Err(e);
    }
    let wall = started.elapsed();
    let (lines, _) = control::call(&runtime, "timeline").map_err(|e| e.to_string())?;
    let (status, _) = control::call(&runtime, "status").map_err(|e| e.to_string())?;
    drop(cleanup);
    let shown = monitor.join().unwrap_or(0);

    let runs: Vec<f64> = timeline::parse(&lines)
        .iter()
        .filter_map(|s| match s {
            Span::Run { start, end, .. } => Some(end - start),
            Span::Wait { .. } => None,
        })
        .collect();
    let field = |k: &str| {
        status
            .iter()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' '))
            .unwrap_or("?")
            .to_owned()
    };
    let total: f64 = runs.iter().sum();
    let max = runs.iter().copied().fold(0.0, f64::max);
    say!("summary:");
    say!(
        "  {n} events through the shim ({failed} shims failed), {} handled in {:.2} s: {:.0} events/s",
        field("handled"),
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    say!(
        "  {} handler runs ({shown} streamed): {:.2} ms on average, {:.2} ms at most; {} failed, {} timed out",
        runs.len(),
        if runs.is_empty() { 0.0 } else { total / runs.len() as f64 * 1e3 },
        max * 1e3,
        field("failed"),
        field("timed_out")
    );
    say!(
        "  {} late, {} duplicates, {} SEQNUMs skipped after a gap; cleaned up {}",
        field("late"),
        field("duplicates"),
        field("gaps_skipped"),
        dir.display()
    );
    if failed > 0 {
        return Err(format!("{failed} shims failed"));
    }
    Ok(())
}

/// "SEQNUM RULE STATUS DURATION" from the daemon, with the device it was for:
/// "  3 add /devices/platform/serial8250 (platform): modules exit_0 0.9ms".
fn outcome(line: &str, names: &[String]) -> String {
    let device = line
        .split(' ')
        .next()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|seq| names.get(seq.checked_sub(1)?));
    match (device, line.split_once(' ')) {
        (Some(dev), Some((seq, rest))) => format!("{seq:>4} add {dev}: {rest}"),
        _ => line.to_owned(),
    }
}

fn wait_ready(runtime: &Path, daemon: Option<&mut Child>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let Some(daemon) = daemon else {
        return Err("no daemon".into());
    };
    loop {
        if let Ok((_, End::Ok(_))) = control::call(runtime, "status") {
            return Ok(());
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            return Err(format!("the demo daemon exited: {st}"));
        }
        if Instant::now() > deadline {
            return Err("the demo daemon did not become ready in 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
