//! Every branch of the call broker, on fake books and a fake clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{ErrorKind, Fingerprint, Message, RelayTicket};

use super::*;
use crate::config::{Limits, Rate};
use crate::offers::OfferLimits;
use crate::ratelimit::RateLimiter;

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
        self.online.get(name).copied()
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

#[test]
fn an_invalid_name_is_refused_before_any_lookup() {
    let mut books = Books::new();
    let (kind, _) = refused(&mut books, config(true), request("no spaces allowed"));
    assert_eq!(kind, ErrorKind::InvalidName);
    assert!(books.asked.is_empty(), "asked {:?}", books.asked);
}

#[test]
fn an_unregistered_or_closed_caller_may_not_call() {
    let mut books = Books::new();
    books.caller = Err(NoCaller::NotRegistered);
    assert_eq!(
        refused(&mut books, config(true), request("alice")).0,
        ErrorKind::NotRegistered
    );
    books.caller = Err(NoCaller::Closed);
    assert_eq!(
        refused(&mut books, config(true), request("alice")).0,
        ErrorKind::Internal
    );
    assert!(!books.asked.contains(&"owner"), "asked {:?}", books.asked);
}

#[test]
fn a_source_over_its_call_rate_is_refused_before_the_store_is_read() {
    let mut books = Books::new();
    books.calls = RateLimiter::new(Rate {
        burst: 1,
        per_second: 0.001,
    });
    assert!(CallBroker::start(&mut books, &config(true), request("alice"), Instant::now()).is_ok());
    books.asked.clear();
    let (kind, message) = refused(&mut books, config(true), request("alice"));
    assert_eq!(kind, ErrorKind::RateLimited);
    assert!(message.contains("calls"), "{message}");
    assert_eq!(books.asked, ["caller", "allow_call"]);
}

#[test]
fn a_hidden_caller_without_a_relay_is_unreachable_before_the_callee_is_asked() {
    let mut books = Books::new();
    let (kind, message) = refused(&mut books, config(false), hidden("alice"));
    assert_eq!(kind, ErrorKind::Unreachable);
    assert!(message.contains("--relay off"), "{message}");
    assert!(!books.asked.contains(&"callee"), "asked {:?}", books.asked);
}

#[test]
fn an_unknown_name_is_not_found_and_a_broken_store_internal() {
    let mut books = Books::new();
    assert_eq!(
        refused(&mut books, config(true), request("carol")).0,
        ErrorKind::NotFound
    );
    books.store_broken = true;
    let (kind, message) = refused(&mut books, config(true), request("alice"));
    assert_eq!(kind, ErrorKind::Internal);
    assert!(message.contains("disk on fire"), "{message}");
}

#[test]
fn a_registered_name_nobody_listens_on_is_offline() {
    let mut books = Books::new();
    books.online.clear();
    assert_eq!(
        refused(&mut books, config(true), request("alice")).0,
        ErrorKind::Offline
    );
    assert!(!books.asked.contains(&"check_offer"));
}

fn offer_limits() -> Limits {
    let one = Rate {
        burst: 1,
        per_second: 0.001,
    };
    Limits {
        offer_rate_per_source: one,
        offer_rate_per_callee: Rate {
            burst: 2,
            per_second: 0.001,
        },
        offer_rate_per_contact: one,
        ..Limits::default()
    }
}

/// Moves the caller to another source address.
fn from(books: &mut Books, source: &str) {
    if let Ok(caller) = &mut books.caller {
        caller.observed = addr(source);
    }
}

#[test]
fn offers_are_limited_per_source_per_callee_and_per_contact() {
    let mut books = Books::new().with_offers(&offer_limits());
    let now = Instant::now();
    let offered =
        |books: &mut Books| CallBroker::start(books, &config(true), request("alice"), now).is_ok();
    assert!(offered(&mut books));
    let (kind, message) = refused(&mut books, config(true), request("alice"));
    assert_eq!(kind, ErrorKind::RateLimited);
    assert!(
        message.contains("from your address"),
        "per source: {message}"
    );
    // Another source takes the callee's last token; a third finds none.
    from(&mut books, "198.51.100.2:1");
    assert!(offered(&mut books));
    from(&mut books, "198.51.100.3:1");
    let (kind, message) = refused(&mut books, config(true), request("alice"));
    assert_eq!(kind, ErrorKind::RateLimited);
    assert!(
        message.contains("getting too many calls"),
        "per callee: {message}"
    );
    // A pre-approved contact skips the spent per-callee bucket, once.
    books.online.insert(
        "alice".into(),
        Callee {
            session: CALLEE,
            approved: true,
        },
    );
    assert!(offered(&mut books), "a contact is locked out");
    let (kind, message) = refused(&mut books, config(true), request("alice"));
    assert_eq!(kind, ErrorKind::RateLimited);
    assert!(message.contains("from your key"), "per contact: {message}");
}

#[test]
fn the_offer_goes_to_the_callee_without_addresses_and_with_a_deadline() {
    let mut books = Books::new();
    let now = Instant::now();
    let (broker, ask) =
        CallBroker::start(&mut books, &config(true), request("alice"), now).expect("offered");
    assert_eq!(ask.callee, CALLEE);
    assert_eq!(broker.callee(), CALLEE);
    assert_eq!(ask.deadline, now + TIMEOUT);
    assert_eq!(broker.deadline(), ask.deadline);
    assert_eq!(
        ask.offer,
        Message::IncomingCall {
            call_id: 8,
            from: "bob".into(),
            fingerprint: BOB,
        }
    );
    assert_eq!(broker.call_id(), 8);
    assert_eq!(
        books.asked,
        ["caller", "allow_call", "owner", "callee", "check_offer"]
    );
}

#[test]
fn a_rejection_reaches_the_caller_and_nothing_goes_back_to_the_callee() {
    let mut books = Books::new();
    let reject = Answer::Reply(Message::Reject {
        reason: "busy".into(),
    });
    let done = finish(answered(&mut books, config(true), request("alice"), reject));
    assert_eq!(
        done.reply,
        Message::error(ErrorKind::Rejected, "alice rejected the call: busy")
    );
    assert_eq!(done.to_callee, None);
}

#[test]
fn another_answer_than_accept_or_reject_is_a_protocol_error() {
    let mut books = Books::new();
    let odd = Answer::Reply(Message::Lookup { name: "bob".into() });
    let done = finish(answered(&mut books, config(true), request("alice"), odd));
    assert_eq!(kind_of(&done.reply), ErrorKind::Protocol);
    assert_eq!(done.to_callee, None);
}

#[test]
fn a_callee_that_cannot_be_asked_is_offline_and_one_that_is_silent_unreachable() {
    let mut books = Books::new();
    let gone = Answer::Failed("connection lost".into());
    let done = finish(answered(&mut books, config(true), request("alice"), gone));
    assert_eq!(kind_of(&done.reply), ErrorKind::Offline);
    let done = finish(answered(
        &mut books,
        config(true),
        request("alice"),
        Answer::TimedOut,
    ));
    assert_eq!(
        done.reply,
        Message::error(ErrorKind::Unreachable, "alice did not answer within 15s")
    );
    assert_eq!(done.to_callee, None);
}

/// The candidates of a `CallAccepted` or `Dial`, and its relay ticket.
fn introduced(message: &Message) -> (Vec<SocketAddr>, Option<RelayTicket>, [u8; 32]) {
    match message {
        Message::CallAccepted {
            candidates,
            relay,
            probe_key,
            ..
        }
        | Message::Dial {
            candidates,
            relay,
            probe_key,
            ..
        } => (candidates.clone(), *relay, *probe_key),
        other => panic!("not an introduction: {other:?}"),
    }
}

#[test]
fn without_a_relay_an_accept_introduces_both_where_they_are_now() {
    let mut books = Books::new();
    let (broker, _) =
        CallBroker::start(&mut books, &config(false), request("alice"), Instant::now())
            .expect("offered");
    // The callee's NAT rebound after it registered.
    books.at.insert(CALLEE, addr("203.0.113.2:6000"));
    let answer = accept(&["10.0.0.5:5000"], false);
    let done = finish(broker.on_answer(answer, &mut books));
    let Message::CallAccepted {
        call_id,
        fingerprint,
        ..
    } = &done.reply
    else {
        panic!("not accepted: {:?}", done.reply);
    };
    assert_eq!((*call_id, *fingerprint), (8, ALICE));
    let (to_caller, caller_ticket, key) = introduced(&done.reply);
    // Two networks: the observed addresses only, the callee's current one.
    assert_eq!(to_caller, [addr("203.0.113.2:6000")]);
    let dial = done.to_callee.as_ref().expect("a dial");
    assert!(matches!(dial, Message::Dial { call_id: 8, .. }), "{dial:?}");
    let (to_callee, callee_ticket, callee_key) = introduced(dial);
    assert_eq!(to_callee, [addr("198.51.100.1:4000")]);
    assert_eq!((caller_ticket, callee_ticket), (None, None));
    assert_eq!((key, callee_key), ([42; 32], [42; 32]));
}

#[test]
fn two_peers_behind_one_address_also_get_each_others_private_candidates() {
    let mut books = Books::new();
    books.at.insert(CALLEE, addr("198.51.100.1:5000"));
    let answer = accept(&["10.0.0.5:5000", "8.8.4.4:53"], false);
    let done = finish(answered(
        &mut books,
        config(false),
        request("alice"),
        answer,
    ));
    let (to_caller, _, _) = introduced(&done.reply);
    assert_eq!(
        to_caller,
        [addr("198.51.100.1:5000"), addr("10.0.0.5:5000")]
    );
    let (to_callee, _, _) = introduced(done.to_callee.as_ref().expect("a dial"));
    assert_eq!(
        to_callee,
        [addr("198.51.100.1:4000"), addr("192.168.1.10:4000")]
    );
}

#[test]
fn with_a_relay_each_side_gets_its_own_ticket() {
    let mut books = Books::new();
    // The socket's own view (dual stack): allocated as is, forwarded canonical.
    books.at.insert(CALLER, addr("[::ffff:198.51.100.1]:4000"));
    let step = answered(
        &mut books,
        config(true),
        request("alice"),
        accept(&[], false),
    );
    let alloc = allocating(step);
    assert_eq!(alloc.caller, addr("[::ffff:198.51.100.1]:4000"));
    assert_eq!(alloc.callee, addr("203.0.113.2:5000"));
    assert_eq!(alloc.call_id(), 8);
    let done = alloc.on_relay(Some(TICKETS));
    let (to_caller, caller_ticket, _) = introduced(&done.reply);
    let (to_callee, callee_ticket, _) = introduced(done.to_callee.as_ref().expect("a dial"));
    assert_eq!(caller_ticket, Some(TICKETS.caller));
    assert_eq!(callee_ticket, Some(TICKETS.callee));
    assert_eq!(to_caller, [addr("203.0.113.2:5000")]);
    assert_eq!(to_callee, [addr("198.51.100.1:4000")]);
}

#[test]
fn a_relay_without_room_still_introduces_a_call_nobody_hides() {
    let mut books = Books::new();
    let step = answered(
        &mut books,
        config(true),
        request("alice"),
        accept(&[], false),
    );
    let done = allocating(step).on_relay(None);
    let (to_caller, ticket, _) = introduced(&done.reply);
    assert_eq!((to_caller.len(), ticket), (1, None));
    assert!(matches!(
        done.to_callee,
        Some(Message::Dial { relay: None, .. })
    ));
}

#[test]
fn a_hidden_side_sends_no_address_through_the_relay() {
    let mut books = Books::new();
    // The callee hides: the caller learns nothing, the callee the caller's.
    let step = answered(
        &mut books,
        config(true),
        request("alice"),
        accept(&[], true),
    );
    let done = allocating(step).on_relay(Some(TICKETS));
    let (to_caller, ticket, _) = introduced(&done.reply);
    assert_eq!((to_caller, ticket), (vec![], Some(TICKETS.caller)));
    let (to_callee, _, _) = introduced(done.to_callee.as_ref().expect("a dial"));
    assert_eq!(to_callee, [addr("198.51.100.1:4000")]);
    // The caller hides: the reverse.
    let step = answered(
        &mut books,
        config(true),
        hidden("alice"),
        accept(&[], false),
    );
    let done = allocating(step).on_relay(Some(TICKETS));
    let (to_caller, _, _) = introduced(&done.reply);
    assert_eq!(to_caller, [addr("203.0.113.2:5000")]);
    let (to_callee, ticket, _) = introduced(done.to_callee.as_ref().expect("a dial"));
    assert_eq!((to_callee, ticket), (vec![], Some(TICKETS.callee)));
}

#[test]
fn a_hidden_side_without_a_ticket_is_unreachable_for_both() {
    let mut books = Books::new();
    // The relay is full.
    let step = answered(
        &mut books,
        config(true),
        hidden("alice"),
        accept(&[], false),
    );
    let done = allocating(step).on_relay(None);
    let expected = Message::error(
        ErrorKind::Unreachable,
        "you asked to keep addresses hidden, and the relay has no room for it now; try again later",
    );
    assert_eq!(done.reply, expected);
    assert_eq!(done.to_callee, Some(expected));
    // The relay is off and the callee hides.
    let done = finish(answered(
        &mut books,
        config(false),
        request("alice"),
        accept(&[], true),
    ));
    let expected = Message::error(
        ErrorKind::Unreachable,
        "alice asked to keep addresses hidden, and this server runs no relay (--relay off)",
    );
    assert_eq!(done.reply, expected);
    assert_eq!(done.to_callee, Some(expected));
}
