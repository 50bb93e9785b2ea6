#![doc = include_str!("../README.md")]

mod broker;
mod client;
mod config;
mod error;
mod group;
mod presence;
mod reader;

pub use broker::RedisBroker;
pub use config::{RedisConfig, RedisPresenceConfig};
pub use presence::RedisPresenceStore;
