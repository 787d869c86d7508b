//! `mod_ping`: XEP-0199 XMPP ping, answered by the server (§4.2 client-to-server ping).
//!
//! The handler answers pings to the host with an empty result. The options drive the
//! server-to-client keepalive of XEP-0199 §4.1, which the c2s connection code runs (it reads
//! them from the config; c2s does not depend on this crate): every `ping_interval` of
//! silence it pings the client, and a client that does not answer within `ping_ack_timeout`
//! is disconnected if `timeout_action` is `kill`. This module declares and validates them.

use std::sync::Arc;
use std::time::Duration;

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_xmpp::ns;
use starling_xmpp::stanza::Stanza;

use crate::iq;

/// Default of `ping_interval` (ejabberd's).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `ping_ack_timeout`.
pub const DEFAULT_PING_ACK_TIMEOUT: Duration = Duration::from_secs(32);

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "send_pings",
        kind: OptionKind::Bool,
        doc: "Ping clients that have been silent for ping_interval (default false).",
    },
    OptionSpec {
        name: "ping_interval",
        kind: OptionKind::Duration,
        doc: "Silence after which a client is pinged (default 60 s).",
    },
    OptionSpec {
        name: "ping_ack_timeout",
        kind: OptionKind::Duration,
        doc: "How long to wait for the answer to a ping (default 32 s).",
    },
    OptionSpec {
        name: "timeout_action",
        kind: OptionKind::Enum(&["none", "kill"]),
        doc: "What to do with a client that does not answer: none or kill (default none).",
    },
];

/// `mod_ping`.
pub struct Ping;

impl Module for Ping {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_ping",
            aliases: &["ping"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        validate(options)?;
        Ok(Registrations::default().iq(ns::PING, IqTarget::Host, Arc::new(PingHandler)))
    }
}

/// Checks what the type alone cannot: zero intervals would make the keepalive spin.
fn validate(options: &ModuleOptions) -> Result<(), ModuleError> {
    for (key, default) in [
        ("ping_interval", DEFAULT_PING_INTERVAL),
        ("ping_ack_timeout", DEFAULT_PING_ACK_TIMEOUT),
    ] {
        if options.duration(key).unwrap_or(default).is_zero() {
            return Err(ModuleError {
                module: "mod_ping",
                message: format!("{key} must be greater than zero"),
            });
        }
    }
    Ok(())
}

/// Answers `<ping xmlns='urn:xmpp:ping'/>` with an empty result (XEP-0199 §4.2).
struct PingHandler;

impl IqHandler for PingHandler {
    fn handle<'a>(&'a self, _server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            iq::get_payload(iq)?;
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;
    use starling_xmpp::error::StanzaErrorCondition as C;

    use super::*;
    use crate::fixture::{Fixture, error_condition};

    #[tokio::test]
    async fn ping_to_host_gets_empty_result() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s
            .iq("localhost", "get", "<ping xmlns='urn:xmpp:ping'/>")
            .await;
        assert_eq!(reply.type_attr(), Some("result"));
        assert_eq!(reply.from().as_str(), "localhost");
        assert_eq!(reply.to().as_str(), "alice@localhost/a");
        assert!(reply.payload().is_none());
        let reply = s
            .iq("localhost", "set", "<ping xmlns='urn:xmpp:ping'/>")
            .await;
        assert_eq!(error_condition(&reply), Some(C::NotAllowed));
    }

    #[test]
    fn zero_intervals_are_refused() {
        let host = HostContext { host: "localhost" };
        assert!(Ping.start(&host, &ModuleOptions::new()).is_ok());
        let mut o = ModuleOptions::new();
        o.insert("ping_interval", OptionValue::Duration(Duration::ZERO));
        let err = Ping.start(&host, &o).err().unwrap();
        assert_eq!(
            err.to_string(),
            "mod_ping: ping_interval must be greater than zero"
        );
        let mut o = ModuleOptions::new();
        o.insert("ping_ack_timeout", OptionValue::Duration(Duration::ZERO));
        assert!(Ping.start(&host, &o).is_err());
        let mut o = ModuleOptions::new();
        o.insert("ping_interval", OptionValue::Infinity);
        assert!(Ping.start(&host, &o).is_ok(), "infinity disables pings");
    }

    #[test]
    fn options_have_ejabberd_names() {
        let names: Vec<_> = Ping.spec().options.iter().map(|o| o.name).collect();
        assert_eq!(
            names,
            [
                "send_pings",
                "ping_interval",
                "ping_ack_timeout",
                "timeout_action"
            ]
        );
    }
}
