//! The server's own services, one XMPP module per Rust module (DESIGN.md §2.2).
//!
//! Each module is a struct implementing [`starling_core::module::Module`]: it declares its
//! ejabberd-compatible options (validated by the config loader) and, when started on a host,
//! returns the IQ handlers, disco features and stream features it contributes. Modules never
//! reach into the router: they answer IQs handed to them by `starling_core::local` and use the
//! [`starling_core::Server`] API (stores, session manager, routing) for their effects.
//!
//! | module | specification |
//! |---|---|
//! | [`disco`] `mod_disco` | XEP-0030 service discovery |
//! | [`ping`] `mod_ping` | XEP-0199 XMPP ping |
//! | [`version`] `mod_version` | XEP-0092 software version |
//! | [`time`] `mod_time` | XEP-0202 entity time (XEP-0082 dates) |
//! | [`last`] `mod_last` | XEP-0012 last activity |
//! | [`register`] `mod_register` | XEP-0077 in-band registration |
//! | [`roster`] `mod_roster` | RFC 6121 §2 roster management |

#![forbid(unsafe_code)]

use std::sync::Arc;

use starling_config::ModuleSpec;
use starling_core::module::Module;

pub mod disco;
pub mod last;
pub mod ping;
pub mod register;
pub mod roster;
pub mod time;
pub mod version;

mod iq;

#[cfg(test)]
mod fixture;

/// Every module this crate provides, in the order they are documented.
pub fn catalogue() -> Vec<Arc<dyn Module>> {
    vec![
        Arc::new(disco::Disco),
        Arc::new(ping::Ping),
        Arc::new(version::Version),
        Arc::new(time::Time),
        Arc::new(last::Last),
        Arc::new(register::Register),
        Arc::new(roster::Roster),
    ]
}

/// The specifications of [`catalogue`], as the config loader wants them.
pub fn specs() -> Vec<ModuleSpec> {
    catalogue().iter().map(|m| m.spec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_are_unique_and_canonical() {
        let specs = specs();
        let mut names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 7);
        assert!(names.iter().all(|n| n.starts_with("mod_")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 7, "duplicate module name");
    }
}
