//! BOSH `<body/>` parsing (XEP-0124) on arbitrary bytes: a body or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = starling_http::bosh::wire::parse(data);
});
