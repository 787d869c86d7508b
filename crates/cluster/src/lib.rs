//! Clustering: how Starling nodes recognise each other and talk (DESIGN.md §7).
//!
//! This crate owns the node-to-node protocol, written sans-I/O like the client protocol:
//! [`cookie`] is the shared secret (ejabberd's `.erlang.cookie`), [`wire`] the framing
//! (preamble with protocol versions, length-prefixed postcard messages, bounded), and
//! [`handshake`] the mutual authentication that proves both sides hold the cookie without it
//! ever crossing the wire. The tasks that run links, the replicated tables and forwarding build
//! on these.

#![forbid(unsafe_code)]

pub mod cookie;
pub mod handshake;
pub mod wire;
