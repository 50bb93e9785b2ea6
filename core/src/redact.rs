//! [`redact_url`]: the one way every impush crate shows a backend URL in `Debug`, logs and
//! errors, with every credential replaced by `***` (`docs/design.md` section 8: secrets never
//! reach `Debug`, logs or error bodies).
//!
//! Users paste passwords as they are, unencoded `@`, `:`, `/`, `,` included, so the rules lean
//! towards hiding too much rather than too little:
//!
//! - the userinfo of a URL ends at its **last** `@`, wherever that is (a password may hold `@`,
//!   and `/`, `?` or `#`, which end the authority for a URL parser);
//! - `user:password@` shows the user, anything else before an `@` (a token) is hidden whole;
//! - a comma-separated list (`nats://a:x@h1, nats://t@h2`, Kafka's `h1:9092,h2:9092`) is
//!   redacted entry by entry, where an entry starts with `scheme://`: a comma inside a password
//!   never splits it (a list without schemes is one entry: with an `@` in it, everything up to
//!   its last `@` is hidden);
//! - query parameters whose names suggest a secret (`password`, `token`, `secret`, `key`,
//!   `auth`, ...) have their values hidden;
//! - text that does not look like a URL or a host list at all (blanks in it) is hidden whole.
//!
//! [`ambiguous_userinfo`] tells a backend's URL check when an unencoded `/`, `?` or `#` in a
//! password would make a URL parser connect to the wrong host.

/// `url` (or a comma-separated list of URLs or `host:port`s) with every password, token and
/// secret query value replaced by `***`.
///
/// ```
/// use impush_core::redact::redact_url;
/// assert_eq!(redact_url("redis://:p@ss/w@db:6379/0"), "redis://:***@db:6379/0");
/// assert_eq!(redact_url("amqps://guest:pw@h/%2f"), "amqps://guest:***@h/%2f");
/// assert_eq!(redact_url("nats://tok@h1:4222, nats://h2:4222"), "nats://***@h1:4222, nats://h2:4222");
/// assert_eq!(redact_url("k1:9092,k2:9092"), "k1:9092,k2:9092");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for (i, entry) in entries(url).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        redact_entry(entry, &mut out);
    }
    out
}

/// Whether `url` holds an `@` after the end of its authority (the first `/`, `?` or `#` after
/// `scheme://`): a password with an unencoded `/`, `?` or `#`, which a URL parser would split at
/// and so connect to a host taken from the password. Backends refuse such URLs and ask for the
/// password to be percent-encoded.
///
/// ```
/// use impush_core::redact::ambiguous_userinfo;
/// assert!(ambiguous_userinfo("redis://:a/b@db:6379"));
/// assert!(!ambiguous_userinfo("redis://:a@b@db:6379/0"));
/// assert!(!ambiguous_userinfo("redis://:a%2Fb@db:6379"));
/// ```
pub fn ambiguous_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find(['/', '?', '#']) {
        Some(end) => rest[end..].contains('@'),
        None => false,
    }
}

/// Splits a list at the commas that start a new `scheme://` (see the module doc).
fn entries(url: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for piece in url.split(',') {
        let at = offset;
        offset += piece.len() + 1;
        if at > 0 && starts_with_scheme(piece.trim_start()) {
            out.push(&url[start..at - 1]);
            start = at;
        }
    }
    out.push(&url[start..]);
    out
}

fn scheme_len(s: &str) -> Option<usize> {
    let (scheme, _) = s.split_once("://")?;
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme.len() + 3)
}

fn starts_with_scheme(s: &str) -> bool {
    scheme_len(s).is_some()
}

fn redact_entry(entry: &str, out: &mut String) {
    // Leading blanks (after a list's comma) and the scheme are kept as written.
    let body_start = entry.len() - entry.trim_start().len();
    let (head, rest) = entry.split_at(body_start);
    out.push_str(head);
    let (scheme, rest) = match scheme_len(rest) {
        Some(n) => rest.split_at(n),
        // Not a URL, nor a `host:port` list (those have no blanks inside): maybe a secret.
        None if rest
            .split(',')
            .any(|p| p.trim().contains(char::is_whitespace)) =>
        {
            out.push_str("***");
            return;
        }
        None => ("", rest),
    };
    out.push_str(scheme);
    let host = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                }
                None => out.push_str("***@"),
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    redact_query(host, out);
}

/// Copies `s`, hiding the values of query parameters that look like secrets.
fn redact_query(s: &str, out: &mut String) {
    let Some((before, query)) = s.split_once('?') else {
        out.push_str(s);
        return;
    };
    out.push_str(before);
    out.push('?');
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if secret_name(k) => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
}

/// Whether a query parameter's name suggests its value is a secret.
fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "sig",
    ]
    .iter()
    .any(|s| k.contains(s))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Passwords as users paste them: every character that means something in a URL.
    const NASTY: &[&str] = &[
        "zsec@zret-tail",
        "zp:zw@zd",
        "za/zb",
        "za/zb@zc",
        "zq?zr#zs",
        "zpa,zss",
        "zp%40zss%2Fzt%3A",
        "@",
        ":",
        "//",
        "zx@zy:zz/zw?zv#zu,zt",
    ];

    fn hidden(shown: &str, password: &str) {
        // Every piece of the password longer than one character stays hidden.
        for piece in password.split(['@', ':', '/', '?', '#', ',', '%']) {
            if piece.len() > 1 {
                assert!(!shown.contains(piece), "{password:?} -> {shown}");
            }
        }
    }

    #[test]
    fn passwords_with_url_characters_never_show() {
        for pw in NASTY {
            for (url, want) in [
                (format!("redis://:{pw}@db:6379/0"), "redis://:***@db:6379/0"),
                (
                    format!("rediss://user:{pw}@db:6379"),
                    "rediss://user:***@db:6379",
                ),
                (
                    format!("amqps://guest:{pw}@rabbit:5671/%2f"),
                    "amqps://guest:***@rabbit:5671/%2f",
                ),
                (format!("guest:{pw}@k1:9092"), "guest:***@k1:9092"),
            ] {
                if url.starts_with("guest://") {
                    continue; // `guest:` + `//...` reads as a scheme: covered by the others
                }
                let shown = redact_url(&url);
                assert_eq!(shown, want, "{url}");
                hidden(&shown, pw);
            }
        }
    }

    #[test]
    fn lists_are_redacted_entry_by_entry() {
        assert_eq!(
            redact_url("nats://a:x@h1:1, nats://tok@h2:2"),
            "nats://a:***@h1:1, nats://***@h2:2"
        );
        assert_eq!(
            redact_url("nats://h1:1,nats://tok@h2:2"),
            "nats://h1:1,nats://***@h2:2"
        );
        assert_eq!(redact_url("h1:9092,h2:9092"), "h1:9092,h2:9092");
        assert_eq!(
            redact_url("kafka://h1:9092, kafka://h2:9092"),
            "kafka://h1:9092, kafka://h2:9092"
        );
        assert_eq!(redact_url("h1:9092, h2:9092"), "h1:9092, h2:9092");
        assert_eq!(redact_url("u:p@h1:9092,u2:p2@h2:9092"), "u:***@h2:9092");
        // One userinfo, several hosts (a comma after the '@' is a host list).
        assert_eq!(
            redact_url("mongodb://u:p@h1,h2/db"),
            "mongodb://u:***@h1,h2/db"
        );
        // A comma inside a password never splits it.
        assert_eq!(redact_url("redis://:pa,ss@h"), "redis://:***@h");
        assert_eq!(redact_url("u:pa,ss@h:1"), "u:***@h:1");
        assert_eq!(redact_url("redis://u:p@q,r@host"), "redis://u:***@host");
    }

    #[test]
    fn urls_without_scheme_host_or_credentials() {
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("h:1"), "h:1");
        assert_eq!(redact_url(""), "");
        assert_eq!(redact_url("redis://"), "redis://");
        assert_eq!(redact_url(":pw@"), ":***@");
        assert_eq!(redact_url("redis://:pw@"), "redis://:***@");
        assert_eq!(redact_url("redis://user:@h"), "redis://user:***@h");
        assert_eq!(redact_url("amqp://token@h"), "amqp://***@h");
        assert_eq!(redact_url("nats://to@k/en@n:4222"), "nats://***@n:4222");
        assert_eq!(redact_url("[::1]:6379"), "[::1]:6379");
        assert_eq!(
            redact_url("redis://u:p@[::1]:6379/0"),
            "redis://u:***@[::1]:6379/0"
        );
        assert_eq!(redact_url("no url at all: secret"), "***");
        // Percent-encoded users are shown as written, passwords never.
        assert_eq!(
            redact_url("amqp://us%40er:p%3Aw@h/%2f"),
            "amqp://us%40er:***@h/%2f"
        );
        // An '@' in a path counts as the end of a userinfo: hiding too much beats leaking a
        // password with an unencoded '/'.
        assert_eq!(redact_url("amqp://h/a@b"), "amqp://***@b");
    }

    #[test]
    fn secret_query_values_are_hidden() {
        assert_eq!(
            redact_url("amqp://h:1/v?heartbeat=5&auth_token=zz&password=yy#frag"),
            "amqp://h:1/v?heartbeat=5&auth_token=***&password=***#frag"
        );
        assert_eq!(
            redact_url("redis://h?protocol=resp3"),
            "redis://h?protocol=resp3"
        );
    }

    #[test]
    fn ambiguous_userinfo_is_detected() {
        assert!(ambiguous_userinfo("redis://:a/b@db"));
        assert!(ambiguous_userinfo("amqp://u:a?b@h/%2f"));
        assert!(ambiguous_userinfo("amqp://u:a#b@h"));
        assert!(!ambiguous_userinfo("redis://:a@b@db/0"));
        assert!(!ambiguous_userinfo("redis://:a:b@db/0"));
        assert!(!ambiguous_userinfo("redis://db:6379/0"));
        assert!(!ambiguous_userinfo("amqp://u:a%2Fb%3F%23@h/%2f"));
    }
}
