//! A client in another language: Python code generated from `proto/` with
//! grpcio-tools books a room on the real command-server binary, and decides
//! a command on a read from the real query-server binary (stale-read
//! preconditions, their refusal decoded from the status details).

mod support;

use std::{path::Path, process::Command};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_books_a_room() {
    let logs = tempfile::tempdir().expect("temp dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = generate_python(repo);
    let db = TestDb::create().await;
    let server = command_server(&db, logs.path());
    let run = run_python(
        &repo.join("examples/python/book_room.py"),
        &[server.addr.to_string()],
        generated.path(),
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

/// Runs a Python client with the generated modules on its path; asserts
/// that it succeeded.
fn run_python(script: &Path, args: &[String], generated: &Path) -> std::process::Output {
    let run = Command::new("python3")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", generated)
        .output()
        .expect("run the Python client");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

/// Generates the Python modules of `proto/` into a temporary directory.
fn generate_python(repo: &Path) -> tempfile::TempDir {
    let generated = tempfile::tempdir().expect("temp dir");
    let protoc = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo.join("proto"))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .args([
            "hotel/v1/types.proto",
            "hotel/v1/commands.proto",
            "hotel/v1/events.proto",
            "hotel/v1/queries.proto",
        ])
        .current_dir(repo.join("proto"))
        .output()
        .expect("python3 with grpcio-tools (scripts/test.sh installs it)");
    assert!(
        protoc.status.success(),
        "{}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    generated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_decides_on_a_read_and_recovers_from_a_stale_one() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = generate_python(repo);
    let db = TestDb::create().await;
    let commands = command_server(&db, logs.path());
    let queries = query_server(&commands.url(), &data.path().join("read.db"), logs.path());
    let run = run_python(
        &repo.join("examples/python/stale_read.py"),
        &[commands.addr.to_string(), queries.addr.to_string()],
        generated.path(),
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("the client prints JSON");
    let refusal = &seen["refusal"];
    assert_eq!(seen["decided_on_version"], 1, "{seen}");
    assert_eq!(refusal["code"], "ABORTED", "{seen}");
    assert_eq!(refusal["reason"], "STALE_READ", "{seen}");
    assert_eq!(refusal["domain"], "hotel.v1", "{seen}");
    assert_eq!(
        refusal["subject"],
        format!(
            "reservation:{}",
            seen["reservation_id"].as_str().expect("id")
        ),
    );
    assert_eq!(refusal["current_version"], 2, "{seen}");
    assert_eq!(
        refusal["changed_position"], seen["cancel_position"],
        "{seen}"
    );
    assert_eq!(
        seen["reread_status"], "RESERVATION_STATUS_CANCELLED",
        "{seen}"
    );
    assert_eq!(seen["reread_version"], 2, "{seen}");
    assert!(seen["reread_as_of"].as_i64() >= seen["cancel_position"].as_i64());
    // Registered and one room type added.
    assert_eq!(seen["hotel_version"], 2, "{seen}");
    assert!(seen["inventory_position"].as_i64() > seen["cancel_position"].as_i64());
    // The refused check-in wrote nothing.
    let check_ins: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'GuestCheckedIn'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(check_ins, 0);
    drop(queries);
    drop(commands);
    db.cleanup().await;
}
