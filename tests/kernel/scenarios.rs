//! The tests: one boot per scenario.

use super::*;

#[test]
fn burst_is_handled_once_in_order() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Main, |run| {
        expect_event(run, "dummy net device add", |e| {
            is(
                e,
                &[
                    ("ACTION", "add"),
                    ("SUBSYSTEM", "net"),
                    ("DEVPATH", "*/net/d0"),
                ],
            )
        })?;
        expect_event(run, "dummy net device remove", |e| {
            is(
                e,
                &[
                    ("ACTION", "remove"),
                    ("SUBSYSTEM", "net"),
                    ("DEVPATH", "*/net/d0"),
                ],
            )
        })?;
        expect_event(run, "module add", |e| {
            is(
                e,
                &[
                    ("ACTION", "add"),
                    ("SUBSYSTEM", "module"),
                    ("DEVPATH", "/module/loop"),
                ],
            )
        })?;
        expect_event(run, "loop block device with DEVNAME/MAJOR/MINOR", |e| {
            is(
                e,
                &[
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "loop0"),
                    ("MAJOR", "7"),
                    ("MINOR", "0"),
                ],
            )
        })?;
        expect_event(run, "synthetic add from a uevent write", |e| {
            is(
                e,
                &[("ACTION", "add"), ("DEVPATH", "/devices/virtual/net/lo")],
            )
        })?;
        expect_event(run, "ubdb hot-add with DEVNAME", |e| {
            is(
                e,
                &[
                    ("ACTION", "add"),
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "ubdb"),
                ],
            )
        })?;
        expect_event(run, "ubdb removal", |e| {
            is(
                e,
                &[
                    ("ACTION", "remove"),
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "ubdb"),
                ],
            )
        })?;
        expect_event(run, "platform device with MODALIAS", |e| {
            is(
                e,
                &[
                    ("SUBSYSTEM", "platform"),
                    ("MODALIAS", "platform:uml-blkdev"),
                ],
            )
        })?;
        // The network namespace really cost SEQNUMs without a helper run: a gap.
        let gaps: Vec<u64> = run
            .netns
            .iter()
            .filter(|s| !run.trace.contains_key(s))
            .collect();
        if gaps.is_empty() {
            return Err(format!(
                "the network namespace events {:?} made no SEQNUM gap",
                run.netns
            ));
        }
        // The "ubd-node" rule's mode and link, as its handler saw them: made before it
        // ran at the add, gone again at the remove.
        let snapshot = |action: &str| {
            fs::read_to_string(run.results.join(format!("node-at-{action}.txt")))
                .map_err(|e| format!("node-at-{action}.txt: {e}"))
        };
        let (at_add, at_remove) = (snapshot("add")?, snapshot("remove")?);
        if !at_add.starts_with("brw-r-----") || !at_add.contains("link ../../ubdb\n") {
            return Err(format!(
                "ubdb's add: mode 0640 and link disk/by-test/ubdb expected, saw {at_add:?}"
            ));
        }
        if !at_remove.contains("link \n") {
            return Err(format!(
                "ubdb's remove: the link should be gone, saw {at_remove:?}"
            ));
        }
        let late = declared_late(&run.results);
        check_once_in_order(run, &late)?;
        check_serialized(&run.recs, None)?;
        check_rebroadcast(&run.recs)?;
        Ok(format!(
            "{} events handled once each, in order, one at a time, past the gaps {gaps:?} \
             (helpers that came after their gap timed out, run late: {late:?}), each \
             rebroadcast once after its handler, in order",
            run.trace.len()
        ))
    });
}

#[test]
fn early_events_spool_until_the_daemon_starts() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Early, |run| {
        let spooled_to = read_num(&run.results, "spooled_to")?;
        let spooled = read_num(&run.results, "spooled")?;
        if spooled != spooled_to - run.before {
            return Err(format!(
                "with no daemon, the spool should hold all {} events of ({}, {spooled_to}], it holds {spooled}",
                spooled_to - run.before,
                run.before
            ));
        }
        check_once_in_order(run, &BTreeSet::new())?;
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{spooled} spooled events then {} live, handled once each, in order, one at a time",
            run.after - spooled_to
        ))
    });
}

#[test]
fn sigkill_mid_burst_loses_nothing() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Kill, |run| {
        let kill_at = run
            .recs
            .iter()
            .position(|r| *r == Rec::Killed)
            .ok_or("no kill happened (see guest.log)")?;
        // (The new daemon may start a handler before init.sh writes this mark.)
        if !run.recs.contains(&Rec::Restarted) {
            return Err("no restart happened (see guest.log)".into());
        }
        // The handler running at the kill: started before it, not ended before it.
        let mut open: Vec<u64> = Vec::new();
        for r in &run.recs[..kill_at] {
            match r {
                Rec::Start { seq, .. } => open.push(*seq),
                Rec::End { seq } => open.retain(|s| s != seq),
                _ => {}
            }
        }
        if open.len() > 1 {
            return Err(format!("several handlers running at the kill: {open:?}"));
        }
        let orphan = open.first().copied();
        let seqs = started(&run.recs);
        let missing = never_started(run, &seqs);
        if !missing.is_empty() {
            return Err(format!(
                "lost across the SIGKILL ({}):\n  {}",
                missing.len(),
                missing.join("\n  ")
            ));
        }
        let dups: Vec<(u64, usize)> = counts(&seqs).into_iter().filter(|(_, n)| *n > 1).collect();
        let allowed = |s: u64, n: usize| Some(s) == orphan && n == 2;
        if let Some(bad) = dups.iter().find(|(s, n)| !allowed(*s, *n)) {
            return Err(format!(
                "handled more than once: {bad:?} (only the handler running at the kill, {orphan:?}, may run twice); all: {dups:?}"
            ));
        }
        // Each daemon's own starts ascend; the new one starts no lower than the orphan
        // (or than the last one finished, if nothing was running).
        let first_gen: Vec<u64> = started(&run.recs[..kill_at]);
        let second_gen: Vec<u64> = started(&run.recs[kill_at..]);
        for (name, g) in [
            ("before the kill", &first_gen),
            ("after the restart", &second_gen),
        ] {
            if let Some(w) = g.windows(2).find(|w| w[0] >= w[1]) {
                return Err(format!(
                    "out of order {name}: {} then {}; {g:?}",
                    w[0], w[1]
                ));
            }
        }
        let floor = orphan.unwrap_or_else(|| first_gen.last().map_or(0, |s| s + 1));
        if let Some(first) = second_gen.first() {
            if *first < floor {
                return Err(format!(
                    "after the restart the first handled was {first}, below {floor} (already handled)"
                ));
            }
        }
        check_serialized(&run.recs, orphan)?;
        Ok(format!(
            "{} events, {} handled before the SIGKILL, handler running at the kill: {orphan:?}, run twice: {}",
            run.trace.len(),
            first_gen.len(),
            dups.len()
        ))
    });
}

#[test]
fn netlink_source_without_a_helper() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Netlink, |run| {
        if daemon_log_lines(&run.results, "events from netlink)").is_empty() {
            return Err("the daemon did not say it reads netlink only".into());
        }
        // init.sh lists the runtime dir before powering off.
        let listing = fs::read_to_string(run.results.join("runtime-dir.txt")).unwrap_or_default();
        if listing.lines().any(|l| l.ends_with(" events")) {
            return Err(format!(
                "netlink only, yet the daemon made a FIFO:
{listing}"
            ));
        }
        expect_event(run, "dummy net device add", |e| {
            is(e, &[("ACTION", "add"), ("DEVPATH", "*/net/d0")])
        })?;
        expect_event(run, "ubdb hot-add with DEVNAME", |e| {
            is(e, &[("ACTION", "add"), ("DEVNAME", "ubdb")])
        })?;
        check_once_in_order(run, &BTreeSet::new())?;
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{} events broadcast on netlink with no helper, handled once each, in order, \
             with the helper's environment",
            run.trace.len()
        ))
    });
}

#[test]
fn both_sources_run_each_event_once() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Both, |run| {
        check_once_in_order(run, &BTreeSet::new())?;
        check_serialized(&run.recs, None)?;
        // Each event came twice, once from each source: the second copy was dropped.
        let dups = daemon_log_lines(&run.results, "] duplicate ").len();
        if dups != run.trace.len() {
            return Err(format!(
                "{} events but {dups} duplicates dropped: every event should arrive on \
                 both the FIFO and netlink",
                run.trace.len()
            ));
        }
        Ok(format!(
            "{} events each arrived on the FIFO and on netlink and ran once",
            run.trace.len()
        ))
    });
}

#[test]
fn remove_coalesces_with_its_queued_add() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Coalesce, |run| {
        let dropped = coalesced(&run.results)?;
        let net_pair = daemon_log_lines(&run.results, "] coalesced ")
            .iter()
            .any(|l| l.contains("/net/d0 (net) with its add"));
        if !net_pair {
            return Err("the d0 net device's add and remove were not coalesced".into());
        }
        let seqs = started(&run.recs);
        for s in run.trace.keys() {
            let n = seqs.iter().filter(|x| *x == s).count();
            match (dropped.contains(s), n) {
                (true, 0) | (false, 1) => {}
                (true, _) => return Err(format!("{s} was coalesced, yet it ran {n} times")),
                (false, _) => {
                    return Err(format!(
                        "{s} ({}) ran {n} times; expected once",
                        describe(&run.trace, *s)
                    ))
                }
            }
        }
        if let Some(w) = seqs.windows(2).find(|w| w[0] > w[1]) {
            return Err(format!("out of order: {} before {}", w[0], w[1]));
        }
        check_serialized(&run.recs, None)?;
        Ok(format!(
            "{} events: {} coalesced in add/remove pairs, {} handled in order",
            run.trace.len(),
            dropped.len(),
            seqs.len()
        ))
    });
}

#[test]
fn netlink_overflow_is_counted_and_rescanned() {
    let Some(pre) = prerequisites() else { return };
    scenario(&pre, Scenario::Overflow, |run| {
        if daemon_log_lines(&run.results, "receive buffer overflowed (ENOBUFS)").is_empty() {
            return Err("no overflow was reported".into());
        }
        // "netlink: lost 83 events in the overflow: SEQNUM 760..=842"
        let lines = daemon_log_lines(&run.results, "events in the overflow: SEQNUM ");
        let [line] = lines.as_slice() else {
            return Err(format!("expected one loss count, got {lines:?}"));
        };
        let range = line.rsplit("SEQNUM ").next().unwrap_or("");
        let (lo, hi) = range
            .split_once("..=")
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .ok_or_else(|| format!("unreadable loss line: {line}"))?;
        if lo <= run.before || hi >= run.after {
            return Err(format!(
                "lost {lo}..={hi}, outside the window ({}, {})",
                run.before, run.after
            ));
        }
        // Every SEQNUM of the window ran once, in order, but those counted as lost.
        let seqs = started(&run.recs);
        let want: Vec<u64> = (run.before + 1..=run.after)
            .filter(|s| !(lo..=hi).contains(s))
            .collect();
        if seqs != want {
            return Err(format!(
                "handled {seqs:?}; expected the window ({}, {}] less the lost {lo}..={hi}: {want:?}",
                run.before, run.after
            ));
        }
        check_serialized(&run.recs, None)?;
        // The rescan queued an add for devices that exist.
        let rescan = fs::read_to_string(run.results.join("rescan.log")).unwrap_or_default();
        if !rescan.lines().any(|l| l == "add /devices/virtual/net/lo") {
            return Err(format!(
                "the rescan queued no add for lo; rescan.log:\n{rescan}"
            ));
        }
        Ok(format!(
            "{} lost of ({}, {}], counted exactly; {} handled in order; the rescan queued {} adds",
            hi - lo + 1,
            run.before,
            run.after,
            seqs.len(),
            rescan.lines().count()
        ))
    });
}
