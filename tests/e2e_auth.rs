//! Bearer-token authentication across the real binaries: the command server
//! checks writers and subscribers, the query server readers and admins, and
//! the query server's projector subscribes with `--command-server-token`.

mod support;

use std::{path::Path, time::Duration};

use hotel_common::pb::{
    self, query_admin_service_client::QueryAdminServiceClient,
    query_service_client::QueryServiceClient,
};
use support::*;
use tonic::{Code, Request};

const COMMAND_TOKENS: &str = "writer-t0ken=writer,projector-t0ken=subscriber";
const QUERY_TOKENS: &str = "reader-t0ken=reader,ops-t0ken=admin";
/// Every secret above, none of which may show up in a log.
const SECRETS: [&str; 4] = [
    "writer-t0ken",
    "projector-t0ken",
    "reader-t0ken",
    "ops-t0ken",
];

/// `message` with `authorization: Bearer <token>` (none when `None`), and a
/// deadline that bounds the wait for `min_position`.
fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs(20));
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

fn command_server_with_tokens(db: &TestDb, tokens: &str, log_dir: &Path) -> Process {
    Process::start(
        "command-server",
        &[
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--database-url".into(),
            db.url.clone(),
            "--metrics-addr".into(),
            "off".into(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--auth-tokens".into(),
            tokens.into(),
        ],
        log_dir,
    )
}

fn query_server_with_tokens(
    command_url: &str,
    command_server_token: &str,
    tokens: &str,
    path: &Path,
    log_dir: &Path,
) -> Process {
    Process::start(
        "query-server",
        &[
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--command-server-url".into(),
            command_url.into(),
            "--database-path".into(),
            path.display().to_string(),
            "--metrics-addr".into(),
            "off".into(),
            "--auth-tokens".into(),
            tokens.into(),
            "--command-server-token".into(),
            command_server_token.into(),
        ],
        log_dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_both_servers_and_the_projector_subscribes_with_its_own() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server_with_tokens(&db, COMMAND_TOKENS, logs.path());
    let query = query_server_with_tokens(
        &command.url(),
        "projector-t0ken",
        QUERY_TOKENS,
        &data.path().join("read-model.db"),
        logs.path(),
    );
    // Holds a token the command server knows, but without the subscriber role.
    let refused = query_server_with_tokens(
        &command.url(),
        "writer-t0ken",
        QUERY_TOKENS,
        &data.path().join("refused.db"),
        logs.path(),
    );

    let mut commands = command.commands().await;
    let status = commands
        .book_room(with_token(booking("h1", "DBL", 1, 3, "ana"), None))
        .await
        .expect_err("no token, no booking");
    assert_eq!(status.code(), Code::Unauthenticated);
    commands
        .register_hotel(with_token(
            pb::RegisterHotelRequest {
                command_id: new_id(),
                hotel_id: "h1".to_owned(),
                name: "Hotel Auth".to_owned(),
                city: "Braga".to_owned(),
                correlation_id: String::new(),
            },
            Some("writer-t0ken"),
        ))
        .await
        .expect("register a hotel as the writer");
    commands
        .add_room_type(with_token(
            pb::AddRoomTypeRequest {
                precondition: None,
                command_id: new_id(),
                hotel_id: "h1".to_owned(),
                code: "DBL".to_owned(),
                name: "Double".to_owned(),
                max_guests: 2,
                inventory: 2,
                nightly_rate: Some(pb::Money {
                    amount_minor: 9_000,
                    currency: "EUR".to_owned(),
                }),
                correlation_id: String::new(),
            },
            Some("writer-t0ken"),
        ))
        .await
        .expect("add a room type as the writer");
    let booked = commands
        .book_room(with_token(
            booking("h1", "DBL", 1, 3, "ana"),
            Some("writer-t0ken"),
        ))
        .await
        .expect("book as the writer")
        .into_inner();

    let mut queries = QueryServiceClient::new(query.channel().await);
    let read = |token| {
        with_token(
            pb::GetReservationRequest {
                reservation_id: booked.reservation_id.clone(),
                min_position: booked.position,
            },
            token,
        )
    };
    let status = queries
        .get_reservation(read(None))
        .await
        .expect_err("no token, no query");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = queries
        .get_reservation(read(Some("writer-t0ken")))
        .await
        .expect_err("the query server does not know command-server tokens");
    assert_eq!(status.code(), Code::Unauthenticated);
    let reply = queries
        .get_reservation(read(Some("reader-t0ken")))
        .await
        .expect("the reader reads its write back")
        .into_inner();
    assert!(reply.as_of_position >= booked.position);
    let reservation = reply.reservation.expect("the reservation");
    assert_eq!(reservation.status, pb::ReservationStatus::Confirmed as i32);
    assert_eq!(
        reservation.guest.map(|guest| guest.guest_id).as_deref(),
        Some("ana")
    );

    // Admin: readers may not rebuild; admin may (and the rebuild's own
    // subscription carries the token too).
    let mut admin = QueryAdminServiceClient::new(query.channel().await);
    let status = admin
        .rebuild_read_model(with_token(
            pb::RebuildReadModelRequest {},
            Some("reader-t0ken"),
        ))
        .await
        .expect_err("readers do not rebuild");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("admin"), "{status:?}");
    let rebuilt = admin
        .rebuild_read_model(with_token(
            pb::RebuildReadModelRequest {},
            Some("ops-t0ken"),
        ))
        .await
        .expect("admin rebuilds")
        .into_inner();
    assert!(rebuilt.checkpoint >= booked.position);

    // The query server whose token lacks the subscriber role never gets an
    // event, and says why.
    let mut refused_queries = QueryServiceClient::new(refused.channel().await);
    let status = refused_queries
        .get_projection_status(with_token(
            pb::GetProjectionStatusRequest {},
            Some("ops-t0ken"),
        ))
        .await
        .expect("admin holds the reader role")
        .into_inner();
    assert_eq!(status.checkpoint, 0);
    eventually(Duration::from_secs(10), || async {
        refused
            .logs()
            .contains("refused the subscription")
            .then_some(())
    })
    .await;

    for process in [&command, &query, &refused] {
        let log = process.logs();
        for secret in SECRETS {
            assert!(
                !log.contains(secret),
                "{} logged a token:\n{log}",
                process.name
            );
        }
    }
    drop((query, refused, command));
    db.cleanup().await;
}

/// The load tool's token (`--token` or `LOADGEN_TOKEN`): without it the
/// servers refuse the tool's calls; with one that writes and subscribes on
/// the command server and reads on the query server, set-up, a mixed run,
/// the lag measurement and a catch-up (whose replaying query server
/// subscribes with the same token) all go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_calls_with_its_token() {
    let logs = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server_with_tokens(
        &db,
        "load-t0ken=writer+subscriber,projector-t0ken=subscriber",
        logs.path(),
    );
    let query = query_server_with_tokens(
        &command.url(),
        "projector-t0ken",
        "load-t0ken=reader",
        &data.path().join("read-model.db"),
        logs.path(),
    );
    let command_url = command.url();
    let query_url = query.url();
    fn with_data_set<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [
            args,
            &["--hotels", "2", "--room-types", "2", "--prefix", "auth"],
        ]
        .concat()
    }
    let token = [("LOADGEN_TOKEN", "load-t0ken")];

    let setup = with_data_set(&["setup", "--command-url", &command_url]);
    let refused = loadgen_output(&setup, &[]);
    assert!(!refused.status.success(), "setup without a token succeeded");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("Unauthenticated"), "{said}");
    let said = loadgen(&setup, &token);
    assert!(said.contains("(6 created"), "{said}");

    // The flag, this time.
    let run = with_data_set(&[
        "run",
        "--command-url",
        &command_url,
        "--query-url",
        &query_url,
        "--token",
        "load-t0ken",
        "--count",
        "60",
        "--concurrency",
        "4",
        "--seed",
        "10",
        "--mix",
        "book=50,get=25,search=25",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&loadgen(&run, &[])).expect("JSON report");
    for rpc in ["BookRoom", "GetReservation", "SearchAvailability"] {
        assert!(
            ok_calls(&report, rpc) > 0,
            "no successful {rpc}:\n{report:#}"
        );
    }

    let lag = with_data_set(&[
        "lag",
        "--command-url",
        &command_url,
        "--query-url",
        &query_url,
        "--rate",
        "50",
        "--duration",
        "1s",
        "--json",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&loadgen(&lag, &token)).expect("JSON report");
    assert!(ok_calls(&report, "ProjectionLag") > 0, "{report:#}");

    // Auth settings in loadgen's environment must not reach the query
    // server it starts: that one checks no tokens.
    let query_server_bin = binary("query-server").display().to_string();
    let catchup = with_data_set(&[
        "catchup",
        "--command-url",
        &command_url,
        "--events",
        "400",
        "--concurrency",
        "4",
        "--query-server-bin",
        &query_server_bin,
        "--timeout",
        "60s",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&loadgen(
        &catchup,
        &[token[0], ("HOTEL_AUTH_TOKENS", "other-t0ken=reader")],
    ))
    .expect("JSON report");
    assert!(
        report["events"].as_i64().expect("a count") >= 400,
        "{report:#}"
    );

    drop(query);
    drop(command);
    db.cleanup().await;
}
