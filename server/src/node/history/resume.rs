//! Resume requests (`docs/design.md` section 15): what a reconnecting client says it saw,
//! and what it missed.
//!
//! The client appends `resume=<JSON>` to its connect URL:
//! `{"channels":{"<name>":{"<epoch>":<offset>,...}},"broadcast":{"<epoch>":<offset>}}`, the
//! last offset it saw in each epoch it knows of each stream. For each stream the node either
//! replays what came after, in order, or says why it cannot: it never leaves a silent gap.
//!
//! The rule, per stream, over the node's runs (oldest first): start at the oldest run the
//! client knows (older runs were before its time); a run it knows is replayed after its offset
//! if the run still holds the next one (else `window`) and has seen that far (else `future`);
//! a run it never saw is replayed whole if the run holds it from offset 1 (a run that began
//! while the client was away), else `epoch`. A stream none of whose epochs the node holds any
//! more is `window`.

use std::collections::{BTreeMap, HashMap};

use impush_core::ChannelName;
use serde::Deserialize;

use super::ring::{Entry, Run, StreamKey};

/// Most streams one request may name.
pub(crate) const MAX_STREAMS: usize = 256;
/// Most epochs one stream of a request may name.
pub(crate) const MAX_EPOCHS: usize = 8;
/// Longest request, in bytes of JSON.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    channels: BTreeMap<String, HashMap<String, u64>>,
    #[serde(default)]
    broadcast: Option<HashMap<String, u64>>,
}

/// A parsed resume request: for each stream, the last offset seen per epoch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResumeRequest {
    pub(crate) streams: Vec<(StreamKey, HashMap<String, u64>)>,
}

/// Why a request could not be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Not the documented JSON, a bad channel name, or a stream without positions.
    Malformed,
    /// More streams, epochs or bytes than allowed.
    TooMany,
}

impl Unreadable {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Unreadable::Malformed => "malformed",
            Unreadable::TooMany => "too_many",
        }
    }
}

impl ResumeRequest {
    /// Parses the `resume` query value (already percent-decoded).
    pub(crate) fn parse(json: &str) -> Result<Self, Unreadable> {
        if json.len() > MAX_REQUEST_BYTES {
            return Err(Unreadable::TooMany);
        }
        let raw: Raw = serde_json::from_str(json).map_err(|_| Unreadable::Malformed)?;
        let count = raw.channels.len() + usize::from(raw.broadcast.is_some());
        if count > MAX_STREAMS {
            return Err(Unreadable::TooMany);
        }
        let mut streams = Vec::with_capacity(count);
        for (name, known) in raw.channels {
            let channel: ChannelName = name.parse().map_err(|_| Unreadable::Malformed)?;
            streams.push((StreamKey::Channel(channel), known));
        }
        if let Some(known) = raw.broadcast {
            streams.push((StreamKey::Broadcast, known));
        }
        for (_, known) in &streams {
            if known.is_empty() {
                return Err(Unreadable::Malformed);
            }
            if known.len() > MAX_EPOCHS {
                return Err(Unreadable::TooMany);
            }
        }
        Ok(Self { streams })
    }
}

/// What a client that saw `known` missed of a stream with these `runs`, in order; or why
/// that cannot be told.
pub(crate) fn missed<'a>(
    runs: &'a [Run],
    known: &HashMap<String, u64>,
) -> Result<Vec<&'a Entry>, &'static str> {
    let Some(start) = runs.iter().position(|r| known.contains_key(&*r.epoch)) else {
        return Err("window");
    };
    let mut out = Vec::new();
    for run in &runs[start..] {
        match known.get(&*run.epoch) {
            Some(&seen) => {
                if seen > run.last() {
                    return Err("future");
                }
                if seen + 1 < run.first {
                    return Err("window");
                }
                out.extend(run.entries.iter().filter(|e| e.offset > seen));
            }
            None if run.first == 1 => out.extend(run.entries.iter()),
            None => return Err("epoch"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::extract::ws::Utf8Bytes;

    use super::{super::ring::Rings, *};

    fn key() -> StreamKey {
        StreamKey::Channel("room".parse().unwrap())
    }

    fn rings(runs: &[(&str, std::ops::RangeInclusive<u64>)], size: usize) -> Rings {
        let mut r = Rings::default();
        let now = Instant::now();
        for (epoch, offsets) in runs {
            for o in offsets.clone() {
                r.append(
                    &key(),
                    epoch,
                    o,
                    &Utf8Bytes::from(format!("{epoch}-{o}")),
                    now,
                    (size, Duration::from_secs(60), 1 << 20),
                );
            }
        }
        r
    }

    fn known(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(e, o)| ((*e).to_owned(), *o)).collect()
    }

    fn ids(r: Result<Vec<&Entry>, &'static str>) -> Result<Vec<String>, &'static str> {
        r.map(|v| v.iter().map(|e| e.frame.to_string()).collect())
    }

    #[test]
    fn what_was_missed_in_order_or_why_not() {
        let r = rings(&[("a", 1..=10)], 100);
        let runs = r.runs(&key());
        assert_eq!(
            ids(missed(runs, &known(&[("a", 7)]))),
            Ok(vec!["a-8".into(), "a-9".into(), "a-10".into()])
        );
        assert_eq!(ids(missed(runs, &known(&[("a", 10)]))), Ok(vec![]));
        assert_eq!(ids(missed(runs, &known(&[("a", 11)]))), Err("future"));
        assert_eq!(ids(missed(runs, &known(&[("zz", 3)]))), Err("window"));

        // Trimmed: the run keeps 4..=10 only.
        let r = rings(&[("a", 1..=10)], 7);
        let runs = r.runs(&key());
        assert_eq!(
            ids(missed(runs, &known(&[("a", 3)]))).map(|v| v.len()),
            Ok(7)
        );
        assert_eq!(ids(missed(runs, &known(&[("a", 2)]))), Err("window"));
    }

    #[test]
    fn a_new_epoch_that_began_while_away_is_replayed_whole() {
        // The stream's sequencer changed (a drain, a failover): epoch b starts at 1.
        let r = rings(&[("a", 1..=5), ("b", 1..=3)], 100);
        let runs = r.runs(&key());
        assert_eq!(
            ids(missed(runs, &known(&[("a", 4)]))),
            Ok(vec!["a-5".into(), "b-1".into(), "b-2".into(), "b-3".into()])
        );
        // Knowing only the newer epoch: the older run was before the client's time.
        assert_eq!(
            ids(missed(runs, &known(&[("b", 2)]))),
            Ok(vec!["b-3".into()])
        );
        // A new epoch this node holds only part of cannot be told whole.
        let r = rings(&[("a", 1..=5), ("b", 3..=4)], 100);
        assert_eq!(
            ids(missed(r.runs(&key()), &known(&[("a", 5)]))),
            Err("epoch")
        );
    }

    #[test]
    fn requests_are_bounded_and_checked() {
        let ok =
            ResumeRequest::parse(r#"{"channels":{"room":{"a":3}},"broadcast":{"b":1}}"#).unwrap();
        assert_eq!(ok.streams.len(), 2);
        for bad in [
            "",
            "{",
            r#"{"channels":{"room":{}}}"#,
            r#"{"channels":{"bad name\n":{"a":1}}}"#,
            r#"{"channels":{"room":{"a":-1}}}"#,
            r#"{"other":1}"#,
        ] {
            assert_eq!(
                ResumeRequest::parse(bad),
                Err(Unreadable::Malformed),
                "{bad:?}"
            );
        }
        let many: BTreeMap<String, HashMap<String, u64>> = (0..=MAX_STREAMS)
            .map(|i| (format!("c{i}"), known(&[("e", 1)])))
            .collect();
        let json = serde_json::json!({ "channels": many }).to_string();
        assert_eq!(ResumeRequest::parse(&json), Err(Unreadable::TooMany));
        let epochs: HashMap<String, u64> = (0..=MAX_EPOCHS).map(|i| (format!("e{i}"), 1)).collect();
        let json = serde_json::json!({ "channels": { "room": epochs } }).to_string();
        assert_eq!(ResumeRequest::parse(&json), Err(Unreadable::TooMany));
        assert_eq!(
            ResumeRequest::parse(&"x".repeat(MAX_REQUEST_BYTES + 1)),
            Err(Unreadable::TooMany)
        );
    }
}
