#![doc = include_str!("../README.md")]

mod broker;
mod client;
mod config;
mod error;
mod presence;

pub use broker::RedisBroker;
pub use config::{RedisConfig, RedisPresenceConfig};
pub use presence::RedisPresenceStore;
