//! The control protocol over `RUNTIME/control`, a Unix stream socket (mode 0600): the
//! request and reply format, the socket's creation and peer check, and the client half
//! that `hotplugctl` uses. The daemon's half (what each request does) lives in `daemon`.
//!
//! Line-based, so `socat - UNIX-CONNECT:/run/hotplugd/control` is a usable client:
//!
//! ```text
//! client:  COMMAND [ARG...]\n             one request per connection
//!          (for `inject` only: KEY=VALUE\n ... then an empty line)
//! daemon:  reply line\n ...              zero or more data lines
//!          %ok [TEXT]\n  |  %error TEXT\n  the end marker, then the daemon closes
//! ```
//!
//! Data lines never start with `%` (a leading `%` is doubled), so the end marker cannot be
//! faked by data. Event values are escaped: bytes outside printable ASCII, and `\`, are
//! written `\xNN`. Requests: `status`, `pending [json]`, `monitor [env] [handled] [subsystem=S]...`,
//! `settle [SEQNUM]`, `reload`, `recall SEQNUM`, `pause`, `resume`, `log-level LEVEL`,
//! `inject`, `wait-tag UUID COUNT`, `wait-device DEVPATH`, `timeline`. Replies per command are in hotplugctl(8).
//!
//! Every connection is checked with `SO_PEERCRED`: only uid 0 and the daemon's own uid may
//! talk to it; anyone else gets `%error permission denied` and the attempt is logged.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client must send its request within this long, or it is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Create the control socket at `path`, mode 0600. A stale socket left by a killed daemon
/// is replaced (the runtime dir lock says no other daemon runs); anything else is refused.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(io::Error::other(format!(
                    "{}: exists and is not a socket; refusing it",
                    path.display()
                )));
            }
            if meta.uid() != nix::unistd::geteuid().as_raw() {
                return Err(io::Error::other(format!(
                    "{}: owned by uid {}; refusing it",
                    path.display(),
                    meta.uid()
                )));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The uid of the peer, if the kernel will say.
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let cred = getsockopt(&stream.as_fd(), PeerCredentials).map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// Whether `uid` may steer a daemon running as `daemon_uid`.
pub fn allowed(uid: u32, daemon_uid: u32) -> bool {
    uid == 0 || uid == daemon_uid
}

/// Escape bytes for a reply or request line: printable ASCII but `\` stays, the rest is
/// `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escape`] for a space-separated field: spaces are escaped too.
pub fn escape_word(bytes: &[u8]) -> String {
    escape(bytes).replace(' ', "\\x20")
}

/// Undo [`escape`]; None for a malformed escape.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 4)?).ok()?;
            let h = hex.strip_prefix('x')?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A data line as sent: a leading `%` doubled so it cannot pose as the end marker.
pub fn data_line(line: &str) -> String {
    if line.starts_with('%') {
        format!("%{line}\n")
    } else {
        format!("{line}\n")
    }
}

/// A parsed request.
#[derive(Debug)]
pub enum Request {
    Status,
    /// `json`: the reply is one line, [`crate::status::Pending`] as JSON.
    Pending {
        json: bool,
    },
    Monitor(MonitorOpts),
    Settle(Option<u64>),
    Reload,
    Recall(u64),
    Pause,
    Resume,
    LogLevel(log::LevelFilter),
    /// A synthetic event (`hotplugctl trigger --synthesize`).
    Inject(crate::event::Event),
    /// The record of handler runs and gap waits.
    Timeline,
    /// Wait until `count` events tagged `SYNTH_UUID=tag` have been handled.
    WaitTag {
        tag: String,
        count: u64,
    },
    /// Wait until no event for this DEVPATH is queued, waiting or running.
    WaitDevice(Vec<u8>),
}

/// What a monitor wants to see.
#[derive(Debug, Clone, Default)]
pub struct MonitorOpts {
    pub env: bool,
    pub handled: bool,
    pub subsystems: Vec<String>,
}

impl MonitorOpts {
    pub fn wants(&self, subsystem: &[u8]) -> bool {
        self.subsystems.is_empty() || self.subsystems.iter().any(|s| s.as_bytes() == subsystem)
    }
}

/// Parse a request line; `body` yields the following lines (for `inject`).
pub fn parse_request(
    line: &str,
    mut body: impl FnMut() -> Option<String>,
) -> Result<Request, String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().ok_or("empty request")?;
    let args: Vec<&str> = words.collect();
    let no_args = |r: Request| {
        if args.is_empty() {
            Ok(r)
        } else {
            Err(format!("{cmd} takes no arguments"))
        }
    };
    let seqnum = |s: &str| {
        crate::event::parse_seqnum(s.as_bytes()).ok_or_else(|| format!("bad SEQNUM {s:?}"))
    };
    match cmd {
        "status" => no_args(Request::Status),
        "pending" => match args[..] {
            [] => Ok(Request::Pending { json: false }),
            ["json"] => Ok(Request::Pending { json: true }),
            _ => Err("usage: pending [json]".into()),
        },
        "timeline" => no_args(Request::Timeline),
        "reload" => no_args(Request::Reload),
        "pause" => no_args(Request::Pause),
        "resume" => no_args(Request::Resume),
        "settle" => match args[..] {
            [] => Ok(Request::Settle(None)),
            [s] => Ok(Request::Settle(Some(seqnum(s)?))),
            _ => Err("usage: settle [SEQNUM]".into()),
        },
        "recall" => match args[..] {
            [s] => Ok(Request::Recall(seqnum(s)?)),
            _ => Err("usage: recall SEQNUM".into()),
        },
        "log-level" => match args[..] {
            [l] => l
                .parse()
                .map(Request::LogLevel)
                .map_err(|_| format!("unknown log level {l:?}")),
            _ => Err("usage: log-level LEVEL".into()),
        },
        "wait-tag" => match args[..] {
            [tag, n] => Ok(Request::WaitTag {
                tag: tag.to_owned(),
                count: n.parse().map_err(|_| format!("bad count {n:?}"))?,
            }),
            _ => Err("usage: wait-tag UUID COUNT".into()),
        },
        "wait-device" => match args[..] {
            [p] => {
                Ok(Request::WaitDevice(unescape(p).ok_or_else(|| {
                    format!("wait-device: bad escape in {p:?}")
                })?))
            }
            _ => Err("usage: wait-device DEVPATH".into()),
        },
        "monitor" => {
            let mut opts = MonitorOpts::default();
            for a in args {
                match a {
                    "env" => opts.env = true,
                    "handled" => opts.handled = true,
                    _ => match a.strip_prefix("subsystem=") {
                        Some(s) => opts.subsystems.push(s.to_owned()),
                        None => return Err(format!("monitor: unknown argument {a:?}")),
                    },
                }
            }
            Ok(Request::Monitor(opts))
        }
        "inject" => {
            let mut vars: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            while let Some(line) = body() {
                if line.is_empty() {
                    break;
                }
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| format!("inject: {line:?} is not KEY=VALUE"))?;
                let v = unescape(v).ok_or_else(|| format!("inject: bad escape in {line:?}"))?;
                vars.push((k.as_bytes().to_vec(), v));
            }
            let sub = vars
                .iter()
                .find(|(k, _)| k == b"SUBSYSTEM")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            crate::event::Event::from_vars(&sub, vars.iter().map(|(k, v)| (&k[..], &v[..])))
                .map(Request::Inject)
                .map_err(|e| format!("inject: {e}"))
        }
        _ => Err(format!("unknown command {cmd:?}")),
    }
}

/// What the daemon's owner thread sends a connection.
#[derive(Debug)]
pub enum Reply {
    Lines(Vec<String>),
    /// This connection is monitor `id`: say `MonitorReady(id)` after writing each batch.
    Monitor(u64),
    End(End),
}

/// What a connection sends the owner thread.
#[derive(Debug)]
pub enum ToOwner {
    Request(Request, crossbeam_channel::Sender<Reply>),
    /// The monitor wrote its last batch and can take more.
    MonitorReady(u64),
    /// The monitor's client went away.
    MonitorGone(u64),
}

/// Accept connections forever, each on its own thread, so a silent or slow client never
/// holds up another or the queue.
pub fn spawn_server(
    listener: UnixListener,
    tx: crossbeam_channel::Sender<ToOwner>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let me = nix::unistd::geteuid().as_raw();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("client".into())
                    .spawn(move || serve_connection(stream, me, tx));
                if let Err(e) = spawned {
                    log::warn!("control: cannot start a client thread: {e}");
                }
            }
        })
}

fn serve_connection(stream: UnixStream, me: u32, tx: crossbeam_channel::Sender<ToOwner>) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let uid = peer_uid(&stream).unwrap_or(u32::MAX);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    // A client that stops reading must not keep its thread forever; the queue never
    // waits on it anyway (monitors are dropped when they fall behind).
    let _ = out.set_write_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(io::Read::take(stream, MAX_REQUEST as u64));
    let mut read_line = || {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with('\n') => {
                Some(line.trim_end_matches(['\n', '\r']).to_owned())
            }
            _ => None,
        }
    };
    // Read the request before answering even a refusal: closing with unread input makes
    // the kernel reset the connection, and the client would never see why.
    let Some(line) = read_line() else { return };
    if !allowed(uid, me) {
        log::warn!("control: refused a request from uid {uid}: permission denied");
        let _ = out.write_all(b"%error permission denied\n");
        return;
    }
    let request = match parse_request(&line, &mut read_line) {
        Ok(r) => r,
        Err(e) => {
            let _ = out.write_all(format!("%error {e}\n").as_bytes());
            return;
        }
    };
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    if tx.send(ToOwner::Request(request, reply_tx)).is_err() {
        let _ = out.write_all(b"%error daemon stopping\n");
        return;
    }
    let mut monitor = None;
    loop {
        let reply = match reply_rx.recv() {
            Ok(r) => r,
            Err(_) => {
                let _ = out.write_all(b"%error daemon stopping\n");
                return;
            }
        };
        let written = match reply {
            Reply::Monitor(id) => {
                monitor = Some(id);
                Ok(())
            }
            Reply::Lines(lines) => {
                let text: String = lines.iter().map(|l| data_line(l)).collect();
                out.write_all(text.as_bytes())
            }
            Reply::End(end) => {
                let marker = match end {
                    End::Ok(t) if t.is_empty() => "%ok\n".to_owned(),
                    End::Ok(t) => format!("%ok {t}\n"),
                    End::Error(t) => format!("%error {t}\n"),
                };
                let _ = out.write_all(marker.as_bytes());
                if let Some(id) = monitor {
                    let _ = tx.send(ToOwner::MonitorGone(id));
                }
                return;
            }
        };
        match (written, monitor) {
            (Err(_), Some(id)) => {
                let _ = tx.send(ToOwner::MonitorGone(id));
                return;
            }
            (Err(_), None) => return,
            (Ok(()), Some(id)) => {
                let _ = tx.send(ToOwner::MonitorReady(id));
            }
            (Ok(()), None) => {}
        }
    }
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Ok(String),
    Error(String),
}

/// Why the client could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon not running at {0}")]
    NotRunning(PathBuf),
    #[error("{0}: permission denied")]
    Denied(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: the daemon closed the connection without an end marker")]
    Truncated(PathBuf),
}

/// One request's connection, client side.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connect to `RUNTIME/control` and send `request` (already a full request, with its
    /// trailing newline or body).
    pub fn request(runtime_dir: &Path, request: &str) -> Result<Client, ClientError> {
        let path = runtime_dir.join(crate::spool::CONTROL);
        let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.clone())
            }
            io::ErrorKind::PermissionDenied => ClientError::Denied(path.clone()),
            _ => ClientError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        stream
            .write_all(request.as_bytes())
            .map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Client {
            path,
            reader: BufReader::new(stream),
        })
    }

    pub fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(t);
    }

    /// The next reply line: `Ok(Ok(line))` for data, `Ok(Err(end))` at the end marker.
    pub fn next_line(&mut self) -> Result<Result<String, End>, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Truncated(self.path.clone()));
        }
        let line = line.trim_end_matches('\n');
        if let Some(rest) = line.strip_prefix("%%") {
            return Ok(Ok(format!("%{rest}")));
        }
        if let Some(rest) = line.strip_prefix("%ok") {
            return Ok(Err(End::Ok(rest.trim_start().to_owned())));
        }
        if let Some(rest) = line.strip_prefix("%error") {
            let text = rest.trim_start().to_owned();
            if text == "permission denied" {
                return Err(ClientError::Denied(self.path.clone()));
            }
            return Ok(Err(End::Error(text)));
        }
        Ok(Ok(line.to_owned()))
    }

    /// Read the whole reply: its data lines and how it ended.
    pub fn finish(mut self) -> Result<(Vec<String>, End), ClientError> {
        let mut lines = Vec::new();
        loop {
            match self.next_line()? {
                Ok(line) => lines.push(line),
                Err(end) => return Ok((lines, end)),
            }
        }
    }
}

/// One-shot request: connect, send `line`, collect the reply.
pub fn call(runtime_dir: &Path, line: &str) -> Result<(Vec<String>, End), ClientError> {
    Client::request(runtime_dir, &format!("{line}\n"))?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trip() {
        let raw = b"a b\\c\n\xff%=x";
        let e = escape(raw);
        assert!(!e.contains('\n'));
        assert_eq!(unescape(&e).unwrap(), raw);
        assert_eq!(unescape("\\x4"), None);
        assert_eq!(unescape("\\q00"), None);
        assert_eq!(data_line("%ok"), "%%ok\n");
    }
}
