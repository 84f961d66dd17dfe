//! hotplugd: a serializing dispatcher for the kernel's uevent helper.
//!
//! The path of an event, top to bottom: the shim ([`message`], [`spool`]) hands it to the
//! daemon's FIFO (or the kernel broadcasts it on [`netlink`]); [`sources`] split the stream into [`event::Event`]s; the [`queue`] orders
//! them by SEQNUM with kue semantics; the [`daemon`] takes them out one at a time, matches
//! the [`rules`] and has the [`runner`] run each handler.

pub mod activation;
pub mod broadcast;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod device;
pub mod devnodes;
pub mod event;
pub mod firmware;
pub mod helper;
pub mod holder;
pub mod import;
pub mod journal;
pub mod lanes;
pub mod message;
pub mod netlink;
pub mod props;
pub mod queue;
pub mod rules;
pub mod runner;
pub mod runtime;
pub mod sources;
mod spanned;
pub mod spawn;
pub mod spool;
pub mod status;
pub mod sysfs;
pub mod timeline;
