//! The shape of a `[[rule]]` table: its fields, its `match` patterns and its `run` argv,
//! read from the spanned tree of [`crate::spanned`] with every mistake reported at its
//! `file:line:col`, not only the first.

use super::attrs::{self, KeyKind, SysMatch};
use super::{Matcher, Pattern, Rule, Template};
use crate::spanned::{Diag, Key, Node, Span, Value};

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
    let mut sysfs: Option<Box<SysMatch>> = None;
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
                    for (k, v) in t {
                        match matcher(d, k, v) {
                            Some((KeyKind::Event, m)) => matchers.push(m),
                            Some((kind, m)) => sysfs.get_or_insert_default().push(kind, m.patterns),
                            None => {}
                        }
                    }
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
            sysfs,
        }),
        _ => None,
    };
    ParsedRule { name, rule }
}

/// One `match` key with its patterns, and whether it is an event variable or read from
/// sysfs ([`attrs::classify`]).
fn matcher(d: &mut Diag, key: Key, v: Value) -> Option<(KeyKind, Matcher)> {
    if key.name.is_empty() || key.name.contains(['=', '\0']) {
        d.error(
            &key.span,
            format!("invalid variable name {:?} in `match`", key.name),
        );
        return None;
    }
    let kind = attrs::classify(&key.name)
        .map_err(|e| d.error(&key.span, e))
        .ok();
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
    Some((
        kind?,
        Matcher {
            key: key.name.into_bytes().into(),
            patterns: patterns.into(),
        },
    ))
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
