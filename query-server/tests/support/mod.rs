//! Test support: temporary directories, synthetic events, a scripted event
//! stream (a stand-in for the command server on the network), and a query
//! server running in process.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use hotel_common::pb::{
    self, event::Kind, event_stream_server::EventStream, query_service_client::QueryServiceClient,
    subscribe_response::Message,
};
use query_server::{Config, QueryServer, projector::Projection, queries::Watches};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, transport::Channel};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("query-server-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("read-model.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds envelopes with consecutive positions from 1, and each aggregate's
/// versions from 1, as the command server numbers them.
#[derive(Default)]
pub struct Events {
    /// The position of the last envelope built.
    pub position: i64,
    /// Fake commit clock, ms since the epoch.
    pub clock_ms: i64,
    /// The last version of each aggregate.
    versions: std::collections::HashMap<String, i64>,
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    hotel_common::timestamp_from_millis(ms)
}

impl Events {
    pub fn new() -> Self {
        Self {
            position: 0,
            clock_ms: 1_900_000_000_000,
            versions: std::collections::HashMap::new(),
        }
    }

    /// A builder that goes on where this one is (positions, clock and
    /// versions), for another task.
    pub fn continued(&self) -> Self {
        Self {
            position: self.position,
            clock_ms: self.clock_ms,
            versions: self.versions.clone(),
        }
    }

    /// A builder that goes on after `log` (positions, clock and versions),
    /// as the command server would after writing it.
    pub fn after(log: &[pb::EventEnvelope]) -> Self {
        let mut events = Self::new();
        for envelope in log {
            events.position = envelope.position;
            events.clock_ms =
                query_server::read_model::apply::millis(envelope.occurred_at.as_ref());
            let version = events
                .versions
                .entry(envelope.aggregate_id.clone())
                .or_default();
            *version = (*version).max(envelope.aggregate_version);
        }
        events
    }

    pub fn envelope(
        &mut self,
        aggregate_id: &str,
        hotel_id: &str,
        kind: Kind,
    ) -> pb::EventEnvelope {
        self.position += 1;
        self.clock_ms += 1000;
        let event_type = match &kind {
            Kind::HotelRegistered(_) => "HotelRegistered",
            Kind::RoomTypeAdded(_) => "RoomTypeAdded",
            Kind::RoomInventoryChanged(_) => "RoomInventoryChanged",
            Kind::ReservationConfirmed(_) => "ReservationConfirmed",
            Kind::ReservationWaitlisted(_) => "ReservationWaitlisted",
            Kind::ReservationPromoted(_) => "ReservationPromoted",
            Kind::ReservationCancelled(_) => "ReservationCancelled",
            Kind::GuestCheckedIn(_) => "GuestCheckedIn",
            Kind::GuestCheckedOut(_) => "GuestCheckedOut",
        };
        pb::EventEnvelope {
            position: self.position,
            event_id: uuid::Uuid::new_v4().to_string(),
            aggregate_kind: if hotel_id == aggregate_id {
                "hotel"
            } else {
                "reservation"
            }
            .into(),
            aggregate_id: aggregate_id.into(),
            aggregate_version: {
                let version = self.versions.entry(aggregate_id.to_owned()).or_default();
                *version += 1;
                *version
            },
            occurred_at: Some(timestamp(self.clock_ms)),
            command_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: String::new(),
            hotel_id: hotel_id.into(),
            event_type: event_type.into(),
            event: Some(pb::Event { kind: Some(kind) }),
            traceparent: String::new(),
        }
    }

    pub fn hotel(&mut self, hotel_id: &str, name: &str, city: &str) -> pb::EventEnvelope {
        self.envelope(
            hotel_id,
            hotel_id,
            Kind::HotelRegistered(pb::HotelRegistered {
                hotel_id: hotel_id.into(),
                name: name.into(),
                city: city.into(),
            }),
        )
    }

    pub fn room_type(
        &mut self,
        hotel_id: &str,
        code: &str,
        max_guests: i32,
        inventory: i32,
        rate: i64,
    ) -> pb::EventEnvelope {
        self.envelope(
            hotel_id,
            hotel_id,
            Kind::RoomTypeAdded(pb::RoomTypeAdded {
                hotel_id: hotel_id.into(),
                code: code.into(),
                name: format!("{code} room"),
                max_guests,
                inventory,
                nightly_rate: Some(pb::Money {
                    amount_minor: rate,
                    currency: "EUR".into(),
                }),
            }),
        )
    }

    pub fn inventory(
        &mut self,
        hotel_id: &str,
        code: &str,
        previous: i32,
        inventory: i32,
    ) -> pb::EventEnvelope {
        self.envelope(
            hotel_id,
            hotel_id,
            Kind::RoomInventoryChanged(pb::RoomInventoryChanged {
                hotel_id: hotel_id.into(),
                room_type_code: code.into(),
                previous_inventory: previous,
                inventory,
            }),
        )
    }

    pub fn booking(&self, stay: &Stay, priority: i32) -> pb::Booking {
        pb::Booking {
            reservation_id: stay.reservation_id.clone(),
            hotel_id: stay.hotel_id.clone(),
            room_type_code: stay.code.clone(),
            check_in: stay.check_in.clone(),
            check_out: stay.check_out.clone(),
            guest: Some(pb::Guest {
                guest_id: stay.guest_id.clone(),
                name: format!("Guest {}", stay.guest_id),
                email: format!("{}@example.com", stay.guest_id),
            }),
            guests: 2,
            priority,
            total_price: Some(pb::Money {
                amount_minor: 10_000,
                currency: "EUR".into(),
            }),
            booked_at: Some(timestamp(self.clock_ms + 1000)),
        }
    }

    pub fn confirmed(&mut self, stay: &Stay) -> pb::EventEnvelope {
        let booking = self.booking(stay, 0);
        self.envelope(
            &stay.reservation_id,
            &stay.hotel_id,
            Kind::ReservationConfirmed(pb::ReservationConfirmed {
                booking: Some(booking),
            }),
        )
    }

    pub fn waitlisted(&mut self, stay: &Stay, priority: i32) -> pb::EventEnvelope {
        let booking = self.booking(stay, priority);
        self.envelope(
            &stay.reservation_id,
            &stay.hotel_id,
            Kind::ReservationWaitlisted(pb::ReservationWaitlisted {
                booking: Some(booking),
            }),
        )
    }

    pub fn promoted(&mut self, stay: &Stay) -> pb::EventEnvelope {
        self.envelope(
            &stay.reservation_id,
            &stay.hotel_id,
            Kind::ReservationPromoted(pb::ReservationPromoted {
                reservation_id: stay.reservation_id.clone(),
                hotel_id: stay.hotel_id.clone(),
                room_type_code: stay.code.clone(),
                check_in: stay.check_in.clone(),
                check_out: stay.check_out.clone(),
            }),
        )
    }

    pub fn cancelled(&mut self, stay: &Stay, previous: pb::ReservationStatus) -> pb::EventEnvelope {
        self.envelope(
            &stay.reservation_id,
            &stay.hotel_id,
            Kind::ReservationCancelled(pb::ReservationCancelled {
                reservation_id: stay.reservation_id.clone(),
                hotel_id: stay.hotel_id.clone(),
                room_type_code: stay.code.clone(),
                check_in: stay.check_in.clone(),
                check_out: stay.check_out.clone(),
                previous_status: previous as i32,
                reason: "changed plans".into(),
            }),
        )
    }

    pub fn checked_in(&mut self, stay: &Stay) -> pb::EventEnvelope {
        self.envelope(
            &stay.reservation_id,
            &stay.hotel_id,
            Kind::GuestCheckedIn(pb::GuestCheckedIn {
                reservation_id: stay.reservation_id.clone(),
                hotel_id: stay.hotel_id.clone(),
                room_type_code: stay.code.clone(),
            }),
        )
    }

    pub fn checked_out(&mut self, stay: &Stay) -> pb::EventEnvelope {
        self.envelope(
            &stay.reservation_id,
            &stay.hotel_id,
            Kind::GuestCheckedOut(pb::GuestCheckedOut {
                reservation_id: stay.reservation_id.clone(),
                hotel_id: stay.hotel_id.clone(),
                room_type_code: stay.code.clone(),
            }),
        )
    }
}

/// One reservation's identity and nights.
#[derive(Debug, Clone)]
pub struct Stay {
    pub reservation_id: String,
    pub hotel_id: String,
    pub code: String,
    pub guest_id: String,
    pub check_in: String,
    pub check_out: String,
}

impl Stay {
    pub fn new(
        hotel_id: &str,
        code: &str,
        guest_id: &str,
        check_in: &str,
        check_out: &str,
    ) -> Self {
        Self {
            reservation_id: uuid::Uuid::new_v4().to_string(),
            hotel_id: hotel_id.into(),
            code: code.into(),
            guest_id: guest_id.into(),
            check_in: check_in.into(),
            check_out: check_out.into(),
        }
    }
}

/// A misbehaviour the scripted stream shows once, on its next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Leaves out the first event of the batch (a gap).
    Gap,
    /// Repeats the event before the batch at its start (a duplicate).
    Duplicate,
    /// Sends the batch, then fails the stream with UNAVAILABLE.
    Disconnect,
}

/// The state shared by the scripted stream's subscriptions.
#[derive(Default)]
struct StreamState {
    /// The log: position `i + 1` at index `i`.
    log: Vec<pb::EventEnvelope>,
    /// Faults still to show, in order, one per batch.
    faults: VecDeque<Fault>,
    /// `from_position` of every Subscribe, in order.
    subscriptions: Vec<i64>,
    /// When true, Subscribe fails with UNAVAILABLE (the server is "down").
    down: bool,
}

/// An `EventStream` that serves an in-memory log like the command server
/// does (catch-up in batches, CaughtUp, live tail, heartbeats), and can
/// misbehave on request.
#[derive(Clone)]
pub struct ScriptedStream {
    state: Arc<Mutex<StreamState>>,
    /// Bumped on every append, to wake live subscriptions.
    appended: watch::Sender<usize>,
    /// Most events per batch.
    pub max_batch: usize,
}

impl ScriptedStream {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            appended: watch::channel(0).0,
            max_batch: 100,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut StreamState) -> T) -> T {
        f(&mut self.state.lock().expect("stream state lock"))
    }

    /// Appends events (their positions must continue the log).
    pub fn append(&self, events: impl IntoIterator<Item = pb::EventEnvelope>) {
        let len = self.with(|s| {
            for event in events {
                assert_eq!(event.position as usize, s.log.len() + 1, "log positions");
                s.log.push(event);
            }
            s.log.len()
        });
        self.appended.send_replace(len);
    }

    pub fn head(&self) -> i64 {
        self.with(|s| s.log.len() as i64)
    }

    /// Replaces the event at its position (a log that was fixed).
    pub fn replace(&self, event: pb::EventEnvelope) {
        self.with(|s| {
            let index = event.position as usize - 1;
            s.log[index] = event;
        });
    }

    pub fn inject(&self, fault: Fault) {
        self.with(|s| s.faults.push_back(fault));
    }

    pub fn subscriptions(&self) -> Vec<i64> {
        self.with(|s| s.subscriptions.clone())
    }

    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
    }

    /// Serves on a free port until dropped handle; returns its URL.
    pub async fn serve(&self) -> (String, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = pb::event_stream_server::EventStreamServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("scripted stream serves");
        });
        (format!("http://{addr}"), stop)
    }

    async fn feed(
        self,
        from: i64,
        max_batch: usize,
        out: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    ) {
        let mut next = from.max(1);
        let mut appended = self.appended.subscribe();
        let mut caught_up = false;
        loop {
            let (mut events, head, fault) = self.with(|s| {
                let start = (next - 1) as usize;
                let events: Vec<_> = s.log.iter().skip(start).take(max_batch).cloned().collect();
                let fault = if events.is_empty() {
                    None
                } else {
                    s.faults.pop_front()
                };
                (events, s.log.len() as i64, fault)
            });
            if events.is_empty() {
                if !caught_up {
                    caught_up = true;
                    let message = Message::CaughtUp(pb::CaughtUp {
                        head,
                        through_position: next - 1,
                    });
                    if out
                        .send(Ok(pb::SubscribeResponse {
                            message: Some(message),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    _ = appended.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        let message = Message::Heartbeat(pb::Heartbeat {
                            head,
                            time: Some(hotel_common::timestamp_now()),
                            through_position: next - 1,
                        });
                        if out.send(Ok(pb::SubscribeResponse { message: Some(message) })).await.is_err() {
                            return;
                        }
                    }
                    _ = out.closed() => return,
                }
                continue;
            }
            next += events.len() as i64;
            match fault {
                Some(Fault::Gap) => {
                    events.remove(0);
                }
                Some(Fault::Duplicate) => {
                    let before = events[0].position - 1;
                    if before >= 1 {
                        let repeat = self.with(|s| s.log[(before - 1) as usize].clone());
                        events.insert(0, repeat);
                    }
                }
                _ => {}
            }
            let through_position = events.last().map_or(next - 1, |e| e.position);
            let batch = Message::Events(pb::EventBatch {
                events,
                through_position,
                head,
            });
            if out
                .send(Ok(pb::SubscribeResponse {
                    message: Some(batch),
                }))
                .await
                .is_err()
            {
                return;
            }
            if fault == Some(Fault::Disconnect) {
                let _ = out
                    .send(Err(Status::unavailable("scripted disconnect")))
                    .await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl EventStream for ScriptedStream {
    type SubscribeStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let down = self.with(|s| {
            s.subscriptions.push(request.from_position);
            s.down
        });
        if down {
            return Err(Status::unavailable("scripted outage"));
        }
        let max_batch = match request.max_batch {
            0 => self.max_batch,
            n => (n as usize).min(self.max_batch),
        };
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(self.clone().feed(request.from_position, max_batch, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_head(
        &self,
        _request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::GetHeadResponse>, Status> {
        Ok(Response::new(pb::GetHeadResponse { head: self.head() }))
    }
}

/// A query server running in this process against a scripted stream.
pub struct App {
    pub addr: SocketAddr,
    pub projection: Arc<Projection>,
    /// The server's open watches and their feeds.
    pub watches: Arc<Watches>,
    pub stream: ScriptedStream,
    stop_server: Option<oneshot::Sender<()>>,
    stop_stream: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl App {
    /// Starts a stream serving `stream` and a query server with its file in `dir`.
    pub async fn spawn(dir: &TempDir, stream: ScriptedStream) -> Self {
        let (url, stop_stream) = stream.serve().await;
        Self::spawn_with_url(dir, stream, url, Some(stop_stream)).await
    }

    /// Like [`App::spawn`], with settings changed by `configure`.
    pub async fn spawn_configured(
        dir: &TempDir,
        stream: ScriptedStream,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let (url, stop_stream) = stream.serve().await;
        let mut config = Config::for_tests(dir.db(), url);
        configure(&mut config);
        Self::start(config, stream, Some(stop_stream)).await
    }

    pub async fn spawn_with_url(
        dir: &TempDir,
        stream: ScriptedStream,
        url: String,
        stop_stream: Option<oneshot::Sender<()>>,
    ) -> Self {
        Self::start(Config::for_tests(dir.db(), url), stream, stop_stream).await
    }

    async fn start(
        config: Config,
        stream: ScriptedStream,
        stop_stream: Option<oneshot::Sender<()>>,
    ) -> Self {
        let server = QueryServer::build(config)
            .await
            .expect("query server builds");
        let addr = server.local_addr();
        let projection = server.projection();
        let watches = server.watches();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            projection,
            watches,
            stream,
            stop_server: Some(stop_server),
            stop_stream,
            task: Some(task),
        }
    }

    pub async fn client(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to the query server")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// Waits until the projection has applied `position`.
    pub async fn wait_for(&self, position: i64) {
        let mut checkpoint = self.projection.watch_checkpoint();
        tokio::time::timeout(
            Duration::from_secs(10),
            checkpoint.wait_for(|c| *c >= position),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "checkpoint {} never reached {position}",
                self.projection.checkpoint()
            )
        })
        .expect("projection alive");
    }

    /// Stops the query server (and the stream) and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("the server stops within its grace period")
                .expect("server task")
                .expect("server ran cleanly");
        }
        if let Some(stop) = self.stop_stream.take() {
            let _ = stop.send(());
        }
    }
}

/// Retries `check` until it returns true or `patience` passes.
pub async fn eventually(patience: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
