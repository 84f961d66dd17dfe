//! The man pages against the code: every config key, option and command documented.

use super::*;

pub(crate) fn man(name: &str) -> String {
    // Roff escapes the hyphens of options and paths.
    fs::read_to_string(root().join("man").join(name))
        .unwrap()
        .replace("\\-", "-")
}

/// The keys an `unknown field` error lists for a table, from the real parser.
pub(crate) fn known_keys(bad_toml: &str) -> Vec<String> {
    let f = Fakes::new();
    let p = f.path("bad.toml");
    fs::write(&p, bad_toml).unwrap();
    let out = Command::new(DAEMON)
        .args(["--check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    let list = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("{err}"))
        .1
        .lines()
        .next()
        .unwrap();
    list.split(", ")
        .map(|k| k.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn man_pages_document_every_config_key_and_option() {
    let toml5 = man("hotplugd.toml.5");
    let section = |name: &str| -> String {
        let start = toml5
            .find(&format!("\n.SH {name}\n"))
            .unwrap_or_else(|| panic!("no {name} section"));
        let rest = &toml5[start + 1..];
        let end = rest[4..].find("\n.SH ").map_or(rest.len(), |e| e + 4);
        rest[..end].to_owned()
    };
    let daemon = section("THE [daemon] TABLE");
    let documented = |sec: &str, key: &str| {
        sec.contains(&format!("\n.BR {key} \"")) || sec.contains(&format!("\n.B {key}\n"))
    };
    let keys = known_keys("[daemon]\nno_such_key = 1\n");
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        assert!(
            documented(&daemon, key),
            "hotplugd.toml(5) does not document the [daemon] key {key}"
        );
    }
    let rules = section("RULES");
    let keys = known_keys("[[rule]]\nname = \"a\"\nrun = [\"/x\"]\nno_such_key = 1\n");
    assert_eq!(
        keys,
        [
            "name",
            "match",
            "run",
            "timeout",
            "last",
            "owner",
            "group",
            "mode",
            "links",
            "link_priority",
            "background",
            "import",
            "exclusive"
        ]
    );
    for key in &keys {
        assert!(
            documented(&rules, key),
            "hotplugd.toml(5) does not document the rule key {key}"
        );
    }

    // Every option in the binaries' --help is in their pages, and every hotplugctl
    // command has its own subsection.
    let options = |help: &str| -> Vec<String> {
        let mut v: Vec<String> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let daemon8 = man("hotplugd.8");
    let opts = options(&help(DAEMON));
    assert!(opts.contains(&"--demo".to_owned()), "{opts:?}");
    for o in &opts {
        assert!(has_word(&daemon8, o), "hotplugd(8) lacks {o}");
    }
    let ctl8 = man("hotplugctl.8");
    let opts = options(&ctl_help_all());
    assert!(opts.contains(&"--seqnum-file".to_owned()), "{opts:?}");
    for o in &opts {
        assert!(has_word(&ctl8, o), "hotplugctl(8) lacks {o}");
    }
    let top_help = help(CTL);
    let subsections: Vec<&str> = ctl8.lines().filter(|l| l.starts_with(".SS ")).collect();
    for line in top_help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
    {
        let Some(cmd) = line
            .strip_prefix("  ")
            .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_lowercase))
            .and_then(|l| l.split_whitespace().next())
        else {
            continue;
        };
        assert!(
            subsections.iter().any(|s| s
                .trim_start_matches(".SS ")
                .trim_start_matches('"')
                .starts_with(cmd)),
            "hotplugctl(8) has no subsection for {cmd}: {subsections:?}"
        );
    }
    // The exit statuses the binaries document in their --help are the pages' too.
    for (page, codes) in [
        (&daemon8, &["0", "1", "2"][..]),
        (&ctl8, &["0", "1", "2", "3"]),
    ] {
        let exit = &page[page.find("\n.SH EXIT STATUS\n").unwrap()..];
        for c in codes {
            assert!(exit.contains(&format!("\n.B {c}\n")), "exit status {c}");
        }
    }
}
