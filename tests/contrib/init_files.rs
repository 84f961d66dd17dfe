//! The init-system files and the rest of `contrib/` against the binaries' real commands
//! and options.

use super::*;

pub(crate) fn help(bin: &str) -> String {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success(), "{bin} --help: {}", describe(&out));
    text(&out.stdout)
}

/// `hotplugctl CMD... --help`: a command's own options are only in its own help.
pub(crate) fn ctl_help(cmd: &[&str]) -> String {
    let out = Command::new(CTL).args(cmd).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "hotplugctl {cmd:?} --help: {}",
        describe(&out)
    );
    text(&out.stdout)
}

/// The commands a `Commands:` list of a --help names.
pub(crate) fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_lowercase))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// hotplugctl's --help and every command's, `helper`'s actions included.
pub(crate) fn ctl_help_all() -> String {
    let top = help(CTL);
    let mut all = top.clone();
    for cmd in commands_in(&top) {
        let sub = ctl_help(&[&cmd]);
        for action in commands_in(&sub) {
            all.push_str(&ctl_help(&[&cmd, &action]));
        }
        all.push_str(&sub);
    }
    all
}

/// Every file below `dir`, recursively, sorted.
pub(crate) fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The commands the init-system files run with our binaries: (binary, words after it),
/// up to a redirection or a shell operator; comments skipped, continued lines joined.
pub(crate) fn invocations(body: &str) -> Vec<(String, Vec<String>)> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in body.lines() {
        if cur.is_empty() && line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(l) => cur.push_str(l),
            None => {
                cur.push_str(line);
                joined.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut out = Vec::new();
    for line in joined {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            // `/usr/local/sbin/hotplugctl`, `ExecStart=/usr/local/sbin/hotplugd`,
            // `"$hotplugctl"`, `"$HOTPLUGCTL"`; not `/run/hotplugd` or `DAEMON=...`.
            let w = w.trim_matches('"');
            if w.contains('=') && !w.starts_with("Exec") {
                continue;
            }
            let cmd = w.strip_prefix("Exec").map_or(w, |e| {
                e.split_once('=')
                    .map_or(e, |(_, v)| v.trim_start_matches(['-', '@', '+', '!']))
            });
            let bin = ["hotplugd", "hotplugctl"].into_iter().find(|b| {
                cmd.ends_with(&format!("sbin/{b}")) || cmd.eq_ignore_ascii_case(&format!("${b}"))
            });
            let Some(bin) = bin else { continue };
            let bin = bin.to_owned();
            let args: Vec<String> = words[i + 1..]
                .iter()
                .take_while(|a| !a.contains('>') && !["||", "&&", ";", "|", "&"].contains(a))
                .map(|a| a.trim_matches('"').to_owned())
                .collect();
            out.push((bin, args));
        }
    }
    out
}

/// Whether `word` occurs in `text` not as part of a longer option or name.
pub(crate) fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word)
        .any(|(i, _)| !text[..i].ends_with(part) && !text[i + word.len()..].starts_with(part))
}

#[test]
fn contrib_files_use_real_commands_and_options() {
    let daemon_help = help(DAEMON);
    let commands = commands_in(&help(CTL));
    for c in ["settle", "trigger", "helper", "reload", "status"] {
        assert!(commands.iter().any(|k| k == c), "{c} not in {commands:?}");
    }
    let mut checked = Vec::new();
    for path in files_below(&root().join("contrib")) {
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let body = fs::read_to_string(&path).unwrap();
        for (bin, args) in invocations(&body) {
            let what = format!("{}: {bin} {}", path.display(), args.join(" "));
            let help = if bin == "hotplugd" {
                daemon_help.clone()
            } else {
                // The command's own help lists its options and the global ones.
                let words: Vec<&str> = args
                    .iter()
                    .map(String::as_str)
                    .filter(|a| !a.starts_with('-') && !a.starts_with('/'))
                    .collect();
                let cmd = match words[..] {
                    ["helper", action, ..] => vec!["helper", action],
                    [c, ..] => vec![c],
                    [] => vec![],
                };
                ctl_help(&cmd)
            };
            for a in args.iter().filter(|a| a.starts_with("--")) {
                let opt = a.split('=').next().unwrap();
                assert!(
                    has_word(&help, opt),
                    "{what}: {opt} is not an option of {bin}"
                );
            }
            if bin == "hotplugctl" {
                let mut words = args.iter().map(String::as_str);
                let mut cmd = words.next();
                if cmd == Some("--runtime-dir") {
                    cmd = words.nth(1);
                }
                let cmd = cmd.unwrap_or_else(|| panic!("{what}: no command"));
                assert!(
                    commands.iter().any(|k| k == cmd),
                    "{what}: {cmd} is not a command"
                );
                if cmd == "helper" {
                    let action = words.next();
                    assert!(
                        matches!(action, Some("status" | "enable" | "disable")),
                        "{what}"
                    );
                }
            }
            checked.push(what);
        }
    }
    let all = checked.join("\n");
    for expected in [
        "hotplugd.service: hotplugd",
        "hotplugctl helper enable",
        "hotplugctl settle --timeout",
        "hotplugctl trigger --action add",
        "hotplugd --ready-fd 3",
        "--runtime-dir /run/hotplugd",
    ] {
        assert!(all.contains(expected), "no {expected:?} among:\n{all}");
    }

    // The socket unit holds what src/activation.rs takes: the FIFO and the control socket
    // at the paths the shim and hotplugctl use by default.
    let socket = fs::read_to_string(root().join("contrib/systemd/hotplugd.socket")).unwrap();
    for line in [
        "ListenFIFO=/run/hotplugd/events",
        "ListenStream=/run/hotplugd/control",
        "Service=hotplugd.service",
    ] {
        assert!(
            socket.lines().any(|l| l == line),
            "hotplugd.socket: no {line}"
        );
    }
    let service = fs::read_to_string(root().join("contrib/systemd/hotplugd.service")).unwrap();
    for line in ["Type=notify", "Sockets=hotplugd.socket"] {
        assert!(
            service.lines().any(|l| l == line),
            "hotplugd.service: no {line}"
        );
    }
    // s6 waits for the newline the daemon writes to the fd it names.
    let fd = fs::read_to_string(root().join("contrib/s6/hotplugd/notification-fd")).unwrap();
    let run = fs::read_to_string(root().join("contrib/s6/hotplugd/run")).unwrap();
    assert!(run.contains(&format!("--ready-fd {}", fd.trim())), "{run}");
}

#[test]
fn helper_enable_status_disable_on_a_file() {
    let f = Fakes::new();
    let file = f.path("hotplug");
    fs::write(&file, "\n").unwrap();
    let ctl = |args: &[&str]| {
        Command::new(CTL)
            .args(["helper"])
            .args(args)
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = ctl(&["enable", SHIM]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::read_to_string(&file).unwrap(), format!("{SHIM}\n"));
    let out = ctl(&["status"]);
    assert_eq!(
        text(&out.stdout).lines().next(),
        Some(format!("{}: {SHIM} (hotplugd's shim)", file.display()).as_str())
    );
    let out = ctl(&["disable"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), "");
    // Not an absolute path to a file: refused, the setting unchanged.
    let out = ctl(&["enable", "hotplug"]);
    assert_eq!(status(&out), 1, "{}", describe(&out));
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), "");
}
