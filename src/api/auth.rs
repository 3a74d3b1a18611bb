//! Authentication (bearer token → TokenReview) and authorisation
//! (SubjectAccessReview on `actions.snapback.io`). Tokens are never logged;
//! results are cached for a few seconds under the token's sha256.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::api::error::ApiError;
use crate::restore::rollback::Caller;

const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_LIMIT: usize = 10_000;
pub const API_GROUP: &str = "snapback.io";
pub const RESOURCE: &str = "actions";

/// The identity used for every call under `--auth=none`.
pub const LOCAL_USER: &str = "snapback:local-development";

/// (user and groups, verb, action name) → allowed
type DecisionKey = (String, String, Option<String>);
type Cache<K, V> = Mutex<HashMap<K, (V, Instant)>>;

pub enum Auth {
    /// `--auth=none`: everyone is LOCAL_USER and may do anything.
    None,
    Kubernetes(Box<KubernetesAuth>),
}

pub struct KubernetesAuth {
    client: Client,
    tokens: Cache<String, Caller>,
    decisions: Cache<DecisionKey, bool>,
}

impl Auth {
    pub fn kubernetes(client: Client) -> Self {
        Auth::Kubernetes(Box::new(KubernetesAuth {
            client,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }))
    }

    /// Authenticate the request and authorise `verb` on the action `name`.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        verb: &str,
        name: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let caller = self.authenticate(headers).await?;
        let Auth::Kubernetes(k) = self else {
            return Ok(caller);
        };
        let dkey = (
            caller.user.clone() + "\u{0}" + &caller.groups.join(","),
            verb.to_string(),
            name.map(str::to_string),
        );
        let allowed = match cache_get(&k.decisions, &dkey) {
            Some(a) => a,
            None => {
                let a = access_review(&k.client, &caller, verb, name).await?;
                cache_put(&k.decisions, dkey, a);
                a
            }
        };
        if !allowed {
            return Err(ApiError::forbidden(format!(
                "user {:?} may not {verb} {RESOURCE}.{API_GROUP}{}",
                caller.user,
                name.map(|n| format!(" {n:?}")).unwrap_or_default()
            )));
        }
        Ok(caller)
    }
}

impl Auth {
    /// Who is calling (bearer token → TokenReview), without authorising
    /// anything yet.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Auth::Kubernetes(k) = self else {
            return Ok(Caller {
                user: LOCAL_USER.into(),
                groups: vec![],
            });
        };
        let token = bearer(headers)?;
        let key = crate::store::codec::sha256_hex(token.as_bytes());
        if let Some(c) = cache_get(&k.tokens, &key) {
            return Ok(c);
        }
        let c = token_review(&k.client, token).await?;
        cache_put(&k.tokens, key, c.clone());
        Ok(c)
    }

    /// May `caller` perform `verb` on this object? (Prior states are only
    /// shown to those who could read the object.)
    pub async fn can(
        &self,
        caller: &Caller,
        verb: &str,
        object: &crate::store::model::ObjectRef,
    ) -> Result<bool, ApiError> {
        let Auth::Kubernetes(k) = self else {
            return Ok(true);
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(object.group.clone()),
                    resource: Some(object.resource.clone()),
                    verb: Some(verb.into()),
                    namespace: object.namespace.clone(),
                    name: Some(object.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(k.client.clone());
        let result = answered(
            "authorising the caller (SubjectAccessReview)",
            api.create(&PostParams::default(), &review),
        )
        .await?;
        Ok(result.status.map(|s| s.allowed).unwrap_or(false))
    }
}

fn cache_get<K: std::hash::Hash + Eq, V: Clone>(
    m: &Mutex<HashMap<K, (V, Instant)>>,
    k: &K,
) -> Option<V> {
    let m = m.lock().unwrap_or_else(|p| p.into_inner());
    m.get(k)
        .filter(|(_, at)| at.elapsed() < CACHE_TTL)
        .map(|(v, _)| v.clone())
}

fn cache_put<K: std::hash::Hash + Eq, V>(m: &Cache<K, V>, k: K, v: V) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= CACHE_LIMIT {
        m.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
    }
    m.insert(k, (v, Instant::now()));
}

/// Carries the caller's token through the API server's service proxy, which
/// strips `Authorization` before forwarding. Verified exactly like it.
pub const PROXY_AUTH_HEADER: &str = "x-snapback-authorization";

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    // One credential per call: with two headers, which one a proxy or a
    // log shows and which one is checked must not differ.
    let name = if headers.contains_key(axum::http::header::AUTHORIZATION) {
        axum::http::header::AUTHORIZATION.as_str()
    } else {
        PROXY_AUTH_HEADER
    };
    let mut values = headers.get_all(name).iter();
    let value = values
        .next()
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    if values.next().is_some() {
        return Err(ApiError::unauthorized(format!(
            "more than one {name} header: send one bearer token"
        )));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be \"Bearer <token>\"")
        })?;
    if token.len() > 16 * 1024 {
        return Err(ApiError::unauthorized("the bearer token is too long"));
    }
    Ok(token)
}

async fn token_review(client: &Client, token: &str) -> Result<Caller, ApiError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let result = answered(
        "authenticating the caller (TokenReview)",
        api.create(&PostParams::default(), &review),
    )
    .await?;
    let status = result.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ApiError::unauthorized("the bearer token is not valid"));
    }
    let user = status.user.unwrap_or_default();
    let name = user.username.unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::unauthorized("the bearer token names no user"));
    }
    Ok(Caller {
        user: name,
        groups: user.groups.unwrap_or_default(),
    })
}

async fn access_review(
    client: &Client,
    caller: &Caller,
    verb: &str,
    name: Option<&str>,
) -> Result<bool, ApiError> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.user.clone()),
            groups: Some(caller.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(API_GROUP.into()),
                resource: Some(RESOURCE.into()),
                verb: Some(verb.into()),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let result = answered(
        "authorising the caller (SubjectAccessReview)",
        api.create(&PostParams::default(), &review),
    )
    .await?;
    Ok(result.status.map(|s| s.allowed).unwrap_or(false))
}

/// How long a TokenReview or SubjectAccessReview may take. An API server
/// that takes connections but does not answer (overloaded, stopped, a
/// partition) held every API call for the client's read timeout (about
/// five minutes): a caller, or the API server's service proxy in front of
/// snapback, got no answer at all.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The review's answer, or 503 when the API server is unavailable or does
/// not answer within [`REVIEW_TIMEOUT`].
async fn answered<T>(
    context: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(REVIEW_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| ApiError::kube(context, &e)),
        Err(_) => {
            tracing::warn!(
                "{context}: the Kubernetes API server did not answer within {REVIEW_TIMEOUT:?}"
            );
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{context} failed: the Kubernetes API server did not answer within {}s; retry later",
                    REVIEW_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn one_bearer_token_per_call() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc.def")])).unwrap(),
            "abc.def"
        );
        assert_eq!(
            bearer(&headers(&[(PROXY_AUTH_HEADER, "Bearer xyz")])).unwrap(),
            "xyz"
        );
        // Authorization wins over the proxy header (the proxy strips it).
        assert_eq!(
            bearer(&headers(&[
                ("authorization", "Bearer direct"),
                (PROXY_AUTH_HEADER, "Bearer proxied")
            ]))
            .unwrap(),
            "direct"
        );
        for bad in [
            vec![
                ("authorization", "Bearer one"),
                ("authorization", "Bearer two"),
            ],
            vec![
                (PROXY_AUTH_HEADER, "Bearer one"),
                (PROXY_AUTH_HEADER, "Bearer two"),
            ],
            vec![("authorization", "Bearer token extra")],
            vec![("authorization", "Bearer tok\ten")],
            vec![("authorization", "Bearer ")],
            vec![("authorization", "Basic YWRtaW46YWRtaW4=")],
            vec![],
        ] {
            let err = bearer(&headers(&bad)).unwrap_err();
            assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
    }
}
