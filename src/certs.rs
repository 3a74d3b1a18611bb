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
    #[error("--hosts: {0:?} is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("{path}: {reason}")]
    ExistingCa { path: String, reason: String },
}

/// What `generate` did with the CA.
#[derive(Debug, PartialEq, Eq)]
pub enum CaUsed {
    /// A new one: the webhook configurations' `caBundle` must change.
    New,
    /// The one already in the directory: `caBundle` stays valid.
    Existing,
}

/// Whether `host` is an IP address or a DNS name (RFC 1123 labels, a
/// leading `*.` wildcard allowed) a serving certificate may name.
fn valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Write `tls.crt` and `tls.key` into `out`, signed by the CA in `out`
/// (`ca.crt`, `ca.key`) when there is one, so that a rotation keeps the
/// `caBundle` the webhook configurations carry; otherwise by a new CA,
/// written there too.
pub fn generate(out: &Path, hosts: &[String]) -> Result<CaUsed, CertError> {
    let hosts: Vec<&str> = hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(CertError::NoHosts);
    }
    if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
        return Err(CertError::BadHost(bad.to_string()));
    }
    let (ca_crt, ca_key_path) = (out.join("ca.crt"), out.join("ca.key"));
    let existing = match (ca_crt.exists(), ca_key_path.exists()) {
        (true, true) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| CertError::ExistingCa {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })
            };
            let (cert_pem, key_pem) = (read(&ca_crt)?, read(&ca_key_path)?);
            let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::ExistingCa {
                path: ca_key_path.display().to_string(),
                reason: format!("not a usable private key: {e}"),
            })?;
            Some((cert_pem, key))
        }
        (false, false) => None,
        // Half a CA: never guess, never overwrite the half that is there.
        (crt, _) => {
            let (there, missing) = if crt {
                (&ca_crt, &ca_key_path)
            } else {
                (&ca_key_path, &ca_crt)
            };
            return Err(CertError::ExistingCa {
                path: there.display().to_string(),
                reason: format!(
                    "there, but {} is not: move it away to make a new CA, or put the pair back",
                    missing.display()
                ),
            });
        }
    };
    let mut existing_ca_pem = None;
    let (issuer, used, new_ca) = match existing {
        Some((cert_pem, key)) => {
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::ExistingCa {
                    path: ca_crt.display().to_string(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            existing_ca_pem = Some(cert_pem);
            (issuer, CaUsed::Existing, None)
        }
        None => {
            let mut ca_params = CertificateParams::default();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "snapback local CA");
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca_params.self_signed(&ca_key)?;
            let pems = (ca_cert.pem(), ca_key.serialize_pem());
            (Issuer::new(ca_params, ca_key), CaUsed::New, Some(pems))
        }
    };

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
    // A CA found in the directory is only as good as the pair: a key that
    // is not the certificate's, a certificate that is no CA or has expired
    // would make a serving certificate nobody accepts (and with
    // failurePolicy Fail, every change to the cluster refused).
    if let Some(ca_pem) = &existing_ca_pem {
        verify_chain(ca_pem, cert.der(), hosts[0]).map_err(|why| CertError::ExistingCa {
            path: ca_crt.display().to_string(),
            reason: format!(
                "with {} it does not make a usable CA (a certificate signed with them does not verify: {why}); nothing was written",
                ca_key_path.display()
            ),
        })?;
    }

    std::fs::create_dir_all(out).map_err(|error| CertError::Write {
        path: out.display().to_string(),
        error,
    })?;
    let mut files = vec![("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())];
    if let Some((crt, key)) = new_ca {
        files.push(("ca.crt", crt));
        files.push(("ca.key", key));
    }
    for (name, pem) in files {
        let path = out.join(name);
        write_private(&path, pem.as_bytes(), name.ends_with(".key")).map_err(|error| {
            CertError::Write {
                path: path.display().to_string(),
                error,
            }
        })?;
    }
    Ok(used)
}

/// Whether `leaf` verifies as a serving certificate for `host` under the
/// CA certificate(s) in `ca_pem`.
fn verify_chain(
    ca_pem: &str,
    leaf: &rustls::pki_types::CertificateDer<'_>,
    host: &str,
) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    crate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("not PEM: {e}"))?;
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .map_err(|e| e.to_string())?;
    // A wildcard is checked through a name it covers.
    let name = match host.strip_prefix("*.") {
        Some(rest) => format!("snapback.{rest}"),
        None => host.to_string(),
    };
    let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
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

    /// Whether `dir`'s tls.crt is valid for `host` under `dir`'s ca.crt.
    fn verifies(dir: &Path, host: &str) -> bool {
        let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        let leaf =
            rustls_pemfile::certs(&mut std::fs::read(dir.join("tls.crt")).unwrap().as_slice())
                .next()
                .unwrap()
                .unwrap();
        verify_chain(&ca, &leaf, host).is_ok()
    }

    /// Running `certs` again rotates the serving certificate under the same
    /// CA: the caBundle the webhook configurations carry stays valid.
    #[test]
    fn a_second_run_keeps_the_ca_and_signs_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
        assert_eq!(
            generate(dir.path(), &["localhost".into()]).unwrap(),
            CaUsed::New
        );
        let (ca, ca_key, tls) = (read("ca.crt"), read("ca.key"), read("tls.crt"));
        assert!(verifies(dir.path(), "localhost"));
        assert_eq!(
            generate(dir.path(), &["localhost".into(), "snapback.example".into()]).unwrap(),
            CaUsed::Existing
        );
        assert_eq!(read("ca.crt"), ca);
        assert_eq!(read("ca.key"), ca_key);
        assert_ne!(read("tls.crt"), tls);
        assert!(verifies(dir.path(), "snapback.example"));
        // Half a CA is never completed or overwritten.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = generate(dir.path(), &["localhost".into()]).unwrap_err();
        assert!(matches!(err, CertError::ExistingCa { .. }), "{err}");
        assert_eq!(read("ca.crt"), ca);
        // Another CA's key with this certificate: refused, nothing written.
        let other = tempfile::tempdir().unwrap();
        generate(other.path(), &["localhost".into()]).unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let tls_before = read("tls.crt");
        let err = generate(dir.path(), &["localhost".into()]).unwrap_err();
        assert!(
            err.to_string().contains("does not make a usable CA"),
            "{err}"
        );
        assert_eq!(read("tls.crt"), tls_before);
        // A file that is no key is said so.
        std::fs::write(dir.path().join("ca.key"), "garbage").unwrap();
        let err = generate(dir.path(), &["localhost".into()]).unwrap_err();
        assert!(
            err.to_string().contains("not a usable private key"),
            "{err}"
        );
    }

    #[test]
    fn hosts_must_be_names_or_addresses() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "bad host",
            "a..b",
            "foo_bar",
            "fe80::1%eth0",
            "-x.example",
            "x/y",
        ] {
            assert!(
                matches!(
                    generate(dir.path(), &[bad.into()]),
                    Err(CertError::BadHost(_))
                ),
                "{bad}"
            );
        }
        assert!(!dir.path().join("ca.key").exists(), "nothing written");
        generate(
            dir.path(),
            &[
                "snapback-webhook.snapback-system.svc".into(),
                "*.example.com".into(),
                "::1".into(),
                "10.0.0.1".into(),
            ],
        )
        .unwrap();
    }

    #[test]
    fn no_hosts_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(generate(dir.path(), &[]), Err(CertError::NoHosts)));
    }
}
