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
//! Both type bytes lie in the relay's range (0x30–0x3F, QUIC's fixed bit
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

/// A request carrying `nonce`.
pub fn request(nonce: [u8; 16]) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0] = REQUEST;
    out[1..17].copy_from_slice(&nonce);
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

/// The answer to a request with `nonce` from `seen`.
pub fn answer(nonce: [u8; 16], seen: SocketAddr) -> [u8; ANSWER_LEN] {
    let mut out = [0u8; ANSWER_LEN];
    out[0] = ANSWER;
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
    out
}

/// The nonce and address of a well-formed answer.
pub fn parse_answer(bytes: &[u8]) -> Option<([u8; 16], SocketAddr)> {
    if bytes.len() != ANSWER_LEN || bytes[0] != ANSWER {
        return None;
    }
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
    }
}
