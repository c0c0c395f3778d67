//! A read model never follows a rewritten log (issue 13): after the command
//! database is restored from an earlier copy and written again past the
//! query server's checkpoint, the query server notices on its next
//! subscription (the event it holds at its checkpoint is not the log's),
//! stops there visibly, never mixes the two histories, and a rebuild brings
//! it onto the new one: asked for by an operator, or by itself with
//! `--rebuild-on-rewrite`.

mod support;

use std::time::Duration;

use hotel_common::pb::{
    self, query_admin_service_client::QueryAdminServiceClient,
    query_service_client::QueryServiceClient,
};
use sqlx::{Connection, Executor, MySqlConnection};
use support::*;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PATIENCE: Duration = Duration::from_secs(20);

/// Copies every table of `from` into a new database: a backup, as taken.
async fn copy_database(from: &TestDb) -> TestDb {
    let copy = TestDb::create().await;
    let mut conn = MySqlConnection::connect(&from.url).await.expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
    )
    .bind(&from.name)
    .fetch_all(&mut conn)
    .await
    .expect("tables");
    for table in tables {
        let create = format!(
            "CREATE TABLE `{}`.`{table}` LIKE `{}`.`{table}`",
            copy.name, from.name
        );
        conn.execute(sqlx::AssertSqlSafe(create))
            .await
            .expect("create");
        let fill = format!(
            "INSERT INTO `{}`.`{table}` SELECT * FROM `{}`.`{table}`",
            copy.name, from.name
        );
        conn.execute(sqlx::AssertSqlSafe(fill)).await.expect("copy");
    }
    copy
}

async fn status(queries: &mut QueryServiceClient<Channel>) -> pb::GetProjectionStatusResponse {
    queries
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn book(
    commands: &mut pb::command_service_client::CommandServiceClient<Channel>,
    guest: &str,
) -> pb::BookRoomResponse {
    commands
        .book_room(booking("h1", "DBL", 5, 7, guest))
        .await
        .expect("booked")
        .into_inner()
}

async fn reservation_at(
    queries: &mut QueryServiceClient<Channel>,
    reservation_id: &str,
) -> Result<pb::GetReservationResponse, tonic::Status> {
    queries
        .get_reservation(pb::GetReservationRequest {
            reservation_id: reservation_id.to_owned(),
            min_position: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the query server reports `state`; returns that status.
async fn wait_for_state(
    queries: &QueryServiceClient<Channel>,
    state: pb::ProjectionState,
) -> pb::GetProjectionStatusResponse {
    eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = status(&mut queries).await;
            (status.state == state as i32).then_some(status)
        }
    })
    .await
}

/// A query server whose read model holds one booking more than a backup
/// of the command database; the command server that wrote it is stopped.
struct ShorterBackup {
    logs: tempfile::TempDir,
    _data: tempfile::TempDir,
    db: TestDb,
    /// Where the stopped command server listened (the query server's URL).
    address: String,
    query: Process,
    queries: QueryServiceClient<Channel>,
    /// The booking the backup holds.
    kept: pb::BookRoomResponse,
    backup: TestDb,
    /// The booking after the backup, which the read model has applied.
    lost: pb::BookRoomResponse,
}

async fn shorter_backup(query_flags: &[&str]) -> ShorterBackup {
    let logs = tempfile::tempdir().expect("log dir");
    let data = tempfile::tempdir().expect("data dir");
    let db = TestDb::create().await;
    let mut command = command_server(&db, logs.path());
    let address = command.addr.to_string();
    let query = query_server_with(
        &command.url(),
        &data.path().join("rm.db"),
        query_flags,
        logs.path(),
    );
    let mut commands = command.commands().await;
    let queries = query.queries().await;
    register_hotel(&mut commands, "h1", "Lagos").await;
    add_room_type(&mut commands, "h1", "DBL", 100).await;
    let kept = book(&mut commands, "kept").await;
    let backup = copy_database(&db).await;
    let lost = book(&mut commands, "lost").await;
    eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move { (status(&mut queries).await.checkpoint == lost.position).then_some(()) }
    })
    .await;
    assert!(command.terminate().success());
    ShorterBackup {
        logs,
        _data: data,
        db,
        address,
        query,
        queries,
        kept,
        backup,
        lost,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_and_rewritten_log_stops_the_read_model_until_rebuilt() {
    let logs = tempfile::tempdir().expect("log dir");
    let data = tempfile::tempdir().expect("data dir");
    let db = TestDb::create().await;
    let mut command = command_server(&db, logs.path());
    let address = command.addr.to_string();
    let query = query_server(&command.url(), &data.path().join("rm.db"), logs.path());
    let mut commands = command.commands().await;
    let mut queries = query.queries().await;
    register_hotel(&mut commands, "h1", "Coimbra").await;
    add_room_type(&mut commands, "h1", "DBL", 100).await;
    book(&mut commands, "before").await;

    // The backup, then more commits that it will not have.
    let backup = copy_database(&db).await;
    let mut lost = Vec::new();
    for i in 0..3 {
        lost.push(book(&mut commands, &format!("lost{i}")).await);
    }
    let checkpoint = lost.last().expect("three").position;
    eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move { (status(&mut queries).await.checkpoint == checkpoint).then_some(()) }
    })
    .await;
    let exit = command.terminate();
    assert!(exit.success());

    // Restored: the backup is written again, past the checkpoint, with
    // other events at the same positions.
    let mut restored = command_server(&backup, logs.path());
    let mut commands = restored.commands().await;
    let mut rewritten = Vec::new();
    for i in 0..5 {
        rewritten.push(book(&mut commands, &format!("new{i}")).await);
    }
    assert!(rewritten.last().expect("five").position > checkpoint);
    restored.terminate();
    let _restored = command_server_on(&backup, &address, logs.path());

    // The query server resubscribes, is told the log is not its history,
    // and stops there: visibly, never applying the other history.
    let stopped = wait_for_state(&queries, pb::ProjectionState::Stopped).await;
    assert_eq!(stopped.checkpoint, checkpoint);
    let stop = stopped.stopped.expect("why it stopped");
    assert_eq!(stop.reason, "LOG_REWRITTEN");
    assert_eq!(stop.position, checkpoint);
    assert!(stop.message.contains("rewritten"), "{}", stop.message);
    let health = HealthClient::new(query.channel().await)
        .check(HealthCheckRequest {
            service: "hotel.v1.QueryService".to_owned(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, 2, "NOT_SERVING while stopped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&mut queries).await.checkpoint, checkpoint);
    // It answers from the history it has, and none of the other.
    for reply in &lost {
        let held = reservation_at(&mut queries, &reply.reservation_id)
            .await
            .expect("the old history is still served");
        assert_eq!(held.as_of_position, checkpoint);
    }
    for reply in &rewritten {
        let missing = reservation_at(&mut queries, &reply.reservation_id)
            .await
            .expect_err("nothing of the rewritten history");
        assert_eq!(missing.code(), Code::NotFound);
    }

    // A rebuild moves it onto the log as it now is.
    let mut admin = QueryAdminServiceClient::new(query.channel().await);
    let rebuilt = admin
        .rebuild_read_model(pb::RebuildReadModelRequest {})
        .await
        .expect("rebuild")
        .into_inner();
    let head = rewritten.last().expect("five").position;
    assert!(rebuilt.checkpoint >= head - 1, "{rebuilt:?}");
    let live = eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = status(&mut queries).await;
            (status.state == pb::ProjectionState::Live as i32 && status.checkpoint == head)
                .then_some(status)
        }
    })
    .await;
    assert!(live.stopped.is_none());
    for reply in &rewritten {
        reservation_at(&mut queries, &reply.reservation_id)
            .await
            .expect("the new history after the rebuild");
    }
    for reply in &lost {
        let gone = reservation_at(&mut queries, &reply.reservation_id)
            .await
            .expect_err("the lost commits are gone with the old file");
        assert_eq!(gone.code(), Code::NotFound);
    }
    backup.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_restored_shorter_than_the_read_model_stops_it_and_a_rebuild_goes_back() {
    let ShorterBackup {
        logs,
        _data,
        db,
        address,
        query,
        mut queries,
        kept,
        backup,
        lost,
    } = shorter_backup(&[]).await;

    // The backup comes back as it was: its log ends before the checkpoint.
    let _restored = command_server_on(&backup, &address, logs.path());
    let stopped = wait_for_state(&queries, pb::ProjectionState::Stopped).await;
    assert_eq!(stopped.stopped.expect("why").reason, "LOG_REWRITTEN");
    assert_eq!(stopped.checkpoint, lost.position);

    // The rebuild follows the log as it is: the checkpoint goes back.
    let mut admin = QueryAdminServiceClient::new(query.channel().await);
    let rebuilt = tokio::time::timeout(
        PATIENCE,
        admin.rebuild_read_model(pb::RebuildReadModelRequest {}),
    )
    .await
    .expect("the rebuild ends")
    .expect("rebuilt")
    .into_inner();
    assert_eq!(rebuilt.checkpoint, kept.position);
    let live = wait_for_state(&queries, pb::ProjectionState::Live).await;
    assert_eq!(live.checkpoint, kept.position);
    assert!(live.stopped.is_none());
    let held = reservation_at(&mut queries, &kept.reservation_id)
        .await
        .expect("kept");
    assert_eq!(held.as_of_position, kept.position);
    let gone = reservation_at(&mut queries, &lost.reservation_id)
        .await
        .expect_err("the lost booking is gone");
    assert_eq!(gone.code(), Code::NotFound);
    backup.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rebuild_on_rewrite_a_read_model_moves_onto_a_restored_log_by_itself() {
    let ShorterBackup {
        logs,
        _data,
        db,
        address,
        query,
        mut queries,
        kept,
        backup,
        lost,
    } = shorter_backup(&["--rebuild-on-rewrite"]).await;

    // The backup comes back (shorter than the read model) and is written
    // again: the query server notices, and rebuilds with nobody asking.
    let restored = command_server_on(&backup, &address, logs.path());
    let mut commands = restored.commands().await;
    let after = book(&mut commands, "after").await;
    assert_eq!(
        after.position, lost.position,
        "the same position, another event"
    );
    let live = eventually(PATIENCE, || {
        let mut queries = queries.clone();
        async move {
            let status = status(&mut queries).await;
            (status.state == pb::ProjectionState::Live as i32
                && status.checkpoint == after.position
                && status.stopped.is_none())
            .then_some(status)
        }
    })
    .await;
    assert_eq!(live.head, after.position);
    assert!(
        query
            .logs()
            .contains("rebuilding the read model from position 0"),
        "the rebuild was automatic: {}",
        query.logs()
    );
    reservation_at(&mut queries, &kept.reservation_id)
        .await
        .expect("the shared history");
    reservation_at(&mut queries, &after.reservation_id)
        .await
        .expect("the new history");
    let gone = reservation_at(&mut queries, &lost.reservation_id)
        .await
        .expect_err("the lost commit is gone with the old file");
    assert_eq!(gone.code(), Code::NotFound);
    drop(restored);
    backup.cleanup().await;
    db.cleanup().await;
}
