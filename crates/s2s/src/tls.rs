//! TLS for s2s: configurations that complete the handshake with any certificate, and the
//! certificate validation (RFC 6120 §13.7.2, RFC 6125 name checks) done afterwards.
//!
//! A peer whose certificate does not validate may still authenticate with dialback (XEP-0220,
//! where policy allows), so the handshake must not fail on it, as in ejabberd and Prosody. The
//! handshake signatures are still checked; the chain and the name are checked after the
//! handshake against the system trust store (`rustls-native-certs`: operators manage trust
//! with the distribution's ca-certificates, as for every other daemon on the machine) plus
//! `s2s_cafile`, with webpki's verifier, whose name check implements RFC 6125 (DNS-ID only,
//! wildcard only as the complete left-most label).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::ResolvesServerCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Why the trust store could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// `s2s_cafile` could not be read.
    #[error("{path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// No trust anchor at all (neither system roots nor `s2s_cafile`).
    #[error("no trust anchors: install ca-certificates or set s2s_cafile")]
    Empty,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Validates peer certificates for a domain.
#[derive(Debug, Clone)]
pub struct Trust {
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

impl Trust {
    /// System roots (unless `system` is false, for tests) plus the PEM certificates of
    /// `cafile`. With no anchors at all nothing validates (dialback remains).
    pub fn load(system: bool, cafile: Option<&Path>) -> Result<Self, TrustError> {
        let mut roots = RootCertStore::empty();
        if system {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "cannot read some system CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, "system CA certificates loaded for s2s");
        }
        if let Some(path) = cafile {
            let err = |m: &dyn std::fmt::Display| TrustError::CaFile {
                path: path.display().to_string(),
                message: m.to_string(),
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(&e))?;
            if certs.is_empty() {
                return Err(err(&"no certificate in the file"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| err(&e))?;
            }
        }
        if roots.is_empty() {
            return Ok(Self { verifier: None });
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TrustError::Rustls(rustls::Error::General(e.to_string())))?;
        Ok(Self {
            verifier: Some(verifier),
        })
    }

    /// True if `chain` (end entity first) chains to a trust anchor and names `domain`.
    pub fn validates(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        let (Some(verifier), Some((end, intermediates))) = (&self.verifier, chain.split_first())
        else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_owned()) else {
            return false;
        };
        match verifier.verify_server_cert(end, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%domain, error = %e, "peer certificate does not validate");
                false
            }
        }
    }
}

/// Accepts any certificate during the handshake (checked afterwards with [`Trust`]) while
/// still verifying the handshake signatures.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new() -> Self {
        Self {
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Presents one certificate as our client certificate.
#[derive(Debug)]
struct OwnCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server side of incoming s2s TLS: our certificates by SNI, client certificates asked
/// for but optional.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyCertificate::new()))
        .with_cert_resolver(certs);
    Ok(Arc::new(config))
}

/// The client side of outgoing s2s TLS for one local domain, presenting `own` (the
/// certificate of that domain) so the peer can offer SASL EXTERNAL.
pub fn client_config(own: Arc<CertifiedKey>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
        .with_client_cert_resolver(Arc::new(OwnCertificate(own)));
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test CA and a function issuing leaf certificates (PEM chain + key) from it.
    pub(crate) struct TestCa {
        pub(crate) pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
                .unwrap_or_else(|e| panic!("{e}"));
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Starling test CA");
            let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
            Self {
                pem: cert.pem(),
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        /// (certificate PEM, key PEM) for `names`.
        pub(crate) fn issue(&self, names: &[&str]) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap_or_else(|e| panic!("{e}"));
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params
                .signed_by(&key, &self.issuer)
                .unwrap_or_else(|e| panic!("{e}"));
            (cert.pem(), key.serialize_pem())
        }
    }

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn name_checks_follow_rfc_6125() {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.pem).unwrap_or_else(|e| panic!("{e}"));
        let trust = Trust::load(false, Some(&ca_path)).unwrap_or_else(|e| panic!("{e}"));

        let (leaf, _) = ca.issue(&["a.test", "*.wild.test"]);
        let chain = der(&leaf);
        assert!(trust.validates(&chain, "a.test"));
        assert!(trust.validates(&chain, "A.TEST"));
        assert!(trust.validates(&chain, "x.wild.test"));
        // A wildcard covers exactly one left-most label.
        assert!(!trust.validates(&chain, "wild.test"));
        assert!(!trust.validates(&chain, "y.x.wild.test"));
        assert!(!trust.validates(&chain, "b.test"));
        assert!(!trust.validates(&[], "a.test"));

        // Another CA's certificate does not validate; neither does anything without anchors.
        let (other, _) = TestCa::new().issue(&["a.test"]);
        assert!(!trust.validates(&der(&other), "a.test"));
        let none = Trust::load(false, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(!none.validates(&chain, "a.test"));
    }

    #[test]
    fn bad_cafile_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "nothing").unwrap_or_else(|e| panic!("{e}"));
        assert!(Trust::load(false, Some(&path)).is_err());
        assert!(Trust::load(false, Some(&dir.path().join("missing.pem"))).is_err());
    }
}
