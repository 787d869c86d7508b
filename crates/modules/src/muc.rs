//! `mod_muc`: XEP-0045 multi-user chat on a service domain (`conference.@HOST@`), single node.
//!
//! The module declares ejabberd's options and registers a [`service::MucService`] on the
//! domain of its `host` option through `Registrations::service`. The pieces:
//!
//! - [`room`]: one room's state machine, sans I/O (join, leave, nick change, messages,
//!   subject, private messages, invitations, self-ping, admin and owner protocols);
//! - [`config`]: the room configuration, the `muc#roomconfig` form, the storage encoding;
//! - [`service`]: routing to rooms (one task per live room behind a bounded queue), loading
//!   persistent rooms from the `MucStore` lazily, disco of the service, admin requests.
//!
//! Admin commands (`create_room`, `destroy_room`, ...) reach the service the way any entity
//! would: `starling-commands` sends an IQ in [`service::ADMIN_NS`] from the host to the
//! service domain with `Server::iq_query`, and the service answers it (see
//! `MucService::admin`). No global registry, no downcast, and the same path will work when
//! the room lives on another cluster node.
//!
//! In a cluster each room runs on one node ([`starling_core::placement`]): the service says it
//! is placed, and shuts down (status 332) the rooms that placement moves elsewhere.
//!
//! Not implemented yet: MAM for rooms (mod_mam's store is
//! keyed by account), nickname registration (`muc#register`), IQ forwarding between occupants,
//! several resources under one nick, voice requests, `room_shaper` (accepted, ignored).

use std::time::Duration;

use starling_config::{Config, ModuleOptions, ModuleSpec, OptionKind, OptionSpec, OptionValue};
use starling_core::module::{HostContext, Module, ModuleError, Registrations};

pub mod config;
pub mod room;
pub mod service;

use config::{DEFAULT_MAX_USERS, FormLimits, RoomConfig};
use room::RoomLimits;
use service::{MucService, ServiceOptions};

/// Default `host`.
pub const DEFAULT_HOST: &str = "conference.@HOST@";
/// Default `history_size` (ejabberd's).
pub const DEFAULT_HISTORY_SIZE: i64 = 20;
/// Default `max_rooms_discoitems` (ejabberd's).
pub const DEFAULT_MAX_ROOMS_DISCOITEMS: i64 = 100;
/// Default `max_user_conferences` (ejabberd's).
pub const DEFAULT_MAX_USER_CONFERENCES: i64 = 100;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "host",
        kind: OptionKind::String,
        doc: "Domain of the MUC service (default conference.@HOST@).",
    },
    OptionSpec {
        name: "hosts",
        kind: OptionKind::StringList,
        doc: "ejabberd's list form of host; the first entry is used.",
    },
    OptionSpec {
        name: "name",
        kind: OptionKind::String,
        doc: "Name of the service in disco (default Chatrooms).",
    },
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Who may use the service (default all).",
    },
    OptionSpec {
        name: "access_create",
        kind: OptionKind::AccessRule,
        doc: "Who may create rooms (default all).",
    },
    OptionSpec {
        name: "access_persistent",
        kind: OptionKind::AccessRule,
        doc: "Who may make rooms persistent (default all).",
    },
    OptionSpec {
        name: "access_admin",
        kind: OptionKind::AccessRule,
        doc: "Service administrators, owners of every room (default none).",
    },
    OptionSpec {
        name: "default_room_options",
        kind: OptionKind::Any,
        doc: "Options of new rooms, with ejabberd's names (title, persistent, public, \
              members_only, moderated, anonymous, allow_change_subj, allow_user_invites, \
              allow_private_messages, password_protected, password, max_users, description).",
    },
    OptionSpec {
        name: "max_users",
        kind: OptionKind::Int {
            min: 1,
            max: 1_000_000,
        },
        doc: "Most occupants of any room (default 200).",
    },
    OptionSpec {
        name: "max_rooms_discoitems",
        kind: OptionKind::Int {
            min: 0,
            max: 1_000_000,
        },
        doc: "Most rooms listed by disco#items (default 100).",
    },
    OptionSpec {
        name: "history_size",
        kind: OptionKind::Int {
            min: 0,
            max: 10_000,
        },
        doc: "Messages kept per room for new occupants (default 20).",
    },
    OptionSpec {
        name: "max_user_conferences",
        kind: OptionKind::IntOrInfinity { min: 1 },
        doc: "Most rooms one user may be in at once (default 100).",
    },
    OptionSpec {
        name: "min_message_interval",
        kind: OptionKind::Duration,
        doc: "Least time between two messages of one occupant (default 0: no limit).",
    },
    OptionSpec {
        name: "min_presence_interval",
        kind: OptionKind::Duration,
        doc: "Least time between two presence updates of one occupant (default 0).",
    },
    OptionSpec {
        name: "max_room_name",
        kind: OptionKind::IntOrInfinity { min: 0 },
        doc: "Longest room title, in characters (default infinity).",
    },
    OptionSpec {
        name: "max_room_desc",
        kind: OptionKind::IntOrInfinity { min: 0 },
        doc: "Longest room description, in characters (default infinity).",
    },
    OptionSpec {
        name: "room_shaper",
        kind: OptionKind::Unsupported,
        doc: "ejabberd's per-room shaper: accepted and ignored (use min_message_interval).",
    },
];

/// `mod_muc`.
pub struct Muc;

impl Module for Muc {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: "mod_muc",
            aliases: &["muc"],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let opts = service_options(host.host, options)?;
        let domain = opts.domain.clone();
        let name = options.string("name").unwrap_or("Chatrooms").to_owned();
        let service = MucService::new(opts);
        Ok(Registrations::default().service(domain, name, service))
    }
}

fn module_error(message: String) -> ModuleError {
    ModuleError {
        module: "mod_muc",
        message,
    }
}

/// Reads the options into the service's policies.
pub fn service_options(host: &str, options: &ModuleOptions) -> Result<ServiceOptions, ModuleError> {
    let domain_template = options
        .string("host")
        .map(str::to_owned)
        .or_else(|| options.strings("hosts").and_then(|h| h.into_iter().next()))
        .unwrap_or_else(|| DEFAULT_HOST.to_owned());
    let domain = Config::expand_host(&domain_template, host);
    if starling_xmpp::jid::BareJid::domain_only(&domain).is_err() {
        return Err(module_error(format!("host: not a domain: {domain}")));
    }
    if domain == host {
        return Err(module_error(format!(
            "host: the MUC service needs its own domain, not {host}"
        )));
    }
    let int = |key: &str, default: i64| options.int(key).unwrap_or(default).max(0);
    let usize_of = |v: i64| usize::try_from(v).unwrap_or(usize::MAX);
    let micros = |key: &str| {
        options
            .duration(key)
            .unwrap_or(Duration::ZERO)
            .as_micros()
            .min(i64::MAX as u128) as i64
    };
    let max_users = u32::try_from(int("max_users", i64::from(DEFAULT_MAX_USERS)))
        .map_err(|_| module_error("max_users out of range".to_owned()))?;
    let mut defaults = RoomConfig {
        max_users,
        ..RoomConfig::default()
    };
    match options.value("default_room_options") {
        None => {}
        Some(OptionValue::Map(entries)) => {
            for (key, value) in entries {
                let text = match value {
                    OptionValue::Bool(b) => b.to_string(),
                    OptionValue::Int(i) => i.to_string(),
                    OptionValue::String(s) => s.clone(),
                    _ => {
                        return Err(module_error(format!(
                            "default_room_options.{key}: bad value"
                        )));
                    }
                };
                // ejabberd's `allowpm` is our `allow_private_messages`.
                let key = if key == "allowpm" {
                    "allow_private_messages"
                } else {
                    key.as_str()
                };
                if !config::OPTION_NAMES.contains(&key) {
                    // ejabberd room options this server lacks (mam, logging, public_list, ...):
                    // an ejabberd.yml must still load, so warn and go on.
                    tracing::warn!(
                        option = key,
                        "mod_muc: default_room_options: not supported, ignored"
                    );
                    continue;
                }
                defaults
                    .set(key, &text)
                    .map_err(|e| module_error(format!("default_room_options: {e}")))?;
            }
        }
        Some(_) => {
            return Err(module_error(
                "default_room_options must be a mapping".to_owned(),
            ));
        }
    }
    defaults.max_users = defaults.max_users.min(max_users);
    let access = |key: &str, default: &str| options.string(key).unwrap_or(default).to_owned();
    Ok(ServiceOptions {
        domain,
        host: host.to_owned(),
        access: access("access", "all"),
        access_create: access("access_create", "all"),
        access_persistent: access("access_persistent", "all"),
        access_admin: access("access_admin", "none"),
        defaults,
        limits: RoomLimits {
            history_size: usize_of(int("history_size", DEFAULT_HISTORY_SIZE)),
            min_message_interval: micros("min_message_interval"),
            min_presence_interval: micros("min_presence_interval"),
            form: FormLimits {
                max_users,
                max_room_name: usize_of(int("max_room_name", i64::MAX)),
                max_room_desc: usize_of(int("max_room_desc", i64::MAX)),
            },
        },
        max_rooms_discoitems: usize_of(int("max_rooms_discoitems", DEFAULT_MAX_ROOMS_DISCOITEMS)),
        max_user_conferences: usize_of(int("max_user_conferences", DEFAULT_MAX_USER_CONFERENCES)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, OptionValue)]) -> OptionValue {
        OptionValue::Map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn defaults_and_host_expansion() {
        let o = service_options("example.org", &ModuleOptions::new()).unwrap();
        assert_eq!(o.domain, "conference.example.org");
        assert_eq!(o.limits.history_size, 20);
        assert_eq!(o.access_admin, "none");
        assert_eq!(o.defaults, RoomConfig::default());
        let mut opts = ModuleOptions::new();
        opts.insert("host", OptionValue::String("chat.@HOST@".to_owned()));
        assert_eq!(
            service_options("example.org", &opts).unwrap().domain,
            "chat.example.org"
        );
        let mut opts = ModuleOptions::new();
        opts.insert("host", OptionValue::String("@HOST@".to_owned()));
        assert!(service_options("example.org", &opts).is_err());
    }

    #[test]
    fn default_room_options_accept_ejabberds_names() {
        let mut opts = ModuleOptions::new();
        opts.insert(
            "default_room_options",
            map(&[
                ("persistent", OptionValue::Bool(true)),
                ("mam", OptionValue::Bool(true)),
                ("allowpm", OptionValue::String("moderators".to_owned())),
                ("max_users", OptionValue::Int(500)),
            ]),
        );
        opts.insert("max_users", OptionValue::Int(100));
        let o = service_options("example.org", &opts).unwrap();
        assert!(o.defaults.persistent);
        assert_eq!(
            o.defaults.allow_private_messages,
            config::AllowPm::Moderators
        );
        assert_eq!(o.defaults.max_users, 100, "capped by the service");
        let mut opts = ModuleOptions::new();
        opts.insert(
            "default_room_options",
            map(&[("moderated", OptionValue::String("sometimes".to_owned()))]),
        );
        assert!(service_options("example.org", &opts).is_err());
    }
}
