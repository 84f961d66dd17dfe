//! mdev.conf into `[[rule]]` tables: `[-][$ENV=regex;]regex user:group mode [=path|>path|!]
//! [@|$|*command]`.
//!
//! mdev matches a POSIX extended regex against the whole device name (the `KERNEL` key
//! here) or variable; the regexes real files use are globs in disguise (`sd[a-z].*`,
//! `tty[0-9]+`), and those are translated, the rest listed. mdev stops at the first line
//! that matches unless it starts with `-`: such a rule gets `last = true`.
//!
//! The command is the admin's own shell command line, so it runs under `/bin/sh -c` as mdev
//! runs it, in `/dev`, with `MDEV` set to the device name. The name reaches the shell as
//! `$1` and every event value through the environment, never inside the script's text,
//! so a device name cannot inject shell code; each `$` the admin wrote is kept for the
//! shell (`$$` in the template).

use super::{octal_mode, plain_id, rule_name, template_literal, Import, Rule};

/// A regex as globs that mean the same, with a note when they only come close.
fn regex_globs(re: &str) -> Result<(Vec<String>, Option<String>), String> {
    let re = re.strip_prefix('^').unwrap_or(re);
    let re = match re.strip_suffix('$') {
        Some(r) if !r.ends_with('\\') => r,
        _ => re,
    };
    if re.contains(['(', ')', '{', '}']) {
        return Err(format!(
            "regex {re:?} has groups or counts, which globs lack"
        ));
    }
    let mut out = Vec::new();
    let mut approx = None;
    for alt in split_alternatives(re) {
        let (globs, note) = one_alternative(alt)?;
        out.extend(globs);
        approx = approx.or(note);
    }
    Ok((out, approx))
}

/// Split at the `|` outside brackets.
fn split_alternatives(re: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut in_class, mut esc) = (0, false, false);
    for (i, c) in re.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' => esc = true,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '|' if !in_class => {
                out.push(&re[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&re[start..]);
    out
}

fn one_alternative(re: &str) -> Result<(Vec<String>, Option<String>), String> {
    let chars: Vec<char> = re.chars().collect();
    let mut glob = String::new();
    let mut i = 0;
    let mut note = None;
    let mut extra = None;
    while i < chars.len() {
        // One atom, as a glob.
        let (atom, is_dot) = match chars[i] {
            '\\' => {
                let c = *chars.get(i + 1).ok_or("a lone `\\` at the end")?;
                if c.is_ascii_alphanumeric() {
                    return Err(format!("`\\{c}` in a regex"));
                }
                i += 2;
                (escape(c), false)
            }
            '.' => {
                i += 1;
                ("?".to_owned(), true)
            }
            '[' => {
                let mut j = i + 1;
                let mut class = String::from("[");
                if chars.get(j) == Some(&'^') {
                    class.push('!');
                    j += 1;
                }
                if chars.get(j) == Some(&']') {
                    class.push(']');
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    if chars[j] == '[' || chars[j] == '\\' {
                        return Err("a `[` or `\\` inside a bracket expression".into());
                    }
                    class.push(chars[j]);
                    j += 1;
                }
                if j == chars.len() {
                    return Err("an unclosed `[`".into());
                }
                class.push(']');
                i = j + 1;
                (class, false)
            }
            '*' | '+' | '?' | '^' | '$' => {
                return Err(format!("`{}` where a regex atom should be", chars[i]))
            }
            c => {
                i += 1;
                (escape(c), false)
            }
        };
        let at_end = i + 1 == chars.len();
        match chars.get(i) {
            Some('*') if is_dot => {
                glob.push('*');
                i += 1;
            }
            Some('+') if is_dot => {
                glob.push_str("?*");
                i += 1;
            }
            Some('+') if at_end => {
                // One or more of the set: a glob says "one of the set, then anything".
                glob.push_str(&atom);
                glob.push('*');
                note = Some(format!(
                    "`{atom}+` at the end became `{atom}*`: one, then anything"
                ));
                i += 1;
            }
            Some('*') if at_end => {
                extra = Some(glob.clone());
                glob.push_str(&atom);
                glob.push('*');
                note = Some(format!(
                    "`{atom}*` at the end became no character or `{atom}*`: one, then anything"
                ));
                i += 1;
            }
            Some(q @ ('*' | '+' | '?')) => {
                return Err(format!("`{q}` after `{atom}` inside a regex"));
            }
            _ => glob.push_str(&atom),
        }
    }
    if glob.is_empty() {
        return Err("an empty regex".into());
    }
    let mut globs: Vec<String> = extra.filter(|e| !e.is_empty()).into_iter().collect();
    globs.push(glob);
    Ok((globs, note))
}

fn escape(c: char) -> String {
    if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!') {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

/// A node path mdev would move the node to or link to it from, as a link below /dev.
fn link_path(p: &str) -> Result<String, String> {
    if p.contains(['%', '$']) {
        return Err(format!("path {p:?} has substitutions"));
    }
    let l = if p.ends_with('/') {
        format!("{p}${{KERNEL}}")
    } else {
        p.to_owned()
    };
    if !crate::devnodes::safe_relative(l.as_bytes()) {
        return Err(format!("path {p:?} is not below /dev without `..`"));
    }
    Ok(l)
}

/// The fields of a line and where each starts.
fn fields(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

/// One mdev.conf line into its rules, or why not.
fn line_rules(text: &str, stem: &str, line: usize) -> Result<Vec<Rule>, String> {
    let f = fields(text);
    if f.len() < 3 {
        return Err("expected at least `regex user:group mode`".into());
    }
    let mut first = f[0].1;
    let go_on = match first.strip_prefix('-') {
        Some(rest) => {
            first = rest;
            true
        }
        None => false,
    };
    let mut matches = Vec::new();
    let mut notes = Vec::new();
    let mut add = |key: &str, re: &str, notes: &mut Vec<String>| -> Result<(), String> {
        let (globs, approx) = regex_globs(re)?;
        if let Some(n) = approx {
            notes.push(format!("approximate: {key}: {n}"));
        }
        matches.push((key.to_owned(), globs));
        Ok(())
    };
    let env_match = |m: &str| -> Result<(String, String), String> {
        let (name, re) = m.split_once('=').ok_or("`$NAME` without `=regex`")?;
        let ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(format!("bad variable name {name:?}"));
        }
        Ok((name.to_owned(), re.to_owned()))
    };
    while let Some(rest) = first.strip_prefix('$') {
        let Some((m, after)) = rest.split_once(';') else {
            // The `$NAME=regex` form: the variable alone decides.
            let (name, re) = env_match(rest)?;
            add(&name, &re, &mut notes)?;
            first = "";
            break;
        };
        let (name, re) = env_match(m)?;
        add(&name, &re, &mut notes)?;
        first = after;
    }
    if first.starts_with('@') {
        return Err("a `@major,minor` device number match".into());
    }
    if first.contains('/') {
        return Err("a regex with `/`: mdev matches it against more than the device name".into());
    }
    if !first.is_empty() {
        add("KERNEL", first, &mut notes)?;
    }
    let (user, group) = f[1].1.split_once(':').ok_or("expected user:group")?;
    if !plain_id(user) || !plain_id(group) {
        return Err(format!(
            "owner {:?} is not a user:group of plain names",
            f[1].1
        ));
    }
    let mode = octal_mode(f[2].1).ok_or_else(|| format!("mode {:?} is not octal", f[2].1))?;
    let mut rest = f.get(3).map(|(at, _)| &text[*at..]).unwrap_or("");
    let mut links = Vec::new();
    let mut no_node = false;
    if let Some(p) = rest.chars().next().filter(|c| matches!(c, '=' | '>' | '!')) {
        let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        rest = after.trim_start();
        match p {
            '!' if word == "!" => {
                no_node = true;
                notes.push(
                    "`!` (no node): the rule sets no node keys; devtmpfs still makes the node"
                        .into(),
                );
            }
            '=' => {
                links.push(link_path(&word[1..])?);
                notes.push(format!(
                    "approximate: `{word}` (move the node): the node stays at /dev/$DEVNAME, \
                     with a link at {}",
                    links[0]
                ));
            }
            '>' => links.push(link_path(&word[1..])?),
            _ => return Err(format!("unexpected {word:?}")),
        }
    }
    let mut out = Vec::new();
    let mut part = 0;
    if !rest.is_empty() {
        let mut cs = rest.chars();
        let actions: &[&str] = match cs.next() {
            Some('@') => &["add"],
            Some('$') => &["remove"],
            Some('*') => &["add", "remove"],
            _ => return Err(format!("expected @, $ or * before the command: {rest:?}")),
        };
        let cmd = cs.as_str().trim();
        if cmd.is_empty() {
            return Err("an empty command".into());
        }
        let mut m = matches.clone();
        m.push((
            "ACTION".into(),
            actions.iter().map(|a| a.to_string()).collect(),
        ));
        out.push(Rule {
            name: rule_name(stem, line, part),
            line,
            matches: m,
            run: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "cd /dev || exit; MDEV=$$1; export MDEV; {}",
                    template_literal(cmd)
                ),
                "mdev".into(),
                "${KERNEL}".into(),
            ]),
            notes: std::mem::take(&mut notes),
            ..Rule::default()
        });
        part += 1;
    }
    if no_node {
        if let Some(r) = out.last_mut() {
            r.last = !go_on;
            if !go_on {
                r.notes.push(
                    "with `!` and no node keys, the stop after this line holds only for the \
                     command's events"
                        .into(),
                );
            }
        } else {
            return Err("`!` with no command: nothing to do".into());
        }
        return Ok(out);
    }
    out.push(Rule {
        name: rule_name(stem, line, part),
        line,
        matches,
        owner: Some(user.to_owned()),
        group: Some(group.to_owned()),
        mode: Some(mode),
        links,
        last: !go_on,
        notes,
        ..Rule::default()
    });
    Ok(out)
}

/// Translate one mdev.conf. `stem` names the rules (`STEM-LINE`).
pub fn translate(src: &str, stem: &str) -> Import {
    let mut imp = Import::default();
    for (i, raw) in src.lines().enumerate() {
        let text = raw.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        match line_rules(text, stem, i + 1) {
            Ok(rules) => imp.rules.extend(rules),
            Err(e) => imp.skip(i + 1, text, e),
        }
    }
    imp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_that_are_globs() {
        let g = |r: &str| regex_globs(r).map(|(g, _)| g);
        assert_eq!(g("sd[a-z].*").unwrap(), ["sd[a-z]*"]);
        assert_eq!(g("null|zero").unwrap(), ["null", "zero"]);
        assert_eq!(g("tty[0-9]+").unwrap(), ["tty[0-9]*"]);
        assert_eq!(g("ttyS[0-9]*").unwrap(), ["ttyS", "ttyS[0-9]*"]);
        assert_eq!(g("^fd0$").unwrap(), ["fd0"]);
        assert_eq!(g("[^a]x\\.y").unwrap(), ["[!a]x.y"]);
        assert_eq!(g(".*").unwrap(), ["*"]);
        for bad in [
            "ram([0-9]*)",
            "a+b",
            "a{2}",
            "x?",
            "[[:digit:]]",
            "a\\d",
            "*a",
        ] {
            assert!(g(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines() {
        let i = translate(
            "# c\n$MODALIAS=.* root:root 0660 @modprobe -b \"$MODALIAS\"\n\
             -sd[a-z] root:disk 660 >disk/%1\nttyUSB[0-9]+ root:dialout 0660 >modem *echo $MDEV\n\
             $DEVTYPE=usb_device;bus/usb.* root:root 0664\nnull root:root 666 !\n",
            "m",
        );
        assert_eq!(
            i.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
            [3, 5, 6],
            "{:#?}",
            i.skipped
        );
        let r = &i.rules[0];
        assert_eq!(r.matches[1], ("ACTION".into(), vec!["add".into()]));
        assert_eq!(
            r.run.as_ref().unwrap()[2],
            "cd /dev || exit; MDEV=$$1; export MDEV; modprobe -b \"$$MODALIAS\""
        );
        assert!(!r.last && i.rules[1].last && i.rules[1].run.is_none());
        assert_eq!(i.rules[3].links, ["modem"]);
    }
}
