//! What the suite needs from the host: root, the UML kernel and tools, static binaries.

use super::*;

pub(crate) struct Prereqs {
    pub(crate) kernel: PathBuf,
    pub(crate) busybox: PathBuf,
    pub(crate) mconsole: PathBuf,
}

/// Everything the test needs, or None (skip) with the reason printed. Under `CI=true` a
/// missing prerequisite is a failure instead.
pub(crate) fn prerequisites() -> Option<Prereqs> {
    match find_prerequisites() {
        Ok(p) => Some(p),
        Err(why) => {
            common::skip_or_fail(&format!(
                "kernel test: {why} (scripts/install-test-deps.sh installs what it needs)"
            ));
            None
        }
    }
}

pub(crate) fn find_prerequisites() -> Result<Prereqs, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    let kernel = ["/usr/bin/linux.uml", "/usr/bin/linux"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("no User-Mode Linux kernel (/usr/bin/linux.uml; package user-mode-linux)")?;
    let modules = PathBuf::from("/usr/lib/uml/modules");
    if !fs::read_dir(&modules)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err("no UML modules in /usr/lib/uml/modules (package user-mode-linux)".into());
    }
    let mconsole = PathBuf::from("/usr/bin/uml_mconsole");
    if !mconsole.is_file() {
        return Err("no /usr/bin/uml_mconsole (package uml-utilities)".into());
    }
    let busybox = PathBuf::from("/bin/busybox");
    match is_static(&busybox) {
        Ok(true) => {}
        Ok(false) => {
            return Err("/bin/busybox is dynamically linked (package busybox-static)".into())
        }
        Err(e) => return Err(format!("/bin/busybox: {e} (package busybox-static)")),
    }
    for bin in [
        env!("CARGO_BIN_EXE_hotplug"),
        env!("CARGO_BIN_EXE_hotplugd"),
        env!("CARGO_BIN_EXE_hotplugctl"),
    ] {
        // The guest has no libc. A plain `cargo test` links dynamically; scripts/test.sh
        // builds through scripts/cargo-static, and under CI=true a missing one fails.
        if !is_static(Path::new(bin)).unwrap_or(false) {
            return Err(format!(
                "{bin} is not statically linked and the guest root has no libc \
                 (run through scripts/cargo-static test, as scripts/test.sh does)"
            ));
        }
    }
    Ok(Prereqs {
        kernel,
        busybox,
        mconsole,
    })
}

/// An ELF file with no program interpreter (PT_INTERP) needs no dynamic loader or libc.
pub(crate) fn is_static(path: &Path) -> Result<bool, String> {
    let data = fs::read(path).map_err(|e| e.to_string())?;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not a 64-bit ELF file".into());
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("truncated ELF header".into());
    };
    for i in 0..phnum {
        match u32_at(phoff + i * phentsize) {
            Some(3) => return Ok(false), // PT_INTERP
            Some(_) => {}
            None => return Err("truncated program headers".into()),
        }
    }
    Ok(true)
}
