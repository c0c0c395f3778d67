//! The event stream: `hotel.v1.EventStream`.
//!
//! - [`head`]: the latest committed position, pushed by this process's
//!   writer after each commit and polled from MySQL for other instances'.
//! - [`subscription`]: one subscriber's loop: catch up from the log, then
//!   follow the head; bounded, at the subscriber's pace.
//! - [`recent`]: this process's last commits, in memory, for live
//!   subscribers.
//! - [`service`]: the tonic service.

pub mod head;
pub mod recent;
pub mod service;
pub mod subscription;
