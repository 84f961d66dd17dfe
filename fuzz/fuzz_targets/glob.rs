//! Glob compile and match on arbitrary bytes: the input is `pattern \0 text`.
//! `glob_match` must agree with `Pattern::new` + `matches`, and never panic or hang.
#![no_main]

use hotplugd::rules::{glob_match, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (pattern, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let r = glob_match(pattern, text);
    match Pattern::new(pattern) {
        Ok(p) => {
            assert_eq!(p.matches(Some(text)), r);
            assert_eq!(p.matches(None), p.is_negated());
        }
        Err(_) => assert!(!r),
    }
});
