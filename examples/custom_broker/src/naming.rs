//! How impush topics and queue groups become NATS subjects, stream names and consumer names.
//!
//! NATS gives `.` a meaning in subjects (it separates tokens, and `*`/`>` tokens are
//! wildcards), and refuses `.`, `*`, `>` and whitespace in stream and consumer names. impush
//! topics are `{prefix}.inbox.{node}`, `{prefix}.all`, ... with node ids of `[A-Za-z0-9._-]`, so
//! in practice every topic is already a plain subject and is used as it is. The rules:
//!
//! - **Subject.** A topic whose `.`-separated tokens are all non-empty and made of
//!   `[A-Za-z0-9_-]` is its own subject. Any other topic is percent-encoded as a whole, dots
//!   included, behind a leading `%` (`a b` → `%a%20b`): one token, and no plain topic contains
//!   `%`, so two topics never share a subject.
//! - **Stream.** A topic's messages are stored in the stream of its subject's first token, with
//!   the subjects `{token}` and `{token}.>`: one stream per cluster prefix (`impush` holds
//!   `impush.inbox.n1`, `impush.all`, ...), and one per test namespace in the conformance suite.
//!   The stream is named after the token when the token is 1-32 characters of `[A-Za-z0-9-]`,
//!   otherwise `{token with other characters as _, at most 32}_{hash}`; plain names contain no
//!   `_`, so the two forms never meet.
//! - **Consumer.** The durable consumer of group `g` on topic `t` is
//!   `{g}-{t}-{hash of (t, g)}` with every character outside `[A-Za-z0-9_-]` replaced by `_`
//!   and both parts shortened: readable in `nats consumer ls`, and distinct per (topic, group)
//!   even where the readable parts coincide.
//!
//! The hash is 64-bit FNV-1a: stable across processes, platforms and Rust versions (unlike
//! `std`'s `DefaultHasher`), which matters because every node must derive the same names.

/// The NATS subject of `topic`.
pub(crate) fn subject(topic: &str) -> String {
    if is_plain(topic) {
        return topic.to_owned();
    }
    let mut s = String::with_capacity(topic.len() * 3 + 1);
    s.push('%');
    for b in topic.bytes() {
        if plain_byte(b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The stream that stores `subject` (a result of [`subject`]): its name and its subjects.
pub(crate) fn stream_for(subject: &str) -> (String, Vec<String>) {
    let token = subject.split('.').next().unwrap_or(subject);
    let name = if (1..=32).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        token.to_owned()
    } else {
        format!(
            "{}_{:016x}",
            clip(&sanitize(token), 32),
            fnv1a(token.as_bytes())
        )
    };
    (name, vec![token.to_owned(), format!("{token}.>")])
}

/// The durable consumer name of queue group `group` on `topic`.
pub(crate) fn consumer(topic: &str, group: &str) -> String {
    // Length-prefixed, so that no (topic, group) pair encodes like another.
    let mut key = Vec::with_capacity(8 + topic.len() + group.len());
    key.extend_from_slice(&(topic.len() as u64).to_le_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(group.as_bytes());
    format!(
        "{}-{}-{:016x}",
        clip(&sanitize(group), 32),
        clip(&sanitize(topic), 48),
        fnv1a(&key)
    )
}

fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_plain(topic: &str) -> bool {
    !topic.is_empty()
        && topic
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(plain_byte))
}

fn sanitize(s: &str) -> String {
    s.bytes()
        .map(|b| if plain_byte(b) { char::from(b) } else { '_' })
        .collect()
}

/// The first `max` characters (the input is ASCII after [`sanitize`]).
fn clip(s: &str, max: usize) -> &str {
    &s[..s.len().min(max)]
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impush_topics_are_their_own_subjects() {
        assert_eq!(subject("impush.inbox.n1"), "impush.inbox.n1");
        assert_eq!(subject("impush.inbox.node-1.eu"), "impush.inbox.node-1.eu");
        assert_eq!(subject("t1x2x3.a.b"), "t1x2x3.a.b");
    }

    #[test]
    fn other_topics_are_escaped_into_one_token() {
        assert_eq!(subject("a b"), "%a%20b");
        assert_eq!(subject("a..b"), "%a%2E%2Eb");
        assert_eq!(subject("a.*"), "%a%2E%2A");
        assert_eq!(subject("a.>"), "%a%2E%3E");
        assert_eq!(subject("100%"), "%100%25");
        assert_eq!(subject(""), "%");
        assert_eq!(subject("ü"), "%%C3%BC");
        // Plain and escaped forms never meet: escaped ones contain `%`, plain ones cannot.
        assert_ne!(subject("%a%20b"), subject("a b"));
    }

    #[test]
    fn streams_are_per_first_token() {
        let (name, subjects) = stream_for("impush.inbox.n1");
        assert_eq!(name, "impush");
        assert_eq!(subjects, ["impush", "impush.>"]);
        assert_eq!(stream_for("impush.all").0, "impush");
        assert_eq!(stream_for("other.all").0, "other");
        let (odd, _) = stream_for(&subject("a b"));
        assert!(odd.starts_with("_a_20b_"), "{odd}");
        let (underscored, _) = stream_for("my_app.all");
        assert!(underscored.starts_with("my_app_"), "{underscored}");
        assert_ne!(underscored, "my_app");
        let long = "x".repeat(40);
        assert!(stream_for(&long).0.len() <= 32 + 17);
    }

    #[test]
    fn consumers_are_per_topic_and_group_and_valid_names() {
        let a = consumer("ns.a", "g");
        let ab = consumer("ns.a.b", "g");
        let a_b = consumer("ns.a_b", "g");
        assert!(a.starts_with("g-ns_a-"), "{a}");
        assert_ne!(a, ab);
        assert_ne!(ab, a_b, "same readable part, different hash");
        assert_ne!(consumer("t", "g1"), consumer("t", "g2"));
        assert_ne!(consumer("t\0g", ""), consumer("t", "g\0"));
        let long = consumer(&"t".repeat(300), &"g".repeat(300));
        assert!(long.len() <= 32 + 48 + 18, "{}", long.len());
        for name in [a, ab, long] {
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
    }

    #[test]
    fn the_hash_is_stable() {
        // FNV-1a 64 test vectors: names must not change between versions.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
