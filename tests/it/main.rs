//! Ferry's integration tests: one test binary, many modules, one shared harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod api;
mod clients;
#[path = "../support/data.rs"]
mod data;
mod durability;
mod ecr_api;
mod fuzz;
mod gc;
mod harness;
mod hostile;
mod images;
mod integrity;
mod lifecycle;
mod limits;
mod malformed;
mod mirrors;
mod operations;
#[path = "../support/process.rs"]
mod process;
mod pull_through;
#[path = "../support/relay.rs"]
mod relay;
mod replication;
mod s3;
mod seams;
mod token_auth;
mod upstream;
