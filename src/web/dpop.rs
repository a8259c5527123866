//! DPoP proofs on the host page's fetch endpoints. Every app's widget proves
//! its browser key to `/v1/session`, `/v1/session/token` and `/v1/signout`
//! ([`browser_key`]); apps with `bind_chat_tokens = "dpop"` must, and also
//! on `/v1/host-session` and `/v1/token-exchange` ([`for_app`]).
//! Errors are `401 invalid_dpop_proof`.

use axum::http::HeaderMap;

use crate::config::AppConfig;
use crate::dpop::{self, DpopError, Expected, Proof};
use crate::state::AppState;
use crate::web::ApiError;

/// The request header of a proof.
pub const HEADER_NAME: &str = dpop::HEADER;

pub(super) fn refused(e: &DpopError) -> ApiError {
    ApiError::unauthorized("invalid_dpop_proof", e.to_string())
}

/// The checked proof of a `POST {public_url}{path}` for a DPoP app (`None`
/// for other apps). `token`: the token presented with it (`ath`). The proof
/// is not yet spent: call [`spend`] once the request is otherwise authorized.
pub fn for_app(
    state: &AppState,
    app: &AppConfig,
    headers: &HeaderMap,
    path: &str,
    token: Option<&str>,
) -> Result<Option<Proof>, ApiError> {
    if !app.binds_dpop() {
        return Ok(None);
    }
    browser_key(state, app, headers, path, token)
}

/// The checked proof of a `POST {public_url}{path}` of the page's browser
/// key: required for DPoP apps, checked when sent for every other app (`None`
/// without one). Not yet spent: call [`spend`] once the request is otherwise
/// authorized.
pub fn browser_key(
    state: &AppState,
    app: &AppConfig,
    headers: &HeaderMap,
    path: &str,
    token: Option<&str>,
) -> Result<Option<Proof>, ApiError> {
    if !app.binds_dpop() && !headers.contains_key(dpop::HEADER) {
        return Ok(None);
    }
    let mut values = headers.get_all(dpop::HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ApiError::unauthorized(
            "invalid_dpop_proof",
            "this app binds chat tokens to the browser's key: send one DPoP proof header",
        ));
    };
    let proof = value.to_str().map_err(|_| refused(&DpopError::Malformed))?;
    let htu = state.config.public_url.join(path);
    dpop::verify(
        proof,
        &Expected {
            htm: "POST",
            htu: &htu,
            access_token: token,
            now: crate::time::now(),
            clock_skew: state.config.clock_skew,
        },
    )
    .map(Some)
    .map_err(|e| refused(&e))
}

/// Records the proof's `jti` as used (in the database, so across replicas);
/// a second use is `401 invalid_dpop_proof`.
pub async fn spend(state: &AppState, proof: &Proof) -> Result<(), ApiError> {
    let first = proof.spend(&state.store, state.config.clock_skew).await?;
    if first {
        Ok(())
    } else {
        Err(refused(&DpopError::Replayed))
    }
}
