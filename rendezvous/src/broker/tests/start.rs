//! `CallBroker::start`: every refusal, in order, and the offer.

use super::*;

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
fn an_unknown_name_is_not_found_and_a_broken_store_unavailable() {
    let mut books = Books::new();
    assert_eq!(
        refused(&mut books, config(true), request("carol")).0,
        ErrorKind::NotFound
    );
    books.store_broken = true;
    let (kind, message) = refused(&mut books, config(true), request("alice"));
    assert_eq!(kind, ErrorKind::Unavailable, "never not_found: {message}");
    assert!(message.contains("try again"), "{message}");
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
            standing: None,
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
fn a_callee_at_another_node_is_asked_without_this_node_checking_its_offer_limits() {
    let mut books = Books::new();
    books.online.insert(
        "alice".into(),
        Callee {
            session: crate::registry::REMOTE,
            approved: false,
            standing: None,
        },
    );
    let (_, ask) = CallBroker::start(&mut books, &config(true), request("alice"), Instant::now())
        .expect("offered");
    assert_eq!(ask.callee, crate::registry::REMOTE);
    assert!(!books.asked.contains(&"check_offer"), "{:?}", books.asked);
}

fn standing(candidates: &[&str]) -> crate::registry::Standing {
    crate::registry::Standing {
        candidates: candidates.iter().map(|c| addr(c)).collect(),
        hide_addresses: false,
    }
}

#[test]
fn an_approved_caller_of_a_callee_with_a_standing_answer_is_not_asked() {
    let mut books = Books::new();
    books.online.insert(
        "alice".into(),
        Callee {
            session: CALLEE,
            approved: true,
            standing: Some(standing(&["10.0.0.5:5000"])),
        },
    );
    let (broker, ask) =
        CallBroker::start(&mut books, &config(false), request("alice"), Instant::now())
            .expect("offered");
    assert_eq!(
        ask.offer,
        Message::Preapproved {
            call_id: 8,
            from: "bob".into(),
            fingerprint: BOB,
        }
    );
    let accept = ask.standing.clone().expect("the standing answer");
    assert_eq!(
        accept,
        Message::Accept {
            candidates: vec![addr("10.0.0.5:5000")],
            hide_addresses: false,
        }
    );
    // The standing answer introduces both sides at once.
    let Step::Finish(done) = broker.on_answer(Answer::Reply(accept), &mut books) else {
        panic!("no relay here");
    };
    assert!(
        matches!(done.reply, Message::CallAccepted { call_id: 8, .. }),
        "{done:?}"
    );
    assert!(
        matches!(done.to_callee, Some(Message::Dial { call_id: 8, .. })),
        "{done:?}"
    );
}

#[test]
fn a_caller_the_callee_did_not_approve_is_asked_despite_its_standing_answer() {
    let mut books = Books::new();
    books.online.insert(
        "alice".into(),
        Callee {
            session: CALLEE,
            approved: false,
            standing: Some(standing(&["10.0.0.5:5000"])),
        },
    );
    let (_, ask) = CallBroker::start(&mut books, &config(true), request("alice"), Instant::now())
        .expect("offered");
    assert!(
        matches!(ask.offer, Message::IncomingCall { .. }),
        "{:?}",
        ask.offer
    );
    assert_eq!(ask.standing, None);
}
