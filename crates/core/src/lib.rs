//! The node's routing core: router, local router, session manager, presence and roster
//! subscriptions, and the module interface.
//!
//! Following ejabberd's architecture (and DESIGN.md §2), every stanza a connection receives is
//! routed to completion in that connection's task: [`router`] picks local hosts versus remote
//! domains, [`local`] sends user JIDs to the [`sm`] session manager and everything else to the
//! IQ handlers that [`module`]s register, and the session manager delivers into the bounded
//! inbox of the target session. This crate never imports a transport (c2s, s2s, cluster) or a
//! concrete store: those plug in through the traits defined here and in `starling-storage`.

#![forbid(unsafe_code)]

pub mod ban;
pub mod counters;
pub mod handover;
pub mod hooks;
pub mod local;
pub mod module;
pub mod placement;
pub mod presence;
pub mod roster;
pub mod router;
pub mod routes;
pub mod server;
pub mod sm;

pub use server::Server;

/// A boxed, sendable future; the storage crate's alias, re-exported for module authors.
pub type BoxFuture<'a, T> = starling_storage::BoxFuture<'a, T>;
