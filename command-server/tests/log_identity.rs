//! Subscribe checks that the subscriber resumes on the history it holds:
//! the event it names at `from_position - 1` must be the log's.

mod support;

use hotel_common::pb;
use support::*;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_naming_another_event_is_refused_as_log_rewritten() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut commands = server.commands().await;
    register_hotel(&mut commands, "h1", "Aveiro").await;
    let position = add_room_type(&mut commands, "h1", "DBL", 3).await;
    let held: String = sqlx::query_scalar("SELECT event_id FROM events WHERE position = ?")
        .bind(position)
        .fetch_one(&db.pool)
        .await
        .expect("event id");
    let mut events = server.events().await;
    let request = |expected: &str| pb::SubscribeRequest {
        from_position: position + 1,
        filter: None,
        max_batch: 10,
        expected_event_id: expected.to_owned(),
    };

    // The event it holds: resumed.
    events
        .subscribe(request(&held))
        .await
        .expect("the same history");
    // None named: nothing to check (a new subscriber).
    events.subscribe(request("")).await.expect("no expectation");
    // Another event at that position: the log was rewritten.
    let other = new_id();
    let refused = events
        .subscribe(request(&other))
        .await
        .expect_err("another history");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "LOG_REWRITTEN");
    assert_eq!(info.domain, "hotel.v1");
    assert!(refused.message().contains(&held), "{}", refused.message());
    server.stop().await;
    db.cleanup().await;
}
