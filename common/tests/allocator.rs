//! The servers' allocator setting, in a test binary of its own (the RSS it
//! reads is the whole process's): memory freed through mimalloc goes back to
//! the OS within a fraction of a second, not the seconds mimalloc waits by
//! default. This also shows that the option index the setting writes is the
//! purge delay: with another option written, the memory stays.
#![allow(unsafe_code)]

use std::{
    ffi::c_void,
    time::{Duration, Instant},
};

use hotel_common::allocator;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn memory_freed_through_mimalloc_goes_back_to_the_os_within_the_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        eprintln!("MIMALLOC_PURGE_DELAY is set: the environment decides, nothing to check");
        return;
    }
    allocator::configure();
    assert_eq!(allocator::purge_delay_ms(), allocator::PURGE_DELAY_MS);

    // 96 MiB in 96 KiB blocks (the size of a decoded batch's pieces), every
    // page written, then all freed.
    const BLOCK: usize = 96 * 1024;
    let before = rss_kib();
    let blocks: Vec<*mut c_void> = (0..1024)
        .map(|_| {
            // SAFETY: a fresh allocation of BLOCK bytes, written within bounds.
            unsafe {
                let block = libmimalloc_sys::mi_malloc(BLOCK);
                assert!(!block.is_null());
                std::ptr::write_bytes(block.cast::<u8>(), 0xA5, BLOCK);
                block
            }
        })
        .collect();
    let grown = rss_kib();
    assert!(
        grown > before + 80 * 1024,
        "96 MiB written: RSS {before} -> {grown} KiB"
    );
    for block in blocks {
        // SAFETY: each block was allocated above and is freed once.
        unsafe { libmimalloc_sys::mi_free(block) }
    }
    // mimalloc purges when it next runs (an allocation, a free, a collect).
    let freed = Instant::now();
    let mut now_rss = rss_kib();
    while freed.elapsed() < Duration::from_secs(3) && now_rss > before + 32 * 1024 {
        std::thread::sleep(Duration::from_millis(10));
        // SAFETY: a normal, non-forced collection of this thread's heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
        now_rss = rss_kib();
    }
    let took = freed.elapsed();
    eprintln!("RSS {before} -> {grown} -> {now_rss} KiB, {took:?} after the frees");
    // With mimalloc's default delay the memory is still resident after a
    // second (arenas wait ten times the delay); with 10 ms it goes at once.
    assert!(
        now_rss <= before + 32 * 1024 && took < Duration::from_millis(800),
        "RSS {now_rss} KiB {took:?} after freeing 96 MiB (was {before} KiB before)"
    );
}
