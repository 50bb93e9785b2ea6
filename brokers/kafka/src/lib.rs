#![doc = include_str!("../README.md")]

mod broker;
mod client;
mod config;
mod error;
mod members;
mod offsets;
mod shared;
mod subscription;
mod topics;

pub use broker::KafkaBroker;
pub use config::{KafkaConfig, KAFKA_SCHEME};
