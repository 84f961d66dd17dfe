//! udev rules into `[[rule]]` tables: the common subset (matches on `ACTION`, `KERNEL(S)`,
//! `SUBSYSTEM(S)`, `DRIVER(S)`, `ATTR(S){..}`, `ENV{..}`, `DEVPATH`; `MODE`, `OWNER`,
//! `GROUP`, `SYMLINK`, `RUN`, `ENV{..}=`, `OPTIONS` `last_rule`/`link_priority`,
//! `TAG+="uaccess"` on request), with `GOTO`/`LABEL` guards and `ENV` flags folded into
//! the rules they govern.
//!
//! A guard `KEY!="v", GOTO="x"` skips every line up to `LABEL="x"` when its condition holds,
//! so each rule in between runs only when it does not: the guard's condition, negated, is
//! added to each of them. That works for a guard of one condition (`not (a and b)` is an
//! `or`, which one `match` table cannot say), so rules under any other guard are listed.
//! An `ENV{X}="1"` that a later rule of the same file reads is folded the same way: the
//! reader gets the setter's conditions in place of `ENV{X}=="1"`.

use std::collections::HashMap;

use super::{octal_mode, plain_id, rule_name, Import, Rule};
use crate::rules::glob_match;

/// Choices the file cannot make: how to approximate `TAG+="uaccess"`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Give this group read-write access where udev would give the seat's user an ACL;
    /// `None` lists such lines as untranslated.
    pub uaccess_group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Assign,
    Add,
    Remove,
    Final,
}

#[derive(Debug, Clone)]
struct Token {
    key: String,
    attr: Option<String>,
    op: Op,
    value: String,
}

/// One condition on one `match` key: the value matches any of `alts` (globs), or, when
/// `negated`, none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    key: String,
    negated: bool,
    alts: Vec<String>,
}

impl Cond {
    fn negate(&self) -> Cond {
        Cond {
            negated: !self.negated,
            ..self.clone()
        }
    }

    /// The key's patterns, if one TOML value can say this condition alone.
    fn patterns(&self) -> Result<Vec<String>, String> {
        let glob = |a: &str| {
            if a.is_empty() {
                // udev's "" is "unset or empty"; a missing variable matches only a
                // negated pattern.
                "!?*".to_owned()
            } else if let Some(rest) = a.strip_prefix('!') {
                format!("\\!{rest}")
            } else {
                a.to_owned()
            }
        };
        if !self.negated {
            return Ok(self.alts.iter().map(|a| glob(a)).collect());
        }
        match self.alts.as_slice() {
            [a] if a.is_empty() => Ok(vec!["?*".into()]),
            [a] => Ok(vec![format!("!{}", glob(a))]),
            _ => Err(format!(
                "`{}` must match none of {:?}: a TOML array matches any of its patterns",
                self.key, self.alts
            )),
        }
    }

    fn parent_key(&self) -> bool {
        self.key.starts_with("ATTRS{") || ["KERNELS", "SUBSYSTEMS", "DRIVERS"].contains(&&*self.key)
    }
}

/// The physical lines joined at backslash continuations (also inside a quoted value), with
/// the number of the first; comments and blank lines left out.
pub(super) fn logical_lines(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in src.lines().enumerate() {
        // udev drops leading blanks, continuation lines' included.
        let l = raw.trim_start().trim_end_matches(['\r', ' ', '\t']);
        if cur.is_none() && (l.is_empty() || l.starts_with('#')) {
            continue;
        }
        let (body, more) = match l.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (l, false),
        };
        match &mut cur {
            Some((_, s)) => s.push_str(body),
            None => cur = Some((i + 1, body.to_owned())),
        }
        if !more {
            out.extend(cur.take());
        }
    }
    out.extend(cur);
    out
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if start == i {
            return Err(format!("expected a key at column {}", i + 1));
        }
        let key = s[start..i].to_owned();
        let mut attr = None;
        if b.get(i) == Some(&b'{') {
            let close = s[i..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` after {key}"))?;
            attr = Some(s[i + 1..i + close].to_owned());
            i += close + 1;
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let two = s.get(i..i + 2).unwrap_or("");
        let (op, len) = match two {
            "==" => (Op::Eq, 2),
            "!=" => (Op::Ne, 2),
            "+=" => (Op::Add, 2),
            "-=" => (Op::Remove, 2),
            ":=" => (Op::Final, 2),
            _ if b.get(i) == Some(&b'=') => (Op::Assign, 1),
            _ => {
                return Err(format!(
                    "expected an operator after {key} at column {}",
                    i + 1
                ))
            }
        };
        i += len;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'"') {
            return Err(format!(
                "expected a double-quoted value after {key} at column {} (e\"..\" strings are not translated)",
                i + 1
            ));
        }
        i += 1;
        let mut value = String::new();
        loop {
            match s[i..].chars().next() {
                None => return Err(format!("unterminated value of {key}")),
                Some('"') => {
                    i += 1;
                    break;
                }
                Some('\\') if b.get(i + 1) == Some(&b'"') => {
                    value.push('"');
                    i += 2;
                }
                Some(c) => {
                    value.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out.push(Token {
            key,
            attr,
            op,
            value,
        });
    }
}

/// The `match` key a udev match key becomes.
fn match_key(t: &Token) -> Result<String, String> {
    let k = t.key.as_str();
    let attr_ok = |a: &str| {
        !a.is_empty()
            && !a.starts_with('/')
            && a.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && !a.contains(['{', '}', '"', '$', '%', '*', '?', '['])
    };
    match (k, &t.attr) {
        (
            "ACTION" | "KERNEL" | "SUBSYSTEM" | "SUBSYSTEMS" | "KERNELS" | "DRIVER" | "DRIVERS"
            | "DEVPATH",
            None,
        ) => Ok(k.to_owned()),
        ("ATTR" | "ATTRS", Some(a)) if attr_ok(a) => Ok(format!("{k}{{{a}}}")),
        ("ENV", Some(a))
            if a.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok(a.clone())
        }
        _ => Err(format!("{} is not a key hotplugd can match", shown_key(t))),
    }
}

fn shown_key(t: &Token) -> String {
    match &t.attr {
        Some(a) => format!("{}{{{a}}}", t.key),
        None => t.key.clone(),
    }
}

fn cond(t: &Token) -> Result<Cond, String> {
    let key = match_key(t)?;
    if t.value.contains(['%', '$']) {
        return Err(format!(
            "substitution in the match value of {}",
            shown_key(t)
        ));
    }
    Ok(Cond {
        key,
        negated: t.op == Op::Ne,
        alts: t.value.split('|').map(str::to_owned).collect(),
    })
}

/// udev's `%k`, `$devpath`, `$env{X}` ... as `$VAR` templates; `$` left literal doubled.
fn subst(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            '%' => {
                let Some((_, n)) = it.next() else {
                    return Err("a lone `%` at the end".into());
                };
                let braced = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
                    let rest = &s[i + 2..];
                    let name = rest.strip_prefix('{')?.split('}').next()?.to_owned();
                    for _ in 0..name.len() + 2 {
                        it.next();
                    }
                    Some(name)
                };
                match n {
                    'k' => out.push_str("${KERNEL}"),
                    'p' => out.push_str("${DEVPATH}"),
                    'M' => out.push_str("${MAJOR}"),
                    'm' => out.push_str("${MINOR}"),
                    '%' => out.push('%'),
                    'E' => match braced(&mut it) {
                        Some(name) if valid_name(&name) => out.push_str(&format!("${{{name}}}")),
                        _ => return Err("a malformed %E{..}".into()),
                    },
                    'n' => return Err("%n (the kernel number) has no hotplugd variable".into()),
                    other => return Err(format!("%{other} has no hotplugd equivalent")),
                }
            }
            '$' => {
                let rest = &s[i + 1..];
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '$')
                    .take(if rest.starts_with('$') { 1 } else { usize::MAX })
                    .collect();
                for _ in 0..word.chars().count() {
                    it.next();
                }
                match word.as_str() {
                    "$" => out.push_str("$$"),
                    "kernel" => out.push_str("${KERNEL}"),
                    "devpath" => out.push_str("${DEVPATH}"),
                    "major" => out.push_str("${MAJOR}"),
                    "minor" => out.push_str("${MINOR}"),
                    "env" => {
                        let after = &rest[3..];
                        let name = after
                            .strip_prefix('{')
                            .and_then(|a| a.split('}').next())
                            .filter(|n| valid_name(n))
                            .ok_or("a malformed $env{..}")?;
                        for _ in 0..name.len() + 2 {
                            it.next();
                        }
                        out.push_str(&format!("${{{name}}}"));
                    }
                    other => return Err(format!("${other} has no hotplugd equivalent")),
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    n.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `RUN`'s value split as udev splits it: at blanks, with '…' and "…" grouping.
fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (None, ' ' | '\t') => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quote.is_some() {
        return Err("an unclosed quote in RUN".into());
    }
    if any {
        out.push(cur);
    }
    if out.is_empty() {
        return Err("an empty RUN".into());
    }
    Ok(out)
}

/// A guard: `GOTO` at `line` skips to `LABEL=label` when its condition holds. `fold` is
/// what each rule under it gets, or why they cannot be translated.
struct Guard {
    label: String,
    line: usize,
    fold: Result<Vec<Cond>, String>,
}

/// An `ENV{X}="v"` of a translated line: the conditions under which it set `v`.
struct Setter {
    line: usize,
    value: String,
    conds: Vec<Cond>,
    read: bool,
    text: String,
    /// Whether the line's other actions made a rule.
    rest: bool,
}

/// What a line asks for besides its conditions.
#[derive(Default)]
struct Actions {
    owner: Option<String>,
    group: Option<String>,
    mode: Option<String>,
    links: Vec<String>,
    runs: Vec<Vec<String>>,
    env: Vec<(String, String)>,
    last: bool,
    link_priority: Option<i64>,
    uaccess: bool,
    notes: Vec<String>,
}

impl Actions {
    fn any_rule(&self) -> bool {
        self.owner.is_some()
            || self.group.is_some()
            || self.mode.is_some()
            || !self.links.is_empty()
            || !self.runs.is_empty()
            || self.uaccess
    }
}

fn action(t: &Token, a: &mut Actions, opts: &Options) -> Result<(), String> {
    let v = t.value.as_str();
    let assign = matches!(t.op, Op::Assign | Op::Final | Op::Add);
    match (t.key.as_str(), &t.attr) {
        ("MODE", None) if assign => {
            a.mode = Some(octal_mode(v).ok_or_else(|| format!("MODE {v:?} is not an octal mode"))?)
        }
        ("OWNER", None) if assign && plain_id(v) => a.owner = Some(v.to_owned()),
        ("GROUP", None) if assign && plain_id(v) => a.group = Some(v.to_owned()),
        ("SYMLINK", None) if assign => {
            if t.op != Op::Add {
                a.notes.push(
                    "SYMLINK= (not +=) also drops links earlier rules set; translated as +=".into(),
                );
            }
            for l in v.split_whitespace() {
                let l = subst(l)?;
                if !crate::devnodes::safe_relative(l.as_bytes()) {
                    return Err(format!("link {l:?} is not a path below /dev without `..`"));
                }
                a.links.push(l);
            }
        }
        ("RUN", None) | ("RUN", Some(_)) if assign => {
            if t.attr.as_deref().is_some_and(|x| x != "program") {
                return Err(format!("{} runs a udev builtin", shown_key(t)));
            }
            if t.op != Op::Add {
                a.notes.push(
                    "RUN= (not +=) also drops commands earlier rules added; translated as +="
                        .into(),
                );
            }
            let mut argv = split_command(v)?
                .iter()
                .map(|w| subst(w))
                .collect::<Result<Vec<_>, _>>()?;
            if !argv[0].contains('/') {
                // udev runs a bare name from its own directory, not from PATH.
                argv[0] = format!("/usr/lib/udev/{}", argv[0]);
                a.notes.push(format!(
                    "udev runs a bare program name from /usr/lib/udev: {}",
                    argv[0]
                ));
            }
            a.runs.push(argv);
        }
        ("ENV", Some(name)) if matches!(t.op, Op::Assign | Op::Final) && valid_name(name) => {
            if v.contains(['%', '$']) {
                return Err(format!("ENV{{{name}}} is set from a substitution"));
            }
            a.env.push((name.clone(), v.to_owned()));
        }
        ("TAG", None) if t.op == Op::Add && v == "uaccess" => match &opts.uaccess_group {
            Some(_) => a.uaccess = true,
            None => {
                return Err("TAG+=\"uaccess\" gives the seat's logged-in user an ACL (logind); \
                            hotplugd has no seats: --uaccess-group GROUP gives a group access instead"
                    .into())
            }
        },
        ("OPTIONS", None) if t.op == Op::Add || t.op == Op::Assign => {
            for o in v.split(',').map(str::trim) {
                if o == "last_rule" {
                    a.last = true;
                } else if let Some(p) = o.strip_prefix("link_priority=") {
                    a.link_priority =
                        Some(p.parse().map_err(|_| format!("bad link_priority {p:?}"))?);
                } else {
                    return Err(format!("OPTIONS {o:?} has no hotplugd equivalent"));
                }
            }
        }
        _ => {
            let op = match t.op {
                Op::Eq => "==",
                Op::Ne => "!=",
                Op::Assign => "=",
                Op::Add => "+=",
                Op::Remove => "-=",
                Op::Final => ":=",
            };
            return Err(format!(
                "{}{op}{v:?} has no hotplugd equivalent",
                shown_key(t)
            ));
        }
    }
    Ok(())
}

/// All conditions on each key made into one `match` value each, or why they cannot be.
fn combine(conds: &[Cond]) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut keys: Vec<&str> = Vec::new();
    for c in conds {
        if !keys.contains(&c.key.as_str()) {
            keys.push(&c.key);
        }
    }
    let mut out = Vec::new();
    for k in keys {
        let mut cs: Vec<&Cond> = Vec::new();
        for c in conds.iter().filter(|c| c.key == k) {
            if !cs.contains(&c) {
                cs.push(c);
            }
        }
        if let [one] = cs.as_slice() {
            out.push((k.to_owned(), one.patterns()?));
            continue;
        }
        // Several conditions on one key: kept are the alternatives of one positive
        // condition that every other positive one provably covers and that no negated
        // one matches (provable for literal values only).
        let (pos, neg): (Vec<&Cond>, Vec<&Cond>) = cs.iter().partition(|c| !c.negated);
        if pos.is_empty() {
            return Err(format!(
                "`{k}` must match none of several patterns (an `and`)"
            ));
        }
        let attempt = |cand: &Cond| -> Option<Vec<String>> {
            let mut keep = Vec::new();
            for a in &cand.alts {
                let in_all = pos.iter().all(|c| c.alts.iter().any(|g| covers(g, a)));
                let lit = super::literal_glob(a);
                if !in_all && !lit {
                    return None;
                }
                if neg.iter().any(|_| !lit) {
                    return None;
                }
                let hit = |c: &&Cond| {
                    c.alts
                        .iter()
                        .any(|p| glob_match(p.as_bytes(), a.as_bytes()))
                };
                if in_all && !neg.iter().any(hit) {
                    keep.push(a.clone());
                }
            }
            Some(keep)
        };
        let Some(keep) = pos.iter().find_map(|c| attempt(c)) else {
            return Err(format!(
                "several conditions on `{k}` (a guard's and the rule's)"
            ));
        };
        if keep.is_empty() {
            return Err(format!(
                "its conditions on `{k}` (with the guards') never hold together: it never runs"
            ));
        }
        out.push((
            k.to_owned(),
            Cond {
                key: k.to_owned(),
                negated: false,
                alts: keep,
            }
            .patterns()?,
        ));
    }
    Ok(out)
}

/// Whether every value the glob `a` matches, `g` matches too (false when unsure).
fn covers(g: &str, a: &str) -> bool {
    if g == a || (super::literal_glob(a) && glob_match(g.as_bytes(), a.as_bytes())) {
        return true;
    }
    // `prefix*` covers any glob whose literal start begins with that prefix.
    let Some(prefix) = g.strip_suffix('*').filter(|p| super::literal_glob(p)) else {
        return false;
    };
    let lit_start = a.find(['*', '?', '[', '\\', '!']).map_or(a, |i| &a[..i]);
    lit_start.starts_with(prefix)
}

/// Translate one rules file. `stem` names the rules (`STEM-LINE`).
pub fn translate(src: &str, stem: &str, opts: &Options) -> Import {
    let mut imp = Import::default();
    let mut guards: Vec<Guard> = Vec::new();
    let mut setters: HashMap<String, Setter> = HashMap::new();
    // ENV names some untranslated line sets: a reader cannot know their value.
    let mut unknown_env: HashMap<String, usize> = HashMap::new();
    for (line, text) in logical_lines(src) {
        let toks = match tokens(&text) {
            Ok(t) => t,
            Err(e) => {
                if let Some(label) = goto_label(&text) {
                    guards.push(Guard {
                        label,
                        line,
                        fold: Err(format!("the guard at line {line} did not parse")),
                    });
                }
                mark_env_unknown(&text, line, &mut unknown_env);
                imp.skip(line, &text, format!("syntax: {e}"));
                continue;
            }
        };
        // LABEL ends every guard that jumps to it.
        if let Some(l) = toks.iter().find(|t| t.key == "LABEL") {
            guards.retain(|g| g.label != l.value);
            if toks.len() > 1 {
                imp.skip(line, &text, "a LABEL line with other keys");
            }
            continue;
        }
        let goto = toks
            .iter()
            .find(|t| t.key == "GOTO")
            .map(|t| t.value.clone());
        // The line's own conditions, ENV reads folded.
        let mut conds = Vec::new();
        let mut notes = Vec::new();
        let mut cond_err = None;
        for t in toks.iter().filter(|t| matches!(t.op, Op::Eq | Op::Ne)) {
            match cond(t)
                .and_then(|c| fold_env(c, t, &mut setters, &unknown_env, &mut conds, &mut notes))
            {
                Ok(()) => {}
                Err(e) => {
                    cond_err.get_or_insert(e);
                }
            }
        }
        let mut acts = Actions::default();
        let mut act_err = None;
        for t in toks
            .iter()
            .filter(|t| !matches!(t.op, Op::Eq | Op::Ne) && t.key != "GOTO")
        {
            if let Err(e) = action(t, &mut acts, opts) {
                act_err.get_or_insert(e);
            }
        }
        let own_conds = conds.clone();
        // The guards around the line.
        let mut guard_err = None;
        let mut folded_guards = Vec::new();
        for g in &guards {
            match &g.fold {
                Ok(f) => {
                    conds.extend(f.iter().cloned());
                    folded_guards.push(g.line.to_string());
                }
                Err(e) => {
                    guard_err.get_or_insert(format!(
                        "under the guard at line {} (GOTO=\"{}\"): {e}",
                        g.line, g.label
                    ));
                }
            }
        }
        if !folded_guards.is_empty() {
            notes.push(format!(
                "folded in, negated: the GOTO guard{} at line {}",
                if folded_guards.len() > 1 { "s" } else { "" },
                folded_guards.join(", ")
            ));
        }
        if let Some(label) = goto {
            let fold = match (&cond_err, own_conds.as_slice()) {
                (Some(e), _) => Err(e.clone()),
                (None, []) => Err("it skips unconditionally".into()),
                (None, [c]) if c.parent_key() => Err(format!(
                    "its condition is on the parent key `{}`, whose negation is no parent key",
                    c.key
                )),
                (None, [c]) => c.negate().patterns().map(|_| vec![c.negate()]),
                (None, _) => Err("it has several conditions: its negation is an `or`".into()),
            };
            if let Err(e) = &fold {
                notes.push(e.clone());
            }
            guards.push(Guard { label, line, fold });
        }
        let pure_guard = guards.last().is_some_and(|g| g.line == line)
            && act_err.is_none()
            && !acts.any_rule()
            && acts.env.is_empty()
            && !acts.last;
        if pure_guard {
            // Listed once here when it cannot fold; each rule it governs is listed too.
            match guards.last().map(|g| &g.fold) {
                Some(Err(e)) => imp.skip(line, &text, format!("guard not folded: {e}")),
                _ => imp
                    .folded
                    .push((line, "a GOTO guard, folded into the rules it skips".into())),
            }
            continue;
        }
        let err = cond_err.or(guard_err).or(act_err);
        let matches = match err.map_or_else(|| combine(&conds), Err) {
            Ok(m) => m,
            Err(e) => {
                // Whatever this line would have set is unknown to the lines that read it.
                for t in &toks {
                    let set = match (t.key.as_str(), &t.attr) {
                        ("ENV", Some(name)) if !matches!(t.op, Op::Eq | Op::Ne) => name,
                        ("IMPORT", Some(kind)) if kind == "db" => &t.value,
                        _ => continue,
                    };
                    unknown_env.insert(set.clone(), line);
                }
                imp.skip(line, &text, e);
                continue;
            }
        };
        for (name, value) in &acts.env {
            if setters.contains_key(name) || unknown_env.contains_key(name) {
                unknown_env.insert(name.clone(), line);
                // The first setting, if nothing read it yet, is lost too: listed.
                if let Some(old) = setters.remove(name).filter(|o| !o.read) {
                    imp.skip(
                        old.line,
                        &old.text,
                        format!("ENV{{{name}}} is set again at line {line}"),
                    );
                }
                imp.skip(
                    line,
                    &text,
                    format!("ENV{{{name}}} is set on more than one line"),
                );
                continue;
            }
            setters.insert(
                name.clone(),
                Setter {
                    line,
                    value: value.clone(),
                    conds: conds.clone(),
                    read: false,
                    text: text.clone(),
                    rest: acts.any_rule(),
                },
            );
        }
        if acts.last && !acts.any_rule() {
            imp.skip(
                line,
                &text,
                "OPTIONS+=\"last_rule\" with no action of its own",
            );
            continue;
        }
        if acts.link_priority.is_some() && !acts.any_rule() {
            // udev's priority is the device's, for links other rules make; hotplugd's is
            // the rule's own, for its own links.
            imp.skip(
                line,
                &text,
                "OPTIONS link_priority with no link of its own: hotplugd's applies to its \
                 rule's links only",
            );
            continue;
        }
        if !acts.any_rule() {
            if acts.env.is_empty() {
                imp.folded
                    .push((line, "matches only, no action: nothing to write".into()));
            }
            continue;
        }
        notes.extend(acts.notes.iter().cloned());
        if acts.link_priority.is_some() {
            notes.push(
                "link_priority: udev's also ranks the links other rules make for the device; \
                 this one ranks this rule's links"
                    .into(),
            );
        }
        let mut group = acts.group.clone();
        let mut mode = acts.mode.clone();
        if acts.uaccess {
            let g = opts.uaccess_group.clone().unwrap_or_default();
            if group.is_none() {
                group = Some(g.clone());
            }
            if mode.is_none() {
                mode = Some("0660".into());
            }
            notes.push(format!(
                "TAG+=\"uaccess\" approximated: group {:?} (--uaccess-group {g}) with mode {}",
                group.as_deref().unwrap_or_default(),
                mode.as_deref().unwrap_or_default()
            ));
        }
        let mut first = Rule {
            name: rule_name(stem, line, 0),
            line,
            matches: matches.clone(),
            owner: acts.owner.clone(),
            group,
            mode,
            links: acts.links.clone(),
            link_priority: acts.link_priority,
            run: None,
            last: false,
            notes,
        };
        let mut runs = acts.runs.into_iter();
        first.run = runs.next();
        let mut rules = vec![first];
        for (i, run) in runs.enumerate() {
            rules.push(Rule {
                name: rule_name(stem, line, i + 1),
                line,
                matches: matches.clone(),
                run: Some(run),
                notes: vec![format!("RUN {} of line {line}", i + 2)],
                ..Rule::default()
            });
        }
        // udev's last_rule stops after all of this line's commands.
        if let Some(r) = rules.last_mut() {
            r.last = acts.last;
        }
        imp.rules.extend(rules);
    }
    for g in guards.iter().filter(|g| g.fold.is_ok()) {
        imp.folded.push((
            g.line,
            format!(
                "note: LABEL=\"{}\" never came: the guard held to the end",
                g.label
            ),
        ));
    }
    for (name, s) in &setters {
        if s.read && !s.rest {
            imp.folded.push((
                s.line,
                format!(
                    "ENV{{{name}}}=\"{}\", folded into the rules that read it",
                    s.value
                ),
            ));
        }
    }
    imp.folded.sort_by_key(|f| f.0);
    let mut unread: Vec<&Setter> = setters.values().filter(|s| !s.read).collect();
    unread.sort_by_key(|s| s.line);
    for s in unread {
        let rest = if s.rest {
            "; the rest of the line is translated"
        } else {
            ""
        };
        imp.skip(
            s.line,
            &s.text,
            format!(
                "its ENV assignment is read by no later line of this file (hotplugd rules \
                 cannot set variables; a handler with `import = true` can){rest}"
            ),
        );
    }
    imp.skipped.sort_by_key(|s| s.line);
    imp
}

/// An `ENV{X}` condition: on the event's variable X, or, when a line of this file set X,
/// that line's conditions instead.
fn fold_env(
    c: Cond,
    t: &Token,
    setters: &mut HashMap<String, Setter>,
    unknown: &HashMap<String, usize>,
    conds: &mut Vec<Cond>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    if t.key != "ENV" {
        conds.push(c);
        return Ok(());
    }
    if let Some(l) = unknown.get(&c.key) {
        return Err(format!(
            "it reads ENV{{{}}}, set by line {l}, which was not translated",
            c.key
        ));
    }
    let Some(s) = setters.get_mut(&c.key) else {
        conds.push(c);
        return Ok(());
    };
    let hit = c
        .alts
        .iter()
        .any(|a| glob_match(a.as_bytes(), s.value.as_bytes()));
    let folded = match (hit, c.negated) {
        // Reads the value set: true exactly when the setter's conditions held.
        (true, false) => s.conds.clone(),
        (true, true) => match s.conds.as_slice() {
            [one] if !one.parent_key() => vec![one.negate()],
            _ => {
                return Err(format!(
                    "it reads ENV{{{}}} negated, and line {} set it under several conditions",
                    c.key, s.line
                ))
            }
        },
        _ => {
            return Err(format!(
                "it reads ENV{{{}}} for a value other than line {}'s {:?}",
                c.key, s.line, s.value
            ))
        }
    };
    s.read = true;
    notes.push(format!(
        "ENV{{{}}} set at line {} is folded in as that line's conditions",
        c.key, s.line
    ));
    conds.extend(folded);
    Ok(())
}

fn goto_label(text: &str) -> Option<String> {
    let at = text.find("GOTO")?;
    let rest = &text[at..];
    let open = rest.find('"')?;
    let close = rest[open + 1..].find('"')?;
    Some(rest[open + 1..open + 1 + close].to_owned())
}

fn mark_env_unknown(text: &str, line: usize, unknown: &mut HashMap<String, usize>) {
    for part in text.split("ENV{").skip(1) {
        if let Some(end) = part.find('}') {
            let after = part[end + 1..].trim_start();
            if after.starts_with('=') && !after.starts_with("==") || after.starts_with(":=") {
                unknown.insert(part[..end].to_owned(), line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(src: &str) -> Import {
        translate(src, "t", &Options::default())
    }

    #[test]
    fn syntax_real_files_use() {
        let i = tr(
            "KERNEL == \"ttyUSB*\" ,, MODE:=\"660\", GROUP=\"dialout\",\\\n   SYMLINK+=\"my%k\"\n",
        );
        assert!(i.skipped.is_empty(), "{:?}", i.skipped);
        let r = &i.rules[0];
        assert_eq!(r.matches, [("KERNEL".into(), vec!["ttyUSB*".into()])]);
        assert_eq!(r.mode.as_deref(), Some("0660"));
        assert_eq!(r.links, ["my${KERNEL}"]);
        // A continuation inside a quoted value.
        let i = tr("ATTRS{id/vendor}==\"04\\\n03\", RUN+=\"/bin/x $devpath %E{ID_X} $$\"\n");
        assert!(i.skipped.is_empty(), "{:?}", i.skipped);
        assert_eq!(
            i.rules[0].matches[0],
            ("ATTRS{id/vendor}".into(), vec!["0403".into()])
        );
        assert_eq!(
            i.rules[0].run.as_deref().unwrap(),
            ["/bin/x", "${DEVPATH}", "${ID_X}", "$$"]
        );
    }

    #[test]
    fn guards_fold_or_are_listed() {
        let src = "ACTION!=\"add\", GOTO=\"e\"\nSUBSYSTEM!=\"tty\", GOTO=\"e\"\n\
                   KERNEL==\"a|b\", MODE=\"0600\"\nACTION==\"add\", RUN+=\"/bin/y\"\nLABEL=\"e\"\n\
                   KERNEL==\"c\", MODE=\"0600\"\n\
                   KERNEL==\"x\", SUBSYSTEM==\"y\", GOTO=\"f\"\nKERNEL==\"d\", MODE=\"0600\"\nLABEL=\"f\"\n";
        let i = tr(src);
        assert_eq!(i.rules.len(), 3, "{:#?}", i.rules);
        assert_eq!(
            i.rules[0].matches,
            [
                ("KERNEL".into(), vec!["a".into(), "b".into()]),
                ("ACTION".into(), vec!["add".into()]),
                ("SUBSYSTEM".into(), vec!["tty".into()]),
            ]
        );
        assert_eq!(i.rules[1].matches[0], ("ACTION".into(), vec!["add".into()]));
        assert_eq!(i.rules[2].matches, [("KERNEL".into(), vec!["c".into()])]);
        let lines: Vec<usize> = i.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [7, 8], "{:#?}", i.skipped);
    }

    #[test]
    fn env_flags_fold_into_readers() {
        let src = "SUBSYSTEM==\"usb\", ATTR{idVendor}==\"1d6b\", ENV{MY_HUB}=\"1\"\n\
                   ENV{MY_HUB}==\"1\", MODE=\"0666\"\nENV{OTHER}=\"x\"\nENV{MY_HUB}!=\"1\", GOTO=\"z\"\nRUN+=\"/bin/z\"\nLABEL=\"z\"\n";
        let i = tr(src);
        assert_eq!(
            i.rules[0].matches,
            [
                ("SUBSYSTEM".into(), vec!["usb".into()]),
                ("ATTR{idVendor}".into(), vec!["1d6b".into()])
            ]
        );
        // The guard reads a flag set under two conditions: its rules are listed.
        let lines: Vec<usize> = i.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [3, 4, 5], "{:#?}", i.skipped);
    }

    #[test]
    fn untranslatable_keys_are_listed_whole() {
        let i = tr("KERNEL==\"sd*\", PROGRAM=\"/bin/id\", MODE=\"0600\"\nKERNEL!=\"a|b\", MODE=\"0600\"\nRUN+=\"x %n\"\nTAG+=\"uaccess\"\n");
        assert!(i.rules.is_empty(), "{:#?}", i.rules);
        assert_eq!(i.skipped.len(), 4);
        // A flag set twice, or by a line that was not translated, is unknown to readers.
        let i = tr(
            "KERNEL==\"a\", ENV{F}=\"1\", GOTO=\"x\"\nENV{F}=\"1\"\nLABEL=\"x\"\n\
                    TEST==\"dm\", ENV{N}=\"$attr{name}\"\nENV{N}==\"?*\", SYMLINK+=\"m/$env{N}\"\n\
                    IMPORT{db}=\"D\"\nENV{D}==\"1\", MODE=\"0600\"\n",
        );
        assert!(i.rules.is_empty(), "{:#?}", i.rules);
        let lines: Vec<usize> = i.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [1, 2, 4, 5, 6, 7], "{:#?}", i.skipped);
        // A priority for other rules' links has no equivalent: listed, not dropped.
        let i = tr("ENV{LOW}==\"1\", OPTIONS=\"link_priority=-100\"\n");
        assert_eq!(i.skipped.len(), 1, "{:?}", i.folded);
        // A rule its guard contradicts never runs: listed, not written with `ACTION = []`.
        let i = tr(
            "ACTION!=\"add|change\", GOTO=\"e\"\nACTION==\"remove\", MODE=\"0600\"\nLABEL=\"e\"\n",
        );
        assert!(i.rules.is_empty(), "{:#?}", i.rules);
        assert!(
            i.skipped[0].why.contains("never hold together"),
            "{:?}",
            i.skipped
        );
        let i = translate(
            "ATTRS{idVendor}==\"1234\", TAG+=\"uaccess\"\n",
            "t",
            &Options {
                uaccess_group: Some("plugdev".into()),
            },
        );
        assert_eq!(i.rules[0].group.as_deref(), Some("plugdev"));
        assert_eq!(i.rules[0].mode.as_deref(), Some("0660"));
    }
}
