//! The real `query-server` binary bounds its live queries: `--max-watchers`
//! refuses one watch too many with RESOURCE_EXHAUSTED, and on SIGTERM every
//! open watch ends with UNAVAILABLE (watch again elsewhere), not OK.

mod support;

use std::time::Duration;

use hotel_common::pb;
use support::*;
use tonic::Code;

#[tokio::test]
async fn watches_are_capped_and_end_unavailable_on_sigterm() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let mut commands = command.commands().await;
    register_hotel(&mut commands, "capped", "Lagos").await;
    let position = add_room_type(&mut commands, "capped", "DBL", 2).await;
    let mut query = Process::start(
        "query-server",
        &[
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--command-server-url".into(),
            command.url(),
            "--database-path".into(),
            data.path().join("rm.db").display().to_string(),
            "--metrics-addr".into(),
            "off".into(),
            "--max-watchers".into(),
            "2".into(),
        ],
        logs.path(),
    );
    let mut queries = query.queries().await;
    let watch = |from: i64| pb::WatchAvailabilityRequest {
        hotel_id: "capped".into(),
        room_type_code: "DBL".into(),
        from_date: day(from),
        to_date: day(from + 1),
        min_position: position,
    };
    let mut open = Vec::new();
    for from in [3, 4] {
        let mut updates = queries
            .watch_availability(watch(from))
            .await
            .expect("a watch under the cap")
            .into_inner();
        updates.message().await.expect("ok").expect("first answer");
        open.push(updates);
    }
    let refused = queries
        .watch_availability(watch(5))
        .await
        .expect_err("one watch too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-watchers"), "{refused:?}");

    let stopped = std::thread::spawn(move || query.terminate());
    for mut updates in open {
        let end = tokio::time::timeout(Duration::from_secs(15), updates.message())
            .await
            .expect("the watch ends on SIGTERM")
            .expect_err("not OK");
        assert_eq!(end.code(), Code::Unavailable, "{end:?}");
        assert!(end.message().contains("watch again"), "{end:?}");
    }
    assert!(stopped.join().expect("terminate").success());
}
