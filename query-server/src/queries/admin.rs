//! `hotel.v1.QueryAdminService`: operations on the read model itself.

use std::{sync::Arc, time::Instant};

use hotel_common::pb;
use tonic::{Request, Response, Status};

use super::{QueryError, observe};
use crate::{projector::Projection, rebuild::Rebuilder};

/// The admin handlers.
#[derive(Clone)]
pub struct Admin {
    /// Runs the rebuilds.
    rebuilder: Arc<Rebuilder>,
    /// The live projection, to resume it when it stopped.
    projection: Arc<Projection>,
}

impl Admin {
    pub fn new(rebuilder: Arc<Rebuilder>, projection: Arc<Projection>) -> Self {
        Self {
            rebuilder,
            projection,
        }
    }
}

#[tonic::async_trait]
impl pb::query_admin_service_server::QueryAdminService for Admin {
    #[tracing::instrument(skip_all)]
    async fn rebuild_read_model(
        &self,
        _request: Request<pb::RebuildReadModelRequest>,
    ) -> Result<Response<pb::RebuildReadModelResponse>, Status> {
        let started = Instant::now();
        // In its own task: a client that gives up must not stop a rebuild
        // half-way (the live projector may be paused at that moment).
        let rebuilder = self.rebuilder.clone();
        let result = match tokio::spawn(async move { rebuilder.rebuild().await }).await {
            Ok(result) => result,
            Err(join) => Err(QueryError::Internal(anyhow::anyhow!(
                "the rebuild task failed: {join}"
            ))),
        };
        observe("RebuildReadModel", started, result)
    }

    #[tracing::instrument(skip_all)]
    async fn resume_projection(
        &self,
        _request: Request<pb::ResumeProjectionRequest>,
    ) -> Result<Response<pb::ResumeProjectionResponse>, Status> {
        let started = Instant::now();
        let was_stopped = self.projection.resume();
        if was_stopped {
            tracing::info!(
                checkpoint = self.projection.checkpoint(),
                "projection resumed by an operator"
            );
        }
        let reply = pb::ResumeProjectionResponse {
            checkpoint: self.projection.checkpoint(),
            was_stopped,
        };
        observe("ResumeProjection", started, Ok::<_, QueryError>(reply))
    }
}
