//! The gRPC face of the read model: `hotel.v1.QueryService` and
//! `hotel.v1.QueryAdminService`.
//!
//! Every handler validates its request ([`request`]), waits for
//! `min_position` ([`crate::freshness`]), then reads inline on a read-only
//! connection in one read transaction, so the reply's `as_of_position` is
//! the checkpoint of the very snapshot the data came from.
//! GetAvailability and SearchAvailability answer from the availability the
//! writer holds in memory ([`crate::read_model::memory`]) when it is at
//! `min_position` or later, with its position as `as_of_position`; else
//! (not held, or behind) from SQLite the same way.

mod admin;
mod error;
pub mod paging;
pub mod request;
pub mod views;
mod watch;

use std::{sync::Arc, time::Instant};

use hotel_common::{pb, server::record_rpc, wire};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub use admin::Admin;
pub use error::QueryError;
pub use watch::Watches;

use crate::{
    freshness::{wait_budget, wait_for_position},
    projector::Projection,
    read_model::{ReadModel, Snapshot, memory, reads},
};

/// The query handlers; cheap to clone (everything is shared).
#[derive(Clone)]
pub struct Queries {
    /// Where the answers are read.
    read_model: Arc<ReadModel>,
    /// The checkpoint to wait on and the status to report.
    projection: Arc<Projection>,
    /// Turns true when the server shuts down; live queries end then.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Open live queries and their shared feeds.
    watches: Arc<Watches>,
    /// Most rows one listing or search page examines (`--scan-limit`).
    scan_limit: i64,
}

impl Queries {
    pub fn new(
        read_model: Arc<ReadModel>,
        projection: Arc<Projection>,
        stopping: tokio::sync::watch::Receiver<bool>,
        watches: Arc<Watches>,
        scan_limit: u32,
    ) -> Self {
        Self {
            read_model,
            projection,
            stopping,
            watches,
            scan_limit: i64::from(scan_limit),
        }
    }

    /// Waits until the read model holds `min_position`, within the request's
    /// budget; a shutdown ends the wait at once.
    async fn fresh<T>(&self, request: &Request<T>, min_position: i64) -> Result<(), QueryError> {
        // Most queries ask for no position, or one already applied.
        if min_position <= self.projection.checkpoint() {
            return Ok(());
        }
        let mut checkpoint = self.projection.watch_checkpoint();
        let mut stopping = self.stopping.clone();
        let wait = wait_for_position(
            &mut checkpoint,
            min_position,
            wait_budget(request.metadata()),
        );
        tokio::select! {
            waited = wait => waited.map_err(QueryError::Stale),
            _ = stopping.wait_for(|stop| *stop) => Err(QueryError::Stale(Status::unavailable(format!(
                "the query server is shutting down at position {}; retry on another",
                self.projection.checkpoint()
            )))),
        }
    }

    /// Runs `read` and reads the checkpoint in the same snapshot.
    fn read<T>(
        &self,
        read: impl FnOnce(&Snapshot<'_>) -> rusqlite::Result<T>,
    ) -> Result<(T, i64), QueryError> {
        let (value, position) = self.read_model.read(|tx| {
            let value = read(tx)?;
            Ok((value, reads::checkpoint(tx)?))
        })?;
        self.read_model.answered_at(position);
        Ok((value, position))
    }

    fn get_reservation_now(
        &self,
        reservation_id: &str,
    ) -> Result<pb::GetReservationResponse, QueryError> {
        let (reservation, as_of_position) = self
            .read_model
            .read_statement(|conn| reads::reservation_at_checkpoint(conn, reservation_id))?;
        self.read_model.answered_at(as_of_position);
        let reservation =
            reservation.ok_or_else(|| QueryError::not_found("reservation", reservation_id))?;
        Ok(pb::GetReservationResponse {
            reservation: Some(reservation),
            as_of_position,
        })
    }

    /// The availability held in memory, when it holds `min_position` and
    /// no read of the file answered at a newer position (else the caller
    /// reads SQLite, which does: see [`Self::fresh`]).
    fn memory(&self, min_position: i64) -> Option<Arc<memory::State>> {
        self.read_model.fresh_memory(min_position)
    }

    fn get_availability_now(
        &self,
        query: &request::GetAvailability,
    ) -> Result<pb::GetAvailabilityResponse, QueryError> {
        let code = query.room_type_code.as_deref();
        let from = query.range.from_text();
        let to = query.range.to_text();
        let held = self.memory(query.min_position).and_then(|state| {
            let counts = state.night_counts(&query.hotel_id, code, &from, &to)?;
            let hotel = state.hotel(&query.hotel_id);
            let room_types = state.room_types(&query.hotel_id, code);
            Some(((hotel, room_types, counts), state.position()))
        });
        let ((hotel, room_types, counts), as_of_position) = match held {
            Some(held) => held,
            None => self.read(|tx| {
                let hotel = reads::hotel(tx, &query.hotel_id)?;
                let room_types = reads::room_types(tx, &query.hotel_id, code)?;
                let counts = reads::night_counts(tx, &query.hotel_id, code, &from, &to)?;
                Ok((hotel, room_types, counts))
            })?,
        };
        let Some(hotel) = hotel else {
            return Err(QueryError::not_found("hotel", &query.hotel_id));
        };
        if let Some(code) = code
            && room_types.is_empty()
        {
            return Err(QueryError::not_found(
                "room type",
                format!("{}/{code}", query.hotel_id),
            ));
        }
        Ok(pb::GetAvailabilityResponse {
            hotel_id: query.hotel_id.clone(),
            room_types: views::availability(room_types, &counts, query.range),
            hotel_version: hotel.version,
            as_of_position,
        })
    }
}

/// Counts the RPC by method and outcome and turns the error into a status.
fn observe<T>(
    method: &'static str,
    started: Instant,
    result: Result<T, QueryError>,
) -> Result<Response<T>, Status> {
    let result = result.map(Response::new).map_err(Status::from);
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    record_rpc(method, started, code);
    result
}

// The unary queries' spans are at debug level: at the default `info` they
// are not created at all, which saves a few percent of a point read (the
// fmt layer formats each span's fields when it opens).
#[tonic::async_trait]
impl wire::server::query_service_server::QueryService for Queries {
    #[tracing::instrument(level = "debug", skip_all, fields(reservation_id = request.get_ref().reservation_id))]
    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let query = request::get_reservation(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            self.get_reservation_now(&query.reservation_id)
        }
        .await;
        observe("GetReservation", started, result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(
        guest_id = request.get_ref().guest_id,
        hotel_id = request.get_ref().hotel_id,
    ))]
    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let query =
                request::list_reservations(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            let (owner, of_hotel) = match &query.owner {
                request::Owner::Guest(id) => (id.as_str(), false),
                request::Owner::Hotel(id) => (id.as_str(), true),
            };
            let filter = reads::ListFilter {
                statuses: query.statuses,
                before_position: query.before_position,
                // One more than a page tells whether another page follows.
                limit: query.page_size + 1,
                max_examined: self.scan_limit,
                owner,
            };
            let ((hotel_known, listing), as_of_position) = self.read(|tx| {
                if of_hotel {
                    let known = reads::hotel(tx, owner)?.is_some();
                    Ok((known, reads::reservations_of_hotel(tx, &filter)?))
                } else {
                    Ok((true, reads::reservations_of_guest(tx, &filter)?))
                }
            })?;
            if !hotel_known {
                return Err(QueryError::not_found("hotel", owner));
            }
            let mut listed = listing.listed;
            let mut next_page_token = String::new();
            if listed.len() as i64 > query.page_size {
                listed.truncate(query.page_size as usize);
                let (_, booked_position) = listed.last().expect("a full page is not empty");
                next_page_token = paging::listing_token(*booked_position);
            } else if let Some(before) = listing.stopped_before {
                // The scan cap ended this page early: it may be short, even
                // empty, and the next one goes on before where it stopped.
                next_page_token = paging::listing_token(before);
            }
            let reservations = listed
                .into_iter()
                .map(|(reservation, _)| reservation)
                .collect();
            Ok(pb::ListReservationsResponse {
                reservations,
                next_page_token,
                as_of_position,
            })
        }
        .await;
        observe("ListReservations", started, result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(hotel_id = request.get_ref().hotel_id))]
    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Result<Response<pb::GetAvailabilityResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let query =
                request::get_availability(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            self.get_availability_now(&query)
        }
        .await;
        observe("GetAvailability", started, result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(city = request.get_ref().city))]
    async fn search_availability(
        &self,
        request: Request<pb::SearchAvailabilityRequest>,
    ) -> Result<Response<wire::SearchAvailabilityResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let query =
                request::search_availability(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            let check_in = query.stay.from_text();
            let check_out = query.stay.to_text();
            let search = reads::Search {
                city_key: &query.city_key,
                check_in: &check_in,
                check_out: &check_out,
                nights: query.stay.nights(),
                guests: query.guests,
                after: query.after.clone(),
                limit: query.page_size + 1,
                max_examined: self.scan_limit,
            };
            let held = self
                .memory(query.min_position)
                .and_then(|state| Some((state.search(&search)?, state.position())));
            let (found, as_of_position) = match held {
                Some(held) => held,
                None => self.read(|tx| reads::search(tx, &search))?,
            };
            let mut results = found.results;
            let mut next_page_token = String::new();
            if results.len() as i64 > query.page_size {
                results.truncate(query.page_size as usize);
                let last = results.last().expect("a full page is not empty");
                next_page_token = paging::search_token(&last.key());
            } else if let Some(stopped_at) = found.stopped_at {
                // The scan cap ended this page early: it may be short, even
                // empty, and the next one goes on from where it stopped.
                next_page_token = paging::search_token(&stopped_at);
            }
            Ok(wire::SearchAvailabilityResponse {
                results: results.into_iter().map(|hit| hit.result).collect(),
                next_page_token,
                as_of_position,
            })
        }
        .await;
        observe("SearchAvailability", started, result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(
        hotel_id = request.get_ref().hotel_id,
        room_type_code = request.get_ref().room_type_code,
    ))]
    async fn get_waitlist(
        &self,
        request: Request<pb::GetWaitlistRequest>,
    ) -> Result<Response<pb::GetWaitlistResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let query = request::get_waitlist(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            let ((room_types, entries), as_of_position) = self.read(|tx| {
                let room_types =
                    reads::room_types(tx, &query.hotel_id, Some(&query.room_type_code))?;
                let entries = reads::waitlist(tx, &query.hotel_id, &query.room_type_code)?;
                Ok((room_types, entries))
            })?;
            if room_types.is_empty() {
                return Err(QueryError::not_found(
                    "room type",
                    format!("{}/{}", query.hotel_id, query.room_type_code),
                ));
            }
            Ok(pb::GetWaitlistResponse {
                entries,
                as_of_position,
            })
        }
        .await;
        observe("GetWaitlist", started, result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(hotel_id = request.get_ref().hotel_id))]
    async fn get_occupancy(
        &self,
        request: Request<pb::GetOccupancyRequest>,
    ) -> Result<Response<pb::GetOccupancyResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let query = request::get_occupancy(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            let from = query.range.from_text();
            let to = query.range.to_text();
            let ((hotel, (rooms, booked)), as_of_position) = self.read(|tx| {
                Ok((
                    reads::hotel(tx, &query.hotel_id)?,
                    reads::occupancy(tx, &query.hotel_id, &from, &to)?,
                ))
            })?;
            let Some(hotel) = hotel else {
                return Err(QueryError::not_found("hotel", &query.hotel_id));
            };
            Ok(pb::GetOccupancyResponse {
                hotel_id: query.hotel_id,
                nights: views::occupancy(rooms, &booked, query.range),
                hotel_version: hotel.version,
                as_of_position,
            })
        }
        .await;
        observe("GetOccupancy", started, result)
    }

    type WatchReservationStream = ReceiverStream<Result<pb::WatchReservationResponse, Status>>;

    #[tracing::instrument(skip_all, fields(reservation_id = request.get_ref().reservation_id))]
    async fn watch_reservation(
        &self,
        request: Request<pb::WatchReservationRequest>,
    ) -> Result<Response<Self::WatchReservationStream>, Status> {
        let started = Instant::now();
        let result = async {
            let query =
                request::watch_reservation(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            watch::reservation(self.clone(), query.reservation_id)
        }
        .await;
        observe("WatchReservation", started, result)
    }

    type WatchAvailabilityStream = ReceiverStream<Result<pb::GetAvailabilityResponse, Status>>;

    #[tracing::instrument(skip_all, fields(hotel_id = request.get_ref().hotel_id))]
    async fn watch_availability(
        &self,
        request: Request<pb::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        let started = Instant::now();
        let result = async {
            let query =
                request::watch_availability(request.get_ref()).map_err(QueryError::Invalid)?;
            self.fresh(&request, query.min_position).await?;
            watch::availability(self.clone(), query)
        }
        .await;
        observe("WatchAvailability", started, result)
    }

    #[tracing::instrument(skip_all)]
    async fn get_projection_status(
        &self,
        _request: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::GetProjectionStatusResponse>, Status> {
        let started = Instant::now();
        observe("GetProjectionStatus", started, Ok(self.projection.report()))
    }
}
