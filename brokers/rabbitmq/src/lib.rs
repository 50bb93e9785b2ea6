#![doc = include_str!("../README.md")]

mod batch;
mod broker;
mod config;
mod consume;
mod error;
mod link;
mod publish;
mod shared;

pub use broker::RabbitMqBroker;
pub use config::RabbitMqConfig;
