//! Imported properties: what a rule with `import = true` prints as `KEY=VALUE` lines on
//! its output, checked and merged into its event, so that later rules match on them,
//! expand them in `run` and `links`, and the device database and the rebroadcast carry
//! them.
//!
//! The limits: at most [`MAX_IMPORT`] bytes of an importer's output are read as lines (the
//! rest is drained and dropped, with a log line); a key must be `[A-Za-z_][A-Za-z0-9_]*`;
//! the kernel's own keys ([`PROTECTED`]) are never replaced, as rules, node actions and
//! the queue's order rely on them. An importer's stdout and stderr share one pipe, as every
//! handler's do: lines that are not `KEY=VALUE` are logged as any handler's output.

use crate::event::{Event, EventError};

/// Bytes of an importer's output lines (newlines not counted) read for properties.
pub const MAX_IMPORT: usize = 16 * 1024;

/// Keys an import may not set: the kernel's, which name the event and its node.
pub const PROTECTED: &[&[u8]] = &[
    b"ACTION",
    b"DEVPATH",
    b"SUBSYSTEM",
    b"SEQNUM",
    b"MAJOR",
    b"MINOR",
    b"DEVNAME",
];

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell can hand on as a variable.
pub fn valid_key(key: &[u8]) -> bool {
    match key.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

/// A line shaped as an import (`KEY=VALUE` with a valid key), split; `None` for anything
/// else, which is logged as ordinary output.
pub fn split_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = line.iter().position(|&b| b == b'=')?;
    let (key, value) = (&line[..eq], &line[eq + 1..]);
    (valid_key(key) && !value.contains(&0)).then_some((key, value))
}

/// The properties in an importer's captured lines (`KEY=VALUE\n` each), in order, a later
/// line for a key replacing an earlier one. Protected keys are dropped with a warning
/// naming `who` (the event and rule).
pub fn parse(captured: &[u8], who: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in captured.split(|&b| b == b'\n') {
        let Some((key, value)) = split_line(line) else {
            continue;
        };
        if PROTECTED.contains(&key) {
            log::warn!(
                "{who}: import of {} refused: a kernel key is never replaced",
                String::from_utf8_lossy(key)
            );
            continue;
        }
        match out.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_vec(),
            None => out.push((key.to_vec(), value.to_vec())),
        }
    }
    out
}

/// `ev` with `props` merged: a key it has is replaced in place, a new one appended. The
/// journal's id stays, so the merged event is recorded as the one that arrived.
pub fn merge(ev: &Event, props: &[(Vec<u8>, Vec<u8>)]) -> Result<Event, EventError> {
    let mut vars: Vec<(&[u8], &[u8])> = ev
        .vars()
        .map(|(k, v)| {
            let new = props.iter().find(|(pk, _)| pk == k);
            (k, new.map_or(v, |(_, pv)| pv.as_slice()))
        })
        .collect();
    for (k, v) in props {
        if ev.get(k).is_none() {
            vars.push((k, v));
        }
    }
    let mut merged = Event::from_vars(ev.arg1(), vars)?;
    merged.set_id(ev.id());
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event::from_vars(
            b"block",
            [
                (&b"ACTION"[..], &b"add"[..]),
                (b"DEVPATH", b"/devices/sda"),
                (b"SUBSYSTEM", b"block"),
                (b"SEQNUM", b"7"),
                (b"DEVNAME", b"sda"),
                (b"ID_OLD", b"1"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn keys() {
        for ok in ["A", "_", "ID_FS_UUID", "a1_b2"] {
            assert!(valid_key(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "Ä", "A.B", "=", "A$"] {
            assert!(!valid_key(bad.as_bytes()), "{bad}");
        }
        assert_eq!(split_line(b"A=b=c"), Some((&b"A"[..], &b"b=c"[..])));
        assert_eq!(split_line(b"A="), Some((&b"A"[..], &b""[..])));
        assert_eq!(split_line(b"no equals"), None);
        assert_eq!(split_line(b"bad key=x"), None);
        assert_eq!(split_line(b"A=\0"), None);
    }

    #[test]
    fn parse_drops_protected_and_keeps_the_last_value() {
        let got = parse(
            b"ID_FS_TYPE=ext4\nDEVNAME=evil\nnoise\nSEQNUM=1\nID_FS_TYPE=vfat\nX=\n",
            "test",
        );
        assert_eq!(
            got,
            [
                (b"ID_FS_TYPE".to_vec(), b"vfat".to_vec()),
                (b"X".to_vec(), b"".to_vec())
            ]
        );
    }

    #[test]
    fn merge_replaces_and_appends_and_keeps_the_id() {
        let mut e = ev();
        e.set_id(42);
        let props = parse(b"ID_OLD=2\nID_NEW=x y\n", "test");
        let m = merge(&e, &props).unwrap();
        assert_eq!(m.id(), 42);
        assert_eq!(m.seqnum(), Some(7));
        assert_eq!(m.action(), b"add");
        assert_eq!(m.devpath(), b"/devices/sda");
        assert_eq!(m.subsystem(), b"block");
        assert_eq!(m.get(b"ID_OLD"), Some(&b"2"[..]));
        assert_eq!(m.get(b"ID_NEW"), Some(&b"x y"[..]));
        assert_eq!(m.vars().count(), e.vars().count() + 1);
    }
}
