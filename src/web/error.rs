//! The HTTP error type: every failure becomes JSON
//! `{"error": "<code>", "error_description": "..."}` with the right status.
//! 5xx bodies say nothing internal; the detail goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;
use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with an OAuth-style code (`invalid_request`, `invalid_token`, ...).
    #[error("{code}: {description}")]
    BadRequest {
        code: &'static str,
        description: String,
    },
    /// 401 without credentials: `WWW-Authenticate: Bearer realm="chatgate"`.
    #[error("unauthorized: no credentials")]
    MissingCredentials,
    /// 401 with `WWW-Authenticate: Bearer realm="chatgate", error="<code>"`.
    #[error("{code}: {description}")]
    Unauthorized {
        code: &'static str,
        description: String,
    },
    /// 403.
    #[error("{code}: {description}")]
    Forbidden {
        code: &'static str,
        description: String,
    },
    #[error("not_found: {0}")]
    NotFound(String),
    /// 503 with `Retry-After`.
    #[error("temporarily_unavailable: {description}")]
    Unavailable {
        description: String,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Vault(VaultError),
    /// Anything else that is our fault; the message is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "invalid_request",
            description: description.into(),
        }
    }

    pub fn unauthorized(code: &'static str, description: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            description: description.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } | Self::MissingCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Vault(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. } => code,
            Self::MissingCredentials => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::Unavailable { .. } => "temporarily_unavailable",
            Self::Store(_) | Self::Vault(_) | Self::Internal(_) => "server_error",
        }
    }

    fn description(&self) -> String {
        match self {
            Self::BadRequest { description, .. }
            | Self::Unauthorized { description, .. }
            | Self::Forbidden { description, .. }
            | Self::Unavailable { description, .. } => description.clone(),
            Self::NotFound(d) => d.clone(),
            Self::MissingCredentials => "send Authorization: Bearer <bot secret>".into(),
            Self::Store(_) | Self::Vault(_) | Self::Internal(_) => {
                "an internal error occurred; it has been logged".into()
            }
        }
    }
}

/// `Retry-After` of a database outage.
const DATABASE_RETRY_AFTER_SECS: u64 = 5;

fn database_unavailable(error: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "the database is unavailable");
    ApiError::Unavailable {
        description: "the database is unavailable; retry shortly".into(),
        retry_after_secs: DATABASE_RETRY_AFTER_SECS,
    }
}

/// A database outage is `503 temporarily_unavailable` with `Retry-After`,
/// never a `500`.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            database_unavailable(&e)
        } else {
            Self::Store(e)
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        if e.is_transient() {
            database_unavailable(&e)
        } else {
            Self::Vault(e)
        }
    }
}

/// Every error: a stable machine-readable code and a human description.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: &'static str,
    pub error_description: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, Self::Unavailable { .. }) {
            // Errors of these kinds never carry a token: the vault's say which row
            // and column, the store's come from sqlx.
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.code(),
            error_description: self.description(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Self::MissingCredentials => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"chatgate\""),
                );
            }
            Self::Unauthorized { code, .. } => {
                let value = format!("Bearer realm=\"chatgate\", error=\"{code}\"");
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Self::Unavailable {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// The JSON for unmatched routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
