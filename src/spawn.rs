//! Starting a handler process: `posix_spawn(3)` called directly, with the event's own bytes
//! as the environment.
//!
//! The daemon starts one process per handler run, back to back, so what happens between
//! one handler's exit and the next one's exec is the daemon's whole dispatch overhead.
//! std's `Command` spends that time on work this job does not need: it copies every
//! variable into a map and then into fresh C strings, opens `/dev/null` anew for each
//! child and rebuilds its spawn attributes. Here:
//!
//! * **envp points into the event.** A message payload is `ARG1\0KEY=VALUE\0…`, so every
//!   variable already is a C string; the environment is an array of pointers into the
//!   event's buffer plus one `HOTPLUGD_RULE=` string. Nothing is copied.
//! * **`/dev/null` is opened once** per [`Spawner`] and `dup2`ed onto stdin by the spawn's
//!   file actions; stdout and stderr are the two ends of one pipe the caller passes.
//! * **No fork.** glibc's `posix_spawn` is a `CLONE_VM|CLONE_VFORK` clone: no page tables
//!   are copied however large the daemon's queue is (fork+exec from a parent holding
//!   1 GiB costs 30 times as much).
//!
//! The child gets its own process group (so a timeout can signal everything it started),
//! an empty signal mask (the daemon blocks SIGCHLD) and every standard signal at its default
//! disposition: an ignored signal stays ignored across exec, and Rust ignores SIGPIPE, a
//! supervisor may have left others ignored. (glibc's child visits every signal anyway, so
//! resetting them all costs nothing more.)

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use nix::errno::Errno;

use crate::event::Event;

/// The variable every handler gets besides the event's own: the rule that runs it.
pub const RULE_VAR: &str = "HOTPLUGD_RULE";

/// A started child. Not reaped on drop: the caller waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    pub pid: libc::pid_t,
}

/// Why a child did not start; the text of a `SpawnFailed` outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: an argument contains a NUL byte")]
    Nul(String),
    #[error("/dev/null: {0}")]
    DevNull(&'static str),
    #[error("posix_spawn setup: {0}")]
    Setup(&'static str),
    #[error("{0}: {1}")]
    Exec(String, &'static str),
}

/// Starts handler processes; holds what every spawn shares. The file actions depend only
/// on the output fd's number, so they are built again only when that changes (glibc checks
/// each `adddup2` against RLIMIT_NOFILE with two `getrlimit` calls).
pub struct Spawner {
    devnull: Option<OwnedFd>,
    actions: Option<(libc::c_int, FileActions)>,
    attr: Option<Attr>,
}

impl Default for Spawner {
    fn default() -> Self {
        Self::new()
    }
}

impl Spawner {
    pub fn new() -> Spawner {
        Spawner {
            devnull: None,
            actions: None,
            attr: None,
        }
    }

    /// Opened at the first spawn and kept: a daemon started before `/dev` is populated
    /// (an initramfs) still starts, and reports the failure per handler.
    fn devnull(&mut self) -> Result<BorrowedFd<'_>, SpawnError> {
        if self.devnull.is_none() {
            let file = File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| SpawnError::DevNull(errno_desc(&e)))?;
            self.devnull = Some(file.into());
        }
        Ok(self.devnull.as_ref().expect("just opened").as_fd())
    }

    /// Start `exe` with `argv` (argv[0] included) and exactly the event's variables plus
    /// `HOTPLUGD_RULE=rule`; stdin is `/dev/null`, stdout and stderr are `output`.
    pub fn spawn(
        &mut self,
        exe: &Path,
        argv: &[OsString],
        event: &Event,
        rule: &str,
        output: BorrowedFd<'_>,
    ) -> Result<Child, SpawnError> {
        let shown = || exe.display().to_string();
        let exe_c =
            CString::new(exe.as_os_str().as_bytes()).map_err(|_| SpawnError::Nul(shown()))?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| SpawnError::Nul(shown()))?;
        let mut arg_ptrs: Vec<*mut libc::c_char> =
            args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        arg_ptrs.push(ptr::null_mut());

        let rule_var =
            CString::new(format!("{RULE_VAR}={rule}")).map_err(|_| SpawnError::Nul(shown()))?;
        let env = environment(event);
        let mut env_ptrs: Vec<*mut libc::c_char> = Vec::with_capacity(env.len() + 2);
        env_ptrs.extend(env.iter().map(|v| v.as_ptr().cast_mut()));
        env_ptrs.push(rule_var.as_ptr().cast_mut());
        env_ptrs.push(ptr::null_mut());

        let out = output.as_raw_fd();
        if self.actions.as_ref().is_none_or(|(fd, _)| *fd != out) {
            let devnull = self.devnull()?.as_raw_fd();
            let mut actions = FileActions::new()?;
            actions.dup2(devnull, libc::STDIN_FILENO)?;
            actions.dup2(out, libc::STDOUT_FILENO)?;
            actions.dup2(out, libc::STDERR_FILENO)?;
            self.actions = Some((out, actions));
        }
        if self.attr.is_none() {
            self.attr = Some(Attr::new()?);
        }
        let (Some((_, actions)), Some(attr)) = (&self.actions, &self.attr) else {
            unreachable!("both set above");
        };

        let mut pid: libc::pid_t = 0;
        // SAFETY: every pointer is valid for the call: the C strings above, the event's
        // buffer (borrowed for this whole function) and the initialised actions and
        // attributes; both pointer arrays end with NULL.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                exe_c.as_ptr(),
                &actions.0,
                &attr.0,
                arg_ptrs.as_ptr(),
                env_ptrs.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(SpawnError::Exec(shown(), Errno::from_raw(rc).desc()));
        }
        Ok(Child { pid })
    }
}

/// The event's variables as C strings, each a slice of the event's buffer that ends with
/// its NUL. A key repeated in the event is passed once, with its last value (what
/// `Event::get`, and so the rules, see), and an event's own `HOTPLUGD_RULE` is dropped:
/// the daemon's says which rule runs.
fn environment(event: &Event) -> Vec<&CStr> {
    let vars: Vec<&[u8]> = event.var_strings().collect();
    let key = |v: &[u8]| -> usize { v.iter().position(|&b| b == b'=').unwrap_or(v.len()) };
    let mut env = Vec::with_capacity(vars.len());
    for (i, v) in vars.iter().enumerate() {
        let k = &v[..key(v)];
        if k == RULE_VAR.as_bytes() || vars[i + 1..].iter().any(|w| &w[..key(w)] == k) {
            continue;
        }
        // Each slice ends with the NUL that follows it in the buffer and holds no other.
        if let Ok(c) = CStr::from_bytes_with_nul(v) {
            env.push(c);
        }
    }
    env
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> Result<FileActions, SpawnError> {
        // SAFETY: zeroed storage is what posix_spawn_file_actions_init expects to fill.
        let mut fa = FileActions(unsafe { std::mem::zeroed() });
        // SAFETY: a valid pointer to owned storage.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut fa.0) })?;
        Ok(fa)
    }

    fn dup2(&mut self, fd: libc::c_int, to: libc::c_int) -> Result<(), SpawnError> {
        // SAFETY: initialised in `new`.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, to) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attr(libc::posix_spawnattr_t);

impl Attr {
    fn new() -> Result<Attr, SpawnError> {
        // SAFETY: zeroed storage is what posix_spawnattr_init expects to fill; every call
        // below gets a pointer to it or to local sigsets it only reads.
        unsafe {
            let mut a = Attr(std::mem::zeroed());
            check(libc::posix_spawnattr_init(&mut a.0))?;
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut default: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut default);
            check(libc::posix_spawnattr_setsigmask(&mut a.0, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(&mut a.0, &default))?;
            check(libc::posix_spawnattr_setpgroup(&mut a.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                &mut a.0,
                flags as libc::c_short,
            ))?;
            Ok(a)
        }
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(rc: libc::c_int) -> Result<(), SpawnError> {
    match rc {
        0 => Ok(()),
        e => Err(SpawnError::Setup(Errno::from_raw(e).desc())),
    }
}

fn errno_desc(e: &std::io::Error) -> &'static str {
    Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
}
