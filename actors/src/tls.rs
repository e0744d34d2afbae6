//! TLS for the pool's connections: libpq's `sslmode`s over rustls (with the `ring` provider),
//! behind the default-on `tls` feature. The connector built here is the only thing in the pool
//! that knows whether a connection is encrypted; cancel requests go through it too.

use std::path::PathBuf;
use std::sync::Arc;

use actor_orm_core::{Connector, Error, PlainConnector, Result};

/// How a connection is secured, with libpq's names and meanings.
///
/// | mode | encrypted | server certificate checked | falls back to plaintext |
/// |---|---|---|---|
/// | `disable` | no | — | — |
/// | `prefer` (the default) | when the server offers TLS | no | yes |
/// | `require` | always | no (as `verify-ca` when a root certificate is given) | never |
/// | `verify-ca` | always | signed by a trusted CA | never |
/// | `verify-full` | always | signed by a trusted CA, for the host connected to | never |
///
/// ```
/// use actor_orm_actors::SslMode;
/// assert_eq!("verify-full".parse::<SslMode>().unwrap(), SslMode::VerifyFull);
/// assert!("verify_full".parse::<SslMode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without checking its certificate; else plaintext.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked unless a root certificate is given.
    Require,
    /// TLS with a certificate signed by a trusted CA (any host name).
    VerifyCa,
    /// TLS with a certificate signed by a trusted CA and issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plaintext first; TLS-if-offered is the closest safe reading.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "unknown sslmode `{other}`; expected disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum RootCerts {
    /// The operating system's store.
    #[default]
    System,
    /// A PEM file (`sslrootcert`).
    File(PathBuf),
}

/// The TLS part of a pool's connection settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    pub(crate) roots: RootCerts,
}

impl TlsSettings {
    /// Takes `sslmode` and `sslrootcert` out of a URL's query or a key=value string (which
    /// tokio-postgres would reject for `verify-*`), leaving the rest to it.
    pub(crate) fn split(target: &str) -> Result<(String, TlsSettings)> {
        let mut settings = TlsSettings::default();
        let mut take = |key: &str, value: &str| -> Result<bool> {
            match key {
                "sslmode" => settings.mode = value.parse()?,
                "sslrootcert" => {
                    settings.roots = match value {
                        "system" => RootCerts::System,
                        path => RootCerts::File(PathBuf::from(path)),
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        };
        let rest = if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            match target.split_once('?') {
                None => target.to_owned(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        if !take(k, &percent_decode(v))? {
                            kept.push(pair);
                        }
                    }
                    if kept.is_empty() {
                        base.to_owned()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            let mut kept = Vec::new();
            for word in target.split_whitespace() {
                match word.split_once('=') {
                    Some((k, v)) if take(k.trim(), v.trim_matches('\'').trim())? => {}
                    _ => kept.push(word),
                }
            }
            kept.join(" ")
        };
        Ok((rest, settings))
    }

    /// From the public parts [`IntoConfig::into_parts`](crate::IntoConfig::into_parts) gives.
    pub(crate) fn from_parts(mode: SslMode, root_cert: Option<PathBuf>) -> TlsSettings {
        TlsSettings {
            mode,
            roots: root_cert.map_or(RootCerts::System, RootCerts::File),
        }
    }

    /// The settings a parsed tokio-postgres config carries (it knows disable, prefer, require).
    pub(crate) fn of_config(pg: &tokio_postgres::Config) -> TlsSettings {
        use tokio_postgres::config::SslMode as Pg;
        let mode = match pg.get_ssl_mode() {
            Pg::Disable => SslMode::Disable,
            Pg::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        TlsSettings {
            mode,
            roots: RootCerts::System,
        }
    }

    /// The connector for these settings.
    pub(crate) fn connector(&self) -> Result<Arc<dyn Connector>> {
        match self.mode {
            SslMode::Disable => Ok(Arc::new(PlainConnector)),
            #[cfg(feature = "tls")]
            _ => rustls_connector::build(self),
            #[cfg(not(feature = "tls"))]
            SslMode::Prefer => Ok(Arc::new(PlainConnector)),
            #[cfg(not(feature = "tls"))]
            other => Err(Error::Config(format!(
                "sslmode={} needs TLS, and this build of actor-orm has none (enable the `tls` feature)",
                other.as_str()
            ))),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the trusted CA certificates of `roots`.
#[cfg(feature = "tls")]
fn load_roots(roots: &RootCerts) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unreadable(path, e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| unreadable(path, e))?;
            store.add_parsable_certificates(certs);
            if store.is_empty() {
                return Err(Error::Config(format!(
                    "sslrootcert {} holds no usable certificate",
                    path.display()
                )));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(Error::Config(
                    "no trusted certificate found in the system's store; give sslrootcert".into(),
                ));
            }
        }
    }
    Ok(store)
}

#[cfg(feature = "tls")]
fn unreadable(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("cannot read sslrootcert {}: {e}", path.display()))
}

#[cfg(feature = "tls")]
mod rustls_connector {
    use std::sync::Arc;

    use actor_orm_core::{CancelStream, ConnectFuture, Connector, Driver, Error, Result};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
    use tokio_postgres::tls::MakeTlsConnect;
    use tokio_postgres::{CancelToken, Client, Config};
    use tokio_postgres_rustls::MakeRustlsConnect;

    use super::{RootCerts, SslMode, TlsSettings, load_roots};

    /// Connects with rustls; `prefer` lets tokio-postgres fall back to plaintext when the server
    /// refuses TLS, every other mode requires it.
    #[derive(Clone)]
    struct RustlsConnector {
        make: MakeRustlsConnect,
        mode: SslMode,
        verified: &'static str,
    }

    impl std::fmt::Debug for RustlsConnector {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.describe())
        }
    }

    impl RustlsConnector {
        /// `config` with tokio-postgres's sslmode for this connector's: `prefer` may fall back
        /// to plaintext, every other mode requires TLS.
        fn with_mode(&self, config: &Config) -> Config {
            let mut config = config.clone();
            config.ssl_mode(match self.mode {
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            config
        }
    }

    impl Connector for RustlsConnector {
        fn connect<'a>(&'a self, config: &'a Config) -> ConnectFuture<'a, (Client, Driver)> {
            Box::pin(async move {
                let config = self.with_mode(config);
                let (client, connection) = config.connect(self.make.clone()).await?;
                let driver: Driver = Box::pin(connection);
                Ok((client, driver))
            })
        }

        fn cancel(&self, token: CancelToken) -> ConnectFuture<'static, ()> {
            let make = self.make.clone();
            Box::pin(async move { token.cancel_query(make).await })
        }

        fn connect_listening<'a>(
            &'a self,
            config: &'a Config,
            notices: actor_orm_core::Notices,
        ) -> actor_orm_core::ListenFuture<'a> {
            Box::pin(async move {
                let config = self.with_mode(config);
                let (client, connection) = config
                    .connect(self.make.clone())
                    .await
                    .map_err(crate::connect::connect_error)?;
                Ok((client, actor_orm_core::forwarding(connection, notices)))
            })
        }

        fn cancel_over(
            &self,
            token: CancelToken,
            stream: CancelStream,
            host: &str,
        ) -> ConnectFuture<'static, ()> {
            let mut make = self.make.clone();
            match MakeTlsConnect::<CancelStream>::make_tls_connect(&mut make, host) {
                Ok(tls) => Box::pin(async move { token.cancel_query_raw(stream, tls).await }),
                // Not a valid TLS server name: tokio-postgres reports it in its own terms.
                Err(_) => self.cancel(token),
            }
        }

        fn describe(&self) -> String {
            format!("TLS (sslmode={}, {})", self.mode.as_str(), self.verified)
        }
    }

    pub(super) fn build(settings: &TlsSettings) -> Result<Arc<dyn Connector>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        // libpq: `require` with a root certificate given checks the CA, as `verify-ca` does.
        let checks = match (settings.mode, &settings.roots) {
            (SslMode::Require, RootCerts::File(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        let (config, verified) = match checks {
            SslMode::VerifyFull => {
                let roots = load_roots(&settings.roots)?;
                (
                    builder.with_root_certificates(roots).with_no_client_auth(),
                    "certificate and host name verified",
                )
            }
            SslMode::VerifyCa => {
                let roots = Arc::new(load_roots(&settings.roots)?);
                let inner =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyHostName(inner)))
                        .with_no_client_auth(),
                    "certificate verified, any host name",
                )
            }
            _ => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                    .with_no_client_auth(),
                "certificate not verified",
            ),
        };
        Ok(Arc::new(RustlsConnector {
            make: MakeRustlsConnect::new(config),
            mode: settings.mode,
            verified,
        }))
    }

    /// `verify-ca`: the chain must lead to a trusted CA; the name on the certificate may be any.
    #[derive(Debug)]
    struct AnyHostName(Arc<rustls::client::WebPkiServerVerifier>);

    impl ServerCertVerifier for AnyHostName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// `prefer` and `require`: encrypted, the certificate not checked (libpq's meaning). The
    /// handshake's signatures are still verified, so the session is encrypted to whoever holds
    /// the certificate's key.
    #[derive(Debug)]
    struct Unchecked(Arc<CryptoProvider>);

    impl ServerCertVerifier for Unchecked {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_urls_and_key_values() {
        let (rest, s) = TlsSettings::split(
            "postgres://app@db:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("parse");
        assert_eq!(rest, "postgres://app@db:5432/app?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.roots, RootCerts::File("/etc/ca.pem".into()));

        let (rest, s) = TlsSettings::split("host=db user=app sslmode=require sslrootcert=system")
            .expect("parse");
        assert_eq!(rest, "host=db user=app");
        assert_eq!((s.mode, s.roots), (SslMode::Require, RootCerts::System));

        let (rest, s) = TlsSettings::split("postgres://db/app").expect("parse");
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgres://db/app", SslMode::Prefer)
        );

        let err = TlsSettings::split("postgres://db/app?sslmode=verify_full").expect_err("typo");
        assert!(
            err.to_string().contains("unknown sslmode `verify_full`"),
            "{err}"
        );
    }

    #[test]
    fn disable_is_plaintext_and_the_others_describe_their_checks() {
        let plain = TlsSettings {
            mode: SslMode::Disable,
            roots: RootCerts::System,
        };
        assert_eq!(plain.connector().expect("plain").describe(), "plaintext");
        #[cfg(feature = "tls")]
        {
            let prefer = TlsSettings::default().connector().expect("prefer");
            assert!(prefer.describe().contains("not verified"), "{prefer:?}");
            let missing = TlsSettings {
                mode: SslMode::VerifyFull,
                roots: RootCerts::File("/nonexistent/ca.pem".into()),
            };
            let err = missing.connector().expect_err("no such file");
            assert!(err.to_string().contains("cannot read sslrootcert"), "{err}");
        }
    }
}
