//! What the projector publishes: the checkpoint (a watch channel the
//! freshness waits and live queries follow), and its status for
//! `GetProjectionStatus`, health and metrics.

use std::sync::Mutex;

use hotel_common::{pb, timestamp_from_millis};
use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::read_model::{Checkpoint, now_millis};

/// The gRPC service names whose health follows the projection.
const HEALTH_SERVICES: [&str; 2] = ["", "hotel.v1.QueryService"];

/// The shared face of one projection (one read model file's progress).
pub struct Projection {
    /// The last committed position; every commit publishes here.
    checkpoint: watch::Sender<i64>,
    /// Everything else `GetProjectionStatus` reports.
    status: Mutex<Status>,
    /// Health of the server; `None` for a projection nobody queries (a rebuild).
    health: Option<HealthReporter>,
    /// Wakes a stopped projector when an operator resumes it.
    resume: tokio::sync::Notify,
    /// The reason of the latest stop, published when it stops.
    stops: watch::Sender<Option<String>>,
}

#[derive(Debug, Clone, Default)]
struct Status {
    /// Latest head the command server reported.
    head: i64,
    state: pb::ProjectionState,
    /// Wall-clock time of the last commit, ms since the epoch.
    last_applied_at_ms: Option<i64>,
    /// Commit time of the last applied event.
    last_event_at_ms: Option<i64>,
    /// Commit time of the oldest event received but not yet applied.
    pending_since_ms: Option<i64>,
    /// Whether the projection has been live once (health stays SERVING after,
    /// unless it stops before an event).
    caught_up_once: bool,
    /// Why it stopped following, while STOPPED.
    stopped: Option<pb::ProjectionStop>,
    /// Whether health says SERVING.
    serving: bool,
}

impl Status {
    /// Seconds since the commit of the oldest event not yet applied (or,
    /// before one arrives, of the last one applied); 0 when caught up.
    fn lag_seconds(&self, lag_events: i64) -> f64 {
        if lag_events == 0 {
            return 0.0;
        }
        self.pending_since_ms
            .or(self.last_event_at_ms)
            .map_or(0.0, |since| (now_millis() - since).max(0) as f64 / 1000.0)
    }
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("checkpoint", &*self.checkpoint.borrow())
            .finish_non_exhaustive()
    }
}

impl Projection {
    /// A projection starting from `checkpoint` as stored in its file.
    pub fn new(checkpoint: Checkpoint, health: Option<HealthReporter>) -> Self {
        let (sender, _) = watch::channel(checkpoint.position);
        Self {
            checkpoint: sender,
            status: Mutex::new(Status {
                state: pb::ProjectionState::CatchingUp,
                last_applied_at_ms: checkpoint.applied_at_ms,
                ..Status::default()
            }),
            health,
            resume: tokio::sync::Notify::new(),
            stops: watch::channel(None).0,
        }
    }

    /// The reason of each stop, as it happens (`--rebuild-on-rewrite`
    /// follows it).
    pub fn watch_stops(&self) -> watch::Receiver<Option<String>> {
        self.stops.subscribe()
    }

    /// Sets health to NOT_SERVING until the first catch-up.
    pub async fn init_health(&self) {
        if let Some(health) = &self.health {
            for service in HEALTH_SERVICES {
                health
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
        }
    }

    /// The last committed position.
    pub fn checkpoint(&self) -> i64 {
        *self.checkpoint.borrow()
    }

    /// Follows the checkpoint: the receiver wakes on every commit.
    pub fn watch_checkpoint(&self) -> watch::Receiver<i64> {
        self.checkpoint.subscribe()
    }

    fn with_status<T>(&self, change: impl FnOnce(&mut Status) -> T) -> T {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut status)
    }

    /// Records a head reported by the command server.
    pub fn saw_head(&self, head: i64) {
        self.with_status(|s| s.head = s.head.max(head));
        self.publish_metrics();
    }

    /// Records that events up to a commit time are waiting to be applied.
    pub fn set_pending_since(&self, occurred_at_ms: Option<i64>) {
        self.with_status(|s| s.pending_since_ms = occurred_at_ms);
    }

    /// Records a commit and wakes everyone waiting for positions up to it.
    pub fn committed(&self, position: i64, last_event_at_ms: i64) {
        if self.health.is_some() && last_event_at_ms > 0 {
            let behind_ms = (now_millis() - last_event_at_ms).max(0);
            metrics::histogram!("projection_commit_to_applied_seconds")
                .record(behind_ms as f64 / 1000.0);
            metrics::gauge!("projection_last_event_timestamp_seconds")
                .set(last_event_at_ms as f64 / 1000.0);
        }
        self.with_status(|s| {
            s.last_applied_at_ms = Some(now_millis());
            s.last_event_at_ms = Some(last_event_at_ms);
            s.head = s.head.max(position);
        });
        self.checkpoint.send_if_modified(|current| {
            let advanced = position > *current;
            *current = (*current).max(position);
            advanced
        });
        self.publish_metrics();
    }

    /// Takes the checkpoint of a read model rebuilt on a rewritten log as
    /// it is, lower or higher: the history itself was replaced.
    pub fn replace_history(&self, checkpoint: Checkpoint) {
        self.with_status(|s| {
            s.last_applied_at_ms = checkpoint.applied_at_ms;
            s.head = checkpoint.position;
        });
        self.checkpoint.send_replace(checkpoint.position);
        self.publish_metrics();
    }

    /// Takes over the checkpoint of a file swapped in by a rebuild (never
    /// behind the current one).
    pub fn adopt(&self, checkpoint: Checkpoint) {
        self.with_status(|s| s.last_applied_at_ms = checkpoint.applied_at_ms);
        self.checkpoint.send_if_modified(|current| {
            let advanced = checkpoint.position > *current;
            *current = (*current).max(checkpoint.position);
            advanced
        });
        self.publish_metrics();
    }

    /// Moves to `state`; the first move to LIVE makes the server SERVING.
    pub async fn set_state(&self, state: pb::ProjectionState) {
        let (first_catch_up, serve) = self.with_status(|s| {
            s.state = state;
            // Following again (resumed, upgraded, rebuilt): no longer stopped.
            if state != pb::ProjectionState::Stopped
                && let Some(stop) = s.stopped.take()
                && self.health.is_some()
            {
                metrics::gauge!("projection_stopped", "reason" => stop.reason).set(0.0);
            }
            let first = state == pb::ProjectionState::Live && !s.caught_up_once;
            s.caught_up_once |= first;
            // Serving again once live after a stop.
            let serve = state == pb::ProjectionState::Live && !s.serving;
            s.serving |= serve;
            (first, serve)
        });
        if serve {
            self.set_health(ServingStatus::Serving).await;
        }
        if first_catch_up {
            tracing::info!(
                checkpoint = self.checkpoint(),
                "read model caught up; serving"
            );
        }
    }

    async fn set_health(&self, status: ServingStatus) {
        if let Some(health) = &self.health {
            for service in HEALTH_SERVICES {
                health.set_service_status(service, status).await;
            }
        }
    }

    /// Stops following before an event that cannot be applied: the state
    /// says why, health turns NOT_SERVING (queries are still answered, as
    /// of the checkpoint), and a metric shows it.
    pub async fn stop_before(&self, stop: pb::ProjectionStop) {
        tracing::error!(
            position = stop.position,
            event_id = stop.event_id,
            reason = stop.reason,
            message = stop.message,
            "the read model stopped before an event it cannot apply; it answers as of its \
             checkpoint until resumed (QueryAdminService.ResumeProjection), upgraded or rebuilt"
        );
        if self.health.is_some() {
            metrics::gauge!("projection_stopped", "reason" => stop.reason.clone()).set(1.0);
        }
        let reason = stop.reason.clone();
        self.with_status(|s| {
            s.state = pb::ProjectionState::Stopped;
            s.stopped = Some(stop);
            s.serving = false;
        });
        self.set_health(ServingStatus::NotServing).await;
        self.stops.send_replace(Some(reason));
    }

    /// Lets a stopped projector try again; `false` when it was not stopped.
    pub fn resume(&self) -> bool {
        let stopped = self.with_status(|s| {
            let stopped = s.stopped.take();
            if stopped.is_some() {
                s.state = pb::ProjectionState::Disconnected;
            }
            stopped
        });
        let Some(stop) = stopped else {
            return false;
        };
        if self.health.is_some() {
            metrics::gauge!("projection_stopped", "reason" => stop.reason).set(0.0);
        }
        self.resume.notify_one();
        true
    }

    /// Waits until an operator resumes a stopped projector.
    pub async fn resumed(&self) {
        self.resume.notified().await;
    }

    /// The current state.
    pub fn state(&self) -> pb::ProjectionState {
        self.with_status(|s| s.state)
    }

    /// The answer to `GetProjectionStatus`.
    pub fn report(&self) -> pb::GetProjectionStatusResponse {
        let checkpoint = self.checkpoint();
        let status = self.with_status(|s| s.clone());
        let lag_events = (status.head - checkpoint).max(0);
        let lag_seconds = status.lag_seconds(lag_events);
        pb::GetProjectionStatusResponse {
            checkpoint,
            head: status.head.max(checkpoint),
            lag_events,
            lag_seconds,
            state: status.state as i32,
            last_applied_at: status.last_applied_at_ms.map(timestamp_from_millis),
            stopped: status.stopped,
        }
    }

    /// Sets the gauges that move with time alone (run at scrape time): the
    /// lag in seconds and the state.
    pub fn sample_metrics(&self) {
        let checkpoint = self.checkpoint();
        let (lag_seconds, state) = self.with_status(|s| {
            let lag_events = (s.head - checkpoint).max(0);
            (s.lag_seconds(lag_events), s.state)
        });
        metrics::gauge!("projection_lag_seconds").set(lag_seconds);
        for (label, each) in [
            ("live", pb::ProjectionState::Live),
            ("catching_up", pb::ProjectionState::CatchingUp),
            ("disconnected", pb::ProjectionState::Disconnected),
            ("stopped", pb::ProjectionState::Stopped),
        ] {
            let current = if each == state { 1.0 } else { 0.0 };
            metrics::gauge!("projection_state", "state" => label).set(current);
        }
    }

    fn publish_metrics(&self) {
        if self.health.is_none() {
            return;
        }
        let checkpoint = self.checkpoint();
        let head = self.with_status(|s| s.head).max(checkpoint);
        metrics::gauge!("projection_checkpoint").set(checkpoint as f64);
        metrics::gauge!("projection_head").set(head as f64);
        metrics::gauge!("projection_lag_events").set((head - checkpoint) as f64);
    }
}
