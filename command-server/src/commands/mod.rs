//! Commands: validated from their requests, executed by the store's writer,
//! answered with replies that can be stored and replayed.
//!
//! - [`parse`]: request → [`ValidCommand`], or `INVALID_ARGUMENT`.
//! - [`service`]: the tonic `CommandService`.
//! - [`submitted`]: the asynchronous path (`SubmitCommand`).

pub mod parse;
pub mod service;
pub mod submitted;

pub use crate::domain::command::{Command, CommandKind, Reply, ValidCommand};
