//! The FIFO splitter and the whole-message decoder on arbitrary bytes. The first byte
//! picks the read sizes the stream is cut into; every byte must be accounted for (frames,
//! garbage or held), and `flush_stale` must drain whatever is held.
#![no_main]

use hotplugd::message::{
    decode_whole, encode, next_frame, Item, Splitter, HEADER_LEN, MAX_PAYLOAD, VERSION,
    VERSION_FNV,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let _ = next_frame(stream, MAX_PAYLOAD);
    if let Ok(p) = decode_whole(stream) {
        // A version 2 frame is exactly what encode makes; a version 1 frame (still read)
        // carries the same payload under the older checksum.
        if stream[4] == VERSION {
            assert_eq!(encode(p), stream);
        } else {
            assert_eq!(stream[4], VERSION_FNV);
            assert_eq!(decode_whole(&encode(p)), Ok(p));
        }
    }

    let step = (cut as usize % 64) + 1;
    let mut s = Splitter::new();
    let mut consumed = 0usize;
    let mut on = |item: Item<'_>| match item {
        Item::Message(p) => consumed += HEADER_LEN + p.len(),
        Item::Garbage { bytes, .. } => {
            assert!(bytes > 0);
            consumed += bytes
        }
    };
    for chunk in stream.chunks(step) {
        s.feed(chunk, &mut on);
    }
    let mut rounds = 0;
    while s.pending() > 0 {
        s.flush_stale(&mut on);
        rounds += 1;
        assert!(rounds <= stream.len(), "flush_stale does not drain");
    }
    assert_eq!(consumed, stream.len(), "bytes lost or invented");
});
