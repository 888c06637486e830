#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use super::*;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn addrs(round: &[Node]) -> Vec<SocketAddr> {
    round.iter().map(|n| n.addr).collect()
}

/// Three literal entries, resolved as themselves.
fn three() -> (ServerList, Vec<Vec<SocketAddr>>) {
    let list = ServerList::parse("10.0.0.1:7700, 10.0.0.2:7700,10.0.0.3:7700").expect("parse");
    let resolved = list.entries().iter().map(|e| vec![a(e)]).collect();
    (list, resolved)
}

#[test]
fn a_list_parses_in_order_with_spaces_trimmed() {
    let list = ServerList::parse(" rdv.example.org:7700 ,[::1]:7701,10.0.0.1:443").expect("ok");
    assert_eq!(
        list.entries(),
        ["rdv.example.org:7700", "[::1]:7701", "10.0.0.1:443"]
    );
    assert!(list.several());
    let one = ServerList::parse("127.0.0.1:7700").expect("one");
    assert!(!one.several());
}

#[test]
fn garbled_lists_get_clear_usage_errors() {
    assert_eq!(ServerList::parse("").unwrap_err(), ServerListError::Empty);
    assert_eq!(ServerList::parse("  ").unwrap_err(), ServerListError::Empty);
    assert_eq!(
        ServerList::parse("a:1,,b:2").unwrap_err(),
        ServerListError::EmptyEntry { position: 2 }
    );
    assert_eq!(
        ServerList::parse("a:1,").unwrap_err(),
        ServerListError::EmptyEntry { position: 2 }
    );
    for bad in [
        "host",
        "host:",
        "host:0",
        "host:99999",
        "host:port",
        ":7700",
        "::1:7700",
        "[::1]",
        "[nothost]:7700",
        "[::1:7700",
        "udp://host:7700",
        "ho st:7700",
    ] {
        let err = ServerList::parse(&format!("ok:1,{bad}")).unwrap_err();
        assert!(
            matches!(&err, ServerListError::Garbled { entry, .. } if entry == bad),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
    let many = vec!["h:1"; MAX_ENTRIES + 1].join(",");
    assert_eq!(
        ServerList::parse(&many).unwrap_err(),
        ServerListError::TooMany(MAX_ENTRIES + 1)
    );
}

#[test]
fn a_clean_shutdown_is_mostly_skipped_only_with_another_node() {
    let asked = std::time::Duration::from_secs(10);
    let one = ServerList::parse("10.0.0.1:7700").expect("parse");
    assert_eq!(one.shutdown_spread(asked), asked);
    let (two, _) = three();
    assert_eq!(two.shutdown_spread(asked), asked / 10);
}

#[test]
fn the_first_round_starts_at_the_first_node() {
    let (mut list, resolved) = three();
    let round = list.round(&resolved, true);
    assert_eq!(
        addrs(&round),
        [a("10.0.0.1:7700"), a("10.0.0.2:7700"), a("10.0.0.3:7700")]
    );
    assert_eq!(round[1].index, 1);
    assert_eq!(round[1].name(), "10.0.0.2:7700");
}

#[test]
fn the_peer_stays_on_the_node_that_worked() {
    let (mut list, resolved) = three();
    let round = list.round(&resolved, true);
    list.connected(&round[1]);
    let again = list.round(&resolved, true);
    assert_eq!(
        addrs(&again),
        [a("10.0.0.2:7700"), a("10.0.0.3:7700"), a("10.0.0.1:7700")]
    );
}

#[test]
fn on_loss_the_next_node_comes_first_and_the_lost_one_last() {
    let (mut list, resolved) = three();
    let round = list.round(&resolved, true);
    list.connected(&round[0]);
    list.lost(&round[0]);
    let next = list.round(&resolved, true);
    assert_eq!(
        addrs(&next),
        [a("10.0.0.2:7700"), a("10.0.0.3:7700"), a("10.0.0.1:7700")]
    );
    // The last node lost: the round wraps around to the first.
    list.connected(&next[1]);
    list.lost(&next[1]);
    let wrapped = list.round(&resolved, true);
    assert_eq!(
        addrs(&wrapped),
        [a("10.0.0.1:7700"), a("10.0.0.2:7700"), a("10.0.0.3:7700")]
    );
    // Connecting again clears the loss: stay there.
    list.connected(&wrapped[0]);
    assert_eq!(list.round(&resolved, true)[0].addr, a("10.0.0.1:7700"));
}

#[test]
fn a_name_with_several_addresses_is_several_nodes_in_order() {
    let mut list = ServerList::parse("rdv.example.org:7700,10.0.0.9:7700").expect("parse");
    assert!(list.several());
    let resolved = vec![
        vec![
            a("[2001:db8::1]:7700"),
            a("10.0.0.1:7700"),
            a("10.0.0.2:7700"),
        ],
        vec![a("10.0.0.9:7700")],
    ];
    let round = list.round(&resolved, true);
    // The socket's family only, the resolver's order, then the next entry.
    assert_eq!(
        addrs(&round),
        [a("10.0.0.1:7700"), a("10.0.0.2:7700"), a("10.0.0.9:7700")]
    );
    assert_eq!(round[0].entry, "rdv.example.org:7700");
    assert_eq!(round[0].name(), "rdv.example.org:7700 (10.0.0.1:7700)");
    list.lost(&round[0]);
    assert_eq!(list.round(&resolved, true)[0].addr, a("10.0.0.2:7700"));
    // One name with two addresses alone is several nodes too.
    let mut single = ServerList::parse("rdv.example.org:7700").expect("parse");
    assert!(!single.several());
    single.round(&resolved[..1], true);
    assert!(single.several());
}

#[test]
fn an_entry_without_an_address_of_our_family_keeps_the_others() {
    let mut list = ServerList::parse("v6only.example:7700").expect("parse");
    let round = list.round(&[vec![a("[2001:db8::1]:7700")]], true);
    assert_eq!(addrs(&round), [a("[2001:db8::1]:7700")]);
}

#[test]
fn unresolved_entries_and_duplicates_are_skipped_and_addresses_capped() {
    let mut list =
        ServerList::parse("gone.example:1,10.0.0.1:1,dup.example:1,many.example:1").expect("parse");
    let many: Vec<SocketAddr> = (1..=20).map(|i| a(&format!("10.0.1.{i}:1"))).collect();
    let resolved = vec![vec![], vec![a("10.0.0.1:1")], vec![a("10.0.0.1:1")], many];
    let round = list.round(&resolved, true);
    assert_eq!(round[0].addr, a("10.0.0.1:1"));
    assert_eq!(round[0].index, 1);
    assert_eq!(round.len(), 1 + MAX_ADDRS_PER_ENTRY);
    assert!(list
        .round(&[vec![], vec![], vec![], vec![]], true)
        .is_empty());
}

#[test]
fn a_node_whose_address_went_away_resumes_at_its_entry() {
    let mut list = ServerList::parse("a.example:1,b.example:1").expect("parse");
    let first = list.round(&[vec![a("10.0.0.1:1")], vec![a("10.0.0.2:1")]], true);
    list.connected(&first[1]);
    // b's address changed: start at b's entry still.
    let round = list.round(&[vec![a("10.0.0.1:1")], vec![a("10.0.0.3:1")]], true);
    assert_eq!(round[0].addr, a("10.0.0.3:1"));
}
