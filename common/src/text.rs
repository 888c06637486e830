//! Remote text made safe to show on a terminal.
//!
//! Names, reasons, server messages and file names come from the network. A
//! control character in them can move the cursor, clear the screen or forge a
//! line of output; a bidi control (U+202E RIGHT-TO-LEFT OVERRIDE and kin) can
//! make `evil\u{202e}fdp.exe` read as `evilexe.pdf`. Everything remote that is
//! printed goes through [`escape_for_terminal`], which writes such characters
//! as visible `\u{..}` escapes and leaves all other text as it is.
//!
//! Backslashes are not escaped, so escaping is idempotent (escaping an
//! escaped string changes nothing) at the price of `\u{1b}` typed literally
//! reading like an escaped ESC. That is harmless: the point is that no byte
//! reaching the terminal acts on it.
//!
//! JSON output is escaped by serde only for C0 controls (U+0000–001F), not
//! for DEL, the C1 controls (U+009B is an 8-bit CSI) or bidi controls;
//! [`escape_json_for_terminal`] writes all of those as JSON `\uXXXX`
//! escapes, which decode to the same string.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` changes the direction of the text around it: the embeddings
/// and overrides U+202A–202E, the isolates U+2066–2069, the marks U+200E,
/// U+200F and U+061C.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// Whether `c` must not reach a terminal as it is: a control character
/// (C0, DEL, C1), a bidi control, or a line/paragraph separator (U+2028,
/// U+2029, which some terminals and editors break lines at).
pub fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with every character of [`is_unsafe_for_terminal`] written as a
/// `\u{..}` escape (lowercase hex, as Rust writes them). Borrows when there
/// is nothing to escape.
pub fn escape_for_terminal(text: &str) -> Cow<'_, str> {
    escape_with(text, is_unsafe_for_terminal, |out, c| {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    })
}

/// A JSON text (as made by serde_json) with every character of
/// [`is_unsafe_for_terminal`] written as a `\uXXXX` escape: DEL and the C1
/// controls (serde_json escapes only U+0000–001F), bidi controls and
/// U+2028/2029. These characters only ever occur inside JSON strings, where
/// the escape decodes to the same character, so the value a reader parses is
/// unchanged; only the raw line is safe to show. JSON whitespace (tab,
/// newline, carriage return) is left alone: serde escapes it inside strings,
/// so a raw one is structure (pretty-printed output).
pub fn escape_json_for_terminal(json: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe_for_terminal(c) && !matches!(c, '\t' | '\n' | '\r');
    escape_with(json, unsafe_char, |out, c| {
        // All of them are in the Basic Multilingual Plane: one \uXXXX each.
        let _ = write!(out, "\\u{:04x}", c as u32);
    })
}

/// `text` with every character `needs_escape` picks written by `escape`;
/// borrowed when there is none.
fn escape_with(
    text: &str,
    needs_escape: impl Fn(char) -> bool,
    escape: impl Fn(&mut String, char),
) -> Cow<'_, str> {
    if !text.chars().any(&needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for t in [
            "alice",
            "stored 5 bytes at /tmp/x y.txt",
            "ünïcødé 日本",
            "",
        ] {
            assert!(matches!(escape_for_terminal(t), Cow::Borrowed(s) if s == t));
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_for_terminal("a\nb"), "a\\u{a}b");
        assert_eq!(
            escape_for_terminal("\u{1b}[2Jboom\r"),
            "\\u{1b}[2Jboom\\u{d}"
        );
        assert_eq!(
            escape_for_terminal("\0\u{7f}\u{9b}"),
            "\\u{0}\\u{7f}\\u{9b}"
        );
        assert_eq!(escape_for_terminal("bob\u{2028}x"), "bob\\u{2028}x");
    }

    #[test]
    fn bidi_controls_are_escaped() {
        assert_eq!(
            escape_for_terminal("evil\u{202e}fdp.exe"),
            "evil\\u{202e}fdp.exe"
        );
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}',
        ] {
            assert!(is_bidi_control(c), "{:x}", c as u32);
            let raw = format!("x{c}y");
            let escaped = escape_for_terminal(&raw);
            assert!(!escaped.chars().any(is_unsafe_for_terminal), "{escaped}");
            assert_eq!(escaped, format!("x\\u{{{:x}}}y", c as u32));
        }
        assert!(!is_bidi_control('\u{2065}') && !is_bidi_control('\u{202f}'));
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = escape_for_terminal("a\n\u{202e}b").into_owned();
        assert_eq!(escape_for_terminal(&once), once);
    }

    #[test]
    fn json_escapes_decode_to_the_same_string() {
        let value = "bob\u{202e}txt.exe\u{2066}\u{2029}\u{9b}2J\u{7f}\u{85}";
        let json = format!("{{\"from\":\"{value}\"}}");
        let safe = escape_json_for_terminal(&json);
        assert_eq!(
            safe,
            "{\"from\":\"bob\\u202etxt.exe\\u2066\\u2029\\u009b2J\\u007f\\u0085\"}"
        );
        assert!(!safe.chars().any(is_unsafe_for_terminal));
        assert!(matches!(
            escape_json_for_terminal("{\"a\":1}"),
            Cow::Borrowed(_)
        ));
        // Raw JSON whitespace (pretty output) stays structure.
        let pretty = "{\n\t\"a\": \"\u{9b}\"\r\n}";
        assert_eq!(
            escape_json_for_terminal(pretty),
            "{\n\t\"a\": \"\\u009b\"\r\n}"
        );
    }
}
