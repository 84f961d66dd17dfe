//! The real-kernel test: boots Debian's User-Mode Linux (a Linux 6.1 kernel that runs as an
//! ordinary process) with a host directory as its root (hostfs), makes the kernel run our
//! `hotplug` shim as its uevent helper and `hotplugd` as the daemon, provokes real uevents
//! (modules, a dummy net device, loop devices, uevent writes, a ubd disk hot-added and
//! removed from the host through `uml_mconsole`) and checks on the host what the handler
//! recorded against what the kernel sent. How it works: `tests/kernel/README.md`.
//!
//! The modules: `prereqs` (what the host must have), `guest` (the guest root and the
//! kernel process), `results` (reading what the guest left), `run` (one boot of one
//! scenario), `checks` (what every scenario must show), `scenarios` (the tests) and
//! `storm` (the benchmark).
//!
//! Seven boots, one per scenario, each its own `#[test]`:
//! * `burst_is_handled_once_in_order`: daemon first, then the events; each rebroadcast
//!   once on netlink group 4, after its handler, in order.
//! * `early_events_spool_until_the_daemon_starts`: helper set with no daemon.
//! * `sigkill_mid_burst_loses_nothing`: the daemon is SIGKILLed while a handler runs and
//!   restarted.
//! * `netlink_source_without_a_helper`: helper path empty, events from the kernel's
//!   netlink broadcast only.
//! * `both_sources_run_each_event_once`: helper and netlink together.
//! * `remove_coalesces_with_its_queued_add`: a device that comes and goes while
//!   handlers are paused.
//! * `netlink_overflow_is_counted_and_rescanned`: the daemon is stopped (SIGSTOP) while
//!   events overflow a tiny netlink receive buffer.
//!
//! Needs root and the Debian packages `user-mode-linux uml-utilities busybox-static`
//! (`scripts/install-test-deps.sh`). Without them each test prints why and passes, unless
//! `CI=true`, where a missing prerequisite fails.

#[path = "../common/mod.rs"]
mod common;

mod checks;
mod guest;
mod prereqs;
mod results;
mod run;
mod scenarios;
mod storm;

use checks::*;
use guest::*;
use prereqs::*;
use results::*;
use run::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub(crate) const POLL: Duration = Duration::from_millis(20);
/// From starting the kernel to the guest saying all events are made.
pub(crate) const PROVOKE_DEADLINE: Duration = Duration::from_secs(90);
/// From then until every event the helper ran for has been handled.
pub(crate) const HANDLED_DEADLINE: Duration = Duration::from_secs(60);
/// Give up earlier when the handler record has not grown for this long: longer than the
/// longest gap timeout the test configures (20 s), and a handler takes under a second.
pub(crate) const NO_PROGRESS: Duration = Duration::from_secs(30);
/// How long the record must stay unchanged once complete.
pub(crate) const QUIET: Duration = Duration::from_millis(500);
/// From asking the guest to power off until the kernel process is gone.
pub(crate) const POWEROFF_DEADLINE: Duration = Duration::from_secs(20);

/// Variables the kernel adds for the helper only (not part of the uevent itself).
pub(crate) const HELPER_ONLY: &[&str] = &["HOME", "PATH"];
