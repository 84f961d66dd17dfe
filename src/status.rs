//! What the daemon reports about itself, typed once for both ends of the control socket:
//! the daemon fills these structs, the protocol carries them as text, and `hotplugctl`
//! reads them back into the same structs before printing them or serializing them as JSON.
//! So a field's JSON type comes from its Rust type, never from what its text looks like:
//! a rule named `nan`, `007` or `yes` is a string.

use serde::{Deserialize, Serialize};

use crate::control::{escape, unescape};
use crate::event::Event;

/// How a status field is written on its `name value` line and read back.
pub trait Field: Sized {
    fn show(&self) -> String;
    fn read(text: &str) -> Option<Self>;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn show(&self) -> String {
                self.to_string()
            }
            fn read(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}
int_field!(u32, u64);

/// Milliseconds and seconds: a tenth is as fine as an admin reads them.
impl Field for f64 {
    fn show(&self) -> String {
        format!("{self:.1}")
    }
    fn read(text: &str) -> Option<Self> {
        text.parse().ok().filter(|v: &f64| v.is_finite())
    }
}

impl Field for bool {
    fn show(&self) -> String {
        if *self { "yes" } else { "no" }.to_owned()
    }
    fn read(text: &str) -> Option<Self> {
        match text {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        }
    }
}

/// Escaped like event values, so a name with spaces or newlines stays on its line; a
/// name that is exactly `-` is escaped too, so it cannot read back as "none".
impl Field for String {
    fn show(&self) -> String {
        match escape(self.as_bytes()) {
            dash if dash == "-" => "\\x2d".to_owned(),
            text => text,
        }
    }
    fn read(text: &str) -> Option<Self> {
        String::from_utf8(unescape(text)?).ok()
    }
}

/// `-` for none.
impl<T: Field> Field for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "-".to_owned(), T::show)
    }
    fn read(text: &str) -> Option<Self> {
        if text == "-" {
            Some(None)
        } else {
            T::read(text).map(Some)
        }
    }
}

/// Declares [`Status`] from one list, so a new field is one line here: its name, which is
/// also its protocol key and JSON key, and its type, which fixes both encodings.
macro_rules! status {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {
        /// The reply to `status`, in the order the fields are shown.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct Status {
            $($(#[$doc])* pub $name: $ty,)*
        }

        impl Status {
            /// The protocol's `name value` lines.
            pub fn lines(&self) -> Vec<String> {
                vec![$(format!("{} {}", stringify!($name), Field::show(&self.$name)),)*]
            }

            /// Read the lines back. A field this hotplugctl does not know (a newer
            /// daemon's) is skipped; a known field that does not parse is an error.
            pub fn parse(lines: &[String]) -> Result<Status, String> {
                let mut s = Status::default();
                for l in lines {
                    let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                    match k {
                        $(stringify!($name) => {
                            s.$name = Field::read(v)
                                .ok_or_else(|| format!("status: bad {k} value {v:?}"))?
                        })*
                        _ => {}
                    }
                }
                Ok(s)
            }
        }
    };
}

status! {
    pid: u32,
    uptime_s: f64,
    /// Who keeps the FIFO open across a crash: the holder's pid, `supervisor`, or `none`
    /// (the holder could not be started); null without a FIFO source.
    holder: Option<String>,
    queued: u64,
    queue_bytes: u64,
    queue_memory: u64,
    spilled: u64,
    waiting_for: Option<u64>,
    next_expected: Option<u64>,
    paused: bool,
    running_rule: Option<String>,
    running_seqnum: Option<u64>,
    running_for_ms: Option<f64>,
    /// Handlers that may run at once (`workers`), and events whose handlers run now.
    workers: u64,
    running: u64,
    /// The oldest event that waits for a running or older relative, and what for:
    /// `SEQNUM s (DEVPATH): waiting for SEQNUM n (DEVPATH)`. Only with `workers` > 1.
    blocked: Option<String>,
    /// Background handlers running now (`pending` lists them).
    background: u64,
    /// Background handlers that ended since the start.
    background_ended: u64,
    last_handled: Option<u64>,
    received: u64,
    spooled_in: u64,
    netlink_in: u64,
    handled: u64,
    failed: u64,
    timed_out: u64,
    recalled: u64,
    coalesced: u64,
    bad_messages: u64,
    duplicates: u64,
    late: u64,
    gaps_skipped: u64,
    monitor_overruns: u64,
    recovered: u64,
    monitors: u64,
    // Rebroadcast (issue 17).
    /// Handled events sent again on netlink (`[daemon] rebroadcast`), and those whose
    /// send failed (not tried again: the event is done).
    rebroadcast_sent: u64,
    rebroadcast_lost: u64,
    /// The sources open now, such as `fifo,netlink`.
    sources: String,
    /// What the kernel's helper setting names, and whether it is our shim.
    kernel_helper: String,
    /// Why no event may come (the FIFO alone, with no helper of ours), if so.
    warning: Option<String>,
}

/// Where a pending event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingState {
    /// Its handler runs now.
    Running,
    /// Released, in memory, next in line after the ones before it.
    Queued,
    /// Released and held in the journal; only its SEQNUM is at hand.
    Spilled,
    /// Held back behind a gap.
    Waiting,
    /// Done for the queue; a handler of its runs on in the background.
    Background,
}

/// One event not yet handled. Event values are in the protocol's escaped form
/// ([`crate::control::escape`]), so bytes that are not UTF-8 survive; a spilled event has
/// only its SEQNUM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub state: PendingState,
    pub seqnum: Option<u64>,
    pub action: Option<String>,
    pub devpath: Option<String>,
    pub subsystem: Option<String>,
    /// A running event's lane (with `workers` > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<u64>,
    /// A queued event held back by a running or older relative (with `workers` > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on: Option<PendingBlocker>,
}

/// The event another one waits for: its SEQNUM and DEVPATH (escaped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingBlocker {
    pub seqnum: Option<u64>,
    pub devpath: String,
}

impl PendingBlocker {
    pub fn of(ev: &Event) -> PendingBlocker {
        PendingBlocker {
            seqnum: ev.seqnum(),
            devpath: escape(ev.devpath()),
        }
    }
}

impl std::fmt::Display for PendingBlocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seqnum {
            Some(s) => write!(f, "waiting for SEQNUM {s} ({})", self.devpath),
            None => write!(f, "waiting for the event of {}", self.devpath),
        }
    }
}

impl PendingEvent {
    pub fn of(state: PendingState, ev: &Event) -> PendingEvent {
        PendingEvent {
            state,
            seqnum: ev.seqnum(),
            action: Some(escape(ev.action())),
            devpath: Some(escape(ev.devpath())),
            subsystem: Some(escape(ev.subsystem())),
            lane: None,
            waiting_on: None,
        }
    }
}

/// A background handler still running: its event, rule, pid (also its process group)
/// and how long it has run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingBackground {
    pub event: PendingEvent,
    pub rule: String,
    pub pid: u32,
    pub running_for_ms: f64,
}

/// The reply to `pending`, in the order the events will run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub events: Vec<PendingEvent>,
    /// The SEQNUM delivery is stalled on, if it is.
    pub waiting_for: Option<u64>,
    /// Background handlers running, oldest first; their events are no longer queued.
    #[serde(default)]
    pub background: Vec<PendingBackground>,
}

impl Pending {
    /// The human lines: first each background handler as `background SEQNUM ACTION
    /// DEVPATH (SUBSYSTEM): rule RULE, pid PID, N.N s`, then `[running ]SEQNUM ACTION
    /// DEVPATH (SUBSYSTEM)`, a spilled event as `SEQNUM (spilled to the journal)`, and
    /// `waiting for SEQNUM N` last.
    pub fn lines(&self) -> Vec<String> {
        let seq = |s: Option<u64>| s.map_or("-".to_owned(), |s| s.to_string());
        let background = self.background.iter().map(|b| {
            let e = &b.event;
            format!(
                "background {} {} {} ({}): rule {}, pid {}, {:.1} s",
                seq(e.seqnum),
                e.action.as_deref().unwrap_or(""),
                e.devpath.as_deref().unwrap_or(""),
                e.subsystem.as_deref().unwrap_or(""),
                escape(b.rule.as_bytes()),
                b.pid,
                b.running_for_ms / 1e3
            )
        });
        let mut lines: Vec<String> = background
            .chain(self.events.iter().map(|e| match e.state {
                PendingState::Spilled => {
                    format!("{} (spilled to the journal)", seq(e.seqnum))
                }
                state => format!(
                    "{}{} {} {} ({}){}",
                    if state == PendingState::Running {
                        "running "
                    } else {
                        ""
                    },
                    seq(e.seqnum),
                    e.action.as_deref().unwrap_or(""),
                    e.devpath.as_deref().unwrap_or(""),
                    e.subsystem.as_deref().unwrap_or(""),
                    match (e.lane, &e.waiting_on) {
                        (_, Some(b)) => format!(": {b}"),
                        (Some(l), None) => format!(" in lane {l}"),
                        (None, None) => String::new(),
                    }
                ),
            }))
            .collect();
        if let Some(s) = self.waiting_for {
            lines.push(format!("waiting for SEQNUM {s}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_with_hostile_names() {
        for name in [
            "nan",
            "007",
            "yes",
            "-",
            "a \"quoted\" rule",
            "two\nlines",
            "",
        ] {
            let s = Status {
                running_rule: Some(name.to_owned()),
                running_for_ms: Some(1.5),
                paused: true,
                ..Status::default()
            };
            assert_eq!(Status::parse(&s.lines()).unwrap(), s, "{name:?}");
        }
        assert!(Status::parse(&["paused maybe".to_owned()]).is_err());
        // A newer daemon's field is skipped.
        assert!(Status::parse(&["holder 12".to_owned()]).is_ok());
    }

    #[test]
    fn pending_lists_background_handlers_first() {
        let vars: Vec<(&[u8], &[u8])> = vec![
            (b"ACTION", b"add"),
            (b"DEVPATH", b"/devices/net/eth0"),
            (b"SEQNUM", b"8"),
        ];
        let ev = Event::from_vars(b"net", vars).unwrap();
        let p = Pending {
            events: vec![PendingEvent::of(PendingState::Queued, &ev)],
            waiting_for: None,
            background: vec![PendingBackground {
                event: PendingEvent::of(PendingState::Background, &ev),
                rule: "net up".into(),
                pid: 42,
                running_for_ms: 1500.0,
            }],
        };
        assert_eq!(
            p.lines(),
            [
                "background 8 add /devices/net/eth0 (net): rule net up, pid 42, 1.5 s",
                "8 add /devices/net/eth0 (net)",
            ]
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Pending>(&json).unwrap(), p);
        // An older daemon's reply, without the list.
        let old: Pending = serde_json::from_str(r#"{"events":[],"waiting_for":null}"#).unwrap();
        assert!(old.background.is_empty());
    }
}
