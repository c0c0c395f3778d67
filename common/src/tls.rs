//! TLS and mutual TLS (rustls) for both servers and for our own clients.
//!
//! Plain text stays the local default. A server given `--tls-cert` and
//! `--tls-key` serves TLS only; with `--tls-client-ca` as well, it refuses
//! every client without a certificate signed by that CA (mutual TLS). A
//! client follows its URL: `https://` needs the CA that signed the server's
//! certificate (we ship no trust store: give the system bundle for a public
//! CA), `http://` takes no TLS files at all. Every file is read and checked
//! at start, so a bad one stops the process there, naming its flag.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// Default of `--tls-handshake-timeout-ms`.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// The TLS flags of a server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// PEM certificate chain to serve TLS with (the server's own certificate
    /// first); needs --tls-key. Unset (the default): plain text. Clients
    /// then connect with https:// and the CA that signed it.
    #[arg(long, env = "HOTEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HOTEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate(s) of the CA(s) that sign client certificates: every
    /// client must then present one (mutual TLS); a client without one, or
    /// with one signed by another CA, fails the handshake. Needs --tls-cert.
    #[arg(long, env = "HOTEL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Milliseconds a new connection gets to finish its TLS handshake before
    /// it is closed, so silent or slow clients cannot hold connections open.
    #[arg(long, env = "HOTEL_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = HANDSHAKE_TIMEOUT_MS)]
    pub tls_handshake_timeout_ms: u64,
}

impl Default for ServerArgs {
    /// Plain text, as without flags.
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        }
    }
}

impl ServerArgs {
    /// The TLS settings these flags ask for, read from their files and
    /// checked; `None` serves plain text.
    pub fn load(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.tls_client_ca.is_some() {
                bail!("--tls-client-ca needs --tls-cert and --tls-key");
            }
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new()
            .identity(identity(cert, "--tls-cert", key, "--tls-key")?)
            .timeout(Duration::from_millis(self.tls_handshake_timeout_ms.max(1)));
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(certificates(ca, "--tls-client-ca")?);
        }
        // Builds the rustls acceptor now, so a key that does not match its
        // certificate stops the server at start rather than at first call.
        Server::builder()
            .tls_config(config.clone())
            .context("the TLS settings (--tls-cert, --tls-key, --tls-client-ca) are unusable")?;
        Ok(Some(config))
    }

    /// One log line saying how the server talks.
    pub fn log_mode(&self) {
        match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => tracing::info!("TLS is off: plain text (no --tls-cert)"),
            (Some(_), None) => tracing::info!("TLS is on"),
            (Some(_), Some(_)) => {
                tracing::info!("mutual TLS is on: clients need a certificate")
            }
        }
    }
}

/// `builder` serving `tls`, or plain text for `None`.
pub fn server<L>(builder: Server<L>, tls: Option<ServerTlsConfig>) -> anyhow::Result<Server<L>> {
    Ok(match tls {
        Some(tls) => builder.tls_config(tls).context("TLS settings")?,
        None => builder,
    })
}

/// A client's TLS files, each with the flag that named it (for errors).
#[derive(Debug, Clone, Default)]
pub struct ClientFiles {
    /// PEM CA certificate(s) the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// PEM certificate to present to servers that require one.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// The flags of `url`, `ca`, `cert` and `key`, in that order.
    pub flags: [&'static str; 4],
}

impl ClientFiles {
    /// An endpoint for `url`: TLS with these files for `https://`, plain
    /// text for `http://`. `handshake_timeout` bounds the TLS handshake
    /// (tonic's connect timeout covers only TCP).
    pub fn endpoint(&self, url: &str, handshake_timeout: Duration) -> anyhow::Result<Endpoint> {
        let [url_flag, ca_flag, cert_flag, key_flag] = self.flags;
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("{url_flag}: '{url}' is not a valid URL"))?;
        if endpoint.uri().scheme_str() != Some("https") {
            if let Some(flag) = [
                (&self.ca, ca_flag),
                (&self.cert, cert_flag),
                (&self.key, key_flag),
            ]
            .into_iter()
            .find_map(|(file, flag)| file.as_ref().map(|_| flag))
            {
                bail!("{flag} is set but {url_flag} '{url}' is not https://: use https:// for TLS");
            }
            return Ok(endpoint);
        }
        let Some(ca) = &self.ca else {
            bail!(
                "{url_flag} '{url}' is https:// but {ca_flag} is not set: give the PEM file of \
                 the CA that signed the server's certificate (for a public CA, the system \
                 bundle such as /etc/ssl/certs/ca-certificates.crt)"
            );
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(certificates(ca, ca_flag)?)
            .timeout(handshake_timeout);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(identity(cert, cert_flag, key, key_flag)?);
            }
            (None, None) => {}
            (Some(_), None) => bail!("{cert_flag} needs {key_flag}"),
            (None, Some(_)) => bail!("{key_flag} needs {cert_flag}"),
        }
        endpoint.tls_config(config).with_context(|| {
            format!("the TLS settings ({ca_flag}, {cert_flag}, {key_flag}) are unusable")
        })
    }
}

/// Reads a PEM file of one or more certificates.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Certificate> {
    let pem = read(path, flag)?;
    let parsed = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag} {}: not a PEM certificate file", path.display()))?;
    if parsed.is_empty() {
        bail!("{flag} {}: holds no PEM certificate", path.display());
    }
    Ok(Certificate::from_pem(pem))
}

/// Reads a certificate chain and its private key.
fn identity(cert: &Path, cert_flag: &str, key: &Path, key_flag: &str) -> anyhow::Result<Identity> {
    let cert = certificates(cert, cert_flag)?;
    let pem = read(key, key_flag)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{key_flag} {}: holds no PEM private key", key.display()))?;
    Ok(Identity::from_pem(cert.into_inner(), pem))
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> ClientFiles {
        ClientFiles {
            ca: ca.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
            flags: ["--url", "--ca", "--cert", "--key"],
        }
    }

    fn refusal(files: &ClientFiles, url: &str) -> String {
        let error = files
            .endpoint(url, Duration::from_secs(1))
            .expect_err("refused");
        format!("{error:#}")
    }

    #[test]
    fn plain_text_needs_no_files_and_takes_none() {
        let none = files(None, None, None);
        assert!(
            none.endpoint("http://127.0.0.1:1", Duration::from_secs(1))
                .is_ok()
        );
        let error = refusal(&files(Some("ca.pem"), None, None), "http://127.0.0.1:1");
        assert!(
            error.contains("--ca is set") && error.contains("https://"),
            "{error}"
        );
        let error = refusal(&files(None, Some("c.pem"), None), "http://127.0.0.1:1");
        assert!(error.contains("--cert is set"), "{error}");
    }

    #[test]
    fn https_needs_a_readable_ca_and_a_whole_identity() {
        let error = refusal(&files(None, None, None), "https://127.0.0.1:1");
        assert!(error.contains("--ca is not set"), "{error}");
        let error = refusal(
            &files(Some("/nonexistent/ca.pem"), None, None),
            "https://h:1",
        );
        assert!(
            error.contains("--ca /nonexistent/ca.pem: cannot read it"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("hotel-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let empty = empty.to_str().expect("UTF-8 path");
        let error = refusal(&files(Some(empty), None, None), "https://h:1");
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_client_ca_without_a_certificate_is_refused() {
        let args = ServerArgs {
            tls_client_ca: Some("ca.pem".into()),
            ..ServerArgs::default()
        };
        let error = args.load().expect_err("refused").to_string();
        assert!(
            error.contains("--tls-client-ca needs --tls-cert"),
            "{error}"
        );
        assert!(ServerArgs::default().load().expect("plain text").is_none());
    }
}
