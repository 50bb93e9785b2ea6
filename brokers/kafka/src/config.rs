//! [`KafkaConfig`]: the `[broker] kind = "kafka"` section.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Deserialize;

/// Connection, topic and client settings for Kafka.
///
/// ```toml
/// [broker]
/// kind = "kafka"
/// url = "host1:9092,host2:9092"   # bootstrap servers; a kafka:// prefix is accepted
/// prefix = "impush"               # shared key: topic prefix (`impush.inbox.n1`, ...)
/// partitions = 1                  # for topics impush creates
/// replication = 3                 # for topics impush creates (default: the broker's default)
/// linger = "2ms"                  # how long the producer waits to fill a batch
/// session_timeout = "10s"         # how long a silent group member keeps its partitions
/// [broker.properties]             # any librdkafka property, for every client
/// "security.protocol" = "sasl_plaintext"
/// "sasl.mechanism" = "PLAIN"
/// "sasl.username" = "impush"
/// "sasl.password" = "..."         # never shown in logs or errors
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host1:9092,host2:9092`; each may carry a `kafka://` prefix.
    /// Credentials go in [`properties`](Self::properties) (`sasl.username`, `sasl.password`).
    pub url: String,
    /// Partitions of the topics impush creates (default 1). impush keys every record by its
    /// topic, so all of a topic's records land in one partition and keep the publish order the
    /// broker contract promises; more partitions do not spread one topic's load.
    pub partitions: i32,
    /// Replication factor of the topics impush creates; `-1` (the default) takes the broker's
    /// `default.replication.factor` (Kafka 2.4+).
    pub replication: i32,
    /// How long the producer waits for more records before it sends a batch (default 2ms):
    /// the latency a publish pays on an idle topic, traded for larger batches on a busy one.
    /// Records that arrive while a request is in flight are batched anyway.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a publish may take, retries included, before it fails as unavailable (default
    /// 10s; librdkafka's `message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long metadata, topic creation, offset and `ping` requests may take (default 5s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `session.timeout.ms` of queue subscriptions (default 10s): a member that stops
    /// heartbeating (a node killed with `kill -9`) holds its partitions this long, so this is
    /// how long a restarted node's inbox may wait before it reads again.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often a queue subscription commits the offsets its deliveries were acked up to
    /// (default 100ms). A crash redelivers at most what was acked in the last interval.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Largest record a publish may carry, in bytes (default 8 MiB): the producer's
    /// `message.max.bytes` and the `max.message.bytes` of the topics impush creates.
    pub max_message_bytes: usize,
    /// librdkafka properties for every client (producer, consumers, admin), e.g.
    /// `security.protocol`, `sasl.*`, `ssl.*`. They override impush's own settings. Values may
    /// be written as strings, numbers or booleans.
    #[serde(deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `compression.type`).
    #[serde(deserialize_with = "properties")]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumers only (e.g. `fetch.wait.max.ms`).
    #[serde(deserialize_with = "properties")]
    pub consumer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            url: "127.0.0.1:9092".to_owned(),
            partitions: 1,
            replication: -1,
            linger: Duration::from_millis(2),
            publish_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_millis(100),
            max_message_bytes: 8 * 1024 * 1024,
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }
}

/// A librdkafka property value as written in TOML: librdkafka takes every value as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

fn properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, PropertyValue>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                PropertyValue::String(s) => s,
                PropertyValue::Int(i) => i.to_string(),
                PropertyValue::Float(f) => f.to_string(),
                PropertyValue::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// The scheme a bootstrap server may be written with.
pub const KAFKA_SCHEME: &str = "kafka://";

impl KafkaConfig {
    /// The defaults with `url` as the bootstrap servers.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The bootstrap servers as librdkafka takes them: `host:port,host:port`, without any
    /// `kafka://` prefix or blanks.
    ///
    /// # Errors
    /// `Error::Config` naming `broker.url` when the list is empty, an entry has no port, or an
    /// entry carries credentials (they belong in `properties`).
    pub fn bootstrap_servers(&self) -> impush_core::Result<String> {
        let bad = |why: &str| {
            impush_core::Error::Config(format!(
                "config key `broker.url`: {why} (want \"host1:9092,host2:9092\")"
            ))
        };
        // Before splitting: a password may hold commas, and no piece of it may be echoed.
        if self.url.contains('@') {
            return Err(bad("credentials go in broker.properties (sasl.username, sasl.password), not in the url"));
        }
        let mut servers = Vec::new();
        for entry in self.url.split(',') {
            let entry = entry.trim();
            let entry = entry.strip_prefix(KAFKA_SCHEME).unwrap_or(entry);
            let entry = entry.trim_end_matches('/');
            if entry.is_empty() {
                continue;
            }
            if entry.contains("://") {
                return Err(bad(&format!("unsupported scheme in `{entry}`")));
            }
            let port = entry.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(bad(&format!("`{entry}` has no port")));
            }
            servers.push(entry);
        }
        if servers.is_empty() {
            return Err(bad("no bootstrap server given"));
        }
        Ok(servers.join(","))
    }

    /// Checks the values that librdkafka or Kafka would refuse, naming the key.
    ///
    /// # Errors
    /// `Error::Config` naming the first bad key.
    pub fn validate(&self) -> impush_core::Result<()> {
        self.bootstrap_servers()?;
        let bad = |key: &str, why: &str| {
            Err(impush_core::Error::Config(format!(
                "config key `broker.{key}`: {why}"
            )))
        };
        if self.partitions < 1 {
            return bad("partitions", "must be at least 1");
        }
        if self.replication == 0 || self.replication < -1 {
            return bad(
                "replication",
                "must be at least 1, or -1 for the broker's default",
            );
        }
        let ms = |d: Duration| d.as_millis();
        for (key, d, min, max) in [
            ("linger", self.linger, 0, 900_000),
            ("publish_timeout", self.publish_timeout, 1, 2_147_483_647),
            ("request_timeout", self.request_timeout, 1, 3_600_000),
            ("session_timeout", self.session_timeout, 1_000, 3_600_000),
            ("commit_interval", self.commit_interval, 1, 3_600_000),
        ] {
            if ms(d) < min || ms(d) > max {
                return bad(key, &format!("{d:?} is out of range ({min}ms to {max}ms)"));
            }
        }
        if !(1_000..=1_000_000_000).contains(&self.max_message_bytes) {
            return bad("max_message_bytes", "must be between 1000 and 1000000000");
        }
        Ok(())
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config`, ...).
pub(crate) fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A property map with every secret value replaced by `***`.
struct Redacted<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v = if is_secret(k) { "***" } else { v.as_str() };
                (k, v)
            }))
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("url", &impush_core::redact::redact_url(&self.url))
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("linger", &self.linger)
            .field("publish_timeout", &self.publish_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("properties", &Redacted(&self.properties))
            .field("producer_properties", &Redacted(&self.producer_properties))
            .field("consumer_properties", &Redacted(&self.consumer_properties))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// As the facade reads a section: figment over TOML.
    fn parse(toml_text: &str) -> Result<KafkaConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml_text))
            .extract()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_full_section() {
        let c = parse("url = \"kafka://a:9092, b:9093\"").unwrap();
        assert_eq!(c.bootstrap_servers().unwrap(), "a:9092,b:9093");
        assert_eq!((c.partitions, c.replication), (1, -1));
        assert_eq!(c.linger, Duration::from_millis(2));
        c.validate().unwrap();

        let c = parse(
            r#"
            url = "k1:9092"
            partitions = 3
            replication = 2
            linger = "10ms"
            publish_timeout = "3s"
            request_timeout = "1s"
            session_timeout = "6s"
            commit_interval = "50ms"
            max_message_bytes = 2000000
            [properties]
            "security.protocol" = "sasl_plaintext"
            [producer_properties]
            "compression.type" = "lz4"
            [consumer_properties]
            "fetch.wait.max.ms" = 100
            "check.crcs" = true
            "#,
        )
        .unwrap();
        assert_eq!((c.partitions, c.replication), (3, 2));
        assert_eq!(c.session_timeout, Duration::from_secs(6));
        assert_eq!(c.producer_properties["compression.type"], "lz4");
        assert_eq!(c.consumer_properties["fetch.wait.max.ms"], "100");
        assert_eq!(c.consumer_properties["check.crcs"], "true");
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("url = \"k:9092\"\npartition = 3").unwrap_err();
        assert!(e.contains("partition"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = |c: KafkaConfig| c.validate().unwrap_err().to_string();
        assert!(err(KafkaConfig::from_url("")).contains("broker.url"));
        assert!(err(KafkaConfig::from_url("host")).contains("has no port"));
        assert!(err(KafkaConfig::from_url("u:p@h:9092")).contains("sasl.password"));
        let e = err(KafkaConfig::from_url("kafka://u:zpa,zss@h:9092,h2:9092"));
        assert!(e.contains("sasl.password") && !e.contains("zpa"), "{e}");
        let shown = format!("{:?}", KafkaConfig::from_url("u:zpa,zss@h:9092"));
        assert!(!shown.contains("zpa") && !shown.contains("zss"), "{shown}");
        assert!(err(KafkaConfig::from_url("http://h:9092")).contains("scheme"));
        let c = KafkaConfig {
            partitions: 0,
            ..KafkaConfig::default()
        };
        assert!(err(c).contains("broker.partitions"));
        let c = KafkaConfig {
            replication: 0,
            ..KafkaConfig::default()
        };
        assert!(err(c).contains("broker.replication"));
        let c = KafkaConfig {
            session_timeout: Duration::from_millis(10),
            ..KafkaConfig::default()
        };
        assert!(err(c).contains("broker.session_timeout"));
    }

    #[test]
    fn secrets_never_show() {
        let c = parse(
            r#"
            url = "k:9092"
            [properties]
            "sasl.username" = "alice"
            "sasl.password" = "hunter2"
            "ssl.key.password" = "hunter3"
            [consumer_properties]
            "sasl.oauthbearer.client.secret" = "hunter4"
            "#,
        )
        .unwrap();
        let shown = format!("{c:?}");
        for s in ["hunter2", "hunter3", "hunter4"] {
            assert!(!shown.contains(s), "{shown}");
        }
        assert!(shown.contains("alice") && shown.contains("***"), "{shown}");
    }
}
