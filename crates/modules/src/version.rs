//! `mod_version`: XEP-0092 software version of the server.
//!
//! Answers `jabber:iq:version` queries to the host with the name "Starling" and the crate
//! version (XEP-0092 §2). The operating system is included only while `show_os` is true, its
//! ejabberd default; operators who consider it an information leak turn it off.

use std::sync::Arc;

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::module::{
    HostContext, IqHandler, IqResult, IqTarget, Module, ModuleError, Registrations,
};
use starling_xmpp::ns;
use starling_xmpp::stanza::{Stanza, element, text_element};

use crate::disco::SERVER_NAME;
use crate::iq;

const OPTIONS: &[OptionSpec] = &[OptionSpec {
    name: "show_os",
    kind: OptionKind::Bool,
    doc: "Include the operating system in the answer (default true).",
}];

/// `mod_version`.
pub struct Version;

impl Module for Version {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_version",
            aliases: &["version"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let handler = VersionHandler {
            show_os: options.bool("show_os").unwrap_or(true),
        };
        Ok(Registrations::default().iq(ns::VERSION, IqTarget::Host, Arc::new(handler)))
    }
}

struct VersionHandler {
    show_os: bool,
}

impl IqHandler for VersionHandler {
    fn handle<'a>(&'a self, _server: &'a Server, iq: &'a Stanza) -> BoxFuture<'a, IqResult> {
        Box::pin(async move {
            iq::get_payload(iq)?;
            let mut query = element("query", ns::VERSION, &[]);
            query.append_child(text_element("name", ns::VERSION, SERVER_NAME));
            query.append_child(text_element(
                "version",
                ns::VERSION,
                env!("CARGO_PKG_VERSION"),
            ));
            if self.show_os {
                query.append_child(text_element("os", ns::VERSION, std::env::consts::OS));
            }
            Ok(Some(query))
        })
    }
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;

    use super::*;
    use crate::fixture::{Fixture, set_option};

    const QUERY: &str = "<query xmlns='jabber:iq:version'/>";

    #[tokio::test]
    async fn answers_name_version_and_os() {
        let f = Fixture::new().await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("localhost", "get", QUERY).await;
        let q = reply.payload().unwrap();
        assert!(q.is("query", ns::VERSION));
        assert_eq!(q.get_child("name", ns::VERSION).unwrap().text(), "Starling");
        assert_eq!(
            q.get_child("version", ns::VERSION).unwrap().text(),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            q.get_child("os", ns::VERSION).unwrap().text(),
            std::env::consts::OS
        );
    }

    #[tokio::test]
    async fn show_os_false_hides_the_os() {
        let f = Fixture::with(|c| {
            set_option(c, "mod_version", "show_os", OptionValue::Bool(false));
        })
        .await;
        let mut s = f.session("alice@localhost/a").await;
        let reply = s.iq("localhost", "get", QUERY).await;
        let q = reply.payload().unwrap();
        assert!(q.get_child("os", ns::VERSION).is_none());
        assert!(q.get_child("name", ns::VERSION).is_some());
    }
}
