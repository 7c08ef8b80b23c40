//! TLS material: the configured certificate, or a private CA and a server certificate
//! generated on first start and kept in the data dir, so clients can pin the CA once.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};

/// Paths of the certificate chain, its key, and the CA clients should trust.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Returns the TLS files, generating them under `data_dir/tls` when none are configured.
pub fn ensure(data_dir: &Path, cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<TlsFiles> {
    if let (Some(cert), Some(key)) = (cert, key) {
        return Ok(TlsFiles { cert: cert.to_owned(), key: key.to_owned(), ca: cert.to_owned() });
    }
    let dir = data_dir.join("tls");
    let files = TlsFiles { cert: dir.join("server.pem"), key: dir.join("server.key"), ca: dir.join("ca.pem") };
    if files.cert.exists() && files.key.exists() && files.ca.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "batchai local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "batchai server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&files.ca, ca.as_ref().pem())?;
    std::fs::write(&files.cert, format!("{}{}", cert.pem(), ca.as_ref().pem()))?;
    Ok(files)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    Ok(())
}

/// SHA-256 fingerprint of the first certificate in a PEM file, as `AB:CD:…`.
pub fn fingerprint(pem_path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read_to_string(pem_path)?;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = STANDARD.decode(b64).context("certificate PEM is not base64")?;
    let digest = Sha256::digest(&der);
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}
