//! Reading a TOML file as a tree with a byte span on every key and value, the typed reads
//! over it that turn each mistake into one `file:line:col` [`ConfigError`], and the value
//! parsers those reads share ([`parse_duration`], sizes). It knows nothing of what the
//! files mean: [`crate::config`] reads `[daemon]` and [`crate::rules`] reads `[[rule]]`
//! through it, so it sits below both and imports neither.
//!
//! Why not `#[derive(Deserialize)]` structs with `deny_unknown_fields`: serde stops at the
//! first error of a file, and an admin fixing a rule set wants every mistake in one run.
//! So each file is read into this generic tree (only a TOML syntax error aborts it) and
//! the schema is checked by hand, reporting errors the way serde would word them
//! (`unknown field`, `missing field`, `invalid type`).
//!
//! The tree comes from toml's public spanned parser ([`toml::de::DeTable::parse_recoverable`]),
//! not from serde: `toml::Spanned<T>` through serde fails on implicit tables (dotted keys
//! like `match.ACTION = "add"`, or `[a.b]` without `[a]`), and getting spans any other way
//! through serde means speaking toml's doc-hidden `$__serde_spanned_private_*` protocol,
//! which a toml upgrade may change without a compile error.

use std::fmt;
use std::io;
use std::num::IntErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeInteger, DeTable, DeValue};
use toml::Spanned;

pub(crate) type Span = Range<usize>;

/// One problem in one file. `line == 0` means the file as a whole (it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn io(file: &Path, e: &io::Error) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: e.to_string(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            let (file, line, col) = (self.file.display(), self.line, self.col);
            write!(f, "{file}:{line}:{col}: {}", self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub span: Span,
    pub node: Node,
}

/// The entries in the order the file first names them.
pub(crate) type Table = Vec<(Key, Value)>;

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Value>),
    Table(Table),
}

/// What a value is, worded for "invalid type: X, expected Y".
struct Found<'a>(&'a Node);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Node::Str(s) => write!(f, "string {s:?}"),
            Node::Int(i) => write!(f, "integer `{i}`"),
            Node::Float(x) => write!(f, "float `{x}`"),
            Node::Bool(b) => write!(f, "boolean `{b}`"),
            Node::Datetime(d) => write!(f, "datetime `{d}`"),
            Node::Array(_) => f.write_str("array"),
            Node::Table(_) => f.write_str("table"),
        }
    }
}

/// toml's tree turned into ours. A number toml keeps as text but that fits no `i64` or
/// `f64` becomes an error (span, message) in `errors`, and a placeholder in the tree.
struct Convert {
    errors: Vec<(Span, String)>,
}

impl Convert {
    fn table(&mut self, t: DeTable<'_>) -> Table {
        let mut entries: Table = t
            .into_iter()
            .map(|(k, v)| {
                let key = Key {
                    span: k.span(),
                    name: k.into_inner().into_owned(),
                };
                (key, self.value(v))
            })
            .collect();
        // toml's map is sorted by name; errors are reported in file order.
        entries.sort_by_key(|(k, _)| k.span.start);
        entries
    }

    fn value(&mut self, v: Spanned<DeValue<'_>>) -> Value {
        let span = v.span();
        let node = match v.into_inner() {
            DeValue::String(s) => Node::Str(s.into_owned()),
            DeValue::Integer(i) => Node::Int(self.integer(&i, &span)),
            DeValue::Float(x) => Node::Float(self.float(x.as_str(), &span)),
            DeValue::Boolean(b) => Node::Bool(b),
            DeValue::Datetime(d) => Node::Datetime(d.to_string()),
            DeValue::Array(items) => {
                Node::Array(items.into_iter().map(|i| self.value(i)).collect())
            }
            DeValue::Table(t) => Node::Table(self.table(t)),
        };
        Value { span, node }
    }

    /// toml hands over the digits (with any sign, without `0x`/`0o`/`0b` or `_`) and
    /// the radix. An overflow is worded as toml 0.8 worded it (std's words).
    fn integer(&mut self, i: &DeInteger<'_>, span: &Span) -> i64 {
        i64::from_str_radix(i.as_str(), i.radix()).unwrap_or_else(|e| {
            let msg = match e.kind() {
                IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => e.to_string(),
                // toml lets a bare `0x` through, with no digits at all.
                _ => match i.radix() {
                    16 => "invalid hexadecimal integer".to_owned(),
                    8 => "invalid octal integer".to_owned(),
                    2 => "invalid binary integer".to_owned(),
                    _ => "invalid integer".to_owned(),
                },
            };
            self.errors.push((span.clone(), msg));
            0
        })
    }

    fn float(&mut self, text: &str, span: &Span) -> f64 {
        match text.parse::<f64>() {
            // Too many digits for an `f64` is an infinity the text did not ask for.
            Ok(x) if !x.is_infinite() || text.contains("inf") => x,
            _ => {
                let msg = "invalid floating-point number".to_owned();
                self.errors.push((span.clone(), msg));
                0.0
            }
        }
    }
}

/// One file being checked: where errors go and how spans become `line:col`.
pub(crate) struct Diag<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub errors: &'a mut Vec<ConfigError>,
}

/// A TOML basic string holding `s` exactly: quotes, backslashes and control characters
/// escaped.
pub(crate) fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

impl Diag<'_> {
    /// Parse the file into its top-level table, or report the first syntax error.
    pub fn document(&mut self) -> Option<Table> {
        let (doc, syntax) = DeTable::parse_recoverable(self.text);
        let mut convert = Convert { errors: Vec::new() };
        let table = convert.table(doc.into_inner());
        let syntax: Vec<(Span, String)> = syntax
            .iter()
            .map(|e| (e.span().unwrap_or(0..0), e.message().to_owned()))
            .collect();
        // A number toml already found broken is only a placeholder here.
        let numbers = convert.errors.into_iter().filter(|(number, _)| {
            !syntax
                .iter()
                .any(|(at, _)| at.start <= number.end && number.start <= at.end)
        });
        // toml finds errors in passes (grammar, then tables, then values), so its first
        // is not always the file's first; the file's first is the one worth reading.
        let first = syntax
            .iter()
            .cloned()
            .chain(numbers)
            .min_by_key(|(span, _)| span.start);
        let Some((span, message)) = first else {
            return Some(table);
        };
        let msg = self.syntax_message(&span, &message);
        self.error(&span, msg);
        None
    }

    /// toml's message on one line, worded as toml 0.8 worded it where the tests and
    /// the man page know that wording.
    fn syntax_message(&self, span: &Span, message: &str) -> String {
        let msg = message.trim_end().replace('\n', ": ");
        if msg.is_empty() {
            // toml 0.8 said nothing for a value missing at the very end of the text.
            return "expected a value, found the end of the file".into();
        }
        if msg == "duplicate key" {
            // toml points at the key but no longer names it.
            let key = self.text.get(span.clone()).unwrap_or_default();
            let key = key.trim_matches(|c| c == '"' || c == '\'');
            return format!("duplicate key `{key}`");
        }
        // An unclosed string, or a control character in one: what toml expected
        // instead (the closing quote, "visible characters") is no clearer than the kind.
        if msg.starts_with("invalid basic string") || msg.starts_with("invalid literal string") {
            if let Some((kind, _)) = msg.split_once(", expected") {
                return kind.to_owned();
            }
        }
        msg
    }

    pub fn location(&self, span: &Span) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: String::new(),
        }
    }

    pub fn error(&mut self, span: &Span, message: impl Into<String>) {
        let mut e = self.location(span);
        e.message = message.into();
        self.errors.push(e);
    }

    pub fn invalid_type(&mut self, v: &Value, expected: &str) {
        let msg = format!("invalid type: {}, expected {expected}", Found(&v.node));
        self.error(&v.span, msg);
    }

    pub fn unknown_field(&mut self, key: &Key, expected: &[&str]) {
        let list = match expected {
            [] => "there are no fields".to_owned(),
            [one] => format!("`{one}`"),
            [a, b] => format!("`{a}` or `{b}`"),
            many => format!(
                "one of {}",
                many.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.error(
            &key.span,
            format!("unknown field `{}`, expected {list}", key.name),
        );
    }

    pub fn table(&mut self, v: Value, expected: &str) -> Option<Table> {
        match v.node {
            Node::Table(t) => Some(t),
            _ => {
                self.invalid_type(&v, expected);
                None
            }
        }
    }

    pub fn string<'v>(&mut self, v: &'v Value) -> Option<&'v str> {
        match &v.node {
            Node::Str(s) => Some(s),
            _ => {
                self.invalid_type(v, "a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, v: &Value) -> Option<bool> {
        match v.node {
            Node::Bool(b) => Some(b),
            _ => {
                self.invalid_type(v, "a boolean");
                None
            }
        }
    }

    pub fn unsigned(&mut self, v: &Value) -> Option<usize> {
        match v.node {
            Node::Int(i) => match usize::try_from(i) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(&v.span, format!("expected a non-negative integer, got {i}"));
                    None
                }
            },
            _ => {
                self.invalid_type(v, "a non-negative integer");
                None
            }
        }
    }

    /// A size: an integer number of bytes, or a string with a binary suffix
    /// (`"512KiB"`, `"64MiB"`, `"1GiB"`; `K`, `M`, `G` mean the same).
    pub fn bytes(&mut self, v: &Value) -> Option<usize> {
        if let Node::Str(text) = &v.node {
            let t = text.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let mult: Option<usize> = match unit.trim() {
                "" | "B" => Some(1),
                "K" | "KiB" => Some(1 << 10),
                "M" | "MiB" => Some(1 << 20),
                "G" | "GiB" => Some(1 << 30),
                _ => None,
            };
            return match (num.parse::<usize>().ok(), mult) {
                (Some(n), Some(m)) => n.checked_mul(m).or_else(|| {
                    self.error(&v.span, format!("size {t:?} is too large"));
                    None
                }),
                _ => {
                    self.error(
                        &v.span,
                        format!(
                            "invalid size {t:?}: expected bytes, or a number with KiB, MiB or GiB"
                        ),
                    );
                    None
                }
            };
        }
        self.unsigned(v)
    }

    /// A duration string (`"500ms"`, `"2s"`, `"1m"`, `"1h"`, or combined like `"1m30s"`)
    /// or an integer number of seconds; zero is refused.
    pub fn duration(&mut self, v: &Value) -> Option<Duration> {
        let parsed = match &v.node {
            Node::Str(s) => parse_duration(s),
            Node::Int(i) if *i > 0 => Ok(Duration::from_secs(*i as u64)),
            Node::Int(_) => Err("a duration must be greater than zero".to_owned()),
            _ => {
                self.invalid_type(v, "a duration (\"2s\") or an integer number of seconds");
                return None;
            }
        };
        parsed.map_err(|e| self.error(&v.span, e)).ok()
    }
}

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"`, combinations like `"1m30s"`, or bare digits meaning
/// seconds. Zero is an error: a zero timeout would kill every handler at once.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?} (expected e.g. \"500ms\", \"2s\", \"1m\", \"1h\" or an integer number of seconds)")
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| bad())?;
        return nonzero(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    nonzero(total)
}

fn nonzero(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("a duration must be greater than zero".to_owned())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> (Option<Table>, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let mut d = Diag {
            file: Path::new("t.toml"),
            text,
            errors: &mut errors,
        };
        let t = d.document();
        (t, errors)
    }

    #[test]
    fn spans_on_keys_and_values() {
        let text = "[a]\nx = \"s\"\n[[r]]\ny = [1, 2.5]\nb.c = true\nd = 1979-05-27\n";
        let (t, errors) = doc(text);
        assert!(errors.is_empty(), "{errors:?}");
        let t = t.unwrap();
        assert_eq!(t[0].0.name, "a");
        assert_eq!(&text[t[0].0.span.clone()], "a");
        let Node::Table(a) = &t[0].1.node else {
            panic!()
        };
        assert_eq!(&text[a[0].0.span.clone()], "x");
        assert_eq!(&text[a[0].1.span.clone()], "\"s\"");
        let Node::Array(rs) = &t[1].1.node else {
            panic!()
        };
        assert_eq!(line_col(text, rs[0].span.start), (3, 1));
        let Node::Table(r) = &rs[0].node else {
            panic!()
        };
        let Node::Array(y) = &r[0].1.node else {
            panic!()
        };
        assert_eq!(&text[y[1].span.clone()], "2.5");
        // The implicit table `b` borrows its key's span.
        assert_eq!(&text[r[1].1.span.clone()], "b");
        let Node::Table(b) = &r[1].1.node else {
            panic!()
        };
        assert_eq!(&text[b[0].1.span.clone()], "true");
        assert!(matches!(&r[2].1.node, Node::Datetime(d) if d == "1979-05-27"));
    }

    #[test]
    fn syntax_error_position() {
        let (t, errors) = doc("a = 1\nb = \"x\n");
        assert!(t.is_none());
        assert_eq!(errors.len(), 1);
        // toml reports an unterminated string where the closing quote is missing.
        assert_eq!((errors[0].line, errors[0].col), (2, 7));
        assert!(!errors[0].message.contains('\n'));
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "é = 1\nab\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 2));
        assert_eq!(line_col(text, 3), (1, 3));
        assert_eq!(line_col(text, 7), (2, 1));
        assert_eq!(line_col(text, 8), (2, 2));
        assert_eq!(line_col(text, 1), (1, 1), "inside a character");
        assert_eq!(line_col(text, 99), (3, 1));
    }
}
