//! SASL messages from a client: PLAIN, and a SCRAM exchange (client-first, then
//! client-final) with arbitrary messages. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_xmpp::sasl;
use starling_xmpp::scram::{self, ChannelBindings, ScramHash, ScramKeys};

fuzz_target!(|data: &[u8]| {
    let _ = sasl::parse_plain(data);
    // Split the input into client-first and client-final at the first NUL.
    let (first, last) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let bindings = ChannelBindings {
        tls_exporter: Some(vec![7; 32]),
        tls_server_end_point: None,
    };
    for (plus, offered) in [(false, false), (false, true), (true, true)] {
        let Ok(start) = scram::start(ScramHash::Sha1, plus, offered, first, &bindings) else {
            continue;
        };
        let keys = ScramKeys {
            hash: ScramHash::Sha1,
            salt: b"salt".to_vec(),
            iterations: 1,
            stored_key: vec![1; 20],
            server_key: vec![2; 20],
        };
        let (await_final, _server_first) = start.respond(&keys, "servernonce");
        let _ = await_final.finish(last);
    }
});
