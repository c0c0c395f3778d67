//! Runs a workload: closed loop (N workers, each starting its next
//! operation when the last one ends) or open loop (operations due at a fixed
//! rate, at most N in flight), until a duration, a count or an outside
//! signal ends it; with a progress bar on a terminal.

use std::{
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Mutex, mpsc};

use crate::stats::Recorder;

/// One worker's part of a workload.
pub trait Worker: Send + 'static {
    /// Runs one operation (one RPC, or a few that belong together) and
    /// records its calls. `scheduled` is when the operation was due: in an
    /// open-loop load it may be earlier than now, and the first call's
    /// latency counts from then, so that a server that falls behind is not
    /// excused by the queue in front of it.
    fn step(
        &mut self,
        recorder: &mut Recorder,
        scheduled: Instant,
    ) -> impl Future<Output = ()> + Send;
}

/// When a load ends.
#[derive(Debug, Clone)]
pub enum Stop {
    /// After this long (operations in flight still finish).
    After(Duration),
    /// After this many operations.
    Count(u64),
    /// When the flag is raised.
    When(Arc<AtomicBool>),
}

/// How to load.
#[derive(Debug, Clone)]
pub struct Load {
    /// Operations per second, open loop; `None` for closed loop.
    pub rate: Option<f64>,
    /// When to stop.
    pub stop: Stop,
    /// What the progress bar says it is doing.
    pub label: String,
    /// Draw the progress bar (only ever on a terminal).
    pub progress: bool,
}

/// Counters the progress bar reads while the workers run.
#[derive(Default)]
struct Progress {
    /// Operations finished.
    steps: AtomicU64,
    /// Calls recorded.
    calls: AtomicU64,
    /// Failed calls recorded.
    failures: AtomicU64,
}

/// Runs `workers` (one task each) under `load`; returns what they recorded
/// and the wall time from the first operation to the end of the last.
pub async fn drive<W: Worker>(load: &Load, workers: Vec<W>) -> (Recorder, Duration) {
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let bar = progress_bar(load);
    let ticker = tokio::spawn(tick(
        bar.clone(),
        load.stop.clone(),
        progress.clone(),
        started,
    ));

    let tasks: Vec<_> = match load.rate {
        None => {
            let claimed = Arc::new(AtomicU64::new(0));
            workers
                .into_iter()
                .map(|worker| {
                    let stop = load.stop.clone();
                    let claimed = claimed.clone();
                    let progress = progress.clone();
                    tokio::spawn(closed_loop(worker, stop, claimed, started, progress))
                })
                .collect()
        }
        Some(rate) => {
            let (due, queue) = mpsc::channel(1 << 16);
            tokio::spawn(dispatch(due, rate, load.stop.clone(), started));
            let queue = Arc::new(Mutex::new(queue));
            workers
                .into_iter()
                .map(|worker| tokio::spawn(open_loop(worker, queue.clone(), progress.clone())))
                .collect()
        }
    };

    let mut recorder = Recorder::default();
    for task in tasks {
        match task.await {
            Ok(recorded) => recorder.merge(&recorded),
            Err(error) => eprintln!("loadgen: a worker failed: {error}"),
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    (recorder, elapsed)
}

async fn closed_loop<W: Worker>(
    mut worker: W,
    stop: Stop,
    claimed: Arc<AtomicU64>,
    started: Instant,
    progress: Arc<Progress>,
) -> Recorder {
    let mut recorder = Recorder::default();
    loop {
        let go_on = match &stop {
            Stop::After(limit) => started.elapsed() < *limit,
            Stop::Count(n) => claimed.fetch_add(1, Ordering::Relaxed) < *n,
            Stop::When(flag) => !flag.load(Ordering::Relaxed),
        };
        if !go_on {
            break;
        }
        step(&mut worker, &mut recorder, Instant::now(), &progress).await;
    }
    recorder
}

async fn open_loop<W: Worker>(
    mut worker: W,
    queue: Arc<Mutex<mpsc::Receiver<Instant>>>,
    progress: Arc<Progress>,
) -> Recorder {
    let mut recorder = Recorder::default();
    loop {
        let due = queue.lock().await.recv().await;
        let Some(scheduled) = due else { break };
        step(&mut worker, &mut recorder, scheduled, &progress).await;
    }
    recorder
}

async fn step<W: Worker>(
    worker: &mut W,
    recorder: &mut Recorder,
    scheduled: Instant,
    progress: &Progress,
) {
    let (calls, failures) = (recorder.calls(), recorder.failures());
    worker.step(recorder, scheduled).await;
    progress.steps.fetch_add(1, Ordering::Relaxed);
    progress
        .calls
        .fetch_add(recorder.calls() - calls, Ordering::Relaxed);
    progress
        .failures
        .fetch_add(recorder.failures() - failures, Ordering::Relaxed);
}

/// Hands out the due time of each operation, `rate` per second from
/// `started`, until `stop`.
async fn dispatch(due: mpsc::Sender<Instant>, rate: f64, stop: Stop, started: Instant) {
    let at = |n: u64| started + Duration::from_secs_f64(n as f64 / rate);
    let limit = match &stop {
        Stop::Count(n) => Some(*n),
        Stop::After(d) => Some((d.as_secs_f64() * rate).ceil() as u64),
        Stop::When(_) => None,
    };
    let mut sent: u64 = 0;
    loop {
        if let Stop::When(flag) = &stop
            && flag.load(Ordering::Relaxed)
        {
            break;
        }
        if limit.is_some_and(|limit| sent >= limit) {
            break;
        }
        let now = Instant::now();
        while at(sent) <= now && limit.is_none_or(|limit| sent < limit) {
            if due.send(at(sent)).await.is_err() {
                return;
            }
            sent += 1;
        }
        tokio::time::sleep_until(at(sent).into()).await;
    }
}

fn progress_bar(load: &Load) -> ProgressBar {
    if !load.progress || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match &load.stop {
        Stop::After(d) => (
            ProgressBar::new(d.as_millis() as u64),
            "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {msg}",
        ),
        Stop::Count(n) => (
            ProgressBar::new(*n),
            "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        ),
        Stop::When(_) => (
            ProgressBar::new_spinner(),
            "{spinner} {prefix} [{elapsed_precise}] {msg}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(load.label.clone());
    bar
}

async fn tick(bar: ProgressBar, stop: Stop, progress: Arc<Progress>, started: Instant) {
    if bar.is_hidden() {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        every.tick().await;
        let elapsed = started.elapsed();
        let calls = progress.calls.load(Ordering::Relaxed);
        let failures = progress.failures.load(Ordering::Relaxed);
        match stop {
            Stop::After(limit) => bar.set_position(elapsed.min(limit).as_millis() as u64),
            Stop::Count(_) => bar.set_position(progress.steps.load(Ordering::Relaxed)),
            Stop::When(_) => bar.tick(),
        }
        bar.set_message(format!(
            "{calls} calls, {:.0}/s, {failures} errors",
            calls as f64 / elapsed.as_secs_f64().max(1e-3)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker whose call takes a millisecond and never fails.
    struct Sleeper;

    impl Worker for Sleeper {
        async fn step(&mut self, recorder: &mut Recorder, scheduled: Instant) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            recorder.ok("Sleep", scheduled.elapsed());
        }
    }

    fn load(rate: Option<f64>, stop: Stop) -> Load {
        Load {
            rate,
            stop,
            label: "test".into(),
            progress: false,
        }
    }

    #[tokio::test]
    async fn closed_loop_runs_exactly_the_count() {
        let (recorder, _) = drive(
            &load(None, Stop::Count(50)),
            (0..4).map(|_| Sleeper).collect(),
        )
        .await;
        assert_eq!(recorder.calls(), 50);
    }

    #[tokio::test]
    async fn open_loop_keeps_the_rate() {
        let (recorder, elapsed) = drive(
            &load(Some(200.0), Stop::After(Duration::from_millis(500))),
            (0..8).map(|_| Sleeper).collect(),
        )
        .await;
        assert_eq!(recorder.calls(), 100);
        assert!(elapsed >= Duration::from_millis(490), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_flag_stops_the_load() {
        let flag = Arc::new(AtomicBool::new(false));
        let raise = flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            raise.store(true, Ordering::Relaxed);
        });
        let (recorder, elapsed) =
            drive(&load(None, Stop::When(flag)), vec![Sleeper, Sleeper]).await;
        assert!(recorder.calls() > 10);
        assert!(elapsed < Duration::from_secs(5));
    }
}
