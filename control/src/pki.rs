//! The cluster's PKI, as Swarm has it: a root CA made at `swarm init`,
//! a certificate per node (CN = node ID, OU = role, O = cluster ID) signed
//! from the node's own CSR, and the rustls configurations that use them.
//!
//! A joining node does not know the CA yet; it pins it by the digest in the
//! join token ([`PinnedCaVerifier`]). Afterwards every connection on the
//! management port is mutual TLS under the cluster CA.

use std::{fmt, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, ServerName, UnixTime,
    pem::PemObject,
};

use crate::token::JoinToken;

/// The DNS name every manager certificate carries; clients verify it.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";
pub const OU_MANAGER: &str = "swarm-manager";
pub const OU_WORKER: &str = "swarm-worker";
/// Node certificates live 90 days, Docker's default `--cert-expiry`.
const NODE_CERT_DAYS: i64 = 90;
const CA_CERT_DAYS: i64 = 20 * 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generate key")]
    Key(#[source] rcgen::Error),
    #[error("make certificate for {what}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid certificate signing request")]
    Csr(#[source] rcgen::Error),
    #[error("invalid PEM for {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The cluster's root CA: certificate and key, PEM encoded.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa").finish_non_exhaustive()
    }
}

/// A node's own certificate and key, PEM encoded, with the CA it chains to.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

impl RootCa {
    pub fn generate(cluster_id: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Key)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "swarm-ca");
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = days_from_now(CA_CERT_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Certificate {
                what: "root CA".into(),
                source,
            })?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|source| PkiError::Pem {
            what: "CA certificate",
            source,
        })
    }

    /// Signs a node certificate for the public key in `csr_der`. Whatever
    /// names the CSR asks for are ignored: the CA decides them.
    pub fn sign_node(
        &self,
        csr_der: &[u8],
        node_id: &str,
        cluster_id: &str,
        manager: bool,
    ) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(PkiError::Csr)?;
        let params = node_params(node_id, cluster_id, manager);
        let key = KeyPair::from_pem(&self.key_pem).map_err(PkiError::Key)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|source| {
            PkiError::Certificate {
                what: "CA issuer".into(),
                source,
            }
        })?;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&issuer)
        .map_err(|source| PkiError::Certificate {
            what: format!("node {node_id}"),
            source,
        })?;
        Ok(signed.pem())
    }

    /// Issues a certificate for a node whose key the CA side makes itself
    /// (the node running `swarm init`).
    pub fn issue_local(
        &self,
        node_id: &str,
        cluster_id: &str,
        manager: bool,
    ) -> Result<NodeIdentity, PkiError> {
        let (key_pem, csr_der) = new_csr()?;
        let cert_pem = self.sign_node(&csr_der, node_id, cluster_id, manager)?;
        Ok(NodeIdentity {
            cert_pem,
            key_pem,
            ca_cert_pem: self.cert_pem.clone(),
        })
    }
}

fn node_params(node_id: &str, cluster_id: &str, manager: bool) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        if manager { OU_MANAGER } else { OU_WORKER },
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster_id);
    let mut sans = Vec::new();
    if let (true, Ok(name)) = (manager, MANAGER_SERVER_NAME.try_into()) {
        sans.push(SanType::DnsName(name));
    }
    if let Ok(name) = node_id.try_into() {
        sans.push(SanType::DnsName(name));
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = days_from_now(NODE_CERT_DAYS);
    params
}

/// A fresh key pair and a CSR for it: (key PEM, CSR DER).
pub fn new_csr() -> Result<(String, Vec<u8>), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::Key)?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|source| PkiError::Certificate {
            what: "signing request".into(),
            source,
        })?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

impl NodeIdentity {
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let pem = |what, s: &str| {
            CertificateDer::from_pem_slice(s.as_bytes())
                .map_err(|source| PkiError::Pem { what, source })
        };
        Ok(vec![
            pem("node certificate", &self.cert_pem)?,
            pem("CA certificate", &self.ca_cert_pem)?,
        ])
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| PkiError::Pem {
            what: "node key",
            source,
        })
    }

    fn roots(&self) -> Result<RootCertStore, PkiError> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes()).map_err(|source| {
            PkiError::Pem {
                what: "CA certificate",
                source,
            }
        })?;
        roots.add(ca)?;
        Ok(roots)
    }

    /// The management port's server side: presents this manager's chain
    /// (with the CA, so joiners can pin it) and verifies client
    /// certificates when offered. Joiners have none yet; every request
    /// other than a join requires one (checked per request).
    pub fn server_config(&self) -> Result<ServerConfig, PkiError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                .allow_unauthenticated()
                .build()?;
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)?)
    }

    /// Mutual TLS to a manager, under the cluster CA.
    pub fn client_config(&self) -> Result<ClientConfig, PkiError> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)?)
    }
}

/// Client configuration for joining: trusts exactly the CA whose digest
/// the join token carries, as the manager presents it in its chain.
pub fn join_client_config(token: &JoinToken) -> Result<ClientConfig, PkiError> {
    let verifier = PinnedCaVerifier {
        token: token.clone(),
        provider: provider(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

pub fn manager_server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls_pki_types::DnsName::try_from(MANAGER_SERVER_NAME)
            .expect("constant is a valid DNS name")
            .to_owned(),
    )
}

/// Verifies a manager's chain against the CA pinned by a join token: the
/// CA must be in the presented chain with the token's digest, and the leaf
/// must verify under it as any WebPKI chain would.
#[derive(Debug)]
struct PinnedCaVerifier {
    token: JoinToken,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| self.token.pins(c.as_ref()))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "remote CA does not match fingerprint. Expected: {}",
                    self.token.ca_digest()
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The node ID (CN) and role (OU) a peer's certificate names.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<(String, bool)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let manager = subject
        .iter_organizational_unit()
        .any(|ou| ou.as_str().ok() == Some(OU_MANAGER));
    Some((cn, manager))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificate_names_come_from_the_ca() {
        let ca = RootCa::generate("cluster1").expect("ca");
        let id = ca.issue_local("node1", "cluster1", true).expect("issue");
        let der = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).expect("pem");
        assert_eq!(peer_identity(&der), Some(("node1".to_owned(), true)));
        id.server_config().expect("server config");
        id.client_config().expect("client config");
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = RootCa::generate("c").expect("ca");
        assert!(matches!(
            ca.sign_node(b"not a csr", "n", "c", false),
            Err(PkiError::Csr(_))
        ));
    }
}
