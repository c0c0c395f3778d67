//! Both real binaries stop with exit status 0 on SIGTERM after serving, with
//! no allocator abort on the way out.
//!
//! Shutdown is where every service is dropped. Release builds of rustc 1.95
//! miscompiled `common::server::reflection_services` (see its
//! `reflection_builder`): the two reflection services shared one list of
//! names, and dropping them at exit was a double free, so both servers died
//! with SIGABRT ("double free or corruption") or SIGSEGV on every SIGTERM.
//! Debug builds were not affected; `cargo test --release --test
//! e2e_shutdown` runs this against the release binaries.

mod support;

use std::{process::ExitStatus, time::Duration};

use hotel_common::pb;
use support::*;

/// What glibc's allocator prints before it aborts the process.
const ALLOCATOR_ABORTS: [&str; 4] = ["double free", "free():", "corruption", "malloc"];

fn assert_clean_exit(process: &Process, exit: ExitStatus) {
    let logs = process.logs();
    assert!(
        exit.success(),
        "{} should exit 0 on SIGTERM, got {exit:?}; its log:\n{logs}",
        process.name
    );
    for message in ALLOCATOR_ABORTS {
        assert!(
            !logs.contains(message),
            "{} printed {message:?} at shutdown; its log:\n{logs}",
            process.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_servers_exit_zero_on_sigterm_after_serving() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    // The metrics exporter on (a free port), as in production; the query
    // server with it off, as in the tests and the benchmark.
    let mut command = Process::start(
        "command-server",
        &[
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--database-url".into(),
            db.url.clone(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--heartbeat-ms".into(),
            "200".into(),
        ],
        logs.path(),
    );
    let read_model = logs.path().join("read-model.db");
    let mut query = query_server(&command.url(), &read_model, logs.path());

    let mut commands = command.commands().await;
    register_hotel(&mut commands, "sigterm", "Sigterm").await;
    add_room_type(&mut commands, "sigterm", "DBL", 2).await;
    let booked = commands
        .book_room(booking("sigterm", "DBL", 1, 3, "ana"))
        .await
        .expect("book")
        .into_inner();

    // The query server has projected the booking and answers from it.
    let mut queries = query.queries().await;
    let mut request = tonic::Request::new(pb::GetReservationRequest {
        reservation_id: booked.reservation_id.clone(),
        min_position: booked.position,
    });
    request.set_timeout(Duration::from_secs(10));
    let reply = queries
        .get_reservation(request)
        .await
        .expect("the query server reads its own writes")
        .into_inner();
    assert!(reply.as_of_position >= booked.position);
    drop(queries);
    drop(commands);

    // The query server first (it follows the command server's stream), then
    // the command server.
    let exit = query.terminate();
    assert_clean_exit(&query, exit);
    assert!(
        query.logs().contains("query server stopped"),
        "the query server reached the end of its shutdown:\n{}",
        query.logs()
    );
    let exit = command.terminate();
    assert_clean_exit(&command, exit);

    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_server_exits_zero_when_stopped_before_its_subscriber() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let mut command = command_server(&db, logs.path());
    let read_model = logs.path().join("read-model.db");
    let mut query = query_server(&command.url(), &read_model, logs.path());
    let mut commands = command.commands().await;
    register_hotel(&mut commands, "sigterm2", "Sigterm").await;
    drop(commands);

    // With a live subscription open: the command server ends the stream.
    let exit = command.terminate();
    assert_clean_exit(&command, exit);
    let exit = query.terminate();
    assert_clean_exit(&query, exit);

    db.cleanup().await;
}

/// A SIGTERM sent the moment a server's address is read is a clean
/// shutdown: the handlers are installed before the "listening on" line.
/// They used to be installed when the shutdown future was first polled,
/// inside `run_until_stopped`, after that line; a signal in between killed
/// the query server (exit by signal 15), seen once in a full run of the
/// suite. The window was short and this test does not reproduce it
/// reliably: it guards the behaviour rather than proving the race gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_right_after_the_address_is_announced_is_a_clean_stop() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let mut command = command_server(&db, logs.path());
    for round in 0..5 {
        let mut early = command_server(&db, logs.path());
        let exit = early.terminate();
        assert_clean_exit(&early, exit);
        let read_model = logs.path().join(format!("early-{round}.db"));
        let mut query = query_server(&command.url(), &read_model, logs.path());
        let exit = query.terminate();
        assert_clean_exit(&query, exit);
    }
    let exit = command.terminate();
    assert_clean_exit(&command, exit);
    db.cleanup().await;
}
