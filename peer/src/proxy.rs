//! HTTP proxies for the TCP transport: which one to use (`HTTPS_PROXY`
//! style URLs, `NO_PROXY` style exceptions) and the `CONNECT` exchange,
//! without I/O (the tunnel code in `tcp` does the reading and writing).
//!
//! Networks that block UDP often allow the web only through a proxy; the
//! tunnel is TLS end to end through it (the proxy sees only the server's
//! host and port). The library takes a [`ProxyConfig`]; only the `peer`
//! binary reads the environment ([`ProxyConfig::from_env_values`]).

use std::net::IpAddr;

/// Largest proxy response head read (status line and headers).
pub const MAX_RESPONSE: usize = 8 * 1024;

/// An HTTP proxy to reach the server's TCP port through (`CONNECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy's host (a name or an IP, without brackets).
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// User and password for `Proxy-Authorization: Basic`.
    pub credentials: Option<(String, String)>,
    /// Destinations reached without the proxy.
    pub no_proxy: NoProxy,
}

/// `NO_PROXY`: a comma-separated list of hosts, domain suffixes (`.corp`
/// or `corp` both match `a.corp`), IPs, CIDR blocks (`10.0.0.0/8`), or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<String>,
}

impl NoProxy {
    /// Parses a list (empty entries ignored, case-insensitive).
    pub fn parse(list: &str) -> Self {
        let entries = list
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        Self { entries }
    }

    /// Whether `host` (a name or an IP literal) or its address `ip`
    /// bypasses the proxy.
    pub fn matches(&self, host: &str, ip: Option<IpAddr>) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = ip.or_else(|| host.parse().ok());
        self.entries.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = strip_port(entry);
            if let Some(ip) = ip {
                if entry_matches_ip(entry, ip) {
                    return true;
                }
            }
            let suffix = entry.trim_start_matches('.').trim_end_matches('.');
            !suffix.is_empty()
                && (host == suffix
                    || host
                        .strip_suffix(suffix)
                        .is_some_and(|rest| rest.ends_with('.')))
        })
    }
}

/// `entry` without a trailing `:PORT` (an IPv6 literal keeps its colons).
fn strip_port(entry: &str) -> &str {
    if let Some(inner) = entry.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => entry,
    }
}

fn entry_matches_ip(entry: &str, ip: IpAddr) -> bool {
    let (net, bits) = match entry.split_once('/') {
        Some((net, bits)) => match bits.parse::<u32>() {
            Ok(b) => (net, b),
            Err(_) => return false,
        },
        None => (entry, 128),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    let as_v6 = |a: IpAddr| match a {
        IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96),
        IpAddr::V6(v6) => (u128::from(v6), 0),
    };
    let (n, n_off) = as_v6(net);
    let (a, _) = as_v6(ip);
    let bits = (bits + n_off).min(128);
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    n & mask == a & mask
}

impl ProxyConfig {
    /// Parses `http://[user:pass@]host[:port][/]` (no scheme: `http`; the
    /// port defaults to 80). Only plain-HTTP proxies: the tunnel inside is
    /// TLS already.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("proxy {url:?}: {why}");
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!("{scheme}:// is not supported, only http://")))
            }
            None => url,
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("no valid host[:port]"))?;
        let credentials = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (percent_decode(user), percent_decode(pass))
        });
        Ok(Self {
            host,
            port: port.unwrap_or(80),
            credentials,
            no_proxy: NoProxy::default(),
        })
    }

    /// The proxy from the environment's values: `https_proxy` or
    /// `HTTPS_PROXY` (the first set and non-empty), with `no_proxy` or
    /// `NO_PROXY`. `Ok(None)` when none is set.
    pub fn from_env_values(
        https_proxy: Option<&str>,
        no_proxy: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let Some(url) = https_proxy.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let mut proxy = Self::parse(url)?;
        proxy.no_proxy = NoProxy::parse(no_proxy.unwrap_or(""));
        Ok(Some(proxy))
    }

    /// `host:port` of the proxy, for connecting and for messages.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// `HOST:PORT` → host (brackets removed) and port, if the port parses.
pub(crate) fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return (!host.is_empty()).then(|| (host.to_owned(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p.parse().ok()?)),
        _ => (s, None),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// `host:port`, with brackets around an IPv6 literal.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding (for `Proxy-Authorization`).
fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `CONNECT` request for `target` (`host:port`).
pub(crate) fn connect_request(target: &str, credentials: Option<&(String, String)>) -> String {
    let mut req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: peer/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, pass)) = credentials {
        let token = base64(format!("{user}:{pass}").as_bytes());
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// What a proxy's response head says so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProxyAnswer {
    /// More bytes are needed.
    Partial,
    /// The tunnel is open; the head was this many bytes.
    Open(usize),
    /// The proxy refused, with this status and reason.
    Refused(u16, String),
    /// Not HTTP, or too long.
    Bad(String),
}

/// Reads a proxy's response head from `buf` (everything received so far).
pub(crate) fn parse_answer(buf: &[u8]) -> ProxyAnswer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => match response.code {
            Some(code) if (200..300).contains(&code) => ProxyAnswer::Open(n),
            Some(code) => ProxyAnswer::Refused(
                code,
                common::escape_for_terminal(response.reason.unwrap_or("")).into_owned(),
            ),
            None => ProxyAnswer::Bad("no status".into()),
        },
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE => {
            ProxyAnswer::Bad(format!("a response head over {MAX_RESPONSE} bytes"))
        }
        Ok(httparse::Status::Partial) => ProxyAnswer::Partial,
        Err(e) => ProxyAnswer::Bad(format!("not an HTTP response ({e})")),
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
