//! A raw protocol client over a real socket, for server tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use converge_proto::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub handle: converge_server::ServerHandle,
    pub dir: tempfile::TempDir,
}

pub async fn server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let config = converge_server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let handle = converge_server::start(config).await.unwrap();
    TestServer { handle, dir }
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// Connects and completes the handshake as `user` (under Dev auth the token is the user id).
pub async fn hello(url: &str, user: &str) -> Ws {
    hello_with(url, user.into()).await
}

pub async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::Binary(encode_client(msg).unwrap().into()))
        .await
        .unwrap();
}

/// The next protocol message (panics on a close or a timeout).
pub async fn recv(ws: &mut Ws) -> ServerMsg {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("connection ended")
            .expect("read failed");
        match msg {
            Message::Binary(b) => return decode_server(&b, MAX_FRAME_CEILING).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads until the server closes; returns the Error codes seen and the close frame.
pub async fn until_close(ws: &mut Ws) -> (Vec<ErrorCode>, Option<CloseFrame>) {
    let mut errors = Vec::new();
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the close");
        match next {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(ServerMsg::Error { code, .. }) = decode_server(&b, MAX_FRAME_CEILING) {
                    errors.push(code);
                }
            }
            Some(Ok(Message::Close(c))) => return (errors, c),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (errors, None),
        }
    }
}

/// Subscribes and reads until Live; returns the changes received on the way.
pub async fn subscribe(ws: &mut Ws, doc: DocId, after: Option<Position>) -> (Vec<Vec<u8>>, Seq) {
    send(ws, &ClientMsg::Subscribe { doc, after }).await;
    let mut changes = Vec::new();
    loop {
        match recv(ws).await {
            ServerMsg::Changes { changes: c, .. } => {
                changes.extend(c.into_iter().map(Blob::into_vec))
            }
            ServerMsg::Snapshot { .. } => {}
            ServerMsg::Live { seq, .. } => return (changes, seq),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[allow(unused_imports)]
pub use converge_tests::Writer;

pub fn blobs(v: &[Vec<u8>]) -> Vec<Blob> {
    v.iter().cloned().map(Blob).collect()
}

/// One HTTP/1.1 request on a fresh connection: the status and the JSON body (`Null` when
/// there is none).
pub async fn http(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, rest) = http_raw(server, method, path, headers, body).await;
    // A chunked body: the JSON between the chunk-size line and the end marker.
    let json = rest
        .find('{')
        .and_then(|a| rest.rfind('}').map(|b| &rest[a..=b]))
        .unwrap_or("null");
    (status, serde_json::from_str(json).unwrap())
}

/// One HTTP/1.1 request: the status and the raw body (chunk markers included, if any).
pub async fn http_raw(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.handle.local_addr())
        .await
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let rest = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, rest.to_string())
}

/// A server with JWT auth (HS256 with `secret`), adjusted by `tune`.
pub async fn jwt_server(
    secret: &[u8],
    tune: impl FnOnce(&mut converge_server::ServerConfig),
) -> TestServer {
    jwt_server_in(tempfile::tempdir().unwrap(), secret, tune).await
}

/// [`jwt_server`] on the data of `dir` (a restart when a server ran there before).
pub async fn jwt_server_in(
    dir: tempfile::TempDir,
    secret: &[u8],
    tune: impl FnOnce(&mut converge_server::ServerConfig),
) -> TestServer {
    let mut config = converge_server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        auth: converge_server::auth::AuthConfig::Jwt(converge_server::auth::JwtConfig::hs256(
            secret.to_vec(),
        )),
        ..Default::default()
    };
    tune(&mut config);
    let handle = converge_server::start(config).await.unwrap();
    TestServer { handle, dir }
}

/// A token for `user` with `roles`, valid for ten minutes, signed with `secret`.
pub fn jwt_token(secret: &[u8], user: &str, roles: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    converge_server::auth::mint_hs256(
        secret,
        &converge_server::auth::claims(user, roles, now, 600),
    )
    .unwrap()
}

/// Connects and completes the handshake with `token`.
pub async fn hello_with(url: &str, token: String) -> Ws {
    let mut ws = connect(url).await;
    send(
        &mut ws,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token: Some(token),
        },
    )
    .await;
    match recv(&mut ws).await {
        ServerMsg::Welcome { .. } => ws,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Sends a Ping and returns what came before its Pong (the replies to what was sent before).
pub async fn replies(ws: &mut Ws, nonce: u64) -> Vec<ServerMsg> {
    send(ws, &ClientMsg::Ping { nonce }).await;
    let mut out = Vec::new();
    loop {
        match recv(ws).await {
            ServerMsg::Pong { nonce: n, .. } if n == nonce => return out,
            other => out.push(other),
        }
    }
}
