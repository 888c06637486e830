//! What this peer's NAT does with a mapping, asked of the server: one
//! mapping check to its main UDP port, one to its *other* check port, both
//! from the call socket, and the two addresses seen compared
//! ([`Mapping::from_answers`]; wire format in `common::tunnel::check`).
//! The answer decides a relayed call's birthday attempt
//! ([`crate::path::birthday`]): only a symmetric side and a cone side
//! make one.
//!
//! [`CheckAnswers`] holds the requests waiting for their answers, these
//! and the plain UDP checks of a link on TCP ([`PathSocket::udp_check`]):
//! the socket wrapper hands it every check answer that comes over UDP.
//! [`detect`] asks and tells the router. An older server answers the main
//! port's request plainly (no other port): the mapping stays unknown, and
//! no attempt is made.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::candidates::canonical;
use common::probe::Mapping;
use common::tunnel::check;
use tokio::sync::oneshot;

use crate::router::Router;
use crate::udp::PathSocket;

/// Most checks waiting at once (two per server link, a few links, and a
/// link's plain check).
const MAX_WAITING: usize = 8;

/// How long one check waits for its answer before it is sent again.
const CHECK_WAIT: Duration = Duration::from_millis(400);

/// Times a check is sent before the mapping is left unknown.
const CHECK_TRIES: u32 = 3;

/// What an answer says: the address seen and the server's other port
/// (`None` in a plain answer).
pub(crate) type CheckAnswer = (SocketAddr, Option<u16>);

struct Waiting {
    server: SocketAddr,
    nonce: [u8; 16],
    answer: oneshot::Sender<CheckAnswer>,
}

/// UDP checks waiting for their answers (at most [`MAX_WAITING`], the
/// oldest dropped).
#[derive(Default)]
pub(crate) struct CheckAnswers {
    waiting: Mutex<Vec<Waiting>>,
}

impl CheckAnswers {
    /// Waits for the answer to a check with `nonce` sent to `server`.
    pub(crate) fn expect(
        &self,
        server: SocketAddr,
        nonce: [u8; 16],
    ) -> oneshot::Receiver<CheckAnswer> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|w| !w.answer.is_closed());
        if waiting.len() >= MAX_WAITING {
            waiting.remove(0);
        }
        waiting.push(Waiting {
            server: canonical(server),
            nonce,
            answer: tx,
        });
        rx
    }

    /// Whether `bytes` from `from` answers a waiting check (then it is
    /// handed over); anything else is left alone. A plain answer to our
    /// nonce is an older server's: no other port.
    pub(crate) fn take_answer(&self, from: SocketAddr, bytes: &[u8]) -> bool {
        let answer = match bytes.first() {
            Some(&check::MAPPING_ANSWER) => check::parse_mapping_answer(bytes),
            Some(&check::ANSWER) => check::parse_answer(bytes).map(|(n, seen)| (n, seen, None)),
            _ => None,
        };
        let Some((nonce, seen, other)) = answer else {
            return false;
        };
        let from = canonical(from);
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = waiting
            .iter()
            .position(|w| w.nonce == nonce && w.server == from)
        else {
            return false;
        };
        let w = waiting.swap_remove(i);
        let _ = w.answer.send((canonical(seen), other));
        true
    }
}

/// Asks `server` (main port, then its other port) and tells the router
/// what this peer's NAT does; bounded by [`CHECK_TRIES`] × [`CHECK_WAIT`]
/// per port.
pub(crate) async fn detect(
    socket: Arc<PathSocket>,
    router: Arc<Router>,
    server: SocketAddr,
) -> Mapping {
    let mapping = ask_both(&socket, server).await;
    tracing::debug!(%server, mapping = mapping.as_str(), "NAT mapping");
    router.set_mapping(mapping);
    mapping
}

async fn ask_both(socket: &PathSocket, server: SocketAddr) -> Mapping {
    let Some((first, Some(other))) = ask(socket, server).await else {
        return Mapping::Unknown;
    };
    let second_server = SocketAddr::new(server.ip(), other);
    match ask(socket, second_server).await {
        Some((second, _)) => Mapping::from_answers(first, second),
        None => Mapping::Unknown,
    }
}

/// One check to `server`, sent up to [`CHECK_TRIES`] times.
async fn ask(socket: &PathSocket, server: SocketAddr) -> Option<CheckAnswer> {
    for _ in 0..CHECK_TRIES {
        let nonce: [u8; 16] = rand::random();
        let answer = socket.checks.expect(server, nonce);
        let request = check::mapping_request(nonce);
        let answered = async {
            socket.send_check(server, &request).await;
            answer.await
        };
        if let Ok(Ok(a)) = tokio::time::timeout(CHECK_WAIT, answered).await {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_taken_by_nonce_and_server_only() {
        let checks = CheckAnswers::default();
        let server: SocketAddr = "192.0.2.1:7700".parse().expect("addr");
        let seen: SocketAddr = "198.51.100.9:4000".parse().expect("addr");
        let mut rx = checks.expect(server, [1; 16]);
        let ans = check::mapping_answer([1; 16], seen, 7701);
        let stranger: SocketAddr = "192.0.2.2:7700".parse().expect("addr");
        assert!(
            !checks.take_answer(stranger, &ans),
            "not from the server asked"
        );
        assert!(!checks.take_answer(server, &check::mapping_answer([2; 16], seen, 1)));
        assert!(checks.take_answer(server, &ans));
        assert_eq!(rx.try_recv().ok(), Some((seen, Some(7701))));
        assert!(!checks.take_answer(server, &ans), "taken once");
        // An older server's plain answer: no other port.
        let mut rx = checks.expect(server, [3; 16]);
        assert!(checks.take_answer(server, &check::answer([3; 16], seen)));
        assert_eq!(rx.try_recv().ok(), Some((seen, None)));
    }
}
