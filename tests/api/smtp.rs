//! A tiny real SMTP server for the mail tests: it speaks enough of RFC 5321
//! for lettre (greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT),
//! keeps what it receives, and can refuse DATA with 554 or start late on a
//! reserved port to play an outage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as transmitted (headers and body, CRLF line ends,
    /// dot-stuffing undone).
    pub data: String,
}

impl ReceivedMail {
    /// The decoded `text/plain` part.
    pub fn text(&self) -> String {
        mime_part(&self.data, "text/plain")
    }

    /// The decoded `text/html` part.
    pub fn html(&self) -> String {
        mime_part(&self.data, "text/html")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }

    /// The reset token in the link of the text part.
    pub fn reset_token(&self) -> String {
        let text = self.text();
        let start = text.find("token=").expect("a link with token= in the mail") + "token=".len();
        text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<ReceivedMail>>,
    /// Mails with these subjects are accepted and dropped, for tests about
    /// other mail.
    ignored_subjects: Vec<String>,
    reject_data: AtomicBool,
    rejected: AtomicUsize,
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on (until a server is started on it).
pub fn reserve_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub fn url(addr: SocketAddr) -> String {
    format!("smtp://{addr}")
}

impl SmtpServer {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_ignoring(addr, &[]).await
    }

    /// A server on `addr` that accepts mails with these subjects but keeps
    /// only the others.
    pub async fn start_ignoring(addr: SocketAddr, subjects: &[&str]) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            ignored_subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            ..Shared::default()
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Self { addr, shared, task }
    }

    pub fn url(&self) -> String {
        url(self.addr)
    }

    /// From now on every DATA is refused with 554.
    pub fn reject_data(&self, reject: bool) {
        self.shared.reject_data.store(reject, Ordering::SeqCst);
    }

    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived; fails after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} mail(s) within {within:?}, got {}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `cond` holds; fails after `within`.
    pub async fn wait_until(&self, within: Duration, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !cond(self) {
            assert!(Instant::now() < deadline, "condition not met within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(session(stream, shared.clone()));
    }
}

/// One SMTP conversation; any I/O error simply ends it.
async fn session(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 smtp.test ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let verb = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 smtp.test\r\n",
            "MAIL" => {
                from = argument(command);
                to.clear();
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" => {
                to.push(argument(command));
                b"250 2.1.5 ok\r\n"
            }
            "DATA" if shared.reject_data.load(Ordering::SeqCst) => {
                shared.rejected.fetch_add(1, Ordering::SeqCst);
                b"554 5.7.1 message refused\r\n"
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let mail = ReceivedMail {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                };
                let subject = mail.header("Subject").unwrap_or_default();
                if !shared.ignored_subjects.contains(&subject) {
                    shared.received.lock().unwrap().push(mail);
                }
                b"250 2.0.0 queued\r\n"
            }
            "RSET" => {
                from.clear();
                to.clear();
                b"250 2.0.0 ok\r\n"
            }
            "NOOP" => b"250 2.0.0 ok\r\n",
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 command not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}

/// The address in `MAIL FROM:<a@b> …` or `RCPT TO:<a@b>`.
fn argument(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(open), Some(close)) if open < close => command[open + 1..close].to_owned(),
        _ => String::new(),
    }
}

/// The decoded body of the first part with this content type.
fn mime_part(message: &str, content_type: &str) -> String {
    let lower = message.to_ascii_lowercase();
    let start = lower
        .find(&format!("content-type: {content_type}"))
        .unwrap_or_else(|| panic!("no {content_type} part in:\n{message}"));
    let part = &message[start..];
    let (headers, rest) = part.split_once("\r\n\r\n").expect("part headers end");
    // The part ends at the multipart boundary, not at any line that starts
    // with "--": a quoted-printable soft break can put a token's "--" there.
    let delimiter = boundary(message).map(|b| format!("\r\n--{b}"));
    let end = match &delimiter {
        Some(d) => rest.find(d.as_str()),
        None => rest.find("\r\n--"),
    };
    let body = match end {
        Some(end) => &rest[..end],
        None => rest,
    };
    let encoding = headers
        .split("\r\n")
        .find_map(|h| {
            let lower = h.to_ascii_lowercase();
            lower
                .strip_prefix("content-transfer-encoding:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "7bit".into());
    match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            let joined: String = body.split_whitespace().collect();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(joined).unwrap()).unwrap()
        }
        _ => body.to_owned(),
    }
}

/// The boundary parameter of the message's multipart content type.
fn boundary(message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("boundary=")? + "boundary=".len();
    let rest = &message[at..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split([';', '\r', '\n']).next()?,
    };
    Some(value.trim().to_owned())
}

fn decode_quoted_printable(body: &str) -> String {
    let unfolded = body.replace("=\r\n", "");
    let bytes = unfolded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escaped) {
            (b'=', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}
