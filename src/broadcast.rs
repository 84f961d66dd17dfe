//! Rebroadcast (issue 17): each handled event sent again on `NETLINK_KOBJECT_UEVENT` to the
//! multicast groups of `[daemon] rebroadcast`, as `mdevd -O MASK` does, so libudev-zero
//! (which listens on group 4) and its desktop clients learn of devices once their nodes,
//! links and handlers are in place.
//!
//! The message is the kernel's own format, `ACTION@DEVPATH\0KEY=VALUE\0...`: ACTION,
//! DEVPATH and SUBSYSTEM first, then every other variable of the event in its order (the
//! kernel's and any merged into it), then SEQNUM last, as the kernel orders them. Each of
//! the four appears exactly once, as libudev-zero drops a message otherwise. An event
//! without a kernel SEQNUM (injected, `trigger --synthesize`) is sent with `SEQNUM=0`: the
//! kernel's count starts at 1, so 0 never names a real event and a client can tell a
//! synthesized one. `HOME` and `PATH`, which the kernel gives only its helper, are left out.
//!
//! Sending to a multicast group of this family needs `CAP_NET_ADMIN` (the kernel does not
//! let other users send uevents); without it every send fails with `EPERM` and the error
//! says so.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::config::DaemonConfig;
use crate::event::Event;
use crate::sources::RateLimit;

/// Variables the kernel gives its helper but not its netlink broadcast.
const HELPER_ONLY: [&[u8]; 2] = [b"HOME", b"PATH"];

/// The SEQNUM sent for an event that has none.
pub const SYNTHESIZED_SEQNUM: u64 = 0;

/// Why a rebroadcast failed.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("rebroadcast: cannot open a NETLINK_KOBJECT_UEVENT socket: {0}")]
    Open(io::Error),
    #[error(
        "rebroadcast to netlink group mask {mask}: {errno}; sending uevents to a netlink \
         multicast group needs CAP_NET_ADMIN"
    )]
    NotPermitted { mask: u32, errno: Errno },
    #[error("rebroadcast to netlink group mask {mask}: {errno}")]
    Send { mask: u32, errno: Errno },
}

/// Encode `ev` as the kernel would have broadcast it, into `out` (cleared first).
pub fn encode(ev: &Event, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(ev.action());
    out.push(b'@');
    out.extend_from_slice(ev.devpath());
    out.push(0);
    let mut var = |k: &[u8], v: &[u8]| {
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(0);
    };
    var(b"ACTION", ev.action());
    var(b"DEVPATH", ev.devpath());
    var(b"SUBSYSTEM", ev.subsystem());
    for (k, v) in ev.vars() {
        match k {
            b"ACTION" | b"DEVPATH" | b"SUBSYSTEM" | b"SEQNUM" => {}
            _ if HELPER_ONLY.contains(&k) => {}
            _ => var(k, v),
        }
    }
    let seq = ev.seqnum().unwrap_or(SYNTHESIZED_SEQNUM).to_string();
    var(b"SEQNUM", seq.as_bytes());
}

/// A send-only uevent socket.
pub struct Broadcaster {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Broadcaster {
    pub fn open() -> Result<Broadcaster, BroadcastError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(|e| BroadcastError::Open(e.into()))?;
        // Bound to no group: this socket only sends, and must not fill with the kernel's
        // own events.
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| BroadcastError::Open(e.into()))?;
        Ok(Broadcaster {
            fd,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send `ev` once to the groups of `mask`. Blocking: a multicast send never waits on a listener (a full
    /// receiver loses the message, as it would lose the kernel's).
    pub fn send(&mut self, ev: &Event, mask: u32) -> Result<(), BroadcastError> {
        encode(ev, &mut self.buf);
        let to = NetlinkAddr::new(0, mask);
        match sendto(self.fd.as_raw_fd(), &self.buf, &to, MsgFlags::empty()) {
            Ok(_) => Ok(()),
            // No listener in any group of the mask: nothing was lost.
            Err(Errno::ECONNREFUSED) | Err(Errno::ESRCH) => Ok(()),
            Err(errno @ Errno::EPERM) => Err(BroadcastError::NotPermitted { mask, errno }),
            Err(errno) => Err(BroadcastError::Send { mask, errno }),
        }
    }
}

/// The owner's side: the socket, opened at the first send (a reload may switch
/// rebroadcast on), and the limiter on its error lines.
pub struct Rebroadcast {
    sock: Option<Broadcaster>,
    warn: RateLimit,
}

impl Default for Rebroadcast {
    fn default() -> Self {
        Rebroadcast {
            sock: None,
            warn: RateLimit::new(3, std::time::Duration::from_secs(60)),
        }
    }
}

impl Rebroadcast {
    /// Whether `cfg` sends `ev` at all: rebroadcast on, and its subsystem listed (or
    /// none listed).
    pub fn wants(cfg: &DaemonConfig, ev: &Event) -> bool {
        cfg.rebroadcast != 0
            && (cfg.rebroadcast_subsystems.is_empty()
                || cfg
                    .rebroadcast_subsystems
                    .iter()
                    .any(|s| s.as_bytes() == ev.subsystem()))
    }

    /// Send `ev` if `cfg` wants it: `None` if not, else whether it went out. Failures
    /// are logged here, a few a minute.
    pub fn send(&mut self, cfg: &DaemonConfig, ev: &Event) -> Option<bool> {
        if !Self::wants(cfg, ev) {
            return None;
        }
        let sent = match &mut self.sock {
            Some(sock) => sock.send(ev, cfg.rebroadcast),
            None => Broadcaster::open().and_then(|sock| {
                let sock = self.sock.insert(sock);
                sock.send(ev, cfg.rebroadcast)
            }),
        };
        match sent {
            Ok(()) => {
                log::debug!(
                    "{}: rebroadcast to group mask {}",
                    ev.summary(),
                    cfg.rebroadcast
                );
                Some(true)
            }
            Err(e) => {
                if self.warn.allow("rebroadcast errors") {
                    log::error!("{}: {e}", ev.summary());
                }
                Some(false)
            }
        }
    }
}

// ---- The test listener ------------------------------------------------------------------

/// `hotplugd --listen-uevents MASK`: for the real-kernel suite, whose guest has no
/// listener on groups other than the kernel's. Not for users (`hotplugctl monitor` shows
/// the daemon's events).
pub const LISTEN_ARG: &str = "--listen-uevents";

/// One `KEY=VALUE` of a message.
pub type Var<'a> = (&'a [u8], &'a [u8]);

/// The properties of a rebroadcast as a libudev-zero client sees them, or `None` for a
/// message it would drop: no `ACTION@DEVPATH` header, a variable without `=`, ACTION,
/// DEVPATH, SUBSYSTEM or SEQNUM missing or repeated, a header that disagrees with them, a
/// SEQNUM that is not a number.
pub fn parse_strict(msg: &[u8]) -> Option<(u64, Vec<Var<'_>>)> {
    let body = msg.strip_suffix(b"\0")?;
    let mut parts = body.split(|&b| b == 0);
    let header = parts.next()?;
    let at = header.iter().position(|&b| b == b'@')?;
    let mut vars = Vec::new();
    let mut seen = [0u8; 4];
    for var in parts {
        let eq = var.iter().position(|&b| b == b'=').filter(|&e| e > 0)?;
        let (k, v) = (&var[..eq], &var[eq + 1..]);
        if let Some(i) = [&b"ACTION"[..], b"DEVPATH", b"SUBSYSTEM", b"SEQNUM"]
            .iter()
            .position(|n| *n == k)
        {
            seen[i] += 1;
        }
        vars.push((k, v));
    }
    if seen != [1; 4] {
        return None;
    }
    let get = |key: &[u8]| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if get(b"ACTION")? != &header[..at] || get(b"DEVPATH")? != &header[at + 1..] {
        return None;
    }
    let seq = crate::event::parse_seqnum(get(b"SEQNUM")?)?;
    Some((seq, vars))
}

/// Listen on the groups of `mask` for good: one line per message to `out`, in one write
/// each, `rebroadcast SEQNUM ACTION DEVPATH SUBSYSTEM`, or `malformed N bytes`.
pub fn listen(mask: u32, out: &mut impl io::Write) -> io::Result<()> {
    use nix::sys::socket::recv;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, mask))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let line = match parse_strict(&buf[..n]) {
            Some((seq, vars)) => {
                let get = |key: &[u8]| {
                    let v = vars
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or(&b""[..], |kv| kv.1);
                    String::from_utf8_lossy(v).into_owned()
                };
                format!(
                    "rebroadcast {seq} {} {} {}\n",
                    get(b"ACTION"),
                    get(b"DEVPATH"),
                    get(b"SUBSYSTEM")
                )
            }
            None => format!("malformed {n} bytes\n"),
        };
        out.write_all(line.as_bytes())?;
        out.flush()?;
    }
}

// ---- end of the test listener -----------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(msg: &[u8]) -> Vec<String> {
        msg.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    #[test]
    fn kernel_format_each_key_once_seqnum_last_helper_vars_dropped() {
        let ev = Event::from_vars(
            b"block",
            [
                (&b"ACTION"[..], &b"add"[..]),
                (b"DEVPATH", b"/devices/x/sda"),
                (b"SUBSYSTEM", b"block"),
                (b"HOME", b"/"),
                (b"MAJOR", b"8"),
                (b"MINOR", b"0"),
                (b"DEVNAME", b"sda"),
                (b"PATH", b"/sbin"),
                (b"SEQNUM", b"42"),
                (b"ID_FS_UUID", b"abcd"),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        encode(&ev, &mut out);
        assert!(out.ends_with(b"\0"));
        assert_eq!(
            fields(&out),
            [
                "add@/devices/x/sda",
                "ACTION=add",
                "DEVPATH=/devices/x/sda",
                "SUBSYSTEM=block",
                "MAJOR=8",
                "MINOR=0",
                "DEVNAME=sda",
                "ID_FS_UUID=abcd",
                "SEQNUM=42"
            ]
        );
    }

    /// An `add` of `/devices/i` encoded: no SEQNUM, and its subsystem only in argv[1].
    fn unnumbered_input_add() -> Vec<u8> {
        let ev = Event::from_vars(
            b"input",
            [(&b"ACTION"[..], &b"add"[..]), (b"DEVPATH", b"/devices/i")],
        )
        .unwrap();
        let mut out = Vec::new();
        encode(&ev, &mut out);
        out
    }

    #[test]
    fn the_strict_parser_takes_ours_and_drops_what_libudev_zero_drops() {
        let out = unnumbered_input_add();
        assert_eq!(parse_strict(&out).map(|(s, v)| (s, v.len())), Some((0, 4)));
        for bad in [
            &b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=x\0"[..],
            b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=x\0SEQNUM=1\0SEQNUM=2\0",
            b"add@/e\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=x\0SEQNUM=1\0",
            b"add/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=x\0SEQNUM=1\0",
            b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=x\0SEQNUM=x\0",
            b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM\0SEQNUM=1\0",
            b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=x\0SEQNUM=1",
        ] {
            assert_eq!(
                parse_strict(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn no_seqnum_is_sent_as_zero_and_the_subsystem_comes_from_arg1() {
        let out = unnumbered_input_add();
        assert_eq!(
            fields(&out),
            [
                "add@/devices/i",
                "ACTION=add",
                "DEVPATH=/devices/i",
                "SUBSYSTEM=input",
                "SEQNUM=0"
            ]
        );
    }
}
