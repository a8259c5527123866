//! The demo's host site: a shop page with a support chat that uses
//! `widget.js` exactly as a customer would, and the sample bot behind it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::bot::Bot;

const PAGE: &str = include_str!("host_page.html");

#[derive(Debug)]
struct Site {
    page: String,
    bot: Bot,
}

/// The host site's routes: `/` and the bot at `/bot/messages`.
pub fn router(chatgate_url: &str, app: &str, bot: Bot) -> Router {
    let config = serde_json::json!({ "chatgate": chatgate_url, "app": app });
    let page = PAGE
        .replace("__CHATGATE_URL__", chatgate_url)
        .replace("__DEMO_CONFIG__", &config.to_string());
    Router::new()
        .route("/", get(index))
        .route("/bot/messages", post(message))
        .with_state(Arc::new(Site { page, bot }))
        .layer(axum::middleware::from_fn(super::loopback_host_only))
}

async fn index(State(site): State<Arc<Site>>) -> Html<String> {
    Html(site.page.clone())
}

#[derive(Debug, Deserialize)]
struct Message {
    text: String,
}

async fn message(
    State(site): State<Arc<Site>>,
    headers: HeaderMap,
    Json(message): Json<Message>,
) -> Response {
    let Some(chat_token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"reply": "Sign in to chat."})),
        )
            .into_response();
    };
    match site.bot.answer(chat_token, &message.text).await {
        Ok(reply) => Json(reply).into_response(),
        Err(reply) => (StatusCode::UNAUTHORIZED, Json(reply)).into_response(),
    }
}
