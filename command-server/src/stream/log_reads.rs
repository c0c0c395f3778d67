//! The line subscribers wait in to read the event log from MySQL.
//!
//! A burst of catch-ups used to take every pooled connection: the rest
//! failed with "pool timed out" while MySQL sat idle, and so did command
//! status reads and `GetHead`. Here at most `concurrent` log reads run at
//! once (fewer than the pool holds), the others wait their turn in order,
//! and only a line longer than `queue` turns newcomers away.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission to log reads, shared by every subscriber of a server.
#[derive(Clone)]
pub struct LogReads {
    permits: Arc<Semaphore>,
    /// Reads waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    /// Reads that may wait at most.
    queue: usize,
}

/// The line was full.
#[derive(Debug)]
pub struct LineFull;

impl LogReads {
    pub fn new(concurrent: usize, queue: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue,
        }
    }

    /// A permit for one read, held while it runs; waits in line (first
    /// come, first served) unless the line is full.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, LineFull> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _in_line = InLine::join(&self.waiting, self.queue).ok_or(LineFull)?;
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LineFull)
    }
}

/// One place in the line, given back when dropped.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn join(waiting: &'a AtomicUsize, queue: usize) -> Option<Self> {
        let ahead = waiting.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("stream_log_reads_waiting").set((ahead + 1) as f64);
        let place = Self(waiting);
        (ahead < queue).then_some(place)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("stream_log_reads_waiting").set(left as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_in_line_and_turns_away_past_it() {
        let reads = LogReads::new(1, 1);
        let running = reads.acquire().await.expect("a free permit");
        let waiting = tokio::spawn({
            let reads = reads.clone();
            async move { reads.acquire().await.is_ok() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            reads.acquire().await.is_err(),
            "the line holds one and is full"
        );
        drop(running);
        assert!(
            waiting.await.expect("joins"),
            "the one in line gets its turn"
        );
        assert!(reads.acquire().await.is_ok(), "the line is empty again");
    }
}
