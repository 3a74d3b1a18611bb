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
        let (prefix, proxy) = match &args.server {
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
                let prefix = format!(
                    "/api/v1/namespaces/{}/services/{}/proxy",
                    args.service_namespace, args.service
                );
                (prefix, Some(()))
            }
        };
        // kube's default retries 429/503/504 up to 15 times, POSTs too: a
        // rollback that snapback stopped for a shutdown (503, resumed by
        // the next snapshotter) was sent again and answered "already
        // running". The CLI reports what the server said, once.
        config.default_retry = false;
        let client = match proxy {
            Some(()) => proxy_client(&config)?,
            None => {
                kube::Client::try_from(config).map_err(|e| TransportError::Config(e.to_string()))?
            }
        };
        Ok(Transport { client, prefix })
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

/// A client for the API server's service proxy. The API server strips
/// `Authorization` before it proxies to a Service, so the credential kube's
/// auth layer puts there for the API server (a token or token file, an exec
/// plugin's or an auth provider's token, refreshed as kube refreshes it)
/// also goes in `X-Snapback-Authorization`, which snapback reads behind the
/// proxy. (A client certificate cannot be forwarded: snapback then answers
/// 401.) kube's own stack, with that one layer after its auth layer.
fn proxy_client(config: &kube::Config) -> Result<kube::Client, TransportError> {
    use kube::client::ConfigExt;
    let err = |e: kube::Error| TransportError::Config(e.to_string());
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(config.connect_timeout);
    let https = config
        .rustls_https_connector_with_connector(connector)
        .map_err(err)?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(https);
    let forward = http::HeaderName::from_static(crate::api::auth::PROXY_AUTH_HEADER);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(err)?)
        .layer(config.extra_headers_layer().map_err(err)?)
        .map_request(move |mut req: Request<Body>| {
            if let Some(v) = req.headers().get(http::header::AUTHORIZATION).cloned() {
                req.headers_mut().insert(forward.clone(), v);
            }
            req
        })
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
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
