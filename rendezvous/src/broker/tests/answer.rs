//! `on_answer` and `on_relay`: every answer, with and without a relay and hidden addresses.

use super::*;

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
