//! The kernel's uevent broadcast: a `NETLINK_KOBJECT_UEVENT` socket in multicast group 1,
//! for kernels built without `CONFIG_UEVENT_HELPER` (most distro kernels) or as a second
//! source beside the helper. With both, the queue keeps the first copy of each SEQNUM and
//! drops the other as a duplicate, so every event is handled once.
//!
//! A kernel datagram is `ACTION@DEVPATH\0KEY=VALUE\0...`. It becomes the payload the shim
//! would have sent for the same event (`SUBSYSTEM\0KEY=VALUE\0...`) plus the `HOME` and
//! `PATH` the kernel gives its helper, so handlers see the same environment from either
//! source.
//!
//! Only the kernel is believed: the sender's port id must be 0 and its `SCM_CREDENTIALS`
//! uid 0. That also drops libudev's rebroadcasts (group 2, sent by udevd from user space,
//! starting with `libudev\0`).
//!
//! The receive buffer is set with `SO_RCVBUFFORCE` (plain `SO_RCVBUF` is clamped by
//! `net.core.rmem_max`). If it overflows anyway (`ENOBUFS`), the lost events are gone from
//! the kernel: the reader logs how many SEQNUMs it missed once the next event shows, and
//! rescans `/sys`, queueing an `add` for every device present, as `mdev -s` does. Events
//! for devices that went away in the loss cannot be recovered that way and are logged.
//!
//! The kernel keeps no copy of a datagram once it is read, so the reader appends each event
//! to the crash journal as it reads it, on this thread, before it waits in the channel for
//! the queue's owner: a kill meanwhile finds it there at the next start.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::event::{find_byte, Event, EventError};
use crate::journal::Appender;
use crate::sources::{Input, RateLimit};
use crate::sysfs;

/// The multicast group the kernel sends uevents to (udev's rebroadcasts use group 2).
const KERNEL_GROUP: u32 = 1;

/// Default receive buffer (`netlink_buffer`): a storm of ~50,000 events fits. Memory is
/// only taken while datagrams wait in it.
pub const RCVBUF: usize = 128 << 20;

/// The kernel's uevent is at most 2048 bytes of variables (`UEVENT_BUFFER_SIZE`) plus the
/// `ACTION@DEVPATH` header; anything longer arrives truncated and is dropped.
const DATAGRAM_MAX: usize = 8192;

/// What the kernel adds to its helper's environment (`kobject_uevent_env`) but not to the
/// netlink datagram.
const HELPER_VARS: [(&[u8], &[u8]); 2] =
    [(b"HOME", b"/"), (b"PATH", b"/sbin:/bin:/usr/sbin:/usr/bin")];

/// Why a datagram is not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    #[error("not from the kernel (port id {0})")]
    NotKernel(u32),
    #[error("no credentials, or not uid 0")]
    NotRoot,
    #[error("a libudev rebroadcast")]
    Libudev,
    #[error("no ACTION@DEVPATH header")]
    NoHeader,
    #[error("truncated: longer than {DATAGRAM_MAX} bytes")]
    Truncated,
    #[error(transparent)]
    Event(#[from] EventError),
}

/// Open the socket, subscribed to the kernel's uevents, non-blocking, with a receive
/// buffer of `rcvbuf` bytes.
pub fn open(rcvbuf: usize) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    // Credentials on every datagram, so the sender can be checked.
    setsockopt(&fd, sockopt::PassCred, &true)?;
    if let Err(e) = setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf) {
        // Without CAP_NET_ADMIN: what rmem_max allows.
        log::warn!(
            "netlink: SO_RCVBUFFORCE {rcvbuf}: {e}; falling back to SO_RCVBUF (capped by \
             net.core.rmem_max), so a storm may overflow it"
        );
        setsockopt(&fd, sockopt::RcvBuf, &rcvbuf)?;
    }
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
    Ok(fd)
}

/// Turn one datagram into an event. `sender` is the source port id, `uid` the uid from
/// `SCM_CREDENTIALS` (None if there were none).
pub fn parse(data: &[u8], sender: u32, uid: Option<u32>) -> Result<Event, DatagramError> {
    if data.starts_with(b"libudev\0") {
        return Err(DatagramError::Libudev);
    }
    if sender != 0 {
        return Err(DatagramError::NotKernel(sender));
    }
    if uid != Some(0) {
        return Err(DatagramError::NotRoot);
    }
    let header_end = find_byte(data, 0).ok_or(DatagramError::NoHeader)?;
    if !data[..header_end].contains(&b'@') {
        return Err(DatagramError::NoHeader);
    }
    let vars = &data[header_end + 1..];
    let subsystem = vars
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"SUBSYSTEM="))
        .unwrap_or(b"");
    let mut payload = Vec::with_capacity(subsystem.len() + vars.len() + 64);
    payload.extend_from_slice(subsystem);
    payload.push(0);
    payload.extend_from_slice(vars);
    if !payload.ends_with(b"\0") {
        payload.push(0);
    }
    for (k, v) in HELPER_VARS {
        payload.extend_from_slice(k);
        payload.push(b'=');
        payload.extend_from_slice(v);
        payload.push(0);
    }
    Ok(Event::from_payload(&payload)?)
}

/// Start the reader thread. It journals each event with `journal` and sends
/// `Input::Netlink` batches; when `stop` becomes readable it exits.
pub fn spawn_reader(
    sock: OwnedFd,
    stop: OwnedFd,
    sysfs: PathBuf,
    journal: Appender,
    tx: Sender<Input>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("netlink".into())
        .spawn(move || {
            let mut reader = Reader {
                tx,
                sysfs,
                journal,
                journal_warn: RateLimit::new(3, Duration::from_secs(60)),
                warn: RateLimit::new(10, Duration::from_secs(10)),
                last_seq: None,
                lost: false,
            };
            reader.run(sock, stop)
        })
}

struct Reader {
    tx: Sender<Input>,
    journal: Appender,
    journal_warn: RateLimit,
    sysfs: PathBuf,
    warn: RateLimit,
    /// The last SEQNUM received, to count what an overflow cost.
    last_seq: Option<u64>,
    /// Set by ENOBUFS until the loss has been counted.
    lost: bool,
}

impl Reader {
    fn run(&mut self, sock: OwnedFd, stop: OwnedFd) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        loop {
            let mut fds = [
                PollFd::new(sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) if fds[1].any().unwrap_or(false) => return,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("netlink: poll: {e}; the netlink source stops");
                    return;
                }
            }
            let (batch, bad) = self.drain(&sock, &mut buf);
            if bad > 0 && self.tx.send(Input::Bad(bad)).is_err() {
                return;
            }
            if !batch.is_empty() && self.tx.send(Input::Netlink(batch)).is_err() {
                return;
            }
            // After the batch: the owner wipes a sealed segment none of whose events
            // it holds.
            for n in self.journal.take_sealed() {
                if self.tx.send(Input::Sealed(n)).is_err() {
                    return;
                }
            }
        }
    }

    /// Everything the socket holds now, as events, plus how many datagrams were refused.
    fn drain(&mut self, sock: &OwnedFd, buf: &mut [u8]) -> (Vec<Event>, u64) {
        let mut batch = Vec::new();
        let mut bad = 0;
        // After ENOBUFS the kernel drops every datagram for us until the queue is empty
        // again: drain it first, rescan after.
        let mut rescan_due = false;
        loop {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let got = recvmsg::<NetlinkAddr>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            );
            let msg = match got {
                Ok(msg) => msg,
                Err(Errno::EAGAIN) => {
                    if rescan_due {
                        self.rescan_into(&mut batch);
                    }
                    return (batch, bad);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    self.overflowed();
                    rescan_due = true;
                    continue;
                }
                Err(e) => {
                    log::error!("netlink: recvmsg: {e}");
                    if rescan_due {
                        self.rescan_into(&mut batch);
                    }
                    return (batch, bad);
                }
            };
            let sender = msg.address.map_or(u32::MAX, |a| a.pid());
            let uid = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(cred) => Some(cred.uid()),
                    _ => None,
                })
            });
            let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
            let len = msg.bytes;
            let data = &buf[..len];
            let parsed = if truncated {
                Err(DatagramError::Truncated)
            } else {
                parse(data, sender, uid)
            };
            match parsed {
                Ok(mut ev) => {
                    self.count_loss(&ev);
                    self.journal(&mut ev);
                    batch.push(ev);
                }
                // Rebroadcasts are expected on a udev system; not worth a line each.
                Err(DatagramError::Libudev) => {}
                Err(e) => {
                    bad += 1;
                    if self.warn.allow("netlink") {
                        let head = &data[..len.min(80)];
                        log::warn!(
                            "netlink: dropped a datagram: {e}: {:?}",
                            String::from_utf8_lossy(head)
                        );
                    }
                }
            }
        }
    }

    /// Into the journal, or a line saying why not: the event goes on unprotected.
    fn journal(&mut self, ev: &mut Event) {
        if let Err(e) = self.journal.append(ev) {
            if self.journal_warn.allow("netlink journal errors") {
                log::error!("netlink: journal: {e}; {} is not crash-safe", ev.summary());
            }
        }
    }

    fn rescan_into(&mut self, batch: &mut Vec<Event>) {
        for mut ev in rescan(&self.sysfs) {
            self.journal(&mut ev);
            batch.push(ev);
        }
    }

    /// The kernel dropped datagrams for us; a rescan of what exists now follows.
    fn overflowed(&mut self) {
        log::error!(
            "netlink: receive buffer overflowed (ENOBUFS) after SEQNUM {}: events were lost; \
             rescanning {} to queue an add for every device present",
            self.last_seq.map_or("-".into(), |s| s.to_string()),
            self.sysfs.display()
        );
        self.lost = true;
    }

    /// After an overflow, the first jump in SEQNUMs is what it cost. (The kernel reports
    /// ENOBUFS before the datagrams that did fit, so the jump comes after those.)
    fn count_loss(&mut self, ev: &Event) {
        let Some(seq) = ev.seqnum() else { return };
        if self.lost {
            match self.last_seq {
                Some(b) if seq > b + 1 => {
                    self.lost = false;
                    log::error!(
                        "netlink: lost {} events in the overflow: SEQNUM {}..={}",
                        seq - b - 1,
                        b + 1,
                        seq - 1
                    );
                }
                None => {
                    self.lost = false;
                    log::error!("netlink: events before SEQNUM {seq} were lost in the overflow");
                }
                Some(_) => {}
            }
        }
        self.last_seq = Some(seq);
    }
}

/// An `add` for every device under `sysfs/devices`, built from its `uevent` file, without
/// a SEQNUM (so the queue runs them in this order, never waiting on a gap for them).
pub fn rescan(sysfs: &std::path::Path) -> Vec<Event> {
    let devices = match sysfs::devices(sysfs) {
        Ok(d) => d,
        Err(e) => {
            log::error!("netlink: rescan of {}: {e}", sysfs.display());
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(devices.len());
    for d in devices {
        let Ok(vars) = sysfs::device_vars(&d.dir) else {
            continue; // gone meanwhile
        };
        let subsystem = d.subsystem.as_deref().unwrap_or("");
        let mut fixed: Vec<(&[u8], &[u8])> = vec![
            (b"ACTION", b"add"),
            (b"DEVPATH", d.devpath.as_bytes()),
            (b"SUBSYSTEM", subsystem.as_bytes()),
        ];
        fixed.extend(vars.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        fixed.extend(HELPER_VARS);
        match Event::from_vars(subsystem.as_bytes(), fixed) {
            Ok(ev) => out.push(ev),
            Err(e) => log::warn!("netlink: rescan: {}: {e}", d.dir.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADD: &[u8] =
        b"add@/devices/virtual/net/d0\0ACTION=add\0DEVPATH=/devices/virtual/net/d0\0\
SUBSYSTEM=net\0INTERFACE=d0\0IFINDEX=3\0SEQNUM=812\0";

    #[test]
    fn kernel_datagram_becomes_the_helpers_event() {
        let ev = parse(ADD, 0, Some(0)).unwrap();
        assert_eq!(ev.seqnum(), Some(812));
        assert_eq!(ev.action(), b"add");
        assert_eq!(ev.devpath(), b"/devices/virtual/net/d0");
        assert_eq!(ev.subsystem(), b"net");
        assert_eq!(ev.arg1(), b"net");
        assert_eq!(ev.get(b"INTERFACE"), Some(&b"d0"[..]));
        assert_eq!(ev.get(b"PATH"), Some(&b"/sbin:/bin:/usr/sbin:/usr/bin"[..]));
        assert_eq!(ev.get(b"HOME"), Some(&b"/"[..]));
        // Byte for byte what the shim sends for the same event.
        let shim = b"net\0ACTION=add\0DEVPATH=/devices/virtual/net/d0\0SUBSYSTEM=net\0\
INTERFACE=d0\0IFINDEX=3\0SEQNUM=812\0HOME=/\0PATH=/sbin:/bin:/usr/sbin:/usr/bin\0";
        assert_eq!(ev.payload(), &shim[..]);
    }

    #[test]
    fn only_the_kernel_is_believed() {
        assert_eq!(
            parse(ADD, 4242, Some(0)),
            Err(DatagramError::NotKernel(4242))
        );
        assert_eq!(parse(ADD, 0, Some(1000)), Err(DatagramError::NotRoot));
        assert_eq!(parse(ADD, 0, None), Err(DatagramError::NotRoot));
        let mut udev = b"libudev\0\xfe\xed\xca\xfe".to_vec();
        udev.extend_from_slice(ADD);
        assert_eq!(parse(&udev, 0, Some(0)), Err(DatagramError::Libudev));
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        assert_eq!(parse(b"", 0, Some(0)), Err(DatagramError::NoHeader));
        assert_eq!(parse(b"add", 0, Some(0)), Err(DatagramError::NoHeader));
        assert_eq!(
            parse(b"nothing\0A=1\0", 0, Some(0)),
            Err(DatagramError::NoHeader)
        );
        assert!(matches!(
            parse(b"add@/x\0ACTION=add\0", 0, Some(0)),
            Err(DatagramError::Event(EventError::Missing("DEVPATH")))
        ));
        assert!(matches!(
            parse(b"add@/x\0ACTION=add\0DEVPATH=/x\0SEQNUM=x\0", 0, Some(0)),
            Err(DatagramError::Event(EventError::BadSeqnum(_)))
        ));
        // No trailing NUL on the last variable: still one whole variable.
        let ev = parse(b"add@/x\0ACTION=add\0DEVPATH=/x", 0, Some(0)).unwrap();
        assert_eq!(ev.devpath(), b"/x");
    }

    #[test]
    fn rescan_queues_an_add_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("devices/virtual/net/lo");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("uevent"), "INTERFACE=lo\nIFINDEX=1\n").unwrap();
        std::fs::create_dir_all(dir.path().join("class/net")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("class/net"), dev.join("subsystem")).unwrap();
        let evs = rescan(dir.path());
        assert_eq!(evs.len(), 1);
        let ev = &evs[0];
        assert_eq!(ev.action(), b"add");
        assert_eq!(ev.devpath(), b"/devices/virtual/net/lo");
        assert_eq!(ev.subsystem(), b"net");
        assert_eq!(ev.seqnum(), None);
        assert_eq!(ev.get(b"INTERFACE"), Some(&b"lo"[..]));
    }

    /// A kernel event read from the socket is in the journal before the owner takes it:
    /// here the owner never does, as if the daemon were killed first, and recovery finds
    /// it. Needs root (to write a `uevent` file and receive the kernel's broadcast).
    #[test]
    fn an_event_read_but_not_taken_is_recovered_from_the_journal() {
        let trigger = "/sys/class/net/lo/uevent";
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new(trigger).exists() {
            eprintln!("SKIPPED: needs root and {trigger}");
            return;
        }
        let rt = tempfile::tempdir().unwrap();
        let (journal, _) = crate::journal::Journal::open(rt.path()).unwrap();
        let sock = open(1 << 20).unwrap();
        let (stop_r, stop_w) = nix::unistd::pipe().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let reader = spawn_reader(sock, stop_r, "/sys".into(), journal.appender(), tx).unwrap();
        let tag = crate::sysfs::random_uuid().unwrap();
        std::fs::write(trigger, format!("change {tag}")).unwrap();
        let ours = |ev: &Event| ev.tag() == Some(tag.as_bytes());
        // Read and handed on, not taken.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        'wait: loop {
            match rx
                .recv_deadline(deadline)
                .expect("the kernel's event never came")
            {
                Input::Netlink(batch) if batch.iter().any(ours) => break 'wait,
                _ => {}
            }
        }
        nix::unistd::write(&stop_w, b"x").unwrap();
        reader.join().unwrap();
        drop(journal);
        let (_j, rec) = crate::journal::Journal::open(rt.path()).unwrap();
        let found: Vec<_> = rec.events.iter().filter(|e| ours(e)).collect();
        assert_eq!(found.len(), 1, "{:?}", rec.events);
        assert_eq!(found[0].devpath(), b"/devices/virtual/net/lo");
    }
}
