//! Starling's administration commands, defined once (STYLE.md item 10).
//!
//! - [`spec`]: the registry of commands (names, arguments, results, docs) and the JSON-lines
//!   wire types of the control socket. Always compiled and dependency-light, so `starlingctl`
//!   can validate command lines and print help without a running node.
//! - `exec` (feature `server`): runs a validated [`spec::Request`] against a
//!   `starling_core::Server` with ejabberdctl's semantics and output formats.
//! - `control` (feature `server`): the Unix control socket `starlingctl` talks to: mode 0600,
//!   peer uid checked, bounded request lines (DESIGN.md §9, §10).
//!
//! This crate never parses command lines (that is `starlingctl`'s job) and never decides exit
//! codes beyond [`spec::ErrorKind::exit_code`].

#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod control;
#[cfg(feature = "server")]
pub mod exec;
#[cfg(feature = "server")]
pub mod piefxis;
pub mod spec;

pub use spec::{
    ArgKind, ArgSpec, COMMANDS, CommandSpec, ErrorKind, Output, Request, Response, ResultKind, find,
};
