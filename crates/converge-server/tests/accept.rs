//! Connections before they upgrade: a peer that sends no request head (or trickles it) is
//! closed after the header deadline, connections over the cap are closed at once, and
//! WebSockets, once upgraded, no longer count against the cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use converge_proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(tune: impl FnOnce(&mut converge_server::ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = converge_server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    tune(&mut config);
    let handle = converge_server::start(config).await.unwrap();
    TestServer { handle, dir }
}

/// Reads until the server closes the connection (end of stream or a reset); returns what it
/// sent. Panics if it is still open after `WAIT`.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the server kept the connection open")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// GET /healthz on a fresh connection: the status line.
async fn healthz(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut tcp).await;
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_peer_that_never_finishes_its_request_head_is_closed() {
    let server = start(|c| c.http_header_timeout = Duration::from_millis(300)).await;
    let addr = server.handle.local_addr();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut trickling = TcpStream::connect(addr).await.unwrap();
    trickling
        .write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    until_closed(&mut silent).await;
    until_closed(&mut trickling).await;
    // Closed by the deadline, not by the test's own timeout.
    assert!(t.elapsed() < WAIT);
    // Others are served throughout.
    assert_eq!(healthz(addr).await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_websockets_do_not_count() {
    let server = start(|c| {
        c.max_http_connections = 2;
        // Far past the test's own wait: only the cap can close the third connection.
        c.http_header_timeout = Duration::from_secs(600);
    })
    .await;
    let addr = server.handle.local_addr();
    let url = server.handle.ws_url();
    // Upgraded connections leave the cap: three sessions with a cap of two.
    let mut sessions = Vec::new();
    for i in 0..3 {
        sessions.push(hello(&url, &format!("u{i}")).await);
    }
    // Two silent connections take both places (the listener takes connections in order, so
    // a third connects after them).
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(
        until_closed(&mut third).await.is_empty(),
        "the connection over the cap got an answer"
    );
    // The sessions are still served.
    for ws in &mut sessions {
        send(ws, &ClientMsg::Ping { nonce: 1 }).await;
        assert!(matches!(recv(ws).await, ServerMsg::Pong { nonce: 1, .. }));
    }
    // A place frees when a connection ends (once the server has seen it end).
    drop(first);
    let deadline = Instant::now() + WAIT;
    while healthz(addr).await != "HTTP/1.1 200 OK" {
        assert!(Instant::now() < deadline, "no place freed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn shutdown_does_not_wait_for_silent_connections() {
    // A head deadline far past the test's wait: only shutdown can end these.
    let server = start(|c| c.http_header_timeout = Duration::from_secs(600)).await;
    let addr = server.handle.local_addr();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    // Both accepted (a request on a third connection is answered after them).
    assert_eq!(healthz(addr).await, "HTTP/1.1 200 OK");
    tokio::time::timeout(WAIT, server.handle.shutdown())
        .await
        .expect("shutdown waited for connections that never sent a request")
        .unwrap();
    until_closed(&mut silent).await;
    until_closed(&mut partial).await;
}
