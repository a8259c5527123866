//! Signed out means signed out everywhere, on SQLite and PostgreSQL: every
//! way of signing a user out — the widget with `revoke`, the bot API, the Bot
//! Framework API, `chatgate users sign-out`, a back-channel logout — ends the
//! user's browser sessions and browser keys in every browser with the vault
//! entry, and a session or key written back by a renewal that raced the
//! sign-out renews nothing once the user signs in again.

use crate::common;
use crate::cookieless::ticket_of;
use crate::signin::{Setup, exec, setup_with};

use chatgate::dpop::ProofSigner;
use common::TestDb;
use common::browser::{Browser, posted_message};
use serde_json::{Value, json};

const ORIGIN: &str = "https://www.contoso.com";
const USER: &str = "idp:user-123";

/// What a sign-out is done through.
#[derive(Debug, Clone, Copy)]
enum Way {
    WidgetRevoke,
    BotApi,
    BotFramework,
    Cli,
    BackchannelLogout,
}

/// Three ways back in for the user: two browsers with chatgate's cookie and
/// one without any cookie, by its key.
struct Browsers {
    with_cookie: [Browser; 2],
    key: ProofSigner,
}

impl Setup {
    async fn cookie_browser(&mut self) -> Browser {
        self.browser = Browser::new();
        let idp_url = self.start("silent", "").await;
        let callback = self.at_idp(&idp_url).await;
        let envelope = posted_message(self.browser.get(&callback).await)
            .await
            .unwrap();
        assert_eq!(
            envelope["message"]["type"], "chatgate:success",
            "{envelope}"
        );
        self.browser.clone()
    }

    async fn key_browser(&mut self) -> ProofSigner {
        self.browser = Browser::new();
        let key = ProofSigner::generate();
        let envelope = self.flow_without_cookie("silent", Some(&key)).await;
        let ticket = ticket_of(&envelope);
        let r = self.redeem_with_key(&key, &ticket).await;
        assert_eq!(r.status(), 200);
        key
    }

    async fn signed_in_three_times(&mut self) -> Browsers {
        Browsers {
            with_cookie: [self.cookie_browser().await, self.cookie_browser().await],
            key: self.key_browser().await,
        }
    }

    /// Status of a renewal by fetch from each of the three.
    async fn renewals(&self, with_cookie: &mut [Browser], key: &ProofSigner) -> Vec<u16> {
        let url = self.app.url("/v1/session/token");
        let mut statuses = Vec::new();
        for browser in with_cookie {
            let r = browser
                .post_json(&url, ORIGIN, &json!({"app": "support"}))
                .await;
            statuses.push(r.status().as_u16());
        }
        statuses.push(self.renew_by_key(key).await.status().as_u16());
        statuses
    }

    async fn sign_out(&mut self, way: Way, browsers: &mut Browsers, bot_secret: &str) {
        let user = url::form_urlencoded::byte_serialize(USER.as_bytes()).collect::<String>();
        match way {
            Way::WidgetRevoke => {
                let r = browsers.with_cookie[0]
                    .post_json(
                        &self.app.url("/v1/signout"),
                        ORIGIN,
                        &json!({"app": "support", "revoke": true}),
                    )
                    .await;
                assert_eq!(r.status(), 200);
            }
            Way::BotApi => {
                let r = self
                    .app
                    .client
                    .delete(self.app.url(&format!("/v1/users/{user}/token")))
                    .bearer_auth(bot_secret)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
            }
            Way::BotFramework => {
                let r = self
                    .app
                    .client
                    .delete(self.app.url(&format!(
                        "/bf/api/usertoken/SignOut?userId={user}&connectionName=support&channelId=webchat"
                    )))
                    .bearer_auth(bot_secret)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            Way::Cli => {
                let config = self.cfg.write(self.app.port);
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
                    .args(["users", "sign-out", "--app", "support", "--user", USER])
                    .arg("--config")
                    .arg(&config)
                    .envs(&self.cfg.env)
                    .env("RUST_LOG", "error")
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    stdout.contains("tokens deleted")
                        && stdout
                            .contains("3 browser session(s) ended, 1 browser key(s) forgotten"),
                    "{stdout}"
                );
            }
            Way::BackchannelLogout => {
                let token = self.idp.logout_token(json!({"sub": "user-123"}));
                let r = self.app.backchannel_logout(&token).await;
                assert_eq!(r.status(), 200);
            }
        }
    }
}

/// Rows of the user's sessions and keys, counted.
async fn ways_back_in(s: &Setup) -> Vec<i64> {
    let mut counts = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM browser_session_users WHERE user_id = 'idp:user-123'",
        "SELECT COUNT(*) FROM dpop_bindings WHERE user_id = 'idp:user-123'",
        "SELECT COUNT(*) FROM session_tickets WHERE user_id = 'idp:user-123'",
    ] {
        let n: i64 = match &s.app.state.store {
            chatgate::store::Store::Sqlite(p) => {
                sqlx::query_scalar(sql).fetch_one(p).await.unwrap()
            }
            chatgate::store::Store::Postgres(p) => {
                sqlx::query_scalar(sql).fetch_one(p).await.unwrap()
            }
        };
        counts.push(n);
    }
    counts
}

/// Alice signed in in three browsers (one by its key alone); she is signed
/// out (each way in turn); she signs in again in a fourth browser: the first
/// three renew nothing — not even with their session rows and key bindings
/// written back as a renewal racing the sign-out would write them.
async fn a_sign_out_ends_every_browser_and_key(db: &TestDb) {
    // Many sign-ins from one address: no rate limit in the way.
    let mut s = setup_with(db, "", |mut c| {
        c.toml.push_str("\n[rate_limit]\nper_second = 0\n");
        c
    })
    .await;
    let bot_secret = s.app.support_bot("helpdesk").await;
    let store = s.app.state.store.clone();
    for way in [
        Way::WidgetRevoke,
        Way::BotApi,
        Way::BotFramework,
        Way::Cli,
        Way::BackchannelLogout,
    ] {
        let mut browsers = s.signed_in_three_times().await;
        assert_eq!(
            s.renewals(&mut browsers.with_cookie, &browsers.key).await,
            [200, 200, 200],
            "{way:?}"
        );

        // What a renewal racing the sign-out could write back.
        for sql in [
            "DROP TABLE IF EXISTS saved_sessions",
            "DROP TABLE IF EXISTS saved_session_users",
            "DROP TABLE IF EXISTS saved_bindings",
            "CREATE TABLE saved_sessions AS SELECT * FROM browser_sessions",
            "CREATE TABLE saved_session_users AS SELECT * FROM browser_session_users",
            "CREATE TABLE saved_bindings AS SELECT * FROM dpop_bindings",
        ] {
            exec(&store, sql).await;
        }

        s.sign_out(way, &mut browsers, &bot_secret).await;
        assert_eq!(
            ways_back_in(&s).await,
            [0, 0, 0],
            "{way:?}: sessions, keys and tickets end with the sign-out"
        );
        // (Copies of the browsers ask: an answer to a missing session removes
        // its cookie, and the originals must keep theirs for the race below.)
        let mut copies = browsers.with_cookie.clone();
        assert_eq!(
            s.renewals(&mut copies, &browsers.key).await,
            [401, 401, 401],
            "{way:?}"
        );

        // The racing renewals' writes land after the sign-out...
        for sql in [
            "INSERT INTO browser_sessions SELECT * FROM saved_sessions \
             WHERE id_hash NOT IN (SELECT id_hash FROM browser_sessions)",
            "INSERT INTO browser_session_users SELECT * FROM saved_session_users \
             WHERE id_hash NOT IN (SELECT id_hash FROM browser_session_users)",
            "INSERT INTO dpop_bindings SELECT * FROM saved_bindings \
             WHERE jkt NOT IN (SELECT jkt FROM dpop_bindings)",
        ] {
            exec(&store, sql).await;
        }
        // ... and she signs in again, in a fourth browser.
        let mut fourth = s.cookie_browser().await;
        let r = fourth
            .post_json(
                &s.app.url("/v1/session/token"),
                ORIGIN,
                &json!({"app": "support"}),
            )
            .await;
        assert_eq!(r.status(), 200, "{way:?}: the new sign-in renews");
        let statuses = s.renewals(&mut browsers.with_cookie, &browsers.key).await;
        assert_eq!(
            statuses,
            [401, 401, 401],
            "{way:?}: the three old ones renew nothing"
        );
        // Through the iframe, the old cookie sends the browser to the IdP.
        let r = browsers.with_cookie[1]
            .get(&s.authorize_url("silent", ""))
            .await;
        assert_eq!(r.status(), 302, "{way:?}: to the IdP, not a chat token");

        // Clean up for the next way.
        let r = fourth
            .post_json(
                &s.app.url("/v1/signout"),
                ORIGIN,
                &json!({"app": "support", "revoke": true}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["signed_out"], true);
    }
}

backend_tests!(a_sign_out_ends_every_browser_and_key);
