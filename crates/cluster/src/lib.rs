//! Clustering: how Starling nodes recognise each other and talk (DESIGN.md §7).
//!
//! This crate owns the node-to-node protocol, written sans-I/O like the client protocol:
//! [`cookie`] is the shared secret (ejabberd's `.erlang.cookie`), [`wire`] the framing
//! (preamble with protocol versions, length-prefixed postcard messages, bounded), and
//! [`handshake`] the mutual authentication that proves both sides hold the cookie without it
//! ever crossing the wire. [`membership`] (members, tombstones, link tie-break, back-off) and
//! [`placement`] (rendezvous hashing) are the other sans-I/O parts; [`mesh`] is the I/O shell:
//! link tasks, the replicated session table, forwarding and node loss; `handover` moves a
//! resumable XEP-0198 session to the node its client resumed through. `routes` makes external
//! components' routes cluster-wide; [`discovery`] lets nodes sharing the database find each
//! other (`cluster.discovery: sql`).

#![forbid(unsafe_code)]

pub mod cookie;
pub mod discovery;
mod handover;
pub mod handshake;
pub mod membership;
pub mod mesh;
pub mod placement;
mod routes;
pub mod wire;

pub use mesh::{Cluster, ClusterError, ClusterSettings};
