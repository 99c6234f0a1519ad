//! TLS with rustls (ring provider): the listeners' server config, whose
//! certificate is re-read when its files change, and the one client config
//! used towards upstreams and OAuth providers (system roots plus an optional
//! CA file).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often certificate files are checked for changes.
pub const CERT_POLL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn load_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| file_error(key, e))?;
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| file_error(key, e))?
        .ok_or_else(|| file_error(key, "no PEM private key found"))?;
    let signing = provider::sign::any_supported_type(&der).map_err(|e| file_error(key, e))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| file_error(key, e))?;
    Ok(ck)
}

fn mtimes(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

/// A server certificate that follows its files: a bad new pair is logged
/// and the old one kept.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let seen = mtimes(cert, key);
        Ok(ReloadingCert {
            current: ArcSwap::from_pointee(load_key(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
            seen: Mutex::new(seen),
        })
    }

    /// Re-reads the files if their modification times changed.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = mtimes(&self.cert, &self.key);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return Ok(false);
        }
        *seen = now;
        self.current
            .store(Arc::new(load_key(&self.cert, &self.key)?));
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Server config for a listener, offering h2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client config: the system's roots plus `ca_file` when given.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| file_error(path, e))?;
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_and_follows_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.test");
        let rc = ReloadingCert::load(&cert, &key).unwrap();
        let first = rc.current.load_full();
        assert!(!rc.reload_if_changed().unwrap());
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), "two.test");
        // Force a visible mtime change on file systems with coarse timestamps.
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&cert)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(rc.reload_if_changed().unwrap());
        assert_ne!(first.cert[0], rc.current.load_full().cert[0]);
    }

    #[test]
    fn a_bad_new_pair_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.test");
        let rc = ReloadingCert::load(&cert, &key).unwrap();
        let first = rc.current.load_full();
        std::fs::write(&key, "not a key").unwrap();
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&key)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(rc.reload_if_changed().is_err());
        assert_eq!(first.cert[0], rc.current.load_full().cert[0]);
    }

    #[test]
    fn missing_files_are_named() {
        let err =
            ReloadingCert::load(Path::new("/nonexistent.crt"), Path::new("/x.key")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.crt"), "{err}");
    }

    #[test]
    fn client_config_takes_a_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "ca.test");
        client_config(Some(&cert)).unwrap();
        assert!(client_config(Some(Path::new("/nonexistent-ca.pem"))).is_err());
    }
}
