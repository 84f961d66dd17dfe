//! `Config::parse` on arbitrary UTF-8: never panics, and every error carries a
//! `file:LINE:COL` position with LINE >= 1 (nothing here names a file to read).
#![no_main]

use std::path::Path;

use hotplugd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A rules_dir would make the parser read the file system.
    if text.contains("rules_dir") {
        return;
    }
    if let Err(errors) = Config::parse(text, Path::new("x.toml")) {
        for e in &errors.0 {
            assert!(e.line >= 1 && e.col >= 1, "{e}");
            assert!(e.to_string().starts_with("x.toml:"), "{e}");
        }
    }
});
