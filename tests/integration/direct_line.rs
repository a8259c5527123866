//! Direct Line tokens bound to the verified user (`[apps.direct_line]`), on
//! SQLite and PostgreSQL, against a recording stand-in for Direct Line 3.0's
//! `tokens/generate` (the browser suite runs the real Web Chat against
//! `examples/webchat/directline.mjs`): what chatgate sends, what the page
//! gets, what `/bf` accepts as proof of the user, and what an outage leaves.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::common::TestDb;
use crate::common::proxy::{Proxy, Switch};
use crate::signin::{Setup, setup_with};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const USER: &str = "idp:user-123";
const SECRET: &str = "direct-line-channel-secret-for-tests";

/// What the stand-in saw of one `tokens/generate`.
#[derive(Debug, Clone)]
struct Generated {
    authorization: Option<String>,
    body: Value,
}

#[derive(Default)]
struct Seen {
    generated: Vec<Generated>,
    /// Answer with this status instead of a token.
    status: Option<u16>,
}

/// Direct Line 3.0's token endpoint, recording, behind a cuttable proxy.
struct DirectLine {
    url: String,
    seen: Arc<Mutex<Seen>>,
    proxy: Proxy,
}

async fn generate(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut seen = seen.lock().unwrap();
    let n = seen.generated.len();
    seen.generated.push(Generated {
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    });
    if let Some(status) = seen.status {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    Json(json!({
        "conversationId": format!("conversation-{n}"),
        "token": format!("dl-token-{n}"),
        "expires_in": 3600,
    }))
    .into_response()
}

impl DirectLine {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let router = axum::Router::new()
            .route("/v3/directline/tokens/generate", post(generate))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let proxy = Proxy::start(addr).await;
        Self {
            url: format!("http://127.0.0.1:{}", proxy.port),
            seen,
            proxy,
        }
    }

    fn generated(&self) -> Vec<Generated> {
        self.seen.lock().unwrap().generated.clone()
    }

    fn answer_with(&self, status: Option<u16>) {
        self.seen.lock().unwrap().status = status;
    }

    fn switch(&self) -> Switch {
        self.proxy.switch()
    }
}

async fn setup(db: &TestDb, dl: &DirectLine) -> (Setup, String) {
    let url = dl.url.clone();
    let s = setup_with(db, "", |mut c| {
        c.toml = c.toml.replacen(
            "secret_env = \"TEST_HOST_SECRET\" }]\n",
            &format!(
                "secret_env = \"TEST_HOST_SECRET\" }}]\n[apps.direct_line]\n\
                 secret_env = \"TEST_DIRECT_LINE_SECRET\"\nendpoint = \"{url}\"\n"
            ),
            1,
        );
        c.env
            .insert("TEST_DIRECT_LINE_SECRET".into(), SECRET.into());
        c
    })
    .await;
    let secret = s.app.support_bot("webchat-bot").await;
    (s, secret)
}

impl Setup {
    /// A silent sign-in in a fresh browser: the success message.
    async fn signed_in(&mut self) -> Value {
        self.browser = crate::common::browser::Browser::new();
        let envelope = self.flow("silent").await;
        let message = envelope["message"].clone();
        assert_eq!(message["type"], "chatgate:success", "{envelope}");
        message
    }

    /// `/bf` GetToken for `user_id`, without a magic code.
    async fn bf_get_token(&self, bot_secret: &str, user_id: &str) -> reqwest::Response {
        self.app
            .client
            .get(self.app.url(&format!(
                "/bf/api/usertoken/GetToken?userId={user_id}&connectionName=support&channelId=directline"
            )))
            .bearer_auth(bot_secret)
            .send()
            .await
            .unwrap()
    }
}

async fn a_sign_in_brings_a_direct_line_token_bound_to_the_user(db: &TestDb) {
    let dl = DirectLine::start().await;
    let (mut s, _) = setup(db, &dl).await;
    let message = s.signed_in().await;
    let grant = &message["direct_line"];
    assert_eq!(grant["token"], "dl-token-0", "{message}");
    assert_eq!(grant["conversation_id"], "conversation-0");
    assert_eq!(grant["domain"], format!("{}/v3/directline", dl.url));
    let now = chrono::Utc::now().timestamp();
    let expires_at = grant["expires_at"].as_i64().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expires_at), "{grant}");
    let dl_user = grant["user_id"].as_str().unwrap().to_string();
    assert!(
        dl_user.starts_with("dl_") && dl_user.len() == 25,
        "{dl_user}"
    );
    assert!(
        !dl_user.contains("user-123"),
        "not derived from the IdP's id"
    );
    assert!(message.get("direct_line_error").is_none());
    assert!(message["chat_token"].is_string());

    // What Direct Line was asked: with the channel's secret, for that user
    // id, with the app's origins as the trusted origins.
    let [request] = dl.generated().try_into().unwrap();
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(
        request.body,
        json!({"user": {"id": dl_user}, "trustedOrigins": [ORIGIN]})
    );

    // Stable: the user's next sign-in is bound to the same id.
    let again = s.signed_in().await;
    assert_eq!(again["direct_line"]["user_id"], dl_user.as_str());
    assert_eq!(again["direct_line"]["token"], "dl-token-1");

    // A renewal by fetch asks Direct Line only when the page wants a token.
    let url = s.app.url("/v1/session/token");
    let renew = |body: Value| {
        let mut browser = s.browser.clone();
        let url = url.clone();
        async move {
            let r = browser.post_json(&url, ORIGIN, &body).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let quiet = renew(json!({"app": "support"})).await;
    assert!(quiet.get("direct_line").is_none(), "{quiet}");
    assert_eq!(dl.generated().len(), 2);
    let asked = renew(json!({"app": "support", "direct_line": true})).await;
    assert_eq!(asked["direct_line"]["user_id"], dl_user.as_str());
    assert_eq!(dl.generated().len(), 3);
}

async fn the_bound_direct_line_user_id_is_the_proof_bf_wants(db: &TestDb) {
    let dl = DirectLine::start().await;
    let (mut s, bot) = setup(db, &dl).await;
    let message = s.signed_in().await;
    let dl_user = message["direct_line"]["user_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The Direct Line user id names the user and proves them present.
    let r = s.bf_get_token(&bot, &dl_user).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["token"].as_str().unwrap().starts_with("at-"), "{body}");
    // The chatgate user id alone is the page's say-so: refused.
    assert_eq!(s.bf_get_token(&bot, USER).await.status(), 403);
    // A Direct Line id nobody was given has no token.
    let made_up = "dl_AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(s.bf_get_token(&bot, made_up).await.status(), 404);

    // Sign-out forgets the id: a Direct Line token bound to it opens nothing,
    // not even after the user signs in again (with a new id).
    let r = s
        .app
        .client
        .delete(s.app.url(&format!(
            "/bf/api/usertoken/SignOut?userId={dl_user}&connectionName=support"
        )))
        .bearer_auth(&bot)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        s.app
            .state
            .store
            .get_vault_entry("support", USER)
            .await
            .unwrap()
            .is_none(),
        "signing out by the Direct Line id signs the user out"
    );
    let back = s.signed_in().await;
    let new_id = back["direct_line"]["user_id"].as_str().unwrap();
    assert_ne!(new_id, dl_user);
    assert_eq!(s.bf_get_token(&bot, &dl_user).await.status(), 404);
    assert_eq!(s.bf_get_token(&bot, new_id).await.status(), 200);
}

async fn a_direct_line_outage_leaves_the_chat_token_and_says_why(db: &TestDb) {
    let dl = DirectLine::start().await;
    let (mut s, _) = setup(db, &dl).await;
    for (what, status, cut, code) in [
        ("503", Some(503), false, "direct_line_unavailable"),
        ("429", Some(429), false, "direct_line_unavailable"),
        ("down", None, true, "direct_line_unavailable"),
        ("a wrong secret", Some(403), false, "direct_line_refused"),
    ] {
        dl.answer_with(status);
        if cut {
            dl.switch().cut();
        }
        let message = s.signed_in().await;
        assert!(message["chat_token"].is_string(), "{what}: {message}");
        assert!(message.get("direct_line").is_none(), "{what}: {message}");
        assert_eq!(
            message["direct_line_error"]["error"], code,
            "{what}: {message}"
        );
        let description = message["direct_line_error"]["error_description"]
            .as_str()
            .unwrap();
        assert!(!description.contains(SECRET), "{what}: {description}");
        dl.switch().restore();
    }
    dl.answer_with(None);
    let message = s.signed_in().await;
    assert!(
        message["direct_line"]["token"].is_string(),
        "back: {message}"
    );
}

backend_tests!(
    a_sign_in_brings_a_direct_line_token_bound_to_the_user,
    the_bound_direct_line_user_id_is_the_proof_bf_wants,
    a_direct_line_outage_leaves_the_chat_token_and_says_why,
);
