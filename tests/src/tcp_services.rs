//! Small TCP services on 127.0.0.1 for forwarding tests and benches: an
//! HTTP/1.0 file server, an echo server, and a GET client. Blocking std
//! sockets on threads: independent of the runtime under test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Byte `i` of the generated `/big` body.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// An HTTP/1.0 server: `GET /file` answers `file`; `GET /big` streams
/// `big_len` bytes of [`pattern`], telling `progress` each MiB written
/// (and the total when done).
pub struct HttpServer {
    pub addr: SocketAddr,
    pub progress: mpsc::Receiver<u64>,
}

impl HttpServer {
    pub fn start(file: Arc<Vec<u8>>, big_len: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, progress) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (file, tx) = (file.clone(), tx.clone());
                std::thread::spawn(move || serve_http(conn, &file, big_len, &tx));
            }
        });
        Self { addr, progress }
    }
}

fn serve_http(mut conn: TcpStream, file: &[u8], big_len: u64, tx: &mpsc::Sender<u64>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("GET /big ") {
        let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {big_len}\r\n\r\n");
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while sent < big_len {
            let n = (big_len - sent).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + k as u64);
            }
            if conn.write_all(&buf[..n]).is_err() {
                return;
            }
            sent += n as u64;
            if sent.is_multiple_of(1 << 20) || sent == big_len {
                let _ = tx.send(sent);
            }
        }
    } else if head.starts_with("GET /file ") {
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
            file.len()
        );
        let _ = conn.write_all(file);
    } else {
        let _ = conn.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n");
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Sends `GET path` on a connected stream and reads the whole answer;
/// returns the body (panics on a status other than 200 or a short body).
pub fn get(conn: &mut TcpStream, path: &str) -> Vec<u8> {
    write!(conn, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    conn.read_to_end(&mut all).unwrap();
    body(&all)
}

/// The body of a whole HTTP/1.0 answer, checked against Content-Length.
pub fn body(all: &[u8]) -> Vec<u8> {
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {} bytes", all.len()));
    let head = String::from_utf8_lossy(&all[..split]);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .trim()
        .parse()
        .unwrap();
    let body = all[split + 4..].to_vec();
    assert_eq!(body.len(), len, "short body");
    body
}

/// An echo server: each connection gets its bytes back, and a FIN after
/// the client's FIN (half-close).
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
                let _ = back.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Writes `data` then half-closes, while reading everything back; returns
/// what came back. Reads give up after `timeout` without a byte.
pub fn echo_through(
    addr: SocketAddr,
    data: Vec<u8>,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut writer = conn.try_clone()?;
    let w = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    let read = conn.read_to_end(&mut back);
    let written = w.join().expect("writer thread");
    read?;
    written?;
    Ok(back)
}
