//! An SMTP sink on loopback: speaks enough SMTP (RFC 5321) for a client to deliver, and keeps
//! what it was given, for tests to read the e-mail the server sent.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One delivered e-mail.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-stuffing undone.
    pub data: String,
}

impl Delivered {
    /// The body as a mail client shows it: quoted-printable (what lettre uses for long lines)
    /// decoded.
    pub fn body(&self) -> String {
        let (headers, body) = self.data.split_once("\n\n").unwrap_or(("", &self.data));
        if !headers.to_ascii_lowercase().contains("content-transfer-encoding: quoted-printable") {
            return body.to_string();
        }
        let joined = body.replace("=\n", "");
        let mut decoded = Vec::new();
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], joined.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok())) {
                (b'=', Some(byte)) => {
                    decoded.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    decoded.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&decoded).into_owned()
    }
}

pub struct SmtpSink {
    port: u16,
    delivered: Arc<Mutex<Vec<Delivered>>>,
    /// How many more messages to refuse with a temporary failure, and how many were.
    refusals: Arc<Refusals>,
}

#[derive(Default)]
struct Refusals {
    to_come: AtomicUsize,
    made: AtomicUsize,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::refusing(0).await
    }

    /// A sink that answers the first `count` messages `451` (try again later) and keeps none
    /// of them.
    pub async fn refusing(count: usize) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(Refusals { to_come: AtomicUsize::new(count), made: AtomicUsize::new(0) });
        let (sink, refusing) = (delivered.clone(), refusals.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, sink.clone(), refusing.clone()));
            }
        });
        SmtpSink { port, delivered, refusals }
    }

    /// How many messages were refused.
    pub fn refused(&self) -> usize {
        self.refusals.made.load(Ordering::SeqCst)
    }

    /// `smtp://127.0.0.1:<port>` (no TLS).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    /// The delivered e-mail once there are `count`; panics after 20 s.
    pub async fn wait_for(&self, count: usize) -> Vec<Delivered> {
        for _ in 0..200 {
            let delivered = self.delivered();
            if delivered.len() >= count {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{count} e-mails were expected, {} arrived", self.delivered().len());
    }
}

async fn session(stream: tokio::net::TcpStream, delivered: Arc<Mutex<Vec<Delivered>>>, refusals: Arc<Refusals>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut current = Delivered { from: String::new(), to: Vec::new(), data: String::new() };
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-sink\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            current.from = line[10..].trim().to_string();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            current.to.push(line[8..].trim().trim_matches(['<', '>']).to_string());
            b"250 OK\r\n"
        } else if upper == "DATA" {
            if write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await.is_err() {
                return;
            }
            while let Ok(Some(data_line)) = lines.next_line().await {
                if data_line == "." {
                    break;
                }
                current.data.push_str(data_line.strip_prefix('.').unwrap_or(&data_line));
                current.data.push('\n');
            }
            let message =
                std::mem::replace(&mut current, Delivered { from: String::new(), to: Vec::new(), data: String::new() });
            let refuse =
                refusals.to_come.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if refuse {
                refusals.made.fetch_add(1, Ordering::SeqCst);
                b"451 4.3.0 Try again later\r\n"
            } else {
                delivered.lock().unwrap().push(message);
                b"250 OK queued\r\n"
            }
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 Bye\r\n").await;
            return;
        } else {
            b"250 OK\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}
