//! [`Section`]: one `[broker]`, `[presence]` or `[offline]` table as the user wrote it (for
//! `[offline]`, the keys every offline store shares, such as `enabled` and `ttl`, are read by the
//! server first; the section is what remains).
//!
//! The keys every kind shares (`kind`, `prefix`) are taken out here, once; the rest stays raw
//! until the factory registered for `kind` deserialises it into its own config type, so a kind
//! registered in code needs no change to any type of ours. Errors name the key as the user
//! wrote it (`broker.poolsize`).

use std::{collections::BTreeMap, fmt};

use figment::value::{Tag, Value};
use impush_core::{Error, Result};
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};

/// The topic/key prefix when the configuration names none.
pub const DEFAULT_PREFIX: &str = "impush";
/// The kind of a section the configuration leaves out: the embedded, in-process backend.
pub const DEFAULT_KIND: &str = "memory";

/// A `[broker]`, `[presence]` or `[offline]` section: `kind`, the optional shared `prefix`, and
/// the options that belong to the kind's factory.
///
/// `Debug` shows the kind, the prefix and the option *names* only: option values may hold
/// passwords (URLs with credentials, tokens).
#[derive(Clone, Default, PartialEq)]
pub struct Section {
    kind: Option<String>,
    prefix: Option<String>,
    options: BTreeMap<String, Value>,
}

impl Section {
    /// A section of `kind` with no options.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: Some(kind.into()),
            ..Self::default()
        }
    }

    /// Sets option `key` (anything serde can serialise), as if written in the file.
    ///
    /// # Errors
    /// [`Error::Config`] when `value` cannot be represented in a config file, and for the shared
    /// keys `kind` and `prefix` given a non-string.
    pub fn set(mut self, key: &str, value: impl Serialize) -> Result<Self> {
        let value =
            Value::serialize(value).map_err(|e| Error::Config(format!("option `{key}`: {e}")))?;
        self.insert(key.to_owned(), value)?;
        Ok(self)
    }

    /// Sets the shared `prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The kind this section names (`memory` when it names none).
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or(DEFAULT_KIND)
    }

    /// The prefix this section sets, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Whether option `key` is set.
    pub fn has(&self, key: &str) -> bool {
        self.options.contains_key(key)
    }

    /// The kind's options as its own config type `C`; `section` is the table's name, for errors.
    ///
    /// # Errors
    /// [`Error::Config`] with one line naming the key (`broker.poolsize`) and the problem.
    pub fn options<C: DeserializeOwned>(&self, section: &str) -> Result<C> {
        let dict = Value::Dict(Tag::Default, self.options.clone().into_iter().collect());
        dict.deserialize::<C>().map_err(|mut e| {
            // `describe` appends an unknown field's name itself; this deserializer already did.
            if let figment::error::Kind::UnknownField(field, _) = &e.kind {
                if e.path.last() == Some(field) {
                    e.path.pop();
                }
            }
            e.path.insert(0, section.to_owned());
            e.metadata = None;
            Error::Config(impush_core::config::describe(&e))
        })
    }

    fn insert(&mut self, key: String, value: Value) -> Result<()> {
        let text = |v: Value| match v {
            Value::String(_, s) => Ok(s),
            other => Err(Error::Config(format!(
                "`{key}` must be a string, found {}",
                kind_name(&other)
            ))),
        };
        match key.as_str() {
            "kind" => self.kind = Some(text(value)?),
            "prefix" => self.prefix = Some(text(value)?),
            _ => {
                self.options.insert(key, value);
            }
        }
        Ok(())
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}

impl<'de> Deserialize<'de> for Section {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let table = BTreeMap::<String, Value>::deserialize(d)?;
        let mut section = Section::default();
        for (key, value) in table {
            section
                .insert(key, value)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(section)
    }
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section")
            .field("kind", &self.kind())
            .field("prefix", &self.prefix)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        url: String,
        #[serde(default)]
        pool_size: usize,
    }

    fn parse(toml: &str) -> std::result::Result<Section, String> {
        use figment::providers::{Format, Toml};
        #[derive(Deserialize)]
        struct Root {
            broker: Section,
        }
        figment::Figment::new()
            .merge(Toml::string(toml))
            .extract::<Root>()
            .map(|r| r.broker)
            .map_err(|e| impush_core::config::describe(&e))
    }

    #[test]
    fn shared_keys_are_taken_out_and_the_rest_goes_to_the_factory() {
        let s = parse("[broker]\nkind = \"x\"\nprefix = \"app\"\nurl = \"u\"\npool_size = 3\n")
            .unwrap();
        assert_eq!(s.kind(), "x");
        assert_eq!(s.prefix(), Some("app"));
        let o: Opts = s.options("broker").unwrap();
        assert_eq!(
            o,
            Opts {
                url: "u".into(),
                pool_size: 3
            }
        );
    }

    #[test]
    fn errors_name_the_key_in_its_section() {
        let s = parse("[broker]\nkind = \"x\"\nurl = \"u\"\npoolsize = 3\n").unwrap();
        let err = s.options::<Opts>("broker").unwrap_err().to_string();
        assert!(
            err.starts_with("config key `broker.poolsize`: unknown field"),
            "{err}"
        );
        let s = parse("[broker]\nkind = \"x\"\nurl = \"u\"\npool_size = \"many\"\n").unwrap();
        let err = s.options::<Opts>("broker").unwrap_err().to_string();
        assert!(
            err.starts_with("config key `broker.pool_size`: invalid type"),
            "{err}"
        );
        let err = parse("[broker]\nkind = 3\n").unwrap_err();
        assert!(err.contains("`kind` must be a string"), "{err}");
    }

    #[test]
    fn debug_never_shows_option_values() {
        let s = Section::new("redis")
            .set("url", "redis://:hunter2@db:6379")
            .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("url"), "{shown}");
    }

    #[test]
    fn built_in_code_like_in_a_file() {
        let s = Section::new("x")
            .set("url", "u")
            .unwrap()
            .set("prefix", "p")
            .unwrap();
        assert_eq!(s.prefix(), Some("p"));
        assert_eq!(s.options::<Opts>("broker").unwrap().url, "u");
        assert_eq!(Section::default().kind(), DEFAULT_KIND);
    }
}
