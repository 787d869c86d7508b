//! Client-to-server connections (RFC 6120 over TCP, with STARTTLS or direct TLS per XEP-0368).
//!
//! One connection is one task running [`session::run`]: it negotiates the stream (STARTTLS,
//! SASL, resource binding), then loops over the socket, the session inbox, the close signal and
//! the keepalive timer with a single `select!`. The protocol decisions it needs that do not
//! depend on I/O live in [`features`] (what to offer), [`auth`] (SASL exchanges), [`sm`]
//! (XEP-0198 stream management: counters, unacknowledged queue, resumption) and [`csi`]
//! (XEP-0352 client state indication: what an inactive client's session holds back).

#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod csi;
pub mod features;
pub mod framed;
pub mod session;
pub mod sm;
pub mod transport;

pub use admission::{Admission, accept};
pub use session::{ListenerSettings, run, run_framed};
