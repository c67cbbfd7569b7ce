//! JWT authentication over a real socket and over HTTP: one row per way a token is refused,
//! each with its documented code; the upgrade header; expiry of a live session and Reauth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use converge_proto::*;
use converge_server::auth::{AuthConfig, Claims, JwtConfig, JwtKey, claims, mint_hs256};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &[u8] = b"a-test-secret-of-enough-length";
const AUD: &str = "converge";
const ISS: &str = "https://id.example";

/// A throwaway Ed25519 key pair (test only).
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIE0azA2ALLVpbAZQfdPpgEHXvfCNN5t642MgdSzfKviR\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAEvzYjqZi4dSsOUwYtfw5iu8Cex+Ei4GObE3Pw8a8evQ=\n-----END PUBLIC KEY-----\n";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn start(key: JwtKey) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let handle = converge_server::start(converge_server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        auth: AuthConfig::Jwt(JwtConfig {
            key,
            audience: Some(AUD.into()),
            issuer: Some(ISS.into()),
            leeway_secs: 0,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    TestServer { handle, dir }
}

fn good(user: &str, ttl: u64) -> Claims {
    let mut c = claims(user, &["editor"], now(), ttl);
    c.aud = Some(AUD.into());
    c.iss = Some(ISS.into());
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, c: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), c, key).unwrap()
}

fn hs(c: &Claims) -> String {
    mint_hs256(SECRET, c).unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Every way a token is refused on an HS256 server, with the code it gets.
fn bad_tokens() -> Vec<(&'static str, Option<String>, ErrorCode)> {
    let payload = serde_json::to_value(good("mallory", 600)).unwrap();
    let mut expired = good("alice", 0);
    expired.exp = now() - 60;
    let mut early = good("alice", 600);
    early.nbf = Some(now() + 600);
    let mut wrong_aud = good("alice", 600);
    wrong_aud.aud = Some("another-service".into());
    let mut wrong_iss = good("alice", 600);
    wrong_iss.iss = Some("https://evil.example".into());
    let reserved = good(UserId::SERVER, 600);
    // Signed with HS256 but missing exp: sign it properly to reach the claim check.
    let no_exp_signed = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "aud": AUD, "iss": ISS}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    vec![
        ("no token", None, ErrorCode::Unauthorized),
        (
            "not a JWT",
            Some("not-a-token".into()),
            ErrorCode::MalformedToken,
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
                b64(&payload)
            )),
            ErrorCode::AlgorithmNotAllowed,
        ),
        (
            "another algorithm (HS384)",
            Some(sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET),
                &good("alice", 600),
            )),
            ErrorCode::AlgorithmNotAllowed,
        ),
        (
            "bad signature",
            Some(mint_hs256(b"another-secret-entirely-123", &good("alice", 600)).unwrap()),
            ErrorCode::BadSignature,
        ),
        ("expired", Some(hs(&expired)), ErrorCode::TokenExpired),
        ("before nbf", Some(hs(&early)), ErrorCode::TokenNotYetValid),
        ("wrong aud", Some(hs(&wrong_aud)), ErrorCode::WrongAudience),
        ("wrong iss", Some(hs(&wrong_iss)), ErrorCode::WrongIssuer),
        ("no exp", Some(no_exp_signed), ErrorCode::MalformedToken),
        ("reserved sub", Some(hs(&reserved)), ErrorCode::Unauthorized),
    ]
}

async fn hello_with(url: &str, token: Option<String>) -> (Vec<ErrorCode>, Option<u16>) {
    let mut ws = connect(url).await;
    send(
        &mut ws,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token,
        },
    )
    .await;
    let (errors, close) = until_close(&mut ws).await;
    (errors, close.map(|c| u16::from(c.code)))
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_code_over_the_socket() {
    let server = start(JwtKey::Hs256(SECRET.to_vec())).await;
    let url = server.handle.ws_url();
    for (case, token, code) in bad_tokens() {
        let (errors, close) = hello_with(&url, token).await;
        assert_eq!(errors, vec![code], "{case}");
        assert_eq!(close, Some(CloseCode::Unauthorized.code()), "{case}");
    }
    // And a good one is welcomed.
    let mut ws = connect(&url).await;
    send(
        &mut ws,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token: Some(hs(&good("alice", 600))),
        },
    )
    .await;
    match recv(&mut ws).await {
        ServerMsg::Welcome { user, roles, .. } => {
            assert_eq!(user.as_str(), "alice");
            assert_eq!(roles, vec!["editor".to_string()]);
        }
        other => panic!("{other:?}"),
    }
}

/// One HTTP request; the status and the JSON body.
async fn post(server: &TestServer, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Idempotency-Key", "k")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let path = format!("/api/docs/{}/mutations", DocId::random());
    http(
        server,
        "POST",
        &path,
        &headers,
        r#"{"name": "x", "args": null}"#,
    )
    .await
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_code_over_http() {
    let server = start(JwtKey::Hs256(SECRET.to_vec())).await;
    for (case, token, code) in bad_tokens() {
        let (status, body) = post(&server, token.as_deref()).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["code"], code.code(), "{case}: {body}");
        assert_eq!(body["error"], code.name(), "{case}");
    }
    // A good token gets past auth (to the unknown mutator's 422).
    let (status, body) = post(&server, Some(&hs(&good("alice", 600)))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("UnknownMutator"))
    );
}

#[tokio::test]
async fn an_eddsa_server_refuses_algorithm_confusion_and_takes_its_own_tokens() {
    let server = start(JwtKey::EdDsa(ED_PUBLIC.as_bytes().to_vec())).await;
    let url = server.handle.ws_url();
    // HS256 "signed" with the public key as the secret: the classic confusion attack.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(ED_PUBLIC.as_bytes()),
        &good("mallory", 600),
    );
    let (errors, _) = hello_with(&url, Some(confused)).await;
    assert_eq!(errors, vec![ErrorCode::AlgorithmNotAllowed]);
    let real = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        &good("alice", 600),
    );
    let mut ws = connect(&url).await;
    send(
        &mut ws,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token: Some(real),
        },
    )
    .await;
    assert!(matches!(recv(&mut ws).await, ServerMsg::Welcome { .. }));
}

#[tokio::test]
async fn the_token_may_come_with_the_upgrade() {
    let server = start(JwtKey::Hs256(SECRET.to_vec())).await;
    let mut req = server.handle.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", hs(&good("alice", 600)))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(
        &mut ws,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token: None,
        },
    )
    .await;
    match recv(&mut ws).await {
        ServerMsg::Welcome { user, .. } => assert_eq!(user.as_str(), "alice"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_expired_session_is_closed_and_reauth_keeps_one_alive() {
    let server = start(JwtKey::Hs256(SECRET.to_vec())).await;
    let url = server.handle.ws_url();
    let hello = |token: String| ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        client_id: ClientId::random(),
        token: Some(token),
    };
    // Expires in 2 s, no Reauth: TokenExpired, then close 4011.
    let mut short = connect(&url).await;
    send(&mut short, &hello(hs(&good("alice", 2)))).await;
    assert!(matches!(recv(&mut short).await, ServerMsg::Welcome { .. }));
    let (errors, close) = until_close(&mut short).await;
    assert_eq!(errors, vec![ErrorCode::TokenExpired]);
    assert_eq!(
        close.map(|c| u16::from(c.code)),
        Some(CloseCode::TokenExpired.code())
    );

    // Expires in 2 s, Reauth with a longer token at once: still answering after 3 s.
    let mut kept = connect(&url).await;
    let expiry = now() + 2;
    send(&mut kept, &hello(hs(&good("bob", 2)))).await;
    assert!(matches!(recv(&mut kept).await, ServerMsg::Welcome { .. }));
    send(
        &mut kept,
        &ClientMsg::Reauth {
            token: hs(&good("bob", 600)),
        },
    )
    .await;
    let mut nonce = 0;
    while now() <= expiry + 1 {
        nonce += 1;
        send(&mut kept, &ClientMsg::Ping { nonce }).await;
        match recv(&mut kept).await {
            ServerMsg::Pong { nonce: n, .. } => assert_eq!(n, nonce),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reauth as another user ends the session.
    send(
        &mut kept,
        &ClientMsg::Reauth {
            token: hs(&good("mallory", 600)),
        },
    )
    .await;
    let (errors, close) = until_close(&mut kept).await;
    assert_eq!(errors, vec![ErrorCode::UserChanged]);
    assert_eq!(
        close.map(|c| u16::from(c.code)),
        Some(CloseCode::Revoked.code())
    );
}
