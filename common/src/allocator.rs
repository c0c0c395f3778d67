//! The servers' allocator, mimalloc, and the one setting they change.
//!
//! mimalloc keeps memory that was freed for a while before it gives it back
//! to the OS (its `purge_delay`; 1,000 ms in the version used here, and ten
//! times that for whole arenas). A query server replaying the log frees a
//! batch of decoded events every few tens of milliseconds, so it held about
//! a second's worth of them: its peak RSS was 91-110 MiB, against 70-81
//! MiB with the delay at 10 ms (mimalloc 2's default), at the same
//! events/s, commands/s and queries/s (paired runs, ADR 0014). The servers
//! set 10 ms at start; `MIMALLOC_PURGE_DELAY`, mimalloc's own environment
//! variable, still decides when it is set.
//!
//! This is the project's only `unsafe`: one call of mimalloc's C option API.
#![allow(unsafe_code)]

use std::ffi::c_long;

/// Milliseconds mimalloc waits before giving freed memory back to the OS.
pub const PURGE_DELAY_MS: c_long = 10;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (the Rust bindings
/// name the options before and after it, not this one).
/// `tests/allocator.rs` checks that it is the delay.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the purge delay to [`PURGE_DELAY_MS`] unless the environment sets
/// `MIMALLOC_PURGE_DELAY`. Call once, first thing in `main`.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set stores a value in mimalloc's table of options,
    // which the allocator reads each time it decides to purge; the option
    // exists (see the constant) and takes any number of milliseconds.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// The purge delay mimalloc uses now, in milliseconds.
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads the same table entry.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}
