//! A silent flow whose page waits for its outcome by fetch: the widget picks
//! a ticket and starts the flow with its SHA-256 (`ticket_hash`) by `POST
//! /v1/authorize`, which sets the flows' binding cookie and answers the IdP's
//! URL for the hidden frame (or gets the cookie by `POST /v1/flow-binding`
//! and starts the flow in the frame at `GET /v1/authorize`),
//! and asks `POST /v1/session/token {ticket, wait: true}` with a proof of its
//! key and that cookie. Where the flow ends in the frame (`Sec-Fetch-Dest:
//! iframe`) with that cookie, chatgate stores the outcome — the sign-in, or
//! the flow's error — as that ticket and answers the frame `204`: no page of
//! chatgate's loads. On SQLite and PostgreSQL.

use crate::common;
use crate::cookieless::ticket_of;
use crate::signin::{Setup, setup_with};

use chatgate::dpop::ProofSigner;
use chatgate::secret::{random_token, sha256_hex};
use common::browser::{Browser, posted_message};
use common::{TestApp, TestDb, claims_of, error_of, spawn_app};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const USER: &str = "idp:user-123";
const IN_FRAME: [(&str, &str); 1] = [("sec-fetch-dest", "iframe")];

async fn setup(db: &TestDb) -> Setup {
    setup_with(db, "", |c| c).await
}

/// A ticket and the `&dpop_jkt=…&ticket_hash=…` that start its flow.
fn waited(key: &ProofSigner) -> (String, String) {
    let ticket = random_token::<32>();
    let extra = format!(
        "&dpop_jkt={}&ticket_hash={}",
        key.jkt(),
        sha256_hex(ticket.as_bytes())
    );
    (ticket, extra)
}

async fn in_frame(browser: &mut Browser, url: &str) -> reqwest::Response {
    browser
        .request_with(reqwest::Method::GET, url, None, None, &IN_FRAME)
        .await
}

/// The page's fetch that waits for the flow of `ticket`, from `browser`
/// (with its cookies) and a proof of `key`.
async fn wait_for(
    s: &Setup,
    browser: &mut Browser,
    key: &ProofSigner,
    ticket: &str,
) -> reqwest::Response {
    wait_at(&s.app, browser, key, ticket).await
}

/// [`wait_for`] at the chatgate of `app` (a replica).
async fn wait_at(
    app: &TestApp,
    browser: &mut Browser,
    key: &ProofSigner,
    ticket: &str,
) -> reqwest::Response {
    let url = app.url("/v1/session/token");
    let proof = key.proof("POST", &url, None);
    browser
        .post_json_dpop(
            &url,
            ORIGIN,
            &json!({"app": "support", "ticket": ticket, "wait": true}),
            &proof,
        )
        .await
}

/// `POST /v1/flow-binding` from a page at ORIGIN in `browser`.
async fn post_flow_binding(app: &TestApp, browser: &mut Browser) -> reqwest::Response {
    let url = app.url("/v1/flow-binding?app=support");
    browser
        .request(reqwest::Method::POST, &url, Some(ORIGIN), None)
        .await
}

impl Setup {
    /// `POST /v1/flow-binding`: the binding cookie, before the flow.
    async fn bind_flows(&mut self) {
        let r = post_flow_binding(&self.app, &mut self.browser).await;
        assert_eq!(r.status(), 204);
        self.assert_partitioned_binding();
    }

    /// The browser holds the silent flows' binding cookie, partitioned.
    fn assert_partitioned_binding(&self) {
        assert!(
            self.browser
                .set_cookie_line(&self.app.base_url, "__Host-chatgate-flow")
                .is_some_and(|l| l.contains("Partitioned") && l.contains("SameSite=None"))
        );
    }

    /// The page's fetch for `ticket`, already waiting, and the frame at
    /// `callback` 100 ms later, as the widget sends them, both from this
    /// browser; returns (fetch's answer, frame's answer).
    async fn frame_and_fetch(
        &self,
        key: &ProofSigner,
        ticket: &str,
        callback: &str,
    ) -> (reqwest::Response, reqwest::Response) {
        self.frame_and_fetch_at(&self.app, self.browser.clone(), key, ticket, callback)
            .await
    }

    /// [`Setup::frame_and_fetch`] with the fetch from `page` (a browser),
    /// waiting at the chatgate of `app` (a replica).
    async fn frame_and_fetch_at(
        &self,
        app: &TestApp,
        mut page: Browser,
        key: &ProofSigner,
        ticket: &str,
        callback: &str,
    ) -> (reqwest::Response, reqwest::Response) {
        let mut frame_browser = self.browser.clone();
        tokio::join!(wait_at(app, &mut page, key, ticket), async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            in_frame(&mut frame_browser, callback).await
        })
    }

    /// A waited flow (binding cookie, key, ticket) up to the IdP's answer;
    /// returns the ticket and the callback URL.
    async fn waited_flow(&mut self, key: &ProofSigner) -> (String, String) {
        self.bind_flows().await;
        let (ticket, extra) = waited(key);
        let idp_url = self.start("silent", &extra).await;
        (ticket, self.at_idp(&idp_url).await)
    }

    /// A waited flow finished in the frame (which gets 204); returns the
    /// ticket whose outcome is stored.
    async fn waited_flow_done(&mut self, key: &ProofSigner) -> String {
        let (ticket, callback) = self.waited_flow(key).await;
        let frame = in_frame(&mut self.browser.clone(), &callback).await;
        assert_eq!(frame.status(), 204);
        ticket
    }

    /// Another browser, holding a binding cookie of its own.
    async fn browser_with_binding(&self) -> Browser {
        let mut b = Browser::new();
        assert_eq!(post_flow_binding(&self.app, &mut b).await.status(), 204);
        b
    }
}

/// The fetch, already waiting, gets the chat token the moment the callback
/// stores it; the frame gets 204 and no page; the key is bound (it renews
/// alone from now on).
async fn the_outcome_goes_to_the_fetch_that_waits_and_the_frame_gets_no_page(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let (ticket, callback) = s.waited_flow(&key).await;
    let (answer, frame) = s.frame_and_fetch(&key, &ticket, &callback).await;
    assert_eq!(frame.status(), 204);
    assert_eq!(frame.headers()["cache-control"], "no-store");
    assert!(frame.text().await.unwrap().is_empty());

    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:success", "{body}");
    assert_eq!(body["user"]["id"], USER);
    assert_eq!(claims_of(body["chat_token"].as_str().unwrap())["sub"], USER);
    assert_eq!(s.idp.token_calls(), 1);

    // The key renews now, with no cookie and no IdP round trip.
    let r = s.renew_by_key(&key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.idp.token_calls(), 1);
    // The ticket worked once.
    let r = s.redeem_with_key(&key, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);
}

/// Only the page's browser — its binding cookie and a proof of the flow's key
/// — collects a waited-for outcome. The attack this stops: another site
/// frames a flow for the app (its binding cookie then lives in that site's
/// cookie partition) and collects the victim's sign-in from its server with
/// its own ticket and key. No proof, another key, no cookie or another
/// cookie, or `POST /v1/session` get nothing.
async fn only_the_pages_browser_and_key_collect_the_outcome(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let ticket = s.waited_flow_done(&key).await;
    // No proof (refused before the ticket is looked at).
    let r = s
        .browser
        .clone()
        .post_json(
            &s.app.url("/v1/session/token"),
            ORIGIN,
            &json!({"app": "support", "ticket": ticket, "wait": true}),
        )
        .await;
    assert_eq!(error_of(r).await, (401, "invalid_dpop_proof".into()));
    // The ticket and the key, from elsewhere: without the binding cookie.
    let r = wait_for(&s, &mut Browser::new(), &key, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);
    assert_eq!(
        error_of(s.renew_by_key(&key).await).await,
        (401, "login_required".into())
    );

    // With another browser's binding cookie.
    let ticket = s.waited_flow_done(&key).await;
    let mut other = s.browser_with_binding().await;
    let r = wait_for(&s, &mut other, &key, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);

    // Another key, with the right cookie.
    let ticket = s.waited_flow_done(&key).await;
    let thief = ProofSigner::generate();
    let r = wait_for(&s, &mut s.browser.clone(), &thief, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);

    // POST /v1/session (a popup's ticket, taken without a proof).
    let ticket = s.waited_flow_done(&key).await;
    let r = s
        .browser
        .clone()
        .post_json(
            &s.app.url("/v1/session"),
            ORIGIN,
            &json!({"app": "support", "ticket": ticket}),
        )
        .await;
    assert_eq!(error_of(r).await.0, 400);
    assert_eq!(
        error_of(s.renew_by_key(&thief).await).await,
        (401, "login_required".into())
    );
    assert_eq!(
        error_of(s.renew_by_key(&key).await).await,
        (401, "login_required".into())
    );
}

/// A fetch that waits in the process the callback reaches is handed the
/// outcome in memory, under the same rules as a stored ticket: only the
/// page's browser (the binding cookie) and key collect it. A fetch that
/// waits with the ticket but without them uses it up and gets nothing.
async fn an_outcome_handed_over_goes_only_to_the_pages_browser_and_key(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    // Without the binding cookie.
    let (ticket, callback) = s.waited_flow(&key).await;
    let (answer, frame) = s
        .frame_and_fetch_at(&s.app, Browser::new(), &key, &ticket, &callback)
        .await;
    assert_eq!(frame.status(), 204);
    assert_eq!(error_of(answer).await.0, 400);
    let r = s.redeem_with_key(&key, &ticket).await;
    assert_eq!(error_of(r).await.0, 400, "used up");
    // With another browser's binding cookie.
    let (ticket, callback) = s.waited_flow(&key).await;
    let other = s.browser_with_binding().await;
    let (answer, frame) = s
        .frame_and_fetch_at(&s.app, other, &key, &ticket, &callback)
        .await;
    assert_eq!(frame.status(), 204);
    assert_eq!(error_of(answer).await.0, 400);
    // Another key, with the right cookie: nothing, and the thief's key
    // renews nothing.
    let thief = ProofSigner::generate();
    let (ticket, callback) = s.waited_flow(&key).await;
    let (answer, frame) = s
        .frame_and_fetch_at(&s.app, s.browser.clone(), &thief, &ticket, &callback)
        .await;
    assert_eq!(frame.status(), 204);
    assert_eq!(error_of(answer).await.0, 400);
    assert_eq!(
        error_of(s.renew_by_key(&thief).await).await,
        (401, "login_required".into())
    );
    // The page's browser and key.
    let (ticket, callback) = s.waited_flow(&key).await;
    let (answer, frame) = s.frame_and_fetch(&key, &ticket, &callback).await;
    assert_eq!(frame.status(), 204);
    assert_eq!(answer.status(), 200);
}

/// The frame is answered only after the page's fetch has its answer: the
/// frame's `204` ends its navigation, which keeps a browser busy for a while,
/// and the page should have its outcome first. An outcome whose fetch the
/// callback cannot reach (here none waits yet: it is stored) holds the frame
/// up for nothing.
async fn the_frame_is_answered_after_the_pages_fetch(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let (ticket, callback) = s.waited_flow(&key).await;
    let mut page = s.browser.clone();
    let mut frame_browser = s.browser.clone();
    let ((answer, answered), (frame, framed)) = tokio::join!(
        async {
            let r = wait_for(&s, &mut page, &key, &ticket).await;
            (r, std::time::Instant::now())
        },
        async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let r = in_frame(&mut frame_browser, &callback).await;
            (r, std::time::Instant::now())
        }
    );
    assert_eq!(answer.status(), 200);
    assert_eq!(frame.status(), 204);
    assert!(
        answered < framed,
        "the frame was answered {:?} before the page's fetch",
        answered - framed
    );
    // Nobody waiting in this process: the outcome is stored and the frame
    // answered at once, well within the fetch's wait.
    let ticket = s.waited_flow_done(&key).await;
    assert_eq!(
        wait_for(&s, &mut s.browser.clone(), &key, &ticket)
            .await
            .status(),
        200
    );
}

/// A fetch waiting at another replica than the one the frame's callback
/// reaches finds the outcome in the shared database.
async fn a_fetch_waiting_at_another_replica_gets_the_outcome(db: &TestDb) {
    let mut s = setup(db).await;
    let replica = spawn_app(&s.cfg).await;
    let key = ProofSigner::generate();
    let (ticket, callback) = s.waited_flow(&key).await;
    let mut page = s.browser.clone();
    page.share_cookies(&s.app.base_url, &replica.base_url);
    let (answer, frame) = s
        .frame_and_fetch_at(&replica, page, &key, &ticket, &callback)
        .await;
    assert_eq!(frame.status(), 204);
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:success", "{body}");
    assert_eq!(body["user"]["id"], USER);
    // The key renews at either replica.
    assert_eq!(s.renew_by_key(&key).await.status(), 200);
}

/// The IdP's error (here `login_required`: the frame saw no IdP session)
/// reaches the waiting fetch as the `chatgate:error` message the result page
/// would have posted; the frame gets 204 and the code is never redeemed.
async fn the_flows_error_goes_to_the_fetch_that_waits(db: &TestDb) {
    let mut s = setup(db).await;
    s.idp
        .with(|st| st.authorize_error = Some("login_required".into()));
    let key = ProofSigner::generate();
    let ticket = s.waited_flow_done(&key).await;
    let r = wait_for(&s, &mut s.browser.clone(), &key, &ticket).await;
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:error", "{body}");
    assert_eq!(body["app"], "support");
    assert_eq!(body["error"], "login_required");
    assert_eq!(s.idp.token_calls(), 0);
}

/// Outside a frame (a window, or a browser that sends no Sec-Fetch-Dest)
/// the result page posts as it always did, and the waited ticket holds
/// nothing: the widget hears the page.
async fn outside_a_frame_the_result_page_posts_as_before(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    for dest in [None, Some("document")] {
        // A browser without chatgate's session (which would renew in the frame).
        s.browser = Browser::new();
        let (ticket, callback) = s.waited_flow(&key).await;
        let headers: Vec<(&str, &str)> = dest.map(|d| ("sec-fetch-dest", d)).into_iter().collect();
        let r = s
            .browser
            .request_with(reqwest::Method::GET, &callback, None, None, &headers)
            .await;
        let envelope = posted_message(r).await.expect("a result page");
        assert_eq!(
            envelope["message"]["type"], "chatgate:success",
            "{envelope}"
        );
        let r = s.redeem_with_key(&key, &ticket).await;
        assert_eq!(error_of(r).await.0, 400);
    }
    // A frame that dropped the cookie gets a ticket page the same way.
    s.browser = Browser::new();
    let (_, callback) = s.waited_flow(&key).await;
    let envelope = posted_message(in_frame(&mut Browser::new(), &callback).await)
        .await
        .unwrap();
    ticket_of(&envelope);
    // A flow started without the binding cookie (a browser that keeps no
    // cookie, or the frame that outran POST /v1/flow-binding) is not waited
    // for: its result page posts, even in a frame that now has the cookie.
    s.browser = Browser::new();
    let (ticket, extra) = waited(&key);
    let idp_url = s.start("silent", &extra).await;
    let callback = s.at_idp(&idp_url).await;
    let envelope = posted_message(in_frame(&mut s.browser.clone(), &callback).await)
        .await
        .unwrap();
    assert_eq!(
        envelope["message"]["type"], "chatgate:success",
        "{envelope}"
    );
    let r = s.redeem_with_key(&key, &ticket).await;
    assert_eq!(error_of(r).await.0, 400);
}

/// `ticket_hash` is for silent flows started with a browser key (whose proof
/// alone redeems the outcome), and is a SHA-256 in lowercase hex.
async fn ticket_hash_needs_a_silent_flow_with_a_key(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let hash = sha256_hex(b"x");
    for extra in [
        format!("&ticket_hash={hash}"),
        format!("&dpop_jkt={}&ticket_hash={}", key.jkt(), &hash[..63]),
        format!(
            "&dpop_jkt={}&ticket_hash={}",
            key.jkt(),
            hash.to_uppercase()
        ),
    ] {
        let r = s.browser.get(&s.authorize_url("silent", &extra)).await;
        let envelope = posted_message(r).await.expect("an error page");
        assert_eq!(envelope["message"]["error"], "invalid_request", "{extra}");
    }
    let extra = format!("&dpop_jkt={}&ticket_hash={hash}", key.jkt());
    let r = s.browser.get(&s.authorize_url("popup", &extra)).await;
    let envelope = posted_message(r).await.expect("an error page");
    assert_eq!(envelope["message"]["error"], "invalid_request");
}

/// `POST /v1/flow-binding` sets the cookie only for a page of the app's
/// origins, and keeps the one the browser holds.
async fn the_flow_binding_is_set_for_the_apps_origins_only(db: &TestDb) {
    let mut s = setup(db).await;
    let url = s.app.url("/v1/flow-binding?app=support");
    for origin in [Some("https://evil.example"), None] {
        let mut b = Browser::new();
        let r = b.request(reqwest::Method::POST, &url, origin, None).await;
        assert_eq!(r.status(), 403, "{origin:?}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    let r = Browser::new()
        .request(
            reqwest::Method::POST,
            &s.app.url("/v1/flow-binding?app=nope"),
            Some(ORIGIN),
            None,
        )
        .await;
    assert!(r.status().is_client_error());
    s.bind_flows().await;
    let first = s
        .browser
        .set_cookie_line(&s.app.base_url, "__Host-chatgate-flow");
    s.bind_flows().await;
    let value = |l: Option<String>| l.unwrap().split(';').next().unwrap().to_string();
    assert_eq!(
        value(first),
        value(
            s.browser
                .set_cookie_line(&s.app.base_url, "__Host-chatgate-flow")
        )
    );
}

/// `POST /v1/authorize` (`url`: a `Setup::authorize_url`) from a page at
/// `origin` in `browser`.
async fn post_authorize(
    browser: &mut Browser,
    origin: Option<&str>,
    url: &str,
) -> reqwest::Response {
    browser
        .request(reqwest::Method::POST, url, origin, None)
        .await
}

/// The widget starts the flow by fetch: chatgate sets the binding cookie in
/// the page's partition and answers the IdP's URL, the frame goes straight
/// there, and the fetch that waits gets the sign-in; the frame gets 204.
async fn a_flow_started_by_fetch_goes_straight_to_the_idp(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let (ticket, extra) = waited(&key);
    let url = s.authorize_url("silent", &extra);
    let r = post_authorize(&mut s.browser, Some(ORIGIN), &url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert_eq!(r.headers()["cache-control"], "no-store");
    s.assert_partitioned_binding();
    let body: Value = r.json().await.unwrap();
    let idp_url = body["authorize_url"].as_str().unwrap().to_string();
    assert!(idp_url.starts_with(&s.idp.issuer), "{idp_url}");
    assert!(idp_url.contains("prompt=none"), "{idp_url}");
    assert!(
        !idp_url.contains(&ticket),
        "the ticket itself never goes into a URL"
    );

    let callback = s.at_idp(&idp_url).await;
    let (answer, frame) = s.frame_and_fetch(&key, &ticket, &callback).await;
    assert_eq!(frame.status(), 204);
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["type"], "chatgate:success", "{body}");
    assert_eq!(body["user"]["id"], USER);

    // Started again, the flow keeps the browser's binding cookie.
    let line = |b: &Browser| {
        b.set_cookie_line(&s.app.base_url, "__Host-chatgate-flow")
            .map(|l| l.split(';').next().unwrap().to_string())
    };
    let before = line(&s.browser);
    let (_, extra) = waited(&key);
    let url = s.authorize_url("silent", &extra);
    let again = post_authorize(&mut s.browser, Some(ORIGIN), &url).await;
    assert_eq!(again.status(), 200);
    assert_eq!(line(&s.browser), before);
}

/// `POST /v1/authorize` starts nothing for another origin (its answer
/// unreadable to it, no cookie), for an origin the query does not name, or
/// without the key and ticket a waited flow needs; where chatgate holds a
/// session for the page it answers `session` and starts nothing.
async fn a_flow_is_started_by_fetch_only_for_the_apps_page(db: &TestDb) {
    let mut s = setup(db).await;
    let key = ProofSigner::generate();
    let (_, extra) = waited(&key);
    let good = s.authorize_url("silent", &extra);
    for origin in [Some("https://evil.example"), None] {
        let mut b = Browser::new();
        let r = post_authorize(&mut b, origin, &good).await;
        assert_eq!(r.status(), 403, "{origin:?}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    let evil_param = good.replace("www.contoso.com", "evil.example");
    let jkt = format!("&dpop_jkt={}", key.jkt());
    for query in [
        evil_param,
        s.authorize_url("popup", &extra),
        s.authorize_url("silent", ""),
        s.authorize_url("silent", &jkt),
        s.authorize_url("silent", &format!("{jkt}&ticket_hash=ABC")),
        format!("{good}&prompt=login"),
    ] {
        let mut b = Browser::new();
        let r = post_authorize(&mut b, Some(ORIGIN), &query).await;
        assert_eq!(r.status(), 400, "{query}");
        assert!(r.headers().get("set-cookie").is_none(), "{query}");
        assert_eq!(error_of(r).await.1, "invalid_request", "{query}");
    }
    assert_eq!(s.idp.token_calls(), 0);

    // Signed in through chatgate in this browser (its session cookie): the
    // page renews by fetch instead; no flow starts.
    let signed_in = s.flow("silent").await;
    assert_eq!(
        signed_in["message"]["type"], "chatgate:success",
        "{signed_in}"
    );
    let calls = s.idp.token_calls();
    let r = post_authorize(&mut s.browser, Some(ORIGIN), &good).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("set-cookie").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"session": true}));
    assert_eq!(s.idp.token_calls(), calls);
}

backend_tests!(
    the_outcome_goes_to_the_fetch_that_waits_and_the_frame_gets_no_page,
    only_the_pages_browser_and_key_collect_the_outcome,
    an_outcome_handed_over_goes_only_to_the_pages_browser_and_key,
    a_fetch_waiting_at_another_replica_gets_the_outcome,
    the_frame_is_answered_after_the_pages_fetch,
    the_flows_error_goes_to_the_fetch_that_waits,
    outside_a_frame_the_result_page_posts_as_before,
    ticket_hash_needs_a_silent_flow_with_a_key,
    the_flow_binding_is_set_for_the_apps_origins_only,
    a_flow_started_by_fetch_goes_straight_to_the_idp,
    a_flow_is_started_by_fetch_only_for_the_apps_page,
);
