//! A throwaway certificate authority for the emulator's https listener,
//! made at test time: nothing secret is checked in, and nothing expires.

use std::path::PathBuf;

use drawbridge::sandbox::TlsIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_pem: String,
    /// The CA certificate as a file (for `SSL_CERT_FILE` or `curl --cacert`).
    pub ca_file: PathBuf,
    server_pem: String,
    server_key_pem: String,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Drawbridge test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");

        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("CA file");
        Self {
            ca_pem: ca.pem(),
            ca_file,
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            _dir: dir,
        }
    }

    /// The server's certificate and key, for the emulator.
    pub fn server_identity(&self) -> TlsIdentity {
        TlsIdentity::from_pem(&self.server_pem, &self.server_key_pem).expect("a valid identity")
    }

    /// A reqwest client that trusts this CA only.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .expect("client")
    }
}
