//! Property tests for the parsers that take bytes from outside: the wire codec, the event
//! parser, the glob matcher, the config/rule loader and `$VAR` expansion. Each property is
//! bounded (a fixed number of cases, sized inputs) so the whole file runs in seconds; the
//! `fuzz/` targets explore the same entry points without those bounds.

use std::collections::HashMap;
use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;

use hotplugd::config::Config;
use hotplugd::event::Event;
use hotplugd::message::{
    decode_whole, encode, next_frame, Frame, Item, Splitter, HEADER_LEN, MAGIC, MAX_FIFO_PAYLOAD,
    MAX_PAYLOAD, VERSION, VERSION_FNV,
};
use hotplugd::rules::{glob_match, Pattern, Template};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// What came out of a splitter, plus the byte accounting that must balance.
#[derive(Debug, Default)]
struct Out {
    messages: Vec<Vec<u8>>,
    /// Stream offset of each message's header (the journal names events by it).
    offsets: Vec<u64>,
    garbage_reports: usize,
    /// Bytes consumed: garbage bytes plus whole frames (header + payload).
    consumed: usize,
}

impl Out {
    /// Items come in stream order and cover it without holes: each starts where the
    /// previous one ended.
    fn on(&mut self, item: Item<'_>, offset: u64) {
        assert_eq!(
            offset, self.consumed as u64,
            "item offset is not where it starts"
        );
        match item {
            Item::Message(p) => {
                self.consumed += HEADER_LEN + p.len();
                self.messages.push(p.to_vec());
                self.offsets.push(offset);
            }
            Item::Garbage { bytes, .. } => {
                assert!(bytes > 0, "a garbage report of 0 bytes");
                self.garbage_reports += 1;
                self.consumed += bytes;
            }
        }
    }
}

/// Feed `data` to a fresh splitter in chunks whose sizes cycle through `sizes`; then, like
/// the FIFO reader when the writers go quiet, flush stale partials until nothing is held.
/// Checks on the way that no byte is invented or lost, that offsets are exact, and that
/// flushing terminates.
fn split_all(data: &[u8], sizes: &[usize]) -> Out {
    let mut s = Splitter::new();
    let mut out = Out::default();
    let mut pos = 0;
    let mut i = 0;
    while pos < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - pos);
        s.feed_at(&data[pos..pos + n], |item, at| out.on(item, at));
        pos += n;
        i += 1;
        assert_eq!(out.consumed + s.pending(), pos, "bytes lost or invented");
    }
    // Every flush drops at least one byte, so this ends within data.len() rounds.
    let mut rounds = 0;
    while s.pending() > 0 {
        let before = s.pending();
        s.flush_stale_at(|item, at| out.on(item, at));
        assert!(s.pending() < before, "flush_stale made no progress");
        assert_eq!(
            out.consumed + s.pending(),
            data.len(),
            "bytes lost or invented"
        );
        rounds += 1;
        assert!(rounds <= data.len(), "flush_stale does not terminate");
    }
    // Flushing an empty splitter reports nothing; the plain wrappers agree.
    s.flush_stale(|item| out.on(item, data.len() as u64));
    assert_eq!(out.consumed, data.len());
    out
}

/// A payload for the FIFO: mostly short, sometimes up to the limit, sometimes exactly it,
/// with bytes biased toward the magic so payloads contain would-be headers.
fn fifo_payload() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => any::<u8>(),
        1 => prop::sample::select(&b"HPLG\x01\x00"[..]),
    ];
    prop_oneof![
        6 => vec(byte.clone(), 0..64),
        2 => vec(byte, 0..=MAX_FIFO_PAYLOAD),
        1 => vec(any::<u8>(), MAX_FIFO_PAYLOAD..=MAX_FIFO_PAYLOAD),
    ]
}

/// Bytes that can never contain a whole valid message (short of a 2^-32 checksum
/// collision): random bytes, bare magic, and headers that are wrong in every way the
/// decoder checks: version, reserved bytes, oversize, checksum (including truncated real
/// messages whose checksum was corrupted so no later byte can complete them).
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        vec(any::<u8>(), 0..40),
        Just(MAGIC.to_vec()),
        Just(b"HPL".to_vec()),
        Just(b"HP".to_vec()),
        Just(b"H".to_vec()),
        (any::<u8>(), vec(any::<u8>(), 0..12)).prop_map(|(v, rest)| {
            let mut h = MAGIC.to_vec();
            // Any byte but the two versions read.
            h.push(if v == VERSION || v == VERSION_FNV {
                0
            } else {
                v
            });
            h.extend(rest);
            h
        }),
        // Oversized announcement.
        (MAX_FIFO_PAYLOAD as u32 + 1..u32::MAX).prop_map(|n| {
            let mut h = MAGIC.to_vec();
            h.extend([VERSION, 0, 0, 0]);
            h.extend(n.to_le_bytes());
            h.extend([0; 4]);
            h
        }),
        // A real frame with a corrupted checksum, possibly cut short.
        (vec(any::<u8>(), 0..200), any::<prop::sample::Index>()).prop_map(|(p, cut)| {
            let mut m = encode(&p);
            m[12] ^= 0xff;
            let keep = 1 + cut.index(m.len());
            m.truncate(keep);
            m
        }),
        // A header whose size swallows what follows, then dies of a bad checksum or of
        // flush_stale.
        (0u32..=MAX_FIFO_PAYLOAD as u32, any::<u32>()).prop_map(|(n, sum)| {
            let mut h = MAGIC.to_vec();
            h.extend([VERSION, 0, 0, 0]);
            h.extend(n.to_le_bytes());
            // Avoid the one checksum that an all-empty payload would pass.
            let empty = hotplugd::message::checksum(&[]);
            let sum = if n == 0 && sum == empty { !empty } else { sum };
            h.extend(sum.to_le_bytes());
            h
        }),
    ];
    vec(piece, 0..6).prop_map(|v| v.concat())
}

/// How a stream is cut into `read()` results. Byte-at-a-time feeding costs the splitter
/// O(held bytes) per byte (it rescans the held partial message), so it is drawn rarely
/// and only the small-chunk mixes cover it otherwise.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![1]),
        2 => Just(vec![usize::MAX]),
        4 => vec(1usize..700, 1..12),
        3 => vec(prop_oneof![1usize..17, 4000usize..5000], 1..6),
    ]
}

// ---------------------------------------------------------------------------------------
// Wire codec
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn splitter_never_panics_and_accounts_for_every_byte(
        data in prop_oneof![
            vec(any::<u8>(), 0..3 * 4096),
            garbage(),
            vec(prop::sample::select(&b"HPLG\x01\x00\x10\xffx"[..]), 0..600),
        ],
        sizes in chunk_sizes(),
    ) {
        split_all(&data, &sizes);
    }

    #[test]
    fn next_frame_and_decode_whole_never_panic(
        data in prop_oneof![
            vec(any::<u8>(), 0..200),
            garbage(),
            fifo_payload().prop_map(|p| encode(&p)),
        ],
        max in prop_oneof![Just(MAX_FIFO_PAYLOAD), Just(MAX_PAYLOAD), any::<usize>(), 0usize..64],
    ) {
        match next_frame(&data, max) {
            Frame::Message { payload, len } => {
                prop_assert!(len <= data.len() && len == HEADER_LEN + payload.len());
                prop_assert!(payload.len() <= max);
            }
            Frame::Garbage { skip, .. } => prop_assert!(skip >= 1 && skip <= data.len()),
            Frame::Incomplete => {}
        }
        if let Ok(p) = decode_whole(&data) {
            prop_assert_eq!(encode(p), data);
        }
    }

    #[test]
    fn encode_round_trips_through_decode_whole(p in vec(any::<u8>(), 0..9000)) {
        let framed = encode(&p);
        prop_assert_eq!(decode_whole(&framed), Ok(&p[..]));
    }

}

/// The one expensive chunking, done once: the largest FIFO message one byte per read,
/// behind a header whose announced size swallows it until `flush_stale`, then again alone.
#[test]
fn largest_fifo_message_fed_byte_at_a_time_behind_a_swallowing_header() {
    let p: Vec<u8> = (0..MAX_FIFO_PAYLOAD).map(|i| (i * 7) as u8).collect();
    let mut stream = b"junk HP".to_vec();
    stream.extend(MAGIC);
    stream.extend([VERSION, 0, 0, 0]);
    stream.extend((MAX_FIFO_PAYLOAD as u32).to_le_bytes());
    stream.extend([1, 2, 3, 4]);
    stream.extend(encode(&p));
    // Then the same message alone, which the splitter holds (and rescans) byte by byte.
    stream.extend(encode(&p));
    stream.extend(b"HPLG\x01");
    let out = split_all(&stream, &[1]);
    assert_eq!(out.messages, vec![p.clone(), p]);
}

proptest! {
    // Streams of up to several KiB per case, fed in small pieces: fewer cases.
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn a_valid_message_between_garbage_is_found_with_exactly_its_payload(
        before in garbage(),
        payload in fifo_payload(),
        after in garbage(),
        sizes in chunk_sizes(),
    ) {
        let mut stream = before.clone();
        stream.extend(encode(&payload));
        stream.extend(&after);
        let out = split_all(&stream, &sizes);
        prop_assert_eq!(
            out.messages.len(), 1,
            "expected exactly the one message; got {} (before {} bytes, after {} bytes)",
            out.messages.len(), before.len(), after.len()
        );
        prop_assert_eq!(&out.messages[0], &payload);
        prop_assert_eq!(out.offsets[0], before.len() as u64);
        if before.is_empty() && after.is_empty() {
            prop_assert_eq!(out.garbage_reports, 0);
        }
    }

    #[test]
    fn n_messages_split_anywhere_come_out_in_order(
        payloads in vec(fifo_payload(), 1..6),
        sizes in chunk_sizes(),
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
        // Byte-at-a-time over many KiB is quadratic in the splitter (see chunk_sizes):
        // keep the tiny reads but mix in a large one to bound the case's time.
        let sizes = if sizes == [1] && stream.len() > 8192 { vec![1, 1, 3, 1, 700] } else { sizes };
        let out = split_all(&stream, &sizes);
        prop_assert_eq!(out.garbage_reports, 0);
        let starts: Vec<u64> = payloads
            .iter()
            .scan(0u64, |at, p| {
                let here = *at;
                *at += (HEADER_LEN + p.len()) as u64;
                Some(here)
            })
            .collect();
        prop_assert_eq!(out.offsets, starts);
        prop_assert_eq!(out.messages, payloads);
    }
}

// ---------------------------------------------------------------------------------------
// Event parser
// ---------------------------------------------------------------------------------------

const SPECIAL: [&[u8]; 4] = [b"ACTION", b"DEVPATH", b"SUBSYSTEM", b"SEQNUM"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // A small pool, so keys repeat and `get` must take the last one.
        prop::sample::select(vec![&b"MODALIAS"[..], b"DEVNAME", b"X", b"a.b", b"PRODUCT"])
            .prop_map(|k| k.to_vec()),
        vec(
            any::<u8>().prop_filter("no = or NUL", |b| *b != b'=' && *b != 0),
            1..12
        ),
    ]
    .prop_filter("not one of the indexed keys", |k| {
        !SPECIAL.contains(&&k[..])
    })
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..24)
}

fn nonempty_value() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..24)
}

type Vars = Vec<(Vec<u8>, Vec<u8>)>;

/// arg1, and a valid variable list: ACTION and DEVPATH somewhere, maybe SUBSYSTEM and a
/// valid SEQNUM, other keys (possibly repeated) around them.
fn event_parts() -> impl Strategy<Value = (Vec<u8>, Vars, Option<u64>)> {
    (
        vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..12),
        vec((key(), value()), 0..12),
        nonempty_value(),
        nonempty_value(),
        proptest::option::of(value()),
        proptest::option::of(0u64..u64::MAX),
        any::<[prop::sample::Index; 4]>(),
    )
        .prop_map(|(arg1, mut vars, action, devpath, sub, seq, at)| {
            let mut insert = |k: &[u8], v: Vec<u8>, i: &prop::sample::Index| {
                let pos = i.index(vars.len() + 1);
                vars.insert(pos, (k.to_vec(), v));
            };
            insert(b"ACTION", action, &at[0]);
            insert(b"DEVPATH", devpath, &at[1]);
            if let Some(s) = sub {
                insert(b"SUBSYSTEM", s, &at[2]);
            }
            if let Some(n) = seq {
                insert(b"SEQNUM", n.to_string().into_bytes(), &at[3]);
            }
            (arg1, vars, seq)
        })
}

fn payload_of(arg1: &[u8], vars: &Vars) -> Vec<u8> {
    let mut p = arg1.to_vec();
    p.push(0);
    for (k, v) in vars {
        p.extend(k);
        p.push(b'=');
        p.extend(v);
        p.push(0);
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn event_from_payload_never_panics(
        p in prop_oneof![
            vec(any::<u8>(), 0..300),
            vec(prop::sample::select(&b"\0=ACTIONDEVPATHSEQNUM0123456789-a"[..]), 0..120),
            // A valid event with random bytes spliced in.
            (event_parts(), vec((any::<prop::sample::Index>(), any::<u8>()), 0..4))
                .prop_map(|((arg1, vars, _), edits)| {
                    let mut p = payload_of(&arg1, &vars);
                    for (i, b) in edits {
                        let at = i.index(p.len());
                        p[at] = b;
                    }
                    p
                }),
        ],
    ) {
        if let Ok(ev) = Event::from_payload(&p) {
            // Every accessor of an accepted event must be usable.
            let _ = (ev.seqnum(), ev.action(), ev.devpath(), ev.subsystem(), ev.arg1());
            let _ = ev.summary().to_string();
            let _ = format!("{ev:?}");
            for (k, _) in ev.vars() {
                let _ = ev.get(k);
            }
            prop_assert_eq!(ev.payload(), &p[..]);
        }
    }

    #[test]
    fn valid_var_lists_round_trip((arg1, vars, seq) in event_parts()) {
        let p = payload_of(&arg1, &vars);
        let ev = Event::from_payload(&p).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let got: Vars = ev.vars().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(&got, &vars);
        let mut last: HashMap<&[u8], &[u8]> = HashMap::new();
        for (k, v) in &vars {
            last.insert(k, v);
        }
        for (k, v) in &last {
            prop_assert_eq!(ev.get(k), Some(*v), "get({:?})", String::from_utf8_lossy(k));
        }
        prop_assert_eq!(ev.get(b"NOT\xffTHERE"), None);
        prop_assert_eq!(ev.action(), last[&b"ACTION"[..]]);
        prop_assert_eq!(ev.devpath(), last[&b"DEVPATH"[..]]);
        prop_assert_eq!(ev.subsystem(), last.get(&b"SUBSYSTEM"[..]).copied().unwrap_or(&arg1));
        prop_assert_eq!(ev.arg1(), &arg1[..]);
        prop_assert_eq!(ev.seqnum(), seq);
        prop_assert_eq!(ev.payload(), &p[..]);
        let built = Event::from_vars(&arg1, vars.iter().map(|(k, v)| (&k[..], &v[..])));
        prop_assert_eq!(built, Ok(ev));
    }
}

/// The event keeps offsets as `u16`, so a payload past 64 KiB wraps them. `from_payload`
/// takes any slice (and `from_vars`, which `hotplugctl inject` feeds, builds one whose
/// argv[1] copy of SUBSYSTEM can push it past 64 KiB): a SEQNUM whose value straddles
/// offset 65536 yields a reversed range that is sliced unchecked.
#[test]
fn event_from_payload_over_64k_does_not_panic() {
    let mut p = b"x\0PAD=".to_vec();
    // "SEQNUM=" then its value starting at offset 65534.
    let pad = 65534 - p.len() - 1 - b"SEQNUM=".len();
    p.extend(std::iter::repeat_n(b'a', pad));
    p.push(0);
    p.extend(b"SEQNUM=1234");
    p.push(0);
    p.extend(b"ACTION=add\0DEVPATH=/x\0");
    let r = std::panic::catch_unwind(|| Event::from_payload(&p).map(|e| e.seqnum()));
    assert!(
        r.is_ok(),
        "from_payload panicked on a {} byte payload",
        p.len()
    );
}

/// The same panic reached through the control protocol: an `inject` request well under
/// `MAX_REQUEST` (64 KiB) whose SUBSYSTEM is copied into argv[1] by `Event::from_vars`,
/// doubling it past 64 KiB. In the daemon this panics a client thread; with the release
/// profile's `panic = "abort"` it takes the whole daemon (and its queue) down.
#[test]
fn inject_with_a_32k_subsystem_does_not_panic() {
    // Layout: SUBSYSTEM value + NUL, "SUBSYSTEM=" value NUL, "ACTION=add\0",
    // "DEVPATH=/xy\0", "SEQNUM=" -> the SEQNUM value starts at 2 * 32746 + 42 = 65534.
    let sub = "s".repeat(32_746);
    let mut lines = vec![
        format!("SUBSYSTEM={sub}"),
        "ACTION=add".to_owned(),
        "DEVPATH=/xy".to_owned(),
        "SEQNUM=1234".to_owned(),
        String::new(),
    ]
    .into_iter();
    let request_bytes: usize = 7 + lines.clone().map(|l| l.len() + 1).sum::<usize>();
    assert!(request_bytes < hotplugd::control::MAX_REQUEST);
    let r = std::panic::catch_unwind(move || {
        hotplugd::control::parse_request("inject", || lines.next()).is_ok()
    });
    assert!(
        r.is_ok(),
        "parse_request panicked on a {request_bytes} byte request"
    );
}

/// The same wrap without a panic: a >64 KiB event is accepted with wrong fields.
#[test]
fn event_fields_past_64k_are_read_correctly_or_refused() {
    let mut p = b"x\0PAD=".to_vec();
    p.extend(std::iter::repeat_n(b'a', 70_000));
    p.push(0);
    p.extend(b"ACTION=add\0DEVPATH=/devices/far\0");
    if let Ok(ev) = Event::from_payload(&p) {
        assert_eq!(ev.action(), b"add");
        assert_eq!(ev.devpath(), b"/devices/far");
    }
}

// ---------------------------------------------------------------------------------------
// Glob matcher
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum RefTok {
    Lit(u8),
    Any,
    Star,
}

/// The obvious exponential matcher for `*`, `?`, `\x` and literals, with a leading `!`
/// negating; `None` for a malformed pattern (a trailing lone `\`).
fn reference_match(pattern: &[u8], text: &[u8]) -> Option<bool> {
    let (neg, body) = match pattern.split_first() {
        Some((b'!', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut toks = Vec::new();
    let mut i = 0;
    while i < body.len() {
        toks.push(match body[i] {
            b'*' => RefTok::Star,
            b'?' => RefTok::Any,
            b'\\' => {
                i += 1;
                RefTok::Lit(*body.get(i)?)
            }
            b => RefTok::Lit(b),
        });
        i += 1;
    }
    fn m(p: &[RefTok], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((RefTok::Star, rest)) => (0..=t.len()).any(|k| m(rest, &t[k..])),
            Some((RefTok::Any, rest)) => !t.is_empty() && m(rest, &t[1..]),
            Some((RefTok::Lit(c), rest)) => t.first() == Some(c) && m(rest, &t[1..]),
        }
    }
    Some(m(&toks, text) != neg)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, .. ProptestConfig::default() })]

    #[test]
    fn glob_never_panics(
        p in prop_oneof![
            vec(any::<u8>(), 0..24),
            vec(prop::sample::select(&b"*?[]!^-\\ab\xff\0"[..]), 0..16),
        ],
        t in vec(any::<u8>(), 0..24),
    ) {
        let r = glob_match(&p, &t);
        if let Ok(pat) = Pattern::new(&p) {
            prop_assert_eq!(pat.matches(Some(&t)), r);
            prop_assert_eq!(pat.as_bytes(), &p[..]);
        } else {
            prop_assert!(!r, "a malformed pattern matched");
        }
    }

    #[test]
    fn glob_agrees_with_the_reference(
        p in vec(prop::sample::select(&b"ab*?\\"[..]), 0..10),
        bang in any::<bool>(),
        t in vec(prop::sample::select(&b"ab*?\\!"[..]), 0..10),
    ) {
        let mut pattern = if bang { vec![b'!'] } else { Vec::new() };
        pattern.extend(p);
        let expected = reference_match(&pattern, &t).unwrap_or(false);
        prop_assert_eq!(
            glob_match(&pattern, &t), expected,
            "pattern {:?} text {:?}",
            String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&t)
        );
    }

    #[test]
    fn single_byte_classes_agree_with_membership(
        members in vec(any::<u8>(), 1..6),
        negate in any::<bool>(),
        b in any::<u8>(),
    ) {
        // `[...]` with every member escaped is exactly a membership test.
        let mut p = vec![b'['];
        if negate {
            p.push(b'!');
        }
        for m in &members {
            p.push(b'\\');
            p.push(*m);
        }
        p.push(b']');
        prop_assert_eq!(glob_match(&p, &[b]), members.contains(&b) != negate);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Backtracking-heavy patterns over long texts return (and correctly). An exponential
    /// matcher would not finish these; the test asserts completion, not a time.
    #[test]
    fn pathological_patterns_return(stars in 1usize..24, n in 1000usize..30_000, lead in any::<bool>()) {
        let text = vec![b'a'; n];
        let mut p = if lead { b"*".to_vec() } else { Vec::new() };
        for _ in 0..stars {
            p.extend(b"a*");
        }
        let with_b = [&p[..], b"b"].concat();
        prop_assert!(!glob_match(&with_b, &text));
        // `*a*a...*a*` needs `stars` a's.
        prop_assert_eq!(glob_match(&p, &text), n >= stars);
        let mut q = p.clone();
        q.extend(b"?a?a?a");
        let _ = glob_match(&q, &text);
    }
}

// ---------------------------------------------------------------------------------------
// Config / rule parser
// ---------------------------------------------------------------------------------------

/// A TOML basic string holding `s` exactly.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Check every error is `x.toml:LINE:COL: message` on one line, LINE within the text.
fn check_errors(text: &str, errors: &hotplugd::config::ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.0.is_empty(), "Err with no errors");
    let lines = text.split('\n').count();
    for e in &errors.0 {
        let shown = e.to_string();
        prop_assert!(
            shown.starts_with("x.toml:"),
            "error not prefixed by the file: {:?}",
            shown
        );
        let rest = &shown["x.toml:".len()..];
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| TestCaseError::fail(format!("no LINE in {shown:?}")))?;
        let col: usize = parts
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| TestCaseError::fail(format!("no COL in {shown:?}")))?;
        let msg = parts.next().unwrap_or("");
        prop_assert!(
            line >= 1 && line <= lines,
            "line {} of {}: {:?}",
            line,
            lines,
            shown
        );
        prop_assert!(col >= 1, "col {}: {:?}", col, shown);
        // The message may be empty: see `a_value_missing_at_end_of_file_is_explained`.
        prop_assert!(msg.starts_with(' '), "no message separator: {:?}", shown);
        prop_assert!(!shown.contains('\n'), "multi-line error: {:?}", shown);
        prop_assert_eq!((e.line, e.col), (line, col));
    }
    Ok(())
}

/// TOML-looking text: fragments of the config language glued at random.
fn tomlish() -> impl Strategy<Value = String> {
    let frag = prop::sample::select(vec![
        "[daemon]\n",
        "[[rule]]\n",
        "[rule]\n",
        "name = \"r\"\n",
        "name = \"r\"\n",
        "name = \"\"\n",
        "name = 1\n",
        "run = [\"/bin/true\"]\n",
        "run = [\"$A\", \"${\", \"${1}\"]\n",
        "run = []\n",
        "run = \"x\"\n",
        "match = { ACTION = \"add\" }\n",
        "match = { ACTION = [\"a\", \"[b\"] }\n",
        "match = { \"\" = \"x\", \"a=b\" = [] }\n",
        "match.X = 1\n",
        "timeout = \"1m30s\"\n",
        "timeout = 0\n",
        "timeout = \"99999999999h\"\n",
        "last = true\n",
        "last = \"yes\"\n",
        "gap_timeout = \"500ms\"\n",
        "handler_timeout = -1\n",
        "coalesce = false\n",
        "max_output_bytes = -5\n",
        "seqnum_file = \"\"\n",
        "hotplug_d = 3\n",
        "daemon = 1\n",
        "x = 1979-05-27T07:32:00Z\n",
        "y = 18446744073709551615\n",
        "z = 1.5\n",
        "é = 'ü'\n",
        "= \n",
        "\"",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\n",
        "#",
        "'''",
        "\"\"\"",
        "\t",
        "\r\n",
    ]);
    vec(frag, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn config_parse_never_panics(text in prop_oneof![any::<String>(), tomlish()]) {
        // Neither fragment set nor random text names a rules_dir, so nothing is read.
        prop_assume!(!text.contains("rules_dir"));
        if let Err(errors) = Config::parse(&text, Path::new("x.toml")) {
            check_errors(&text, &errors)?;
        }
    }

    #[test]
    fn arbitrary_strings_in_a_rule_skeleton_parse_or_report_positions(
        name in any::<String>(),
        key in prop_oneof![Just("DEVTYPE".to_owned()), any::<String>()],
        pattern in prop_oneof![any::<String>(), vec(prop::sample::select(&b"*?[]!-\\a"[..]), 0..8)
            .prop_map(|v| String::from_utf8(v).unwrap())],
        run0 in prop_oneof![Just("/bin/true".to_owned()), any::<String>()],
        run1 in prop_oneof![any::<String>(), vec(prop::sample::select(&b"${}_aZ9 "[..]), 0..8)
            .prop_map(|v| String::from_utf8(v).unwrap())],
        timeout in prop_oneof![Just("2s".to_owned()), any::<String>(), "[0-9]{1,3}(ms|s|m|h)?"],
    ) {
        let text = format!(
            "[daemon]\ngap_timeout = \"1s\"\n\n[[rule]]\nname = {}\nmatch = {{ ACTION = \"add\", {} = {} }}\nrun = [{}, {}]\ntimeout = {}\n",
            toml_str(&name), toml_str(&key), toml_str(&pattern),
            toml_str(&run0), toml_str(&run1), toml_str(&timeout),
        );
        // Braces only in ATTR{name} and ATTRS{name}, a relative name of plain parts.
        let braces_ok = match key.split_once('{') {
            None => !key.contains('}') && !matches!(key.as_str(), "ATTR" | "ATTRS"),
            Some((head, rest)) => {
                matches!(head, "ATTR" | "ATTRS")
                    && rest.strip_suffix('}').is_some_and(|n| {
                        !n.is_empty()
                            && n.split('/').all(|p| {
                                !matches!(p, "" | "." | "..") && !p.contains(['{', '}'])
                            })
                    })
            }
        };
        let expect_ok = !name.trim().is_empty()
            && !key.is_empty() && !key.contains(['=', '\0']) && key != "ACTION" && braces_ok
            && Pattern::new(pattern.as_bytes()).is_ok()
            && Template::parse(run0.as_bytes()).is_ok_and(|t| !t.is_empty())
            && Template::parse(run1.as_bytes()).is_ok()
            && hotplugd::config::parse_duration(&timeout).is_ok();
        match Config::parse(&text, Path::new("x.toml")) {
            Ok(c) => {
                prop_assert!(expect_ok, "accepted:\n{}", text);
                prop_assert_eq!(c.rules.names().collect::<Vec<_>>(), vec![name.as_str()]);
            }
            Err(errors) => {
                prop_assert!(!expect_ok, "refused a valid config:\n{}\n{}", text, errors);
                check_errors(&text, &errors)?;
            }
        }
    }
}

/// toml reports a value missing at the very end of the text (`key =` with no newline
/// after it) with an empty message; `Diag::document` passes it through, so
/// `hotplugd --check-config` prints `FILE:1:4: ` and nothing else.
#[test]
fn a_value_missing_at_end_of_file_is_explained() {
    for text in ["a =", "[daemon]\ngap_timeout ="] {
        let errors = Config::parse(text, Path::new("x.toml")).unwrap_err();
        for e in &errors.0 {
            assert!(
                !e.message.trim().is_empty(),
                "{text:?}: empty message in {e:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Expansion
// ---------------------------------------------------------------------------------------

fn lookup_in<'v>(vars: &'v [(Vec<u8>, Vec<u8>)]) -> impl Fn(&[u8]) -> Option<&'v [u8]> + 'v {
    move |k| vars.iter().rev().find(|(n, _)| n == k).map(|(_, v)| &v[..])
}

#[derive(Debug, Clone)]
enum Seg {
    Lit(Vec<u8>),
    Dollar,
    Braced(String),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, .. ProptestConfig::default() })]

    #[test]
    fn template_never_panics(
        s in prop_oneof![
            vec(any::<u8>(), 0..40),
            vec(prop::sample::select(&b"${}_aZ9-$"[..]), 0..24),
        ],
        vars in vec(("[A-Za-z_][A-Za-z0-9_]{0,3}", vec(any::<u8>(), 0..8)), 0..6),
    ) {
        let vars: Vec<(Vec<u8>, Vec<u8>)> =
            vars.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect();
        if let Ok(t) = Template::parse(&s) {
            let out = t.expand(lookup_in(&vars));
            if t.is_literal() {
                prop_assert_eq!(out, t.expand(|_| None));
            }
            if t.is_empty() {
                prop_assert!(t.expand(lookup_in(&vars)).is_empty());
            }
        }
    }

    #[test]
    fn a_template_without_dollar_is_the_identity(
        s in vec(any::<u8>().prop_filter("no $", |b| *b != b'$'), 0..64),
    ) {
        let t = Template::parse(&s).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(t.is_literal());
        prop_assert_eq!(t.is_empty(), s.is_empty());
        prop_assert_eq!(t.expand(|_| Some(b"NO")), s);
    }

    #[test]
    fn doubled_dollars_are_literal(s in vec(any::<u8>(), 0..64)) {
        let escaped: Vec<u8> =
            s.iter().flat_map(|&b| if b == b'$' { vec![b'$', b'$'] } else { vec![b] }).collect();
        let t = Template::parse(&escaped).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(t.is_literal());
        prop_assert_eq!(t.expand(|_| Some(b"NO")), s);
    }

    #[test]
    fn braced_references_expand_to_their_values(
        segs in vec(prop_oneof![
            vec(any::<u8>().prop_filter("no $", |b| *b != b'$'), 0..6).prop_map(Seg::Lit),
            Just(Seg::Dollar),
            "[A-Za-z_][A-Za-z0-9_]{0,4}".prop_map(Seg::Braced),
        ], 0..10),
        vars in vec(("[A-Za-z_][A-Za-z0-9_]{0,2}", vec(any::<u8>(), 0..8)), 0..8),
    ) {
        let vars: Vec<(Vec<u8>, Vec<u8>)> =
            vars.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect();
        let lookup = lookup_in(&vars);
        let mut template = Vec::new();
        let mut expected = Vec::new();
        for seg in &segs {
            match seg {
                Seg::Lit(l) => {
                    template.extend(l);
                    expected.extend(l);
                }
                Seg::Dollar => {
                    template.extend(b"$$");
                    expected.push(b'$');
                }
                Seg::Braced(n) => {
                    template.extend(format!("${{{n}}}").bytes());
                    expected.extend(lookup(n.as_bytes()).unwrap_or_default());
                }
            }
        }
        let t = Template::parse(&template).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(t.expand(lookup), expected);
    }
}

/// The benchmarks' C programs frame messages with `benches/c/frame.h`; it must compute the
/// same checksum as the daemon, or the C shim would not be doing the shim's job.
#[test]
fn c_frame_checksum_matches() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ck.c");
    let bin = dir.path().join("ck");
    let inputs: Vec<Vec<u8>> = (0..40usize)
        .map(|n| (0..n).map(|i| (i * 37 + n) as u8).collect())
        .collect();
    let mut c = String::from("#include <stdio.h>\n#include \"frame.h\"\nint main(void) {\n");
    for p in &inputs {
        let bytes: Vec<String> = p.iter().map(|b| b.to_string()).collect();
        // An empty C array is not allowed: the empty input gets one unused byte.
        let init = if bytes.is_empty() {
            "0".to_string()
        } else {
            bytes.join(",")
        };
        c += &format!(
            "{{ static const unsigned char p[] = {{{init}}}; printf(\"%u\\n\", frame_checksum(p, {})); }}\n",
            p.len()
        );
    }
    c += "return 0; }\n";
    std::fs::write(&src, c).unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/c");
    let st = std::process::Command::new("cc")
        .args(["-O2", "-I", include, "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (gcc) runs");
    assert!(st.success());
    let out = std::process::Command::new(&bin).output().unwrap();
    let got: Vec<u32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let want: Vec<u32> = inputs
        .iter()
        .map(|p| hotplugd::message::checksum(p))
        .collect();
    assert_eq!(got, want);
}
