//! snapback: an undo button for Kubernetes.
//!
//! Data flows one way: admission review → [`capture`] decision → [`store`];
//! API request → auth → [`restore`] plan → execute → [`store`].

pub mod api;
pub mod body_limit;
pub mod capture;
pub mod certs;
pub mod client;
pub mod config;
pub mod guard;
pub mod kube_client;
pub mod memory;
pub mod metrics;
pub mod restore;
pub mod retention;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod webhook_config;
pub mod yaml;
