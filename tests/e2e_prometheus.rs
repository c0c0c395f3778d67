//! The alert rules and the dashboard under `deploy/` hold against the real
//! thing: `promtool` checks the rules and runs their unit tests, and a real
//! Prometheus (Debian's `prometheus` package; scripts/test.sh installs it)
//! scrapes a command server and a query server under a short load. Every
//! metric the rules and the dashboard name is there, the counters moved,
//! every dashboard query answers, and every rule evaluates cleanly and stays
//! silent on this healthy system.

mod support;

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use hotel_common::pb;
use serde_json::Value;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Where the alert rules, their tests and the dashboard live.
fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs a Prometheus tool; panics with its output unless it succeeds.
fn run_tool(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {tool} ({error}): install Debian's prometheus package (scripts/test.sh does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let rules = deploy("prometheus/alerts.yml");
    let checked = run_tool(
        "promtool",
        &["check", "rules", &rules.display().to_string()],
    );
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = run_tool(
        "promtool",
        &[
            "test",
            "rules",
            &deploy("prometheus/alerts_test.yml").display().to_string(),
        ],
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
    run_tool(
        "promtool",
        &[
            "check",
            "config",
            &deploy("prometheus/prometheus.yml").display().to_string(),
        ],
    );
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on a free port with `config`, keeping its data in
    /// `dir`.
    fn start(config: &str, dir: &Path) -> Self {
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write the config");
        let log = dir.join("prometheus.log");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start prometheus: install Debian's prometheus package (scripts/test.sh does)");
        Self { child, addr, log }
    }

    /// GETs `path` and returns the status code and body.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.addr).await.ok()?;
        // HTTP/1.0: the whole body, then the connection closes.
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        let reply = String::from_utf8(reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    }

    /// The `data` of an API call that must succeed.
    async fn api(&self, path: &str) -> Value {
        let (code, body) = self
            .get(path)
            .await
            .unwrap_or_else(|| panic!("no answer from Prometheus to {path}"));
        let reply: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
        assert!(
            code == 200 && reply["status"] == "success",
            "{path}: {code} {body}"
        );
        reply["data"].clone()
    }

    /// The instant vector `query` evaluates to now.
    async fn query(&self, query: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(query)))
            .await;
        assert_eq!(data["resultType"], "vector", "{query}: {data}");
        data["result"].as_array().expect("a result").clone()
    }

    /// The value of `query`, summed over its series; `None` without any.
    async fn try_value(&self, query: &str) -> Option<f64> {
        let result = self.query(&format!("sum({query})")).await;
        result
            .first()
            .and_then(|sample| sample["value"][1].as_str()?.parse().ok())
    }

    /// The value of `query`, summed over its series, which must exist.
    async fn value(&self, query: &str) -> f64 {
        self.try_value(query)
            .await
            .unwrap_or_else(|| panic!("no series for {query}"))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A URL query value: everything but unreserved characters escaped.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Our metric names in `text` (identifiers with one of our prefixes).
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIXES: [&str; 10] = [
        "grpc_",
        "command_",
        "writer_",
        "submitted_",
        "stream_",
        "event_log_",
        "projection_",
        "query_",
        "db_pool_",
        "process_",
    ];
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| PREFIXES.iter().any(|prefix| word.starts_with(prefix)))
        .map(str::to_owned)
        .collect()
}

/// The PromQL of every panel of the dashboard, with Grafana's rate
/// interval made concrete.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("an expression")
                .replace("$__rate_interval", "30s")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_series_the_rules_and_the_dashboard_use() {
    let logs = tempfile::tempdir().expect("log dir");
    let db = TestDb::create().await;
    let command_metrics = format!("127.0.0.1:{}", free_port());
    let query_metrics = format!("127.0.0.1:{}", free_port());
    let command_args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--metrics-addr",
        &command_metrics,
        "--auth-tokens",
        "w-token=writer+subscriber",
        "--heartbeat-ms",
        "200",
    ]
    .map(str::to_owned)
    .into();
    let command = Process::start("command-server", &command_args, logs.path());
    let query_args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--command-server-url",
        &command.url(),
        "--command-server-token",
        "w-token",
        "--database-path",
        &logs.path().join("read.db").display().to_string(),
        "--metrics-addr",
        &query_metrics,
    ]
    .map(str::to_owned)
    .into();
    let query = Process::start("query-server", &query_args, logs.path());

    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: hotel-command-server\n    static_configs:\n      - targets: [\"{command_metrics}\"]\n\
         \x20 - job_name: hotel-query-server\n    static_configs:\n      - targets: [\"{query_metrics}\"]\n",
        rules = deploy("prometheus/alerts.yml").display()
    );
    let data = tempfile::tempdir().expect("prometheus dir");
    let prometheus = Prometheus::start(&config, data.path());
    let ready = async {
        loop {
            if let Some((200, _)) = prometheus.get("/-/ready").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .unwrap_or_else(|_| panic!("Prometheus not ready in 30 s:\n{}", prometheus.logs()));
    // Both targets scraped, the read model live, before any load.
    eventually(Duration::from_secs(30), || async {
        let up = prometheus.try_value("up").await;
        let live = prometheus
            .query("projection_state{state=\"live\"} == 1")
            .await;
        (up == Some(2.0) && !live.is_empty()).then_some(())
    })
    .await;

    // A short load: bookings spread over a few scrapes, queries that see
    // them, one refused call and one answer that is not OK.
    let with_token = |mut request: tonic::Request<()>| {
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer w-token"),
        );
        Ok(request)
    };
    let mut commands = pb::command_service_client::CommandServiceClient::with_interceptor(
        command.channel().await,
        with_token,
    );
    let mut queries = query.queries().await;
    commands
        .register_hotel(pb::RegisterHotelRequest {
            command_id: new_id(),
            hotel_id: "h1".to_owned(),
            name: "Hotel h1".to_owned(),
            city: "Tavira".to_owned(),
            correlation_id: String::new(),
        })
        .await
        .expect("registered");
    commands
        .add_room_type(pb::AddRoomTypeRequest {
            command_id: new_id(),
            hotel_id: "h1".to_owned(),
            code: "DBL".to_owned(),
            name: "Double".to_owned(),
            max_guests: 2,
            inventory: 100,
            nightly_rate: Some(pb::Money {
                amount_minor: 9_000,
                currency: "EUR".to_owned(),
            }),
            correlation_id: String::new(),
            precondition: None,
        })
        .await
        .expect("room type");
    // The series these two commands started (batches, lock waits, the
    // head, events streamed and applied) are scraped once before the load:
    // increase() counts from a series' first sample, and a first scrape a
    // second into the load missed a dozen of the 40 bookings.
    eventually(Duration::from_secs(30), || async {
        let mut scraped = true;
        for series in [
            "writer_lock_wait_seconds_count",
            "command_batches_total",
            "stream_events_sent_total",
            "projection_checkpoint",
        ] {
            scraped &= prometheus.try_value(series).await >= Some(2.0);
        }
        scraped.then_some(())
    })
    .await;
    let mut last_position = 0;
    for i in 0..40 {
        let booked = commands
            .book_room(booking("h1", "DBL", 3 + i % 5, 5 + i % 5, &format!("g{i}")))
            .await
            .expect("booked")
            .into_inner();
        last_position = booked.position;
        queries
            .get_reservation(pb::GetReservationRequest {
                reservation_id: booked.reservation_id,
                min_position: booked.position,
            })
            .await
            .expect("the reservation, as of its booking");
        queries
            .get_availability(pb::GetAvailabilityRequest {
                hotel_id: "h1".to_owned(),
                room_type_code: "DBL".to_owned(),
                from_date: day(3),
                to_date: day(10),
                min_position: 0,
            })
            .await
            .expect("availability");
        tokio::time::sleep(Duration::from_millis(75)).await;
    }
    let missing = queries
        .get_reservation(pb::GetReservationRequest {
            reservation_id: new_id(),
            min_position: 0,
        })
        .await
        .expect_err("no such reservation");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let refused = command
        .events()
        .await
        .get_head(pb::GetHeadRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // A subscriber that reads a message and leaves.
    let mut events = pb::event_stream_client::EventStreamClient::with_interceptor(
        command.channel().await,
        with_token,
    );
    let mut stream = events
        .subscribe(pb::SubscribeRequest {
            from_position: 1,
            ..Default::default()
        })
        .await
        .expect("subscribed")
        .into_inner();
    stream
        .message()
        .await
        .expect("a message")
        .expect("not ended");
    drop(stream);
    // A few more scrapes see the end of it.
    eventually(Duration::from_secs(30), || async {
        let head = prometheus.try_value("event_log_head").await;
        let applied = prometheus.try_value("projection_checkpoint").await;
        let refused = prometheus.try_value("grpc_auth_refused_total").await;
        let left = prometheus
            .try_value("stream_subscribers_ended_total{code=\"CANCELLED\"}")
            .await;
        let ok = head == Some(last_position as f64)
            && applied == head
            && refused == Some(1.0)
            && left == Some(1.0);
        ok.then_some(())
    })
    .await;
    // Rates over the dashboard's 30 s windows need two samples of the
    // newest series.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every metric the rules and the dashboard name is in Prometheus.
    let scraped: BTreeSet<String> = prometheus
        .api("/api/v1/label/__name__/values")
        .await
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect();
    let rules_text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("rules");
    let dashboard_text = std::fs::read_to_string(deploy("grafana/hotel.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard JSON");
    let named: BTreeSet<String> = metric_names(&rules_text)
        .into_iter()
        .chain(metric_names(&dashboard_text))
        .collect();
    assert!(named.len() > 25, "the files name {named:?}");
    // A histogram's family name (in prose) stands for its `_bucket` series.
    let absent: Vec<&String> = named
        .iter()
        .filter(|name| !scraped.contains(*name) && !scraped.contains(&format!("{name}_bucket")))
        .collect();
    assert!(
        absent.is_empty(),
        "named in deploy/ but not scraped: {absent:?}\nscraped: {scraped:?}"
    );

    // The counters moved under the load. The series of the 40 bookings and
    // of the queries after them are born during the load: increase() counts
    // only from their first sample, which may already hold a dozen (the
    // first scrape can come a second into the load, and a run saw 29.3 of
    // 40), so they are read whole, and must hold every call.
    for (moved, at_least) in [
        (
            "grpc_requests_total{job=\"hotel-command-server\",method=\"BookRoom\",code=\"OK\"}",
            40.0,
        ),
        (
            "grpc_requests_total{job=\"hotel-query-server\",method=\"GetReservation\",code=\"OK\"}",
            40.0,
        ),
        (
            "grpc_requests_total{job=\"hotel-query-server\",method=\"GetReservation\",code=\"NOT_FOUND\"}",
            1.0,
        ),
        (
            "grpc_request_duration_seconds_count{method=\"GetAvailability\"}",
            40.0,
        ),
        ("increase(command_batches_total[1m])", 30.0),
        ("increase(writer_batch_duration_seconds_count[1m])", 30.0),
        ("increase(writer_lock_wait_seconds_count[1m])", 30.0),
        ("delta(event_log_head[1m])", 30.0),
        ("delta(projection_checkpoint[1m])", 30.0),
        (
            "increase(projection_commit_to_applied_seconds_count[1m])",
            1.0,
        ),
        ("increase(stream_events_sent_total[1m])", 30.0),
        (
            "increase(stream_messages_sent_total{kind=\"events\"}[1m])",
            1.0,
        ),
        (
            "increase(stream_messages_sent_total{kind=\"heartbeat\"}[1m])",
            1.0,
        ),
        ("increase(stream_sent_bytes_total[1m])", 3000.0),
        (
            "increase(process_cpu_seconds_total{job=\"hotel-command-server\"}[1m])",
            0.001,
        ),
        (
            "increase(process_cpu_seconds_total{job=\"hotel-query-server\"}[1m])",
            0.001,
        ),
        (
            "process_resident_memory_bytes{job=\"hotel-query-server\"}",
            1e6,
        ),
        ("stream_subscribers", 1.0),
        ("db_pool_max_connections", 16.0),
    ] {
        let value = prometheus.value(moved).await;
        assert!(
            value >= at_least,
            "{moved} = {value}, expected at least {at_least}"
        );
    }

    // Every dashboard query answers with data (a filter such as `> 0` may
    // rightly leave nothing).
    let panels = dashboard_queries(&dashboard);
    assert!(panels.len() > 20, "{panels:?}");
    for expr in panels {
        let result = prometheus.query(&expr).await;
        assert!(
            !result.is_empty() || expr.contains(" > 0"),
            "the dashboard query {expr} has no data"
        );
    }

    // Every rule was evaluated without error and, on this healthy system,
    // is silent.
    let groups = prometheus.api("/api/v1/rules").await;
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(rules.len(), 6, "{groups}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        let expr = rule["query"].as_str().expect("its query");
        let result = prometheus.query(expr).await;
        assert!(
            result.is_empty(),
            "{} holds on a healthy system: {result:?}",
            rule["name"]
        );
    }
    // ...and holds when its condition does: the command server stops, so
    // HotelServerDown's condition is met.
    drop(command);
    eventually(Duration::from_secs(30), || async {
        let down = prometheus
            .query("up{job=\"hotel-command-server\"} == 0")
            .await;
        (!down.is_empty()).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        let alerts = prometheus.api("/api/v1/alerts").await;
        alerts["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|alert| alert["labels"]["alertname"] == "HotelServerDown")
            .then_some(())
    })
    .await;
    db.cleanup().await;
}
