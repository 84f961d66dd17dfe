//! Bounded memory: a million events queued with handlers paused stay under
//! `max_queue_memory` + 16 MiB of RSS (the rest waits in the journal), and after `resume`
//! every one of them is handled, in order.

mod common;

use std::fs;

use common::*;

fn rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
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
    let config = env.path("mem.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nseqnum_file = \"{}\"\nmax_queue_memory = \"64MiB\"\nsources = [\"fifo\"]\n",
            env.path("seqnum").display()
        ),
    )
    .unwrap();
    let d = env.start_at_level(&config, "warn");
    env.ctl_ok(&["pause"]);
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
    let rss = rss_bytes(d.child.id());

    eprintln!(
        "{N} events queued ({:.0} B payload each): RSS {:.1} MiB, queue memory {:.1} MiB, {} spilled",
        payload_bytes as f64 / N as f64,
        rss as f64 / (1 << 20) as f64,
        status("queue_memory") as f64 / (1 << 20) as f64,
        status("spilled")
    );
    assert!(status("spilled") > N / 2, "nothing spilled");
    assert!(
        rss < CAP + (16 << 20),
        "RSS {rss} with a cap of {CAP}: not bounded"
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
}
