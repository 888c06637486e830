//! Text read from the network or from files others write: fingerprints in
//! their one text form, and names under the name rules.
#![no_main]

use common::names::MAX_NAME_LEN;
use common::{validate_name, Fingerprint};
use libfuzzer_sys::fuzz_target;

fn check_fingerprint(text: &str) {
    let Ok(fp) = text.parse::<Fingerprint>() else {
        return;
    };
    let canonical = fp.to_string();
    assert_eq!(canonical.len(), 64);
    assert!(canonical
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(canonical.parse::<Fingerprint>(), Ok(fp));
    // One text form means one: what parsed is the canonical form, up to case
    // (this target found `from_str` taking "+a" as a hex byte:
    // seeds/text/plus-sign replays it).
    assert_eq!(text.to_ascii_lowercase(), canonical, "{text:?}");
}

fn check_name(text: &str) {
    if validate_name(text).is_ok() {
        assert!(!text.is_empty() && text.len() <= MAX_NAME_LEN, "{text:?}");
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert!(!text.starts_with('-') && !text.ends_with('-'), "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_fingerprint(&text);
    check_name(&text);
});
