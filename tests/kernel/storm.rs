//! The storm benchmark (not run by benches/run.sh: BENCHMARKS.md gives its command).

use super::*;

/// The kernel itself runs the helper for N `add` events written to a uevent file, one
/// boot per variant: hotplugd (shim, daemon, one handler at a time), busybox mdev with
/// /dev/mdev.seq, and a legacy helper script that runs the handler itself. Every variant
/// runs the same static handler (benches/c/handler.c, path in HOTPLUGD_BENCH_HANDLER),
/// which appends "SEQNUM MONOTONIC_NS". Prints one markdown row per variant. Needs what
/// the other kernel tests need. Not a check: ignored unless asked for.
#[test]
#[ignore]
fn storm_bench() {
    let Some(pre) = prerequisites() else { return };
    let handler = PathBuf::from(
        std::env::var("HOTPLUGD_BENCH_HANDLER")
            .expect("HOTPLUGD_BENCH_HANDLER: the static handler benches/run.sh builds"),
    );
    let n: u64 = std::env::var("HOTPLUGD_STORM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let variants =
        std::env::var("HOTPLUGD_STORM_VARIANTS").unwrap_or_else(|_| "hotplugd,mdev,legacy".into());
    println!("| helper (UML, N = {n}) | wall s (first write → last handler) | events/s | ordering violations | handler runs (distinct) |");
    println!("| --- | --- | --- | --- | --- |");
    for variant in variants.split(',') {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hotplugd-kstorm-{variant}-"))
            .tempdir()
            .expect("temp dir");
        let row = storm_once(&pre, &handler, variant, n, dir.path())
            .unwrap_or_else(|e| panic!("[storm {variant}] {e}"));
        println!("{row}");
    }
}

pub(crate) fn storm_once(
    pre: &Prereqs,
    handler: &Path,
    variant: &str,
    n: u64,
    dir: &Path,
) -> Result<String, String> {
    let root = dir.join("root");
    let results = root.join("results");
    build_root(pre, &root, Scenario::Storm)?;
    fs::create_dir_all(root.join("etc")).map_err(|e| e.to_string())?;
    fs::copy(handler, root.join("test/handler"))
        .map_err(|e| format!("{}: {e}", handler.display()))?;
    fs::write(root.join("test/storm-variant"), format!("{variant}\n"))
        .map_err(|e| e.to_string())?;
    fs::write(root.join("test/storm-n"), format!("{n}\n")).map_err(|e| e.to_string())?;
    let umid = format!("hpt-storm-{variant}-{}", std::process::id());
    let mut uml = Uml::boot(pre, dir, &root, &umid)?;
    uml.wait_exit(Duration::from_secs(600))?;
    let t0: i64 = fs::read_to_string(results.join("t0"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| {
            format!(
                "no t0; guest.log:\n{}",
                tail(&results.join("guest.log"), 20)
            )
        })?;
    let text = fs::read_to_string(results.join("records")).unwrap_or_default();
    let recs: Vec<(u64, i64)> = text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    if recs.len() as u64 != n {
        return Err(format!(
            "{} handler runs for {n} events; guest.log:\n{}",
            recs.len(),
            tail(&results.join("guest.log"), 20)
        ));
    }
    let last = recs.iter().map(|r| r.1).max().unwrap_or(t0);
    let wall = (last - t0) as f64 / 1e9;
    let violations = recs.windows(2).filter(|w| w[1].0 < w[0].0).count();
    let distinct: BTreeSet<u64> = recs.iter().map(|r| r.0).collect();
    Ok(format!(
        "| {variant} | {wall:.2} | {:.0} | {violations} | {} ({}) |",
        n as f64 / wall,
        recs.len(),
        distinct.len()
    ))
}
