//! The shape of a `[[rule]]` table: its fields, its `match` patterns and its `run` argv,
//! read from the spanned tree of [`crate::spanned`] with every mistake reported at its
//! `file:line:col`, not only the first.

use super::attrs::{self, KeyKind, SysMatch};
use super::{Matcher, NodeSpec, Pattern, Rule, Template};
use crate::spanned::{Diag, Key, Node, Span, Value};

const RULE_FIELDS: &[&str] = &[
    "name",
    "match",
    "run",
    "timeout",
    "last",
    // Nodes and links (see `node_key`).
    "owner",
    "group",
    "mode",
    "links",
    "link_priority",
    // Background handlers.
    "background",
    // Imported properties.
    "import",
    // Lanes: the rule's events run alone.
    "exclusive",
];

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
    let mut nodes = NodeSpec::default();
    let mut background = false;
    let mut import = None;
    let mut exclusive = false;
    let Some(table) = d.table(v, "a rule table") else {
        return ParsedRule { name, rule: None };
    };
    let (mut has_name, mut has_run) = (false, false);
    let mut has_node_key = false;
    for (key, value) in table {
        // (`link_priority` alone sets up nothing.)
        has_node_key |= ["owner", "group", "mode", "links"].contains(&key.name.as_str());
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
            "background" => background = d.boolean(&value).unwrap_or(false),
            "import" => import = d.boolean(&value).map(|b| (b, value.span.clone())),
            "exclusive" => exclusive = d.boolean(&value).unwrap_or(false),
            _ if node_key(d, &key, &value, &mut nodes) => {}
            _ => d.unknown_field(&key, RULE_FIELDS),
        }
    }
    // A rule that only sets up nodes and links has nothing to run.
    let has_nodes = has_node_key;
    if !has_name {
        d.error(&table_span, "missing field `name`");
    }
    if !has_run && !has_nodes {
        d.error(
            &table_span,
            "missing field `run` (or a node key: `owner`, `group`, `mode`, `links`)",
        );
    }
    // An import's output must be read before the next rule is planned: it cannot run
    // detached, and there is nothing to import without a program.
    let import = match import {
        Some((true, span)) if background => {
            d.error(&span, "`import` and `background` exclude each other");
            false
        }
        Some((true, span)) if !has_run => {
            d.error(
                &span,
                "`import` needs `run` (the program that prints KEY=VALUE lines)",
            );
            false
        }
        Some((b, _)) => b,
        None => false,
    };
    let run = if has_run { run } else { Some(Box::default()) };
    let rule = match (&name, run) {
        (Some((n, _)), Some(run)) if d.errors.len() == errors_before => Some(Rule {
            name: n.clone(),
            matchers,
            run,
            timeout,
            last,
            nodes: has_nodes.then_some(nodes),
            background,
            import,
            exclusive,
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

// ---- nodes and links -------------------------------------------------------------------

/// The node keys of a rule: `owner`, `group` (names resolved now, or numbers), `mode` (an
/// octal string), `links` (`$VAR` templates relative to `dev_dir`, never with `..`) and
/// `link_priority`. Returns false for any other key.
fn node_key(d: &mut Diag, key: &Key, v: &Value, nodes: &mut NodeSpec) -> bool {
    match key.name.as_str() {
        "owner" => nodes.uid = id(d, v, "user", "/etc/passwd"),
        "group" => nodes.gid = id(d, v, "group", "/etc/group"),
        "mode" => nodes.mode = mode(d, v),
        "links" => nodes.links = links(d, v),
        "link_priority" => {
            if let Node::Int(i) = v.node {
                match i32::try_from(i) {
                    Ok(p) => nodes.link_priority = p,
                    Err(_) => d.error(&v.span, format!("link_priority {i} is out of range")),
                }
            } else {
                d.invalid_type(v, "an integer");
            }
        }
        _ => return false,
    }
    true
}

/// A number, or a name looked up in `file` itself rather than through NSS: the daemon is
/// linked statically (glibc's NSS modules cannot load into it) and runs before any
/// network directory would answer, as mdev does.
fn id(d: &mut Diag, v: &Value, what: &str, file: &str) -> Option<u32> {
    let name = match &v.node {
        Node::Int(i) => {
            return u32::try_from(*i)
                .map_err(|_| d.error(&v.span, format!("{what} id {i} is out of range")))
                .ok();
        }
        Node::Str(s) => s.clone(),
        _ => {
            d.invalid_type(v, &format!("a {what} name or number"));
            return None;
        }
    };
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    match crate::devnodes::id_from_file(std::path::Path::new(file), &name) {
        Ok(Some(n)) => Some(n),
        Ok(None) => {
            d.error(&v.span, format!("unknown {what} {name:?} (not in {file})"));
            None
        }
        Err(e) => {
            d.error(
                &v.span,
                format!("cannot look up {what} {name:?} in {file}: {e}"),
            );
            None
        }
    }
}

fn mode(d: &mut Diag, v: &Value) -> Option<u32> {
    let Node::Str(s) = &v.node else {
        d.invalid_type(v, "an octal string such as \"0660\"");
        return None;
    };
    match u32::from_str_radix(s, 8) {
        Ok(m) if !s.is_empty() && s.len() <= 4 && m <= 0o7777 => Some(m),
        _ => {
            d.error(
                &v.span,
                format!("bad mode {s:?}: expected 1 to 4 octal digits such as \"0660\""),
            );
            None
        }
    }
}

fn links(d: &mut Diag, v: &Value) -> Box<[Template]> {
    let Node::Array(items) = &v.node else {
        d.invalid_type(v, "an array of link paths relative to dev_dir");
        return Box::default();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(s) = d.string(item) else { continue };
        if !crate::devnodes::safe_relative(s.as_bytes()) {
            d.error(
                &item.span,
                format!("bad link {s:?}: a path relative to dev_dir, without `..`"),
            );
            continue;
        }
        match Template::parse(s.as_bytes()) {
            Ok(t) => out.push(t),
            Err(e) => d.error(&item.span, format!("in link {s:?}: {e}")),
        }
    }
    out.into()
}
