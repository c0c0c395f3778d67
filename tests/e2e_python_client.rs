//! A client in another language: Python code generated from `proto/` with
//! grpcio-tools books a room on the real command-server binary.

mod support;

use std::{path::Path, process::Command};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_books_a_room() {
    let logs = tempfile::tempdir().expect("temp dir");
    let generated = tempfile::tempdir().expect("temp dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protoc = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo.join("proto"))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .args([
            "hotel/v1/types.proto",
            "hotel/v1/commands.proto",
            "hotel/v1/events.proto",
        ])
        .current_dir(repo.join("proto"))
        .output()
        .expect("python3 with grpcio-tools (scripts/test.sh installs it)");
    assert!(
        protoc.status.success(),
        "{}",
        String::from_utf8_lossy(&protoc.stderr)
    );

    let db = TestDb::create().await;
    let server = command_server(&db, logs.path());
    let run = Command::new("python3")
        .arg(repo.join("examples/python/book_room.py"))
        .arg(server.addr.to_string())
        .env("PYTHONPATH", generated.path())
        .output()
        .expect("run the Python client");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let field = |name: &str| -> String {
        let start = stdout
            .find(&format!("\"{name}\": "))
            .unwrap_or_else(|| panic!("{name} in {stdout}"));
        let rest = &stdout[start + name.len() + 4..];
        rest[..rest.find([',', '}']).expect("value end")]
            .trim_matches('"')
            .to_owned()
    };
    assert_eq!(field("status"), "RESERVATION_STATUS_CONFIRMED");
    assert_eq!(field("position"), "3");
    assert_eq!(field("retry_reservation_id"), field("reservation_id"));
    assert_eq!(field("retry_replayed"), "true");
    assert_eq!(field("invalid"), "INVALID_ARGUMENT");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reservations WHERE guest_id = 'py'")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(stored, 1, "the retry wrote nothing");
    drop(server);
    db.cleanup().await;
}
