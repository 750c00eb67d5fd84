//! Connection strings and TLS, with libpq's `sslmode` semantics.
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` only and rejects the keys a
//! libpq user will write (`sslmode=verify-full`, `sslrootcert=...`). [`prepare`] therefore
//! takes those out of the string (URL or `key=value` form), hands the rest to tokio-postgres
//! and keeps the TLS decision here:
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `allow`, `prefer` (default) | if the server offers it | only when `sslrootcert` is given (like libpq) |
//! | `require` | yes | only when `sslrootcert` is given (like libpq) |
//! | `verify-ca` | yes | chain against `sslrootcert` (or the Mozilla roots), not the host name |
//! | `verify-full` | yes | chain and host name |
//!
//! `sslrootcert=system` (libpq 16) selects the bundled Mozilla roots. Production setups
//! should use `verify-full`: `prefer`/`require` protect against eavesdropping only.

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Treated like `prefer` (tokio-postgres cannot try plain text first).
    Allow,
    /// TLS if the server supports it.
    Prefer,
    /// TLS always.
    Require,
    /// TLS, certificate chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?} (expected disable, allow, prefer, require, verify-ca or verify-full)"
                ))
            }
        })
    }
}

/// A parsed connection string plus the TLS settings tokio-postgres does not know.
#[derive(Clone)]
pub struct Prepared {
    /// What tokio-postgres connects with (contains the password: never log it; use
    /// [`describe`]).
    pub config: tokio_postgres::Config,
    /// The requested sslmode.
    pub mode: SslMode,
    /// `sslrootcert`, if given.
    pub root_cert: Option<String>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password, but describe() is shorter.
        f.write_str(&describe(self))
    }
}

/// Splits TLS settings out of a connection string and parses the rest. Errors never echo
/// the string (it may contain a password).
pub fn prepare(conn: &str) -> Result<Prepared, String> {
    let conn = conn.trim();
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => {
                mode = value.parse()?;
                Ok(true)
            }
            "sslrootcert" => {
                root_cert = Some(value.to_owned());
                Ok(true)
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                Err(format!("{key}: client certificates are not supported; use password or trust authentication"))
            }
            _ => Ok(false),
        }
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        rewrite_url(conn, &mut take)?
    } else {
        rewrite_key_values(conn, &mut take)?
    };
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    Ok(Prepared { config, mode, root_cert })
}

type Take<'a> = dyn FnMut(&str, &str) -> Result<bool, String> + 'a;

/// `postgres://…?a=b&sslmode=verify-full` without the keys `take` consumes.
fn rewrite_url(conn: &str, take: &mut Take<'_>) -> Result<String, String> {
    let Some((base, query)) = conn.split_once('?') else {
        return Ok(conn.to_owned());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        let value = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        if !take(&key, &value)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) })
}

/// `host=h sslmode='verify-full'` without the keys `take` consumes; values re-quoted.
fn rewrite_key_values(conn: &str, take: &mut Take<'_>) -> Result<String, String> {
    let mut out = Vec::new();
    let mut chars = conn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("connection string: expected '=' after {key:?}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err("connection string: unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if !take(&key, &value)? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            out.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(out.join(" "))
}

/// The rustls connector for these settings.
pub fn connector(p: &Prepared) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = || -> Result<Arc<RootCertStore>, String> {
        let mut store = RootCertStore::empty();
        match p.root_cert.as_deref() {
            None | Some("system") => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("sslrootcert {path}: no usable certificate"));
                }
            }
        }
        Ok(Arc::new(store))
    };
    let config = match (p.mode, &p.root_cert) {
        (SslMode::VerifyFull, _) => builder.with_root_certificates(roots()?).with_no_client_auth(),
        (SslMode::VerifyCa, _) | (SslMode::Allow | SslMode::Prefer | SslMode::Require, Some(_)) => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(roots()?, provider).build().map_err(|e| e.to_string())?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(inner))).with_no_client_auth()
        }
        _ => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `user@host:port/dbname (sslmode=…)`: enough to tell which database, never the password.
pub fn describe(p: &Prepared) -> String {
    let c = &p.config;
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = c.get_ports().get(i).or(c.get_ports().first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") };
    format!(
        "{}@{}/{} (sslmode={:?})",
        c.get_user().unwrap_or("?"),
        hosts,
        c.get_dbname().unwrap_or(c.get_user().unwrap_or("?")),
        p.mode
    )
}

/// libpq's `prefer`/`require` without a root certificate: encryption without authenticating
/// the server. The handshake signatures are still checked so the session keys are sound.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root, the name may differ (libpq semantics:
/// useful when connecting by IP to a server whose certificate names its DNS name).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_form_takes_libpq_tls_keys_out() {
        let p = prepare("postgres://u:pw@db.example.com:6543/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(p.config.get_application_name(), Some("x"));
        assert_eq!(p.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let d = describe(&p);
        assert_eq!(d, "u@db.example.com:6543/app (sslmode=VerifyFull)");
        assert!(!d.contains("pw"));
    }

    #[test]
    fn key_value_form_with_quotes() {
        let p =
            prepare(r"host=localhost port=5433 user=alerter password='p a\'ss' dbname=app sslmode=disable").unwrap();
        assert_eq!(p.mode, SslMode::Disable);
        assert_eq!(p.config.get_password(), Some(&b"p a'ss"[..]));
        assert_eq!(p.config.get_dbname(), Some("app"));
        assert_eq!(describe(&p), "alerter@localhost:5433/app (sslmode=Disable)");
    }

    #[test]
    fn bad_values_are_rejected_without_echoing_the_string() {
        let e = prepare("postgres://u:secretpw@h/db?sslmode=sometimes").unwrap_err();
        assert!(e.contains("invalid sslmode") && !e.contains("secretpw"), "{e}");
        assert!(prepare("host=h sslcert=/x").unwrap_err().contains("client certificates"));
        assert!(prepare("host=h password='unterminated").is_err());
    }

    #[test]
    fn connectors_build_for_every_mode() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let p = prepare(&format!("host=localhost sslmode={mode}")).unwrap();
            connector(&p).unwrap();
        }
        let p = prepare("host=localhost sslmode=verify-full sslrootcert=/nonexistent.pem").unwrap();
        assert!(connector(&p).is_err());
    }
}
