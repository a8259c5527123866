//! Browsers that keep no chatgate cookie at all (WebKit — Safari and every
//! iOS browser —, Firefox with all third-party cookies blocked, WebKit on
//! http loopback): every app's widget holds a browser key in the host page's
//! IndexedDB, and that key — never a cookie — is what finishes a flow and
//! renews the sign-in there. On SQLite and PostgreSQL. The apps here do not
//! bind chat tokens to the key (`bind_chat_tokens = "none"`): the key renews,
//! the tokens stay bearer tokens.

use crate::common;
use crate::signin::{Setup, setup_with};

use chatgate::dpop::ProofSigner;
use common::browser::{Browser, posted_message};
use common::{TestDb, claims_of, error_of};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const USER: &str = "idp:user-123";

async fn setup(db: &TestDb) -> Setup {
    setup_with(db, "", |c| c).await
}

impl Setup {
    /// A flow in `mode` started with `key`, whose callback arrives in a
    /// browser that dropped chatgate's cookie: what the result page posts.
    pub(crate) async fn flow_without_cookie(
        &mut self,
        mode: &str,
        key: Option<&ProofSigner>,
    ) -> Value {
        let extra = key.map_or(String::new(), |k| format!("&dpop_jkt={}", k.jkt()));
        let idp_url = self.start(mode, &extra).await;
        let callback = self.at_idp(&idp_url).await;
        let r = Browser::new().get(&callback).await;
        posted_message(r).await.expect("a result page")
    }

    /// `POST {path}` from a cookie-less page at ORIGIN, with a proof of `key`.
    pub(crate) async fn post_with_key(
        &self,
        path: &str,
        key: &ProofSigner,
        body: Value,
    ) -> reqwest::Response {
        let url = self.app.url(path);
        let proof = key.proof("POST", &url, None);
        Browser::new()
            .post_json_dpop(&url, ORIGIN, &body, &proof)
            .await
    }

    /// Redeems a `chatgate:ticket` with a proof of `key`.
    pub(crate) async fn redeem_with_key(
        &self,
        key: &ProofSigner,
        ticket: &str,
    ) -> reqwest::Response {
        self.post_with_key(
            "/v1/session/token",
            key,
            json!({"app": "support", "ticket": ticket}),
        )
        .await
    }

    pub(crate) async fn renew_by_key(&self, key: &ProofSigner) -> reqwest::Response {
        self.post_with_key("/v1/session/token", key, json!({"app": "support"}))
            .await
    }
}

pub(crate) fn ticket_of(envelope: &Value) -> String {
    assert_eq!(envelope["target_origin"], ORIGIN, "{envelope}");
    let m = &envelope["message"];
    assert_eq!(m["type"], "chatgate:ticket", "{envelope}");
    assert_eq!(m["app"], "support");
    assert!(
        m.get("chat_token").is_none() && m.get("user").is_none(),
        "no token or user data: {envelope}"
    );
    m["ticket"].as_str().unwrap().to_string()
}

/// The flow's cookie is dropped in the iframe: the page gets a ticket, which
/// the key that started the flow — and only it — turns into a chat token and
/// a binding that renews with no cookie at all.
async fn a_flow_finished_without_the_cookie_is_redeemed_by_its_key(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let envelope = s.flow_without_cookie("silent", Some(&key)).await;
    assert_eq!(envelope["mode"], "silent");
    let ticket = ticket_of(&envelope);
    assert_eq!(s.idp.token_calls(), 1, "the code was redeemed");

    // Without a proof, or with another key, the ticket gives nothing.
    let r = Browser::new()
        .post_json(
            &s.app.url("/v1/session/token"),
            ORIGIN,
            &json!({"app": "support", "ticket": ticket}),
        )
        .await;
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));
    let thief = ProofSigner::generate();
    let r = s.redeem_with_key(&thief, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);
    // ... and a ticket works once: the thief's attempt used it up.
    let r = s.redeem_with_key(&key, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);
    let r = s.renew_by_key(&thief).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));

    // Again, redeemed by the right key.
    let envelope = s.flow_without_cookie("silent", Some(&key)).await;
    let ticket = ticket_of(&envelope);
    let r = s.redeem_with_key(&key, &ticket).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:success");
    assert_eq!(body["user"]["id"], USER);
    let claims = claims_of(body["chat_token"].as_str().unwrap());
    assert_eq!(claims["sub"], USER);
    assert!(
        claims.get("cnf").is_none(),
        "this app's tokens are bearer tokens: {claims}"
    );

    // From now on the key alone renews: no cookie, no IdP round trip.
    let calls = s.idp.token_calls();
    for _ in 0..2 {
        let r = s.renew_by_key(&key).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["user"]["id"], USER);
    }
    assert_eq!(s.idp.token_calls(), calls);
    // Without the proof (and without a cookie) nothing renews.
    let r = Browser::new()
        .post_json(
            &s.app.url("/v1/session/token"),
            ORIGIN,
            &json!({"app": "support"}),
        )
        .await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
    // A proof that fails a check is refused, not ignored, for any app.
    let url = s.app.url("/v1/session/token");
    let stale = key.proof_at("POST", &url, chatgate::time::now() - 600, None);
    let r = Browser::new()
        .post_json_dpop(&url, ORIGIN, &json!({"app": "support"}), &stale)
        .await;
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));

    // Sign-out by the proof alone: the key renews nothing any more.
    let r = s
        .post_with_key("/v1/signout", &key, json!({"app": "support"}))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["signed_out"], true);
    let r = s.renew_by_key(&key).await;
    assert_eq!(error_of(r).await, (401, "login_required".into()));
}

/// A popup whose flow cookie was dropped (WebKit drops `Secure` cookies on
/// http loopback) posts a ticket to its opener; after a popup that kept its
/// cookie, `POST /v1/session` with a proof binds the key as well.
async fn popups_bind_the_key_with_or_without_their_cookie(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let envelope = s.flow_without_cookie("popup", Some(&key)).await;
    assert_eq!(envelope["mode"], "popup");
    let ticket = ticket_of(&envelope);
    let r = s.redeem_with_key(&key, &ticket).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.renew_by_key(&key).await.status(), 200);

    // The popup kept its cookie: the chat token and a session ticket; the
    // ticket redeemed with a proof of the flow's key binds that key.
    let other = ProofSigner::generate();
    let idp_url = s
        .start("popup", &format!("&dpop_jkt={}", other.jkt()))
        .await;
    let callback = s.at_idp(&idp_url).await;
    let envelope = posted_message(s.browser.get(&callback).await)
        .await
        .unwrap();
    assert_eq!(
        envelope["message"]["type"], "chatgate:success",
        "{envelope}"
    );
    let session_ticket = envelope["message"]["session_ticket"].as_str().unwrap();
    let r = s
        .post_with_key(
            "/v1/session",
            &other,
            json!({"app": "support", "ticket": session_ticket}),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(s.renew_by_key(&other).await.status(), 200);
}

/// A silent flow that the IdP answered, in a browser with neither the cookie
/// nor a key: the page learns at once why (the IdP's error, or
/// `interaction_required`), nothing else is posted and the code is not redeemed.
async fn without_cookie_or_key_the_page_is_told_at_once(db: &TestDb) {
    let mut s = setup(db).await;
    let envelope = s.flow_without_cookie("silent", None).await;
    assert_eq!(envelope["message"]["type"], "chatgate:error", "{envelope}");
    assert_eq!(envelope["message"]["error"], "interaction_required");
    assert_eq!(envelope["target_origin"], ORIGIN);
    assert_eq!(s.idp.token_calls(), 0);

    s.idp
        .with(|st| st.authorize_error = Some("login_required".into()));
    let key = ProofSigner::generate();
    for key in [None, Some(&key)] {
        let envelope = s.flow_without_cookie("silent", key).await;
        assert_eq!(envelope["message"]["error"], "login_required", "{envelope}");
    }
}

/// Every chatgate cookie a browser is told to drop carries the attributes
/// its `__Host-` prefix requires, or the browser keeps the dead cookie.
async fn cookie_removals_carry_the_attributes_of_their_prefix(db: &TestDb) {
    let mut s = setup(db).await;
    let idp_url = s.start("silent", "").await;
    let flow_cookie = s
        .browser
        .set_cookie_line(&s.app.base_url, "__Host-chatgate-flow")
        .unwrap();
    let callback = s.at_idp(&idp_url).await;
    let r = s.browser.get(&callback).await;
    let session_lines: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .filter(|l| l.starts_with("__Host-chatgate="))
        .collect();
    let r = s
        .browser
        .post_json(
            &s.app.url("/v1/signout"),
            ORIGIN,
            &json!({"app": "support"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let removals: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(removals.len(), 1, "{removals:?}");
    assert!(removals[0].starts_with("__Host-chatgate="), "{removals:?}");
    assert!(removals[0].contains("Max-Age=0"), "{removals:?}");
    for line in [&flow_cookie, &session_lines[0], &removals[0]] {
        for attribute in ["Secure", "Path=/", "HttpOnly", "Partitioned"] {
            assert!(
                line.split("; ").any(|a| a == attribute),
                "{attribute} missing in {line}"
            );
        }
        assert!(!line.contains("Domain="), "{line}");
    }
}

backend_tests!(
    a_flow_finished_without_the_cookie_is_redeemed_by_its_key,
    popups_bind_the_key_with_or_without_their_cookie,
    without_cookie_or_key_the_page_is_told_at_once,
    cookie_removals_carry_the_attributes_of_their_prefix,
);
