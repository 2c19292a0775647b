//! Hearth: a FHIR R4 server with SQLite (embedded) and PostgreSQL storage.
//!
//! The request path is one-directional: [`http`] decodes and negotiates, [`rest`] carries out the
//! FHIR interaction, [`search`] and [`model`] hold pure logic, and [`store`] is the only layer that
//! speaks SQL. `main.rs` only parses the command line; tests and benchmarks build the same server
//! through [`server::Hearth`].

pub mod admin;
pub mod audit;
pub mod auth;
pub mod bounded;
pub mod config;
pub mod export;
pub mod http;
pub mod import;
pub mod live;
pub mod mail;
pub mod model;
pub mod operations;
pub mod portal;
pub mod rest;
pub mod search;
pub mod server;
pub mod store;
pub mod subscriptions;
pub mod synth;
pub mod validation;
