//! TLS server configuration: certificates from `certfiles`, chosen per host by SNI, or a
//! self-signed certificate for the configured hosts, generated on first start and kept in the
//! data directory so clients that pinned it keep working across restarts.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Keys and certificates do not form a usable pair.
    #[error("no certificate matches the private key in {0}")]
    Unpaired(PathBuf),
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificates this node serves, by host.
pub struct Certificates {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Where each came from, for logs.
    pub sources: Vec<PathBuf>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("sources", &self.sources)
            .finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello
            .server_name()
            .and_then(|name| self.by_host.get(&name.to_ascii_lowercase()));
        Some(by_name.unwrap_or(&self.default).clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Certificates {
    /// Loads `certfiles` (PEM; certificates and keys may share a file or be split across
    /// files) and assigns each host the first certificate valid for it. With no files, uses
    /// (or creates) a self-signed certificate for `hosts` under `data_dir/certs`.
    pub fn load(
        certfiles: &[PathBuf],
        hosts: &[String],
        data_dir: &Path,
    ) -> Result<Self, TlsError> {
        if certfiles.is_empty() {
            let path = self_signed(hosts, data_dir)?;
            return Self::from_files(&[path], hosts);
        }
        Self::from_files(certfiles, hosts)
    }

    fn from_files(files: &[PathBuf], hosts: &[String]) -> Result<Self, TlsError> {
        let provider = provider();
        let mut chains: Vec<Vec<CertificateDer<'static>>> = Vec::new();
        let mut keys: Vec<(PathBuf, PrivateKeyDer<'static>)> = Vec::new();
        for path in files {
            let file_err = |e: &dyn fmt::Display| TlsError::File {
                path: path.clone(),
                message: e.to_string(),
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_err(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(&e))?;
            if !chain.is_empty() {
                chains.push(chain);
            }
            if let Ok(key) = PrivateKeyDer::from_pem_file(path) {
                keys.push((path.clone(), key));
            }
        }
        if keys.is_empty() {
            return Err(TlsError::File {
                path: files.first().cloned().unwrap_or_default(),
                message: "no private key found in the certificate files".into(),
            });
        }
        let mut pairs: Vec<Arc<CertifiedKey>> = Vec::new();
        for (path, key) in keys {
            let signing =
                provider
                    .key_provider
                    .load_private_key(key)
                    .map_err(|e| TlsError::File {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            let found = chains.iter().find_map(|chain| {
                let ck = CertifiedKey::new(chain.clone(), signing.clone());
                ck.keys_match().is_ok().then_some(ck)
            });
            match found {
                Some(ck) => pairs.push(Arc::new(ck)),
                None => return Err(TlsError::Unpaired(path)),
            }
        }
        let mut by_host = HashMap::new();
        for host in hosts {
            for ck in &pairs {
                // rustls' own SNI resolver checks that the certificate names the host
                // (wildcards included); use it as the validator.
                let mut probe = ResolvesServerCertUsingSni::new();
                if probe.add(host, (**ck).clone()).is_ok() {
                    by_host.insert(host.to_ascii_lowercase(), ck.clone());
                    break;
                }
            }
            if !by_host.contains_key(&host.to_ascii_lowercase()) {
                tracing::warn!(%host, "no certificate names this host; the default one is used");
            }
        }
        let Some(default) = pairs.first().cloned() else {
            return Err(TlsError::Unpaired(
                files.first().cloned().unwrap_or_default(),
            ));
        };
        Ok(Self {
            by_host,
            default,
            sources: files.to_vec(),
        })
    }

    /// The certificate served for `host` (the default one when none names it), e.g. for the
    /// client certificate an outgoing s2s connection presents.
    pub fn for_host(&self, host: &str) -> Arc<CertifiedKey> {
        self.by_host
            .get(&host.to_ascii_lowercase())
            .unwrap_or(&self.default)
            .clone()
    }

    /// A rustls server configuration serving these certificates (TLS 1.2 and 1.3).
    pub fn server_config(self: Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self);
        Ok(Arc::new(config))
    }
}

/// Returns the path of the self-signed certificate for `hosts`, creating it when missing or
/// when the hosts changed.
fn self_signed(hosts: &[String], data_dir: &Path) -> Result<PathBuf, TlsError> {
    let dir = data_dir.join("certs");
    let pem_path = dir.join("self-signed.pem");
    let hosts_path = dir.join("self-signed.hosts");
    let wanted = hosts.join("\n");
    if pem_path.exists() && std::fs::read_to_string(&hosts_path).is_ok_and(|h| h == wanted) {
        return Ok(pem_path);
    }
    let io_err = |path: &Path, e: std::io::Error| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let pem = format!(
        "{}{}",
        generated.cert.pem(),
        generated.signing_key.serialize_pem()
    );
    write_private(&pem_path, pem.as_bytes()).map_err(|e| io_err(&pem_path, e))?;
    std::fs::write(&hosts_path, wanted).map_err(|e| io_err(&hosts_path, e))?;
    tracing::warn!(
        path = %pem_path.display(),
        "no certfiles configured: generated a self-signed certificate (clients will not trust it)"
    );
    Ok(pem_path)
}

/// Writes a file readable only by its owner (it holds a private key).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned(), "example.test".to_owned()];
        let first = Certificates::load(&[], &hosts, dir.path()).unwrap();
        assert!(first.by_host.contains_key("example.test"));
        let pem = std::fs::read(dir.path().join("certs/self-signed.pem")).unwrap();
        let _second = Certificates::load(&[], &hosts, dir.path()).unwrap();
        assert_eq!(
            pem,
            std::fs::read(dir.path().join("certs/self-signed.pem")).unwrap(),
            "restarts keep the same certificate"
        );
        // New hosts: regenerated.
        let third = Certificates::load(&[], &["other.test".to_owned()], dir.path()).unwrap();
        assert!(third.by_host.contains_key("other.test"));
        Arc::new(third).server_config().unwrap();
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Certificates::load(
            &[PathBuf::from("/nonexistent/cert.pem")],
            &["x".into()],
            Path::new("/tmp"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
