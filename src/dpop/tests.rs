use std::time::Duration;

use serde_json::json;

use super::*;

const HTU: &str = "https://auth.example.com/v1/session/token";
const NOW: i64 = 1_800_000_000;

fn expected(token: Option<&str>) -> Expected<'_> {
    Expected {
        htm: "POST",
        htu: HTU,
        access_token: token,
        now: NOW,
        clock_skew: Duration::from_secs(30),
    }
}

fn claims(iat: i64) -> serde_json::Value {
    json!({"jti": "j-1", "htm": "POST", "htu": HTU, "iat": iat})
}

#[test]
fn a_valid_proof_names_its_key() {
    let signer = ProofSigner::generate();
    let proof = verify(&signer.proof_at("POST", HTU, NOW, None), &expected(None)).unwrap();
    assert_eq!(&proof.jkt, signer.jkt());
    assert_eq!(proof.iat, NOW);
    assert_eq!(proof.replay_scope(), format!("dpop:{}", signer.jkt()));
    assert!(proof.remember_until(Duration::from_secs(30)) > NOW + 60);
}

#[test]
fn the_thumbprint_is_rfc_7638s() {
    // RFC 7638 section 3.1 computes it over the required members in
    // lexicographic order; jsonwebtoken's thumbprint does, for this key of
    // RFC 7515 appendix A.3.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
        "kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }))
    .unwrap();
    let canonical = r#"{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    assert_eq!(
        jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
        token_hash(canonical)
    );
}

#[test]
fn method_and_url_must_match_but_query_and_fragment_do_not_count() {
    let signer = ProofSigner::generate();
    let e = expected(None);
    assert_eq!(
        verify(&signer.proof_at("GET", HTU, NOW, None), &e),
        Err(DpopError::WrongMethod)
    );
    for other in [
        "https://auth.example.com/v1/signout",
        "https://evil.example.com/v1/session/token",
        "http://auth.example.com/v1/session/token",
        "https://auth.example.com:8443/v1/session/token",
        "not a url",
    ] {
        assert_eq!(
            verify(&signer.proof_at("POST", other, NOW, None), &e),
            Err(DpopError::WrongUrl),
            "{other}"
        );
    }
    let with_query = format!("{HTU}?x=1#frag");
    assert!(verify(&signer.proof_at("POST", &with_query, NOW, None), &e).is_ok());
}

#[test]
fn an_old_or_future_iat_is_refused() {
    let signer = ProofSigner::generate();
    let e = expected(None);
    // 60 s of age plus 30 s of clock skew are allowed, no more.
    assert!(verify(&signer.proof_at("POST", HTU, NOW - 90, None), &e).is_ok());
    assert_eq!(
        verify(&signer.proof_at("POST", HTU, NOW - 91, None), &e),
        Err(DpopError::Stale)
    );
    assert!(verify(&signer.proof_at("POST", HTU, NOW + 30, None), &e).is_ok());
    assert_eq!(
        verify(&signer.proof_at("POST", HTU, NOW + 31, None), &e),
        Err(DpopError::Stale)
    );
}

#[test]
fn ath_must_be_the_presented_tokens_hash() {
    let signer = ProofSigner::generate();
    let e = expected(Some("the.chat.token"));
    assert!(
        verify(
            &signer.proof_at("POST", HTU, NOW, Some("the.chat.token")),
            &e
        )
        .is_ok()
    );
    assert_eq!(
        verify(
            &signer.proof_at("POST", HTU, NOW, Some("another.token")),
            &e
        ),
        Err(DpopError::WrongTokenHash)
    );
    assert_eq!(
        verify(&signer.proof_at("POST", HTU, NOW, None), &e),
        Err(DpopError::WrongTokenHash)
    );
}

#[test]
fn a_signature_by_another_key_than_the_headers_is_refused() {
    let honest = ProofSigner::generate();
    let thief = ProofSigner::generate();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(honest.jwk.clone());
    let forged = thief.key.sign_with_header(header, &claims(NOW));
    assert_eq!(
        verify(&forged, &expected(None)),
        Err(DpopError::BadSignature)
    );
}

#[test]
fn the_header_must_be_a_dpop_proof_with_a_public_p256_key() {
    let signer = ProofSigner::generate();
    let good = signer.sign_claims(&claims(NOW));
    let (header, rest) = good.split_once('.').unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut h = header.clone();
        f(&mut h);
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(h.to_string()))
    };
    let cases: [(&str, String, DpopError); 5] = [
        (
            "typ JWT",
            with(&|h| h["typ"] = "JWT".into()),
            DpopError::WrongType,
        ),
        (
            "no typ",
            with(&|h| {
                h.as_object_mut().unwrap().remove("typ");
            }),
            DpopError::WrongType,
        ),
        (
            "alg HS256",
            with(&|h| h["alg"] = "HS256".into()),
            DpopError::UnsupportedKey,
        ),
        (
            "private key",
            with(&|h| h["jwk"]["d"] = "AAAA".into()),
            DpopError::UnsupportedKey,
        ),
        (
            "no jwk",
            with(&|h| {
                h.as_object_mut().unwrap().remove("jwk");
            }),
            DpopError::UnsupportedKey,
        ),
    ];
    for (what, proof, error) in cases {
        assert_eq!(verify(&proof, &expected(None)), Err(error), "{what}");
    }
    assert_eq!(verify("a.b", &expected(None)), Err(DpopError::Malformed));
    assert_eq!(
        verify(&"a".repeat(3000), &expected(None)),
        Err(DpopError::Malformed)
    );
}

#[test]
fn every_claim_is_required() {
    let signer = ProofSigner::generate();
    for claim in ["jti", "htm", "htu", "iat"] {
        let mut c = claims(NOW);
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(
            verify(&signer.sign_claims(&c), &expected(None)),
            Err(DpopError::InvalidClaims(claim)),
            "{claim}"
        );
    }
    let mut c = claims(NOW);
    c["jti"] = "x".repeat(129).into();
    assert_eq!(
        verify(&signer.sign_claims(&c), &expected(None)),
        Err(DpopError::InvalidClaims("jti"))
    );
}

#[test]
fn jkt_accepts_only_thumbprints() {
    assert!(Jkt::parse(&"a".repeat(43)).is_some());
    assert!(Jkt::parse(&"a".repeat(42)).is_none());
    assert!(Jkt::parse(&format!("{}=", "a".repeat(42))).is_none());
    assert!(Jkt::parse(&format!("{}/", "a".repeat(42))).is_none());
}
