//! Shell-style glob patterns over bytes, for rule `match` values: compiled once at load
//! time (so a bad pattern is a config error, not a silent non-match at 3 a.m.) and matched
//! in O(pattern × text) with the classic single-backtrack-point algorithm, because event
//! values come from devices and a pattern like `*a*a*a*b` must not be exponential.
//!
//! Syntax: `*` any run of bytes, `?` exactly one byte, `[...]` one byte from a set with
//! `a-z` ranges (`[!...]` or `[^...]` negates it; a `]` first in the set is literal),
//! `\` makes the next byte literal. A leading `!` negates the whole pattern; write `\!`
//! for a literal leading `!`. Everything works on bytes, not characters: `?` matches one
//! byte of a multi-byte UTF-8 character.

use std::fmt;

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("unclosed `[` in pattern")]
    UnclosedClass,
    #[error("pattern ends with a lone `\\`")]
    TrailingBackslash,
    #[error("reversed range `{}-{}` in pattern", *.0 as char, *.1 as char)]
    ReversedRange(u8, u8),
}

#[derive(Clone, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    Any,
    Star,
    /// A 256-bit set: one membership test per byte, negation folded in at compile time.
    Class([u64; 4]),
}

impl Tok {
    fn matches(&self, b: u8) -> bool {
        match self {
            Tok::Lit(l) => *l == b,
            Tok::Any => true,
            Tok::Star => false,
            Tok::Class(set) => set[(b >> 6) as usize] & (1 << (b & 63)) != 0,
        }
    }
}

/// A compiled pattern, possibly negated.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    negated: bool,
    toks: Box<[Tok]>,
    source: Box<[u8]>,
}

impl Pattern {
    pub fn new(pattern: &[u8]) -> Result<Pattern, GlobError> {
        let (negated, body) = match pattern.split_first() {
            Some((b'!', rest)) => (true, rest),
            _ => (false, pattern),
        };
        Ok(Pattern {
            negated,
            toks: compile(body)?.into_boxed_slice(),
            source: pattern.into(),
        })
    }

    /// Whether the pattern accepts a variable's value; `None` is an absent variable, which
    /// only a negated pattern accepts (an absent key "is not foo", but it is not "anything").
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        match value {
            Some(text) => matches(&self.toks, text) != self.negated,
            None => self.negated,
        }
    }

    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// The pattern as written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", String::from_utf8_lossy(&self.source))
    }
}

/// Match `text` against `pattern` (leading `!` negation included). A malformed pattern
/// matches nothing; use [`Pattern::new`] to find out why.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    Pattern::new(pattern).is_ok_and(|p| p.matches(Some(text)))
}

fn compile(pat: &[u8]) -> Result<Vec<Tok>, GlobError> {
    let mut toks = Vec::with_capacity(pat.len());
    let mut i = 0;
    while i < pat.len() {
        let tok = match pat[i] {
            b'*' => {
                i += 1;
                // Consecutive stars mean the same as one and would only add backtracking.
                if toks.last() == Some(&Tok::Star) {
                    continue;
                }
                Tok::Star
            }
            b'?' => {
                i += 1;
                Tok::Any
            }
            b'\\' => {
                let b = *pat.get(i + 1).ok_or(GlobError::TrailingBackslash)?;
                i += 2;
                Tok::Lit(b)
            }
            b'[' => {
                let (set, next) = class(pat, i + 1)?;
                i = next;
                Tok::Class(set)
            }
            b => {
                i += 1;
                Tok::Lit(b)
            }
        };
        toks.push(tok);
    }
    Ok(toks)
}

/// Parse a bracket expression whose body starts at `i`; returns the set and the index
/// after the closing `]`.
fn class(pat: &[u8], mut i: usize) -> Result<([u64; 4], usize), GlobError> {
    let mut set = [0u64; 4];
    let negated = matches!(pat.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let body_start = i;
    // One member, with `\` escaping; `None` when the input ends inside the class.
    let member = |i: usize| -> Option<(u8, usize)> {
        match *pat.get(i)? {
            b'\\' => pat.get(i + 1).map(|&b| (b, i + 2)),
            b => Some((b, i + 1)),
        }
    };
    loop {
        match pat.get(i) {
            None => return Err(GlobError::UnclosedClass),
            Some(b']') if i > body_start => break,
            _ => {}
        }
        let (lo, next) = member(i).ok_or(GlobError::UnclosedClass)?;
        i = next;
        let mut hi = lo;
        if pat.get(i) == Some(&b'-') && !matches!(pat.get(i + 1), None | Some(b']')) {
            let (end, next) = member(i + 1).ok_or(GlobError::UnclosedClass)?;
            if end < lo {
                return Err(GlobError::ReversedRange(lo, end));
            }
            hi = end;
            i = next;
        }
        for b in lo..=hi {
            set[(b >> 6) as usize] |= 1 << (b & 63);
        }
    }
    if negated {
        for w in &mut set {
            *w = !*w;
        }
    }
    Ok((set, i + 1))
}

/// Greedy match remembering only the last `*`: when a later literal fails, the last star
/// absorbs one more byte. Earlier stars never need revisiting, which bounds the work by
/// pattern length × text length.
fn matches(toks: &[Tok], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Star) => {
                backtrack = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(tok) if tok.matches(text[t]) => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((bp, bt)) => {
                p = bp;
                t = bt + 1;
                backtrack = Some((bp, bt + 1));
            }
            None => return false,
        }
    }
    toks[p.min(toks.len())..].iter().all(|t| *t == Tok::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        glob_match(p.as_bytes(), t.as_bytes())
    }

    #[test]
    fn literals_and_wildcards() {
        assert!(m("add", "add"));
        assert!(!m("add", "adds"));
        assert!(!m("add", "ad"));
        assert!(m("", ""));
        assert!(!m("", "x"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("?*", "x"));
        assert!(!m("?*", ""), "?* requires at least one byte");
        assert!(m("usb:v*p*", "usb:v1234p5678d0100"));
        assert!(m("*.ko", "snd.ko"));
        assert!(!m("*.ko", "snd.ko.xz"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(m("a*b*c", "abbbc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("a**b", "ab"));
        assert!(m("???", "abc"));
        assert!(!m("???", "ab"));
    }

    #[test]
    fn classes() {
        assert!(m("sd[a-c]", "sdb"));
        assert!(!m("sd[a-c]", "sdd"));
        assert!(m("sd[!a-c]", "sdd"));
        assert!(m("sd[^a-c]", "sdd"));
        assert!(!m("sd[^a-c]", "sda"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "x"));
        assert!(!m("[!]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[-a]", "-"));
        assert!(m("[\\]]", "]"));
        assert!(m("tty[0-9]*", "tty12"));
        assert!(!m("tty[0-9]*", "ttyS0"));
        assert!(!m("[abc]", ""));
        assert!(m("[*?]", "*"));
        assert!(!m("[*?]", "x"));
    }

    #[test]
    fn escapes_and_negation() {
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("a\\?", "a?"));
        assert!(!m("a\\?", "ab"));
        assert!(m("!foo", "bar"));
        assert!(!m("!foo", "foo"));
        assert!(m("\\!foo", "!foo"));
        assert!(!m("\\!foo", "bar"));
        assert!(m("!", "x"), "`!` negates the empty pattern");
        assert!(!m("!", ""));
        assert!(!m("!!x", "!x"), "only the first `!` negates");
        assert!(m("!!x", "x"));
    }

    #[test]
    fn absent_keys() {
        let neg = Pattern::new(b"!foo").unwrap();
        let star = Pattern::new(b"*").unwrap();
        let empty = Pattern::new(b"").unwrap();
        assert!(neg.matches(None));
        assert!(!star.matches(None));
        assert!(!empty.matches(None));
        assert!(star.matches(Some(b"")));
        assert!(neg.is_negated() && !star.is_negated());
        assert_eq!(neg.as_bytes(), b"!foo");
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(Pattern::new(b"sd[a"), Err(GlobError::UnclosedClass));
        assert_eq!(Pattern::new(b"["), Err(GlobError::UnclosedClass));
        assert_eq!(Pattern::new(b"[]"), Err(GlobError::UnclosedClass));
        assert_eq!(Pattern::new(b"[!"), Err(GlobError::UnclosedClass));
        assert_eq!(Pattern::new(b"[a\\"), Err(GlobError::UnclosedClass));
        assert_eq!(Pattern::new(b"x\\"), Err(GlobError::TrailingBackslash));
        assert_eq!(
            Pattern::new(b"[z-a]"),
            Err(GlobError::ReversedRange(b'z', b'a'))
        );
        assert!(!glob_match(b"sd[a", b"sd[a"));
        assert_eq!(
            GlobError::ReversedRange(b'z', b'a').to_string(),
            "reversed range `z-a` in pattern"
        );
    }

    #[test]
    fn raw_bytes() {
        assert!(glob_match(b"\xff*", b"\xff\x00\x80"));
        assert!(glob_match(b"[\x80-\xff]", b"\xc3"));
        assert!(!glob_match(b"[\x80-\xff]", b"a"));
        assert!(glob_match(b"?", b"\0"));
    }

    #[test]
    fn pathological_patterns_are_fast() {
        let text = vec![b'a'; 10_000];
        let start = std::time::Instant::now();
        assert!(!glob_match(b"*a*a*a*a*a*a*a*a*b", &text));
        assert!(!glob_match(b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(glob_match(b"*a*a*a*a*a", &text));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A deterministic xorshift sweep over short patterns and texts built from the
        // bytes that matter to the parser.
        let alphabet = b"*?[]!^-\\ab\xff\0";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let pl = (next() % 9) as usize;
            let tl = (next() % 7) as usize;
            let p: Vec<u8> = (0..pl)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let t: Vec<u8> = (0..tl)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = glob_match(&p, &t);
        }
    }
}
