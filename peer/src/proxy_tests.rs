//! Proxy URLs, `NO_PROXY` matching and the `CONNECT` exchange.

use super::*;

#[test]
fn parses_proxy_urls() {
    let p = ProxyConfig::parse("http://user:p%40ss@proxy.corp:3128/").expect("url");
    assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
    assert_eq!(p.credentials, Some(("user".into(), "p@ss".into())));
    assert_eq!(p.addr(), "proxy.corp:3128");
    let p = ProxyConfig::parse("10.0.0.1").expect("bare host");
    assert_eq!(
        (p.host.as_str(), p.port, p.credentials),
        ("10.0.0.1", 80, None)
    );
    let p = ProxyConfig::parse("HTTP://[2001:db8::1]:8080").expect("v6");
    assert_eq!((p.host.as_str(), p.port), ("2001:db8::1", 8080));
    assert_eq!(p.addr(), "[2001:db8::1]:8080");
    for bad in [
        "https://proxy:443",
        "socks5://p:1080",
        "http://",
        "http://host:notaport",
    ] {
        assert!(ProxyConfig::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_environment_values_pick_a_proxy_and_its_exceptions() {
    assert_eq!(ProxyConfig::from_env_values(None, Some("*")), Ok(None));
    assert_eq!(ProxyConfig::from_env_values(Some(" "), None), Ok(None));
    let p = ProxyConfig::from_env_values(Some("http://p:1"), Some("corp, 10.0.0.0/8"))
        .expect("ok")
        .expect("a proxy");
    assert!(p.no_proxy.matches("srv.corp", None));
    assert!(!p.no_proxy.matches("example.org", None));
}

#[test]
fn no_proxy_matches_hosts_suffixes_ips_and_blocks() {
    let n = NoProxy::parse(
        "localhost, .example.com,corp.net, 192.168.1.7,10.0.0.0/8,::1,fd00::/8, host.io:7700",
    );
    for yes in [
        "localhost",
        "LOCALHOST.",
        "a.example.com",
        "example.com",
        "corp.net",
        "x.y.corp.net",
        "192.168.1.7",
        "10.200.3.4",
        "[::1]",
        "fd12::5",
        "host.io",
    ] {
        assert!(n.matches(yes, None), "{yes} should bypass");
    }
    for no in [
        "notexample.com",
        "corp.network",
        "192.168.1.8",
        "11.0.0.1",
        "::2",
        "fe80::1",
        "io",
    ] {
        assert!(!n.matches(no, None), "{no} should use the proxy");
    }
    assert!(n.matches("rdv.internal", Some("10.1.2.3".parse().expect("ip"))));
    assert!(NoProxy::parse("*").matches("anything", None));
    assert!(!NoProxy::parse("").matches("anything", None));
    assert!(NoProxy::parse("0.0.0.0/0").matches("8.8.8.8", None));
}

#[test]
fn the_connect_request_carries_the_target_and_basic_credentials() {
    let req = connect_request("rdv.example.org:7700", None);
    assert!(
        req.starts_with("CONNECT rdv.example.org:7700 HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains("\r\nHost: rdv.example.org:7700\r\n"));
    assert!(req.ends_with("\r\n\r\n"));
    assert!(!req.contains("Proxy-Authorization"));
    let creds = ("Aladdin".to_owned(), "open sesame".to_owned());
    let req = connect_request("h:1", Some(&creds));
    // RFC 7617's example.
    assert!(req.contains("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"));
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
}

#[test]
fn proxy_answers_are_read_with_a_cap() {
    assert_eq!(
        parse_answer(b"HTTP/1.1 200 Connection established\r\n"),
        ProxyAnswer::Partial
    );
    let ok = b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n";
    assert_eq!(parse_answer(ok), ProxyAnswer::Open(ok.len()));
    assert_eq!(
        parse_answer(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"),
        ProxyAnswer::Refused(407, "Proxy Authentication Required".into())
    );
    assert!(matches!(
        parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n"),
        ProxyAnswer::Bad(_)
    ));
    let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    long.resize(MAX_RESPONSE, b'a');
    assert!(matches!(parse_answer(&long), ProxyAnswer::Bad(_)));
}
