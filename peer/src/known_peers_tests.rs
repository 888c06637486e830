//! Tests of [`super::KnownPeers`]: fail closed, keep comments, lose no update.

use super::*;
use common::ErrorKind;

fn fp(b: u8) -> Fingerprint {
    Fingerprint([b; 32])
}

fn file_with(text: &str) -> (tempfile::TempDir, KnownPeers) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("known_peers");
    std::fs::write(&path, text).expect("write");
    (dir, KnownPeers::new(path))
}

fn contents(kp: &KnownPeers) -> String {
    std::fs::read_to_string(kp.path()).expect("read")
}

#[test]
fn record_check_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kp = KnownPeers::new(dir.path().join("sub/known_peers"));
    let (a, b) = (fp(1), fp(2));
    assert_eq!(kp.check("alice", &a).expect("check"), Check::New);
    kp.record("alice", &a).expect("record");
    assert_eq!(kp.check("alice", &a).expect("check"), Check::Known);
    assert_eq!(kp.check("alice", &b).expect("check"), Check::Changed(a));
    kp.record("bob", &b).expect("record");
    kp.record("alice", &b).expect("replace");
    assert_eq!(kp.get("alice").expect("get"), Some(b));
    assert_eq!(kp.get("bob").expect("get"), Some(b));
}

#[test]
fn a_malformed_line_fails_closed_naming_file_and_line() {
    let good = format!("# friends\n\nalice {}\n", fp(1));
    for (bad, why) in [
        (format!("bob {}x", fp(2)), "not a fingerprint"),
        ("bob".to_owned(), "NAME FINGERPRINT"),
        (format!("bob {} extra", fp(2)), "NAME FINGERPRINT"),
        (format!("bob {} # trailing note", fp(2)), "NAME FINGERPRINT"),
        (format!("Bob {}", fp(2)), "invalid name"),
        (format!("alice {}", fp(2)), "listed again (first on line 3)"),
    ] {
        let text = format!("{good}{bad}\n# after\n");
        let (_dir, kp) = file_with(&text);
        for err in [
            kp.check("bob", &fp(3)).expect_err("check"),
            kp.get("carol").expect_err("get"),
            kp.record("carol", &fp(3)).expect_err("record"),
        ] {
            assert_eq!(err.kind(), ErrorKind::KnownPeers, "{bad}: {err}");
            let msg = err.to_string();
            let place = format!("{} line 4", kp.path().display());
            assert!(msg.contains(&place) && msg.contains(why), "{bad}: {msg}");
        }
        assert_eq!(contents(&kp), text, "the file must be left untouched");
    }
}

#[test]
fn an_unreadable_file_is_an_error_not_new() {
    // A directory where the file should be, and a file that is not UTF-8.
    let dir = tempfile::tempdir().expect("tempdir");
    let kp = KnownPeers::new(dir.path().to_owned());
    let err = kp.check("bob", &fp(1)).expect_err("a directory");
    assert_eq!(err.kind(), ErrorKind::KnownPeers, "{err}");
    let (_d, kp) = file_with("");
    std::fs::write(kp.path(), b"bob \xff\xfe\n").expect("write");
    let err = kp.check("bob", &fp(1)).expect_err("not UTF-8");
    assert_eq!(err.kind(), ErrorKind::KnownPeers, "{err}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
    assert!(kp.record("bob", &fp(1)).is_err());
    assert_eq!(std::fs::read(kp.path()).expect("read"), b"bob \xff\xfe\n");
}

#[test]
fn invalid_names_are_never_recorded() {
    let (_dir, kp) = file_with("# mine\n");
    let forged = format!("bob {}", fp(9));
    for name in [forged.as_str(), &format!("x\n{forged}"), "bob\r", "", "Bob"] {
        let err = kp.record(name, &fp(1)).expect_err(name);
        assert_eq!(err.kind(), ErrorKind::InvalidName, "{name:?}: {err}");
    }
    assert_eq!(contents(&kp), "# mine\n");
    assert_eq!(kp.get("bob").expect("get"), None);
}

#[test]
fn comments_and_blank_lines_survive_a_rewrite() {
    let text = format!(
        "# my contacts\n\n# work\nalice {}\n\n# family\nbob   {}\n",
        fp(1),
        fp(2)
    );
    let (_dir, kp) = file_with(&text);
    kp.record("alice", &fp(7)).expect("replace");
    kp.record("carol", &fp(3)).expect("add");
    let want = format!(
        "# my contacts\n\n# work\nalice {}\n\n# family\nbob   {}\ncarol {}\n",
        fp(7),
        fp(2),
        fp(3)
    );
    assert_eq!(contents(&kp), want);
    // Recording what is already there writes nothing.
    kp.record("bob", &fp(2)).expect("same");
    assert_eq!(contents(&kp), want);
}

#[test]
fn a_new_file_gets_a_header_and_no_temp_files_are_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kp = KnownPeers::new(dir.path().join("known_peers"));
    kp.record("alice", &fp(1)).expect("record");
    assert_eq!(contents(&kp), format!("{HEADER}\nalice {}\n", fp(1)));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["known_peers", "known_peers.lock"]);
}

#[test]
fn concurrent_updates_lose_none() {
    const THREADS: usize = 8;
    const EACH: usize = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("known_peers");
    std::fs::write(&path, "# shared by many processes\n").expect("write");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let kp = KnownPeers::new(path.clone());
            s.spawn(move || {
                for i in 0..EACH {
                    let name = format!("peer-{t}-{i}");
                    kp.record(&name, &fp((t * EACH + i) as u8)).expect("record");
                }
            });
        }
    });
    let kp = KnownPeers::new(path);
    for t in 0..THREADS {
        for i in 0..EACH {
            let name = format!("peer-{t}-{i}");
            assert_eq!(
                kp.get(&name).expect("get"),
                Some(fp((t * EACH + i) as u8)),
                "{name} was lost"
            );
        }
    }
    assert!(contents(&kp).starts_with("# shared by many processes\n"));
}

#[test]
fn record_if_refuses_a_key_another_process_pinned_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("known_peers");
    let (ours, theirs) = (KnownPeers::new(path.clone()), KnownPeers::new(path));
    // We saw no entry for bob; another process pins bob to 2 meanwhile.
    let seen = ours.get("bob").expect("get");
    assert_eq!(seen, None);
    theirs.record("bob", &fp(2)).expect("their record");
    let before = contents(&ours);
    let err = ours.record_if("bob", seen, &fp(1)).expect_err("moved");
    assert_eq!(err.kind(), ErrorKind::KeyChanged, "{err}");
    assert_eq!(contents(&ours), before, "left alone");
    assert_eq!(ours.get("bob").expect("get"), Some(fp(2)));
    // The same key recorded meanwhile is fine.
    ours.record_if("bob", None, &fp(2)).expect("same key");
    // --accept-new-key: replacing the key the user agreed to replace...
    ours.record_if("bob", Some(fp(2)), &fp(3)).expect("agreed");
    assert_eq!(ours.get("bob").expect("get"), Some(fp(3)));
    // ...but not one another process put there after the check.
    theirs.record("bob", &fp(4)).expect("their record");
    let err = ours
        .record_if("bob", Some(fp(3)), &fp(5))
        .expect_err("moved");
    assert_eq!(err.kind(), ErrorKind::KeyChanged, "{err}");
    assert_eq!(ours.get("bob").expect("get"), Some(fp(4)));
    // An entry that is still what we saw, or gone, is (re)recorded.
    ours.record_if("carol", None, &fp(6)).expect("new");
    assert_eq!(ours.get("carol").expect("get"), Some(fp(6)));
}

#[test]
fn entries_are_in_file_order_oldest_first() {
    let (_dir, kp) = file_with(&format!("# contacts\nzed {}\nalice {}\n", fp(1), fp(2)));
    kp.record("bob", &fp(3)).expect("record");
    kp.record("aaron", &fp(4)).expect("record");
    kp.record("zed", &fp(5)).expect("replace keeps the place");
    let names: Vec<String> = kp
        .entries()
        .expect("entries")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["zed", "alice", "bob", "aaron"]);
}

#[tokio::test]
async fn record_if_async_runs_off_the_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kp = KnownPeers::new(dir.path().join("known_peers"));
    kp.record_if_async("alice", None, &fp(1))
        .await
        .expect("record");
    assert_eq!(kp.get("alice").expect("get"), Some(fp(1)));
    let err = kp
        .record_if_async("alice", None, &fp(2))
        .await
        .expect_err("pinned");
    assert_eq!(err.kind(), ErrorKind::KeyChanged, "{err}");
}
