//! `mod_stream_mgmt`: XEP-0198 stream management, declared here and run by the c2s connection.
//!
//! The protocol (acks, the unacknowledged queue, detaching and resuming sessions) is per
//! connection, so it lives in the c2s crate (`starling_c2s::sm` and `session`), which reads
//! these options from the config as it reads mod_ping's. This module declares and validates
//! the options (ejabberd's names and defaults) and offers the `<sm xmlns='urn:xmpp:sm:3'/>`
//! stream feature after authentication (XEP-0198 §3) on the hosts where it runs.

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::module::{HostContext, Module, ModuleError, Registrations};

/// The XEP-0198 namespace (version 3).
pub const NS_SM: &str = "urn:xmpp:sm:3";

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "resume_timeout",
        kind: OptionKind::Duration,
        doc: "How long a session whose connection was lost waits for resumption; 0 disables \
              resumption (default 300 s).",
    },
    OptionSpec {
        name: "max_resume_timeout",
        kind: OptionKind::Duration,
        doc: "The longest resumption timeout a client may ask for; at least resume_timeout \
              (default: resume_timeout).",
    },
    OptionSpec {
        name: "max_ack_queue",
        kind: OptionKind::IntOrInfinity { min: 1 },
        doc: "Most unacknowledged stanzas kept for a session; beyond it the session is closed \
              (default 5000).",
    },
    OptionSpec {
        name: "ack_timeout",
        kind: OptionKind::Duration,
        doc: "How long to wait for an acknowledgement before the connection is considered \
              lost; infinity disables it (default 60 s).",
    },
    OptionSpec {
        name: "resend_on_timeout",
        kind: OptionKind::Enum(&["true", "false", "if_offline"]),
        doc: "Unacknowledged messages of an ended session: true re-routes them (other \
              resources, offline storage), false bounces them, if_offline re-routes only when \
              no other resource is online (default true).",
    },
];

/// `mod_stream_mgmt`.
pub struct StreamMgmt;

impl Module for StreamMgmt {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_stream_mgmt",
            aliases: &["stream_mgmt"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        validate(options)?;
        Ok(Registrations::default().stream_feature("sm", NS_SM))
    }
}

/// ejabberd refuses a `max_resume_timeout` below `resume_timeout`: the client could then never
/// get the default.
fn validate(options: &ModuleOptions) -> Result<(), ModuleError> {
    if let (Some(max), Some(default)) = (
        options.duration("max_resume_timeout"),
        options.duration("resume_timeout"),
    ) && max < default
    {
        return Err(ModuleError {
            module: "mod_stream_mgmt",
            message: "max_resume_timeout must not be smaller than resume_timeout".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use starling_config::OptionValue;

    use super::*;

    #[test]
    fn offers_the_stream_feature() {
        let host = HostContext { host: "localhost" };
        let r = StreamMgmt.start(&host, &ModuleOptions::new()).unwrap();
        assert_eq!(r.stream_features, vec![("sm", NS_SM)]);
        assert!(r.iq.is_empty());
    }

    #[test]
    fn max_resume_timeout_below_default_is_refused() {
        let host = HostContext { host: "localhost" };
        let mut o = ModuleOptions::new();
        o.insert(
            "resume_timeout",
            OptionValue::Duration(Duration::from_secs(300)),
        );
        o.insert(
            "max_resume_timeout",
            OptionValue::Duration(Duration::from_secs(60)),
        );
        let err = StreamMgmt.start(&host, &o).err().unwrap();
        assert!(err.to_string().contains("max_resume_timeout"));
        o.insert(
            "max_resume_timeout",
            OptionValue::Duration(Duration::from_secs(600)),
        );
        assert!(StreamMgmt.start(&host, &o).is_ok());
    }

    #[test]
    fn options_have_ejabberd_names() {
        let names: Vec<_> = StreamMgmt.spec().options.iter().map(|o| o.name).collect();
        assert_eq!(
            names,
            [
                "resume_timeout",
                "max_resume_timeout",
                "max_ack_queue",
                "ack_timeout",
                "resend_on_timeout"
            ]
        );
    }
}
