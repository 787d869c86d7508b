//! Accepting connections: TLS configuration (certificates chosen by SNI, a self-signed
//! certificate generated when none is configured) and the accept loop with its connection cap
//! and back-off.
//!
//! Protocol handling is not here: a listener hands each accepted socket to the transport crate
//! (c2s today; s2s and HTTP later).

#![forbid(unsafe_code)]

pub mod accept;
pub mod tls;
