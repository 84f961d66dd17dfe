//! `Event::from_payload` on arbitrary bytes; an accepted event must be usable through
//! every accessor and keep its payload unchanged.
//!
//! The first byte picks a mode: odd means "stretch": the next two bytes (u16 LE) give the
//! length of a `PAD=aaa...` variable put in front of the rest, so the fuzzer reaches
//! payloads near and past 64 KiB without having to grow inputs that big.
#![no_main]

use hotplugd::event::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let payload = match rest {
        [lo, hi, tail @ ..] if mode & 1 == 1 => {
            let pad = u16::from_le_bytes([*lo, *hi]) as usize;
            let mut p = b"x\0PAD=".to_vec();
            p.resize(p.len() + pad, b'a');
            p.push(0);
            p.extend_from_slice(tail);
            p
        }
        _ => rest.to_vec(),
    };
    if let Ok(ev) = Event::from_payload(&payload) {
        let _ = (
            ev.seqnum(),
            ev.action(),
            ev.devpath(),
            ev.subsystem(),
            ev.arg1(),
        );
        let _ = ev.summary().to_string();
        for (k, _) in ev.vars() {
            let _ = ev.get(k);
        }
        assert_eq!(ev.payload(), &payload[..]);
    }
});
