//! `mod_fail2ban`: ejabberd's failed-login banning, declared here and run by the core.
//!
//! The ban table is per node and shared by every listener, so it lives in
//! `starling_core::ban`; connections report failed SASL exchanges to it and are checked at
//! accept (`starling_c2s::admission`). This module declares and validates ejabberd's options
//! with its defaults (20 failures, one hour); the core reads them from the config. Without
//! the module nobody is banned. It registers nothing on the host: banning is per address, not
//! per domain.

use starling_config::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec};
use starling_core::module::{HostContext, Module, ModuleError, Registrations};

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Access rule whose `allow` exempts an address from banning (default none: \
              nobody is exempt).",
    },
    OptionSpec {
        name: "c2s_auth_ban_lifetime",
        kind: OptionKind::Duration,
        doc: "How long failures are remembered and a ban lasts (default 3600 s).",
    },
    OptionSpec {
        name: "c2s_max_auth_failures",
        kind: OptionKind::Int {
            min: 1,
            max: 1_000_000,
        },
        doc: "Failed authentications from one address (IPv6: one /64) that ban it (default \
              20).",
    },
];

/// The module's name, which `starling_core::ban::MODULE` looks up.
pub const MODULE_NAME: &str = starling_core::ban::MODULE;

/// `mod_fail2ban`.
pub struct Fail2ban;

impl Module for Fail2ban {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: MODULE_NAME,
            aliases: &["fail2ban"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        _host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        if options.duration("c2s_auth_ban_lifetime") == Some(std::time::Duration::ZERO) {
            return Err(ModuleError {
                module: MODULE_NAME,
                message: "c2s_auth_ban_lifetime must be longer than 0".to_owned(),
            });
        }
        Ok(Registrations::default())
    }
}

#[cfg(test)]
mod tests {
    use starling_config::Config;
    use starling_core::ban::{BanPolicy, DEFAULT_LIFETIME, DEFAULT_MAX_FAILURES};
    use starling_core::module::Module;

    #[test]
    fn embedded_defaults_enable_banning_with_ejabberds_defaults() {
        assert_eq!(super::Fail2ban.spec().name, super::MODULE_NAME);
        let config = Config::embedded_default(&crate::specs());
        let policy = BanPolicy::from_config(&config).expect("mod_fail2ban is on by default");
        assert_eq!(policy.max_failures, DEFAULT_MAX_FAILURES);
        assert_eq!(policy.lifetime, DEFAULT_LIFETIME);
        assert_eq!(policy.exempt, None);
    }

    #[test]
    fn options_are_read_by_the_core() {
        let text = "hosts: [a.example]\nmodules:\n  mod_fail2ban:\n    c2s_auth_ban_lifetime: 60\n    c2s_max_auth_failures: 3\n    access: trusted\naccess_rules:\n  trusted: {allow: all}\n";
        let config = starling_config::load_str(text, "t.yml", &crate::specs()).unwrap();
        let policy = BanPolicy::from_config(&config).unwrap();
        assert_eq!(policy.max_failures, 3);
        assert_eq!(policy.lifetime, std::time::Duration::from_secs(60));
        assert_eq!(policy.exempt.as_deref(), Some("trusted"));
        let bad = "hosts: [a.example]\nmodules:\n  mod_fail2ban:\n    c2s_max_auth_failures: 0\n";
        assert!(starling_config::load_str(bad, "t.yml", &crate::specs()).is_err());
    }
}
