//! The HTML pages of the browser flow: the result page that posts exactly one
//! message to the validated origin, and the plain page that posts nothing.
//! Both are askama templates with a strict CSP (nonce'd script and style only).

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::domain::Origin;
use crate::secret::random_token;
use crate::signin::Mode;

/// The `postMessage` payloads (docs/reference.md, "Messages posted to the host page").
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum Message {
    #[serde(rename = "chatgate:success")]
    Success {
        app: String,
        chat_token: String,
        expires_at: i64,
        user: MessageUser,
        /// Popup only: redeemed by the widget at `POST /v1/session`.
        #[serde(skip_serializing_if = "Option::is_none")]
        session_ticket: Option<String>,
        /// Apps with `[apps.direct_line]`: the user's Direct Line token.
        #[serde(flatten)]
        direct_line: Box<crate::direct_line::DirectLineFields>,
    },
    /// A flow the browser finished without chatgate's cookie (the browser
    /// blocks it), started with the page's browser key: the widget redeems
    /// the ticket with a proof of that key at `POST /v1/session/token`.
    #[serde(rename = "chatgate:ticket")]
    Ticket { app: String, ticket: String },
    #[serde(rename = "chatgate:error")]
    Error {
        app: String,
        error: String,
        error_description: String,
    },
    /// The IdP sign-out finished (RP-initiated logout, popup only).
    #[serde(rename = "chatgate:signed_out")]
    SignedOut { app: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageUser {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// With `email`: as the IdP stated it (`false` when it did not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    mode: &'a str,
    target_origin: &'a str,
    message: &'a Message,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessageTemplate<'a> {
    nonce: &'a str,
    status: &'a str,
    payload: &'a str,
}

#[derive(Template)]
#[template(path = "plain.html")]
struct PlainTemplate<'a> {
    nonce: &'a str,
    title: &'a str,
    message: &'a str,
}

/// JSON that is safe inside a `<script>` element: no `<`, `>`, `&` or line
/// separators that could end the element or the string early.
fn json_for_script(value: &impl Serialize) -> Result<String, serde_json::Error> {
    Ok(serde_json::to_string(value)?
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029"))
}

/// `frame-ancestors` for the given origins, `'none'` when there are none.
pub fn frame_ancestors(origins: &[Origin]) -> String {
    if origins.is_empty() {
        "'none'".to_string()
    } else {
        origins
            .iter()
            .map(Origin::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn csp(nonce: &str, ancestors: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    )
}

fn page(status: StatusCode, html: String, csp: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn render_failed(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "cannot render a page");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "chatgate could not render this page",
    )
        .into_response()
}

/// The result page: posts `message` to `target` (the parent in silent mode, the
/// opener in popup mode) and nothing else.
pub fn message_page(
    mode: Mode,
    target: &Origin,
    ancestors: &[Origin],
    message: &Message,
) -> Response {
    let nonce = random_token::<16>();
    let payload = match json_for_script(&Envelope {
        mode: mode.as_str(),
        target_origin: target.as_str(),
        message,
    }) {
        Ok(p) => p,
        Err(e) => return render_failed(e),
    };
    let status = match message {
        Message::Success { .. } | Message::Ticket { .. } => "Signed in.",
        Message::Error { .. } => "Sign-in did not complete.",
        Message::SignedOut { .. } => "Signed out.",
    };
    match (MessageTemplate {
        nonce: &nonce,
        status,
        payload: &payload,
    })
    .render()
    {
        Ok(html) => page(
            StatusCode::OK,
            html,
            csp(&nonce, &frame_ancestors(ancestors)),
        ),
        Err(e) => render_failed(e),
    }
}

/// A page that explains a failure and posts nothing (the request could not be
/// tied to an allow-listed origin).
pub fn plain_page(
    status: StatusCode,
    title: &str,
    message: &str,
    ancestors: &[Origin],
) -> Response {
    let nonce = random_token::<16>();
    match (PlainTemplate {
        nonce: &nonce,
        title,
        message,
    })
    .render()
    {
        Ok(html) => page(status, html, csp(&nonce, &frame_ancestors(ancestors))),
        Err(e) => render_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_the_script_element() {
        let message = Message::Error {
            app: "support".into(),
            error: "access_denied".into(),
            error_description: "</script><script>alert(1)</script>\u{2028}&".into(),
        };
        let json = json_for_script(&message).unwrap();
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        assert!(!json.contains('\u{2028}'));
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back["error_description"],
            "</script><script>alert(1)</script>\u{2028}&"
        );
    }

    #[test]
    fn the_page_posts_to_the_exact_origin_under_a_strict_csp() {
        let origin = Origin::parse("https://www.contoso.com").unwrap();
        let message = Message::Error {
            app: "support".into(),
            error: "login_required".into(),
            error_description: "<b>hi</b>".into(),
        };
        let response = message_page(
            Mode::Silent,
            &origin,
            std::slice::from_ref(&origin),
            &message,
        );
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("frame-ancestors https://www.contoso.com"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'nonce-"), "{csp}");
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(response.headers()[header::REFERRER_POLICY], "no-referrer");
    }

    #[test]
    fn plain_pages_escape_text() {
        let response = plain_page(
            StatusCode::BAD_REQUEST,
            "Bad <request>",
            "<script>x</script>",
            &[],
        );
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.ends_with("frame-ancestors 'none'"));
    }
}
