//! Lanes: which released event may start next when `workers` handlers may run at once.
//! Pure logic over DEVPATHs, no queue and no clock, so the promises are property-tested
//! on their own:
//!
//! * Two events are *related* when their DEVPATHs are equal or one is an ancestor of the
//!   other (`/devices/usb1` and `/devices/usb1/1-1`). Related events never run at the
//!   same time, and they start in release order (SEQNUM order, or arrival order for
//!   events without one): an event starts only once every earlier related event has
//!   finished. That is udevd's rule, and it keeps a parent's `add` before its children's
//!   and a child's `remove` before its parent's.
//! * An *exclusive* event (`SUBSYSTEM=module`, or a rule with `exclusive = true`) runs
//!   alone: it starts when nothing else runs and everything released before it has
//!   started (so finished), and nothing released after it starts until it has finished.
//! * At most `workers` events run at once (the caller counts).
//!
//! The owner scans the untaken events from the oldest, in release order, through a
//! [`Picker`]: the first one the picker lets start is taken, and the scan begins again
//! until every lane is busy or nothing may start. With one worker the oldest event is
//! always the one (nothing runs when the owner looks), so the default is the plain kue
//! order of old.

/// Whether `a` and `b` are the same device or one is an ancestor of the other.
pub fn related(a: &[u8], b: &[u8]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.starts_with(short) && (long.len() == short.len() || long[short.len()] == b'/')
}

/// What the picker says of one untaken event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may start now.
    Start,
    /// It waits for the running or earlier event at this index (of `running`, or of the
    /// events considered before it, counted from 0); later events may still start.
    Blocked(Blocker),
    /// Nothing from here on may start (an exclusive event waits, or one runs).
    Stop,
}

/// What an event waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// `running[i]`.
    Running(usize),
    /// The `i`th event considered before it in this scan.
    Earlier(usize),
}

/// One event as the picker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub devpath: &'a [u8],
    pub exclusive: bool,
}

/// One scan over the untaken events, oldest first. `running` are the events running now.
pub struct Picker<'a> {
    running: &'a [Candidate<'a>],
    /// DEVPATHs of the events considered so far (they stay untaken: each was blocked).
    earlier: Vec<&'a [u8]>,
}

impl<'a> Picker<'a> {
    pub fn new(running: &'a [Candidate<'a>]) -> Picker<'a> {
        Picker {
            running,
            earlier: Vec::new(),
        }
    }

    /// The verdict on the next untaken event in release order. After a `Start` the
    /// caller takes that event and begins a new scan (the running set changed).
    pub fn consider(&mut self, c: Candidate<'a>) -> Verdict {
        if self.running.iter().any(|r| r.exclusive) {
            return Verdict::Stop;
        }
        if c.exclusive {
            return if self.running.is_empty() && self.earlier.is_empty() {
                Verdict::Start
            } else {
                Verdict::Stop
            };
        }
        let blocker = match self
            .running
            .iter()
            .position(|r| related(r.devpath, c.devpath))
        {
            Some(i) => Some(Blocker::Running(i)),
            None => self
                .earlier
                .iter()
                .position(|e| related(e, c.devpath))
                .map(Blocker::Earlier),
        };
        self.earlier.push(c.devpath);
        match blocker {
            None => Verdict::Start,
            Some(b) => Verdict::Blocked(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn related_is_same_or_ancestor_on_a_component_boundary() {
        assert!(related(b"/devices/a", b"/devices/a"));
        assert!(related(b"/devices/a", b"/devices/a/b"));
        assert!(related(b"/devices/a/b/c", b"/devices/a"));
        assert!(!related(b"/devices/a", b"/devices/ab"));
        assert!(!related(b"/devices/a/b", b"/devices/a/c"));
        assert!(related(b"", b"/devices/a"), "no DEVPATH: related to all");
    }

    fn c(devpath: &str) -> Candidate<'_> {
        Candidate {
            devpath: devpath.as_bytes(),
            exclusive: false,
        }
    }

    #[test]
    fn a_child_waits_for_its_running_parent_and_a_stranger_passes() {
        let running = [c("/devices/usb1")];
        let mut p = Picker::new(&running);
        assert_eq!(
            p.consider(c("/devices/usb1/1-1")),
            Verdict::Blocked(Blocker::Running(0))
        );
        // Behind the blocked child: its own child waits for it too (it is earlier).
        assert_eq!(
            p.consider(c("/devices/usb1/1-1/1-1:1.0")),
            Verdict::Blocked(Blocker::Running(0))
        );
        assert_eq!(p.consider(c("/devices/pci0/net/eth0")), Verdict::Start);
    }

    #[test]
    fn an_event_waits_for_an_earlier_untaken_relative() {
        let running = [c("/devices/a")];
        let mut p = Picker::new(&running);
        assert!(matches!(p.consider(c("/devices/a")), Verdict::Blocked(_)));
        assert_eq!(p.consider(c("/devices/b")), Verdict::Start);
        let mut p = Picker::new(&running);
        p.consider(c("/devices/a/x"));
        p.consider(c("/devices/b"));
        // /devices/b/y waits for /devices/b, considered (and so released) before it.
        assert_eq!(
            p.consider(c("/devices/b/y")),
            Verdict::Blocked(Blocker::Earlier(1))
        );
    }

    #[test]
    fn exclusive_runs_alone() {
        let module = Candidate {
            devpath: b"/module/snd",
            exclusive: true,
        };
        assert_eq!(Picker::new(&[]).consider(module), Verdict::Start);
        let running = [c("/devices/a")];
        assert_eq!(Picker::new(&running).consider(module), Verdict::Stop);
        let mut p = Picker::new(&[]);
        assert!(matches!(p.consider(c("/devices/a")), Verdict::Start));
        // Considered after another event in the same scan: that one is earlier.
        assert_eq!(p.consider(module), Verdict::Stop);
        let running = [module];
        assert_eq!(
            Picker::new(&running).consider(c("/devices/b")),
            Verdict::Stop
        );
    }

    /// A random device tree, and events on its nodes in a random release order.
    fn scenario() -> impl Strategy<Value = (Vec<String>, Vec<(usize, bool)>, usize, u64)> {
        (1usize..12).prop_flat_map(|nodes| {
            (
                // Each node's parent is an earlier node, or none (a root).
                proptest::collection::vec(any::<prop::sample::Index>(), nodes),
                proptest::collection::vec((0..nodes, prop::bool::weighted(0.08)), 1..60),
                1usize..5,
                any::<u64>(),
            )
                .prop_map(|(parents, events, workers, seed)| {
                    let mut paths: Vec<String> = Vec::new();
                    for (i, p) in parents.iter().enumerate() {
                        let path = if i == 0 || p.index(3) == 0 {
                            format!("/devices/r{i}")
                        } else {
                            format!("{}/d{i}", paths[p.index(i)])
                        };
                        paths.push(path);
                    }
                    (paths, events, workers, seed)
                })
        })
    }

    proptest! {
        /// Simulate the owner: scan, start what the picker allows (up to `workers`),
        /// finish a random running event, repeat. Related events never overlap and start
        /// in release order, at most `workers` run, exclusive ones run alone, and
        /// everything finishes (a scan with nothing running always starts the oldest).
        #[test]
        fn related_never_overlap_keep_order_and_nothing_starves(
            (paths, events, workers, seed) in scenario()
        ) {
            let ev: Vec<Candidate> = events
                .iter()
                .map(|&(node, exclusive)| Candidate { devpath: paths[node].as_bytes(), exclusive })
                .collect();
            let mut untaken: Vec<usize> = (0..ev.len()).collect();
            let mut running: Vec<usize> = Vec::new();
            let mut finished = vec![false; ev.len()];
            let mut started = vec![false; ev.len()];
            let mut x = seed | 1;
            let mut steps = 0;
            while !untaken.is_empty() || !running.is_empty() {
                steps += 1;
                prop_assert!(steps < 10 * ev.len() + 10, "no progress");
                // Start all that may start.
                while running.len() < workers {
                    let cands: Vec<Candidate> = running.iter().map(|&i| ev[i]).collect();
                    let mut picker = Picker::new(&cands);
                    let mut pick = None;
                    for (k, &i) in untaken.iter().enumerate() {
                        match picker.consider(ev[i]) {
                            Verdict::Start => { pick = Some(k); break; }
                            Verdict::Blocked(_) => {}
                            Verdict::Stop => break,
                        }
                    }
                    let Some(k) = pick else {
                        prop_assert!(!running.is_empty(), "nothing runs and nothing may start");
                        break;
                    };
                    let i = untaken.remove(k);
                    // Every earlier related event has finished; exclusive: everything earlier.
                    for j in 0..i {
                        if ev[i].exclusive || ev[j].exclusive || related(ev[j].devpath, ev[i].devpath) {
                            prop_assert!(finished[j], "{i} started before earlier {j} finished");
                        }
                    }
                    for &r in &running {
                        prop_assert!(!related(ev[r].devpath, ev[i].devpath), "{r} and {i} overlap");
                        prop_assert!(!ev[r].exclusive && !ev[i].exclusive, "exclusive not alone");
                    }
                    started[i] = true;
                    running.push(i);
                }
                prop_assert!(running.len() <= workers);
                // Finish one running event, chosen at random.
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if !running.is_empty() {
                    let r = running.swap_remove((x % running.len() as u64) as usize);
                    finished[r] = true;
                }
            }
            prop_assert!(started.iter().all(|&s| s) && finished.iter().all(|&f| f));
        }

        /// With unrelated events and enough workers, as many run at once as there are
        /// lanes: the picker does not serialize what it need not.
        #[test]
        fn unrelated_events_fill_every_lane(n in 1usize..20, workers in 1usize..6) {
            let paths: Vec<String> = (0..n).map(|i| format!("/devices/d{i}")).collect();
            let mut running: Vec<Candidate> = Vec::new();
            for p in &paths {
                if running.len() == workers { break; }
                let cands = running.clone();
                let mut picker = Picker::new(&cands);
                prop_assert_eq!(picker.consider(c(p)), Verdict::Start);
                running.push(c(p));
            }
            prop_assert_eq!(running.len(), n.min(workers));
        }
    }
}
