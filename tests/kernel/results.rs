//! What the guest left in /results.

use super::*;

/// One helper run as the kernel started it: argv[1] and its environment, in order.
#[derive(Debug)]
pub(crate) struct KernelEvent {
    pub(crate) argv1: String,
    pub(crate) env: Vec<(String, String)>,
}

impl KernelEvent {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// /results/kernel/<SEQNUM>, written by trace-helper.sh.
pub(crate) fn read_trace(results: &Path) -> BTreeMap<u64, KernelEvent> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(results.join("kernel")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(seq) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut ev = KernelEvent {
            argv1: String::new(),
            env: Vec::new(),
        };
        for line in text.lines() {
            if let Some(a) = line.strip_prefix("argv1=") {
                ev.argv1 = a.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                ev.env.push((k.to_string(), v.to_string()));
            }
        }
        out.insert(seq, ev);
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rec {
    Start {
        seq: u64,
        action: String,
        devpath: String,
        subsystem: String,
    },
    Env {
        seq: u64,
        key: String,
        value: String,
    },
    Overlap {
        seq: u64,
        holder: String,
    },
    End {
        seq: u64,
    },
    Killed,
    Restarted,
    /// Rebroadcast (issue 17): the guest's listener on group 4 heard this event.
    Rebroadcast {
        seq: u64,
    },
}

/// /results/handler.log, written by handler.sh (and the `killed`/`restarted` marks of
/// init.sh). A line that parses as nothing is an error: the record must not be garbled.
pub(crate) fn read_handler_log(results: &Path) -> Result<Vec<Rec>, String> {
    let text = match fs::read_to_string(results.join("handler.log")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("handler.log: {e}")),
    };
    let mut recs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || format!("handler.log:{}: garbled line {line:?}", i + 1);
        let mut words = line.splitn(2, ' ');
        let kind = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        let seq_of = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let rec = match kind {
            "start" => {
                let f: Vec<&str> = rest.split(' ').collect();
                if f.len() != 4 {
                    return Err(bad());
                }
                Rec::Start {
                    seq: seq_of(f[0])?,
                    action: f[1].into(),
                    devpath: f[2].into(),
                    subsystem: f[3].into(),
                }
            }
            "env" => {
                let (seq, kv) = rest.split_once(' ').ok_or_else(bad)?;
                let (key, value) = kv.split_once('=').ok_or_else(bad)?;
                Rec::Env {
                    seq: seq_of(seq)?,
                    key: key.into(),
                    value: value.into(),
                }
            }
            "overlap" => {
                let (seq, holder) = rest.split_once(' ').unwrap_or((rest, ""));
                Rec::Overlap {
                    seq: seq_of(seq)?,
                    holder: holder.into(),
                }
            }
            "end" => Rec::End { seq: seq_of(rest)? },
            "rebroadcast" => Rec::Rebroadcast {
                seq: seq_of(rest.split(' ').next().unwrap_or(""))?,
            },
            "malformed" => {
                return Err(format!(
                    "handler.log:{}: a rebroadcast libudev-zero would drop: {line:?}",
                    i + 1
                ))
            }
            "killed" => Rec::Killed,
            "restarted" => Rec::Restarted,
            _ => return Err(bad()),
        };
        recs.push(rec);
    }
    Ok(recs)
}

pub(crate) fn started(recs: &[Rec]) -> Vec<u64> {
    recs.iter()
        .filter_map(|r| match r {
            Rec::Start { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

pub(crate) fn read_num(results: &Path, name: &str) -> Result<u64, String> {
    let text =
        fs::read_to_string(results.join(name)).map_err(|e| format!("/results/{name}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("/results/{name}: not a number: {text:?}"))
}

/// SEQNUMs in (from, to]: the ones the kernel spent on a network namespace's devices.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Span {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

impl Span {
    pub(crate) fn contains(&self, s: &u64) -> bool {
        self.from < *s && *s <= self.to
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> {
        self.from + 1..=self.to
    }
}

/// /results/netns "FROM TO": the SEQNUMs in (FROM, TO] the kernel spent on a network
/// namespace's devices, which may have no helper run. Empty if the scenario made none.
pub(crate) fn read_netns(results: &Path) -> Span {
    let text = fs::read_to_string(results.join("netns")).unwrap_or_default();
    let nums: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [from, to] => Span { from, to },
        _ => Span::default(),
    }
}

/// Everything one boot produced.
pub(crate) struct Run {
    /// SEQNUMs that may lack a helper run (network namespace events).
    pub(crate) netns: Span,
    pub(crate) before: u64,
    pub(crate) after: u64,
    pub(crate) trace: BTreeMap<u64, KernelEvent>,
    pub(crate) recs: Vec<Rec>,
    pub(crate) results: PathBuf,
    pub(crate) boot_to_init: Duration,
    pub(crate) total: Duration,
}

/// Lines of the daemon's log that contain `what`.
pub(crate) fn daemon_log_lines(results: &Path, what: &str) -> Vec<String> {
    fs::read_to_string(results.join("daemon.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// The SEQNUMs the daemon logged as coalesced, adds and removes:
/// "... coalesced 812 remove /devices/virtual/net/d0 (net) with its add (SEQNUM 809) ...".
pub(crate) fn coalesced(results: &Path) -> Result<BTreeSet<u64>, String> {
    let mut dropped = BTreeSet::new();
    for line in daemon_log_lines(results, "] coalesced ") {
        let rest = line.split_once("] coalesced ").map_or("", |(_, r)| r);
        let remove = rest.split(' ').next().and_then(|s| s.parse::<u64>().ok());
        let add = rest
            .split_once("(SEQNUM ")
            .and_then(|(_, r)| r.split(')').next())
            .and_then(|s| s.parse::<u64>().ok());
        let (Some(r), Some(a)) = (remove, add) else {
            return Err(format!("unreadable coalesce line: {line}"));
        };
        dropped.insert(r);
        dropped.insert(a);
    }
    Ok(dropped)
}
