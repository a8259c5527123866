//! Sign-out that reaches everyone, on SQLite and PostgreSQL: back-channel
//! logout tokens from the in-process IdP (valid ones end sessions, tokens and
//! tell the bot; every invalid one changes nothing), the IdP sign-out the
//! widget starts, and the signed events a bot receives — through a receiver
//! that goes down, a chatgate restart, and two replicas.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use chatgate::domain::AppId;
use chatgate::secret::ExposeSecret as _;
use common::browser::{Browser, location, posted_message};
use common::fake_idp::{FakeIdp, TokenBehavior};
use common::receiver::Receiver;
use common::{TestApp, TestConfig, TestDb, spawn_app};
use serde_json::{Value, json};

const SUPPORT: &str = "https://www.contoso.com";
const SALES: &str = "https://sales.example.com";
const USER: &str = "idp:user-123";

struct Setup {
    idp: FakeIdp,
    app: TestApp,
    receiver: Receiver,
    cfg: TestConfig,
    bot_secret: String,
}

/// Two apps signing in through the IdP (`support`, `sales`), both sending
/// events to one receiver, and a bot of `support`.
async fn setup(db: &TestDb) -> Setup {
    let idp = FakeIdp::start().await;
    let receiver = Receiver::start().await;
    let mut cfg = TestConfig::new(db).with_provider(&idp, "");
    cfg.toml = cfg.toml.replace(
        "chat_audience = \"https://bot.contoso.com\"\n",
        &format!(
            "chat_audience = \"https://bot.contoso.com\"\n{}",
            receiver.app_config()
        ),
    );
    cfg.toml.push_str(&format!(
        r#"
[[apps]]
id = "sales"
origins = ["{SALES}"]
provider = "idp"
chat_audience = "https://bot.sales.example.com"
{}"#,
        receiver.app_config()
    ));
    cfg.env
        .insert("TEST_EVENTS_SECRET".into(), receiver.secret.clone());
    let app = spawn_app(&cfg).await;
    let bot = app
        .state
        .bots
        .create(&AppId::parse("support").unwrap(), "helpdesk", 1)
        .await
        .unwrap();
    Setup {
        idp,
        app,
        receiver,
        cfg,
        bot_secret: bot.secret.expose_secret().to_string(),
    }
}

fn authorize_url(app: &TestApp, app_id: &str, origin: &str) -> String {
    let origin = url::form_urlencoded::byte_serialize(origin.as_bytes()).collect::<String>();
    app.url(&format!(
        "/v1/authorize?app={app_id}&origin={origin}&mode=silent"
    ))
}

/// A whole silent sign-in through the IdP; returns the posted message.
async fn sign_in(app: &TestApp, browser: &mut Browser, app_id: &str, origin: &str) -> Value {
    let r = browser.get(&authorize_url(app, app_id, origin)).await;
    assert_eq!(r.status(), 302, "authorize did not go to the IdP");
    let at_idp = browser.get(&location(&r)).await;
    let callback = browser.get(&location(&at_idp)).await;
    let envelope = posted_message(callback).await.expect("a result page");
    assert_eq!(
        envelope["message"]["type"], "chatgate:success",
        "{envelope}"
    );
    envelope
}

/// Whether chatgate's session still stands in for the IdP: a silent sign-in
/// answered from the session (`true`) rather than sent to the IdP.
async fn renews_from_session(
    app: &TestApp,
    browser: &mut Browser,
    app_id: &str,
    origin: &str,
) -> bool {
    let r = browser.get(&authorize_url(app, app_id, origin)).await;
    match r.status().as_u16() {
        200 => {
            let envelope = posted_message(r).await.unwrap();
            assert_eq!(envelope["message"]["type"], "chatgate:success");
            true
        }
        302 => false,
        other => panic!("unexpected {other} from a silent sign-in"),
    }
}

impl Setup {
    /// The user signed in from two browsers, in two IdP sessions:
    /// `idp-session-1` (the laptop) and `idp-session-2` (the phone).
    async fn two_idp_sessions(&self) -> (Browser, Browser) {
        let mut laptop = Browser::new();
        sign_in(&self.app, &mut laptop, "support", SUPPORT).await;
        self.idp.with(|st| {
            st.user.insert("sid".into(), json!("idp-session-2"));
        });
        let mut phone = Browser::new();
        sign_in(&self.app, &mut phone, "support", SUPPORT).await;
        (laptop, phone)
    }

    async fn logout(&self, token: &str) -> (u16, Value, String) {
        let r = self.app.backchannel_logout(token).await;
        let status = r.status().as_u16();
        let cache = r
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, cache)
    }

    async fn stored(&self, app: &str) -> bool {
        self.app
            .state
            .store
            .get_vault_entry(app, USER)
            .await
            .unwrap()
            .is_some()
    }

    async fn bot_lookup(&self) -> u16 {
        self.app
            .client
            .get(self.app.url(&format!("/v1/users/{USER}/token")))
            .bearer_auth(&self.bot_secret)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

async fn a_logout_token_ends_sessions_and_tokens_in_every_app_and_tells_the_bot(db: &TestDb) {
    let s = setup(db).await;
    let mut browser = Browser::new();
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    sign_in(&s.app, &mut browser, "sales", SALES).await;
    assert!(s.stored("support").await && s.stored("sales").await);
    assert_eq!(s.bot_lookup().await, 200);
    assert!(renews_from_session(&s.app, &mut browser, "support", SUPPORT).await);
    // The bot heard of both sign-ins, signed.
    let signed_in = s
        .receiver
        .wait_for(Duration::from_secs(10), |d| d.len() >= 2)
        .await;
    for d in &signed_in {
        assert!(d.signature_ok, "{d:?}");
        assert_eq!(d.event["type"], "user.signed_in");
        assert_eq!(d.event["user_id"], USER);
        assert_eq!(d.event["data"]["via"], "oidc");
        assert_eq!(d.event["id"], d.id.as_str());
        assert!(!d.event.to_string().contains("rt-"), "no token in events");
    }

    let (status, _, cache) = s
        .logout(&s.idp.logout_token(json!({"sub": "user-123"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(cache, "no-store");
    assert!(!s.stored("support").await && !s.stored("sales").await);
    assert_eq!(s.bot_lookup().await, 404);
    // The session no longer stands in for the IdP, in either app.
    assert!(!renews_from_session(&s.app, &mut browser, "support", SUPPORT).await);
    assert!(!renews_from_session(&s.app, &mut browser, "sales", SALES).await);
    let out = s
        .receiver
        .wait_for(Duration::from_secs(10), |d| {
            d.iter()
                .filter(|d| d.event["type"] == "user.signed_out")
                .count()
                >= 2
        })
        .await;
    let mut apps: Vec<String> = out
        .iter()
        .filter(|d| d.event["type"] == "user.signed_out")
        .map(|d| {
            assert!(d.signature_ok);
            assert_eq!(d.event["data"]["reason"], "idp_logout");
            d.event["app"].as_str().unwrap().to_string()
        })
        .collect();
    apps.sort();
    assert_eq!(apps, ["sales", "support"]);
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("chatgate_backchannel_logouts_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    s.app.stop().await;
}

async fn invalid_or_replayed_logout_tokens_change_nothing(db: &TestDb) {
    let s = setup(db).await;
    let mut browser = Browser::new();
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    let now = chatgate::time::now();
    let rogue = common::fake_idp::signing_key("key-1"); // same kid, not the IdP's key
    let forged = s.idp.with(|st| {
        rogue.sign_jwt(
            &common::fake_idp::logout_claims(st, json!({"sub": "user-123"})),
            None,
        )
    });
    let hmac = s.idp.with(|st| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("key-1".into());
        jsonwebtoken::encode(
            &header,
            &common::fake_idp::logout_claims(st, json!({"sub": "user-123"})),
            &jsonwebtoken::EncodingKey::from_secret(common::fake_idp::CLIENT_SECRET.as_bytes()),
        )
        .unwrap()
    });
    let unsigned = {
        use base64::Engine as _;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let claims = s
            .idp
            .with(|st| common::fake_idp::logout_claims(st, json!({"sub": "user-123"})));
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "key-1"})),
            b64(&claims)
        )
    };
    let bad: Vec<(&str, String)> = vec![
        ("forged", forged),
        ("HMAC with the client secret", hmac),
        ("alg none", unsigned),
        (
            "wrong audience",
            s.idp
                .logout_token(json!({"sub": "user-123", "aud": "someone-else"})),
        ),
        (
            "unknown issuer",
            s.idp
                .logout_token(json!({"sub": "user-123", "iss": "https://evil.example"})),
        ),
        (
            "expired",
            s.idp
                .logout_token(json!({"sub": "user-123", "exp": now - 120})),
        ),
        (
            "issued too long ago",
            s.idp
                .logout_token(json!({"sub": "user-123", "iat": now - 3600, "exp": Value::Null})),
        ),
        (
            "issued in the future",
            s.idp
                .logout_token(json!({"sub": "user-123", "iat": now + 3600})),
        ),
        (
            "no iat",
            s.idp.logout_token(json!({"sub": "user-123", "iat": null})),
        ),
        (
            "no jti",
            s.idp.logout_token(json!({"sub": "user-123", "jti": null})),
        ),
        (
            "no events",
            s.idp
                .logout_token(json!({"sub": "user-123", "events": null})),
        ),
        (
            "another event",
            s.idp.logout_token(
                json!({"sub": "user-123", "events": {"http://example.com/other": {}}}),
            ),
        ),
        (
            "a nonce (an ID token, not a logout token)",
            s.idp.logout_token(json!({"sub": "user-123", "nonce": "n"})),
        ),
        ("neither sub nor sid", s.idp.logout_token(json!({}))),
        ("not a JWT", "not-a-jwt".to_string()),
    ];
    for (why, token) in &bad {
        let (status, body, cache) = s.logout(token).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"], "invalid_request", "{why}");
        assert_eq!(cache, "no-store", "{why}");
        assert!(s.stored("support").await, "{why} deleted the tokens");
    }
    let (status, _, _) = s.logout("").await;
    assert_eq!(status, 400, "an empty form");
    assert!(renews_from_session(&s.app, &mut browser, "support", SUPPORT).await);

    // A valid token works once; its replay after a new sign-in changes nothing.
    let token = s.idp.logout_token(json!({"sub": "user-123"}));
    assert_eq!(s.logout(&token).await.0, 200);
    assert!(!s.stored("support").await);
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    let (status, body, _) = s.logout(&token).await;
    assert_eq!(status, 400, "a replay: {body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("used before"),
        "{body}"
    );
    assert!(
        s.stored("support").await,
        "the replay deleted the new sign-in"
    );
    assert!(renews_from_session(&s.app, &mut browser, "support", SUPPORT).await);
    s.app.stop().await;
}

async fn a_logout_by_sid_ends_only_that_idp_session(db: &TestDb) {
    let s = setup(db).await;
    // Two browsers, two IdP sessions of the same user.
    let (mut laptop, mut phone) = s.two_idp_sessions().await;

    let (status, _, _) = s
        .logout(&s.idp.logout_token(json!({"sid": "idp-session-1"})))
        .await;
    assert_eq!(status, 200);
    assert!(!renews_from_session(&s.app, &mut laptop, "support", SUPPORT).await);
    assert!(renews_from_session(&s.app, &mut phone, "support", SUPPORT).await);
    // The stored tokens came from the phone's session: they stay.
    assert!(s.stored("support").await);
    assert_eq!(s.bot_lookup().await, 200);

    // sub and sid together: that user's sign-ins in that session.
    let (status, _, _) = s
        .logout(
            &s.idp
                .logout_token(json!({"sub": "someone-else", "sid": "idp-session-2"})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(s.stored("support").await, "another user's logout");
    let (status, _, _) = s
        .logout(
            &s.idp
                .logout_token(json!({"sub": "user-123", "sid": "idp-session-2"})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!s.stored("support").await);
    assert!(!renews_from_session(&s.app, &mut phone, "support", SUPPORT).await);
    s.app.stop().await;
}

/// Front-channel logout (the only kind LemonLDAP::NG and Entra ID offer): the
/// IdP's logout page frames the URL with `iss` and `sid`; the sessions and
/// tokens of that IdP session end with no cookie, the bot hears
/// `user.signed_out`, and the page may be framed by the IdP only.
async fn a_front_channel_logout_ends_that_idp_session(db: &TestDb) {
    let s = setup(db).await;
    let (mut laptop, mut phone) = s.two_idp_sessions().await;
    let iss = url::form_urlencoded::byte_serialize(s.idp.issuer.as_bytes()).collect::<String>();
    let frontchannel = |query: String| {
        let url = s.app.url(&format!("/v1/frontchannel-logout?{query}"));
        async move { Browser::new().get(&url).await }
    };

    let r = frontchannel(format!("iss={iss}&sid=idp-session-1")).await;
    assert_eq!(r.status(), 200);
    let idp_origin = s.idp.issuer.trim_end_matches('/').to_string();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.ends_with(&format!("frame-ancestors {idp_origin}")),
        "{csp}"
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(!renews_from_session(&s.app, &mut laptop, "support", SUPPORT).await);
    assert!(renews_from_session(&s.app, &mut phone, "support", SUPPORT).await);
    assert!(
        s.stored("support").await,
        "the tokens came from the phone's session"
    );

    // The phone's IdP session ends: its tokens and chatgate sessions too.
    let r = frontchannel(format!("iss={iss}&sid=idp-session-2")).await;
    assert_eq!(r.status(), 200);
    assert!(!s.stored("support").await);
    assert!(!renews_from_session(&s.app, &mut phone, "support", SUPPORT).await);
    let events = s
        .receiver
        .wait_for(Duration::from_secs(10), |d| {
            d.iter().any(|e| e.event["type"] == "user.signed_out")
        })
        .await;
    let out = events
        .iter()
        .find(|e| e.event["type"] == "user.signed_out")
        .unwrap();
    assert_eq!(out.event["data"]["reason"], "idp_logout");
    // Again (a reload of the IdP's page): nothing left, still fine.
    assert_eq!(
        frontchannel(format!("iss={iss}&sid=idp-session-2"))
            .await
            .status(),
        200
    );
    // Without a sid, or for an issuer nobody configured: refused.
    assert_eq!(frontchannel(format!("iss={iss}")).await.status(), 400);
    assert_eq!(
        frontchannel("iss=https%3A%2F%2Fevil.example&sid=idp-session-2".into())
            .await
            .status(),
        400
    );
    s.app.stop().await;
}

async fn the_widget_signs_out_at_the_idp_and_hears_back(db: &TestDb) {
    let s = setup(db).await;
    let mut browser = Browser::new();
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    let id_token = s.idp.with(|st| st.issued_id_tokens.last().unwrap().clone());

    let r = browser
        .post_json(
            &s.app.url("/v1/signout"),
            SUPPORT,
            &json!({"app": "support", "revoke": true, "idp": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["signed_out"], true);
    assert_eq!(answer["revoked"], true);
    let popup_url = answer["idp_signout_url"].as_str().unwrap().to_string();
    assert!(popup_url.starts_with(&s.app.url("/v1/idp-signout?ticket=")));
    assert!(!s.stored("support").await);

    // The popup: on to the IdP's end_session_endpoint...
    let r = browser.get(&popup_url).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let at_idp = location(&r);
    assert!(at_idp.starts_with(&format!("{}/end-session?", s.idp.issuer)));
    let r = browser.get(&at_idp).await;
    let query = s
        .idp
        .with(|st| st.end_session_queries.last().unwrap().clone());
    assert_eq!(query["id_token_hint"], id_token);
    assert_eq!(query["client_id"], common::fake_idp::CLIENT_ID);
    assert_eq!(
        query["post_logout_redirect_uri"],
        s.app.url("/v1/signed-out")
    );
    // ...and back: the page posts chatgate:signed_out to the exact origin.
    let back = location(&r);
    let page = browser.get(&back).await;
    assert_eq!(page.status(), 200);
    let envelope = posted_message(page).await.unwrap();
    assert_eq!(envelope["mode"], "popup");
    assert_eq!(envelope["target_origin"], SUPPORT);
    assert_eq!(
        envelope["message"],
        json!({"type": "chatgate:signed_out", "app": "support"})
    );
    // Ticket and state work once.
    assert_eq!(browser.get(&popup_url).await.status(), 400);
    let again = browser.get(&back).await;
    assert_eq!(again.status(), 400);
    assert!(posted_message(again).await.is_none());
    assert_eq!(
        browser
            .get(&s.app.url("/v1/signed-out?state=made-up"))
            .await
            .status(),
        400
    );

    // The bot heard why the user left.
    let out = s
        .receiver
        .wait_for(Duration::from_secs(10), |d| {
            d.iter().any(|d| d.event["type"] == "user.signed_out")
        })
        .await;
    let out = out
        .iter()
        .find(|d| d.event["type"] == "user.signed_out")
        .unwrap();
    assert_eq!(out.event["data"]["reason"], "widget");
    s.app.stop().await;
}

async fn without_an_end_session_endpoint_the_widget_is_told(db: &TestDb) {
    let s = setup(db).await;
    s.idp.with(|st| st.no_end_session = true);
    // Discovery ran at start; a fresh chatgate sees the IdP without it.
    let app = spawn_app(&s.cfg).await;
    let mut browser = Browser::new();
    sign_in(&app, &mut browser, "support", SUPPORT).await;
    let r = browser
        .post_json(
            &app.url("/v1/signout"),
            SUPPORT,
            &json!({"app": "support", "idp": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["signed_out"], true, "the local sign-out happened");
    assert_eq!(answer["idp_signout_error"], "idp_signout_unsupported");
    assert!(answer.get("idp_signout_url").is_none());
    app.stop().await;
    s.app.stop().await;
}

/// `revoked` is true only when the IdP confirmed the revocation; otherwise
/// the answer says why, and chatgate forgot the tokens all the same.
async fn sign_out_says_honestly_whether_the_idp_revoked(db: &TestDb) {
    let s = setup(db).await;
    let sign_out = |app: &TestApp, browser: &mut Browser| {
        let url = app.url("/v1/signout");
        let mut browser = browser.clone();
        async move {
            let r = browser
                .post_json(&url, SUPPORT, &json!({"app": "support", "revoke": true}))
                .await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let mut browser = Browser::new();
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    assert_eq!(
        sign_out(&s.app, &mut browser).await,
        json!({"signed_out": true, "revoked": true})
    );

    s.idp.with(|st| st.revocation_status = Some(503));
    let mut browser = Browser::new();
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    assert_eq!(
        sign_out(&s.app, &mut browser).await,
        json!({"signed_out": true, "revoked": false, "revocation_error": "revocation_failed"})
    );
    assert!(!s.stored("support").await, "forgotten all the same");

    // An IdP without a revocation endpoint (LemonLDAP::NG 2.16), seen by a fresh chatgate.
    s.idp.with(|st| {
        st.revocation_status = None;
        st.no_revocation = true;
    });
    let app = spawn_app(&s.cfg).await;
    let mut browser = Browser::new();
    sign_in(&app, &mut browser, "support", SUPPORT).await;
    assert_eq!(
        sign_out(&app, &mut browser).await,
        json!({"signed_out": true, "revoked": false, "revocation_error": "no_revocation_endpoint"})
    );
    app.stop().await;
}

/// Events of a sign-in, a refused refresh and a bot's sign-out, while the
/// receiver is down for 30 s and chatgate restarts: each arrives, exactly
/// once per id, signed.
async fn events_survive_a_receiver_outage_and_a_restart(db: &TestDb) {
    let s = setup(db).await;
    let receiver_down = s.receiver.switch();
    receiver_down.cut();
    let down_since = tokio::time::Instant::now();
    let mut browser = Browser::new();
    sign_in(&s.app, &mut browser, "support", SUPPORT).await;
    // The IdP refuses the refresh: user.reauth_required.
    expire_access_token(&s).await;
    s.idp.with(|st| {
        st.next_token = TokenBehavior {
            error: Some("invalid_grant".into()),
            ..Default::default()
        }
    });
    assert_eq!(s.bot_lookup().await, 401);
    // The bot signs the user out: user.signed_out.
    let r = s
        .app
        .client
        .delete(s.app.url(&format!("/v1/users/{USER}/token")))
        .bearer_auth(&s.bot_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A first attempt failed; chatgate restarts while the receiver is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = s.app;
    app.stop().await;
    let app = spawn_app(&s.cfg).await;
    let left = Duration::from_secs(30).saturating_sub(down_since.elapsed());
    tokio::time::sleep(left).await;
    assert!(s.receiver.deliveries().is_empty());
    receiver_down.restore();
    // Backoff 5 s, 10 s, 20 s...: the next attempt comes within 20 s.
    let got = s
        .receiver
        .wait_for(Duration::from_secs(40), |d| d.len() >= 3)
        .await;
    // Nothing more comes: each id once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = if s.receiver.deliveries().len() > got.len() {
        s.receiver.deliveries()
    } else {
        got
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in &got {
        assert!(d.signature_ok, "{d:?}");
        *counts.entry(d.id.clone()).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    let mut kinds: Vec<&str> = got
        .iter()
        .map(|d| d.event["type"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["user.reauth_required", "user.signed_in", "user.signed_out"]
    );
    let reauth = got
        .iter()
        .find(|d| d.event["type"] == "user.reauth_required")
        .unwrap();
    assert_eq!(reauth.event["data"]["reason"], "invalid_grant");
    let events = app
        .state
        .store
        .list_events(chatgate::store::EventFilter {
            undelivered: true,
            limit: 10,
        })
        .await
        .unwrap();
    assert!(events.is_empty(), "all delivered: {events:?}");
    app.stop().await;
}

async fn expire_access_token(s: &Setup) {
    let sql = "UPDATE vault_entries SET access_expires_at = 1";
    match &s.app.state.store {
        chatgate::store::Store::Sqlite(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
        chatgate::store::Store::Postgres(p) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
    }
}

/// Two replicas on one database, 40 events: each delivered once.
async fn two_replicas_deliver_each_event_once(db: &TestDb) {
    let s = setup(db).await;
    let second = spawn_app(&s.cfg).await;
    let now = chatgate::time::now();
    let rows: Vec<chatgate::store::OutboxRow> = (0..40)
        .map(|i| {
            let id = format!("evt_test_{i}");
            chatgate::store::OutboxRow {
                id: id.clone(),
                app: "support".into(),
                kind: "user.signed_in".into(),
                user_id: format!("idp:user-{i}"),
                payload: json!({"id": id, "type": "user.signed_in", "app": "support",
                    "user_id": format!("idp:user-{i}"), "occurred_at": now, "data": {"via": "oidc"}})
                .to_string(),
                created_at: now,
            }
        })
        .collect();
    s.app.state.store.insert_events(&rows).await.unwrap();
    // Both replicas poll the outbox and race for the rows.
    let got = s
        .receiver
        .wait_for(Duration::from_secs(20), |d| d.len() >= 40)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = s.receiver.deliveries();
    assert_eq!(all.len(), 40, "duplicates among {} deliveries", all.len());
    let mut ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    second.stop().await;
    s.app.stop().await;
}

/// A mass logout at the IdP: 500 valid logout tokens from one address within
/// seconds are all processed (the provider's own budget, not the address's);
/// tokens naming no configured issuer from that address are limited as
/// anonymous traffic.
async fn a_burst_of_logout_tokens_from_one_address_is_processed_completely(db: &TestDb) {
    let s = setup(db).await;
    let url = s.app.url("/v1/backchannel-logout");
    let tokens: Vec<String> = (0..500)
        .map(|n| s.idp.logout_token(json!({"sub": format!("user-{n}")})))
        .collect();
    let mut statuses = Vec::new();
    for chunk in tokens.chunks(25) {
        let mut sent = tokio::task::JoinSet::new();
        for token in chunk {
            let request = s
                .app
                .client
                .post(&url)
                .form(&[("logout_token", token.as_str())]);
            sent.spawn(async move { request.send().await.unwrap().status().as_u16() });
        }
        statuses.extend(sent.join_all().await);
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses.len(), 500);
    // Junk (an issuer nobody configured) spends the sender's budget: the
    // default burst of 50, then 429.
    let mut sent = tokio::task::JoinSet::new();
    for n in 0..100 {
        let junk = s
            .idp
            .logout_token(json!({"iss": "https://elsewhere.example", "sub": format!("x-{n}")}));
        let request = s.app.client.post(&url).form(&[("logout_token", junk)]);
        sent.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let junk = sent.join_all().await;
    assert!(junk.iter().all(|s| [400, 429].contains(s)), "{junk:?}");
    let limited = junk.iter().filter(|s| **s == 429).count();
    assert!(limited >= 30, "{limited} of 100 limited");
    // The IdP's budget is its own: valid logouts still go through.
    let r = s
        .app
        .client
        .post(&url)
        .form(&[(
            "logout_token",
            s.idp.logout_token(json!({"sub": "user-after"})).as_str(),
        )])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Two registrations at one IdP (one issuer, two client ids): a logout token
/// goes to the provider its audience names.
async fn a_logout_token_is_matched_by_issuer_and_audience(db: &TestDb) {
    let idp = FakeIdp::start().await;
    let mut cfg = TestConfig::new(db).with_provider(&idp, "");
    cfg.toml.push_str(&format!(
        "\n[[providers]]\nid = \"idp2\"\nissuer = \"{}\"\nclient_id = \"second-client\"\nclient_secret_env = \"TEST_IDP_SECRET\"\n",
        idp.issuer
    ));
    let app = spawn_app(&cfg).await;
    for aud in ["second-client", common::fake_idp::CLIENT_ID] {
        let token = idp.logout_token(json!({"sub": "user-123", "aud": aud}));
        assert_eq!(app.backchannel_logout(&token).await.status(), 200, "{aud}");
    }
    let token = idp.logout_token(json!({"sub": "user-123", "aud": "nobody"}));
    assert_eq!(app.backchannel_logout(&token).await.status(), 400);
}

/// A receiver that takes connections and never answers holds only its own
/// app's events: another app's event, due after 30 of them, is delivered at
/// once, not after 30 timeouts of 10 s.
async fn a_receiver_that_never_answers_does_not_hold_up_other_apps(db: &TestDb) {
    let receiver = Receiver::start().await;
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = black_hole.accept().await {
            keep.lock().unwrap().push(conn); // open, silent
        }
    });
    let mut cfg = TestConfig::new(db);
    cfg.toml = cfg.toml.replace(
        "chat_audience = \"https://bot.contoso.com\"\n",
        &format!(
            "chat_audience = \"https://bot.contoso.com\"\nevents_url = \"http://{hole}/events\"\nevents_secret_env = \"TEST_EVENTS_SECRET\"\n"
        ),
    );
    cfg.toml.push_str(&format!(
        "\n[[apps]]\nid = \"sales\"\norigins = [\"{SALES}\"]\nchat_audience = \"https://bot.sales.example.com\"\nhost_keys = [{{ kid = \"s1\", alg = \"HS256\", secret_env = \"TEST_HOST_SECRET\" }}]\n{}",
        receiver.app_config()
    ));
    cfg.env
        .insert("TEST_EVENTS_SECRET".into(), receiver.secret.clone());
    let app = spawn_app(&cfg).await;
    let now = chatgate::time::now();
    let row = |n: usize, app: &str| chatgate::store::OutboxRow {
        id: format!("evt_{app}_{n}"),
        app: app.into(),
        kind: "user.signed_out".into(),
        user_id: format!("idp:user-{n}"),
        payload: format!(
            r#"{{"id":"evt_{app}_{n}","type":"user.signed_out","app":"{app}","user_id":"idp:user-{n}","occurred_at":{now},"data":{{"reason":"admin"}}}}"#
        ),
        created_at: now,
    };
    let stuck: Vec<_> = (0..30).map(|n| row(n, "support")).collect();
    app.state.store.insert_events(&stuck).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.state
        .store
        .insert_events(&[row(0, "sales")])
        .await
        .unwrap();
    let got = receiver
        .wait_for(Duration::from_secs(5), |d| !d.is_empty())
        .await;
    assert_eq!(got[0].id, "evt_sales_0");
    drop(held);
}

backend_tests!(
    a_receiver_that_never_answers_does_not_hold_up_other_apps,
    a_logout_token_is_matched_by_issuer_and_audience,
    a_burst_of_logout_tokens_from_one_address_is_processed_completely,
    a_logout_token_ends_sessions_and_tokens_in_every_app_and_tells_the_bot,
    invalid_or_replayed_logout_tokens_change_nothing,
    a_logout_by_sid_ends_only_that_idp_session,
    a_front_channel_logout_ends_that_idp_session,
    the_widget_signs_out_at_the_idp_and_hears_back,
    without_an_end_session_endpoint_the_widget_is_told,
    sign_out_says_honestly_whether_the_idp_revoked,
    events_survive_a_receiver_outage_and_a_restart,
    two_replicas_deliver_each_event_once,
);
