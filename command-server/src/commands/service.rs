//! The tonic `hotel.v1.CommandService`.

use std::time::Instant;

use hotel_common::{pb, server::record_rpc, timestamp_from_millis};
use sqlx::MySqlPool;
use tonic::{Request, Response, Status};

use super::{
    CommandKind, Reply,
    parse::{CommandRequest, check_size, validate},
    submitted::{SubmittedQueue, state_of},
};
use crate::{
    error::ErrorInfo,
    store::{command_log, writer::Writer},
};

/// Serves commands by handing them to the writer.
#[derive(Clone)]
pub struct CommandApi {
    /// Runs commands in MySQL transactions.
    pub writer: Writer,
    /// Reads the command log for GetCommandStatus.
    pub pool: MySqlPool,
    /// The asynchronous path.
    pub queue: SubmittedQueue,
}

impl CommandApi {
    async fn run<R: CommandRequest, T>(
        &self,
        method: &'static str,
        request: Request<R>,
        pick: fn(Reply) -> Option<T>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let deadline = deadline(&request);
        let outcome = async {
            check_size(
                request.get_ref().encoded_len(),
                self.queue.max_command_bytes(),
            )?;
            let command = validate(request.get_ref())?;
            let reply = self.writer.execute(command, deadline).await?;
            pick(reply).ok_or_else(|| Status::internal("the writer answered another command"))
        }
        .await;
        let code = outcome
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        record_rpc(method, started, code);
        outcome.map(Response::new)
    }
}

#[tonic::async_trait]
impl pb::command_service_server::CommandService for CommandApi {
    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn register_hotel(
        &self,
        request: Request<pb::RegisterHotelRequest>,
    ) -> Result<Response<pb::RegisterHotelResponse>, Status> {
        self.run("RegisterHotel", request, |reply| match reply {
            Reply::RegisterHotel(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn add_room_type(
        &self,
        request: Request<pb::AddRoomTypeRequest>,
    ) -> Result<Response<pb::AddRoomTypeResponse>, Status> {
        self.run("AddRoomType", request, |reply| match reply {
            Reply::AddRoomType(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn set_room_inventory(
        &self,
        request: Request<pb::SetRoomInventoryRequest>,
    ) -> Result<Response<pb::SetRoomInventoryResponse>, Status> {
        self.run("SetRoomInventory", request, |reply| match reply {
            Reply::SetRoomInventory(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn book_room(
        &self,
        request: Request<pb::BookRoomRequest>,
    ) -> Result<Response<pb::BookRoomResponse>, Status> {
        self.run("BookRoom", request, |reply| match reply {
            Reply::BookRoom(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<Response<pb::CancelReservationResponse>, Status> {
        self.run("CancelReservation", request, |reply| match reply {
            Reply::CancelReservation(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn check_in(
        &self,
        request: Request<pb::CheckInRequest>,
    ) -> Result<Response<pb::CheckInResponse>, Status> {
        self.run("CheckIn", request, |reply| match reply {
            Reply::CheckIn(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn check_out(
        &self,
        request: Request<pb::CheckOutRequest>,
    ) -> Result<Response<pb::CheckOutResponse>, Status> {
        self.run("CheckOut", request, |reply| match reply {
            Reply::CheckOut(r) => Some(r),
            _ => None,
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn submit_command(
        &self,
        request: Request<pb::SubmitCommandRequest>,
    ) -> Result<Response<pb::SubmitCommandResponse>, Status> {
        let started = Instant::now();
        let outcome = self.queue.submit(&self.pool, request.into_inner()).await;
        let code = outcome
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        record_rpc("SubmitCommand", started, code);
        outcome.map(Response::new)
    }

    #[tracing::instrument(skip_all, fields(command_id = %request.get_ref().command_id))]
    async fn get_command_status(
        &self,
        request: Request<pb::GetCommandStatusRequest>,
    ) -> Result<Response<pb::GetCommandStatusResponse>, Status> {
        let started = Instant::now();
        let outcome = command_status(&self.pool, &request.get_ref().command_id).await;
        let code = outcome
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        record_rpc("GetCommandStatus", started, code);
        outcome.map(Response::new)
    }
}

async fn command_status(
    pool: &MySqlPool,
    command_id: &str,
) -> Result<pb::GetCommandStatusResponse, Status> {
    let mut violations = hotel_common::validate::Violations::new();
    let id = violations.uuid("command_id", command_id);
    violations.finish()?;
    let id = id.map(|id| id.to_string()).unwrap_or_default();
    let record = command_log::load(pool, &id)
        .await
        .map_err(|e| Status::unavailable(format!("the database is unavailable: {e}")))?
        .ok_or_else(|| {
            Status::not_found(format!(
                "command {id} is unknown (never received, or refused when called directly)"
            ))
        })?;
    let state = state_of(&record.state);
    let result = match (&record.response, CommandKind::parse(&record.kind)) {
        (Some(bytes), Some(kind)) => Some(
            Reply::decode(kind, bytes)
                .map_err(|e| Status::internal(format!("stored reply: {e}")))?
                .into_status_result(),
        ),
        _ => None,
    };
    let info = record.error_info.as_deref().and_then(ErrorInfo::decode);
    let error = record.error_code.map(|code| pb::CommandError {
        code,
        message: record.error_message.clone().unwrap_or_default(),
        reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        metadata: info
            .map(|i| i.metadata.into_iter().collect())
            .unwrap_or_default(),
    });
    Ok(pb::GetCommandStatusResponse {
        command_id: record.command_id,
        state: state as i32,
        position: record.position,
        accepted_at: Some(timestamp_from_millis(record.accepted_at_ms)),
        finished_at: record.finished_at_ms.map(timestamp_from_millis),
        result,
        error,
    })
}

/// The caller's deadline, from its `grpc-timeout` header: the command does
/// not start after it.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    Instant::now().checked_add(hotel_common::limits::parse_grpc_timeout(value)?)
}
