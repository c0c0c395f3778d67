//! Bearer-token authentication: `CommandService` needs the writer role,
//! `EventStream` the subscriber role, `admin` holds both; health stays open.

mod support;

use std::time::Duration;

use command_server::Config;
use hotel_common::{
    auth::Tokens,
    pb::{self, subscribe_response::Message},
};
use support::*;
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

const TOKENS: &str = "w-token=writer,r-token=reader,s-token=subscriber,ops-token=admin";

async fn start_with_tokens(db: &TestDb) -> TestServer {
    let mut config = Config::for_tests(&db.url);
    config.auth_tokens = Tokens::parse(TOKENS).expect("a valid spec");
    TestServer::start_with(config).await
}

/// `message` with `authorization: Bearer <token>`, or no header at all.
fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .expect("a valid metadata value"),
        );
    }
    request
}

/// Registers hotel `hotel_id` with a `DBL` room type, as the writer.
async fn hotel_with_rooms(server: &TestServer, hotel_id: &str) -> i64 {
    let mut client = server.commands().await;
    client
        .register_hotel(with_token(
            pb::RegisterHotelRequest {
                command_id: new_id(),
                hotel_id: hotel_id.to_owned(),
                name: "Auth Hotel".to_owned(),
                city: "Porto".to_owned(),
                correlation_id: String::new(),
            },
            Some("w-token"),
        ))
        .await
        .expect("the writer registers a hotel");
    client
        .add_room_type(with_token(
            pb::AddRoomTypeRequest {
                precondition: None,
                command_id: new_id(),
                hotel_id: hotel_id.to_owned(),
                code: "DBL".to_owned(),
                name: "Double".to_owned(),
                max_guests: 2,
                inventory: 3,
                nightly_rate: Some(pb::Money {
                    amount_minor: 10_000,
                    currency: "EUR".to_owned(),
                }),
                correlation_id: String::new(),
            },
            Some("w-token"),
        ))
        .await
        .expect("the writer adds a room type")
        .into_inner()
        .position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_need_a_token_with_the_writer_role() {
    let db = TestDb::create().await;
    let server = start_with_tokens(&db).await;
    let mut client = server.commands().await;

    for token in [None, Some("no-such-token"), Some("w-token2")] {
        let status = client
            .book_room(with_token(booking("h1", "DBL", 1, 2, "g1"), token))
            .await
            .expect_err("no valid token, no command");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    for token in ["r-token", "s-token"] {
        let status = client
            .book_room(with_token(booking("h1", "DBL", 1, 2, "g1"), Some(token)))
            .await
            .expect_err("only writers write");
        assert_eq!(status.code(), Code::PermissionDenied, "{token}: {status:?}");
        assert!(status.message().contains("writer"), "{status:?}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM events").await, 0);

    let added = hotel_with_rooms(&server, "h1").await;
    let booked = client
        .book_room(with_token(
            booking("h1", "DBL", 1, 2, "g1"),
            Some("w-token"),
        ))
        .await
        .expect("the writer books")
        .into_inner();
    assert_eq!(booked.position, added + 1);
    assert_eq!(booked.status, pb::ReservationStatus::Confirmed as i32);
    client
        .book_room(with_token(
            booking("h1", "DBL", 1, 2, "g2"),
            Some("ops-token"),
        ))
        .await
        .expect("admin holds the writer role");

    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_needs_a_token_with_the_subscriber_role() {
    let db = TestDb::create().await;
    let server = start_with_tokens(&db).await;
    let head = hotel_with_rooms(&server, "h1").await;
    let mut events = server.events().await;
    let from_start = || pb::SubscribeRequest {
        from_position: 1,
        filter: None,
        max_batch: 100,
        expected_event_id: String::new(),
    };

    let status = events
        .subscribe(with_token(from_start(), None))
        .await
        .expect_err("no token, no stream");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = events
        .subscribe(with_token(from_start(), Some("w-token")))
        .await
        .expect_err("writing is not subscribing");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("subscriber"), "{status:?}");
    let status = events
        .get_head(with_token(pb::GetHeadRequest {}, Some("r-token")))
        .await
        .expect_err("GetHead is part of the stream service");
    assert_eq!(status.code(), Code::PermissionDenied);

    for token in ["s-token", "ops-token"] {
        let reported = events
            .get_head(with_token(pb::GetHeadRequest {}, Some(token)))
            .await
            .expect("a subscriber reads the head")
            .into_inner()
            .head;
        assert_eq!(reported, head);
        let mut stream = events
            .subscribe(with_token(from_start(), Some(token)))
            .await
            .expect("a subscriber subscribes")
            .into_inner();
        let mut positions = Vec::new();
        while positions.last() != Some(&head) {
            let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("a message within 10 s")
                .expect("the stream is open")
                .expect("not an error");
            if let Some(Message::Events(batch)) = message.message {
                positions.extend(batch.events.iter().map(|event| event.position));
            }
        }
        assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "{token}");
    }

    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token() {
    let db = TestDb::create().await;
    let server = start_with_tokens(&db).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["", "hotel.v1.CommandService", "hotel.v1.EventStream"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers without a token")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    server.stop().await;
    db.cleanup().await;
}
