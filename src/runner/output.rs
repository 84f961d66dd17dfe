//! What a handler prints: read from its pipe a bounded number of times per wakeup, split
//! into lines, each cut at [`MAX_LINE`], and the whole capped at the rule's
//! `max_output_bytes`. The bytes past the cap are still read, so a flooding handler never
//! blocks on a full pipe.

use std::fs::File;
use std::io::{self, Read};

use super::MAX_LINE;

/// Where [`read_pipe`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// The pipe is empty (EAGAIN).
    Drained,
    /// `max_reads` reached; there may be more.
    More,
    /// EOF or a read error: the pipe is finished.
    Closed,
}

/// Read what is available, at most `max_reads` times.
pub(super) fn read_pipe(
    mut pipe: &File,
    buf: &mut [u8],
    max_reads: usize,
    out: &mut Output,
    sink: &mut dyn FnMut(Msg<'_>),
) -> Drain {
    let mut reads = 0;
    while reads < max_reads {
        match pipe.read(buf) {
            Ok(0) => return Drain::Closed,
            Ok(n) => {
                reads += 1;
                out.feed(&buf[..n], sink);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drain::Drained,
            Err(e) => {
                log::warn!("reading handler output: {e}");
                return Drain::Closed;
            }
        }
    }
    Drain::More
}

/// Log what [`Output`] hands over, as the handler's line under its rule and SEQNUM.
pub(super) fn log_msg(rule: &str, seq: impl std::fmt::Display, msg: Msg<'_>) {
    match msg {
        Msg::Line(line, cut) => log::info!(
            target: "handler",
            "[{rule} {seq}] {}{}",
            String::from_utf8_lossy(line),
            if cut { "…" } else { "" }
        ),
        Msg::Truncated(n) => {
            log::info!(target: "handler", "[{rule} {seq}] output truncated after {n} bytes")
        }
    }
}

/// What [`Output`] wants logged.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Msg<'a> {
    /// One line without its newline; `true` if it was cut at [`MAX_LINE`].
    Line(&'a [u8], bool),
    /// The cap was reached after this many bytes; nothing more will be logged.
    Truncated(usize),
}

/// Splits the handler's output into lines and applies the line and total caps.
/// Bytes counted against the cap are the line bytes logged (without newlines).
pub(super) struct Output {
    line: Vec<u8>,
    /// The current line was already logged cut; skip to its newline.
    cut: bool,
    logged: usize,
    max: usize,
    truncated: bool,
}

impl Output {
    pub(super) fn new(max: usize) -> Output {
        Output {
            line: Vec::new(),
            cut: false,
            logged: 0,
            max,
            truncated: false,
        }
    }

    pub(super) fn feed(&mut self, mut data: &[u8], sink: &mut dyn FnMut(Msg<'_>)) {
        while !data.is_empty() && !self.truncated {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.append(&data[..nl], sink);
                    if !self.cut {
                        self.emit(false, sink);
                    }
                    self.line.clear();
                    self.cut = false;
                    data = &data[nl + 1..];
                }
                None => {
                    self.append(data, sink);
                    return;
                }
            }
        }
    }

    /// Log a last line that had no newline.
    pub(super) fn finish(&mut self, sink: &mut dyn FnMut(Msg<'_>)) {
        if !self.truncated && !self.cut && !self.line.is_empty() {
            self.emit(false, sink);
        }
        self.line.clear();
        self.cut = false;
    }

    fn append(&mut self, part: &[u8], sink: &mut dyn FnMut(Msg<'_>)) {
        if self.cut {
            return;
        }
        let room = MAX_LINE - self.line.len();
        if part.len() <= room {
            self.line.extend_from_slice(part);
            return;
        }
        // Cut before a UTF-8 continuation byte rather than through a character.
        let mut take = room;
        for _ in 0..3 {
            if take == 0 || part[take] & 0xC0 != 0x80 {
                break;
            }
            take -= 1;
        }
        if part[take] & 0xC0 == 0x80 {
            take = room; // not UTF-8 anyway
        }
        self.line.extend_from_slice(&part[..take]);
        self.cut = true;
        self.emit(true, sink);
    }

    fn emit(&mut self, cut: bool, sink: &mut dyn FnMut(Msg<'_>)) {
        if self.truncated {
            return;
        }
        if self.logged + self.line.len() > self.max {
            self.truncated = true;
            self.line = Vec::new();
            sink(Msg::Truncated(self.logged));
            return;
        }
        self.logged += self.line.len();
        sink(Msg::Line(&self.line, cut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut out = Output::new(max);
        let mut msgs = Vec::new();
        let mut sink = |m: Msg<'_>| {
            msgs.push(match m {
                Msg::Line(l, cut) => {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(l),
                        if cut { "…" } else { "" }
                    )
                }
                Msg::Truncated(n) => format!("TRUNCATED {n}"),
            })
        };
        for c in chunks {
            out.feed(c, &mut sink);
        }
        out.finish(&mut sink);
        msgs
    }

    #[test]
    fn output_lines_are_split_across_reads() {
        assert_eq!(
            collect(&[b"one\ntw", b"o\n\nthr", b"ee"], 1000),
            ["one", "two", "", "three"]
        );
        assert_eq!(collect(&[b"bad \xff byte\n"], 1000), ["bad \u{fffd} byte"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = vec![b'x'; 3000];
        let msgs = collect(&[&long[..1500], &long[1500..], b"\nnext\n"], 100_000);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0], format!("{}…", "x".repeat(MAX_LINE)));
        assert_eq!(msgs[1], "next");
        // Exactly MAX_LINE bytes is not cut.
        let exact = vec![b'y'; MAX_LINE];
        assert_eq!(collect(&[&exact, b"\n"], 100_000), ["y".repeat(MAX_LINE)]);
        // A cut does not split a multi-byte character.
        let mut text = vec![b'z'; MAX_LINE - 1];
        text.extend_from_slice("é and more".as_bytes());
        assert_eq!(
            collect(&[&text], 100_000),
            [format!("{}…", "z".repeat(MAX_LINE - 1))]
        );
    }

    #[test]
    fn output_is_truncated_once() {
        let msgs = collect(&[b"12345\n12345\n12345\n12345\n"], 12);
        assert_eq!(msgs, ["12345", "12345", "TRUNCATED 10"]);
        assert_eq!(collect(&[b"x\n"], 0), ["TRUNCATED 0"]);
    }
}
