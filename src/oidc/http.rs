//! The HTTP client for calls to identity providers: rustls with the system's
//! root CAs plus `idp_ca_file`, no redirects (a redirect from a token endpoint is
//! never legitimate and following it would be an SSRF vector), timeouts, and a
//! cap on response size.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};
use rustls::pki_types::CertificateDer;

/// Largest IdP response read (discovery, JWKS, token responses are a few KiB).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
    #[error("request to the identity provider failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the identity provider's response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("invalid HTTP message: {0}")]
    Http(#[from] openidconnect::http::Error),
    /// A token endpoint answered with an HTTP status and no OAuth error body
    /// (see [`TokenEndpoint`]).
    #[error("the identity provider answered HTTP {0}")]
    Status(u16),
}

impl HttpError {
    /// A status that says "not now" rather than "no": 5xx and 429.
    pub fn is_transient_status(&self) -> bool {
        matches!(self, Self::Status(s) if *s >= 500 || *s == 429)
    }
}

/// A cheap-to-clone client for IdP calls.
#[derive(Debug, Clone)]
pub struct IdpHttp {
    client: reqwest::Client,
}

impl IdpHttp {
    /// Trusts the system roots and `extra_roots`.
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        for cert in extra_roots {
            roots.add(cert.clone()).map_err(|e| {
                HttpError::Build(format!("idp_ca_file holds an unusable certificate: {e}"))
            })?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Build(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("chatgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Build(e.to_string()))?;
        Ok(Self { client })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request: reqwest::Request = request.try_into()?;
        let mut response = self.client.execute(request).await?;
        let mut builder = openidconnect::http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(builder.body(body)?)
    }
}

/// The client for token-endpoint calls (refresh): a 5xx or 429 answer is an
/// error of its own whatever its body (a gateway's error page, or an IdP's
/// `{"error": "server_error"}`), and so is a 4xx whose body is not an OAuth
/// error, so the caller tells "the IdP refused" from "the IdP is down" by the
/// status, not by how the body parses.
#[derive(Debug, Clone)]
pub struct TokenEndpoint(pub IdpHttp);

impl<'c> AsyncHttpClient<'c> for TokenEndpoint {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.execute(request).await?;
            let status = response.status().as_u16();
            let oauth_error = serde_json::from_slice::<serde_json::Value>(response.body())
                .ok()
                .is_some_and(|v| v.get("error").is_some_and(serde_json::Value::is_string));
            if status >= 500 || status == 429 || (status >= 400 && !oauth_error) {
                return Err(HttpError::Status(status));
            }
            Ok(response)
        })
    }
}

impl<'c> AsyncHttpClient<'c> for IdpHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}
