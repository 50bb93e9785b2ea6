//! This crate's private error and its mapping onto `impush_core::Error`.

use impush_core::Error as CoreError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub(crate) const BACKEND: &str = "kafka";

/// What can go wrong talking to Kafka, before it is mapped to a core error. Every variant names
/// the bootstrap servers, so a log line says which cluster did not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A librdkafka call failed.
    #[error("kafka at {bootstrap}: {op} failed")]
    Kafka {
        bootstrap: String,
        op: &'static str,
        #[source]
        source: KafkaError,
    },
    /// A blocking call did not finish within its timeout, or its thread went away.
    #[error("kafka at {bootstrap}: {op} did not finish")]
    Stuck { bootstrap: String, op: &'static str },
    /// The broker answered something this crate cannot use.
    #[error("kafka at {bootstrap}: {op}: {detail}")]
    Reply {
        bootstrap: String,
        op: &'static str,
        detail: String,
    },
}

/// Codes that say "the cluster cannot be reached or is busy right now": retrying later may work.
fn transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::MessageTimedOut
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::QueueFull
            | C::Resolve
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::UnknownTopicOrPartition
            | C::TimedOutQueue
            | C::WaitingForCoordinator
            | C::WaitCache
            | C::RebalanceInProgress
            | C::KafkaStorageError
            | C::PartitionEOF
    )
}

impl Error {
    pub(crate) fn kafka<'a>(
        bootstrap: &'a str,
        op: &'static str,
    ) -> impl FnOnce(KafkaError) -> Self + 'a {
        move |source| Error::Kafka {
            bootstrap: bootstrap.to_owned(),
            op,
            source,
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            Error::Kafka { source, .. } => match source {
                KafkaError::Canceled => true,
                KafkaError::AdminOp(code) => transient(*code),
                e => e.rdkafka_error_code().is_some_and(transient),
            },
            Error::Stuck { .. } => true,
            Error::Reply { .. } => false,
        }
    }
}

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        if e.is_transient() {
            CoreError::Unavailable {
                backend: BACKEND,
                source: Some(Box::new(e)),
            }
        } else {
            CoreError::Backend {
                backend: BACKEND,
                source: Box::new(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_name_the_cluster() {
        let e: CoreError = Error::Kafka {
            bootstrap: "k1:9092,k2:9092".into(),
            op: "produce",
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        }
        .into();
        assert!(e.is_transient(), "{e:?}");
        let chain = format!("{:?}", e);
        assert!(chain.contains("k1:9092,k2:9092"), "{chain}");

        let e: CoreError = Error::Kafka {
            bootstrap: "k:9092".into(),
            op: "produce",
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        }
        .into();
        assert!(!e.is_transient(), "{e:?}");
    }
}
