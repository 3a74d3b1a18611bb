//! Serving TLS with rustls: load the certificate and key, and reload them when
//! the files change (cert-manager and kubelet secret updates rotate them in
//! place).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The cause is in the message, not also a `source` (anyhow's `{:#}`
    // would print it twice).
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key found in {0}")]
    NoKey(PathBuf),
    #[error("invalid certificate or key: {0}")]
    Rustls(rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// Install the process-wide crypto provider (ring, as kube and rcgen use).
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Build a rustls server config offering TLS 1.2 and 1.3 only; with
/// `client_ca`, clients must present a certificate signed by it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    install_crypto_provider();
    let read = |p: &Path| {
        std::fs::read(p).map_err(|error| TlsError::Read {
            path: p.to_path_buf(),
            error,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::Read {
            path: cert.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|error| TlsError::Read {
            path: key.to_path_buf(),
            error,
        })?
        .ok_or_else(|| TlsError::NoKey(key.to_path_buf()))?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = read(ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|error| TlsError::Read {
                    path: ca.to_path_buf(),
                    error,
                })?;
                roots.add(c).map_err(TlsError::Rustls)?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCertificate(ca.to_path_buf()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key_der)
        .map_err(TlsError::Rustls)?;
    // The API server talks HTTP/1.1 to webhooks; API clients may use h2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A reloadable TLS config plus a flag telling whether it is loaded.
#[derive(Clone)]
pub struct ServingTls {
    pub config: RustlsConfig,
    pub loaded: Arc<AtomicBool>,
    client_ca: Option<PathBuf>,
}

impl ServingTls {
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let config = RustlsConfig::from_config(Arc::new(server_config(cert, key, client_ca)?));
        Ok(ServingTls {
            config,
            loaded: Arc::new(AtomicBool::new(true)),
            client_ca: client_ca.map(Path::to_path_buf),
        })
    }

    /// Watch the files and swap the served certificate when they change. A
    /// broken new pair is logged and the old one kept.
    pub fn spawn_reloader(&self, cert: PathBuf, key: PathBuf, every: Duration) {
        let tls = self.clone();
        tokio::spawn(async move {
            let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last: (Option<SystemTime>, Option<SystemTime>) = (stamp(&cert), stamp(&key));
            loop {
                tokio::time::sleep(every).await;
                let now = (stamp(&cert), stamp(&key));
                if now == last {
                    continue;
                }
                last = now;
                match server_config(&cert, &key, tls.client_ca.as_deref()) {
                    Ok(cfg) => {
                        tls.config.reload_from_config(Arc::new(cfg));
                        tls.loaded.store(true, Ordering::Relaxed);
                        tracing::info!(cert = %cert.display(), "reloaded serving certificate");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "certificate changed but cannot be loaded; keeping the previous one");
                    }
                }
            }
        });
    }
}
