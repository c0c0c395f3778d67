//! A command id is an idempotency key: a retry returns the first outcome and
//! writes nothing, even when it races the original.

mod support;

use futures::future::join_all;
use hotel_common::pb;
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_command_returns_the_first_outcome_and_writes_nothing() {
    let db = TestDb::create().await;
    let first = TestServer::start(&db).await;
    let second = TestServer::start(&db).await;
    let mut client = first.commands().await;
    register_hotel(&mut client, "h1", "Coimbra").await;
    add_room_type(&mut client, "h1", "DBL", 2).await;

    // Sequential retry.
    let request = booking("h1", "DBL", 1, 3, "ana");
    let original = client
        .book_room(request.clone())
        .await
        .expect("book")
        .into_inner();
    let events = db.count("SELECT COUNT(*) FROM events").await;
    let retry = client
        .book_room(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retry.reservation_id, original.reservation_id);
    assert_eq!(retry.position, original.position);
    assert!(retry.replayed && !original.replayed);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM events").await,
        events,
        "a retry writes no event"
    );

    // Concurrent retries through two servers.
    let racing = booking("h1", "DBL", 2, 4, "bea");
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut client = if i % 2 == 0 {
            first.commands().await
        } else {
            second.commands().await
        };
        let request = racing.clone();
        calls.push(async move { client.book_room(request).await });
    }
    let replies: Vec<pb::BookRoomResponse> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("each racing call succeeds").into_inner())
        .collect();
    assert!(
        replies
            .iter()
            .all(|r| r.reservation_id == replies[0].reservation_id)
    );
    assert_eq!(
        replies.iter().filter(|r| !r.replayed).count(),
        1,
        "exactly one call did the work"
    );
    let reservations = db
        .count("SELECT COUNT(*) FROM reservations WHERE guest_id = 'bea'")
        .await;
    assert_eq!(reservations, 1);
    let bea_events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE command_id = ?")
        .bind(&racing.command_id)
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(bea_events, 1, "one set of events");

    // The same id for a different command is refused.
    let mut reused = booking("h1", "DBL", 5, 6, "cid");
    reused.command_id = request.command_id.clone();
    let status = client.book_room(reused).await.expect_err("reused id");
    assert_eq!(status.code(), Code::Aborted);

    assert_gap_free(&db).await;
    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_commands_run_asynchronously_and_report_their_outcome() {
    let db = TestDb::create().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Aveiro").await;
    add_room_type(&mut client, "h1", "DBL", 1).await;

    let book = booking("h1", "DBL", 1, 2, "ana");
    let submitted = client
        .submit_command(pb::SubmitCommandRequest {
            priority: 5,
            command: Some(pb::submit_command_request::Command::BookRoom(book.clone())),
        })
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(submitted.command_id, book.command_id);

    let status = wait_until_final(&mut client, &book.command_id).await;
    assert_eq!(status.state, pb::CommandState::Succeeded as i32);
    let Some(pb::get_command_status_response::Result::BookRoom(reply)) = status.result else {
        panic!("a BookRoom result, got {status:?}");
    };
    assert_eq!(reply.status, pb::ReservationStatus::Confirmed as i32);
    assert_eq!(status.position, reply.position);

    // The synchronous call with the same id replays the outcome.
    let replay = client
        .book_room(book.clone())
        .await
        .expect("replay")
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.reservation_id, reply.reservation_id);

    // A submitted command that a rule refuses is FAILED with the reason.
    let check_out = pb::CheckOutRequest {
        precondition: None,
        command_id: new_id(),
        reservation_id: reply.reservation_id.clone(),
        correlation_id: String::new(),
    };
    client
        .submit_command(pb::SubmitCommandRequest {
            priority: 0,
            command: Some(pb::submit_command_request::Command::CheckOut(
                check_out.clone(),
            )),
        })
        .await
        .expect("submit");
    let failed = wait_until_final(&mut client, &check_out.command_id).await;
    assert_eq!(failed.state, pb::CommandState::Failed as i32);
    let error = failed.error.expect("an error");
    assert_eq!(error.code, Code::FailedPrecondition as i32);

    // Invalid submissions are refused at once.
    let invalid = client
        .submit_command(pb::SubmitCommandRequest {
            priority: 500,
            command: None,
        })
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let fields: Vec<String> = hotel_common::validate::field_violations(&invalid)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert_eq!(fields, ["priority", "command"]);

    let unknown = client
        .get_command_status(pb::GetCommandStatusRequest {
            command_id: new_id(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_command_that_can_no_longer_run_fails_with_the_reason() {
    use prost::Message;
    let db = TestDb::create().await;
    // Accepted long ago by a process that stopped before running it; its
    // stay has started since.
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    register_hotel(&mut client, "h1", "Viseu").await;
    add_room_type(&mut client, "h1", "DBL", 1).await;
    let stale = booking("h1", "DBL", -3, -1, "late");
    sqlx::query(
        "INSERT INTO commands (command_id, kind, request, state, priority, position, accepted_at_ms) \
         VALUES (?, 'BookRoom', ?, 'PENDING', 0, 0, 0)",
    )
    .bind(&stale.command_id)
    .bind(stale.encode_to_vec())
    .execute(&db.pool)
    .await
    .expect("store a pending command");

    // A new process's dispatcher claims it when it starts.
    server.stop().await;
    let server = TestServer::start(&db).await;
    let mut client = server.commands().await;
    let status = wait_until_final(&mut client, &stale.command_id).await;
    assert_eq!(status.state, pb::CommandState::Failed as i32, "{status:?}");
    let error = status.error.expect("an error");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(error.message.contains("check_in"), "{}", error.message);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM reservations").await,
        0,
        "nothing was booked"
    );
    server.stop().await;
    db.cleanup().await;
}
