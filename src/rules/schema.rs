//! The config files' syntax: a TOML tree with a byte span on every key and value, the
//! typed reads over it that turn each mistake into one `file:line:col` error, and the
//! shape of a `[[rule]]` table.
//!
//! Why not `#[derive(Deserialize)]` structs with `deny_unknown_fields`: serde stops at the
//! first error of a file, and an admin fixing a rule set wants every mistake in one run.
//! So each file is read into this generic spanned tree (only a TOML syntax error aborts
//! it) and the schema is checked by hand, reporting errors the way serde would word them
//! (`unknown field`, `missing field`, `invalid type`).
//!
//! Why not `toml::Spanned<T>` for the tree: it fails outright on implicit tables (dotted
//! keys like `match.ACTION = "add"`, or `[a.b]` without `[a]`), which carry no span. The
//! `Deserialize` impls here speak the same span protocol toml uses for `Spanned` (the
//! `$__serde_spanned_private_*` names below) but also accept a value without a span.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Matcher, Pattern, Rule, Template};
use crate::config::{parse_duration, ConfigError};

pub(crate) type Span = Range<usize>;

// toml 0.8's (serde_spanned 0.6's) protocol: a struct with this name and fields asks the
// toml deserializer for the span, which it then hands over as a three-entry map.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPAN_START: &str = "$__serde_spanned_private_start";
const SPAN_END: &str = "$__serde_spanned_private_end";
const SPAN_VALUE: &str = "$__serde_spanned_private_value";
const SPAN_FIELDS: &[&str] = &[SPAN_START, SPAN_END, SPAN_VALUE];
// A TOML datetime arrives as a one-entry map with this key.
const DATETIME: &str = "$__toml_private_datetime";

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

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    name: v.to_owned(),
                    span: 0..0,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Key, A::Error> {
                let (span, name) = spanned_map::<A, String>(map)?;
                Ok(Key { name, span })
            }
        }
        d.deserialize_struct(SPANNED, SPAN_FIELDS, KeyVisitor)
    }
}

/// Read the rest of a span map: `start`, `end`, then the value.
fn spanned_map<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    mut map: A,
) -> Result<(Span, T), A::Error> {
    let mut start = None;
    let mut end = None;
    while let Some(k) = map.next_key::<Key>()? {
        match k.name.as_str() {
            SPAN_START => start = Some(map.next_value::<usize>()?),
            SPAN_END => end = Some(map.next_value::<usize>()?),
            SPAN_VALUE => {
                let v = map.next_value::<T>()?;
                let start = start.unwrap_or(0);
                return Ok((start..end.unwrap_or(start), v));
            }
            other => return Err(de::Error::unknown_field(other, SPAN_FIELDS)),
        }
    }
    Err(de::Error::missing_field(SPAN_VALUE))
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_struct(SPANNED, SPAN_FIELDS, ValueVisitor)
    }
}

/// The bare value inside a span map.
struct Inner(Node);

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Inner, D::Error> {
        d.deserialize_any(ValueVisitor).map(|v| Inner(v.node))
    }
}

struct ValueVisitor;

fn unspanned<E>(node: Node) -> Result<Value, E> {
    Ok(Value { span: 0..0, node })
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        unspanned(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        unspanned(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => unspanned(Node::Int(v)),
            Err(_) => Err(E::custom("integer out of range")),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        unspanned(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        unspanned(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        unspanned(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        unspanned(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key::<Key>()? else {
            return unspanned(Node::Table(Vec::new()));
        };
        match first.name.as_str() {
            SPAN_START => {
                let start = map.next_value::<usize>()?;
                let (span, Inner(node)) = spanned_map::<A, Inner>(map)?;
                let span = start..span.end.max(start);
                return Ok(Value { span, node });
            }
            DATETIME => return unspanned(Node::Datetime(map.next_value::<String>()?)),
            _ => {}
        }
        let mut table = Vec::new();
        let mut key = Some(first);
        while let Some(k) = key {
            let mut v = map.next_value::<Value>()?;
            // An implicit table (`a.b = 1` makes `a`) has no span of its own.
            if v.span.is_empty() {
                v.span = k.span.clone();
            }
            table.push((k, v));
            key = map.next_key::<Key>()?;
        }
        unspanned(Node::Table(table))
    }
}

/// One file being checked: where errors go and how spans become `line:col`.
pub(crate) struct Diag<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub errors: &'a mut Vec<ConfigError>,
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
    /// Parse the file into its top-level table, or report the syntax error.
    pub fn document(&mut self) -> Option<Table> {
        match toml::from_str::<Value>(self.text) {
            Ok(Value {
                node: Node::Table(t),
                ..
            }) => Some(t),
            Ok(v) => {
                self.invalid_type(&v, "a table");
                None
            }
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let mut msg = e.message().trim_end().replace('\n', ": ");
                if msg.is_empty() {
                    // toml says nothing for a value missing at the very end of the text.
                    msg = "expected a value, found the end of the file".into();
                }
                self.error(&span, msg);
                None
            }
        }
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

const RULE_FIELDS: &[&str] = &["name", "match", "run", "timeout", "last"];

/// What came out of one `[[rule]]` table: the name even when the rest is wrong (so a
/// duplicate is still caught), the rule only when the table had no error.
pub(super) struct ParsedRule {
    pub name: Option<(String, Span)>,
    pub rule: Option<Rule>,
}

pub(super) fn rule(d: &mut Diag, v: Value) -> ParsedRule {
    let errors_before = d.errors.len();
    let table_span = v.span.clone();
    let mut name = None;
    let mut matchers = Vec::new();
    let mut run = None;
    let mut timeout = None;
    let mut last = false;
    let Some(table) = d.table(v, "a rule table") else {
        return ParsedRule { name, rule: None };
    };
    let (mut has_name, mut has_run) = (false, false);
    for (key, value) in table {
        match key.name.as_str() {
            "name" => {
                has_name = true;
                if let Some(s) = d.string(&value) {
                    if s.trim().is_empty() {
                        d.error(&value.span, "rule `name` must not be empty");
                    } else {
                        name = Some((s.to_owned(), value.span.clone()));
                    }
                }
            }
            "match" => {
                if let Some(t) = d.table(value, "a table of VARIABLE = pattern(s)") {
                    matchers = t
                        .into_iter()
                        .filter_map(|(k, v)| matcher(d, k, v))
                        .collect();
                }
            }
            "run" => {
                has_run = true;
                run = argv(d, &value);
            }
            "timeout" => timeout = d.duration(&value),
            "last" => last = d.boolean(&value).unwrap_or(false),
            _ => d.unknown_field(&key, RULE_FIELDS),
        }
    }
    for (field, present) in [("name", has_name), ("run", has_run)] {
        if !present {
            d.error(&table_span, format!("missing field `{field}`"));
        }
    }
    let rule = match (&name, run) {
        (Some((n, _)), Some(run)) if d.errors.len() == errors_before => Some(Rule {
            name: n.clone(),
            matchers,
            run,
            timeout,
            last,
        }),
        _ => None,
    };
    ParsedRule { name, rule }
}

fn matcher(d: &mut Diag, key: Key, v: Value) -> Option<Matcher> {
    if key.name.is_empty() || key.name.contains(['=', '\0']) {
        d.error(
            &key.span,
            format!("invalid variable name {:?} in `match`", key.name),
        );
        return None;
    }
    let pattern = |d: &mut Diag, v: &Value| -> Option<Pattern> {
        let s = d.string(v)?;
        Pattern::new(s.as_bytes())
            .map_err(|e| d.error(&v.span, format!("bad pattern {s:?}: {e}")))
            .ok()
    };
    let patterns = match &v.node {
        Node::Str(_) => vec![pattern(d, &v)?],
        Node::Array(items) if items.is_empty() => {
            d.error(
                &v.span,
                format!(
                    "empty pattern list for `{}` (it would never match)",
                    key.name
                ),
            );
            return None;
        }
        Node::Array(items) => {
            let ps: Vec<_> = items.iter().map(|i| pattern(d, i)).collect();
            ps.into_iter().collect::<Option<Vec<_>>>()?
        }
        _ => {
            d.invalid_type(&v, "a pattern string or an array of them");
            return None;
        }
    };
    Some(Matcher {
        key: key.name.into_bytes().into(),
        patterns: patterns.into(),
    })
}

fn argv(d: &mut Diag, v: &Value) -> Option<Box<[Template]>> {
    let Node::Array(items) = &v.node else {
        d.invalid_type(v, "an array of strings (program and arguments)");
        return None;
    };
    if items.is_empty() {
        d.error(&v.span, "`run` must not be empty");
        return None;
    }
    let mut templates = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let Some(s) = d.string(item) else {
            ok = false;
            continue;
        };
        match Template::parse(s.as_bytes()) {
            Ok(t) if i == 0 && t.is_empty() => {
                d.error(&item.span, "`run[0]` (the program) must not be empty");
                ok = false;
            }
            Ok(t) => templates.push(t),
            Err(e) => {
                d.error(&item.span, format!("in `run[{i}]`: {e}"));
                ok = false;
            }
        }
    }
    ok.then(|| templates.into())
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
