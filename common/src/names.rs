//! Name rules, in one place.
//!
//! A name is what people type to call each other ("alice"). The rules are kept
//! deliberately small so names are easy to say, type and compare: 1–32
//! characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
//! Both the server and the peers check names with [`validate_name`]; the
//! server's check is the one that counts.

use thiserror::Error;

/// The longest name the server accepts, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 32;

/// The rule, as shown to a user whose name broke it.
pub const NAME_RULE: &str =
    "a name is 1-32 characters of a-z, 0-9 and '-', not starting or ending with '-'";

/// A name that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid name {name:?}: {NAME_RULE}")]
pub struct InvalidName {
    /// The offending name (cut to a printable length).
    pub name: String,
}

/// Checks `name` against the rules.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(ok_char)
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            name: name.chars().take(64).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for n in ["a", "alice", "bob-2", "0", "a-b-c", &"x".repeat(32)] {
            assert!(validate_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        for n in [
            "",
            "-a",
            "a-",
            "Alice",
            "a b",
            "a_b",
            "a.b",
            "ü",
            &"x".repeat(33),
            "../x",
        ] {
            let err = validate_name(n).expect_err(n);
            assert!(err.to_string().contains("1-32 characters"), "{err}");
        }
    }
}
