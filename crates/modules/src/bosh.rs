//! `mod_bosh` (alias `mod_http_bind`): declares the options of BOSH (XEP-0124/0206).
//!
//! BOSH itself is served by `starling-http` on the `ejabberd_http` listeners whose
//! `request_handlers` map a path to `mod_bosh`; it reads these options from the config when
//! the listener starts (as `mod_http_api`'s are read). Without a `mod_bosh` entry the handler
//! runs with the defaults below. This module only declares the options and registers nothing on
//! the XMPP side.
//!
//! - `max_inactivity` (ejabberd): a session with no request outstanding for this long is dropped
//!   as a lost connection (stream management can then resume it); default 30 s.
//! - `max_pause` (ejabberd): the longest `pause` (XEP-0124 §10) a client may ask for; default
//!   120 s.
//! - `max_wait` (ours): the longest `wait` granted, whatever the client asks; default 60 s.
//! - `max_hold` (ours): the most requests held at once, whatever the client asks; default 1
//!   (XEP-0124 §7.1 recommends 1 for clients; `requests` is `hold + 1`).
//! - `max_sessions` (ours): BOSH sessions at once per HTTP listener; default 10 000.

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::module::{HostContext, Module, ModuleError, Registrations};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "max_inactivity",
        kind: OptionKind::Duration,
        doc: "A BOSH session with no request outstanding for this long is dropped as a lost \
              connection (default 30 s).",
    },
    OptionSpec {
        name: "max_pause",
        kind: OptionKind::Duration,
        doc: "The longest pause (XEP-0124 section 10) a client may request (default 120 s).",
    },
    OptionSpec {
        name: "max_wait",
        kind: OptionKind::Duration,
        doc: "The longest time a request is held before an empty response (default 60 s).",
    },
    OptionSpec {
        name: "max_hold",
        kind: OptionKind::Int { min: 0, max: 16 },
        doc: "The most requests held at once per session (default 1).",
    },
    OptionSpec {
        name: "max_sessions",
        kind: OptionKind::Int {
            min: 1,
            max: 10_000_000,
        },
        doc: "BOSH sessions at once per HTTP listener (default 10000).",
    },
    OptionSpec {
        name: "json",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's JSON encoding of BOSH; not supported.",
    },
    OptionSpec {
        name: "max_concat",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's limit on concatenated stanzas; not supported.",
    },
    OptionSpec {
        name: "prebind",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's pre-binding; not supported.",
    },
    OptionSpec {
        name: "queue_type",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's queue storage; not applicable.",
    },
    OptionSpec {
        name: "ram_db_type",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's session table storage; not applicable.",
    },
];

/// `mod_bosh`.
pub struct Bosh;

impl Module for Bosh {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_bosh",
            aliases: &["mod_http_bind"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        _options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        // Served by starling-http; nothing to register on the XMPP side.
        Ok(Registrations::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_the_ejabberd_options() {
        let spec = Bosh.spec();
        assert_eq!(spec.name, "mod_bosh");
        assert!(spec.aliases.contains(&"mod_http_bind"));
        let names: Vec<&str> = spec.options.iter().map(|o| o.name).collect();
        for name in ["max_inactivity", "max_pause", "max_wait", "max_hold"] {
            assert!(names.contains(&name), "{name}");
        }
    }
}
