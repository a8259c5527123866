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
use super::bot_events::EventInbox;

const PAGE: &str = include_str!("host_page.html");

#[derive(Debug)]
struct Site {
    page: String,
    bot: Bot,
    events: EventInbox,
}

/// The host site's routes: `/`, the bot at `/bot/messages`, and the bot's
/// event endpoint at `/bot/events` (POST from chatgate, GET the last few).
pub fn router(chatgate_url: &str, app: &str, bot: Bot, events: EventInbox) -> Router {
    let config = serde_json::json!({ "chatgate": chatgate_url, "app": app });
    let page = PAGE
        .replace("__CHATGATE_URL__", chatgate_url)
        .replace("__DEMO_CONFIG__", &config.to_string());
    Router::new()
        .route("/", get(index))
        .route("/bot/messages", post(message))
        .route("/bot/events", post(event).get(recent_events))
        .with_state(Arc::new(Site { page, bot, events }))
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

/// chatgate's events for the bot (Standard Webhooks): 204 when the signature
/// verifies, 401 otherwise (chatgate then retries).
async fn event(
    State(site): State<Arc<Site>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    match site.events.receive(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
        crate::time::now(),
    ) {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(why) => {
            eprintln!("bot: refused an event delivery: {why}");
            StatusCode::UNAUTHORIZED
        }
    }
}

async fn recent_events(State(site): State<Arc<Site>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "events": site.events.recent() }))
}
