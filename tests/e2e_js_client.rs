//! A client in another language: the Node.js example (`examples/js`), which
//! loads `proto/` at run time with @grpc/proto-loader, against the real
//! command-server and query-server binaries. It books a room, reads it back
//! with `min_position`, watches availability change and decodes the
//! `google.rpc.BadRequest` of an invalid booking; this test checks each step
//! from the JSON lines it prints.

mod support;

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_books_reads_its_write_watches_and_decodes_bad_request() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = repo.join("examples/js");
    assert!(
        example.join("node_modules/@grpc/grpc-js").is_dir(),
        "examples/js/node_modules is missing: run `npm ci` in examples/js (scripts/test.sh does)"
    );
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let query = query_server(
        &command.url(),
        &logs.path().join("read-model.db"),
        logs.path(),
    );

    let run = Command::new("node")
        .arg(example.join("hotel_client.js"))
        .arg(command.addr.to_string())
        .arg(query.addr.to_string())
        .output()
        .expect("node (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the Node client failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let step = |name: &str| -> Value {
        stdout
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
            .find(|line| line["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in:\n{stdout}"))
    };
    let position = |value: &Value| -> i64 {
        value
            .as_i64()
            .unwrap_or_else(|| panic!("a position, not {value}"))
    };

    // The booking is confirmed, at a position.
    let booked = step("booked");
    assert_eq!(booked["status"], "RESERVATION_STATUS_CONFIRMED", "{booked}");
    let booked_at = position(&booked["position"]);
    assert!(booked_at > 0, "{booked}");
    let reservation_id = booked["reservation_id"].as_str().expect("an id");
    assert!(!reservation_id.is_empty());

    // Read-your-write: the query server's answer includes the booking.
    let read = step("read");
    assert_eq!(read["reservation_id"], reservation_id, "{read}");
    assert_eq!(read["status"], "RESERVATION_STATUS_CONFIRMED", "{read}");
    assert!(position(&read["as_of_position"]) >= booked_at, "{read}");

    // The watch: one room of three booked on both nights, then two after the
    // second booking.
    let first = step("watch_first");
    assert_eq!(first["booked"], serde_json::json!([1, 1]), "{first}");
    assert!(position(&first["as_of_position"]) >= booked_at, "{first}");
    let change = step("watch_change");
    assert_eq!(change["booked"], serde_json::json!([2, 2]), "{change}");
    assert!(
        position(&change["as_of_position"]) >= position(&change["second_position"]),
        "{change}"
    );
    assert!(position(&change["second_position"]) > booked_at, "{change}");

    // The invalid booking: INVALID_ARGUMENT, and a BadRequest naming exactly
    // the four bad fields, each with a description.
    let invalid = step("invalid");
    assert_eq!(invalid["code"], "INVALID_ARGUMENT", "{invalid}");
    let bad_request = &invalid["bad_request"];
    assert_eq!(bad_request["code"], 3, "{invalid}");
    let violations = bad_request["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("field violations in {invalid}"));
    let fields: BTreeSet<&str> = violations
        .iter()
        .map(|violation| violation["field"].as_str().expect("a field name"))
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["command_id", "hotel_id", "guest.email", "guests"]),
        "{invalid}"
    );
    assert!(
        violations
            .iter()
            .all(|violation| !violation["description"].as_str().unwrap_or("").is_empty()),
        "{invalid}"
    );

    // Two bookings, and nothing from the invalid one.
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reservations")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(stored, 2);
    drop(query);
    drop(command);
    db.cleanup().await;
}
