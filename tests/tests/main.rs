//! impush's own integration tests, one binary: each module is one suite (conformance per
//! backbone, end to end, edges, webhooks, ...). One binary links once and compiles the shared
//! helpers once, where one binary per file linked 27 times (README "Tests").

#![allow(unreachable_pub)] // suites are modules of a test binary: nothing here is exported

mod dashboard;
mod support;

mod admin;
mod batch;
mod cluster_presence;
mod crossed;
mod device_delivery;
mod disk;
mod e2e;
mod edges;
mod failover;
mod http_api;
mod idempotency;
mod kafka;
mod memory;
mod metrics;
mod offline;
mod openapi;
mod partition;
mod proxy;
mod rabbitmq;
mod receipts;
mod redis;
mod registry;
mod resume;
mod session_edges;
mod slow_consumer;
mod tokens;
mod upkeep;
mod webhooks;
