#![doc = include_str!("../README.md")]

mod broker;
mod client;
mod config;
mod error;
mod group;
mod offline;
mod presence;
mod reader;
mod script;

pub use broker::RedisBroker;
pub use config::{RedisConfig, RedisPresenceConfig};
pub use offline::RedisOfflineStore;
pub use presence::RedisPresenceStore;
