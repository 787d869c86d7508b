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
//! | [`mam`] `mod_mam` | XEP-0313 message archives, XEP-0059 paging, XEP-0359 stanza ids |
//! | [`muc`] `mod_muc` | XEP-0045 multi-user chat, XEP-0410 self-ping |
//! | [`register`] `mod_register` | XEP-0077 in-band registration |
//! | [`roster`] `mod_roster` | RFC 6121 §2 roster management |
//! | [`offline`] `mod_offline` | XEP-0160 offline messages, XEP-0013 flexible retrieval |
//! | [`vcard`] `mod_vcard`, `mod_vcard_xupdate` | XEP-0054 vcard-temp, XEP-0153 avatar hashes |
//! | [`private`] `mod_private` | XEP-0049 private XML storage |
//! | [`carbons`] `mod_carboncopy` | XEP-0280 message carbons, XEP-0334 `<no-copy/>` |
//! | [`pep`] `mod_pep` (`mod_pubsub`) | XEP-0163 PEP on XEP-0060, XEP-0115 caps |
//! | [`privacy`] `mod_privacy` | XEP-0016 privacy lists (and their enforcement) |
//! | [`blocking`] `mod_blocking` | XEP-0191 blocking command, on the privacy lists |
//! | [`stream_mgmt`] `mod_stream_mgmt` | XEP-0198 stream management (run by c2s) |
//! | [`client_state`] `mod_client_state` | XEP-0352 client state indication (run by c2s) |
//! | [`http_api`] `mod_http_api` | admin HTTP API options (served by `starling-http`) |
//! | [`http_upload`] `mod_http_upload` | XEP-0363 HTTP file upload (files served by `starling-http`) |
//! | [`bosh`] `mod_bosh` (`mod_http_bind`) | BOSH options (served by `starling-http`) |
//! | [`fail2ban`] `mod_fail2ban` | failed-login banning options (run by core and c2s) |

#![forbid(unsafe_code)]

use std::sync::Arc;

use starling_config::ModuleSpec;
use starling_core::module::Module;

pub mod adhoc;
pub mod blocking;
pub mod bosh;
pub mod carbons;
pub mod client_state;
pub mod disco;
pub mod fail2ban;
pub mod http_api;
pub mod http_upload;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod privacy;
pub mod private;
pub mod register;
pub mod roster;
pub mod stream_mgmt;
pub mod time;
pub mod vcard;
pub mod version;

mod dataform;
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
        Arc::new(mam::Mam),
        Arc::new(register::Register),
        Arc::new(roster::Roster),
        Arc::new(offline::Offline),
        Arc::new(vcard::Vcard),
        Arc::new(vcard::VcardXupdate),
        Arc::new(private::Private),
        Arc::new(carbons::Carbons),
        Arc::new(privacy::Privacy),
        Arc::new(blocking::Blocking),
        Arc::new(pep::Pep),
        Arc::new(muc::Muc),
        Arc::new(stream_mgmt::StreamMgmt),
        Arc::new(client_state::ClientState),
        Arc::new(http_api::HttpApi),
        Arc::new(http_upload::HttpUpload),
        Arc::new(bosh::Bosh),
        Arc::new(fail2ban::Fail2ban),
        Arc::new(adhoc::Adhoc),
        Arc::new(adhoc::Configure),
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
        let count = names.len();
        assert!(names.iter().all(|n| n.starts_with("mod_")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "duplicate module name");
    }
}
