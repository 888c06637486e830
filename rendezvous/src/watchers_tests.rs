use super::*;

const A: Fingerprint = Fingerprint([1; 32]);

fn names(list: &[&str], state: Visible) -> Vec<(String, Visible)> {
    list.iter().map(|n| ((*n).to_owned(), state)).collect()
}

#[test]
fn a_watch_gets_the_state_now_then_each_change_and_no_repeat() {
    let mut w = Watchers::<u8>::default();
    let id = w.open(1, 7);
    let (count, wake) = w
        .add(id, names(&["alice"], Visible::offline(Some(A))))
        .expect("add");
    assert_eq!((count, wake), (1, vec![7]));
    assert_eq!(
        w.take(id),
        vec![("alice".into(), Visible::offline(Some(A)))]
    );
    assert_eq!(w.update("alice", Some(A)), vec![7]);
    assert_eq!(w.update("alice", Some(A)), Vec::<u8>::new(), "no change");
    assert_eq!(w.take(id), vec![("alice".into(), Visible::online(A))]);
    assert_eq!(w.update("alice", None), vec![7]);
    assert_eq!(
        w.take(id),
        vec![("alice".into(), Visible::offline(Some(A)))],
        "offline keeps the key"
    );
    assert!(w.update("bob", Some(A)).is_empty(), "nobody watches bob");
}

#[test]
fn a_replaced_listen_does_not_flap() {
    // A newer listen of the same key: the registry tells online again, and
    // the old session's close tells nothing (it no longer holds presence).
    let mut w = Watchers::<()>::default();
    let id = w.open(1, ());
    w.add(id, names(&["alice"], Visible::online(A)))
        .expect("add");
    w.take(id);
    assert!(w.update("alice", Some(A)).is_empty());
    assert!(w.take(id).is_empty());
}

#[test]
fn a_slow_watcher_keeps_only_the_latest_state_per_name() {
    let mut w = Watchers::<()>::default();
    let id = w.open(1, ());
    w.add(id, names(&["alice", "bob"], Visible::offline(Some(A))))
        .expect("add");
    for _ in 0..1000 {
        w.update("alice", Some(A));
        w.update("bob", Some(A));
        w.update("alice", None);
    }
    let pending = w.take(id);
    assert_eq!(
        pending,
        vec![
            ("alice".into(), Visible::offline(Some(A))),
            ("bob".into(), Visible::online(A)),
        ],
        "bounded by the names watched, the latest of each"
    );
}

#[test]
fn the_cap_is_per_session_over_all_its_watches_and_all_or_nothing() {
    let mut w = Watchers::<()>::default();
    let (one, two) = (w.open(1, ()), w.open(1, ()));
    let other = w.open(2, ());
    let many: Vec<String> = (0..MAX_WATCHED).map(|i| format!("n{i}")).collect();
    let half = MAX_WATCHED / 2;
    let state = Visible::offline(None);
    let first: Vec<_> = many[..half].iter().map(|n| (n.clone(), state)).collect();
    let rest: Vec<_> = many[half..].iter().map(|n| (n.clone(), state)).collect();
    w.add(one, first.clone()).expect("first half");
    assert_eq!(w.check(one, &many[..half]), Ok(0));
    w.add(one, first)
        .expect("the same names again cost nothing");
    w.add(two, rest).expect("second half");
    assert_eq!(
        w.add(two, names(&["one-more", "n0"], state)),
        Err(WatchError::TooMany {
            max: MAX_WATCHED,
            watching: MAX_WATCHED
        })
    );
    assert!(!w.is_watched("one-more"), "nothing added");
    w.add(other, names(&["n0"], state))
        .expect("another session has its own cap");
    w.close(one);
    w.add(two, names(&["one-more"], state))
        .expect("room again after a watch closed");
}

#[test]
fn closing_every_watch_empties_the_table() {
    let mut w = Watchers::<()>::default();
    let a = w.open(1, ());
    let b = w.open(2, ());
    w.add(a, names(&["alice", "bob"], Visible::online(A)))
        .expect("a");
    w.add(b, names(&["alice"], Visible::online(A))).expect("b");
    assert_eq!(w.subscriptions(), 3);
    w.close(a);
    assert_eq!(w.watched(), vec!["alice".to_owned()]);
    w.close(b);
    w.close(b);
    assert_eq!((w.subscriptions(), w.watches()), (0, 0));
    assert!(w.watched().is_empty());
    assert!(w.per_session.is_empty());
    assert_eq!(w.add(a, vec![]), Err(WatchError::Closed));
}

#[test]
fn a_newer_state_seen_by_a_new_watch_reaches_the_others() {
    let mut w = Watchers::<u8>::default();
    let a = w.open(1, 1);
    let b = w.open(2, 2);
    w.add(a, names(&["alice"], Visible::offline(None)))
        .expect("a");
    w.take(a);
    // b computed the state later: alice registered meanwhile.
    let (_, wake) = w.add(b, names(&["alice"], Visible::online(A))).expect("b");
    assert_eq!(wake, vec![1, 2]);
    assert_eq!(w.take(a), vec![("alice".into(), Visible::online(A))]);
}

#[test]
fn a_name_registered_while_watched_as_unregistered_shows_its_key() {
    let mut w = Watchers::<u8>::default();
    let id = w.open(1, 7);
    w.add(id, names(&["alice", "bob"], Visible::offline(None)))
        .expect("add");
    w.take(id);
    assert_eq!(w.bound("alice", A), vec![7]);
    assert_eq!(
        w.take(id),
        vec![("alice".into(), Visible::offline(Some(A)))]
    );
    assert!(w.bound("alice", A).is_empty(), "told once");
    assert!(w.bound("carol", A).is_empty(), "nobody watches carol");
    w.update("bob", Some(A));
    w.take(id);
    assert!(w.bound("bob", A).is_empty(), "online already says the key");
}

#[test]
fn names_a_watch_has_are_left_out_of_a_new_batch() {
    let mut w = Watchers::<()>::default();
    let id = w.open(1, ());
    w.add(id, names(&["alice"], Visible::offline(None)))
        .expect("add");
    let batch = vec!["alice".to_owned(), "bob".to_owned()];
    assert_eq!(w.unwatched(id, batch), vec!["bob".to_owned()]);
}
