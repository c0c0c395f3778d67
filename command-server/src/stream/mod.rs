//! The event stream: `hotel.v1.EventStream`.
//!
//! - [`head`]: the latest committed position, pushed by this process's
//!   writer after each commit and polled from MySQL for other instances'.
//! - [`subscription`]: one subscriber's loop: catch up from the log, then
//!   follow the head; bounded, at the subscriber's pace.
//! - [`recent`]: this process's last commits, in memory, for live
//!   subscribers.
//! - [`identity`]: whether a subscriber resumes on the history it holds.
//! - [`service`]: the tonic service.

pub mod head;
pub mod identity;
pub mod recent;
pub mod service;
pub mod subscription;

use hotel_common::pb;

use crate::store::CommitListener;

/// What the writer tells after each commit: the events go into [`recent`]
/// first, then the head moves, so a subscriber woken by the head finds
/// them in memory.
#[derive(Clone)]
pub struct Publisher {
    /// This process's last commits.
    pub recent: recent::Recent,
    /// The head that wakes live subscribers.
    pub head: head::HeadSender,
}

impl CommitListener for Publisher {
    fn committed(&self, events: Vec<pb::EventEnvelope>) {
        let Some(last) = events.last().map(|e| e.position) else {
            return;
        };
        self.recent.append(events);
        head::raise(&self.head, last);
    }
}
