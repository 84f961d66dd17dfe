//! Who holds each link under `dev_dir`, when several devices claim the same one: pure
//! bookkeeping, no I/O. The rule: the claim of highest `link_priority` holds the link; among
//! equal priorities the first claimant keeps it. A claim never takes a link from a holder
//! of equal or higher priority, however often its device sends `change`, so two devices
//! never take turns (udev's last-writer-wins flapping). When the holder goes, the best
//! remaining claim takes over.
//!
//! The table lives in memory only. After a restart it starts empty and is rebuilt by the
//! events that follow (a coldplug, `hotplugctl trigger`, replays every device in order).

use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Claim {
    device: Box<[u8]>,
    target: Box<[u8]>,
    priority: i32,
    /// When the device first claimed this link: smaller is earlier.
    order: u64,
}

/// What the file system should show after a claim or a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The link should point at `target` (a node path relative to `dev_dir`).
    Point { link: Box<[u8]>, target: Box<[u8]> },
    /// Nobody claims the link any more: delete it if it still points at `target`.
    Remove { link: Box<[u8]>, target: Box<[u8]> },
}

/// Claims per link and links per device.
#[derive(Debug, Default)]
pub struct Links {
    by_link: HashMap<Box<[u8]>, Vec<Claim>>,
    by_device: HashMap<Box<[u8]>, Vec<Box<[u8]>>>,
    next_order: u64,
}

fn holder(claims: &[Claim]) -> Option<&Claim> {
    // Highest priority; among equals the smallest order (the first claimant).
    claims
        .iter()
        .max_by(|a, b| a.priority.cmp(&b.priority).then(b.order.cmp(&a.order)))
}

/// A holder as (device, target), to tell whether it changed.
type HolderKey = (Box<[u8]>, Box<[u8]>);

fn key(c: Option<&Claim>) -> Option<HolderKey> {
    c.map(|c| (c.device.clone(), c.target.clone()))
}

impl Links {
    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// The links `device` holds now (claimed, and not lost to a higher claim), for the
    /// device database.
    pub fn held_by<'a>(&'a self, device: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.by_device
            .get(device)
            .into_iter()
            .flatten()
            .filter(move |l| {
                self.by_link
                    .get(&l[..])
                    .and_then(|c| holder(c))
                    .is_some_and(|h| &h.device[..] == device)
            })
            .map(|l| &l[..])
    }

    /// The device `device` (its DEVPATH), whose node is `target`, now claims exactly
    /// `links` (link path, priority): links it claimed before and not now are released.
    /// Returns a change for every link whose holder changed, and a `Point` for every
    /// link this device holds (so a link deleted behind our back comes back).
    pub fn claim(&mut self, device: &[u8], target: &[u8], links: &[(Vec<u8>, i32)]) -> Vec<Change> {
        let mut changes = Vec::new();
        let old: Vec<Box<[u8]>> = self.by_device.remove(device).unwrap_or_default();
        for link in old
            .iter()
            .filter(|l| !links.iter().any(|(n, _)| n[..] == l[..]))
        {
            self.drop_claim(link, device, &mut changes);
        }
        let mut now: Vec<Box<[u8]>> = Vec::with_capacity(links.len());
        for (link, priority) in links {
            if now.iter().any(|l| l[..] == link[..]) {
                continue;
            }
            let claims = self.by_link.entry(link[..].into()).or_default();
            let before = key(holder(claims));
            match claims.iter_mut().find(|c| &c.device[..] == device) {
                Some(c) => {
                    c.priority = *priority;
                    c.target = target.into();
                }
                None => {
                    claims.push(Claim {
                        device: device.into(),
                        target: target.into(),
                        priority: *priority,
                        order: self.next_order,
                    });
                    self.next_order += 1;
                }
            }
            let after = holder(claims).expect("just claimed");
            if &after.device[..] == device || before != key(Some(after)) {
                changes.push(Change::Point {
                    link: link[..].into(),
                    target: after.target.clone(),
                });
            }
            now.push(link[..].into());
        }
        if !now.is_empty() {
            self.by_device.insert(device.into(), now);
        }
        changes
    }

    /// The device is gone: every link it claimed is released.
    pub fn release(&mut self, device: &[u8]) -> Vec<Change> {
        let mut changes = Vec::new();
        for link in self.by_device.remove(device).unwrap_or_default() {
            self.drop_claim(&link, device, &mut changes);
        }
        changes
    }

    fn drop_claim(&mut self, link: &[u8], device: &[u8], changes: &mut Vec<Change>) {
        let Some(claims) = self.by_link.get_mut(link) else {
            return;
        };
        let before = holder(claims).cloned();
        claims.retain(|c| &c.device[..] != device);
        let after = holder(claims);
        match (before, after) {
            (Some(b), None) => changes.push(Change::Remove {
                link: link.into(),
                target: b.target,
            }),
            (Some(b), Some(a)) if b.device != a.device => changes.push(Change::Point {
                link: link.into(),
                target: a.target.clone(),
            }),
            _ => {}
        }
        if claims.is_empty() {
            self.by_link.remove(link);
        }
    }

    /// The device holding `link` now, if any.
    pub fn holder(&self, link: &[u8]) -> Option<&[u8]> {
        self.by_link
            .get(link)
            .and_then(|c| holder(c))
            .map(|c| &c.device[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn l(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn point(link: &str, target: &str) -> Change {
        Change::Point {
            link: link.as_bytes().into(),
            target: target.as_bytes().into(),
        }
    }

    #[test]
    fn first_holder_keeps_an_equal_priority_link() {
        let mut t = Links::default();
        assert_eq!(t.claim(b"/a", b"sda", &[(l("x"), 0)]), [point("x", "sda")]);
        // The second claimant of equal priority changes nothing, however often it asks.
        for _ in 0..3 {
            assert_eq!(t.claim(b"/b", b"sdb", &[(l("x"), 0)]), []);
            assert_eq!(t.claim(b"/a", b"sda", &[(l("x"), 0)]), [point("x", "sda")]);
        }
        assert_eq!(t.holder(b"x"), Some(&b"/a"[..]));
        // The holder goes: the waiting claimant takes it.
        assert_eq!(t.release(b"/a"), [point("x", "sdb")]);
        assert_eq!(
            t.release(b"/b"),
            [Change::Remove {
                link: b"x"[..].into(),
                target: b"sdb"[..].into()
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn higher_priority_takes_over_and_gives_back() {
        let mut t = Links::default();
        t.claim(b"/a", b"sda", &[(l("x"), 0)]);
        assert_eq!(t.claim(b"/b", b"sdb", &[(l("x"), 10)]), [point("x", "sdb")]);
        assert_eq!(t.release(b"/b"), [point("x", "sda")]);
        // A change that no longer claims the link releases it.
        assert_eq!(
            t.claim(b"/a", b"sda", &[]),
            [Change::Remove {
                link: b"x"[..].into(),
                target: b"sda"[..].into()
            }]
        );
        assert!(t.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim(u8, Vec<(u8, i8)>),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, prop::collection::vec((0..3u8, -1..2i8), 0..3))
                .prop_map(|(d, ls)| Op::Claim(d, ls)),
            (0..4u8).prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Applying the changes keeps the "file system" equal to the model's holders:
        /// highest priority, then first claim; a repeated claim changes no holder.
        #[test]
        fn changes_track_the_rule(ops in prop::collection::vec(op(), 0..40)) {
            let mut t = Links::default();
            let mut fs: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            // Model: per link, (device, priority, first-claim time).
            let mut model: HashMap<u8, Vec<(u8, i8, usize)>> = HashMap::new();
            for (time, op) in ops.iter().enumerate() {
                let (dev, links) = match op {
                    Op::Claim(d, ls) => (*d, ls.clone()),
                    Op::Release(d) => (*d, Vec::new()),
                };
                let before: HashMap<u8, Option<u8>> = (0..3u8)
                    .map(|k| (k, t.holder(&[b'L', k]).map(|d| d[0])))
                    .collect();
                let mut claimed: Vec<(Vec<u8>, i32)> = Vec::new();
                for (k, p) in &links {
                    if !claimed.iter().any(|(n, _)| n == &[b'L', *k]) {
                        claimed.push((vec![b'L', *k], i32::from(*p)));
                    }
                }
                for k in 0..3u8 {
                    let claims = model.entry(k).or_default();
                    match claimed.iter().find(|(n, _)| n[1] == k) {
                        Some((_, p)) => match claims.iter_mut().find(|c| c.0 == dev) {
                            Some(c) => c.1 = *p as i8,
                            None => claims.push((dev, *p as i8, time)),
                        },
                        None => claims.retain(|c| c.0 != dev),
                    }
                }
                let changes = match op {
                    Op::Claim(..) => t.claim(&[dev], &[b'n', dev], &claimed),
                    Op::Release(_) => t.release(&[dev]),
                };
                for c in changes {
                    match c {
                        Change::Point { link, target } => { fs.insert(link.into(), target.into()); }
                        Change::Remove { link, target } => {
                            prop_assert_eq!(fs.remove(&link[..]), Some(target.to_vec()));
                        }
                    }
                }
                for k in 0..3u8 {
                    let want = model[&k]
                        .iter()
                        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
                        .map(|c| c.0);
                    prop_assert_eq!(t.holder(&[b'L', k]).map(|d| d[0]), want);
                    prop_assert_eq!(fs.get(&[b'L', k][..]).map(|t| t[1]), want);
                    // No flapping: a claim moves a link only to the claimant or, when
                    // the claimant gave it up or lowered itself, to the next in line.
                    if let (Some(Some(b)), Some(a)) = (before.get(&k), want) {
                        if *b != a {
                            prop_assert!(a == dev || *b == dev);
                        }
                    }
                }
            }
        }
    }
}
