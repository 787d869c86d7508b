//! The c2s/s2s stream parser on arbitrary bytes, fed in arbitrary chunks: it must return
//! events or a stream error, never panic, and respect its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_xmpp::codec::{Limits, StreamParser};
use starling_xmpp::ns;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so splits inside tokens get exercised.
    let (chunk, rest) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c % 64) + 1, rest),
        None => return,
    };
    let limits = Limits {
        max_stanza_size: 4096,
        ..Limits::default()
    };
    let mut parser = StreamParser::new(ns::CLIENT, limits);
    for piece in rest.chunks(chunk) {
        parser.feed(piece);
        loop {
            match parser.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
