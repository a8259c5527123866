//! Provider unit tests: key cache times, endpoint schemes, redaction,
//! issuer matching.

use super::jwks::{jwks_ttl, max_age};
#[test]
fn the_jwks_cache_time_follows_max_age_within_bounds() {
    let h = |v: &str| {
        let mut m = openidconnect::http::HeaderMap::new();
        m.insert(
            openidconnect::http::header::CACHE_CONTROL,
            v.parse().unwrap(),
        );
        jwks_ttl(max_age(&m))
    };
    assert_eq!(h("public, max-age=7200"), Duration::from_secs(7200));
    assert_eq!(h("max-age=10"), JWKS_MIN_TTL, "at least 5 min");
    assert_eq!(h("max-age=999999"), JWKS_MAX_TTL, "at most 24 h");
    assert_eq!(h("no-store"), JWKS_MIN_TTL);
    assert_eq!(jwks_ttl(None), Duration::from_secs(3600));
}

#[test]
fn endpoints_must_be_https_unless_issuer_and_endpoint_are_loopback_http() {
    let url = |u: &str| Url::parse(u).unwrap();
    let real = "https://login.example.com";
    assert!(endpoint_allowed(
        real,
        &url("https://login.example.com/token")
    ));
    assert!(!endpoint_allowed(
        real,
        &url("http://login.example.com/token")
    ));
    assert!(
        !endpoint_allowed(real, &url("http://127.0.0.1:8402/token")),
        "a real IdP's metadata cannot point at plain http, not even on loopback"
    );
    let dev = "http://127.0.0.1:8402";
    assert!(endpoint_allowed(dev, &url("http://127.0.0.1:8402/token")));
    assert!(endpoint_allowed(dev, &url("http://localhost:8402/token")));
    assert!(!endpoint_allowed(dev, &url("http://idp.example.com/token")));
    assert!(!endpoint_allowed(
        real,
        &url("ftp://login.example.com/token")
    ));
}

#[test]
fn the_debug_output_of_idp_tokens_holds_no_token() {
    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let raw = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"ES256","kid":"k"}"#),
        b64(r#"{"iss":"https://idp.example","aud":"c","sub":"alice","iat":1,"exp":2}"#),
        b64("signature-secret")
    );
    let id_token: IdTokenT = raw.parse().unwrap();
    let tokens = IdpTokens {
        access_token: SecretString::from("at-very-secret"),
        refresh_token: Some(SecretString::from("rt-very-secret")),
        token_type: "Bearer".into(),
        scope: None,
        expires_in: None,
        id_token: Some(id_token),
    };
    let debug = format!("{tokens:?}");
    for secret in [
        "at-very-secret",
        "rt-very-secret",
        "eyJ",
        "alice",
        "c2lnbmF0dXJl",
    ] {
        assert!(!debug.contains(secret), "{debug}");
    }
}
use super::*;

fn provider(issuer: &str, multi_tenant: bool) -> ProviderConfig {
    ProviderConfig {
        id: crate::domain::ProviderId::parse("entra").unwrap(),
        issuer: issuer.into(),
        client_id: "c".into(),
        client_secret: None,
        client_auth: ClientAuth::None,
        user_id_claim: "oid".into(),
        multi_tenant,
        accepted_audiences: vec![],
        extra_auth_params: Default::default(),
        frontchannel_logout_id: Default::default(),
    }
}

#[test]
fn issuers_must_match_exactly_except_for_the_entra_tenant_template() {
    let exact = provider("https://idp.example.com", false);
    assert!(issuer_matches(&exact, "https://idp.example.com"));
    assert!(!issuer_matches(&exact, "https://idp.example.com/"));
    assert!(!issuer_matches(&exact, "https://evil.example.com"));
    let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
    assert!(!issuer_matches(
        &provider(
            "https://login.microsoftonline.com/organizations/v2.0",
            false
        ),
        template
    ));
    assert!(issuer_matches(
        &provider("https://login.microsoftonline.com/organizations/v2.0", true),
        template
    ));
    assert!(issuer_matches(
        &provider("https://login.microsoftonline.com/common/v2.0", true),
        template
    ));
    assert!(!issuer_matches(
        &provider("https://login.microsoftonline.com/evil/v2.0", true),
        template
    ));
}
