//! HTTP/2 below tonic: an `h2` client for requests tonic would not send
//! (non-ASCII metadata, undecodable messages, bodies that never end) on one
//! known connection, and a hand-written frame writer for a client that
//! ignores the server's stream limit.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What came back for one raw gRPC call.
#[derive(Debug)]
pub struct RawReply {
    pub http_status: u16,
    /// From the headers (trailers-only answer) or the trailers.
    pub grpc_status: Option<i32>,
    pub grpc_message: String,
}

/// One HTTP/2 connection driven by the `h2` crate.
pub struct RawConnection {
    addr: SocketAddr,
    send: h2::client::SendRequest<Bytes>,
}

/// A gRPC message frame: uncompressed flag, big-endian length, payload.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

fn grpc_status_of(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { addr, send }
    }

    fn request(&self, path: &str, headers: &[(&str, HeaderValue)]) -> Request<()> {
        let mut request = Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.clone(),
            );
        }
        request
    }

    /// A unary call with `message` (already protobuf-encoded) as its body.
    pub async fn call(
        &mut self,
        path: &str,
        headers: &[(&str, HeaderValue)],
        message: &[u8],
    ) -> Result<RawReply, h2::Error> {
        let request = self.request(path, headers);
        let send = self.send.clone();
        let mut send = send.ready().await?;
        let (response, mut body) = send.send_request(request, false)?;
        body.send_data(grpc_frame(message), true)?;
        let response = response.await?;
        let http_status = response.status().as_u16();
        if let Some(status) = grpc_status_of(response.headers()) {
            return Ok(RawReply {
                http_status,
                grpc_status: Some(status),
                grpc_message: message_of(response.headers()),
            });
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        Ok(RawReply {
            http_status,
            grpc_status: grpc_status_of(&trailers),
            grpc_message: message_of(&trailers),
        })
    }

    /// Sends the headers of a call and never its body; returns when the
    /// server answers.
    pub async fn call_without_body(
        &mut self,
        path: &str,
        headers: &[(&str, HeaderValue)],
    ) -> Result<RawReply, h2::Error> {
        let request = self.request(path, headers);
        let send = self.send.clone();
        let mut send = send.ready().await?;
        let (response, _body_kept_open) = send.send_request(request, false)?;
        let response = response.await?;
        Ok(RawReply {
            http_status: response.status().as_u16(),
            grpc_status: grpc_status_of(response.headers()),
            grpc_message: message_of(response.headers()),
        })
    }
}

fn message_of(headers: &HeaderMap) -> String {
    headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// What the server advertises in its first SETTINGS frame.
pub async fn advertised_max_concurrent_streams(addr: SocketAddr) -> usize {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_send, mut connection): (h2::client::SendRequest<Bytes>, _) =
        h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    // The server's SETTINGS precede its answer to our PING.
    tokio::select! {
        result = &mut connection => panic!("connection ended early: {result:?}"),
        pong = ping_pong.ping(h2::Ping::opaque()) => {
            pong.unwrap();
        }
    }
    connection.max_concurrent_send_streams()
}

pub const FRAME_HEADERS: u8 = 0x1;
pub const FRAME_RST_STREAM: u8 = 0x3;
pub const FRAME_SETTINGS: u8 = 0x4;
pub const FRAME_GOAWAY: u8 = 0x7;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of RST_STREAM and GOAWAY frames.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            FRAME_RST_STREAM => 0,
            FRAME_GOAWAY => 4,
            _ => return None,
        };
        let bytes: [u8; 4] = self.payload.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }
}

/// A client that writes HTTP/2 frames by hand, limits or not.
pub struct RawFrames {
    tcp: TcpStream,
}

/// HPACK "literal header field without indexing, new name" with lengths
/// below 128 and no Huffman coding (RFC 7541 6.2.2).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(u8::try_from(name.len()).unwrap());
    block.extend_from_slice(name.as_bytes());
    block.push(u8::try_from(value.len()).unwrap());
    block.extend_from_slice(value.as_bytes());
}

impl RawFrames {
    /// Connects, sends the preface and empty SETTINGS, and acknowledges the
    /// server's SETTINGS once they arrive.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut this = Self { tcp };
        this.write(FRAME_SETTINGS, 0, 0, &[]).await;
        loop {
            let frame = this.read().await.expect("the server's SETTINGS");
            if frame.kind == FRAME_SETTINGS && frame.flags & 0x1 == 0 {
                this.write(FRAME_SETTINGS, 0x1, 0, &[]).await;
                return this;
            }
        }
    }

    pub async fn write(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// Opens stream `stream` with the headers of a unary gRPC call and no
    /// body yet, so the server keeps the stream open waiting for it.
    pub async fn open_stream(&mut self, stream: u32, authority: &str, path: &str) {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        literal(&mut block, ":path", path);
        literal(&mut block, ":authority", authority);
        literal(&mut block, "content-type", "application/grpc");
        literal(&mut block, "te", "trailers");
        self.write(FRAME_HEADERS, 0x4, stream, &block).await; // END_HEADERS
    }

    /// The next frame, or `None` when the connection ends or stays quiet for
    /// five seconds.
    pub async fn read(&mut self) -> Option<Frame> {
        let read = async {
            let mut head = [0u8; 9];
            self.tcp.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0; len];
            self.tcp.read_exact(&mut payload).await.ok()?;
            Some(Frame {
                kind: head[3],
                flags: head[4],
                stream,
                payload,
            })
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()
            .flatten()
    }
}
