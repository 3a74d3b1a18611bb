//! The rollback API (SPEC §5): JSON over TLS. Routes and the OpenAPI document
//! are built from the same annotations, so `/openapi.json` cannot drift from
//! what the router serves.

pub mod auth;
pub mod error;
pub mod handlers;
pub mod hooks;
pub mod model;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::capture::attribution::Attribution;
use crate::metrics::Metrics;
use crate::restore::rollback::Restorer;
use crate::server::Readiness;
use crate::store::kube_store::KubeStore;

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 64 * 1024;

pub struct ApiState {
    pub store: Arc<KubeStore>,
    pub restorer: Arc<Restorer>,
    pub auth: auth::Auth,
    /// The webhook's attribution when it runs in the same process, told
    /// about opened/completed actions at once (other replicas learn it from
    /// their watch on the records).
    pub attribution: Option<Arc<Attribution>>,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Serialises "open an action" so a user cannot end up with two.
    pub open_lock: tokio::sync::Mutex<()>,
    pub alerts: AlertConfig,
    /// The webhook's queued snapshot writes when it runs in this process
    /// with `--capture-ack=queued`: reads of an action wait for them.
    pub pending: Option<Arc<crate::capture::pending::PendingWrites>>,
}

/// How Alertmanager notifications roll actions back.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Namespace-only alerts roll back the newest action younger than this.
    pub window: std::time::Duration,
    /// Impersonate this user instead of the hook's caller.
    pub rollback_as: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "snapback rollback API",
        description = "Actions group the changes snapback captured; a rollback restores every object an action touched to its state before the action. Every call needs `Authorization: Bearer <Kubernetes token>`; calls are authorised with SubjectAccessReview on resource `actions` of API group `snapback.io` (verbs list, get, create, update, rollback, cancel, delete), and restore writes are made impersonating the caller.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "actions"), (name = "probes"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router and the OpenAPI document it serves, from one source.
pub fn router_and_spec(state: Arc<ApiState>) -> (Router, utoipa::openapi::OpenApi) {
    let (router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::list_actions, handlers::create_action))
        .routes(routes!(handlers::get_action, handlers::delete_action))
        .routes(routes!(handlers::diff_action))
        .routes(routes!(handlers::manifests))
        .routes(routes!(handlers::complete_action))
        .routes(routes!(handlers::rollback_action))
        .routes(routes!(handlers::cancel_action))
        .routes(routes!(hooks::alertmanager))
        .routes(routes!(handlers::healthz))
        .routes(routes!(handlers::readyz))
        .with_state(state)
        .split_for_parts();
    let mut spec = spec;
    complete_responses(&mut spec);
    (router, spec)
}

/// OpenAPI requires a description on every response: the handlers'
/// annotations give one where there is something to say, the status says
/// the rest. Every call under `/api/` may also meet an API server that is
/// down (503) and the body limit (413), in the error shape.
fn complete_responses(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
    for (path, item) in spec.paths.paths.iter_mut() {
        let api = path.starts_with("/api/");
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            // The body limit holds for every call, whatever the method.
            for status in ["413", "503"] {
                if api && !responses.contains_key(status) {
                    let error = ContentBuilder::new()
                        .schema(Some(RefOr::<utoipa::openapi::schema::Schema>::Ref(
                            utoipa::openapi::Ref::from_schema_name("ErrorBody"),
                        )))
                        .build();
                    responses.insert(
                        status.into(),
                        RefOr::T(
                            ResponseBuilder::new()
                                .content("application/json", error)
                                .build(),
                        ),
                    );
                }
            }
            for (status, response) in responses.iter_mut() {
                if let RefOr::T(r) = response
                    && r.description.trim().is_empty()
                {
                    r.description = status_description(status).to_string();
                }
            }
        }
    }
}

fn status_description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "created",
        "204" => "done; no content",
        "400" => "a bad parameter, id or body",
        "401" => "no bearer token, or one the API server does not accept",
        "403" => "the caller may not do this (SubjectAccessReview on actions.snapback.io)",
        "404" => "no such action",
        "409" => "a conflict",
        "413" => "the request body is larger than 64 KiB",
        "415" => "the request body is not JSON",
        "503" => "the Kubernetes API server is unavailable; retry later",
        _ => "see the error body",
    }
}

/// Every call under `/api/` is authenticated before anything in it is
/// looked at: a caller without a valid token learns nothing from a 400 about
/// its parameters or body (SPEC §5: 401 for no or an invalid token).
async fn authenticate_first(
    axum::extract::State(state): axum::extract::State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.uri().path().starts_with("/api/")
        && let Err(e) = state.auth.authenticate(req.headers()).await
    {
        return e.into_response();
    }
    next.run(req).await
}

pub fn router(state: Arc<ApiState>) -> Router {
    let (router, spec) = router_and_spec(state.clone());
    let json = Arc::new(spec.to_pretty_json().unwrap_or_else(|_| "{}".into()));
    let router = router.route(
        "/openapi.json",
        get(move || {
            let json = json.clone();
            async move {
                (
                    [("content-type", "application/json")],
                    json.as_str().to_owned(),
                )
            }
        }),
    );
    error::with_error_fallbacks(router)
        .layer(axum::middleware::from_fn_with_state(
            state,
            authenticate_first,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            MAX_BODY,
            crate::body_limit::refuse_oversized,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}
