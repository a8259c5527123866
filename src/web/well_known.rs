//! Key publication: the JWKS that verifies chat tokens and issuer metadata.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::state::AppState;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
}

/// Every public key whose chat tokens may still be valid.
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let keys = state.keys.keys();
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(keys.jwks().clone()),
    )
}

/// Issuer metadata, so JWT libraries that discover keys from `iss` find the JWKS.
async fn openid_configuration(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.keys.issuer();
    let algs: Vec<&str> = vec![issuer.key().alg_name()];
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(json!({
            "issuer": issuer.issuer(),
            "jwks_uri": state.config.public_url.join("/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": algs,
            "chat_token_signing_alg_values_supported": algs,
            "subject_types_supported": ["public"],
        })),
    )
}
