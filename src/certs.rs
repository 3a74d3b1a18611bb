//! `snapback certs`: a CA and a serving certificate for local use. Keys are
//! generated, never committed.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("no hosts given")]
    NoHosts,
}

/// Write `ca.crt`, `ca.key`, `tls.crt` and `tls.key` into `out`.
pub fn generate(out: &Path, hosts: &[String]) -> Result<(), CertError> {
    let hosts: Vec<&str> = hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(CertError::NoHosts);
    }
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "snapback local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, hosts[0]);
    params.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName((*h).try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    std::fs::create_dir_all(out).map_err(|error| CertError::Write {
        path: out.display().to_string(),
        error,
    })?;
    let files = [
        ("ca.crt", ca_cert.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("tls.crt", cert.pem()),
        ("tls.key", key.serialize_pem()),
    ];
    for (name, pem) in files {
        let path = out.join(name);
        write_private(&path, pem.as_bytes(), name.ends_with(".key")).map_err(|error| {
            CertError::Write {
                path: path.display().to_string(),
                error,
            }
        })?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    // Write a sibling and rename, so a watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_into_rustls() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        crate::tls::server_config(
            &dir.path().join("tls.crt"),
            &dir.path().join("tls.key"),
            None,
        )
        .unwrap();
        crate::tls::server_config(
            &dir.path().join("tls.crt"),
            &dir.path().join("tls.key"),
            Some(&dir.path().join("ca.crt")),
        )
        .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("tls.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "key must not be group/world readable");
    }

    #[test]
    fn no_hosts_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(generate(dir.path(), &[]), Err(CertError::NoHosts)));
    }
}
