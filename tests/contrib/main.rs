//! What ships beside the binaries: the example handlers of `contrib/handlers/` run against
//! fake events with fake tools first in `PATH` (each records its argv), the shipped rules
//! of `config/rules.d/` checked, matched and run in a real daemon, the init-system files
//! checked against the binaries' real options, the man pages against the code, and
//! `make install` / `make uninstall` into a temporary DESTDIR.
//!
//! The lint side (mandoc, groff, shellcheck, systemd-analyze) is scripts/check-contrib.sh.
//! A missing tool (make) or privilege (mknod) skips its part with the reason; under
//! `CI=true` a missing tool fails.
//!
//! The modules: `shipped` (the shipped configuration and rules), `handlers` (the example
//! handlers), `init_files` (init-system and other files against the binaries), `man` (the
//! man pages against the code) and `install` (`make install`); the fakes are here.

#[path = "../common/mod.rs"]
mod common;

mod handlers;
mod init_files;
mod install;
mod man;
mod shipped;

use init_files::*;
use shipped::*;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn handler(name: &str) -> PathBuf {
    root().join("contrib/handlers").join(name)
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory of fake tools: each appends `NAME [ARG1] [ARG2] ...` to one log, then runs
/// its own shell body. Real tools a handler needs besides can be linked in.
pub(crate) struct Fakes {
    pub(crate) dir: tempfile::TempDir,
}

impl Fakes {
    pub(crate) fn new() -> Fakes {
        let f = Fakes {
            dir: tempfile::Builder::new()
                .prefix("hotplugd-contrib")
                .tempdir()
                .unwrap(),
        };
        fs::create_dir(f.bin()).unwrap();
        f
    }

    pub(crate) fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.path("calls.log")
    }

    /// A fake `name` that records its argv, then runs `body`.
    pub(crate) fn fake(&self, name: &str, body: &str) {
        let p = self.bin().join(name);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\n{{ printf '%s' '{name}'; for a in \"$@\"; do printf ' [%s]' \"$a\"; done; echo; }} >> '{log}'\n{body}\n",
                log = self.log().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The real `name`, for what a handler needs besides the faked tools.
    pub(crate) fn real(&self, name: &str) {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name} not found in /usr/bin, /bin, /usr/sbin, /sbin"));
        std::os::unix::fs::symlink(found, self.bin().join(name)).unwrap();
    }

    /// The recorded calls, one line each, and forget them.
    pub(crate) fn take(&self) -> Vec<String> {
        let calls = fs::read_to_string(self.log()).unwrap_or_default();
        let _ = fs::remove_file(self.log());
        calls.lines().map(str::to_owned).collect()
    }

    /// Run a handler as the daemon would: the event as the whole environment, with the
    /// fakes as its PATH.
    pub(crate) fn run(&self, prog: &Path, args: &[&str], event: &[(&str, &str)]) -> Output {
        Command::new(prog)
            .args(args)
            .env_clear()
            .env("PATH", self.bin())
            .env("HOTPLUGD_RULE", "test")
            .envs(event.iter().copied())
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

pub(crate) fn status(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A device node made with mknod(2), or why it could not be.
pub(crate) fn mknod(path: &Path, block: bool) -> Result<(), String> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let (kind, dev) = if block {
        (libc::S_IFBLK, libc::makedev(7, 0))
    } else {
        (libc::S_IFCHR, libc::makedev(1, 3))
    };
    // SAFETY: a NUL-terminated path; mknod has no memory effects.
    if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "mknod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}
