//! The demo's sample bot, written the way a bot outside chatgate would be:
//! it verifies the chat token against chatgate's published JWKS with a
//! standard JWT library, looks the user's access token up through the bot API
//! with its own bot secret, and calls the identity provider's userinfo with it.
//! `examples/bot.py` is the same bot in Python.

use crate::secret::ExposeSecret as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::SecretString;

/// Where the bot finds chatgate and the IdP.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// chatgate's public URL (the chat tokens' issuer).
    pub chatgate_url: String,
    /// The app's `chat_audience`.
    pub audience: String,
    pub bot_secret: SecretString,
    /// The identity provider's issuer (for its userinfo endpoint).
    pub idp_issuer: String,
}

#[derive(Debug, Deserialize)]
struct ChatClaims {
    sub: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_at: Option<i64>,
}

crate::redacted_debug!(TokenAnswer {
    show: [expires_at],
    hide: [access_token]
});

/// What the bot answers.
#[derive(Debug, Serialize)]
pub struct Reply {
    pub reply: String,
    pub user_id: Option<String>,
    pub profile: Option<Value>,
    /// The access token changed since this bot last saw the user's: chatgate
    /// refreshed it.
    pub refreshed: bool,
    pub token_expires_at: Option<i64>,
}

pub struct Bot {
    config: BotConfig,
    http: reqwest::Client,
    jwks: Mutex<Option<(JwkSet, Instant)>>,
    last_token: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("chatgate_url", &self.config.chatgate_url)
            .finish_non_exhaustive()
    }
}

const JWKS_MAX_AGE: Duration = Duration::from_secs(300);

impl Bot {
    pub fn new(config: BotConfig) -> Self {
        Self {
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            jwks: Mutex::new(None),
            last_token: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, String> {
        let url = format!("{}/.well-known/jwks.json", self.config.chatgate_url);
        let set: JwkSet = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        *self.jwks.lock().expect("jwks lock") = Some((set.clone(), Instant::now()));
        Ok(set)
    }

    /// The key set, fetched again when stale or when `kid` is not in it.
    async fn key_for(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, String> {
        let cached = self.jwks.lock().expect("jwks lock").clone();
        let set = match cached {
            Some((set, at)) if at.elapsed() < JWKS_MAX_AGE && set.find(kid).is_some() => set,
            _ => self.fetch_jwks().await?,
        };
        set.find(kid)
            .cloned()
            .ok_or_else(|| "the chat token's kid is not in chatgate's JWKS".to_string())
    }

    async fn verify(&self, chat_token: &str) -> Result<ChatClaims, String> {
        let header =
            jsonwebtoken::decode_header(chat_token).map_err(|e| format!("not a JWT: {e}"))?;
        let kid = header.kid.ok_or("the chat token has no kid")?;
        let jwk = self.key_for(&kid).await?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse().ok())
            .ok_or("the JWK has no algorithm")?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.chatgate_url]);
        validation.set_audience(&[&self.config.audience]);
        jsonwebtoken::decode::<ChatClaims>(chat_token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| format!("the chat token does not verify: {e}"))
    }

    async fn lookup(&self, user_id: &str) -> Result<TokenAnswer, String> {
        let url = format!(
            "{}/v1/users/{}/token",
            self.config.chatgate_url,
            url::form_urlencoded::byte_serialize(user_id.as_bytes()).collect::<String>()
        );
        let response = self
            .http
            .get(url)
            .bearer_auth(self.config.bot_secret.expose_secret())
            .send()
            .await
            .map_err(|e| format!("chatgate is unreachable: {e}"))?;
        if response.status().is_success() {
            return response.json().await.map_err(|e| e.to_string());
        }
        let body: Value = response.json().await.unwrap_or_default();
        Err(match body["error"].as_str() {
            Some("reauth_required") => {
                "your sign-in expired at the identity provider; please sign in again".into()
            }
            Some(code) => format!(
                "chatgate answered {code}: {}",
                body["error_description"].as_str().unwrap_or("")
            ),
            None => "chatgate answered with an error".into(),
        })
    }

    async fn userinfo(&self, access_token: &str) -> Result<Value, String> {
        let meta: Value = self
            .http
            .get(format!(
                "{}/.well-known/openid-configuration",
                self.config.idp_issuer
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let endpoint = meta["userinfo_endpoint"]
            .as_str()
            .ok_or("the IdP has no userinfo endpoint")?;
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "the identity provider refused the access token ({})",
                response.status()
            ));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Answers one chat message sent with `chat_token`.
    pub async fn answer(&self, chat_token: &str, text: &str) -> Result<Reply, Reply> {
        let refused = |why: String| Reply {
            reply: why,
            user_id: None,
            profile: None,
            refreshed: false,
            token_expires_at: None,
        };
        let claims = self.verify(chat_token).await.map_err(refused)?;
        let token = self.lookup(&claims.sub).await.map_err(refused)?;
        let refreshed = {
            let mut last = self.last_token.lock().expect("bot lock");
            let changed = last
                .get(&claims.sub)
                .is_some_and(|t| *t != token.access_token);
            last.insert(claims.sub.clone(), token.access_token.clone());
            changed
        };
        let profile = self.userinfo(&token.access_token).await.map_err(refused)?;
        let name = profile["name"]
            .as_str()
            .or(claims.name.as_deref())
            .unwrap_or("there")
            .to_string();
        let email = profile["email"].as_str().unwrap_or("no email").to_string();
        let until = token
            .expires_at
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| t.format("%H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "an unknown time".into());
        let said: String = text.chars().take(200).collect();
        let reply = format!(
            "Hi {name}! You said “{said}”. I looked your access token up at chatgate ({}valid until {until}) and the identity provider says you are {name} <{email}>.",
            if refreshed {
                "chatgate refreshed it just now; "
            } else {
                ""
            }
        );
        Ok(Reply {
            reply,
            user_id: Some(claims.sub),
            profile: Some(profile),
            refreshed,
            token_expires_at: token.expires_at,
        })
    }
}
