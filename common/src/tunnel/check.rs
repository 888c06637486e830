//! The UDP check: one datagram a peer sends the server's UDP port to learn
//! whether UDP gets through (again), and the server's answer.
//!
//! A peer whose server link runs over TCP sends a check now and then
//! straight from its UDP socket; an answer means UDP works and the link can
//! move back. The answer also says the address the server saw (as a STUN
//! binding response does). The request is padded to be larger than the
//! answer, so the server never sends more than it got (no amplification).
//!
//! ```text
//! request (40 bytes): 0x3E ‖ nonce (16) ‖ zeros (23)
//! answer  (36 bytes): 0x3F ‖ nonce (16) ‖ family (4 or 6) ‖ IP (16; IPv4 in the first 4) ‖ port (2, big endian)
//! ```
//!
//! The same request doubles as a *mapping check* (RFC 4787's question:
//! does the NAT's mapping depend on the destination?). A request with byte
//! 17 set to [`WANT_MAPPING`] asks a server that knows the flag for a
//! [`MAPPING_ANSWER`]: the address seen and the server's *other* port, a
//! second UDP socket that answers the same requests. A peer that asks both
//! and compares the two addresses learns whether its NAT keeps one public
//! port for every destination (cone: a birthday attempt can find it) or
//! picks a new one per destination (symmetric). A server older than the
//! flag ignores the byte and sends the plain [`ANSWER`]: then no other port
//! is known, and neither is the mapping.
//!
//! ```text
//! mapping answer (38 bytes): 0x3D ‖ nonce (16) ‖ family ‖ IP (16) ‖ port (2) ‖ other port (2; 0: none)
//! ```
//!
//! All type bytes lie in the relay's range (0x30–0x3F, QUIC's fixed bit
//! clear), so the sockets that demultiplex relay frames from QUIC see them
//! first. Pure: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Type byte of a check request.
pub const REQUEST: u8 = 0x3E;
/// Type byte of a check answer.
pub const ANSWER: u8 = 0x3F;
/// Length of a request.
pub const REQUEST_LEN: usize = 40;
/// Length of an answer.
pub const ANSWER_LEN: usize = 36;
/// Type byte of a mapping answer (to a request with [`WANT_MAPPING`]).
pub const MAPPING_ANSWER: u8 = 0x3D;
/// Length of a mapping answer (still smaller than the request).
pub const MAPPING_ANSWER_LEN: usize = 38;
/// Byte 17 of a request that asks for a [`MAPPING_ANSWER`].
pub const WANT_MAPPING: u8 = 1;

/// A request carrying `nonce`.
pub fn request(nonce: [u8; 16]) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0] = REQUEST;
    out[1..17].copy_from_slice(&nonce);
    out
}

/// A request carrying `nonce` that asks for a [`MAPPING_ANSWER`].
pub fn mapping_request(nonce: [u8; 16]) -> [u8; REQUEST_LEN] {
    let mut out = request(nonce);
    out[17] = WANT_MAPPING;
    out
}

/// The nonce of a well-formed request (`None` for anything else,
/// including a short one: it gets no answer).
pub fn parse_request(bytes: &[u8]) -> Option<[u8; 16]> {
    if bytes.len() < REQUEST_LEN || bytes[0] != REQUEST {
        return None;
    }
    bytes[1..17].try_into().ok()
}

/// Whether a well-formed request asks for a [`MAPPING_ANSWER`].
pub fn wants_mapping(bytes: &[u8]) -> bool {
    parse_request(bytes).is_some() && bytes[17] == WANT_MAPPING
}

/// The answer to a request with `nonce` from `seen`.
pub fn answer(nonce: [u8; 16], seen: SocketAddr) -> [u8; ANSWER_LEN] {
    let mut out = [0u8; ANSWER_LEN];
    out[0] = ANSWER;
    write_body(&mut out, nonce, seen);
    out
}

/// The mapping answer to a request with `nonce` from `seen`, naming the
/// server's other check port (`0`: it has none).
pub fn mapping_answer(
    nonce: [u8; 16],
    seen: SocketAddr,
    other_port: u16,
) -> [u8; MAPPING_ANSWER_LEN] {
    let mut out = [0u8; MAPPING_ANSWER_LEN];
    out[0] = MAPPING_ANSWER;
    write_body(&mut out, nonce, seen);
    out[36..38].copy_from_slice(&other_port.to_be_bytes());
    out
}

/// Nonce, family, IP and port into bytes 1..36.
fn write_body(out: &mut [u8], nonce: [u8; 16], seen: SocketAddr) {
    out[1..17].copy_from_slice(&nonce);
    match seen.ip() {
        IpAddr::V4(ip) => {
            out[17] = 4;
            out[18..22].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[17] = 6;
            out[18..34].copy_from_slice(&ip.octets());
        }
    }
    out[34..36].copy_from_slice(&seen.port().to_be_bytes());
}

/// The nonce and address of a well-formed answer.
pub fn parse_answer(bytes: &[u8]) -> Option<([u8; 16], SocketAddr)> {
    if bytes.len() != ANSWER_LEN || bytes[0] != ANSWER {
        return None;
    }
    parse_body(bytes)
}

/// The nonce, the address seen and the other port (`None`: the server has
/// none) of a well-formed mapping answer.
pub fn parse_mapping_answer(bytes: &[u8]) -> Option<([u8; 16], SocketAddr, Option<u16>)> {
    if bytes.len() != MAPPING_ANSWER_LEN || bytes[0] != MAPPING_ANSWER {
        return None;
    }
    let (nonce, seen) = parse_body(bytes)?;
    let other = u16::from_be_bytes([bytes[36], bytes[37]]);
    Some((nonce, seen, (other != 0).then_some(other)))
}

fn parse_body(bytes: &[u8]) -> Option<([u8; 16], SocketAddr)> {
    let nonce: [u8; 16] = bytes[1..17].try_into().ok()?;
    let ip = match bytes[17] {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[18..22]).ok()?)),
        6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[18..34]).ok()?)),
        _ => return None,
    };
    let port = u16::from_be_bytes([bytes[34], bytes[35]]);
    Some((nonce, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_amplifies() {
        let nonce = [7u8; 16];
        let req = request(nonce);
        assert_eq!(parse_request(&req), Some(nonce));
        assert!(parse_request(&req[..REQUEST_LEN - 1]).is_none());
        for seen in ["203.0.113.9:4242", "[2001:db8::1]:7700"] {
            let seen: SocketAddr = seen.parse().expect("address");
            let ans = answer(nonce, seen);
            assert!(ans.len() < req.len());
            assert_eq!(parse_answer(&ans), Some((nonce, seen)));
        }
        assert!(parse_answer(&req[..ANSWER_LEN]).is_none());
        let mut bad = answer(nonce, "1.2.3.4:5".parse().expect("address"));
        bad[17] = 5;
        assert!(parse_answer(&bad).is_none());
    }

    #[test]
    fn the_types_sit_in_the_relay_range() {
        assert!(crate::relay_frame::is_relay_frame(REQUEST));
        assert!(crate::relay_frame::is_relay_frame(ANSWER));
        assert!(crate::relay_frame::is_relay_frame(MAPPING_ANSWER));
    }

    #[test]
    fn a_mapping_request_is_a_request_with_a_flag_and_its_answer_names_the_other_port() {
        let nonce = [9u8; 16];
        let req = mapping_request(nonce);
        assert_eq!(
            parse_request(&req),
            Some(nonce),
            "old servers still answer it"
        );
        assert!(wants_mapping(&req));
        assert!(!wants_mapping(&request(nonce)));
        let seen: SocketAddr = "198.51.100.7:40000".parse().expect("address");
        let ans = mapping_answer(nonce, seen, 7001);
        assert!(ans.len() < req.len(), "no amplification");
        assert_eq!(parse_mapping_answer(&ans), Some((nonce, seen, Some(7001))));
        assert_eq!(
            parse_mapping_answer(&mapping_answer(nonce, seen, 0)),
            Some((nonce, seen, None))
        );
        assert!(parse_answer(&ans).is_none());
        assert!(parse_mapping_answer(&answer(nonce, seen)).is_none());
    }
}
