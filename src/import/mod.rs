//! `hotplugctl import-udev` and `import-mdev`: udev rules files and mdev.conf translated
//! into `[[rule]]` tables. Both translators work line by line into the same model, an
//! [`Import`]: the rules they could write, and every line they could not with the reason.
//! A line is translated whole or not at all: dropping one match key would widen a rule,
//! dropping one action would quietly change what it does, so either is listed instead.
//! Where a translation is only close (a udev `TAG+="uaccess"` with `--uaccess-group`, an
//! mdev `=path` made a link), the rule carries a `# note:` comment saying how.

pub mod mdev;
pub mod udev;

use std::fmt::Write as _;

use crate::spanned::toml_quote as quote;

/// One rule to write: `match` keys in order, then node keys, `run`, `last`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// The line (first physical line) it came from.
    pub line: usize,
    pub matches: Vec<(String, Vec<String>)>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<String>,
    pub links: Vec<String>,
    pub link_priority: Option<i64>,
    pub run: Option<Vec<String>>,
    pub last: bool,
    /// Where the translation is an approximation or folded something in: said in comments.
    pub notes: Vec<String>,
}

/// A line that was not translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub text: String,
    pub why: String,
}

/// What a translator made of one file.
#[derive(Debug, Default)]
pub struct Import {
    pub rules: Vec<Rule>,
    pub skipped: Vec<Skipped>,
    /// Lines translated into no rule of their own (an `ENV{X}="1"` folded into the rules
    /// that read it): said in the header so the reader can account for every line.
    pub folded: Vec<(usize, String)>,
}

impl Import {
    pub(crate) fn skip(&mut self, line: usize, text: &str, why: impl Into<String>) {
        self.skipped.push(Skipped {
            line,
            text: text.to_owned(),
            why: why.into(),
        });
    }

    /// The TOML file: a header naming the source, every line left out (with its number and
    /// why) and every line folded into others, then the rules.
    pub fn render(&self, source: &str, kind: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Translated from {kind} {source} by hotplugctl import."
        );
        if self.skipped.is_empty() {
            let _ = writeln!(out, "# Every line was translated.");
        } else {
            let _ = writeln!(
                out,
                "# NOT translated ({} lines): write these by hand or leave them out.",
                self.skipped.len()
            );
            for s in &self.skipped {
                let _ = writeln!(out, "#   line {}: {}", s.line, s.why);
                let _ = writeln!(out, "#     {}", one_line(&s.text));
            }
        }
        for (line, what) in &self.folded {
            let _ = writeln!(out, "# line {line}: {what}");
        }
        for r in &self.rules {
            out.push('\n');
            for n in &r.notes {
                let _ = writeln!(out, "# note: {n}");
            }
            let _ = writeln!(out, "[[rule]]");
            let _ = writeln!(out, "name = {}", quote(&r.name));
            if !r.matches.is_empty() {
                let keys: Vec<String> = r
                    .matches
                    .iter()
                    .map(|(k, v)| format!("{} = {}", key(k), value_list(v)))
                    .collect();
                let _ = writeln!(out, "match = {{ {} }}", keys.join(", "));
            }
            for (k, v) in [("owner", &r.owner), ("group", &r.group), ("mode", &r.mode)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{k} = {}", quote(v));
                }
            }
            if !r.links.is_empty() {
                let _ = writeln!(out, "links = {}", array(&r.links));
            }
            if let Some(p) = r.link_priority {
                let _ = writeln!(out, "link_priority = {p}");
            }
            if let Some(run) = &r.run {
                let _ = writeln!(out, "run = {}", array(run));
            }
            if r.last {
                let _ = writeln!(out, "last = true");
            }
        }
        out
    }

    /// Notes on the rules whose owner or group name is not in this machine's `passwd` or
    /// `group` file: the daemon refuses such a rule at load. Returns them as warnings.
    pub fn check_ids(&mut self, passwd: &std::path::Path, group: &std::path::Path) -> Vec<String> {
        let mut warnings = Vec::new();
        for r in &mut self.rules {
            for (what, name, file) in [("user", &r.owner, passwd), ("group", &r.group, group)] {
                let Some(name) = name.as_deref().filter(|n| n.parse::<u32>().is_err()) else {
                    continue;
                };
                if let Ok(None) = crate::devnodes::id_from_file(file, name) {
                    let w = format!(
                        "{what} {name:?} is not in {}: the daemon refuses this rule until it is",
                        file.display()
                    );
                    warnings.push(format!("rule {}: {w}", r.name));
                    r.notes.push(w);
                }
            }
        }
        warnings
    }

    /// One line per skipped input line, for standard error.
    pub fn report(&self, source: &str) -> String {
        let mut out = String::new();
        for s in &self.skipped {
            let _ = writeln!(out, "{source}:{}: not translated: {}", s.line, s.why);
        }
        out
    }
}

/// A comment must stay on one line whatever the source held.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        quote(k)
    }
}

fn array(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(", "))
}

fn value_list(v: &[String]) -> String {
    match v {
        [one] => quote(one),
        _ => array(v),
    }
}

/// A rule name from the file's name and the line: `60-vendor-12`.
pub(crate) fn rule_name(stem: &str, line: usize, part: usize) -> String {
    let base = if part == 0 {
        format!("{stem}-{line}")
    } else {
        format!("{stem}-{line}-{}", part + 1)
    };
    base
}

/// The file's base name without its extension, in characters a rule name reads well with.
pub fn stem(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name
        .strip_suffix(".rules")
        .or_else(|| name.strip_suffix(".conf"))
        .unwrap_or(&name);
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "import".into()
    } else {
        s
    }
}

/// Whether a user or group name can be written as is: digits, or a name as shadow-utils
/// allows one. Anything else (a `$VAR`, a quote) is listed rather than guessed at.
pub fn plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !s.starts_with('-')
}

/// An octal mode of 1 to 4 digits, written with 4 (`660` becomes `0660`).
pub(crate) fn octal_mode(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let m = u32::from_str_radix(s, 8).ok()?;
    Some(format!("{m:04o}"))
}

/// A literal text as a `$VAR` template: each `$` doubled.
pub(crate) fn template_literal(s: &str) -> String {
    s.replace('$', "$$")
}

/// Whether `pat` (one glob) contains no glob character: it matches only itself.
pub(crate) fn literal_glob(pat: &str) -> bool {
    !pat.contains(['*', '?', '[', '\\', '!'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_get_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let (p, g) = (dir.path().join("passwd"), dir.path().join("group"));
        std::fs::write(&p, "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(&g, "root:x:0:\ndialout:x:20:\n").unwrap();
        let mut imp = mdev::translate("a root:dialout 660\nb 0:plugdev 660\nc nobody:7 660\n", "m");
        let w = imp.check_ids(&p, &g);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("rule m-2: group \"plugdev\""), "{w:?}");
        assert!(w[1].starts_with("rule m-3: user \"nobody\""), "{w:?}");
        assert!(imp.rules[0].notes.is_empty() && imp.rules[1].notes.len() == 1);
    }

    #[test]
    fn quoting_and_modes() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(key("ATTRS{idVendor}"), "\"ATTRS{idVendor}\"");
        assert_eq!(key("ID_FS_UUID"), "ID_FS_UUID");
        assert_eq!(octal_mode("660").as_deref(), Some("0660"));
        assert_eq!(octal_mode("0660").as_deref(), Some("0660"));
        assert_eq!(octal_mode("06660"), None);
        assert_eq!(octal_mode("680"), None);
        assert_eq!(
            stem(std::path::Path::new("/x/60-foo bar.rules")),
            "60-foo_bar"
        );
        assert!(plain_id("dialout") && plain_id("0") && !plain_id("$x") && !plain_id("-r"));
    }

    const UDEV_PARTS: &[&str] = &[
        "KERNEL==\"sd*\"",
        "KERNEL!=\"loop*|sr*\"",
        "KERNEL==\"sd[!0-9]*\"",
        "SUBSYSTEM!=\"tty\"",
        "SUBSYSTEM==\"block\"",
        "ACTION==\"add\"",
        "ACTION!=\"add|change\"",
        "ACTION==\"remove\"",
        "ATTRS{idVendor}==\"1d50\"",
        "ATTR{id/vendor}!=\"x\"",
        "DRIVERS==\"usb\"",
        "ENV{F}==\"1\"",
        "ENV{F}!=\"1\"",
        "ENV{F}=\"1\"",
        "ENV{G}==\"\"",
        "ENV{H}!=\"\"",
        "MODE=\"660\"",
        "MODE:=\"0600\"",
        "GROUP=\"dialout\"",
        "OWNER=\"root\"",
        "SYMLINK+=\"x/%k y/$env{ID_X}\"",
        "RUN+=\"/bin/x $devpath '%k a' \\\"q\\\" $$\"",
        "RUN+=\"helper\"",
        "GOTO=\"e\"",
        "GOTO=\"f\"",
        "LABEL=\"e\"",
        "LABEL=\"f\"",
        "TAG+=\"uaccess\"",
        "OPTIONS+=\"last_rule\"",
        "OPTIONS+=\"link_priority=5\"",
        "PROGRAM=\"x\"",
        "KERNEL==\"!x\"",
        "RUN+=\"%n\"",
    ];

    fn udev_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(0..UDEV_PARTS.len(), 1..5),
            prop_oneof![Just(", "), Just(",,"), Just(" , "), Just(",\\\n  ")],
            ".{0,3}",
        )
            .prop_map(|(parts, sep, junk)| {
                let mut l: Vec<&str> = parts.iter().map(|&i| UDEV_PARTS[i]).collect();
                let junk = junk.replace('\n', " ");
                l.push(&junk);
                l.join(sep)
            })
    }

    fn mdev_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            prop_oneof![Just(""), Just("-")],
            prop_oneof![Just(""), Just("$MODALIAS=.*;"), Just("$DEVTYPE=disk;")],
            prop_oneof![
                Just("sd[a-z].*".to_owned()),
                Just("tty[0-9]+".to_owned()),
                Just("null|zero".to_owned()),
                "[ -~&&[^ ]]{1,8}"
            ],
            prop_oneof![Just("root:root"), Just("0:20"), Just("root:dialout")],
            prop_oneof![Just("660"), Just("0600"), Just("7777")],
            prop_oneof![Just(""), Just(" >modem"), Just(" =input/"), Just(" !")],
            prop_oneof![
                Just("".to_owned()),
                "[@$*][ -~]{0,20}".prop_map(|c| format!(" {c}"))
            ],
        )
            .prop_map(|(dash, env, re, owner, mode, path, cmd)| {
                format!("{dash}{env}{re} {owner} {mode}{path}{cmd}")
            })
    }

    /// Whatever the lines, the output is a config the daemon loads, with every rule
    /// named uniquely, and every line is accounted for: translated or listed.
    fn loads(imp: &Import, kind: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let text = imp.render("x", kind);
        let parsed = crate::config::Config::parse(&text, std::path::Path::new("x.toml"));
        proptest::prop_assert!(parsed.is_ok(), "{text}");
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn udev_output_always_loads(lines in proptest::collection::vec(udev_line(), 1..12)) {
            let src = lines.join("\n");
            for group in [None, Some("dialout".to_owned())] {
                let imp = udev::translate(&src, "t", &udev::Options { uaccess_group: group });
                loads(&imp, "udev rules")?;
                // Every line but a LABEL is a rule, listed, or said to be folded.
                for (n, text) in udev::logical_lines(&src) {
                    let seen = imp.rules.iter().any(|r| r.line == n)
                        || imp.skipped.iter().any(|s| s.line == n)
                        || imp.folded.iter().any(|f| f.0 == n);
                    proptest::prop_assert!(seen || text.contains("LABEL="), "line {n}: {text}");
                }
            }
        }

        #[test]
        fn mdev_output_always_loads(lines in proptest::collection::vec(mdev_line(), 1..12)) {
            let src = lines.join("\n");
            let imp = mdev::translate(&src, "m");
            loads(&imp, "mdev.conf")?;
            let made: std::collections::HashSet<usize> = imp.rules.iter().map(|r| r.line).collect();
            for n in (1..=lines.len()).filter(|&n| !lines[n - 1].starts_with('#')) {
                proptest::prop_assert!(
                    made.contains(&n) != imp.skipped.iter().any(|s| s.line == n),
                    "line {n}: {}", lines[n - 1]
                );
            }
        }
    }
}
