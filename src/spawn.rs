//! Starting a handler process: a `vfork`-style clone, then `execve`, with the event's own
//! bytes as the environment.
//!
//! The daemon starts one process per handler run, back to back, so what happens between
//! one handler's exit and the next one's exec is the daemon's whole dispatch overhead.
//! std's `Command` spends that time on work this job does not need: it copies every
//! variable into a map and then into fresh C strings, opens `/dev/null` anew for each
//! child and rebuilds its spawn attributes. glibc's `posix_spawn` itself maps and unmaps
//! a child stack per call (with a TLB shootdown when other daemon threads share the
//! address space) and has the child reset all 64 signal dispositions one `sigaction` at a
//! time while the parent waits. Here:
//!
//! * **envp points into the event.** A message payload is `ARG1\0KEY=VALUE\0…`, so every
//!   variable already is a C string; the environment is an array of pointers into the
//!   event's buffer plus one `HOTPLUGD_RULE=` string. Nothing is copied.
//! * **Built once:** `/dev/null`, the child's stack, and the list of signals whose
//!   disposition is not the default (the daemon's handlers and ignored signals, four or
//!   so), taken when the [`Spawner`] is made.
//! * **No fork.** `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the daemon's memory
//!   until it execs, so no page tables are copied however large the queue is (fork+exec
//!   from a parent holding 1 GiB costs 30 times as much), and the parent sleeps until
//!   then. All signals are blocked around the clone, so none can run a daemon handler on
//!   the child's borrowed stack before the child has reset it.
//!
//! The child gets its own process group (so a timeout can signal everything it started),
//! an empty signal mask (the daemon blocks SIGCHLD) and every standard signal at its
//! default disposition: an ignored signal stays ignored across exec, and Rust ignores
//! SIGPIPE, a supervisor may have left others ignored; a caught one is reset by the exec.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering as AtomicOrdering};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::event::{find_byte, Event};

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
    #[error("{0}: {1}")]
    Exec(String, &'static str),
}

/// Starts handler processes; holds what every spawn shares.
pub struct Spawner {
    devnull: Option<OwnedFd>,
    /// The child's stack until it execs (the parent is suspended meanwhile).
    stack: Box<[u128]>,
    /// Signals 1-31 not at SIG_DFL when the spawner was made: the child resets these.
    reset: Vec<libc::c_int>,
}

/// Bytes of stack for the child between clone and exec: it only makes syscalls.
const CHILD_STACK: usize = 64 * 1024;

impl Default for Spawner {
    fn default() -> Self {
        Self::new()
    }
}

/// What the child needs, in memory it shares with the suspended parent.
struct ChildArgs {
    exe: *const libc::c_char,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
    devnull: libc::c_int,
    out: libc::c_int,
    reset: *const libc::c_int,
    reset_len: usize,
    /// The errno of a failed exec (0: the exec happened).
    err: AtomicI32,
}

/// The child, on the spawner's stack in the parent's memory: async-signal-safe calls
/// only (no allocation, no locks), then exec or `_exit`.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent keeps alive, unmoved, until this child
    // has exec'd or exited (CLONE_VFORK); every pointer in it is valid as long.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for &sig in std::slice::from_raw_parts(a.reset, a.reset_len) {
            libc::sigaction(sig, &dfl, ptr::null_mut());
        }
        let fail = |a: &ChildArgs| {
            a.err
                .store(*libc::__errno_location(), AtomicOrdering::Relaxed);
            libc::_exit(127)
        };
        // dup2 onto itself would keep close-on-exec set: clear the flag instead.
        let onto = |fd: libc::c_int, to: libc::c_int| {
            if fd == to {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, to)
            }
        };
        if libc::setpgid(0, 0) != 0
            || onto(a.devnull, libc::STDIN_FILENO) < 0
            || onto(a.out, libc::STDOUT_FILENO) < 0
            || onto(a.out, libc::STDERR_FILENO) < 0
        {
            fail(a);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        libc::execve(a.exe, a.argv.cast(), a.envp.cast());
        fail(a)
    }
}

impl Spawner {
    pub fn new() -> Spawner {
        let mut reset = Vec::new();
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: a query only (no new action), into a local that all-zero bytes make
            // valid. libc, not nix: nix's `sigaction` always sets an action.
            let old = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(sig, ptr::null(), &mut old) == 0).then_some(old)
            };
            if old.is_some_and(|old| old.sa_sigaction != libc::SIG_DFL) {
                reset.push(sig);
            }
        }
        Spawner {
            devnull: None,
            stack: vec![0u128; CHILD_STACK / 16].into_boxed_slice(),
            reset,
        }
    }

    /// Opened at the first spawn and kept: a daemon started before `/dev` is populated
    /// (an initramfs) still starts, and reports the failure per handler.
    fn devnull(&mut self) -> Result<libc::c_int, SpawnError> {
        if self.devnull.is_none() {
            let file = File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| SpawnError::DevNull(errno_desc(&e)))?;
            self.devnull = Some(file.into());
        }
        Ok(self.devnull.as_ref().expect("just opened").as_raw_fd())
    }

    /// Start `exe` with `argv` (`argv[0]` included) and exactly the event's variables plus
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

        let args = ChildArgs {
            exe: exe_c.as_ptr(),
            argv: arg_ptrs.as_ptr(),
            envp: env_ptrs.as_ptr(),
            devnull: self.devnull()?,
            out: output.as_raw_fd(),
            reset: self.reset.as_ptr(),
            reset_len: self.reset.len(),
            err: AtomicI32::new(0),
        };
        let stack_top = self.stack.as_mut_ptr_range().end.cast::<libc::c_void>();
        // All signals blocked around the clone (and restored after it), so that no
        // daemon signal handler runs in the child before it reset them. The old mask comes
        // back whole, real-time signals too: nix keeps the raw sigset_t.
        let unblock = SigSet::all().thread_swap_mask(SigmaskHow::SIG_SETMASK);
        // SAFETY: signals are blocked (above). The child runs `child` on our stack buffer
        // (16-byte aligned, unused by anyone else while we are suspended), with `args`
        // alive and unmoved until clone returns: with CLONE_VFORK it returns only once
        // the child has exec'd or exited.
        let pid = unsafe {
            libc::clone(
                child,
                stack_top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                ptr::from_ref(&args).cast_mut().cast(),
            )
        };
        let clone_errno = Errno::last();
        if let Ok(old) = unblock {
            let _ = old.thread_set_mask();
        }
        if pid < 0 {
            return Err(SpawnError::Exec(shown(), clone_errno.desc()));
        }
        let err = args.err.load(AtomicOrdering::Relaxed);
        if err != 0 {
            // The child is gone: collect it now, it never ran the handler.
            while waitpid(Pid::from_raw(pid), None) == Err(Errno::EINTR) {}
            return Err(SpawnError::Exec(shown(), Errno::from_raw(err).desc()));
        }
        Ok(Child { pid })
    }
}

/// The event's variables as C strings, each a slice of the event's buffer that ends with
/// its NUL. A key repeated in the event is passed once, with its last value (what
/// `Event::get`, and so the rules, see), and an event's own `HOTPLUGD_RULE` is dropped:
/// the daemon's says which rule runs.
fn environment(event: &Event) -> Vec<&CStr> {
    // Each variable's key, found once: the check for a later repeat compares keys only.
    let vars: Vec<(&[u8], &[u8])> = event
        .var_strings()
        .map(|v| (&v[..find_byte(v, b'=').unwrap_or(v.len())], v))
        .collect();
    let mut env = Vec::with_capacity(vars.len());
    for (i, &(k, v)) in vars.iter().enumerate() {
        if k == RULE_VAR.as_bytes() || vars[i + 1..].iter().any(|&(later, _)| later == k) {
            continue;
        }
        // Each slice ends with the NUL that follows it in the buffer and holds no other.
        if let Ok(c) = CStr::from_bytes_with_nul(v) {
            env.push(c);
        }
    }
    env
}

fn errno_desc(e: &std::io::Error) -> &'static str {
    Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeated key is passed once with its last value (as `Event::get` has it); an
    /// event's own HOTPLUGD_RULE never reaches the handler.
    #[test]
    fn environment_keeps_the_last_of_a_repeated_key() {
        let ev = Event::from_payload(
            b"usb\0ACTION=add\0DEVPATH=/d\0X=1\0HOTPLUGD_RULE=forged\0X=2\0XY=3\0",
        )
        .unwrap();
        let env: Vec<&[u8]> = environment(&ev).iter().map(|c| c.to_bytes()).collect();
        assert_eq!(
            env,
            [&b"ACTION=add"[..], b"DEVPATH=/d", b"X=2", b"XY=3"],
            "{:?}",
            env.iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>()
        );
        assert_eq!(ev.get(b"X"), Some(&b"2"[..]));
    }
}
