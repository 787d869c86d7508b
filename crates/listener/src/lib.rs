//! Accepting connections: TLS configuration (certificates chosen by SNI, a self-signed
//! certificate generated when none is configured), the accept loop with its connection cap
//! and back-off, the PROXY protocol (v1/v2) for listeners behind a load balancer, per-listener
//! and per-address connection limits ([`limits`]) and traffic shapers ([`shaper`]).
//!
//! Protocol handling is not here: a listener hands each accepted socket to the transport crate
//! (c2s today; s2s and HTTP later).

#![forbid(unsafe_code)]

pub mod accept;
pub mod limits;
pub mod proxy;
pub mod shaper;
pub mod tls;
