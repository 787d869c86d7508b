//! Client-to-server connections (RFC 6120 over TCP, with STARTTLS or direct TLS per XEP-0368).
//!
//! One connection is one task running [`session::run`]: it negotiates the stream (STARTTLS,
//! SASL, resource binding), then loops over the socket, the session inbox, the close signal and
//! the keepalive timer with a single `select!`. The protocol decisions it needs that do not
//! depend on I/O live in [`features`] (what to offer) and [`auth`] (SASL exchanges).

#![forbid(unsafe_code)]

pub mod auth;
pub mod features;
pub mod session;
pub mod transport;

pub use session::{ListenerSettings, run};
