//! The TLS side of the `tls` and `https` checks: which CAs a check trusts,
//! which name the backend's certificate must carry, and a short reason when
//! a handshake fails ("tls: certificate expired").
//!
//! rustls with the `ring` provider verifies the chain, the name and the
//! validity dates; a backend whose certificate fails any of them fails its
//! check, like one that refuses the connection.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{pki_types::ServerName, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::config::{read_ca_file, tls_name, HealthConfig};

/// Where the system's CA bundle lives, first found wins (`SSL_CERT_FILE`
/// comes before these): Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The CAs a check trusts: its `ca_file`, or the system's bundle.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => system_bundle().ok_or_else(|| {
            format!("no system CA bundle found (looked at {}); set ca_file", SYSTEM_BUNDLES.join(", "))
        })?,
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(read_ca_file(&path)?);
    if added == 0 {
        return Err(format!("{} holds no usable CA certificate", path.display()));
    }
    Ok(store)
}

fn system_bundle() -> Option<PathBuf> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    env.into_iter().chain(SYSTEM_BUNDLES.iter().map(PathBuf::from)).find(|p| p.is_file())
}

/// The name the certificate must be valid for (and the SNI sent): `host`,
/// without a `:port`, or the backend's IP address.
pub fn server_name(host: Option<&str>, addr: SocketAddr) -> Result<ServerName<'static>, String> {
    match host {
        None => Ok(ServerName::IpAddress(addr.ip().into())),
        Some(host) => tls_name(host),
    }
}

/// What a check needs to shake hands with one backend; built once per
/// check task, not per probe.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsClient {
    pub fn new(hc: &HealthConfig, addr: SocketAddr) -> Result<Self, String> {
        let roots = roots(hc.ca_file.as_deref())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if hc.check == crate::config::CheckKind::Https {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let name = server_name(hc.host.as_deref(), addr)?;
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), name })
    }

    /// Runs the handshake over `tcp`; the error is the check's reason.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        self.connector.connect(self.name.clone(), tcp).await.map_err(|e| reason(&e))
    }
}

/// "tls: certificate expired" and the like, from a failed handshake.
pub fn reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => format!("tls: {}", certificate_reason(c)),
        Some(rustls::Error::AlertReceived(alert)) => format!("tls: the backend sent alert {alert:?}"),
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "tls: not a TLS answer (does the port serve plain HTTP?)".into()
        }
        Some(rustls::Error::NoCertificatesPresented) => "tls: no certificate presented".into(),
        Some(other) => format!("tls: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "tls: closed during the handshake".into(),
        None => format!("tls: {e}"),
    }
}

fn certificate_reason(c: &CertificateError) -> String {
    match c {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "certificate expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet".into()
        }
        CertificateError::NotValidForName => "certificate not valid for the checked name".into(),
        CertificateError::NotValidForNameContext { expected, presented } => {
            let expected = match expected {
                ServerName::DnsName(n) => n.as_ref().to_owned(),
                ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                other => format!("{other:?}"),
            };
            // webpki writes the names as `DnsName("www.example.org")`.
            let names: Vec<&str> = presented
                .iter()
                .map(|p| p.strip_prefix("DnsName(\"").and_then(|p| p.strip_suffix("\")")).unwrap_or(p))
                .collect();
            match names.is_empty() {
                true => format!("certificate not valid for {expected} (it names no DNS name or IP)"),
                false => format!("certificate not valid for {expected} (it is for {})", names.join(", ")),
            }
        }
        CertificateError::UnknownIssuer => "certificate signed by an unknown CA".into(),
        CertificateError::BadSignature => "certificate has a bad signature".into(),
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::BadEncoding => "certificate badly encoded".into(),
        other => format!("certificate invalid: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_to_check() {
        let addr: SocketAddr = "198.18.1.11:443".parse().unwrap();
        let name = |h: Option<&str>| server_name(h, addr).map(|n| n.to_str().into_owned());
        assert_eq!(name(None).unwrap(), "198.18.1.11");
        assert_eq!(name(Some("www.foobar.com")).unwrap(), "www.foobar.com");
        assert_eq!(name(Some("www.foobar.com:8443")).unwrap(), "www.foobar.com");
        assert_eq!(name(Some("[2001:db8::1]:443")).unwrap(), "2001:db8::1");
        let err = name(Some("bad_name!")).unwrap_err();
        assert!(err.contains("is not a DNS name"), "{err}");
    }

    #[test]
    fn ca_files_are_read_or_explained() {
        let dir = std::env::temp_dir().join(format!("xlb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = read_ca_file(&empty).unwrap_err();
        assert!(err.contains("holds no certificate"), "expected 'holds no certificate', got {err}");
        let err = read_ca_file(&dir.join("missing.pem")).unwrap_err();
        assert!(err.contains("cannot read") && err.contains("missing.pem"), "expected 'cannot read', got {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
