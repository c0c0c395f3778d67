//! The events this process committed last, kept in memory so that live
//! subscribers get them without reading them back from MySQL.
//!
//! The writer appends each batch's events after its commit and before it
//! raises the head, so a subscriber woken by the head finds them here. Only
//! a run of consecutive positions is kept: when another instance's commit
//! comes between two of ours, the run starts again at our batch. Anything
//! not in the run (catch-up, other instances' events) is read from the log
//! as before, so this changes what is read from, never what is delivered.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use hotel_common::wire;

/// Events kept at most.
pub const CAPACITY: usize = 16_384;

/// The recent events of this process, shared by its writer and streams.
#[derive(Clone, Default)]
pub struct Recent {
    inner: Arc<Mutex<Run>>,
}

/// Consecutive events, the first at `first`.
#[derive(Default)]
struct Run {
    first: i64,
    events: VecDeque<wire::Envelope>,
}

impl Recent {
    /// Adds the events of a commit, in position order.
    pub fn append(&self, events: Vec<wire::Envelope>) {
        let Some(start) = events.first().map(|e| e.head.position) else {
            return;
        };
        let mut run = self.inner.lock().expect("recent events lock poisoned");
        if run.events.is_empty() || run.first + run.events.len() as i64 != start {
            run.events.clear();
            run.first = start;
        }
        run.events.extend(events);
        while run.events.len() > CAPACITY {
            run.events.pop_front();
            run.first += 1;
        }
    }

    /// Events `from..=through`, at most `limit`, when `from` is held here.
    pub fn read(&self, from: i64, through: i64, limit: i64) -> Option<Vec<wire::Envelope>> {
        let run = self.inner.lock().expect("recent events lock poisoned");
        let end = run.first + run.events.len() as i64;
        if from < run.first || from >= end || from > through {
            return None;
        }
        let skip = (from - run.first) as usize;
        let take = (through.min(end - 1) - from + 1).min(limit).max(0) as usize;
        Some(run.events.iter().skip(skip).take(take).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hotel_common::pb;

    fn events(positions: std::ops::RangeInclusive<i64>) -> Vec<wire::Envelope> {
        positions
            .map(|position| {
                wire::Envelope::from_decoded(pb::EventEnvelope {
                    position,
                    ..Default::default()
                })
            })
            .collect()
    }

    fn positions(events: Option<Vec<wire::Envelope>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|e| e.head.position).collect())
    }

    #[test]
    fn serves_only_a_consecutive_run_it_holds() {
        let recent = Recent::default();
        assert_eq!(positions(recent.read(1, 10, 100)), None);
        recent.append(events(5..=7));
        recent.append(events(8..=9));
        assert_eq!(positions(recent.read(6, 9, 100)), Some(vec![6, 7, 8, 9]));
        assert_eq!(
            positions(recent.read(6, 7, 100)),
            Some(vec![6, 7]),
            "not past the head"
        );
        assert_eq!(
            positions(recent.read(5, 9, 2)),
            Some(vec![5, 6]),
            "at most the limit"
        );
        assert_eq!(positions(recent.read(4, 9, 100)), None, "4 is not here");
        assert_eq!(positions(recent.read(10, 12, 100)), None, "nor 10");
        // Another instance wrote 10..=11: the run starts again.
        recent.append(events(12..=13));
        assert_eq!(positions(recent.read(8, 13, 100)), None);
        assert_eq!(positions(recent.read(12, 13, 100)), Some(vec![12, 13]));
    }

    #[test]
    fn keeps_at_most_its_capacity() {
        let recent = Recent::default();
        recent.append(events(1..=(CAPACITY as i64 + 10)));
        assert_eq!(positions(recent.read(10, 10, 1)), None);
        assert_eq!(positions(recent.read(11, 11, 1)), Some(vec![11]));
    }
}
