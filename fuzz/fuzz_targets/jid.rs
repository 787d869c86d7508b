//! JID parsing and normalisation (RFC 7622, PRECIS) on arbitrary strings: parse results must
//! be stable (parsing a JID's own text gives the same JID).
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_xmpp::jid::Jid;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jid) = Jid::parse(text) {
        let again = Jid::parse(jid.as_str()).expect("a normalised JID parses");
        assert_eq!(jid, again, "normalisation is idempotent");
    }
});
