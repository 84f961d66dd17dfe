//! Checks of what the handler recorded against what the kernel sent.

use super::*;

/// What holds in every scenario: the kernel ran the helper for the whole window, and
/// each handled event carries the kernel's own environment.
pub(crate) fn common_checks(run: &Run) -> Result<(), String> {
    if run.after <= run.before {
        return Err(format!(
            "no events made: before {} after {}",
            run.before, run.after
        ));
    }
    // The helper runs for every SEQNUM of the window except those of a network
    // namespace's net devices (kobj_usermode_filter); exec failures would show here too.
    let untraced: Vec<u64> = (run.before + 1..=run.after)
        .filter(|s| !run.trace.contains_key(s) && !run.netns.contains(s))
        .collect();
    if !untraced.is_empty() {
        return Err(format!(
            "the kernel never ran the helper for SEQNUM {untraced:?} of ({}, {}] \
             (a kernel/harness problem, not the daemon's)",
            run.before, run.after
        ));
    }
    let outside: Vec<u64> = run
        .trace
        .keys()
        .copied()
        .filter(|s| *s <= run.before || *s > run.after)
        .collect();
    if !outside.is_empty() {
        return Err(format!(
            "helper runs outside the window ({}, {}]: {outside:?}",
            run.before, run.after
        ));
    }
    for (seq, ev) in &run.trace {
        for key in ["ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"] {
            if ev.get(key).is_none() {
                return Err(format!("the kernel's env for {seq} has no {key}: {ev:?}"));
            }
        }
        if ev.get("SEQNUM") != Some(&seq.to_string()) || ev.get("SUBSYSTEM") != Some(&ev.argv1) {
            return Err(format!("helper record {seq} is inconsistent: {ev:?}"));
        }
    }

    // Handled events: only ones the kernel sent, each with the kernel's environment.
    let mut env: BTreeMap<u64, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in &run.recs {
        if let Rec::Env { seq, key, value } = r {
            env.entry(*seq)
                .or_default()
                .insert((key.clone(), value.clone()));
        }
    }
    for r in &run.recs {
        let Rec::Start {
            seq,
            action,
            devpath,
            subsystem,
        } = r
        else {
            continue;
        };
        let Some(k) = run.trace.get(seq) else {
            return Err(format!(
                "handled SEQNUM {seq}, which the kernel never sent to the helper"
            ));
        };
        if k.get("ACTION") != Some(action)
            || k.get("DEVPATH") != Some(devpath)
            || k.get("SUBSYSTEM") != Some(subsystem)
        {
            return Err(format!(
                "handler for {seq} saw {action} {devpath} {subsystem}; the kernel sent {:?} {:?} {:?}",
                k.get("ACTION"),
                k.get("DEVPATH"),
                k.get("SUBSYSTEM")
            ));
        }
        let got = env.get(seq).cloned().unwrap_or_default();
        for (key, value) in &k.env {
            if !got.contains(&(key.clone(), value.clone())) {
                return Err(format!(
                    "handler for {seq} did not get {key}={value} from the kernel's env; it got {got:?}"
                ));
            }
        }
        let extra: Vec<&String> = got
            .iter()
            .filter(|(key, value)| {
                !key.starts_with("HOTPLUGD_") && k.get(key) != Some(value.as_str())
            })
            .map(|(key, _)| key)
            .collect();
        if !extra.is_empty() {
            return Err(format!(
                "handler for {seq} got variables the kernel did not send: {extra:?}"
            ));
        }
    }
    Ok(())
}

/// The kernel's events in the window, each with its variables, for a human to read.
pub(crate) fn describe(trace: &BTreeMap<u64, KernelEvent>, seq: u64) -> String {
    let Some(ev) = trace.get(&seq) else {
        return format!("{seq}: ?");
    };
    let vars: Vec<String> = ev
        .env
        .iter()
        .filter(|(k, _)| !HELPER_ONLY.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.join(" ")
}

/// Strict serialization: start/end strictly alternate (start s, end s, start t, end t,
/// ...), and no handler saw the lock held. `exempt` may overlap (the orphan of a kill).
pub(crate) fn check_serialized(recs: &[Rec], exempt: Option<u64>) -> Result<(), String> {
    let mut running: Vec<u64> = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        match r {
            Rec::Start { seq, .. } => {
                let others: Vec<u64> = running
                    .iter()
                    .copied()
                    .filter(|s| Some(*s) != exempt)
                    .collect();
                if !others.is_empty() && Some(*seq) != exempt {
                    return Err(format!(
                        "two handlers at once: {seq} started while {others:?} ran (record {i})"
                    ));
                }
                running.push(*seq);
            }
            Rec::End { seq } => {
                let Some(pos) = running.iter().position(|s| s == seq) else {
                    return Err(format!("end {seq} without a start (record {i})"));
                };
                running.remove(pos);
            }
            Rec::Overlap { seq, holder } => {
                let holder_seq = holder.parse::<u64>().ok();
                if exempt.is_none() || (Some(*seq) != exempt && holder_seq != exempt) {
                    return Err(format!("handler {seq} found the lock held by {holder:?}"));
                }
            }
            _ => {}
        }
    }
    if !running.is_empty() {
        return Err(format!("handlers that never ended: {running:?}"));
    }
    Ok(())
}

pub(crate) fn counts(seqs: &[u64]) -> BTreeMap<u64, usize> {
    let mut c = BTreeMap::new();
    for s in seqs {
        *c.entry(*s).or_insert(0) += 1;
    }
    c
}

/// SEQNUMs the daemon itself says it ran out of order because their helper came after
/// the gap had timed out: it logged both `SEQNUM A..=B did not arrive within ...` with
/// the SEQNUM in A..=B and then `late SEQNUM ...`. Only `main`, with its short gap
/// timeout, tolerates these.
pub(crate) fn declared_late(results: &Path) -> BTreeSet<u64> {
    let log = fs::read_to_string(results.join("daemon.log")).unwrap_or_default();
    let mut skipped = Vec::new();
    let mut late = BTreeSet::new();
    for line in log.lines() {
        if let Some((_, r)) = line.split_once("] SEQNUM ") {
            let range = r.split(' ').next().unwrap_or("");
            if let Some((a, b)) = range.split_once("..=") {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    skipped.push(a..=b);
                }
            }
        } else if let Some((_, r)) = line.split_once("] late ") {
            if let Some(Ok(n)) = r.split(' ').next().map(str::parse::<u64>) {
                if skipped.iter().any(|g| g.contains(&n)) {
                    late.insert(n);
                }
            }
        }
    }
    late
}

/// Each traced SEQNUM handled exactly once, in ascending order; `late` ones (declared by
/// the daemon) may come after higher ones.
/// The kernel's events no handler started for, one line each ([`describe`]); `seqs`
/// are the SEQNUMs handlers started for.
pub(crate) fn never_started(run: &Run, seqs: &[u64]) -> Vec<String> {
    run.trace
        .keys()
        .filter(|s| !seqs.contains(s))
        .map(|s| describe(&run.trace, *s))
        .collect()
}

pub(crate) fn check_once_in_order(run: &Run, late: &BTreeSet<u64>) -> Result<(), String> {
    let seqs = started(&run.recs);
    let missing = never_started(run, &seqs);
    if !missing.is_empty() {
        return Err(format!(
            "never handled ({} of {}):\n  {}",
            missing.len(),
            run.trace.len(),
            missing.join("\n  ")
        ));
    }
    let dups: Vec<(u64, usize)> = counts(&seqs).into_iter().filter(|(_, n)| *n > 1).collect();
    if !dups.is_empty() {
        return Err(format!("handled more than once (SEQNUM, times): {dups:?}"));
    }
    let ordered: Vec<u64> = seqs.iter().copied().filter(|s| !late.contains(s)).collect();
    if let Some(w) = ordered.windows(2).find(|w| w[0] > w[1]) {
        return Err(format!(
            "out of order: {} handled before {}; whole order {seqs:?} (declared late: {late:?})",
            w[0], w[1]
        ));
    }
    Ok(())
}

/// The scenario really made the kind of event it claims to.
pub(crate) fn expect_event(
    run: &Run,
    what: &str,
    pred: impl Fn(&KernelEvent) -> bool,
) -> Result<(), String> {
    if run.trace.values().any(pred) {
        Ok(())
    } else {
        let all: Vec<String> = run.trace.keys().map(|s| describe(&run.trace, *s)).collect();
        Err(format!(
            "the kernel sent no {what}; it sent:\n  {}",
            all.join("\n  ")
        ))
    }
}

pub(crate) fn is(ev: &KernelEvent, pairs: &[(&str, &str)]) -> bool {
    pairs.iter().all(|(k, v)| match v.strip_prefix('*') {
        Some(suffix) => ev.get(k).is_some_and(|x| x.ends_with(suffix)),
        None => ev.get(k) == Some(*v),
    })
}

/// Rebroadcast (issue 17): the listener heard every handled event once, in the order
/// they were handled, each after its handler's `end`.
pub(crate) fn check_rebroadcast(recs: &[Rec]) -> Result<(), String> {
    let mut ended = BTreeSet::new();
    let mut heard = Vec::new();
    for r in recs {
        match r {
            Rec::End { seq } => {
                ended.insert(*seq);
            }
            Rec::Rebroadcast { seq } => {
                if !ended.contains(seq) {
                    return Err(format!(
                        "SEQNUM {seq} was rebroadcast before its handler ended"
                    ));
                }
                heard.push(*seq);
            }
            _ => {}
        }
    }
    let handled = started(recs);
    if heard != handled {
        return Err(format!(
            "rebroadcast {heard:?}, but handled {handled:?}: each once, in that order, expected"
        ));
    }
    Ok(())
}
