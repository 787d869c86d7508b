//! `mod_http_api`: declares the options of the admin HTTP API (`POST /api/<command>`).
//!
//! The API itself is served by `starling-http` on the `ejabberd_http` listeners whose
//! `request_handlers` map a path to `mod_http_api`; it reads these options from the config
//! (the HTTP crate does not depend on this one, as c2s reads `mod_ping`'s). This module only
//! declares and validates them, and registers nothing on the XMPP side.
//!
//! - `access`: the access rule a caller authenticated with HTTP Basic (an account's JID and
//!   password) must pass. Without it, only members of the `admin` ACL are allowed.
//! - `tokens`: bearer tokens (`Authorization: Bearer TOKEN`) that may call every command;
//!   without any, only Basic authentication works.

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::module::{HostContext, Module, ModuleError, Registrations};

/// Shortest bearer token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LENGTH: usize = 16;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Access rule for callers using HTTP Basic with an account's JID and password \
              (default: members of the admin ACL).",
    },
    OptionSpec {
        name: "tokens",
        kind: OptionKind::StringList,
        doc: "Bearer tokens allowed to call every command (at least 16 characters each; \
              default none).",
    },
];

/// `mod_http_api`.
pub struct HttpApi;

impl Module for HttpApi {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_http_api",
            aliases: &[],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        validate(options)?;
        Ok(Registrations::default())
    }
}

/// Refuses tokens short enough to guess.
fn validate(options: &ModuleOptions) -> Result<(), ModuleError> {
    let short = options
        .strings("tokens")
        .unwrap_or_default()
        .iter()
        .any(|t| t.len() < MIN_TOKEN_LENGTH);
    if short {
        return Err(ModuleError {
            module: "mod_http_api",
            message: format!("tokens must be at least {MIN_TOKEN_LENGTH} characters long"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use starling_config::OptionValue;

    use super::*;

    #[test]
    fn short_tokens_are_refused() {
        let mut options = ModuleOptions::new();
        assert!(validate(&options).is_ok());
        options.insert(
            "tokens",
            OptionValue::List(vec![OptionValue::String("0123456789abcdef".into())]),
        );
        assert!(validate(&options).is_ok());
        options.insert(
            "tokens",
            OptionValue::List(vec![OptionValue::String("short".into())]),
        );
        assert!(validate(&options).is_err());
    }
}
