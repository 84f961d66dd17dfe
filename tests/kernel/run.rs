//! Running a scenario: boot, provoke, wait, power off.

use super::*;

/// Boots the guest for `scenario`, drives it, waits for the handler to catch up, powers
/// off. Returns the records, or Err with what went wrong (the kernel is gone either way).
pub(crate) fn run(pre: &Prereqs, scenario: Scenario, dir: &Path) -> Result<Run, String> {
    let root = dir.join("root");
    let results = root.join("results");
    build_root(pre, &root, scenario)?;
    let umid = format!("hpt-{}-{}", scenario.name(), std::process::id());
    let t0 = Instant::now();
    let mut uml = Uml::boot(pre, dir, &root, &umid)?;

    // Until the guest has made all its events (answering its mconsole request on the way).
    let guest_log = results.join("guest.log");
    let mut boot_to_init = None;
    let end = Instant::now() + PROVOKE_DEADLINE;
    let mut mconsole_done = false;
    while !results.join("provoked").exists() {
        uml.check_running()?;
        if boot_to_init.is_none() && guest_log.exists() {
            boot_to_init = Some(uml.started.elapsed());
        }
        if !mconsole_done && results.join("mconsole.request").exists() {
            let outcome = hot_add_and_remove_ubd(&uml, dir);
            let note = match &outcome {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            fs::write(results.join("mconsole.done"), note).map_err(|e| e.to_string())?;
            outcome?;
            mconsole_done = true;
        }
        if Instant::now() > end {
            return Err(format!(
                "the guest did not finish making events within {PROVOKE_DEADLINE:?}; guest.log:\n{}",
                tail(&guest_log, 20)
            ));
        }
        sleep(POLL);
    }
    let before = read_num(&results, "before")?;
    let after = read_num(&results, "after")?;
    let netns = read_netns(&results);

    // Until every SEQNUM in (before, after] has reached the helper and every helper run
    // has been handled. On the deadline go on: the checks below say what is missing.
    let end = Instant::now() + HANDLED_DEADLINE;
    let (mut last_len, mut last_change) = (0, Instant::now());
    loop {
        uml.check_running()?;
        let trace = read_trace(&results);
        let log = fs::read_to_string(results.join("handler.log")).unwrap_or_default();
        let handled: BTreeSet<u64> = read_handler_log(&results)
            .map(|r| started(&r).into_iter().collect())
            .unwrap_or_default();
        // `overflow` has no record of the kernel's events (a second listener would
        // overflow too): its window is all broadcast, and its last event must be handled.
        let window_traced = if scenario == Scenario::Overflow {
            handled.contains(&after)
        } else {
            (before + 1..=after).all(|s| trace.contains_key(&s) || netns.contains(&s))
        };
        // Coalesced events never run: they count as done. (Only `coalesce` coalesces;
        // the others need not reread the daemon's log every poll.)
        let gone = match scenario {
            Scenario::Coalesce => coalesced(&results).unwrap_or_default(),
            _ => BTreeSet::new(),
        };
        let all_handled = trace
            .keys()
            .all(|s| handled.contains(s) || gone.contains(s));
        // The last handler must have finished too (the rebroadcast listener's lines
        // come after it).
        let last_ended = log
            .lines()
            .rev()
            .find(|l| !l.starts_with("rebroadcast "))
            .is_some_and(|l| l.starts_with("end "));
        if log.len() != last_len {
            (last_len, last_change) = (log.len(), Instant::now());
        }
        // ...and the record must stay still a moment, so that a stray extra run (a
        // duplicate) shows up before the guest goes down.
        if window_traced && all_handled && last_ended && last_change.elapsed() > QUIET {
            break;
        }
        if Instant::now() > end || last_change.elapsed() > NO_PROGRESS {
            eprintln!(
                "[{}] gave up waiting for the handler after {:.1?} (record unchanged for {:.1?})",
                scenario.name(),
                t0.elapsed(),
                last_change.elapsed()
            );
            break;
        }
        sleep(POLL);
    }

    fs::write(results.join("poweroff"), "").map_err(|e| e.to_string())?;
    uml.wait_exit(POWEROFF_DEADLINE)?;
    let total = t0.elapsed();
    drop(uml);
    Ok(Run {
        netns,
        before,
        after,
        trace: read_trace(&results),
        recs: read_handler_log(&results)?,
        results,
        boot_to_init: boot_to_init.unwrap_or_default(),
        total,
    })
}

/// Real device hotplug from outside: plug a disk image in as ubdb, then pull it out.
pub(crate) fn hot_add_and_remove_ubd(uml: &Uml, dir: &Path) -> Result<(), String> {
    let disk = dir.join("ubdb.img");
    let f = fs::File::create(&disk).map_err(|e| e.to_string())?;
    f.set_len(1 << 20).map_err(|e| e.to_string())?;
    let out = uml.mconsole(&format!("config ubdb={}", disk.display()))?;
    if !out.starts_with("OK") {
        return Err(format!("mconsole config ubdb: {out}"));
    }
    // The kernel may still hold the new disk open for a moment (partition scan).
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let out = uml.mconsole("remove ubdb")?;
        if out.starts_with("OK") {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("mconsole remove ubdb: {out}"));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Runs the scenario in a temp dir; on failure keeps the dir and panics with the story.
pub(crate) fn scenario(
    pre: &Prereqs,
    scenario: Scenario,
    check: impl FnOnce(&Run) -> Result<String, String>,
) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("hotplugd-kernel-{}-", scenario.name()))
        .tempdir()
        .expect("temp dir");
    let outcome = run(pre, scenario, dir.path()).and_then(|run| {
        // `overflow` has no record of what the kernel sent to compare with.
        let common = match scenario {
            Scenario::Overflow => Ok(()),
            _ => common_checks(&run),
        };
        let checks = common.and_then(|_| check(&run));
        match checks {
            Ok(summary) => {
                eprintln!(
                    "[{}] kernel reached init in {:.2?}, whole boot {:.2?}; window ({}, {}]: {summary}",
                    scenario.name(),
                    run.boot_to_init,
                    run.total,
                    run.before,
                    run.after
                );
                Ok(())
            }
            Err(e) => Err(format!("{e}\n{}", diagnostics(&run.results))),
        }
    });
    if let Err(e) = outcome {
        let kept = dir.keep();
        panic!(
            "[{}] {e}\n(guest root kept in {})",
            scenario.name(),
            kept.display()
        );
    }
}

pub(crate) fn diagnostics(results: &Path) -> String {
    format!(
        "--- guest.log:\n{}\n--- daemon.log (tail):\n{}\n--- runtime dir at the end:\n{}",
        tail(&results.join("guest.log"), 40),
        tail(&results.join("daemon.log"), 40),
        tail(&results.join("runtime-dir.txt"), 20)
    )
}
