//! Reaching the rollback API with nothing but the user's kubeconfig: through
//! the API server's service proxy (default), or directly with `--server`.

use std::path::PathBuf;

use http::{Method, Request, StatusCode};
use kube::client::Body;

/// Where and how to reach the snapshotter.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Kubeconfig file (default: KUBECONFIG, which may list several files
    /// as kubectl reads it, or ~/.kube/config).
    #[arg(long, global = true, env = "SNAPBACK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true, env = "SNAPBACK_CONTEXT")]
    pub context: Option<String>,
    /// Reach the rollback API at this URL instead of through the API server's
    /// service proxy, e.g. https://127.0.0.1:9443
    #[arg(long, global = true, env = "SNAPBACK_SERVER")]
    pub server: Option<String>,
    /// CA certificate (PEM) of the rollback API, with --server.
    #[arg(long, global = true, env = "SNAPBACK_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Namespace of snapback's Service (service-proxy path).
    #[arg(
        long,
        global = true,
        default_value = "snapback-system",
        env = "SNAPBACK_SERVICE_NAMESPACE"
    )]
    pub service_namespace: String,
    /// The Service of the rollback API, as `scheme:name:port`.
    #[arg(
        long,
        global = true,
        default_value = "https:snapback-api:443",
        env = "SNAPBACK_SERVICE"
    )]
    pub service: String,
}

pub struct Transport {
    client: kube::Client,
    prefix: String,
    proxy_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the snapback API: {0}")]
    Unreachable(String),
}

impl Transport {
    pub async fn new(args: &ConnectArgs) -> Result<Self, TransportError> {
        let mut config =
            crate::kube_client::config(args.kubeconfig.as_deref(), args.context.as_deref())
                .await
                .map_err(|e| TransportError::Config(format!("{e:#}")))?;
        let (prefix, proxy_token) = match &args.server {
            Some(server) => {
                config.cluster_url = server
                    .parse()
                    .map_err(|e| TransportError::Config(format!("--server {server:?}: {e}")))?;
                config.tls_server_name = None;
                match &args.ca_file {
                    Some(ca) => {
                        let pem = std::fs::read(ca).map_err(|e| {
                            TransportError::Config(format!("reading {}: {e}", ca.display()))
                        })?;
                        let certs = rustls_pemfile::certs(&mut pem.as_slice())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| {
                                TransportError::Config(format!("{}: {e}", ca.display()))
                            })?;
                        config.root_cert = Some(certs.into_iter().map(|c| c.to_vec()).collect());
                    }
                    None => config.root_cert = None,
                }
                // Client certificates of the kubeconfig are for the API server.
                config.auth_info.client_certificate = None;
                config.auth_info.client_certificate_data = None;
                config.auth_info.client_key = None;
                config.auth_info.client_key_data = None;
                (String::new(), None)
            }
            None => {
                // The API server strips Authorization before proxying; the
                // token travels in X-Snapback-Authorization as well.
                let token = bearer_token(&config);
                let prefix = format!(
                    "/api/v1/namespaces/{}/services/{}/proxy",
                    args.service_namespace, args.service
                );
                (prefix, token)
            }
        };
        // kube's default retries 429/503/504 up to 15 times, POSTs too: a
        // rollback that snapback stopped for a shutdown (503, resumed by
        // the next snapshotter) was sent again and answered "already
        // running". The CLI reports what the server said, once.
        config.default_retry = false;
        let client =
            kube::Client::try_from(config).map_err(|e| TransportError::Config(e.to_string()))?;
        Ok(Transport {
            client,
            prefix,
            proxy_token,
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), TransportError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix));
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.proxy_token {
            req = req.header(crate::api::auth::PROXY_AUTH_HEADER, format!("Bearer {t}"));
        }
        let req = req
            .body(Body::from(body.unwrap_or_default()))
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let resp = self
            .client
            .send(req)
            .await
            .map_err(|e| TransportError::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect_bytes()
            .await
            .map_err(|e| TransportError::Unreachable(error_chain(&e)))?;
        Ok((status, bytes.to_vec()))
    }
}

fn bearer_token(config: &kube::Config) -> Option<String> {
    use secrecy::ExposeSecret;
    if let Some(t) = &config.auth_info.token {
        return Some(t.expose_secret().to_string());
    }
    let file = config.auth_info.token_file.as_ref()?;
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
}

/// An error with its causes ("client error (Connect): invalid peer
/// certificate: UnknownIssuer"): the top one alone rarely says what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
