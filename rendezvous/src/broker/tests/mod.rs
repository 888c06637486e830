//! Every branch of the call broker, on fake books and a fake clock: the
//! checks before the offer (`start`), the answers and introductions (`answer`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{ErrorKind, Fingerprint, Message, RelayTicket};

use super::*;
use crate::config::{Limits, Rate};
use crate::offers::OfferLimits;
use crate::ratelimit::RateLimiter;
use crate::relay::Tickets;

const BOB: Fingerprint = Fingerprint([1; 32]);
const ALICE: Fingerprint = Fingerprint([2; 32]);
const CALLER: SessionId = 10;
const CALLEE: SessionId = 20;
const TIMEOUT: Duration = Duration::from_secs(15);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// The books of a server where bob (session 10, 198.51.100.1) may call
/// alice (session 20, 203.0.113.2), each still where it registered.
struct Books {
    caller: Result<Caller, NoCaller>,
    owners: HashMap<String, Fingerprint>,
    store_broken: bool,
    online: HashMap<String, Callee>,
    calls: RateLimiter,
    offers: OfferLimits,
    next_id: u64,
    at: HashMap<SessionId, SocketAddr>,
    /// Which facts were asked, in order.
    asked: Vec<&'static str>,
}

impl Books {
    fn new() -> Self {
        let limits = Limits::default();
        Self {
            caller: Ok(Caller {
                session: CALLER,
                name: "bob".into(),
                fingerprint: BOB,
                observed: addr("198.51.100.1:4000"),
            }),
            owners: HashMap::from([("alice".to_owned(), ALICE)]),
            store_broken: false,
            online: HashMap::from([(
                "alice".to_owned(),
                Callee {
                    session: CALLEE,
                    approved: false,
                    standing: None,
                },
            )]),
            calls: RateLimiter::new(limits.call_rate),
            offers: OfferLimits::new(&limits),
            next_id: 7,
            at: HashMap::from([
                (CALLER, addr("198.51.100.1:4000")),
                (CALLEE, addr("203.0.113.2:5000")),
            ]),
            asked: Vec::new(),
        }
    }

    fn with_offers(mut self, limits: &Limits) -> Self {
        self.offers = OfferLimits::new(limits);
        self
    }
}

impl Facts for Books {
    fn caller(&mut self) -> Result<Caller, NoCaller> {
        self.asked.push("caller");
        self.caller.clone()
    }

    fn allow_call(&mut self, source: IpAddr, now: Instant) -> bool {
        self.asked.push("allow_call");
        self.calls.check(source, now)
    }

    fn owner(&mut self, name: &str) -> Result<Option<Fingerprint>, String> {
        self.asked.push("owner");
        match self.store_broken {
            true => Err("disk on fire".into()),
            false => Ok(self.owners.get(name).copied()),
        }
    }

    fn callee(&mut self, name: &str, _caller: Fingerprint) -> Option<Callee> {
        self.asked.push("callee");
        self.online.get(name).cloned()
    }

    fn check_offer(&mut self, offer: Offer, now: Instant) -> Result<(), OfferRefused> {
        self.asked.push("check_offer");
        self.offers.check(offer, now)
    }

    fn next_call_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn current_address(&mut self, session: SessionId) -> SocketAddr {
        self.at[&session]
    }

    fn probe_key(&mut self) -> [u8; 32] {
        [42; 32]
    }
}

fn config(relay: bool) -> BrokerConfig {
    BrokerConfig {
        relay,
        answer_timeout: TIMEOUT,
    }
}

fn request(to: &str) -> CallRequest {
    CallRequest {
        to: to.into(),
        candidates: vec![addr("192.168.1.10:4000"), addr("8.8.8.8:53")],
        hide_addresses: false,
    }
}

fn hidden(to: &str) -> CallRequest {
    CallRequest {
        hide_addresses: true,
        ..request(to)
    }
}

/// `start`'s refusal: its kind and message.
fn refused(books: &mut Books, config: BrokerConfig, request: CallRequest) -> (ErrorKind, String) {
    match CallBroker::start(books, &config, request, Instant::now()) {
        Ok((_, ask)) => panic!("offered: {ask:?}"),
        Err(Message::Error { kind, message }) => (kind, message),
        Err(other) => panic!("not an error: {other:?}"),
    }
}

fn kind_of(message: &Message) -> ErrorKind {
    match message {
        Message::Error { kind, .. } => *kind,
        other => panic!("not an error: {other:?}"),
    }
}

fn accept(candidates: &[&str], hide: bool) -> Answer {
    Answer::Reply(Message::Accept {
        candidates: candidates.iter().map(|s| addr(s)).collect(),
        hide_addresses: hide,
    })
}

fn finish(step: Step) -> Finish {
    match step {
        Step::Finish(finish) => finish,
        Step::AllocateRelay(a) => panic!("asked for a relay: {a:?}"),
    }
}

fn allocating(step: Step) -> Allocating {
    match step {
        Step::AllocateRelay(a) => a,
        Step::Finish(f) => panic!("finished without a relay: {f:?}"),
    }
}

const TICKETS: Tickets = Tickets {
    caller: RelayTicket {
        call_id: 5,
        secret: [3; 32],
    },
    callee: RelayTicket {
        call_id: 5,
        secret: [4; 32],
    },
};

/// Runs a call through to the callee's answer.
fn answered(books: &mut Books, config: BrokerConfig, req: CallRequest, answer: Answer) -> Step {
    let (broker, _) = CallBroker::start(books, &config, req, Instant::now()).expect("offered");
    broker.on_answer(answer, books)
}

mod answer;
mod start;
