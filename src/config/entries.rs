//! `[[providers]]` and `[[apps]]` (with their `host_keys`).

use crate::secret::ExposeSecret as _;
use jsonwebtoken::DecodingKey;
use url::Url;

use super::key_path;
use super::raw::{RawApp, RawHostKey, RawProvider};
use super::sources::Sources;
use crate::domain::{AppId, KeyId, Origin, ProviderId, origin_is_loopback};
use crate::secret::SecretBytes;

use super::check::Check;
use super::types::*;

const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// Claims that are not stable user ids (docs/reference.md, `user_id_claim`:
/// "never an email").
const UNSTABLE_CLAIMS: [&str; 5] = ["email", "upn", "preferred_username", "name", "unique_name"];

pub(super) fn build_providers(
    c: &mut Check<'_>,
    raw: &[RawProvider],
    src: Sources<'_>,
) -> Vec<ProviderConfig> {
    let mut out: Vec<ProviderConfig> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let name = p.id.clone().unwrap_or_else(|| i.to_string());
        let base = key_path(&["providers", &name]);
        let k = |field: &str| format!("{base}.{field}");
        let id = c
            .required(&k("id"), &p.id)
            .and_then(|v| c.parse(&k("id"), ProviderId::parse(v)));
        if let Some(id) = &id {
            if id.as_str() == "host" {
                c.error(
                    &k("id"),
                    "\"host\" is reserved for host-signed users (host:{app}:{sub})",
                );
            }
            if out.iter().any(|o| &o.id == id) {
                c.error(&k("id"), "appears twice");
            }
        }
        let issuer = c.required(&k("issuer"), &p.issuer).and_then(|v| {
            let checked = Url::parse(v)
                .map_err(|e| format!("is not a URL: {e}"))
                .and_then(|u| match u.scheme() {
                    "https" => Ok(()),
                    "http" if origin_is_loopback(&u) => Ok(()),
                    _ => Err("must be an https URL".to_string()),
                });
            c.parse(&k("issuer"), checked).map(|()| v.to_string())
        });
        let client_id = c
            .required(&k("client_id"), &p.client_id)
            .map(str::to_string);
        let client_secret = src
            .secret(
                (&k("client_secret_env"), p.client_secret_env.as_ref()),
                (&k("client_secret_file"), p.client_secret_file.as_ref()),
            )
            .map_err(|e| c.error(&base, e))
            .ok()
            .flatten();
        let client_auth = match (p.client_auth.as_deref(), &client_secret) {
            (None | Some("client_secret_basic"), Some(_)) => ClientAuth::ClientSecretBasic,
            (Some("client_secret_post"), Some(_)) => ClientAuth::ClientSecretPost,
            (None | Some("none"), None) => ClientAuth::None,
            (Some("none"), Some(_)) => {
                c.error(
                    &k("client_auth"),
                    "is \"none\" but a client secret is configured",
                );
                ClientAuth::None
            }
            (Some("client_secret_basic" | "client_secret_post"), None) => {
                c.error(
                    &k("client_auth"),
                    "needs client_secret_env or client_secret_file",
                );
                ClientAuth::None
            }
            (Some(other), _) => {
                c.error(
                    &k("client_auth"),
                    format!("{other:?} is not client_secret_basic, client_secret_post or none"),
                );
                ClientAuth::None
            }
        };
        let user_id_claim = p.user_id_claim.clone().unwrap_or_else(|| "sub".into());
        if user_id_claim.trim().is_empty() {
            c.error(&k("user_id_claim"), "must not be empty");
        } else if UNSTABLE_CLAIMS.contains(&user_id_claim.as_str()) {
            c.error(
                &k("user_id_claim"),
                format!("{user_id_claim:?} is not a stable identifier; use \"sub\" (or \"oid\" for Entra ID)"),
            );
        }
        let mut accepted_audiences = p.accepted_audiences.clone().unwrap_or_default();
        if let Some(cid) = &client_id
            && !accepted_audiences.contains(cid)
        {
            accepted_audiences.insert(0, cid.clone());
        }
        let extra_auth_params = p.extra_auth_params.clone().unwrap_or_default();
        for reserved in [
            "client_id",
            "redirect_uri",
            "response_type",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "prompt",
        ] {
            if extra_auth_params.contains_key(reserved) {
                c.error(
                    &k("extra_auth_params"),
                    format!("must not set {reserved:?}; chatgate sets it"),
                );
            }
        }
        if let (Some(id), Some(issuer), Some(client_id)) = (id, issuer, client_id) {
            // A logout token names its issuer and audience, nothing else: two
            // providers with the same pair could not be told apart.
            if let Some(other) = out.iter().find(|o| {
                o.issuer.trim_end_matches('/') == issuer.trim_end_matches('/')
                    && o.client_id == client_id
            }) {
                c.error(
                    &k("client_id"),
                    format!(
                        "provider {} has the same issuer and client_id: logout tokens could not tell them apart",
                        other.id
                    ),
                );
            }
            out.push(ProviderConfig {
                id,
                issuer,
                client_id,
                client_secret,
                client_auth,
                user_id_claim,
                multi_tenant: p.multi_tenant.unwrap_or(false),
                accepted_audiences,
                extra_auth_params,
                frontchannel_logout_id: match p.frontchannel_logout_id.as_deref() {
                    None | Some("sid") => FrontchannelLogoutId::Sid,
                    Some("sub") => FrontchannelLogoutId::Sub,
                    Some(other) => {
                        c.error(
                            &k("frontchannel_logout_id"),
                            format!("must be \"sid\" or \"sub\", not {other:?}"),
                        );
                        FrontchannelLogoutId::Sid
                    }
                },
            });
        }
    }
    out
}

pub(super) fn build_apps(
    c: &mut Check<'_>,
    raw: &[RawApp],
    providers: &[ProviderConfig],
    src: Sources<'_>,
) -> Vec<AppConfig> {
    let mut out: Vec<AppConfig> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let name = a.id.clone().unwrap_or_else(|| i.to_string());
        let base = key_path(&["apps", &name]);
        let k = |field: &str| format!("{base}.{field}");
        let id = c
            .required(&k("id"), &a.id)
            .and_then(|v| c.parse(&k("id"), AppId::parse(v)));
        if let Some(id) = &id
            && out.iter().any(|o| &o.id == id)
        {
            c.error(&k("id"), "appears twice");
        }
        let mut origins: Vec<Origin> = Vec::new();
        if a.origins.is_empty() {
            c.error(
                &k("origins"),
                "must list at least one origin, e.g. [\"https://www.contoso.com\"]",
            );
        }
        for (j, o) in a.origins.iter().enumerate() {
            match Origin::parse(o) {
                Ok(origin) if origins.contains(&origin) => c.error(
                    &format!("{base}.origins[{j}]"),
                    format!("{o:?} appears twice"),
                ),
                Ok(origin) => origins.push(origin),
                Err(e) => c.error(&format!("{base}.origins[{j}]"), format!("{o:?} {e}")),
            }
        }
        let provider = a.provider.as_deref().and_then(|p| {
            match providers.iter().find(|x| x.id.as_str() == p) {
                Some(x) => Some(x.id.clone()),
                None => {
                    c.error(
                        &k("provider"),
                        format!("{p:?} is not the id of a [[providers]] entry"),
                    );
                    None
                }
            }
        });
        let scopes: Vec<String> = a
            .scopes
            .clone()
            .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
        if a.provider.is_some() && !scopes.iter().any(|s| s == "openid") {
            c.error(&k("scopes"), "must include \"openid\"");
        }
        if let Some(bad) = scopes.iter().find(|s| {
            s.is_empty()
                || s.chars()
                    .any(|ch| ch.is_whitespace() || ch == '"' || ch == '\\')
        }) {
            c.error(&k("scopes"), format!("{bad:?} is not a scope token"));
        }
        if a.provider.is_some() && !scopes.iter().any(|s| s == "offline_access") {
            c.problems.warn(
                k("scopes"),
                "has no \"offline_access\": most IdPs then issue no refresh token, and bots lose access when the access token expires",
            );
        }
        let chat_audience = c
            .required(&k("chat_audience"), &a.chat_audience)
            .map(str::to_string);
        let host_keys = build_host_keys(c, &base, &a.host_keys, src);
        let token_exchange = a.token_exchange.unwrap_or(false);
        let bind_chat_tokens = match a.bind_chat_tokens.as_deref() {
            None => ChatTokenBinding::None,
            Some(v) => ChatTokenBinding::parse(v).unwrap_or_else(|| {
                c.error(
                    &k("bind_chat_tokens"),
                    format!("must be \"none\" or \"dpop\", not {v:?}"),
                );
                ChatTokenBinding::None
            }),
        };
        let events = build_events(c, &base, a, src);
        let direct_line = a
            .direct_line
            .as_ref()
            .and_then(|d| build_direct_line(c, &base, d, src));
        if token_exchange && a.provider.is_none() {
            c.error(
                &k("token_exchange"),
                "needs the app's provider: exchanged ID tokens are checked against it",
            );
        }
        if a.provider.is_none() && a.host_keys.is_empty() {
            c.error(&base, "needs a provider (sign-in through an IdP) or host_keys (host-signed tokens), or both");
        }
        if let (Some(id), Some(chat_audience)) = (id, chat_audience) {
            out.push(AppConfig {
                id,
                origins,
                provider,
                scopes,
                chat_audience,
                token_exchange,
                bind_chat_tokens,
                channel_binds_user_ids: a.channel_binds_user_ids.unwrap_or(false),
                events,
                host_keys,
                direct_line,
            });
        }
    }
    out
}

fn build_host_keys(
    c: &mut Check<'_>,
    app_base: &str,
    raw: &[RawHostKey],
    src: Sources<'_>,
) -> Vec<HostKeyConfig> {
    let mut out: Vec<HostKeyConfig> = Vec::new();
    for (i, h) in raw.iter().enumerate() {
        let name = h.kid.clone().unwrap_or_else(|| i.to_string());
        let base = format!("{app_base}.host_keys.{name}");
        let k = |field: &str| format!("{base}.{field}");
        let kid = c
            .required(&k("kid"), &h.kid)
            .and_then(|v| c.parse(&k("kid"), KeyId::parse(v)));
        if let Some(kid) = &kid
            && out.iter().any(|o| &o.kid == kid)
        {
            c.error(&k("kid"), "appears twice in this app");
        }
        let alg = c
            .required(&k("alg"), &h.alg)
            .and_then(|v| match HostKeyAlg::parse(v) {
                Some(alg) => Some(alg),
                None => {
                    c.error(
                        &k("alg"),
                        format!("{v:?} is not HS256, RS256, ES256 or EdDSA"),
                    );
                    None
                }
            });
        let key = alg.and_then(|alg| host_key_material(c, &base, h, alg, src));
        if let (Some(kid), Some(alg), Some(key)) = (kid, alg, key) {
            out.push(HostKeyConfig {
                kid,
                alg,
                key,
                issuer: h.issuer.clone(),
            });
        }
    }
    out
}

fn host_key_material(
    c: &mut Check<'_>,
    base: &str,
    h: &RawHostKey,
    alg: HostKeyAlg,
    src: Sources<'_>,
) -> Option<HostKeyMaterial> {
    let k = |field: &str| format!("{base}.{field}");
    let has_secret = h.secret_env.is_some() || h.secret_file.is_some();
    if alg == HostKeyAlg::Hs256 {
        if h.public_key_file.is_some() {
            c.error(
                &k("public_key_file"),
                "is for RS256/ES256/EdDSA; HS256 uses secret_env or secret_file",
            );
            return None;
        }
        return match src.secret(
            (&k("secret_env"), h.secret_env.as_ref()),
            (&k("secret_file"), h.secret_file.as_ref()),
        ) {
            Ok(Some(secret)) if secret.expose_secret().len() < 32 => {
                c.error(
                    base,
                    "the HS256 secret must be at least 32 bytes (RFC 7518 §3.2)",
                );
                None
            }
            Ok(Some(secret)) => Some(HostKeyMaterial::Secret(SecretBytes::from(
                secret.expose_secret().as_bytes().to_vec(),
            ))),
            Ok(None) => {
                c.error(base, "HS256 needs secret_env or secret_file");
                None
            }
            Err(e) => {
                c.error(base, e);
                None
            }
        };
    }
    if has_secret {
        c.error(
            base,
            "secret_env/secret_file are for HS256; this algorithm needs public_key_file",
        );
        return None;
    }
    let Some(file) = &h.public_key_file else {
        c.error(
            &k("public_key_file"),
            "is required for RS256, ES256 and EdDSA",
        );
        return None;
    };
    let bytes = src
        .read_file(file)
        .map_err(|e| c.error(&k("public_key_file"), e))
        .ok()?;
    let parsed = if bytes.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice::<jsonwebtoken::jwk::Jwk>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string()))
    } else {
        match alg {
            HostKeyAlg::Rs256 => DecodingKey::from_rsa_pem(&bytes),
            HostKeyAlg::Es256 => DecodingKey::from_ec_pem(&bytes),
            HostKeyAlg::EdDsa => DecodingKey::from_ed_pem(&bytes),
            HostKeyAlg::Hs256 => unreachable!("handled above"),
        }
        .map_err(|e| e.to_string())
    };
    match parsed {
        Ok(key) if key.family() == alg.jwt_alg().family() => Some(HostKeyMaterial::Public(key)),
        Ok(_) => {
            c.error(
                &k("public_key_file"),
                format!("{file} is not a key for {}", alg.as_str()),
            );
            None
        }
        Err(e) => {
            c.error(
                &k("public_key_file"),
                format!(
                    "{file} is not a public key for {} (PEM or JWK): {e}",
                    alg.as_str()
                ),
            );
            None
        }
    }
}

/// `[apps.direct_line]`: the secret (`secret_env` / `secret_file`, required)
/// and the endpoint (https, or http on loopback for a local stand-in).
fn build_direct_line(
    c: &mut Check<'_>,
    base: &str,
    d: &super::raw::RawDirectLine,
    src: Sources<'_>,
) -> Option<super::DirectLineConfig> {
    let k = |name: &str| format!("{base}.direct_line.{name}");
    let secret = match src.secret(
        (&k("secret_env"), d.secret_env.as_ref()),
        (&k("secret_file"), d.secret_file.as_ref()),
    ) {
        Ok(Some(secret)) => Some(secret),
        Ok(None) => {
            c.error(
                &format!("{base}.direct_line"),
                "needs secret_env or secret_file (the Direct Line channel's secret)",
            );
            None
        }
        Err(e) => {
            c.error(&format!("{base}.direct_line"), e);
            None
        }
    };
    let text = d
        .endpoint
        .as_deref()
        .unwrap_or(super::types::DEFAULT_DIRECT_LINE_ENDPOINT);
    let endpoint = match Url::parse(text) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && origin_is_loopback(&u)) => {
            if u.query().is_some() || u.fragment().is_some() {
                c.error(&k("endpoint"), "must have no query or fragment");
                None
            } else {
                Some(u)
            }
        }
        Ok(_) => {
            c.error(
                &k("endpoint"),
                "must be an https URL (http only on loopback)",
            );
            None
        }
        Err(e) => {
            c.error(&k("endpoint"), format!("is not a URL: {e}"));
            None
        }
    };
    Some(super::DirectLineConfig {
        secret: secret?,
        endpoint: endpoint?,
    })
}

/// `events_url` with its `events_secret_env` / `events_secret_file`.
fn build_events(
    c: &mut Check<'_>,
    base: &str,
    a: &RawApp,
    src: Sources<'_>,
) -> Option<crate::events::EventTarget> {
    let k = |name: &str| format!("{base}.{name}");
    let secret = src
        .secret(
            (&k("events_secret_env"), a.events_secret_env.as_ref()),
            (&k("events_secret_file"), a.events_secret_file.as_ref()),
        )
        .map_err(|e| c.error(base, e))
        .ok()
        .flatten();
    let Some(url) = &a.events_url else {
        if secret.is_some() {
            c.error(
                &k("events_url"),
                "is required when an events secret is given",
            );
        }
        return None;
    };
    let url = match Url::parse(url) {
        Ok(u) if u.scheme() == "https" => Some(u),
        Ok(u) if u.scheme() == "http" && origin_is_loopback(&u) => Some(u),
        Ok(_) => {
            c.error(
                &k("events_url"),
                "must be an https URL (http only on loopback)",
            );
            None
        }
        Err(e) => {
            c.error(&k("events_url"), format!("is not a URL: {e}"));
            None
        }
    };
    let Some(secret) = secret else {
        c.error(
            &k("events_url"),
            "needs events_secret_env or events_secret_file (a whsec_ secret from \
             `chatgate keys generate events`)",
        );
        return None;
    };
    let secret = crate::events::WebhookSecret::parse(&secret)
        .map_err(|e| c.error(&k("events_secret_env"), format!("the secret {e}")))
        .ok()?;
    Some(crate::events::EventTarget { url: url?, secret })
}
