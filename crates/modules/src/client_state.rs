//! `mod_client_state`: XEP-0352 client state indication, declared here and run by the c2s
//! connection.
//!
//! What an inactive client's session holds back is decided per connection
//! (`starling_c2s::csi`), which reads these options from the config. This module declares them
//! (ejabberd's names and defaults) and offers the `<csi xmlns='urn:xmpp:csi:0'/>` stream
//! feature after authentication (XEP-0352 §2) on the hosts where it runs.

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::module::{HostContext, Module, ModuleError, Registrations};

/// The XEP-0352 namespace.
pub const NS_CSI: &str = "urn:xmpp:csi:0";

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "queue_presence",
        kind: OptionKind::Bool,
        doc: "Hold presence updates for inactive clients, keeping the latest per sender \
              (default true).",
    },
    OptionSpec {
        name: "queue_chat_states",
        kind: OptionKind::Bool,
        doc: "Hold chat state notifications without a body for inactive clients, keeping the \
              latest per sender (default true).",
    },
    OptionSpec {
        name: "queue_pep",
        kind: OptionKind::Bool,
        doc: "Hold PEP notifications without a body for inactive clients, keeping the latest \
              per sender and node (default true).",
    },
];

/// `mod_client_state`.
pub struct ClientState;

impl Module for ClientState {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_client_state",
            aliases: &["client_state"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        Ok(Registrations::default().stream_feature("csi", NS_CSI))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_the_stream_feature_with_ejabberd_options() {
        let host = HostContext { host: "localhost" };
        let r = ClientState.start(&host, &ModuleOptions::new()).unwrap();
        assert_eq!(r.stream_features, vec![("csi", NS_CSI)]);
        let names: Vec<_> = ClientState.spec().options.iter().map(|o| o.name).collect();
        assert_eq!(names, ["queue_presence", "queue_chat_states", "queue_pep"]);
    }
}
