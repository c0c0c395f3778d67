//! The load tool against the real binaries: the short version of the
//! benchmark's pieces (setup, a counted mixed run, the echo reference). It
//! proves the tool works; it asserts no speed.

mod support;

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sets_up_runs_a_mixed_load_and_drives_the_echo_service() {
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server(&db, logs.path());
    let query = query_server(
        &command.url(),
        &logs.path().join("read-model.db"),
        logs.path(),
    );
    let data_set = ["--hotels", "4", "--room-types", "2", "--prefix", "smoke"];

    let command_url = command.url();
    let query_url = query.url();
    let mut setup = vec!["setup", "--command-url", &command_url, "--inventory", "5"];
    setup.extend(data_set);
    let said = loadgen(&setup, &[]);
    assert!(said.contains("12 created"), "{said}");
    // Again: what exists is left as it is.
    assert!(loadgen(&setup, &[]).contains("0 created"));

    let mut run = vec![
        "run",
        "--command-url",
        &command_url,
        "--query-url",
        &query_url,
        "--count",
        "200",
        "--concurrency",
        "8",
        "--seed",
        "20",
        "--mix",
        "book=50,cancel=15,checkin=15,query=20",
        "--json",
    ];
    run.extend(data_set);
    let report: Value = serde_json::from_str(&loadgen(&run, &[])).expect("run --json prints JSON");
    for rpc in [
        "BookRoom",
        "CancelReservation",
        "CheckIn",
        "GetReservation",
        "GetAvailability",
        "SearchAvailability",
    ] {
        assert!(
            ok_calls(&report, rpc) > 0,
            "no successful {rpc}:\n{report:#}"
        );
    }
    let calls: u64 = report["rpcs"]
        .as_array()
        .expect("rpcs is a list")
        .iter()
        .map(|row| row["ok"].as_u64().expect("ok is a count"))
        .sum();
    assert_eq!(calls, 200, "one call per operation:\n{report:#}");
    assert!(report["commands_per_sec"].as_f64().expect("a rate") > 0.0);

    let echo_server = Process::start(
        "loadgen",
        &[
            "echo-server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ],
        logs.path(),
    );
    let echo: Value = serde_json::from_str(&loadgen(
        &[
            "echo",
            "--url",
            &echo_server.url(),
            "--duration",
            "1s",
            "--concurrency",
            "8",
            "--json",
        ],
        &[],
    ))
    .expect("echo --json prints JSON");
    assert!(ok_calls(&echo, "Health/Check") > 0, "{echo:#}");
    assert!(echo["groups"]["echo"]["per_sec"].as_f64().expect("a rate") > 0.0);

    drop(query);
    drop(command);
    db.cleanup().await;
}
