//! Bounded memory: a million events queued with handlers paused grow the daemon's peak
//! RSS (VmHWM: the most it ever held while taking them in, not what it holds at the end;
//! the rest waits in the journal) by less than `max_queue_memory` + 16 MiB over its idle
//! RSS (its code, libc and stacks, which no queue bound covers), and after `resume`
//! every one of them is handled, in order.

mod common;

use std::fs;

use common::*;

/// A `/proc/PID/status` size (`VmRSS`, `VmHWM`, ...) in bytes.
fn status_bytes(pid: u32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn a_million_queued_events_stay_under_the_memory_cap_and_all_run_in_order() {
    const N: u64 = 1_000_000;
    const CAP: u64 = 64 << 20;
    let env = Env::new();
    let config = env.bare_config("max_queue_memory = \"64MiB\"", "");
    let d = env.start_at_level(&config, "warn");
    env.ctl_ok(&["pause"]);
    let idle = status_bytes(d.child.id(), "VmRSS");
    let mut batch = Vec::with_capacity(1 << 20);
    let mut payload_bytes = 0u64;
    for s in 1..=N {
        let payload = format!(
            "usb\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:14.0/usb1/1-{s}\0SUBSYSTEM=usb\0\
             SEQNUM={s}\0DEVTYPE=usb_interface\0PRODUCT=46d/c52b/1211\0TYPE=0/0/0\0\
             INTERFACE=3/1/2\0MODALIAS=usb:v046DpC52Bd1211dc00dsc00dp00ic03isc01ip02in00\0"
        );
        payload_bytes += payload.len() as u64;
        batch.extend_from_slice(&hotplugd::message::encode(payload.as_bytes()));
        if batch.len() > 900_000 {
            env.write_fifo(&batch);
            batch.clear();
        }
    }
    env.write_fifo(&batch);
    let status = |k: &str| -> u64 {
        let out = env.ctl_ok(&["status", "--json"]);
        let needle = format!("\"{k}\":");
        let start = out.find(&needle).unwrap() + needle.len();
        out[start..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    wait_for("a million queued", || status("queued") == N);
    let peak = status_bytes(d.child.id(), "VmHWM");
    let rss = status_bytes(d.child.id(), "VmRSS");

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{N} events queued ({:.0} B payload each): peak RSS {:.1} MiB over {:.1} MiB idle, \
         RSS now {:.1} MiB, queue memory {:.1} MiB, {} spilled",
        payload_bytes as f64 / N as f64,
        mib(peak),
        mib(idle),
        mib(rss),
        mib(status("queue_memory")),
        status("spilled")
    );
    assert!(status("spilled") > N / 2, "nothing spilled");
    assert!(
        peak - idle < CAP + (16 << 20),
        "peak RSS {peak} ({idle} idle) with a cap of {CAP}: not bounded"
    );
    // Log each event as it is handled (no rule matches), then let them go.
    env.ctl_ok(&["log-level", "info"]);
    env.ctl_ok(&["resume"]);
    wait_for("a million handled", || status("handled") == N);
    let log = d.log_text();
    let mut last = 0u64;
    let mut count = 0u64;
    for line in log.lines().filter(|l| l.ends_with(": no rule matched")) {
        let seq: u64 = line
            .split("] ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(seq > last, "{seq} after {last}");
        last = seq;
        count += 1;
    }
    assert_eq!(count, N);
    assert_eq!(status("spilled"), 0);
    eprintln!(
        "peak RSS over the whole run, handling included: {:.1} MiB",
        mib(status_bytes(d.child.id(), "VmHWM"))
    );
}
